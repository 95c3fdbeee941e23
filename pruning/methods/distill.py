"""Distillation-guided pruning (PersLM): prune with any method, then recover with knowledge distillation.

The teacher is the model as it was before pruning (or `teacher_model`). The student is trained on
`training_data` windows with loss (1 − ce_weight) · T² · KL(teacher_T ‖ student_T) + ce_weight · CE,
where _T means softmax at temperature T. The pruned structure cannot change (removed layers, heads and
sub-blocks have no parameters to train) and weights zeroed by a mask stay zero: every decoder-layer
weight with zeros gets its mask re-applied after each optimizer step. Training runs `epochs` passes (PersLM's
default 3); a step cap applies only when `max_steps` is given. PersLM's `--method distillation` is this
method with base_method magnitude (PERSLM_DISTILLATION).
"""
from __future__ import annotations

import copy

from .base import PruneContext, PruningMethod, base_methods, method_class, register
from ..core.options import Option, parse_options, refuse_unknown, split_arguments
from ..training.distillation import (DISTILL_OPTIONS, DistillSettings, check_settings, distill_model,
                                     load_teacher, training_windows)

# PersLM's `--method distillation`: magnitude pruning to `sparsity`, then distillation; the CLI and the Pruner
# run it as distill with these arguments.
PERSLM_DISTILLATION = ("distillation", {"base_method": "magnitude"})


def _base_method(name: str) -> str:
    if method_class(name).COMPOSITE:
        raise ValueError(f"cannot be {name!r}, which runs other methods (to distill after all's stages give all "
                         f"training_data); base methods: {', '.join(base_methods())}")
    return name


@register
class Distill(PruningMethod):
    name = "distill"
    description = "prune with base_method, then recover by knowledge distillation from the unpruned teacher"

    COMPOSITE = True
    FAMILY = "distillation"
    RETRAINS = SUPPORTS_MOE = True  # its base method answers for MoE
    REMOVES_LAYERS = False
    WRAPS_BASE_METHOD = True
    OPTIONS = (Option("base_method", str, "the pruning method run before distillation; its ratio and options "
                                          "are given alongside", required=True, check=_base_method),) + DISTILL_OPTIONS

    def __init__(self, base: PruningMethod, settings: DistillSettings):
        self.base, self.settings = base, settings
        self.needs_calibration = base.needs_calibration

    @classmethod
    def build(cls, **arguments) -> "Distill":
        own, base_arguments = split_arguments(cls.OPTIONS, arguments)
        base_class = method_class(parse_options(cls.name, cls.OPTIONS, own)["base_method"])
        refuse_unknown(cls.name, cls.OPTIONS + base_class.OPTIONS, arguments)
        own.pop("base_method")
        return cls(base_class.build(**base_arguments), DistillSettings(**own))

    def options(self) -> dict:
        return {"base_method": self.base.name, **self.base.options(), **vars(self.settings)}

    def check_config(self, config) -> None:
        super().check_config(config)
        check_settings(self.settings, config, self.name)

    def check_model(self, ctx: PruneContext) -> None:
        self.base.check_model(ctx)

    def prune(self, ctx: PruneContext) -> dict:
        windows = training_windows(ctx.tokenizer, self.settings.training_data, self.settings.train_seqlen,
                                   ctx.extras.get("data_dir"))
        teacher = load_teacher(self.settings, ctx.model) if self.settings.teacher_model else copy.deepcopy(ctx.model)
        pruning = self.base.prune(ctx)
        result = distill_model(ctx.model, teacher, ctx.adapter, windows, self.settings, ctx.device, ctx.seed, ctx.progress)
        return {"base_method": self.base.name, "pruning": pruning,
                "distillation": {**result, "teacher": self.settings.teacher_model or "the model before pruning"},
                **{k: pruning[k] for k in ("parameters_removed", "prune_ratio_percent", "total_sparsity") if k in pruning}}
