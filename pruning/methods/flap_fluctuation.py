"""The maths of FLAP (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language
Models"), in plain functions; pruning/methods/flap.py runs them on a model.

An input channel j of an output projection (o_proj for attention, down_proj for the FFN) that barely
fluctuates over the calibration tokens can be replaced by its mean: the projection then adds the constant
W[:, j] · mean(x_j), which a bias absorbs. The channel's score measures what that replacement loses:
- `wifv` (the paper's default): sample variance of x_j over tokens × ‖W[:, j]‖²;
- `ifv`: the variance alone; `wifn`: mean over output rows of |W_ij| · sqrt(mean x_j²) (Wanda-like).
Scores are standardised per layer and per kind (attention channels, FFN channels), so that layers and
kinds compare on one scale (the "adaptive structure": one global ranking decides every layer's width).
As in the reference implementation, attention channel scores are squared before standardising.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.engine import InputMoments

METRICS = ("wifv", "ifv", "wifn")


def channel_scores(metric: str, statistics: InputMoments, weight: torch.Tensor) -> torch.Tensor:
    """One score per input channel of a linear layer with weight [out, in] (float64)."""
    weight = weight.detach().double().cpu()
    if metric == "wifv":
        return statistics.sample_variance * weight.pow(2).sum(0)
    if metric == "ifv":
        return statistics.sample_variance.clone()
    if metric == "wifn":
        return (weight.abs() * statistics.square_mean.sqrt()).mean(0)
    raise ValueError(f"unknown fluctuation metric {metric!r}; use one of {', '.join(METRICS)}")


def standardized(scores: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std over one layer's channels; all-equal scores give zeros."""
    spread = scores.std()
    centred = scores - scores.mean()
    return centred / spread if spread > 0 else centred


def unit_scores(scores: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Mean score of consecutive groups of `unit_size` channels (a key-value group's o_proj columns)."""
    return scores.reshape(-1, unit_size).mean(1)


def compensation_bias(weight: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """W[:, removed] · mean[removed]: what the removed input channels add on average, as an output bias."""
    removed = removed.to(torch.long)
    return weight.detach().double().cpu()[:, removed] @ mean[removed]


@dataclass(frozen=True)
class Unit:
    """One removable piece: a key-value group of a layer's attention or one FFN channel."""

    kind: str  # "attention" or "ffn"
    layer: int
    index: int  # key-value group or FFN channel
    score: float
    parameters: int


def select_global(units: list[Unit], target: int) -> list[Unit]:
    """FLAP's adaptive structure: units taken in ascending score order, the prefix whose parameters come
    closest to `target` (ties: the shorter prefix). Each layer keeps its best attention unit and its best
    FFN channel (so no sub-block disappears), which are left out of the candidates."""
    best = {}
    for unit in units:
        key = (unit.kind, unit.layer)
        if key not in best or (unit.score, -unit.index) > (best[key].score, -best[key].index):
            best[key] = unit
    kept = set(best.values())
    ranked = sorted((u for u in units if u not in kept), key=lambda u: (u.score, u.kind, u.layer, u.index))
    taken, best_count, best_gap = 0, 0, abs(target)
    for count, unit in enumerate(ranked, start=1):
        taken += unit.parameters
        if abs(taken - target) < best_gap:
            best_count, best_gap = count, abs(taken - target)
    return ranked[:best_count]


def select_uniform(scores: torch.Tensor, fraction: float) -> list[int]:
    """FLAP's uniform structure (UL-UM): the round(fraction × n) lowest-scoring units of one layer, at
    most n − 1 of them."""
    count = min(int(fraction * scores.numel() + 0.5), scores.numel() - 1)
    order = sorted(range(scores.numel()), key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])
