"""Snakemake script: this grid's metric files -> results/tables/*.md and *.csv (pruning.tables does the work)."""
import sys
from pathlib import Path

from pruning.tables import load_runs, write_tables

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
written = write_tables(load_runs(snakemake.input), Path(snakemake.output.md[0]).parent, snakemake.params.notes)
expected = {str(Path(p)) for p in [*snakemake.output.md, *snakemake.output.csv]}
if {str(p) for p in written} != expected:
    raise RuntimeError(f"tables written {sorted(map(str, written))} differ from the workflow's {sorted(expected)}")
