"""Shared orchestration for mask-based methods: their options, which modules, which target, how the target
is spread over the layers (uniform, OWL or a schedule; maths in pruning/methods/allocation.py), the optional block
reconstruction after each layer (pruning/methods/reconstruction.py), and the sparsity report."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .allocation import (ALLOCATIONS, OWL, OWL_LAMBDA, OWL_M, RAMP, SCHEDULE, SEARCH, UNIFORM, AllocationError, centred,
                          layer_zero_counts, outlier_ratio, owl_sparsities, ramp, split_zeros)
from ..core.ratios import MaskTarget, NMPattern, RatioError, mask_target, parse_nm
from .base import MethodError, PruneContext, PruningMethod, no_grad
from .allocation_search import SEARCH_NAMES, SEARCH_OPTIONS, level_sparsities
from .reconstruction import BLOCKS, NONE, RECONSTRUCTION_NAMES, RECONSTRUCTION_OPTIONS
from ..core.options import Option

if TYPE_CHECKING:
    import torch

TARGET_OPTIONS = (
    Option("sparsity", float, "fraction of the targeted weights to zero", low=0, high=1, high_open=True, ratio=True),
    Option("nm", str, "N:M pattern, N kept out of every M consecutive input weights (e.g. 2:4)", ratio=True,
           check=lambda text: parse_nm(text).describe()),
)
ONE_PASS = Option("one_pass", bool, "one forward per layer: the batches run in lockstep and each linear is pruned "
                                    "once all their inputs to it arrived (true-sequential, holds every window's "
                                    "activations at once)", default=False)


def _layer_sparsities(values: list[float]) -> list[float]:
    if not values:
        raise ValueError("needs one sparsity per decoder layer")
    outside = [v for v in values if not 0 <= v < 1]
    if outside:
        raise ValueError(f"every entry must be a sparsity in [0, 1), got {outside[0]:g}")
    return values


def _first_and_last(values: list[float]) -> list[float]:
    if len(values) != 2:
        raise ValueError(f"takes [first, last] (two sparsities), got {len(values)} numbers")
    return _layer_sparsities(values)


ALLOCATION_OPTIONS = (
    Option("allocation", str, "how the sparsity is spread over the decoder layers: uniform (every layer alike), owl "
           "(outlier-weighted, Yin et al. 2024: layers with more Wanda-score outliers pruned less; needs calibration "
           "data, for magnitude too, as the paper's code), schedule, ramp, or search (EvoPress-style evolutionary "
           "search of the layer sparsities on held-out calibration windows; needs calibration data, for magnitude "
           "too); the non-uniform ones need a sparsity "
           "(not N:M) and zero exactly round(sparsity × targeted weights)", default=UNIFORM, choices=ALLOCATIONS),
    Option("owl_m", float, "OWL: a Wanda score is an outlier above owl_m × its layer's mean score", default=OWL_M,
           low=0, low_open=True),
    Option("owl_lambda", float, "OWL: layer outlier ratios min-max scaled to [0, 2·owl_lambda] and subtracted from "
           "the sparsity, the mean kept at the sparsity (as the paper's code); sparsity ± owl_lambda must lie in "
           "[0, 1)",
           default=OWL_LAMBDA, low=0, high=0.5, high_open=True),
    Option("schedule", list, "allocation=schedule: one sparsity per decoder layer, shifted by one constant so that "
           "their mean weighted by layer size is the sparsity", item=float, check=_layer_sparsities),
    Option("ramp", list, "allocation=ramp: [first, last] layer sparsities, linear in between (the skill document's "
           "layer-wise schedule), shifted like schedule", item=float, check=_first_and_last),
) + SEARCH_OPTIONS
ALLOCATION_NAMES = tuple(option.name for option in ALLOCATION_OPTIONS)


class InputSquareMean:
    """Running mean over calibration tokens of x_j² for every input feature j (fp32): Wanda's statistic."""

    def __init__(self, features: int, device):
        import torch

        self.total = torch.zeros(features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        self.total += (x * x).sum(dim=0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(1, self.tokens)


class MaskingMethod(PruningMethod):
    """Zeroes weights of every linear inside the decoder layers to reach `target` (a sparsity or N:M),
    every layer alike or, with a non-uniform `allocation`, each layer to its own sparsity with the total
    exact. With `reconstruct=blocks` each pruned layer's kept weights are then tuned to the dense model's outputs
    on the calibration windows."""

    STREAMS = READS_IGNORE = True
    FAMILY = "Wanda / SparseGPT"
    RETRAINS = REMOVES_LAYERS = COMPOSITE = False
    SUPPORTS_MOE = True  # zeroes the experts' fused weights like any other

    OPTIONS = TARGET_OPTIONS + ALLOCATION_OPTIONS + RECONSTRUCTION_OPTIONS

    def __init__(self, **values):
        super().__init__(**values)
        try:
            self.target: MaskTarget = mask_target(values["sparsity"], values["nm"])
        except RatioError as exc:
            raise MethodError(f"{self.name}: {exc}") from None
        self._check_allocation()
        if self.allocation in (OWL, SEARCH):
            self.needs_calibration = True  # Wanda scores' outliers, or the search's database and held-out windows
        if self.reconstruct == BLOCKS:
            self.needs_calibration = True  # the dense outputs to match come from calibration windows
        elif any(getattr(self, name) != option.default for name, option in zip(RECONSTRUCTION_NAMES,
                                                                                   RECONSTRUCTION_OPTIONS)):
            raise MethodError(f"{self.name}: reconstruct_steps and reconstruct_lr need reconstruct=blocks")
        self.planned: dict[str, int] = {}

    def _check_allocation(self) -> None:
        for kind, given in ((SCHEDULE, self.schedule), (RAMP, self.ramp)):
            if given is not None and self.allocation != kind:
                raise MethodError(f"{self.name}: {kind} is given but allocation is {self.allocation} "
                                  f"(add allocation={kind})")
            if given is None and self.allocation == kind:
                raise MethodError(f"{self.name}: allocation={kind} needs {kind}=[...]")
        searched = [option.name for option in SEARCH_OPTIONS if getattr(self, option.name) != option.default]
        if searched and self.allocation != SEARCH:
            raise MethodError(f"{self.name}: {searched[0]} is given but allocation is {self.allocation} "
                              f"(add allocation={SEARCH})")
        if self.allocation == UNIFORM:
            return
        if isinstance(self.target, NMPattern):
            raise MethodError(f"{self.name}: allocation={self.allocation} needs a sparsity; an N:M pattern "
                              f"({self.target.describe()}) prunes every layer alike")
        if self.allocation == OWL:
            low, high = self.target.value - self.owl_lambda, self.target.value + self.owl_lambda
            if low < 0 or high >= 1:
                raise MethodError(f"{self.name}: owl_lambda {self.owl_lambda:g} spreads sparsity "
                                  f"{self.target.value:g} over [{low:g}, {high:g}]; it must stay inside [0, 1)")
        if self.allocation == SEARCH:
            try:
                level_sparsities(self.target.value, self.search_step, self.search_levels)
            except AllocationError as exc:
                raise MethodError(f"{self.name}: {exc}") from None

    def options(self) -> dict:
        """The target, the method's own options, and the allocation's and the reconstruction's options unless they
        are uniform and none (so such a run's record keeps its published layout)."""
        rest = {k: v for k, v in super().options().items()
                if k not in ("sparsity", "nm") + ALLOCATION_NAMES + RECONSTRUCTION_NAMES}
        allocation = {"allocation": self.allocation}
        if self.allocation == OWL:
            allocation.update(owl_m=self.owl_m, owl_lambda=self.owl_lambda)
        elif self.allocation in (SCHEDULE, RAMP):
            allocation[self.allocation] = getattr(self, self.allocation)
        elif self.allocation == SEARCH:
            allocation.update((name, getattr(self, name)) for name in SEARCH_NAMES)
        reconstruction = {name: getattr(self, name) for name in RECONSTRUCTION_NAMES} \
            if self.reconstruct != NONE else {}
        return {"target": self.target.as_dict(), **rest, **(allocation if self.allocation != UNIFORM else {}),
                **reconstruction}

    def check_model(self, ctx: PruneContext) -> None:
        """Every ignore pattern matches a linear it could keep dense, at least one linear is targeted, an N:M
        group fits in every targeted input width, and a schedule has one sparsity per decoder layer that stays
        in [0, 1) once centred on the target, and block reconstruction tunes plain linears only (not a mixture of
        experts' fused weights). Needs only the modules' shapes: the pre-flight asks it of the weightless model too."""
        from ..core.adapters import ExpertLinear, weight_matrix

        self.check_ignore(ctx)
        targets = {name: module for modules in self.targets(ctx).values() for name, module in modules.items()}
        if not targets:
            raise MethodError(f"{self.name}: ignore patterns {list(ctx.ignore)} leave no linear module to prune")
        if self.reconstruct == BLOCKS:
            experts = [name for name, module in targets.items() if isinstance(module, ExpertLinear)]
            if experts:
                raise MethodError(f"{self.name}: reconstruct=blocks tunes plain linear weights; {experts[0]} is a "
                                  f"mixture-of-experts expert (leave reconstruct out on MoE models)")
        if isinstance(self.target, NMPattern):
            name, width = min(((n, weight_matrix(m).shape[1]) for n, m in targets.items()), key=lambda t: t[1])
            if self.target.m > width:
                raise MethodError(f"{self.name}: N:M {self.target.describe()} needs M <= the input width of every "
                                  f"targeted linear; {name} has {width} (ignore it or use a smaller M)")
        if self.allocation in (SCHEDULE, RAMP):
            self.layer_sparsities(self.layer_sizes(ctx))

    def check_ignore(self, ctx: PruneContext) -> None:
        """Refuse an ignore pattern that matches none of the linears this method prunes (a typo would otherwise
        prune what it meant to keep), naming a few of their names nearest the pattern."""
        import difflib
        import fnmatch

        if not ctx.ignore:
            return
        layers = ctx.adapter.decoder_layers(ctx.model)
        names = [name for index in range(len(layers)) for name in ctx.adapter.linear_targets(ctx.model, index)]
        for pattern in ctx.ignore:
            if not any(fnmatch.fnmatch(name, pattern) for name in names):
                # one name per place in a layer (the first layer that has it), the nearest to the pattern's text
                firsts = {name.split(".", ctx.adapter.layers.count(".") + 2)[-1]: name for name in reversed(names)}
                text = pattern.replace("*", "").lower()
                nearest = sorted(firsts.values(), key=lambda name: -difflib.SequenceMatcher(
                    None, text, name.lower()).ratio())[:3]
                raise MethodError(f"{self.name}: ignore pattern {pattern!r} matches none of the {len(names)} linear "
                                  f"modules it prunes (full names, e.g. {', '.join(nearest)})")

    def layer_sizes(self, ctx: PruneContext) -> dict[int, dict[str, int]]:
        """{layer index: {module name: targeted weights}}."""
        from ..core.adapters import weight_matrix

        return {index: {name: weight_matrix(module).numel() for name, module in modules.items()}
                for index, modules in self.targets(ctx).items()}

    def check_calibration(self, nsamples: int) -> None:
        """allocation=search holds its last search_windows calibration windows out of the database: some must
        remain."""
        if self.allocation == SEARCH and nsamples <= self.search_windows:
            raise MethodError(f"{self.name}: allocation=search holds out search_windows={self.search_windows} of the "
                              f"{nsamples} calibration windows; give more windows or fewer search_windows")
        super().check_calibration(nsamples)

    def streaming_refusal(self) -> str | None:
        if self.allocation == SEARCH:
            return (f"method {self.name} with allocation=search cannot stream layers from disk (its database and "
                    f"its candidates' forwards need the whole model in memory)")
        return super().streaming_refusal()

    def layer_sparsities(self, sizes: dict[int, dict[str, int]], outlier_ratios: list | None = None) -> list[float]:
        """Every layer's sparsity under a non-uniform allocation (before rounding to counts), refused in one
        line when a schedule does not fit the model or a layer would leave [0, 1)."""
        layers = [sum(sizes[index].values()) for index in sorted(sizes)]
        target = self.target.value
        try:
            if self.allocation == SCHEDULE:
                if len(self.schedule) != len(layers):
                    raise AllocationError(f"schedule has {len(self.schedule)} sparsities but the model has "
                                          f"{len(layers)} decoder layers")
                sparsities = centred(self.schedule, layers, target)
            elif self.allocation == RAMP:
                sparsities = centred(ramp(*self.ramp, len(layers)), layers, target)
            else:
                sparsities = owl_sparsities(outlier_ratios, layers, target, self.owl_lambda)
            layer_zero_counts(sparsities, layers, target)  # refuses sparsities outside [0, 1)
        except AllocationError as exc:
            raise MethodError(f"{self.name}: {exc}") from None
        return sparsities

    def plan_allocation(self, ctx: PruneContext) -> dict | None:
        """Fix how many weights each module loses (`planned_zeros`) and return the allocation's record
        for the report; nothing to plan (None) when uniform. OWL runs its statistics pass here."""
        self.set_planned({})
        if self.allocation == UNIFORM:
            return None
        sizes = self.layer_sizes(ctx)
        outliers, search = None, None
        if self.allocation == SEARCH:
            from .allocation_search import search_layer_sparsities

            sparsities, search = search_layer_sparsities(self, ctx, sizes)
        else:
            outliers = self.outlier_ratios(ctx) if self.allocation == OWL else None
            sparsities = self.layer_sparsities(sizes, outliers)
        layers = sorted(sizes)
        counts = layer_zero_counts(sparsities, [sum(sizes[i].values()) for i in layers], self.target.value)
        planned = {}
        for index, zeros in zip(layers, counts):
            names = list(sizes[index])
            planned.update(zip(names, split_zeros(zeros, [sizes[index][n] for n in names])))
        self.set_planned(planned)
        record = {"kind": self.allocation, "layer_sparsity": [round(s, 6) for s in sparsities], "layer_zeros": counts}
        if outliers is not None:
            record["outlier_ratio"] = [None if r is None else round(r, 6) for r in outliers]
        if search is not None:
            record["search"] = search
        return record

    def set_planned(self, planned: dict[str, int]) -> None:
        """Fix how many weights each named module loses (empty: the target's own count everywhere)."""
        self.planned = planned

    def prune_layer_from(self, targets: dict, statistics) -> None:
        """Prune one layer's targeted linears (`statistics`: their input accumulators, None for a method that
        needs none) to the planned zeros: how allocation=search builds its database with the method itself."""
        raise NotImplementedError

    def planned_zeros(self, name: str) -> int | None:
        """The exact number of weights `name` loses under a non-uniform allocation (None: the target's own)."""
        return self.planned.get(name)

    @no_grad
    def outlier_ratios(self, ctx: PruneContext) -> list[float | None]:
        """OWL's statistics pass over the dense model on the shared engine: each layer's outlier ratio of the
        Wanda scores of its targeted linears taken together (None for a layer with none)."""
        from ..core.adapters import weight_matrix
        from ..core.engine import LayerStep, LayerwiseEngine, input_statistics
        from .sparsify import wanda_scores

        input_ids, _ = ctx.calibration()
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(input_ids)
        ratios: dict[int, float] = {}

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)

            def make(name):
                return InputSquareMean(weight_matrix(targets[name]).shape[1], ctx.device)

            with input_statistics(targets, make) as statistics:
                outputs = step.forward()  # the layer is unchanged: its outputs are the next layer's inputs
            scores = [wanda_scores(weight_matrix(module), statistics[name].mean)
                      for name, module in targets.items() if name in statistics]  # not: experts no token reached
            if scores:
                ratios[step.index] = outlier_ratio(scores, self.owl_m)
            return outputs

        engine.run(visit, description=f"{self.name} outliers", read_only=True)
        return [ratios.get(index) for index in range(ctx.adapter.num_layers(ctx.model))]

    @staticmethod
    def targets(ctx: PruneContext) -> dict[int, dict]:
        """{layer index: {full name: module}} of the linears this run prunes (after `ctx.ignore`)."""
        return {index: ctx.adapter.linear_targets(ctx.model, index, ctx.ignore)
                for index in range(ctx.adapter.num_layers(ctx.model))}

    @staticmethod
    def layer_report(targets: dict) -> dict[str, dict]:
        from ..core.adapters import weight_matrix
        from .sparsify import sparsity_of

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
    def with_allocation(report: dict, allocation: dict | None) -> dict:
        """The report with the allocation's record (layer sparsities asked, zeros planned, OWL's outlier
        ratios) beside the measured per-layer sparsities; unchanged for a uniform run."""
        return {**report, "allocation": allocation} if allocation else report

    def block_reconstruction(self, engine):
        """The tuner of each pruned layer (`BlockReconstruction`) when reconstruct=blocks, else None."""
        from .reconstruction import BlockReconstruction, ReconstructionSettings

        if self.reconstruct != BLOCKS:
            return None
        return BlockReconstruction(engine, ReconstructionSettings(self.reconstruct_steps, self.reconstruct_lr))

    @staticmethod
    def with_reconstruction(report: dict, tuner) -> dict:
        """The report with the block reconstruction's record (each layer's error before and after); unchanged
        without one."""
        return {**report, "reconstruction": tuner.report()} if tuner is not None else report

    @staticmethod
    def apply_mask(module, mask) -> None:
        from ..core.adapters import weight_matrix

        weight_matrix(module)[mask] = 0


class CalibratedMaskingMethod(MaskingMethod):
    """A mask method that prunes each linear from statistics of its inputs, layer by layer on the engine.

    Two-pass (default, as the reference implementations): every linear's statistics come from the
    layer with its original weights, then the pruned layer is re-run to give the next layer's inputs.
    One-pass (`one_pass=True`): the batches go through the layer in lockstep and each linear is pruned
    once all batches' inputs to it have arrived, before any batch runs it, so later linears of the
    layer (o_proj, down_proj) see the outputs of the already-pruned earlier ones (as GPTQ's
    true-sequential) and the pruned layer's outputs come out of that single forward. It saves one
    layer forward per layer at the cost of holding every window's activations at once (a
    mixture-of-experts model runs them as one batch).
    """

    OPTIONS = MaskingMethod.OPTIONS + (ONE_PASS,)

    def statistics(self, weight, device):
        """A fresh accumulator (with `add(x)`) for a linear with this weight."""
        raise NotImplementedError

    def prune_module(self, name: str, module, statistics) -> dict | None:
        """Zero (and for SparseGPT update) the module's weight from its accumulated input statistics;
        may return details that `finish` receives per module."""
        raise NotImplementedError

    def prune_group(self, names: list[str], modules: list, statistics) -> list[dict | None]:
        """Prune linears that read the same input and so share one accumulator (q/k/v, gate/up); one by
        one unless the method solves them together. Returns each module's details."""
        return [self.prune_module(name, module, statistics) for name, module in zip(names, modules)]

    def finish(self, report: dict, details: dict[str, dict]) -> dict:
        """Add method-specific totals to the summary."""
        return report

    def prune_layer_from(self, targets: dict, statistics) -> None:
        """Each group of linears sharing an accumulator pruned together, as in a run (an expert that no token
        reached by magnitude)."""
        groups: dict[int, list[str]] = {}
        for name in targets:
            if name in statistics:
                groups.setdefault(id(statistics[name]), []).append(name)
            else:
                self.prune_uncalibrated(name, targets[name])
        for names in groups.values():
            self.prune_group(names, [targets[name] for name in names], statistics[names[0]])

    def prune_uncalibrated(self, name: str, module) -> None:
        """A mixture-of-experts expert that no calibration token was routed to has no input statistics: its
        linears are pruned by weight magnitude per output row to the same target (listed in the report)."""
        from ..core.adapters import weight_matrix
        from .sparsify import magnitude_scores, select_mask

        scores = magnitude_scores(weight_matrix(module))
        self.apply_mask(module, select_mask(scores, self.target, per="row", zeros=self.planned_zeros(name)))

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..core.adapters import ExpertLinear, weight_matrix
        from ..core.engine import LayerStep, LayerwiseEngine, SharedInputStatistics, input_statistics

        self.check_model(ctx)
        allocation = self.plan_allocation(ctx)
        input_ids, _ = ctx.calibration()
        # One-pass runs the batches in lockstep; experts see a batch-dependent set of tokens, so a
        # mixture-of-experts model runs all windows as one batch instead.
        experts = any(isinstance(module, ExpertLinear) for modules in self.targets(ctx).values()
                      for module in modules.values())
        batch_size = input_ids.shape[0] if self.one_pass and experts else ctx.batch_size
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, batch_size, ctx.progress)
        engine.capture(input_ids)
        tuner = self.block_reconstruction(engine)
        per_layer, details, uncalibrated = {}, {}, []

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)
            dense = tuner.dense_outputs(step) if tuner is not None else None

            def make(name):
                return self.statistics(weight_matrix(targets[name]), ctx.device)

            def prune_together(names, statistics):
                infos = self.prune_group(names, [targets[name] for name in names], statistics)
                details.update((name, info) for name, info in zip(names, infos) if info is not None)

            if self.one_pass and not experts:
                shared = SharedInputStatistics(make, on_ready=lambda name, s: prune_together([name], s))
                outputs = engine.forward_in_lockstep(step.layer, targets, shared.add)
                shared.close(targets)
                statistics = shared.stats
            elif self.one_pass:
                with input_statistics(targets, make, on_ready=lambda name, s: prune_together([name], s)) \
                        as statistics:
                    outputs = step.forward()
            else:
                with input_statistics(targets, make) as statistics:
                    step.forward()
                outputs = None  # the engine re-runs the pruned layer
                groups: dict[int, list[str]] = {}  # accumulator -> the modules sharing it, in layer order
                for name in targets:
                    if name in statistics:
                        groups.setdefault(id(statistics[name]), []).append(name)
                for names in groups.values():
                    prune_together(names, statistics[names[0]])
            for name in targets:
                if name not in statistics:  # an expert no calibration token was routed to
                    self.prune_uncalibrated(name, targets[name])
                    uncalibrated.append(name)
            if tuner is not None:
                outputs = tuner.tune(step, targets, dense)
            per_layer[step.index] = self.layer_report(targets)
            return outputs

        engine.run(visit, description=self.name)
        report = self.finish(self.summary(per_layer), details)
        if uncalibrated:
            report["uncalibrated_experts"] = {"linears": uncalibrated, "pruned_by": "magnitude per output row"}
        return self.with_reconstruction(self.with_allocation(report, allocation), tuner)
