"""Magnitude pruning: zero the smallest |w|, per weight matrix (default, as the Wanda repo) or per row."""
from __future__ import annotations

from .base import PruneContext, no_grad, register
from .mask_base import MaskingMethod
from .reconstruction import NONE
from ..core.options import Option


@register
class Magnitude(MaskingMethod):
    name = "magnitude"
    FAMILY = "magnitude pruning"  # PersLM's "Magnitude-based Pruning", a family of its own
    description = ("smallest |w| zeroed per matrix (or per output row); no calibration data unless allocation=owl or "
                   "reconstruct=blocks")
    OPTIONS = MaskingMethod.OPTIONS + (
        Option("per", str, "compare |w| within the whole matrix or within each output row", default="matrix",
               choices=("matrix", "row")),
    )

    def prune_layer_from(self, targets: dict, statistics=None) -> None:
        self.prune_layer(targets)

    def prune_layer(self, targets: dict) -> None:
        from ..core.adapters import weight_matrix
        from .sparsify import magnitude_scores, select_mask

        for name, module in targets.items():
            scores = magnitude_scores(weight_matrix(module))
            self.apply_mask(module, select_mask(scores, self.target, self.per, zeros=self.planned_zeros(name)))

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        """Layer by layer from the weights alone; with reconstruct=blocks on the engine, each layer's kept weights
        then tuned to the dense model's outputs on the calibration windows."""
        from ..core.engine import LayerStep, LayerwiseEngine, layer_loaded

        self.check_model(ctx)
        allocation = self.plan_allocation(ctx)
        per_layer = {}
        if self.reconstruct == NONE:
            for index, targets in self.targets(ctx).items():
                with layer_loaded(ctx.model, index):  # streamed from disk when the model's layers live there
                    self.prune_layer(targets)
                    per_layer[index] = self.layer_report(targets)
            return self.with_allocation(self.summary(per_layer), allocation)
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(ctx.calibration()[0])
        tuner = self.block_reconstruction(engine)

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)
            dense = tuner.dense_outputs(step)
            self.prune_layer(targets)
            outputs = tuner.tune(step, targets, dense)
            per_layer[step.index] = self.layer_report(targets)
            return outputs

        engine.run(visit, description=self.name)
        return self.with_reconstruction(self.with_allocation(self.summary(per_layer), allocation), tuner)
