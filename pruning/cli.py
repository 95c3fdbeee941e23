"""`python -m pruning ...`: each subcommand lives in `pruning/commands/<name>.py` with
`add_parser(subparsers)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("fetch_model", "methods", "prune", "evaluate", "convert", "gguf_eval", "zeroshot", "speed", "tables")
EXPECTED_ERRORS = (ValueError, FileNotFoundError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pruning",
        description="Prune large language models, evaluate them and export them; see README.md.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pruning.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
