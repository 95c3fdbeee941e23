"""Export pruned models for other runtimes: GGUF for llama.cpp, and its verification."""
from .gguf import OUTTYPES, ExportError, export_gguf, plan_export, supported_model_types

__all__ = ["OUTTYPES", "ExportError", "export_gguf", "plan_export", "supported_model_types"]
