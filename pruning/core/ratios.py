"""Sparsity targets for mask-based methods, parsed and validated before any model is loaded.

Convention for N:M (stated once, used everywhere): **N weights are kept out of every M consecutive
input weights** of each output row, as in NVIDIA's "2:4". (The Wanda repo and llm-compressor count
the *removed* weights first; for 2:4 both read the same.) Groups are aligned at input column 0; a
trailing partial group of r < M columns keeps min(r, N) weights.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union


class RatioError(ValueError):
    """A sparsity or pattern that cannot be honoured."""


@dataclass(frozen=True)
class Sparsity:
    """Fraction of the targeted weights to zero, in [0, 1)."""

    value: float

    def __post_init__(self):
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise RatioError(f"sparsity must be a number in [0, 1), got {self.value!r}")
        if not 0.0 <= float(self.value) < 1.0:
            raise RatioError(f"sparsity must be in [0, 1), got {self.value}")

    @property
    def token(self) -> str:
        return f"s{self.value:.2f}"

    def describe(self) -> str:
        return f"{self.value:.0%}"

    def as_dict(self) -> dict:
        return {"kind": "sparsity", "sparsity": float(self.value)}


@dataclass(frozen=True)
class NMPattern:
    """Keep `n` of every `m` consecutive input weights (1 <= n < m)."""

    n: int
    m: int

    def __post_init__(self):
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 1 <= self.n < self.m:
            raise RatioError(
                f"N:M pattern needs integers 1 <= N < M (N kept out of every M), got {self.n}:{self.m}"
            )

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m

    @property
    def token(self) -> str:
        return f"nm{self.n}-{self.m}"

    def describe(self) -> str:
        return f"{self.n}:{self.m}"

    def as_dict(self) -> dict:
        return {"kind": "nm", "n": self.n, "m": self.m, "convention": "N kept out of every M"}


MaskTarget = Union[Sparsity, NMPattern]

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_nm(text: str) -> NMPattern:
    """Parse '2:4' into NMPattern(2, 4); reject anything else with a clear message."""
    match = _NM_RE.match(str(text))
    if not match:
        raise RatioError(f"N:M pattern must look like '2:4' (N kept out of every M), got {text!r}")
    return NMPattern(int(match.group(1)), int(match.group(2)))


def parse_sparsity(value) -> Sparsity:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RatioError(f"sparsity must be a number in [0, 1), got {value!r}") from None
    return Sparsity(number)


def mask_target(sparsity=None, nm=None) -> MaskTarget:
    """Exactly one of `sparsity` / `nm` must be given."""
    if (sparsity is None) == (nm is None):
        raise RatioError("give exactly one of a sparsity (e.g. 0.5) or an N:M pattern (e.g. 2:4)")
    return parse_sparsity(sparsity) if sparsity is not None else parse_nm(nm)
