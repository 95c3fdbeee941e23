"""Export pruned models for other runtimes: GGUF for llama.cpp, and its verification in llama.cpp."""
from .gguf import OUTTYPES, ExportError, export_gguf, plan_export, supported_model_types
from .verify import evaluate_gguf

__all__ = ["OUTTYPES", "ExportError", "evaluate_gguf", "export_gguf", "plan_export", "supported_model_types"]
