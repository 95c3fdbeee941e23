"""`all` (PersLM `--method all`, "apply all pruning methods in sequence"): heads → layers → magnitude →
optional distillation, in one run.

Each stage is the ordinary method (heads, layers, then magnitude as PersLM does, or another mask-based method
with `sparsity_method`) applied to the result of the previous one. A stage whose ratio is not given runs at
PersLM's documented default (head_fraction 0.1, layer_fraction 0.1, sparsity 0.3); a ratio of 0 leaves that
stage out. With `training_data` the result is distilled from the model as it was before the first stage.
Every stage's report is kept.
"""
from __future__ import annotations

import copy
from dataclasses import replace

from .base import MethodError, PruneContext, PruningMethod, available_methods, method_class, register
from ..training.distillation import (DISTILL_OPTIONS, DistillSettings, check_settings, distill_model, load_teacher,
                                     training_windows)
from .heads import Heads
from .layers import Layers
from .mask_base import TARGET_OPTIONS, MaskingMethod
from ..core.options import Option, parse_options

# PersLM's documented defaults (`--head-reduction`, `--layer-reduction`, `--sparsity`), for `all`, the prune
# command's heads / layers / magnitude / distillation and the Pruner's steps
HEAD_REDUCTION, LAYER_REDUCTION, SPARSITY = 0.1, 0.1, 0.3


def mask_methods() -> list[str]:
    return [name for name in available_methods() if issubclass(method_class(name), MaskingMethod)]


def _mask_method(name: str) -> str:
    if name not in mask_methods():
        raise ValueError(f"must be a mask-based method ({', '.join(mask_methods())}), got {name!r}")
    return name


@register
class Combined(PruningMethod):
    name = "all"
    STREAMS = True  # without its distillation stage
    description = ("PersLM's every method in sequence: heads, layers, sparsity (defaults 0.1, 0.1, 0.3; 0 leaves a stage "
                   "out), then (with training_data) distillation; each stage reported")
    COMPOSITE = True
    FAMILY = "combined (all)"
    SUPPORTS_MOE = True  # its stages answer for MoE
    RETRAINS = False  # distills only given training_data (prune.json records it)
    REMOVES_LAYERS = False
    OPTIONS = (
        replace(Heads.option("fraction"), name="head_fraction", required=False, ratio=False, default=HEAD_REDUCTION,
                low_open=False, help="fraction of attention heads to remove (heads stage; 0 leaves it out)"),
        replace(Layers.option("fraction"), name="layer_fraction", required=False, ratio=False,
                default=LAYER_REDUCTION, low_open=False,
                help="fraction of decoder layers to remove (layers stage; 0 leaves it out)"),
        *(replace(o, help=f"{o.help} (sparsity stage; default: sparsity {SPARSITY}; sparsity 0 leaves it out)")
          for o in TARGET_OPTIONS),
        Option("sparsity_method", str, "mask-based method of the sparsity stage (PersLM: magnitude)", default="magnitude",
               check=_mask_method),
        replace(Heads.option("importance"), name="head_importance"),
        Heads.option("gqa"),
        *(replace(o, required=False, help=o.help + " (distillation stage; runs when training_data is given)")
          if o.name == "training_data" else o for o in DISTILL_OPTIONS),
    )

    def __init__(self, stages: list[PruningMethod], settings: DistillSettings | None):
        self.stages, self.settings = stages, settings
        self.needs_calibration = any(stage.needs_calibration for stage in stages)

    @classmethod
    def build(cls, **arguments) -> "Combined":
        values = parse_options(cls.name, cls.OPTIONS, arguments)
        if values["sparsity"] is None and values["nm"] is None:
            values["sparsity"] = SPARSITY
        stages: list[PruningMethod] = []
        if values["head_fraction"]:
            stages.append(Heads.build(fraction=values["head_fraction"], importance=values["head_importance"],
                                      gqa=values["gqa"]))
        if values["layer_fraction"]:
            stages.append(Layers.build(fraction=values["layer_fraction"]))
        if values["sparsity"] or values["nm"] is not None:
            stages.append(method_class(values["sparsity_method"]).build(sparsity=values["sparsity"], nm=values["nm"]))
        if not stages:
            raise MethodError("all: every stage is left out (head_fraction, layer_fraction and sparsity 0); "
                              "give at least one ratio above 0")
        distill = {o.name: arguments[o.name] for o in DISTILL_OPTIONS if o.name in arguments}
        return cls(stages, DistillSettings(**distill) if distill else None)

    def options(self) -> dict:
        options = {"stages": [{"method": stage.name, **stage.options()} for stage in self.stages]}
        if self.settings:
            options["distill"] = vars(self.settings)
        return options

    def streaming_refusal(self) -> str | None:
        if self.settings:
            return ("method all with training_data distills through the whole model and cannot stream; drop "
                    "training_data (and distill the streamed output on a machine that holds it)")
        return super().streaming_refusal()

    def check_config(self, config) -> None:
        super().check_config(config)
        if self.settings:
            check_settings(self.settings, config, self.name)

    def check_model(self, ctx: PruneContext) -> None:
        for stage in self.stages:
            stage.check_model(ctx)

    def prune(self, ctx: PruneContext) -> dict:
        from ..core.surgery import numel, removal_report

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
