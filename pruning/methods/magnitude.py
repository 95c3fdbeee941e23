"""Magnitude pruning: zero the smallest |w|, per weight matrix (default, as the Wanda repo) or per row."""
from __future__ import annotations

from .base import PruneContext, register
from .mask_base import MaskingMethod
from ..core.options import Option


@register
class Magnitude(MaskingMethod):
    name = "magnitude"
    FAMILY = "magnitude pruning"  # PersLM's "Magnitude-based Pruning", a family of its own
    description = "smallest |w| zeroed per matrix (or per output row); no calibration data unless allocation=owl"
    OPTIONS = MaskingMethod.OPTIONS + (
        Option("per", str, "compare |w| within the whole matrix or within each output row", default="matrix",
               choices=("matrix", "row")),
    )

    def prune(self, ctx: PruneContext) -> dict:
        from ..core.adapters import weight_matrix
        from ..core.engine import layer_loaded
        from .sparsify import magnitude_scores, select_mask

        self.check_model(ctx)
        allocation = self.plan_allocation(ctx)
        per_layer = {}
        for index, targets in self.targets(ctx).items():
            with layer_loaded(ctx.model, index):  # streamed from disk when the model's layers live there
                for name, module in targets.items():
                    scores = magnitude_scores(weight_matrix(module))
                    self.apply_mask(module, select_mask(scores, self.target, self.per, zeros=self.planned_zeros(name)))
                per_layer[index] = self.layer_report(targets)
        return self.with_allocation(self.summary(per_layer), allocation)
