"""Pruning methods, one module each, registered by name on import."""
from .base import MethodError, PruneContext, PruningMethod, available_methods, method_class, register
from . import magnitude, wanda, sparsegpt  # noqa: F401  (registration)
from . import heads, layers, depth, two_stage, distill, combined  # noqa: F401  (structured methods)

__all__ = ["MethodError", "PruneContext", "PruningMethod", "available_methods", "method_class", "register"]
