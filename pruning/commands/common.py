"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse
import os

import yaml

from ..core.dtypes import DEFAULT_DTYPE, DTYPE_NAMES
from ..core.protocols import Evaluation, positive_int  # noqa: F401  (positive_int: the commands' type)


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES,
                        help=f"weights dtype while working (default: {DEFAULT_DTYPE})")
    parser.add_argument("--data-dir", default=None,
                        help="local data directory with the layout of shared/data (else $PRUNING_DATA_DIR, else the hub)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let a model with code of its own in its folder (config.json's auto_map, e.g. "
                             "deepseek-moe) load and run that code; without it such a model is refused before "
                             "loading. Read the code first (default: off; prune.json records it)")


def add_eval_arguments(parser: argparse.ArgumentParser, seqlen_default: int | None) -> None:
    """--dataset, --eval-seqlen, --max-windows of a prune that evaluates."""
    Evaluation.add_arguments(parser, seqlen_flag="--eval-seqlen", seqlen_default=seqlen_default, split=False,
                             batch_size=False)


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
