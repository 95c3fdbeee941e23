"""The small interface every pruning method implements, and the registry that finds them by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..adapters import ArchitectureAdapter


class MethodError(ValueError):
    """Bad method name or options."""


@dataclass
class PruneContext:
    """Everything a method may need besides its own options.

    `calibration` is a callable returning (input_ids [n, seqlen], protocol dict) so that methods that
    need no data never load any.
    """

    model: nn.Module
    tokenizer: Any
    adapter: ArchitectureAdapter
    device: torch.device
    calibration: Any = None
    seed: int = 0
    batch_size: int = 8
    progress: bool = True
    ignore: tuple[str, ...] = ()
    extras: dict = field(default_factory=dict)


class PruningMethod:
    """A method is constructed from validated options, then `prune(ctx)` changes the model in place
    and returns its report (merged into prune.json)."""

    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = False
    description: ClassVar[str] = ""

    @classmethod
    def build(cls, **arguments) -> "PruningMethod":
        """Construct from keyword arguments (ratio and options), rejecting unknown ones by name."""
        try:
            return cls(**arguments)
        except TypeError as exc:
            raise MethodError(f"{cls.name}: bad arguments {sorted(arguments)} ({exc})") from None

    def prune(self, ctx: PruneContext) -> dict:
        raise NotImplementedError

    def options(self) -> dict:
        """The options that identify this run (recorded in prune.json)."""
        return {}


_REGISTRY: dict[str, type[PruningMethod]] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"pruning method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[PruningMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(available_methods())}") from None
