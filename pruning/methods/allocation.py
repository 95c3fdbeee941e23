"""Non-uniform sparsity allocation over decoder layers, as plain maths (no torch import, no model).

A layer's sparsity comes from OWL (Yin et al. 2024, "Outlier Weighed Layerwise Sparsity"), from an
explicit schedule (a list, or a linear ramp from the first to the last layer), or from a search
(pruning/methods/allocation_search.py). Either way the layer
sparsities are then turned into integer counts of weights to zero whose sum is exactly
round(target × targeted weights), by largest-remainder rounding; the same rounding splits a layer's
count over its modules and a module's count over its rows or column blocks.

Layer sizes weight every mean here: with `ignore` patterns layers may hold different numbers of
targeted weights (a layer with none has size 0 and takes no part).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

# How the target sparsity is spread over the decoder layers (the `allocation` option of the mask methods).
UNIFORM, OWL, SCHEDULE, RAMP, SEARCH = "uniform", "owl", "schedule", "ramp", "search"
ALLOCATIONS = (UNIFORM, OWL, SCHEDULE, RAMP, SEARCH)  # search: pruning/methods/allocation_search.py
OWL_M, OWL_LAMBDA = 5.0, 0.08  # the paper's defaults


class AllocationError(ValueError):
    """Layer sparsities or counts that cannot be honoured."""


def outlier_ratio(scores: Iterable, m: float) -> float:
    """OWL's layer outlier ratio: the share of a layer's scores (tensors, e.g. the Wanda scores of its
    linears, taken together) above `m` × the layer's mean score."""
    scores = list(scores)
    count = sum(s.numel() for s in scores)
    if count == 0:
        raise AllocationError("a layer without scores has no outlier ratio")
    mean = sum(float(s.double().sum()) for s in scores) / count
    return sum(int((s > m * mean).sum()) for s in scores) / count


def weighted_mean(values: Sequence[float], sizes: Sequence[int]) -> float:
    total = sum(sizes)
    if total <= 0:
        raise AllocationError("no targeted weights to allocate sparsity over")
    return math.fsum(v * n for v, n in zip(values, sizes)) / total


def centred(sparsities: Sequence[float], sizes: Sequence[int], target: float) -> list[float]:
    """`sparsities` shifted by one constant so that their size-weighted mean is `target`."""
    shift = target - weighted_mean(sparsities, sizes)
    return [s + shift for s in sparsities]


def owl_sparsities(outlier_ratios: Sequence[float], sizes: Sequence[int], target: float,
                   lam: float = OWL_LAMBDA) -> list[float]:
    """Layer sparsities from outlier ratios, normalised as the reference implementation (and
    llm-compressor): ratios min-max scaled to [0, 2λ], subtracted from the target and shifted so the
    (size-weighted) mean is the target. More outliers, lower sparsity; the band is 2λ wide around
    the target (exactly [target − λ, target + λ] when the scaled ratios average λ). Equal outlier
    ratios everywhere leave every layer at the target."""
    if len(outlier_ratios) != len(sizes):
        raise AllocationError(f"{len(outlier_ratios)} outlier ratios for {len(sizes)} layers")
    live = [r for r, n in zip(outlier_ratios, sizes) if n > 0]  # a layer with no targeted weights has no ratio
    if not live:
        raise AllocationError("no targeted weights to allocate sparsity over")
    low, high = min(live), max(live)
    if high == low:
        return [float(target)] * len(sizes)
    spread = [-2 * lam * (r - low) / (high - low) if n > 0 else 0.0 for r, n in zip(outlier_ratios, sizes)]
    return [s if n > 0 else float(target) for s, n in zip(centred(spread, sizes, target), sizes)]


def ramp(first: float, last: float, layers: int) -> list[float]:
    """`layers` sparsities linear from `first` (layer 0) to `last` (the last layer)."""
    if layers < 1:
        raise AllocationError("a ramp needs at least one layer")
    if layers == 1:
        return [(first + last) / 2]
    return [first + (last - first) * i / (layers - 1) for i in range(layers)]


def check_sparsities(sparsities: Sequence[float], sizes: Sequence[int], what: str) -> None:
    """Every layer that has targeted weights gets a sparsity in [0, 1)."""
    bad = [(i, s) for i, (s, n) in enumerate(zip(sparsities, sizes)) if n > 0 and not 0 <= s < 1]
    if bad:
        index, value = bad[0]
        raise AllocationError(f"{what} gives layer {index} the sparsity {value:.4f}, outside [0, 1)")


def target_zeros(target: float, total: int) -> int:
    """The exact number of weights a sparsity removes from `total` targeted weights."""
    return round(target * total)


def apportion(ideal: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Integers close to `ideal`, each in [0, cap], summing to `total` (largest remainder: floors first,
    then one more to the largest fractional parts, earlier positions first among equals)."""
    if len(ideal) != len(caps):
        raise AllocationError(f"{len(ideal)} shares for {len(caps)} parts")
    if not 0 <= total <= sum(caps):
        raise AllocationError(f"cannot place {total} zeros in {sum(caps)} weights")
    counts = [min(cap, max(0, math.floor(x))) for x, cap in zip(ideal, caps)]
    order = sorted(range(len(ideal)), key=lambda i: (-(ideal[i] - math.floor(ideal[i])), i))
    missing = total - sum(counts)
    while missing:
        step = 1 if missing > 0 else -1
        for i in order if step > 0 else reversed(order):
            if missing and 0 <= counts[i] + step <= caps[i]:
                counts[i] += step
                missing -= step
    return counts


def layer_zero_counts(sparsities: Sequence[float], sizes: Sequence[int], target: float) -> list[int]:
    """Zeros per layer: each close to sparsity × size, together exactly `target_zeros(target, Σ sizes)`."""
    check_sparsities(sparsities, sizes, "the allocation")
    return apportion([s * n for s, n in zip(sparsities, sizes)], target_zeros(target, sum(sizes)), sizes)


def split_zeros(zeros: int, sizes: Sequence[int]) -> list[int]:
    """`zeros` over parts of `sizes` (a layer's modules, a module's column blocks) in proportion to size."""
    total = sum(sizes)
    return apportion([zeros * n / total if total else 0.0 for n in sizes], zeros, sizes)
