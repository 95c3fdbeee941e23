# Aggregation: cheap, run on the submitting host (localrules in the Snakefile).


rule tables:
    input:
        all_metric_files(),
    output:
        md=report(
            expand("results/tables/{name}.md", name=table_names()),
            caption="../report/tables.rst",
            category="Tables",
            subcategory="Markdown",
        ),
        csv=report(
            expand("results/tables/{name}.csv", name=table_names()),
            caption="../report/tables.rst",
            category="Tables",
            subcategory="CSV (one row per measured number)",
        ),
    params:
        notes=MODEL_NOTES,
        skipped_tasks=SKIPPED_TASKS,
        skip_reason=SKIP_REASON,
    log:
        "logs/tables.log",
    benchmark:
        "logs/benchmarks/tables/tables.tsv"
    threads: 1
    resources:
        **job_resources("tables"),
    conda:
        "../envs/pruning.yaml"
    script:
        "../scripts/tables.py"


rule plots:
    input:
        all_metric_files(),
    output:
        report(
            expand("results/plots/{name}.png", name=plot_names()),
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        "logs/plots.log",
    benchmark:
        "logs/benchmarks/tables/plots.tsv"
    threads: 1
    resources:
        **job_resources("plots"),
    conda:
        "../envs/pruning.yaml"
    script:
        "../scripts/plots.py"


# `snakemake publish`: the only rule that writes a tracked path. Its inputs are this run's tables and plots
# and every metric file of the grid, so it runs last; it has no output (and no benchmark, which Snakemake
# would count as one), so it always runs when asked for.
rule publish:
    input:
        md=rules.tables.output.md,
        csv=rules.tables.output.csv,
        plots=rules.plots.output,
        metrics=all_metric_files(),
    params:
        runs=[[row["model"], row["method"], row["ratio"]] for row in GRID],
        tables=PUBLISHED_TABLES,
        plots=PUBLISHED_PLOTS,
    log:
        "logs/publish.log",
    threads: 1
    resources:
        **job_resources("publish"),
    conda:
        "../envs/pruning.yaml"
    script:
        "../scripts/publish.py"
