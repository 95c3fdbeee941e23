"""Wanda (Sun et al. 2023): score |W_ij| · sqrt(mean x_j²), compared within each output row."""
from __future__ import annotations

from .base import register
from .mask_base import CalibratedMaskingMethod, InputSquareMean


@register
class Wanda(CalibratedMaskingMethod):
    name = "wanda"
    needs_calibration = True
    description = "|W|·‖x‖ scores compared per output row, layer by layer on calibration data"

    def statistics(self, weight, device):
        return InputSquareMean(weight.shape[1], device)

    def prune_module(self, name, module, statistics):
        from ..core.adapters import weight_matrix
        from .sparsify import select_mask, wanda_scores

        scores = wanda_scores(weight_matrix(module), statistics.mean)
        self.apply_mask(module, select_mask(scores, self.target, per="row", zeros=self.planned_zeros(name)))
