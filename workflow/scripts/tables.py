"""Snakemake script: this grid's metric files -> results/tables/*.md and *.csv: pruning.reporting.metric_files reads them,
pruning.reporting.tables writes; pruning.reporting.grid names the outputs for the rule and the library alike."""
import sys
from pathlib import Path

from pruning.reporting.metric_files import read_metrics
from pruning.reporting.tables import write_tables

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
write_tables(read_metrics(snakemake.input), Path(snakemake.output.md[0]).parent, snakemake.params.notes,
             skipped_tasks=snakemake.params.skipped_tasks, skip_reason=snakemake.params.skip_reason)
