"""Snakemake script: this grid's metric files -> results/tables/*.md and *.csv: pruning.results reads them,
pruning.tables writes; pruning.grid names the outputs for the rule and the library alike."""
import sys
from pathlib import Path

from pruning.results import read_metrics
from pruning.tables import write_tables

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
write_tables(read_metrics(snakemake.input), Path(snakemake.output.md[0]).parent, snakemake.params.notes)
