# llm-pruning-zoo: prune every model of config/config.yaml with every method at every ratio, evaluate
# each result, and end in the comparison tables. Wiring only: each job calls `python -m pruning`.
#   snakemake --cores 2                                   # the whole grid, locally
#   snakemake --workflow-profile profiles/slurm           # the same grid on a Slurm cluster
#   snakemake prune_all | evaluate_all | tables | plots   # parts
#   snakemake publish                                     # copy the finished run's tables and plots to the
#                                                         # tracked results/published/ (checked first)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# results/, logs/ and .snakemake/ of this run: config run_dir (relative to where Snakemake was started), else
# that directory itself
if config["run_dir"]:

    workdir: str(LAUNCH_DIR / config["run_dir"])


include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"


# Cheap aggregation, and fetching (downloads need the network of the submitting host).
localrules:
    all,
    fetch_model,
    install_model,
    prune_all,
    evaluate_all,
    tables,
    plots,
    publish,


# The aggregating targets list every file they stand for (grid_outputs in common.smk), so that a rerun after
# a kill or a failure remakes whatever is missing.
rule all:
    input:
        rules.tables.output,
        rules.plots.output,
        grid_outputs(),
    default_target: True


rule prune_all:
    input:
        grid_paths(metric_output("prune"), PRUNED),
        kept_models(),


rule evaluate_all:
    input:
        grid_outputs(),
