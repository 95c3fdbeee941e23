"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse
import os

import yaml

from ..core.dtypes import DEFAULT_DTYPE, DTYPE_NAMES


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES,
                        help=f"weights dtype while working (default: {DEFAULT_DTYPE})")
    parser.add_argument("--data-dir", default=None,
                        help="local data directory with the layout of shared/data (else $PRUNING_DATA_DIR, else the hub)")


def add_eval_arguments(parser: argparse.ArgumentParser, seqlen_default: int | None) -> None:
    parser.add_argument("--dataset", default="wikitext2",
                        help="evaluation text: wikitext2 or a local .txt/.jsonl file (default: wikitext2)")
    parser.add_argument("--eval-seqlen", type=int, default=seqlen_default,
                        help="tokens per perplexity window" + (f" (default: {seqlen_default})" if seqlen_default else
                                                               " (default: the calibration --seqlen)"))
    parser.add_argument("--max-windows", type=int, default=None,
                        help="score at most this many windows (default: the whole split)")


def parse_option_pairs(pairs: list[str] | None) -> dict:
    """The `--option KEY=VALUE` pairs as keyword arguments, values read as YAML scalars/lists (0.5, true, [0, -1],
    name); a value YAML cannot read is refused in one line naming the option."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {pair!r}")
        try:
            options[key.replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            reason = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise ValueError(f"--option {pair!r}: the value is not valid YAML ({reason})") from None
    return options


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str = "output") -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace an existing {what} that this tool did not write (an earlier result of ours is "
                             "always replaced; an input never is)")


def quiet_progress() -> None:
    """Silence the progress bars of transformers and huggingface_hub (weight loading, shard writing, downloads)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def evaluation_summary(report: dict) -> dict:
    """A prune report's perplexities (before / pruned / after) rounded, each with its scoring tokens/s, as the
    commands print them."""
    return {when: {"ppl": round(result["ppl"], 4), "tokens_per_s": result.get("tokens_per_s")}
            for when, result in (report["evaluation"] or {}).items()}
