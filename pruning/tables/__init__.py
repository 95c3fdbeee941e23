"""Comparison tables from the long frame of a grid's metric files (`pruning.results`).

Each table is a filter of that frame, a pivot and a format step; it states its protocol in a caption line
and comes as Markdown (for reading) plus a CSV that is its filtered long frame (model, method, ratio, key,
metric, value, file: every number with the file behind it). Built from measured values only; the same
files give the same bytes.

Layouts, one module per family: `perplexity` (the PersLM per-run summary, the Wanda/SparseGPT sparsity table,
PruneGPT's #Blocks × criterion table, Quark's layer-removal table, PP-LLMs' two-stage table), `tasks` (the
zero-shot runs × tasks table, PruneGPT's downstream tasks × runs table, the GGUF table) and `comparison` (the
skill document's "Performance Comparison", the PersLM "Performance Impact" per method family). Which of them
a grid produces is decided by `pruning.grid.table_specs`, for the workflow and for this module alike. A new
table is a layout function plus its entry in LAYOUTS and in `table_specs`.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..grid import table_specs
from ..io import atomic_write_text
from ..results import Results
from .common import Table, layer_ranges
from .comparison import comparison_table, impact_table
from .perplexity import depth_table, layer_removal_table, sparsity_table, summary_table, two_stage_table
from .tasks import downstream_table, gguf_table, zeroshot_table

__all__ = ["LAYOUTS", "Table", "build_tables", "layer_ranges", "write_tables"]


LAYOUTS = {"summary": summary_table, "sparsity": sparsity_table, "depth": depth_table,
           "layer_removal": layer_removal_table, "two_stage": two_stage_table, "zeroshot": zeroshot_table,
           "downstream": downstream_table, "gguf": gguf_table, "comparison": comparison_table, "impact": impact_table}


def build_tables(long: pd.DataFrame, notes: dict[str, str] | None = None) -> list[Table]:
    """Every table the runs support (`pruning.grid.table_specs`), in its order."""
    results = Results(long)
    specs = table_specs(results.grid_rows(), zeroshot=bool(results.has("zeroshot").any()),
                        gguf=bool(results.has("gguf").any()))
    return [LAYOUTS[spec.layout](results, *([spec.model] if spec.model else []), notes) for spec in specs]


def write_tables(long: pd.DataFrame, out_dir: str | os.PathLike, notes: dict[str, str] | None = None) -> list[Path]:
    """`{name}.md` and `{name}.csv` for every table; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for table in build_tables(long, notes):
        md, csv = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
        atomic_write_text(md, table.markdown())
        atomic_write_text(csv, table.data.to_csv(index=False, lineterminator="\n"))
        written += [md, csv]
    return written
