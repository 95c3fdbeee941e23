"""Recovery fine-tuning settings, declared once and torch-free (the CLI's --recover-* flags, the API's
`recovery={...}`, a config entry's `recovery:` and the fine-tuning options of gradual and iterative pruning
all read RECOVERY_OPTIONS), and the sparsity schedules of gradual and iterative pruning as plain functions.

The training itself is pruning/training/recovery.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..core.options import READS_TEXT, Option, parse_options

RECOVERY = "recovery"  # the name in messages, the API keyword, prune.json's key and the config entry's key
PREFIX = "recover_"  # fine-tuning options of the methods that fine-tune between rounds (recover_steps, ...)


def _training_source(source: str) -> str:
    from ..core.data import check_calibration_source  # torch-free; refuses the evaluation split in one line

    check_calibration_source(source)
    return source


RECOVERY_OPTIONS = (
    Option("steps", int, "LoRA optimizer steps (0: no recovery)", default=0, low=0),
    Option("rank", int, "LoRA rank", default=8, low=1),
    Option("alpha", float, "LoRA alpha; the update is scaled by alpha / rank", default=16.0, low=0, low_open=True),
    Option("lr", float, "AdamW learning rate of the adapters", default=2e-4, low=0, high=1, low_open=True),
    Option("batch_size", int, "training windows per optimizer step", default=4, low=1),
    Option("seqlen", int, "tokens per training window", default=256, low=2),
    Option("data", str, "training text: c4, wikitext2-train, wikitext2-validation or a .txt/.jsonl file "
                        "(never the evaluation split)", default="c4", check=_training_source, reads=READS_TEXT),
    Option("heldout_windows", int, "windows of the text never trained on, for the loss before and after",
           default=8, low=1),
)


@dataclass(frozen=True)
class RecoverySettings:
    """The RECOVERY_OPTIONS values, checked, with their defaults."""

    steps: int
    rank: int
    alpha: float
    lr: float
    batch_size: int
    seqlen: int
    data: str
    heldout_windows: int

    @classmethod
    def parse(cls, arguments: dict | None, what: str = RECOVERY) -> "RecoverySettings":
        """Checked settings from keyword arguments (missing ones take their defaults); a bad or unknown key is
        one MethodError naming it."""
        return cls(**parse_options(what, RECOVERY_OPTIONS, dict(arguments or {})))

    @classmethod
    def from_prefixed(cls, values: dict) -> "RecoverySettings":
        """The settings from a method's already checked `recover_*` option values."""
        return cls(**{o.name: values[PREFIX + o.name] for o in RECOVERY_OPTIONS})

    def as_dict(self) -> dict:
        return asdict(self)


def prefixed_options(steps_default: int) -> tuple[Option, ...]:
    """RECOVERY_OPTIONS as a method's `recover_*` options (fine-tuning after each round), with its own step
    default."""
    return tuple(replace(o, name=PREFIX + o.name, default=steps_default if o.name == "steps" else o.default,
                         help=("per round: " + o.help.replace(" (0: no recovery)", " (0: none, prune only)"))
                         if o.name == "steps" else o.help)
                 for o in RECOVERY_OPTIONS)


def check_recovery_length(ctx, settings: RecoverySettings, method: str) -> None:
    """A method's recover_seqlen fits the model's positions: refused before its first round, not after it."""
    from ..core.model_checks import length_problems
    from ..core.options import MethodError

    if settings.steps:
        problems = length_problems(ctx.extras.get("model_path", "being pruned"), ctx.model.config.to_dict(),
                                   {f"{method}: recover_seqlen": settings.seqlen})
        if problems:
            raise MethodError(problems[0])


# ------------------------------------------------------------------------------------------ schedules
# Each gives the sparsity after every one of `rounds` pruning steps, ending exactly at `target`.

def cubic_schedule(target: float, rounds: int, initial: float = 0.0) -> list[float]:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − t/n)³ for t = 1..n: fast at first, slow near the end,
    when fewer weights are left to absorb the loss."""
    return [target + (initial - target) * (1 - t / rounds) ** 3 for t in range(1, rounds)] + [target]


def linear_schedule(target: float, rounds: int, initial: float = 0.0) -> list[float]:
    """Equal steps of sparsity: s_t = s_i + (s_f − s_i) t/n."""
    return [initial + (target - initial) * t / rounds for t in range(1, rounds)] + [target]


def geometric_schedule(target: float, rounds: int, initial: float = 0.0) -> list[float]:
    """Iterative magnitude pruning as Han et al. (2015) and the lottery-ticket papers: every round removes the
    same fraction of the weights still left, s_t = 1 − (1 − s_i)((1 − s_f)/(1 − s_i))^(t/n)."""
    kept = (1 - target) / (1 - initial)
    return [1 - (1 - initial) * kept ** (t / rounds) for t in range(1, rounds)] + [target]


SCHEDULES = {"cubic": cubic_schedule, "linear": linear_schedule, "geometric": geometric_schedule}


def sparsity_schedule(kind: str, target: float, rounds: int, initial: float = 0.0) -> list[float]:
    """The sparsity after each round, non-decreasing from `initial`, the last one exactly `target`."""
    if not 0 <= initial <= target < 1:
        raise ValueError(f"a schedule needs 0 <= initial ({initial}) <= target ({target}) < 1")
    if rounds < 1:
        raise ValueError(f"a schedule needs at least one round, got {rounds}")
    return SCHEDULES[kind](target, rounds, initial)
