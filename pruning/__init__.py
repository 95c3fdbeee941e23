"""Pruning large language models: model zoo, architecture adapters, one layer-wise engine, methods,
evaluation and export. Usable without Snakemake:

    import pruning
    report = pruning.prune("smollm2-135m", "wanda", "out/wanda-50", sparsity=0.5)
    model, tokenizer = pruning.load_model("out/wanda-50")
    pruner = pruning.Pruner("smollm2-135m", output_dir="out/chain")   # steps in memory, then save()
    # (pruning.ModelPruner, PersLM's name, is the same class)

The public names are imported on first use (PEP 562), so `import pruning` and torch-free modules such
as `pruning.reporting.grid` stay cheap for the Snakefile, which builds its DAG without loading torch.
"""
from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# public name -> (submodule, attribute)
_EXPORTS = {
    "available_methods": ("methods", "available_methods"),
    "build_method": ("methods", "build_method"),
    "evaluate_perplexity": ("api", "evaluate_perplexity"),
    "fetch_model": ("core.zoo", "resolve"),
    "get_adapter": ("core.adapters", "get_adapter"),
    "load_model": ("core.modeling", "load_model"),
    "ModelPruner": ("pruner", "Pruner"),  # PersLM's name for it
    "prune": ("api", "prune"),
    "Pruner": ("pruner", "Pruner"),
    "save_model": ("core.modeling", "save_model"),
    "supported_model_types": ("core.adapters", "supported_model_types"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """A public name, or a submodule (`pruning.reporting` after a bare `import pruning`), imported on first use."""
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
