"""Shared orchestration for mask-based methods: their options, which modules, which target, and the
sparsity report."""
from __future__ import annotations

from ..ratios import MaskTarget, NMPattern, RatioError, mask_target, parse_nm
from .base import MethodError, PruneContext, PruningMethod, no_grad
from .options import Option

TARGET_OPTIONS = (
    Option("sparsity", float, "fraction of the targeted weights to zero", low=0, high=1, high_open=True, ratio=True),
    Option("nm", str, "N:M pattern, N kept out of every M consecutive input weights (e.g. 2:4)", ratio=True,
           check=lambda text: parse_nm(text).describe()),
)
ONE_PASS = Option("one_pass", bool, "prune each linear as its input arrives, one forward per layer "
                                    "(true-sequential, holds every window's activations at once)", default=False)


class MaskingMethod(PruningMethod):
    """Zeroes weights of every linear inside the decoder layers to reach `target` (a sparsity or N:M)."""

    OPTIONS = TARGET_OPTIONS

    def __init__(self, **values):
        super().__init__(**values)
        try:
            self.target: MaskTarget = mask_target(values["sparsity"], values["nm"])
        except RatioError as exc:
            raise MethodError(f"{self.name}: {exc}") from None

    def options(self) -> dict:
        rest = {k: v for k, v in super().options().items() if k not in ("sparsity", "nm")}
        return {"target": self.target.as_dict(), **rest}

    def check_model(self, ctx: PruneContext) -> None:
        """At least one linear is targeted, and an N:M group fits in every targeted input width."""
        from ..adapters import weight_matrix

        targets = {name: module for modules in self.targets(ctx).values() for name, module in modules.items()}
        if not targets:
            raise MethodError(f"{self.name}: ignore patterns {list(ctx.ignore)} leave no linear module to prune")
        if isinstance(self.target, NMPattern):
            name, width = min(((n, weight_matrix(m).shape[1]) for n, m in targets.items()), key=lambda t: t[1])
            if self.target.m > width:
                raise MethodError(f"{self.name}: N:M {self.target.describe()} needs M <= the input width of every "
                                  f"targeted linear; {name} has {width} (ignore it or use a smaller M)")

    @staticmethod
    def targets(ctx: PruneContext) -> dict[int, dict]:
        """{layer index: {full name: module}} of the linears this run prunes (after `ctx.ignore`)."""
        return {index: ctx.adapter.linear_targets(ctx.model, index, ctx.ignore)
                for index in range(ctx.adapter.num_layers(ctx.model))}

    @staticmethod
    def layer_report(targets: dict) -> dict[str, dict]:
        from ..adapters import weight_matrix
        from ..masks import sparsity_of

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
    def apply_mask(module, mask) -> None:
        from ..adapters import weight_matrix

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

    OPTIONS = TARGET_OPTIONS + (ONE_PASS,)

    def statistics(self, weight, device):
        """A fresh accumulator (with `add(x)`) for a linear with this weight."""
        raise NotImplementedError

    def prune_module(self, name: str, module, statistics) -> dict | None:
        """Zero (and for SparseGPT update) the module's weight from its accumulated input statistics;
        may return details that `finish` receives per module."""
        raise NotImplementedError

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        """Add method-specific totals to the summary."""
        return report

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..adapters import weight_matrix
        from ..engine import LayerStep, LayerwiseEngine, input_statistics

        self.check_model(ctx)
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
