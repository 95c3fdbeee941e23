"""Comparison tables from the long frame of a grid's metric files (`pruning.reporting.metric_files`).

Each table is a filter of that frame, a pivot and a format step; it states its protocol in a caption line
and comes as Markdown (for reading) plus a CSV that is its filtered long frame (model, method, ratio, key,
metric, value, file: every number with the file behind it). Built from measured values only; the same
files give the same bytes.

Layouts, one module per family: `perplexity` (the PersLM per-run summary, the Wanda/SparseGPT sparsity table,
PruneGPT's # Blocks × criterion table, Quark's layer-removal table, PP-LLMs' two-stage table), `tasks` (the
zero-shot runs × tasks table, PruneGPT's downstream tasks × runs table, the GGUF table) and `comparison` (the
skill document's "Performance Comparison", the PersLM "Performance Impact" per method family). Which of them
a grid produces is decided by `pruning.reporting.grid.table_specs`, for the workflow and for this module alike. A new
table is a layout function with its entry in its module's LAYOUTS, and in `table_specs` (or, for an evaluation's
table, in its `pruning.reporting.evaluations` entry).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd

from ... import __version__
from ...core.outputs import check_against_inputs, writable_location
from ..evaluations import EVALUATIONS
from ..grid import table_specs
from ...core.io import OutputError, atomic_write_json, atomic_write_text, is_our_file
from ..metric_files import Results
from .common import Table, layer_ranges
from . import comparison, perplexity, tasks

__all__ = ["LAYOUTS", "TABLES_MANIFEST", "Table", "build_tables", "layer_ranges", "write_tables"]

TABLES_MANIFEST = ".pruning-tables.json"  # beside the tables: which files this tool wrote there (size, sha256)


LAYOUTS = {**perplexity.LAYOUTS, **tasks.LAYOUTS, **comparison.LAYOUTS}  # each family module names its layouts


def build_tables(long: pd.DataFrame, notes: dict[str, str] | None = None, skipped_tasks: dict[str, int] | None = None,
                 skip_reason: str | None = None) -> list[Table]:
    """Every table the runs support (`pruning.reporting.grid.table_specs`), in its order; `skipped_tasks` (task ->
    shots) were asked for but not run, for `skip_reason` (an offline run's hub-only tasks)."""
    results = Results(long, skipped_tasks, skip_reason)
    specs = table_specs(results.grid_rows(), [source for source in EVALUATIONS if results.has(source).any()])
    return [LAYOUTS[spec.layout](results, *([spec.model] if spec.model else []), notes) for spec in specs]


def _fingerprint(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _tables_manifest(out_dir: Path, overwrite: bool) -> dict[str, dict]:
    """What an earlier write_tables put in `out_dir` ({file name: bytes and sha256}), from its manifest."""
    manifest = out_dir / TABLES_MANIFEST
    if not os.path.lexists(manifest):
        return {}
    if not is_our_file(manifest):
        if overwrite:
            return {}
        raise OutputError(f"{manifest} exists and was not written by this tool; refusing to replace it: remove it, "
                          "choose another --out, or pass --overwrite")
    files = json.loads(manifest.read_text(encoding="utf-8")).get("files")
    return files if isinstance(files, dict) else {}


def _ours_unchanged(path: Path, entry) -> bool:
    """`path` is the very file an earlier write_tables wrote (its manifest entry: same size, same sha256)."""
    if not isinstance(entry, dict) or not path.is_file() or path.is_symlink():
        return False
    return path.stat().st_size == entry.get("bytes") and _fingerprint(path) == entry


def write_tables(long: pd.DataFrame, out_dir: str | os.PathLike, notes: dict[str, str] | None = None, *,
                 overwrite: bool = False, inputs=(), skipped_tasks: dict[str, int] | None = None,
                 skip_reason: str | None = None) -> list[Path]:
    """`{name}.md` and `{name}.csv` for every table (`build_tables`); returns the paths written.

    Every file written is listed with its size and sha256 in `out_dir`/TABLES_MANIFEST. An existing table file
    is replaced only if it is empty or exactly what an earlier call wrote there (so a user's own or edited
    file is never lost), or with `overwrite`; never if it is or lies inside one of `inputs` (the metric
    files' folder: `pruning.core.inputs.read_paths`); all of them are checked before anything is written.
    """
    out_dir = Path(out_dir).expanduser()
    check_against_inputs("tables manifest", out_dir / TABLES_MANIFEST, inputs)
    writable_location(out_dir / TABLES_MANIFEST, "tables folder")
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise OutputError(f"tables folder {out_dir} exists and is not a directory")
    ours = _tables_manifest(out_dir, overwrite)
    contents = []
    for table in build_tables(long, notes, skipped_tasks, skip_reason):
        contents += [(out_dir / f"{table.name}.md", table.markdown()),
                     (out_dir / f"{table.name}.csv", table.data.to_csv(index=False, lineterminator="\n"))]
    for path, _ in contents:
        check_against_inputs("table", path, inputs)
        if overwrite or not os.path.lexists(path):
            continue
        if path.is_file() and not path.is_symlink() and path.stat().st_size == 0:
            continue
        if not _ours_unchanged(path, ours.get(path.name)):
            raise OutputError(f"table {path} exists and is not a table this tool wrote there (or was changed since); "
                              "refusing to replace it: remove it, choose another --out, or pass --overwrite")
    for path, text in contents:
        atomic_write_text(path, text)
        ours[path.name] = _fingerprint(path)
    atomic_write_json(out_dir / TABLES_MANIFEST, {"files": dict(sorted(ours.items())),
                                                  "versions": {"pruning": __version__}})
    return [path for path, _ in contents]
