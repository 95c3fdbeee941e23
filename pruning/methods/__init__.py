"""Pruning methods, one module each, registered by name on import.

Adding a method: one module here (a PruningMethod subclass with its OPTIONS and its FACTS: family, retrains,
removes layers, supports MoE, composite; decorated with @register) and its import below; the tables, the grid
and the refusals read the facts, so no list elsewhere names methods. `build_method` is the one entry point, for the CLI, the API and the workflow's config
check alike: it validates the name, ratio and options (`.options()` of the result is what prune.json records).
Nothing here imports torch, so building a method costs no model and no torch.
"""
from .base import (MethodError, PruneContext, PruningMethod, available_methods, method_class, register,
                   streaming_methods)
from . import magnitude, wanda, sparsegpt  # noqa: F401  (registration)
from . import dsnot  # noqa: F401  (mask refinement on wanda/sparsegpt)
from . import alps  # noqa: F401  (ADMM layer solver)
from . import heads, layers, depth, two_stage, distill, combined, flap  # noqa: F401  (structured methods)
from . import gradual, iterative  # noqa: F401  (prune + fine-tune in rounds)

__all__ = ["MethodError", "PruneContext", "PruningMethod", "available_methods", "build_method", "method_class",
           "register"]


def build_method(name: str, **arguments) -> PruningMethod:
    """A method instance from its name and arguments (ratio and options), validated; no model needed."""
    return method_class(name).build(**arguments)

