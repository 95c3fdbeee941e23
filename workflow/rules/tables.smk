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
    log:
        "logs/tables.log",
    benchmark:
        "benchmarks/tables/tables.tsv"
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
        "benchmarks/tables/plots.tsv"
    threads: 1
    resources:
        **job_resources("plots"),
    conda:
        "../envs/pruning.yaml"
    script:
        "../scripts/plots.py"
