"""Wanda (Sun et al. 2023): score |W_ij| · sqrt(mean x_j²), compared within each output row."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import register
from .masking import CalibratedMaskingMethod

if TYPE_CHECKING:
    import torch


class InputSquareMean:
    """Running mean over calibration tokens of x_j² for every input feature j (fp32)."""

    def __init__(self, features: int, device):
        import torch

        self.total = torch.zeros(features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.total += (x * x).sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(1, self.tokens)


@register
class Wanda(CalibratedMaskingMethod):
    name = "wanda"
    needs_calibration = True
    description = "|W|·‖x‖ scores compared per output row, layer by layer on calibration data"

    def statistics(self, weight, device):
        return InputSquareMean(weight.shape[1], device)

    def prune_module(self, name, module, statistics):
        from ..adapters import weight_matrix
        from ..masks import select_mask, wanda_scores

        scores = wanda_scores(weight_matrix(module), statistics.mean)
        self.apply_mask(module, select_mask(scores, self.target, per="row"))
