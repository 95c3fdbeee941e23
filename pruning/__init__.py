"""Pruning large language models: model zoo, architecture adapters, one layer-wise engine, methods,
evaluation and export. Usable without Snakemake:

    import pruning
    report = pruning.prune("smollm2-135m", "wanda", "out/wanda-50", sparsity=0.5)
    model, tokenizer = pruning.load_model("out/wanda-50")
"""
__version__ = "0.1.0"

from .adapters import get_adapter, supported_model_types  # noqa: E402
from .api import build_method, evaluate_perplexity, prune  # noqa: E402
from .methods import available_methods  # noqa: E402
from .modeling import load_model, save_model  # noqa: E402
from .zoo import resolve as fetch_model  # noqa: E402

__all__ = ["available_methods", "build_method", "evaluate_perplexity", "fetch_model", "get_adapter",
           "load_model", "prune", "save_model", "supported_model_types"]
