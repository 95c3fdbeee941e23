"""Shared orchestration for mask-based methods: which modules, which target, and the sparsity report."""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import weight_matrix
from ..masks import sparsity_of
from ..ratios import MaskTarget, RatioError, mask_target
from .base import MethodError, PruningMethod


class MaskingMethod(PruningMethod):
    """Zeroes weights of every linear inside the decoder layers to reach `target`."""

    def __init__(self, target: MaskTarget):
        self.target = target

    @classmethod
    def build(cls, sparsity=None, nm=None, **options) -> "MaskingMethod":
        try:
            target = mask_target(sparsity, nm)
        except RatioError as exc:
            raise MethodError(f"{cls.name}: {exc}") from None
        try:
            return cls(target, **options)
        except TypeError:
            raise MethodError(f"{cls.name}: unknown option(s) {sorted(options)}") from None

    def options(self) -> dict:
        return {"target": self.target.as_dict()}

    @staticmethod
    def layer_report(targets: dict[str, nn.Module]) -> dict[str, dict]:
        report = {}
        for name, module in targets.items():
            weight = weight_matrix(module)
            report[name] = {"numel": weight.numel(), "zeros": int((weight == 0).sum()),
                            "sparsity": round(sparsity_of(weight), 6)}
        return report

    @staticmethod
    def summary(per_layer_modules: dict[int, dict[str, dict]]) -> dict:
        """Totals over the targeted weights, per decoder layer and per module."""
        per_layer, per_module = {}, {}
        for index, modules in sorted(per_layer_modules.items()):
            numel = sum(r["numel"] for r in modules.values())
            zeros = sum(r["zeros"] for r in modules.values())
            per_layer[str(index)] = {"numel": numel, "zeros": zeros, "sparsity": round(zeros / max(1, numel), 6)}
            per_module.update(modules)
        numel = sum(r["numel"] for r in per_layer.values())
        zeros = sum(r["zeros"] for r in per_layer.values())
        return {
            "targeted_parameters": numel,
            "zeroed_parameters": zeros,
            "total_sparsity": round(zeros / max(1, numel), 6),
            "per_layer": per_layer,
            "per_module": per_module,
        }

    @staticmethod
    @torch.no_grad()
    def apply_mask(module: nn.Module, mask: torch.Tensor) -> None:
        weight_matrix(module)[mask] = 0
