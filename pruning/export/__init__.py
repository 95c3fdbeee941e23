"""Export pruned models for other runtimes: GGUF files for llama.cpp (their check in llama.cpp is
evaluation/llamacpp.py).

The public names are imported on first use (PEP 562), so the output-type table (`outtypes`) stays cheap to
read for the CLI's help and the workflow."""
from __future__ import annotations

import importlib

# public name -> its submodule
_EXPORTS = {"OUTTYPES": "outtypes", "ExportError": "gguf_hparams", "export_gguf": "gguf",
            "plan_export": "gguf_tensors", "supported_model_types": "gguf_families"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
