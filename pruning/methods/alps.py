"""ALPS (Meng et al., NeurIPS 2024): each linear's ℓ0-constrained least-squares problem on the calibration
Hessian solved by ADMM with a growing penalty, then conjugate gradients on the kept weights (maths in
pruning/methods/sparsify.py: `alps_solve`), layer by layer on the shared engine. Unstructured and N:M; the
support is chosen across the whole matrix (unstructured) as the paper's, not per row or per block. Beyond
the paper: where ADMM's support ends worse than the one it started from (|w|·sqrt(H_jj)), after the same
refinement, the starting one is kept (counted in prune.json's `solver`)."""
from __future__ import annotations

from .base import register
from .mask_base import CalibratedMaskingMethod
from ..core.options import Option
from .sparsegpt import DAMP_FRACTION, HessianMethod


@register
class ALPS(HessianMethod):
    name = "alps"
    description = ("optimisation-based layer solver: ADMM on the l0-constrained least squares of each linear, "
                   "then conjugate gradients on the kept weights (ALPS)")

    OPTIONS = CalibratedMaskingMethod.OPTIONS + (
        Option("rho", float, "ADMM penalty to start from (it grows as the support settles)", default=0.1, low=0,
               low_open=True),
        Option("max_iterations", int, "ADMM iterations at most", default=300, low=1),
        Option("refine_iterations", int, "conjugate-gradient steps on the final support", default=20, low=0),
        DAMP_FRACTION,
    )

    def prune_group(self, names, modules, statistics):
        """One eigendecomposition of the shared input's Hessian for every linear reading it (q/k/v, gate/up)."""
        from ..core.adapters import weight_matrix
        from .sparsify import ALPSSettings, alps_solve, normalised_hessian

        settings = ALPSSettings(self.rho, self.max_iterations, self.refine_iterations)
        normalised = normalised_hessian(statistics.hessian, self.damp_fraction)
        infos = []
        for name, module in zip(names, modules):
            weight = weight_matrix(module)
            solved, info = alps_solve(weight, normalised, self.target, settings, self.planned_zeros(name))
            weight.copy_(solved)
            infos.append(info)
        return infos

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        errors = [info["error"] for info in details.values()]
        report["solver"] = {
            "iterations": {"max": max(i["iterations"] for i in details.values()),
                           "mean": round(sum(i["iterations"] for i in details.values()) / len(details), 1)},
            "mean_relative_error": sum(errors) / len(errors),
            "mean_relative_error_before_refinement":
                sum(i["error_after_admm"] for i in details.values()) / len(details),
            "linears_keeping_the_starting_support": sum(i["support"] == "start" for i in details.values()),
        }
        return report
