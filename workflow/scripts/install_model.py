"""Snakemake script: a finished prune (the prune job's output beside the row's model) -> the row's model directory
and its prune.json in results/metrics; pruning.reporting.metric_files.install_pruned_model does it (and removes the
row's measurements of the model it replaces)."""
import sys

from pruning.reporting.metric_files import install_pruned_model

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
install_pruned_model(snakemake.input[0], snakemake.output.model, snakemake.output.report)
