"""Pruning methods, one module each, registered by name on import.

Adding a method: one module here (a PruningMethod subclass with its OPTIONS, decorated with @register)
and its import below. Nothing here imports torch, so `check_arguments` costs no model and no torch.
"""
from .base import MethodError, PruneContext, PruningMethod, available_methods, method_class, register
from . import magnitude, wanda, sparsegpt  # noqa: F401  (registration)
from . import heads, layers, depth, two_stage, distill, combined  # noqa: F401  (structured methods)

__all__ = ["MethodError", "PruneContext", "PruningMethod", "available_methods", "build_method", "check_arguments",
           "method_class", "register"]


def build_method(name: str, **arguments) -> PruningMethod:
    """A method instance from its name and arguments (ratio and options), validated; no model needed."""
    return method_class(name).build(**arguments)


def check_arguments(name: str, **arguments) -> dict:
    """Validate a method name with its ratio and options, without a model: the options prune.json would
    record, or a one-line MethodError naming the option and what is allowed."""
    return build_method(name, **arguments).options()
