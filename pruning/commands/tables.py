"""tables: aggregate the metric files under a results folder into Markdown/CSV tables and plots."""
from __future__ import annotations

from ..reporting.evaluations import file_patterns
from .common import add_overwrite_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "tables", help="comparison tables (Markdown + CSV) and plots from results/metrics",
        description="Read every run under RESULTS/metrics/{model}/{method}/{ratio}/ "
                    f"({file_patterns()}) and write the sparsity table per model, the "
                    "performance-impact summary, the depth, layer-removal and two-stage tables, the zero-shot and "
                    "downstream-task tables, the GGUF table, the performance comparison and the impact per method "
                    "family (those the runs support), each as .md with a protocol caption and a long-form .csv (model, method, "
                    "ratio, key, metric, value, file) naming the metric file behind every number. A run whose metric "
                    "files come from another prune than its prune.json (older, other options, or prune.json missing) "
                    "is refused with exit code 2. The files written are listed with their sha256 in OUT/.pruning-tables.json; "
                    "an existing .md/.csv there that this tool did not write (or that was changed since), or a .png "
                    "plot this tool did not draw, is never replaced without --overwrite; nothing is written inside "
                    "RESULTS/metrics, the input. Everything is checked before anything is written.")
    parser.add_argument("--results", default="results", help="results folder holding metrics/ (default: results)")
    parser.add_argument("--out", default=None, help="where the tables go (default: RESULTS/tables)")
    parser.add_argument("--plots", default=None, help="also write PNG plots here (e.g. results/plots): PPL against sparsity and against "
                        "parameters removed, zero-shot average against decode speed-up (those the runs support)")
    parser.add_argument("--note", action="append", default=[], metavar="MODEL=TEXT",
                        help="caption note for a model, repeatable (e.g. 'stories260K=out of domain for WikiText')")
    add_overwrite_argument(parser, "table or plot file")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..core.inputs import read_paths
    from ..reporting.plots import planned_plots
    from ..reporting.metric_files import collect
    from ..reporting.tables import write_tables

    notes = {}
    for pair in args.note:
        model, sep, text = pair.partition("=")
        if not sep or not model:
            raise ValueError(f"--note takes MODEL=TEXT, got {pair!r}")
        notes[model] = text
    metrics = collect(args.results)
    inputs = read_paths(files=[Path(args.results) / "metrics"])
    plots = planned_plots(metrics, args.plots, overwrite=args.overwrite, inputs=inputs) if args.plots else []
    written = write_tables(metrics, args.out or Path(args.results) / "tables", notes, overwrite=args.overwrite,
                           inputs=inputs)
    written += [path for path in (draw() for draw in plots) if path is not None]
    for path in written:
        print(path)
    return 0
