"""Wanda (Sun et al. 2023): score |W_ij| · sqrt(mean x_j²), compared within each output row."""
from __future__ import annotations

import torch

from ..adapters import weight_matrix
from ..engine import LayerStep, LayerwiseEngine, input_statistics
from ..masks import select_mask, wanda_scores
from .base import PruneContext, register
from .masking import MaskingMethod


class InputSquareMean:
    """Running mean over calibration tokens of x_j² for every input feature j (fp32)."""

    def __init__(self, features: int, device):
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
class Wanda(MaskingMethod):
    name = "wanda"
    needs_calibration = True
    description = "|W|·‖x‖ scores compared per output row, layer by layer on calibration data"

    @torch.no_grad()
    def prune(self, ctx: PruneContext) -> dict:
        input_ids, _ = ctx.calibration()
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(input_ids)
        per_layer = {}

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)

            def make(name):
                return InputSquareMean(weight_matrix(targets[name]).shape[1], ctx.device)

            with input_statistics(targets, make) as stats:
                step.forward()
            for name, module in targets.items():
                scores = wanda_scores(weight_matrix(module), stats[name].mean)
                self.apply_mask(module, select_mask(scores, self.target, per="row"))
            per_layer[step.index] = self.layer_report(targets)

        engine.run(visit, description="wanda")
        return self.summary(per_layer)
