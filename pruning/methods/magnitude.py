"""Magnitude pruning: zero the smallest |w|, per weight matrix (default, as the Wanda repo) or per row."""
from __future__ import annotations

import torch

from ..adapters import weight_matrix
from ..masks import magnitude_scores, select_mask
from ..ratios import MaskTarget
from .base import MethodError, PruneContext, register
from .masking import MaskingMethod


@register
class Magnitude(MaskingMethod):
    name = "magnitude"
    description = "smallest |w| zeroed per matrix (or per output row); needs no calibration data"

    def __init__(self, target: MaskTarget, per: str = "matrix"):
        super().__init__(target)
        if per not in ("matrix", "row"):
            raise MethodError(f"magnitude: per must be 'matrix' or 'row', got {per!r}")
        self.per = per

    def options(self) -> dict:
        return {**super().options(), "per": self.per}

    @torch.no_grad()
    def prune(self, ctx: PruneContext) -> dict:
        per_layer = {}
        for index in range(ctx.adapter.num_layers(ctx.model)):
            targets = ctx.adapter.linear_targets(ctx.model, index, ctx.ignore)
            for module in targets.values():
                self.apply_mask(module, select_mask(magnitude_scores(weight_matrix(module)), self.target, self.per))
            per_layer[index] = self.layer_report(targets)
        return self.summary(per_layer)
