"""Magnitude pruning: zero the smallest |w|, per weight matrix (default, as the Wanda repo) or per row."""
from __future__ import annotations

from .base import PruneContext, register
from .masking import MaskingMethod
from .options import Option


@register
class Magnitude(MaskingMethod):
    name = "magnitude"
    description = "smallest |w| zeroed per matrix (or per output row); needs no calibration data"
    OPTIONS = MaskingMethod.OPTIONS + (
        Option("per", str, "compare |w| within the whole matrix or within each output row", default="matrix",
               choices=("matrix", "row")),
    )

    def prune(self, ctx: PruneContext) -> dict:
        from ..adapters import weight_matrix
        from ..masks import magnitude_scores, select_mask

        self.check_model(ctx)
        per_layer = {}
        for index, targets in self.targets(ctx).items():
            for module in targets.values():
                self.apply_mask(module, select_mask(magnitude_scores(weight_matrix(module)), self.target, self.per))
            per_layer[index] = self.layer_report(targets)
        return self.summary(per_layer)
