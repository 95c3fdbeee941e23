"""SparseGPT (Frantar & Alistarh 2023): OBS-style pruning with error compensation, layer by layer."""
from __future__ import annotations

import torch

from ..adapters import weight_matrix
from ..masks import InverseHessian, inverse_hessian, sparsegpt_solve
from ..ratios import MaskTarget
from .base import MethodError, PruneContext, register
from .masking import CalibratedMaskingMethod


class HessianAccumulator:
    """H = (2/n) Σ x xᵀ over calibration tokens, in fp32 with TF32 disabled."""

    def __init__(self, features: int, device):
        self.hessian = torch.zeros(features, features, dtype=torch.float32, device=device)
        self.tokens = 0
        self._inverse: InverseHessian | None = None

    def add(self, x: torch.Tensor) -> None:
        self._inverse = None
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.hessian *= self.tokens / (self.tokens + n)
        self.tokens += n
        x = x * (2.0 / self.tokens) ** 0.5
        self.hessian += x.t() @ x

    def inverse(self, damp_fraction: float) -> InverseHessian:
        """Computed once and reused by every linear sharing this accumulator (q/k/v, gate/up)."""
        if self._inverse is None:
            self._inverse = inverse_hessian(self.hessian, damp_fraction)
        return self._inverse


@register
class SparseGPT(CalibratedMaskingMethod):
    name = "sparsegpt"
    needs_calibration = True
    description = "Hessian-based pruning with weight updates (blocks of 128, lazy batch updates)"

    def __init__(self, target: MaskTarget, block_size: int = 128, damp_fraction: float = 0.01, one_pass: bool = False):
        super().__init__(target, one_pass)
        if block_size < 1 or not 0 < damp_fraction < 1:
            raise MethodError("sparsegpt: block_size must be >= 1 and damp_fraction in (0, 1)")
        self.block_size = block_size
        self.damp_fraction = damp_fraction

    def options(self) -> dict:
        return {**super().options(), "block_size": self.block_size, "damp_fraction": self.damp_fraction}

    def statistics(self, weight, device):
        return HessianAccumulator(weight.shape[1], device)

    def prune_module(self, name, module, statistics):
        weight = weight_matrix(module)
        new_weight, _, info = sparsegpt_solve(weight, statistics.inverse(self.damp_fraction), self.target,
                                              self.block_size)
        weight.copy_(new_weight)
        return info

    @torch.no_grad()
    def prune(self, ctx: PruneContext) -> dict:
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return super().prune(ctx)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        report["solver"] = {
            "max_damping_fraction": max(i["damping_fraction"] for i in details.values()),
            "dead_inputs": sum(i["dead_inputs"] for i in details.values()),
        }
        return report
