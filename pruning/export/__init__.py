"""Export pruned models for other runtimes: GGUF files for llama.cpp (their check in llama.cpp is
evaluation/llamacpp.py)."""
from .gguf import OUTTYPES, ExportError, export_gguf, plan_export, supported_model_types

__all__ = ["OUTTYPES", "ExportError", "export_gguf", "plan_export", "supported_model_types"]
