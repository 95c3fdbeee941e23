"""Gradual magnitude pruning (Zhu & Gupta 2017): the sparsity rises over `rounds` pruning steps on a
schedule (cubic by default), with LoRA recovery fine-tuning after each step (pruning/training/recovery.py).

Each step is plain magnitude pruning (pruning/methods/magnitude.py) at that step's sparsity. Masks are kept:
a pruned weight is zero, so it scores lowest and stays pruned at the next, higher sparsity, and recovery
never revives it; the last step prunes exactly as many weights as one-shot magnitude pruning at the target.
"""
from __future__ import annotations

from dataclasses import replace

from .base import PruneContext, PruningMethod, register
from ..training.recovery_options import SCHEDULES, RecoverySettings, check_recovery_length, prefixed_options, sparsity_schedule
from .magnitude import Magnitude
from .mask_base import TARGET_OPTIONS
from ..core.options import Option

ROUNDS = Option("rounds", int, "pruning steps, the last one at the target sparsity", default=4, low=1)


def round_schedule_option(default: str) -> Option:
    return Option("round_schedule", str, "how the sparsity rises over the rounds (cubic: Zhu & Gupta; geometric: "
                                         "the same fraction of the remaining weights each round)",
                  default=default, choices=tuple(SCHEDULES))


@register
class Gradual(PruningMethod):
    name = "gradual"
    FAMILY = "magnitude pruning"
    RETRAINS = SUPPORTS_MOE = True
    REMOVES_LAYERS = COMPOSITE = False
    READS_IGNORE = True  # each round is magnitude pruning on the same context
    description = ("gradual magnitude pruning: sparsity raised on a schedule over rounds, LoRA recovery after each "
                   "(masks kept)")
    OPTIONS = (replace(TARGET_OPTIONS[0], required=True), Magnitude.option("per"), ROUNDS,
               round_schedule_option("cubic"), *prefixed_options(steps_default=25))

    def schedule(self) -> list[float]:
        return sparsity_schedule(self.round_schedule, self.sparsity, self.rounds)

    def step(self, sparsity: float) -> Magnitude:
        return Magnitude.build(sparsity=sparsity, per=self.per)

    def settings(self) -> RecoverySettings:
        return RecoverySettings.from_prefixed(vars(self))

    def check_model(self, ctx: PruneContext) -> None:
        self.step(self.sparsity).check_model(ctx)
        check_recovery_length(ctx, self.settings(), self.name)

    def prune(self, ctx: PruneContext) -> dict:
        from ..training.recovery import prune_in_rounds

        self.check_model(ctx)
        return prune_in_rounds(ctx, self.schedule(), lambda sparsity: self.step(sparsity).prune(ctx), self.settings(),
                               self.name)
