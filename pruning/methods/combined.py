"""`all` (PersLM `--method all`): heads → layers → sparsity → optional distillation, in one run.

Each stage is the ordinary method (heads, layers, a mask-based method such as wanda) applied to the
result of the previous one; stages whose ratio is not given are skipped. With `training_data` the
result is distilled from the model as it was before the first stage. Every stage's report is kept.
"""
from __future__ import annotations

import copy
from dataclasses import asdict

from ..structure import numel, removal_report
from .base import MethodError, PruneContext, PruningMethod, method_class, register
from .distill import DistillSettings, distill_model, load_teacher, split_arguments, training_windows
from .heads import Heads
from .layers import Layers


@register
class Combined(PruningMethod):
    name = "all"
    description = "heads, then layers, then sparsity, then (with training_data) distillation; each stage reported"

    def __init__(self, stages: list[PruningMethod], settings: DistillSettings | None):
        self.stages, self.settings = stages, settings
        self.needs_calibration = any(stage.needs_calibration for stage in stages)

    @classmethod
    def build(cls, head_fraction=None, layer_fraction=None, sparsity=None, nm=None, sparsity_method="wanda",
              head_importance="magnitude", gqa="query", **arguments) -> "Combined":
        settings, unknown = split_arguments(arguments)
        if unknown:
            raise MethodError(f"all: unknown option(s) {sorted(unknown)}")
        stages: list[PruningMethod] = []
        if head_fraction is not None:
            stages.append(Heads.build(fraction=head_fraction, importance=head_importance, gqa=gqa))
        if layer_fraction is not None:
            stages.append(Layers.build(fraction=layer_fraction))
        if sparsity is not None or nm is not None:
            if sparsity_method in ("heads", "layers", "depth", "two_stage", "distill", "all"):
                raise MethodError(f"all: sparsity_method must be a mask-based method (magnitude, wanda, sparsegpt), "
                                  f"got {sparsity_method!r}")
            stages.append(method_class(sparsity_method).build(sparsity=sparsity, nm=nm))
        if not stages:
            raise MethodError("all needs at least one of head_fraction, layer_fraction, sparsity or nm")
        return cls(stages, DistillSettings(**settings) if settings else None)

    def options(self) -> dict:
        options = {"stages": [{"method": stage.name, **stage.options()} for stage in self.stages]}
        if self.settings:
            options["distill"] = asdict(self.settings)
        return options

    def prune(self, ctx: PruneContext) -> dict:
        before = numel(ctx.model)
        windows = teacher = None
        if self.settings:
            windows = training_windows(ctx.tokenizer, self.settings.training_data, self.settings.train_seqlen,
                                       ctx.extras.get("data_dir"))
            teacher = load_teacher(self.settings, ctx.model) if self.settings.teacher_model else copy.deepcopy(ctx.model)
        reports = []
        for stage in self.stages:
            stage_before = numel(ctx.model)
            result = stage.prune(ctx)
            reports.append({"stage": stage.name, "options": stage.options(), "result": result,
                            **{k: v for k, v in removal_report(stage_before, ctx.model).items()
                               if k in ("parameters_removed", "prune_ratio_percent")}})
        if self.settings:
            result = distill_model(ctx.model, teacher, ctx.adapter, windows, self.settings, ctx.device, ctx.seed,
                                   ctx.progress)
            reports.append({"stage": "distill", "result": {**result, "teacher": self.settings.teacher_model
                                                           or "the model before pruning"}})
        summary = {"stages": reports, **removal_report(before, ctx.model)}
        for report in reports:
            if "total_sparsity" in report["result"]:
                summary["total_sparsity"] = report["result"]["total_sparsity"]
        return summary
