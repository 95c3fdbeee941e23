"""SparseGPT (Frantar & Alistarh 2023): OBS-style pruning with error compensation, layer by layer."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import PruneContext, full_fp32, no_grad, register
from .mask_base import CalibratedMaskingMethod
from ..core.options import Option

if TYPE_CHECKING:
    import torch
    from .sparsify import InverseHessian


class HessianAccumulator:
    """H = (2/n) Σ x xᵀ over calibration tokens, in fp32 with TF32 disabled. Only the lower triangle is
    accumulated (`masks.lower_rank_update`); `hessian` is the full symmetric matrix."""

    def __init__(self, features: int, device):
        import torch

        self._lower = torch.zeros(features, features, dtype=torch.float32, device=device)
        self._hessian: torch.Tensor | None = None
        self.tokens = 0
        self._inverse: InverseHessian | None = None

    def add(self, x: torch.Tensor) -> None:
        from .sparsify import lower_rank_update

        self._inverse = self._hessian = None
        x = x.reshape(-1, x.shape[-1]).float()
        kept = self.tokens / (self.tokens + x.shape[0])  # the running mean's weight on what came before
        self.tokens += x.shape[0]
        lower_rank_update(self._lower, x * (2.0 / self.tokens) ** 0.5, kept)

    @property
    def hessian(self) -> torch.Tensor:
        from .sparsify import symmetric_from_lower

        if self._hessian is None:
            self._hessian = symmetric_from_lower(self._lower)
        return self._hessian

    def inverse(self, damp_fraction: float) -> InverseHessian:
        """Computed once and reused by every linear sharing this accumulator (q/k/v, gate/up)."""
        from .sparsify import inverse_hessian

        if self._inverse is None:
            self._inverse = inverse_hessian(self.hessian, damp_fraction)
        return self._inverse


DAMP_FRACTION = Option("damp_fraction", float, "dampening added to the Hessian diagonal, as a fraction of its mean",
                       default=0.01, low=0, high=1, low_open=True, high_open=True)


class HessianMethod(CalibratedMaskingMethod):
    """A mask method that solves each linear's layer problem on the Hessian of its inputs (`HessianAccumulator`),
    the linears reading the same input together (`prune_group`), in full fp32."""

    needs_calibration = True

    def statistics(self, weight, device):
        return HessianAccumulator(weight.shape[1], device)

    def prune_module(self, name, module, statistics):
        return self.prune_group([name], [module], statistics)[0]

    @no_grad
    @full_fp32
    def prune(self, ctx: PruneContext) -> dict:
        return super().prune(ctx)


@register
class SparseGPT(HessianMethod):
    name = "sparsegpt"
    description = "Hessian-based pruning with weight updates (blocks of 128, lazy batch updates)"

    OPTIONS = CalibratedMaskingMethod.OPTIONS + (
        Option("block_size", int, "columns solved together before the lazy batch update", default=128, low=1),
        DAMP_FRACTION,
    )

    def prune_group(self, names, modules, statistics):
        """One column loop for all linears sharing the Hessian (the same result as one loop each)."""
        from ..core.adapters import weight_matrix
        from .sparsify import sparsegpt_solve_shared

        weights = [weight_matrix(module) for module in modules]
        solved = sparsegpt_solve_shared(weights, statistics.inverse(self.damp_fraction), self.target,
                                        self.block_size, [self.planned_zeros(name) for name in names])
        for weight, (new_weight, _, info) in zip(weights, solved):
            weight.copy_(new_weight)
        return [info for _, _, info in solved]

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        report["solver"] = {
            "max_damping_fraction": max(i["damping_fraction"] for i in details.values()),
            "dead_inputs": sum(i["dead_inputs"] for i in details.values()),
        }
        return report
