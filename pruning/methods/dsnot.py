"""DSnoT (Zhang et al. 2024): Wanda's or SparseGPT's mask, then refined by training-free prune-and-grow
swaps inside each output row (maths in pruning/methods/dsnot_refine.py), layer by layer on the shared engine.

The base method prunes each linear exactly as it does alone (its own statistics and `prune_module`); the
swaps then move weights between removed and kept so that each row's expected reconstruction error
shrinks, keeping the row's count of zeros (unstructured) and each group's N (N:M). Regrown weights get
their dense value back; SparseGPT's updated values stay on the weights it kept.

Two choices go beyond the reference implementation (github.com/zyxxmu/DSnoT): its SparseGPT base only
borrows SparseGPT's score without the weight updates, here the updates are kept; and with `error_guard`
(default) a row keeps its refined weights only when its squared reconstruction error on the calibration
inputs strictly falls, so no linear ends worse than its base mask (it costs one d×d input second moment
per distinct input, which SparseGPT gathers anyway).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import PruneContext, full_fp32, no_grad, register
from .mask_base import CalibratedMaskingMethod
from ..core.options import Option
from .sparsegpt import HessianAccumulator, SparseGPT
from .wanda import Wanda

if TYPE_CHECKING:
    from ..core.engine import InputMoments

BASES = {"wanda": Wanda, "sparsegpt": SparseGPT}


class DSnoTStatistics:
    """The base method's accumulator, DSnoT's input moments and (for the guard) the input second moment,
    fed from one hook; SparseGPT's Hessian serves as the second moment when it is the base."""

    def __init__(self, base, moments: InputMoments, second_moment: HessianAccumulator | None):
        self.base, self.moments, self.second_moment = base, moments, second_moment

    def add(self, x) -> None:
        self.base.add(x)
        self.moments.add(x)
        if self.second_moment is not None and self.second_moment is not self.base:
            self.second_moment.add(x)


@register
class DSnoT(CalibratedMaskingMethod):
    name = "dsnot"
    needs_calibration = True
    description = ("Wanda or SparseGPT mask refined by training-free prune-and-grow swaps per output row "
                   "(DSnoT); same sparsity, N:M kept")

    OPTIONS = CalibratedMaskingMethod.OPTIONS + (
        Option("base", str, "method whose mask (and, for SparseGPT, updated weights) DSnoT refines", default="wanda",
               choices=tuple(BASES)),
        Option("max_cycles", int, "prune-and-grow swaps per row at most", default=50, low=1),
        Option("update_threshold", float, "a row stops once |expected reconstruction error| is at most this",
               default=0.1, low=0),
        Option("variance_power", float, "regrowth ranks W·E[x] / Var[x]^power (0: by W·E[x] alone)", default=1.0,
               low=0),
        Option("same_sign", bool, "a row also stops when a swap would flip the sign of its error (N:M swaps always "
                                  "do, as the reference)", default=False),
        Option("skip", str, "linears left with the base mask: the MLP's (reference default), the attention's, or none",
               default="mlp", choices=("mlp", "attention", "none")),
        Option("error_guard", bool, "keep a refined row only when its squared reconstruction error on the calibration "
                                    "inputs falls (not in the paper)", default=True),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.base_method = BASES[self.base].build(sparsity=self.sparsity, nm=self.nm, one_pass=self.one_pass)
        self.refined_names: set[str] = set()

    def refine_settings(self):
        from .dsnot_refine import RefineSettings

        return RefineSettings(self.max_cycles, self.update_threshold, self.variance_power, self.same_sign)

    def statistics(self, weight, device):
        from ..core.engine import InputMoments

        base = self.base_method.statistics(weight, device)
        second_moment = None
        if self.error_guard:
            second_moment = base if isinstance(base, HessianAccumulator) else HessianAccumulator(weight.shape[1], device)
        return DSnoTStatistics(base, InputMoments(device), second_moment)

    def prune_module(self, name, module, statistics):
        from ..core.adapters import weight_matrix
        from ..core.ratios import NMPattern
        from .dsnot_refine import dsnot_mask, keep_better_rows, refined_weights

        weight = weight_matrix(module)
        dense = weight.detach().clone()
        base_info = self.base_method.prune_module(name, module, statistics.base)
        if name not in self.refined_names:
            return {"base": base_info, "refined": False}
        base = weight.detach().clone()
        moments = statistics.moments
        pattern = self.target if isinstance(self.target, NMPattern) else None
        mask, info = dsnot_mask(dense, base, moments.mean, moments.variance, moments.square_mean, pattern,
                                self.refine_settings())
        refined = refined_weights(dense, base, mask)
        if statistics.second_moment is not None:
            refined, guard = keep_better_rows(dense, base, refined, statistics.second_moment.hessian)
            info.update(guard)
        weight.copy_(refined.to(weight.dtype))
        info["swaps"] = int(((refined == 0) & (base != 0)).sum())  # those kept after the guard
        info["rows_changed"] = int((refined != base).any(dim=1).sum())
        return {"base": base_info, "refined": True, **info}

    def set_planned(self, planned: dict[str, int]) -> None:
        """A non-uniform allocation (OWL, schedule, ramp, search) is handed to the base method too, whose mask
        DSnoT refines without changing any row's count of zeros."""
        super().set_planned(planned)
        self.base_method.set_planned(planned)

    def refinable(self, ctx: PruneContext) -> set[str]:
        """Full names of the targeted linears DSnoT refines (the others keep the base mask)."""
        names = set()
        for index, targets in self.targets(ctx).items():
            prefix = f"{ctx.adapter.layers}.{index}."
            for name in targets:
                relative = name.removeprefix(prefix)
                attention = relative in ctx.adapter.attention_projections or \
                    relative.startswith(ctx.adapter.attention + ".")
                if self.skip == "none" or (self.skip == "mlp") == attention:
                    names.add(name)
        return names

    @no_grad
    @full_fp32  # SparseGPT's solve and the guard's errors
    def prune(self, ctx: PruneContext) -> dict:
        self.refined_names = self.refinable(ctx)
        return super().prune(ctx)

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        report = self.base_method.finish(report, {name: d["base"] for name, d in details.items()
                                                  if d["base"] is not None})
        refined = {name: d for name, d in details.items() if d["refined"]}
        summary = {"refined_modules": len(refined), "swaps": sum(d["swaps"] for d in refined.values()),
                   "rows_changed": sum(d["rows_changed"] for d in refined.values())}
        if self.error_guard:
            summary["rows_restored"] = sum(d["rows_restored"] for d in refined.values())
            summary["reconstruction_error"] = {  # Σ over refined linears of Σ_rows δᵀHδ, H = 2/n Σ x xᵀ
                "base": sum(d["error_base"] for d in refined.values()),
                "refined": sum(d["error_refined"] for d in refined.values())}
        report["dsnot"] = summary
        return report
