"""SparseGPT (Frantar & Alistarh 2023): OBS-style pruning with error compensation, layer by layer."""
from __future__ import annotations

import torch

from ..adapters import weight_matrix
from ..engine import LayerStep, LayerwiseEngine, input_statistics
from ..masks import sparsegpt_prune
from ..ratios import MaskTarget
from .base import MethodError, PruneContext, register
from .masking import MaskingMethod


class HessianAccumulator:
    """H = (2/n) Σ x xᵀ over calibration tokens, in fp32 with TF32 disabled."""

    def __init__(self, features: int, device):
        self.hessian = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.hessian *= self.tokens / (self.tokens + n)
        self.tokens += n
        x = x * (2.0 / self.tokens) ** 0.5
        self.hessian += x.t() @ x


@register
class SparseGPT(MaskingMethod):
    name = "sparsegpt"
    needs_calibration = True
    description = "Hessian-based pruning with weight updates (blocks of 128, lazy batch updates)"

    def __init__(self, target: MaskTarget, block_size: int = 128, damp_fraction: float = 0.01):
        super().__init__(target)
        if block_size < 1 or not 0 < damp_fraction < 1:
            raise MethodError("sparsegpt: block_size must be >= 1 and damp_fraction in (0, 1)")
        self.block_size = block_size
        self.damp_fraction = damp_fraction

    def options(self) -> dict:
        return {**super().options(), "block_size": self.block_size, "damp_fraction": self.damp_fraction}

    @torch.no_grad()
    def prune(self, ctx: PruneContext) -> dict:
        input_ids, _ = ctx.calibration()
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(input_ids)
        per_layer, solver = {}, {}
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)

            def make(name):
                return HessianAccumulator(weight_matrix(targets[name]).shape[1], ctx.device)

            with input_statistics(targets, make) as hessians:
                step.forward()
            for name, module in targets.items():
                weight = weight_matrix(module)
                new_weight, _, info = sparsegpt_prune(weight, hessians[name].hessian, self.target,
                                                      self.block_size, self.damp_fraction)
                weight.copy_(new_weight)
                solver[name] = info
            per_layer[step.index] = self.layer_report(targets)

        try:
            engine.run(visit, description="sparsegpt")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        report = self.summary(per_layer)
        report["solver"] = {
            "max_damping_fraction": max(i["damping_fraction"] for i in solver.values()),
            "dead_inputs": sum(i["dead_inputs"] for i in solver.values()),
        }
        return report
