"""Iterative prune + fine-tune: `rounds` rounds of a mask-based base method (magnitude, wanda, sparsegpt, ...)
at a rising sparsity, each followed by LoRA recovery fine-tuning (pruning/training/recovery.py); the last round
prunes at the target. By default every round removes the same fraction of the weights still left (geometric
schedule, as iterative magnitude pruning). Calibration-based bases score the model as the previous round
left it, on the same calibration windows.
"""
from __future__ import annotations

from .base import MethodError, PruneContext, PruningMethod, method_class, register
from ..training.recovery_options import RecoverySettings, check_recovery_length, prefixed_options, sparsity_schedule
from .gradual import ROUNDS, round_schedule_option
from .mask_base import MaskingMethod
from ..core.options import Option, parse_options, refuse_unknown, split_arguments


def _mask_base(name: str) -> str:
    cls = method_class(name)
    if not issubclass(cls, MaskingMethod):
        raise ValueError(f"must be a mask-based method (a sparsity target), got {name!r}")
    return name


@register
class Iterative(PruningMethod):
    name = "iterative"
    description = "k rounds of prune with base_method at a rising sparsity + LoRA recovery, the target at the last"
    COMPOSITE = True
    FAMILY = "Wanda / SparseGPT"
    RETRAINS = SUPPORTS_MOE = True  # its base method answers for MoE
    REMOVES_LAYERS = False
    WRAPS_BASE_METHOD = True
    OPTIONS = (Option("base_method", str, "mask-based method run each round; its sparsity (the final one) and "
                                          "options are given alongside", required=True, check=_mask_base),
               ROUNDS, round_schedule_option("geometric"), *prefixed_options(steps_default=25))

    def __init__(self, base_class: type[PruningMethod], base_arguments: dict, values: dict):
        super().__init__(**values)
        self.base_class, self.base_arguments = base_class, base_arguments
        self.final = base_class.build(**base_arguments)
        self.needs_calibration = self.final.needs_calibration

    @classmethod
    def build(cls, **arguments) -> "Iterative":
        own, base_arguments = split_arguments(cls.OPTIONS, arguments)
        values = parse_options(cls.name, cls.OPTIONS, own)
        base_class = method_class(values["base_method"])
        refuse_unknown(cls.name, cls.OPTIONS + base_class.OPTIONS, arguments)
        if base_arguments.get("nm") is not None:
            raise MethodError(f"{cls.name}: an N:M pattern is not reached in rounds; give sparsity=")
        if base_arguments.get("sparsity") is None:
            raise MethodError(f"{cls.name} needs sparsity= (the sparsity of the last round)")
        return cls(base_class, base_arguments, values)

    def options(self) -> dict:
        return {"base_method": self.base_class.name, **self.final.options(),
                **{k: v for k, v in super().options().items() if k != "base_method"}}

    def schedule(self) -> list[float]:
        return sparsity_schedule(self.round_schedule, self.base_arguments["sparsity"], self.rounds)

    def settings(self) -> RecoverySettings:
        return RecoverySettings.from_prefixed(vars(self))

    def check_model(self, ctx: PruneContext) -> None:
        self.final.check_model(ctx)
        check_recovery_length(ctx, self.settings(), self.name)

    def prune(self, ctx: PruneContext) -> dict:
        from ..training.recovery import prune_in_rounds

        def prune_round(sparsity: float) -> dict:
            return self.base_class.build(**{**self.base_arguments, "sparsity": sparsity}).prune(ctx)

        report = prune_in_rounds(ctx, self.schedule(), prune_round, self.settings(), self.name)
        return {"base_method": self.base_class.name, **report}
