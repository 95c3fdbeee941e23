"""Arguments shared by several subcommands."""
from __future__ import annotations

import argparse

import yaml


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="weights dtype while working (default: float32)")
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


def parse_options(pairs: list[str] | None) -> dict:
    """KEY=VALUE pairs, values read as YAML scalars/lists (0.5, true, [0, -1], name)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {pair!r}")
        options[key.replace("-", "_")] = yaml.safe_load(value)
    return options
