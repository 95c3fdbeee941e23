"""`python -m pruning ...`: each subcommand lives in `pruning/commands/<name>.py` with
`add_parser(subparsers)` and `run(args) -> int`.

Bad input (arguments, models, data, outputs) ends in one line on stderr and exit code 2, before any work
where it can be checked up front; a failed write (disk full, file size limit, quota, read-only file system) in
one line and exit code 74, Ctrl-C in one line and 130, the outputs in both cases as they were (EXIT_CODES);
`--debug` (or PRUNING_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import sys

from .core.io import write_failure
from .reporting.evaluations import evaluation_commands

# The commands that write metric files come from their evaluations' declarations (pruning.reporting.evaluations).
COMMANDS = tuple(dict.fromkeys(("fetch_model", "methods", "prune", "run", "ppllms", *evaluation_commands(), "tables",
                                "memory", "optimize")))
DEBUG_ENV = "PRUNING_DEBUG"
# ValueError covers the project's own errors (ModelLoadError, DataError, OutputError, ExportError, ...) and
# JSON syntax errors; OSError covers missing, unreadable and misplaced files.
EXPECTED_ERRORS = (ValueError, OSError, pickle.UnpicklingError)
USAGE_ERROR = 2
WRITE_FAILED = 74  # sysexits.h EX_IOERR
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
EXIT_CODES = {0: "done",
              1: "an unexpected error (a bug: its traceback is printed)",
              USAGE_ERROR: "bad input: an argument, config, model, data file or output (refused before any\n"
                           "       work wherever it can be checked up front)",
              WRITE_FAILED: "writing an output failed (disk full, file size limit, quota, read-only file\n"
                            "       system); that output is as it was before",
              INTERRUPTED: "interrupted (Ctrl-C); every output is complete or as it was, scratch removed"}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m pruning",
        description="Prune large language models, evaluate them and export them; see README.md.",
        epilog="exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of an error (also ${DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pruning.commands.{name}").add_parser(subparsers)
    for sub in subparsers.choices.values():
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help=f"show the traceback of an error (also ${DEBUG_ENV}=1)")
    return parser


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line, with the file name OSError keeps apart."""
    if isinstance(exc, json.JSONDecodeError):
        message = f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    elif isinstance(exc, OSError) and exc.filename and str(exc.filename) not in str(exc):
        message = f"{exc.filename}: {exc.strerror or exc}"
    else:
        message = str(exc) or type(exc).__name__
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the expected kinds become one line, the rest keep their traceback
        if debug:
            raise
        if write_failure(exc) is not None:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return WRITE_FAILED
        if not isinstance(exc, EXPECTED_ERRORS):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return USAGE_ERROR
