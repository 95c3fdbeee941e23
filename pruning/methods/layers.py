"""Uniform layer pruning (PersLM `--layer-reduction`): remove a fraction of the decoder layers, spread
evenly over the interior so the first and last layers stay. Needs no data; works for every family."""
from __future__ import annotations

from .base import MethodError, PruneContext, PruningMethod, config_layer_count, no_grad, register
from ..core.options import Option


@register
class Layers(PruningMethod):
    name = "layers"
    FAMILY = "layer/depth pruning"
    REMOVES_LAYERS = SUPPORTS_MOE = True
    RETRAINS = COMPOSITE = False
    STREAMS = True
    description = "remove a fraction of decoder layers evenly spread, keeping the first and last (no data)"
    OPTIONS = (
        Option("fraction", float, "fraction of decoder layers to remove, e.g. 0.25", required=True,
               low=0, high=1, low_open=True, high_open=True, ratio=True),
    )

    def plan(self, num_layers: int) -> list[int]:
        """The layers to remove, or a clear error when the fraction cannot be honoured."""
        from .depth_similarity import evenly_spread
        from ..core.surgery import rounded_count

        count = rounded_count(self.fraction, num_layers)
        if count == 0:
            raise MethodError(f"layers: fraction {self.fraction} of {num_layers} layers removes no layer")
        if count > num_layers - 2:
            raise MethodError(f"layers: fraction {self.fraction} asks for {count} of {num_layers} layers, but the "
                              f"first and last stay, so at most {max(0, num_layers - 2)} can go")
        return evenly_spread(num_layers, count)

    def check_config(self, config: dict) -> None:
        super().check_config(config)
        if (layers := config_layer_count(config)) is not None:
            self.plan(layers)

    def check_model(self, ctx: PruneContext) -> None:
        self.plan(ctx.adapter.num_layers(ctx.model))

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..core.surgery import numel, removal_report, remove_layers

        num_layers = ctx.adapter.num_layers(ctx.model)
        drop = self.plan(num_layers)
        before = numel(ctx.model)
        remove_layers(ctx.model, ctx.adapter, drop)
        return {"removed_layers": drop, "layers_before": num_layers, "layers_after": num_layers - len(drop),
                **removal_report(before, ctx.model)}
