"""Snakemake script: this grid's metric files -> results/plots/*.png: pruning.reporting.metric_files reads them, pruning.reporting.plots
writes; pruning.reporting.grid names the outputs for the rule and the library alike."""
import sys
from pathlib import Path

from pruning.reporting.plots import write_plots
from pruning.reporting.metric_files import read_metrics

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
write_plots(read_metrics(snakemake.input), Path(snakemake.output[0]).parent)
