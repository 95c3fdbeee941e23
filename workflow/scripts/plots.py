"""Snakemake script: this grid's metric files -> results/plots/*.png (pruning.tables does the work)."""
import sys
from pathlib import Path

from pruning.tables import load_runs, write_plots

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
written = write_plots(load_runs(snakemake.input), Path(snakemake.output[0]).parent)
if sorted(map(str, written)) != sorted(map(str, snakemake.output)):
    raise RuntimeError(f"plots written {sorted(map(str, written))} differ from the workflow's {list(snakemake.output)}")
