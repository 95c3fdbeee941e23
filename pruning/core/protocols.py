"""The run protocol, declared once: how a prune calibrates (`Calibration`) and how a model's perplexity is
measured (`Evaluation`), with their defaults. The API, `Pruner`, the CLI, job files, streaming and the workflow
all take the defaults, the flags and the config mapping from here."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace

from .data import CALIBRATION_SOURCES, EVALUATION_DATASETS


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (batch sizes, windows)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


@dataclass(frozen=True)
class Calibration:
    """The calibration windows of a prune: `nsamples` windows of `seqlen` tokens cut from `source` with
    `seed`, fed `batch_size` at a time through each layer."""

    source: str = "c4"
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8

    FLAGS = {"source": "--calib", "nsamples": "--nsamples", "seqlen": "--seqlen", "seed": "--seed",
             "batch_size": "--batch-size"}
    HELP = {"source": f"calibration data: {', '.join(CALIBRATION_SOURCES)} or a .txt/.jsonl file",
            "nsamples": "calibration windows", "seqlen": "tokens per calibration window",
            "seed": "seed for calibration sampling", "batch_size": "calibration windows per layer forward"}
    TYPES = {"source": str, "nsamples": int, "seqlen": int, "seed": int, "batch_size": positive_int}

    @classmethod
    def add_arguments(cls, parser, defaults: dict[str, str] | None = None) -> None:
        """--calib, --nsamples, --seqlen, --seed, --batch-size with these defaults; a field named in
        `defaults` gets None instead (filled later by `from_arguments`) and that text as its default's help."""
        defaults = defaults or {}
        for item in fields(cls):
            default = getattr(cls, item.name)
            said = defaults.get(item.name, str(default))
            parser.add_argument(cls.FLAGS[item.name], type=cls.TYPES[item.name], dest=item.name if item.name != "source" else "calib",
                                default=None if item.name in defaults else default,
                                help=f"{cls.HELP[item.name]} (default: {said})")

    @classmethod
    def from_arguments(cls, args, base: Calibration | None = None) -> Calibration:
        """The calibration the parsed flags give, each flag left at None taking `base`'s value."""
        base = base or cls()
        given = {name: getattr(args, "calib" if name == "source" else name) for name in cls.FLAGS}
        return replace(base, **{name: value for name, value in given.items() if value is not None})

    @classmethod
    def from_config(cls, mapping: dict) -> Calibration:
        """A workflow protocol's `calibration` mapping; keys left out take the defaults."""
        return cls(**{item.name: mapping[item.name] for item in fields(cls) if item.name in mapping})

    def arguments(self) -> list:
        """The flags a `python -m pruning prune` job gets for this calibration."""
        return [part for item in fields(self) for part in (self.FLAGS[item.name], getattr(self, item.name))]


@dataclass(frozen=True)
class Evaluation:
    """Perplexity windows: `seqlen` tokens each (None: a prune's calibration seqlen) of `dataset`'s `split`,
    at most `max_windows` (None: the whole split), `batch_size` per forward."""

    dataset: str = "wikitext2"
    split: str = "test"
    seqlen: int | None = None
    max_windows: int | None = None
    batch_size: int = 4

    DATASET_HELP = f"evaluation text: {', '.join(EVALUATION_DATASETS)} or a local .txt/.jsonl file"

    def window(self, calibration_seqlen: int) -> int:
        """The evaluation window: `seqlen` where given (0 too, which the length check then refuses), else the
        calibration's."""
        return calibration_seqlen if self.seqlen is None else self.seqlen

    @classmethod
    def add_arguments(cls, parser, seqlen_flag: str = "--seqlen", seqlen_default: int | None = None,
                      split: bool = True, batch_size: bool = True, seqlen_required: bool = False) -> None:
        """--dataset, --split, SEQLEN_FLAG, --max-windows, --batch-size (the ones asked for)."""
        parser.add_argument("--dataset", default=cls.dataset, help=f"{cls.DATASET_HELP} (default: {cls.dataset})")
        if split:
            parser.add_argument("--split", default=cls.split, help=f"wikitext2 split (default: {cls.split})")
        parser.add_argument(seqlen_flag, type=int, default=seqlen_default, required=seqlen_required,
                            help="tokens per perplexity window" + (" (always explicit)" if seqlen_required else
                                                                   f" (default: {seqlen_default})" if seqlen_default
                                                                   else " (default: the calibration --seqlen)"))
        parser.add_argument("--max-windows", type=int, default=cls.max_windows,
                            help="score at most this many windows (default: the whole split)")
        if batch_size:
            parser.add_argument("--batch-size", type=positive_int, default=cls.batch_size,
                                help=f"windows per forward (default: {cls.batch_size})")

    @classmethod
    def from_config(cls, mapping: dict) -> Evaluation:
        """A workflow protocol's `evaluation` mapping; keys left out take the defaults."""
        return cls(**{item.name: mapping[item.name] for item in fields(cls) if item.name in mapping})

    def arguments(self, batch: bool = True) -> list:
        """The flags a `python -m pruning eval` (or gguf-eval without `batch`) job gets."""
        args = ["--dataset", self.dataset, "--split", self.split, "--seqlen", self.seqlen]
        if self.max_windows is not None:
            args += ["--max-windows", self.max_windows]
        if batch:
            args += ["--batch-size", self.batch_size]
        return args
