"""Shared orchestration for mask-based methods: which modules, which target, and the sparsity report."""
from __future__ import annotations

import torch
from torch import nn

from ..adapters import weight_matrix
from ..engine import LayerStep, LayerwiseEngine, input_statistics
from ..masks import sparsity_of
from ..ratios import MaskTarget, RatioError, mask_target
from .base import MethodError, PruneContext, PruningMethod


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


class CalibratedMaskingMethod(MaskingMethod):
    """A mask method that prunes each linear from statistics of its inputs, layer by layer on the engine.

    Two-pass (default, as the reference implementations): every linear's statistics come from the
    layer with its original weights, then the pruned layer is re-run to give the next layer's inputs.
    One-pass (`one_pass=True`): all calibration windows go through the layer as one batch and each
    linear is pruned the moment its input arrives, so later linears of the layer (o_proj, down_proj)
    see the outputs of the already-pruned earlier ones (as GPTQ's true-sequential) and the pruned
    layer's outputs come out of that single forward. It saves one layer forward per layer at the cost
    of holding every window's activations at once.
    """

    def __init__(self, target: MaskTarget, one_pass: bool = False):
        super().__init__(target)
        if not isinstance(one_pass, bool):
            raise MethodError(f"{self.name}: one_pass must be true or false, got {one_pass!r}")
        self.one_pass = one_pass

    def options(self) -> dict:
        return {**super().options(), "one_pass": self.one_pass}

    def statistics(self, weight: torch.Tensor, device: torch.device):
        """A fresh accumulator (with `add(x)`) for a linear with this weight."""
        raise NotImplementedError

    def prune_module(self, name: str, module: nn.Module, statistics) -> dict | None:
        """Zero (and for SparseGPT update) the module's weight from its accumulated input statistics;
        may return details that `finish` receives per module."""
        raise NotImplementedError

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        """Add method-specific totals to the summary."""
        return report

    @torch.no_grad()
    def prune(self, ctx: PruneContext) -> dict:
        input_ids, _ = ctx.calibration()
        batch_size = input_ids.shape[0] if self.one_pass else ctx.batch_size
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, batch_size, ctx.progress)
        engine.capture(input_ids)
        per_layer, details = {}, {}

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)

            def make(name):
                return self.statistics(weight_matrix(targets[name]), ctx.device)

            def prune_one(name, statistics):
                info = self.prune_module(name, targets[name], statistics)
                if info is not None:
                    details[name] = info

            if self.one_pass:
                with input_statistics(targets, make, on_ready=prune_one):
                    outputs = step.forward()
            else:
                with input_statistics(targets, make) as statistics:
                    step.forward()
                for name in targets:
                    prune_one(name, statistics[name])
                outputs = None  # the engine re-runs the pruned layer
            per_layer[step.index] = self.layer_report(targets)
            return outputs

        engine.run(visit, description=self.name)
        return self.finish(self.summary(per_layer), details)
