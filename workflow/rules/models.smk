# Fetching models and pruning them: the two rules that make model directories.


rule fetch_model:
    output:
        directory("resources/models/{model}"),
    params:
        spec=lambda wildcards: model_spec_argument(wildcards.model),
    log:
        "logs/fetch_model/{model}.log",
    benchmark:
        "logs/benchmarks/fetch_model/{model}.tsv"
    threads: 1
    resources:
        **job_resources("fetch_model"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "python -m pruning fetch-model {params.spec} --dest {output:q} > {log:q} 2>&1"


# A prune writes beside the row's model ({ratio}.new, temp) and install_model moves it into place only once it
# has succeeded: Snakemake removes a job's outputs before it runs it, so were the model the prune job's own
# output, a failing or killed prune would lose the previous one (docs/workflow.md, "Failed and killed jobs").
rule prune:
    input:
        model="resources/models/{model}",
    output:
        temp(directory(NEW_PRUNED_MODEL)),
    wildcard_constraints:
        method=PRUNED_METHODS_PATTERN,
    params:
        **PRUNE_PARAMS,
    log:
        "logs/prune/{model}/{method}/{ratio}.log",
    benchmark:
        "logs/benchmarks/prune/{model}/{method}/{ratio}.tsv"
    threads: config["threads"]
    resources:
        **job_resources("prune"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pruning prune --model {input.model:q} {params.method} "
        "{params.calibration} {params.runtime} --output-dir {output:q} --quiet > {log:q} 2>&1"


# The prune's params again: what they record is what the installed model was pruned with, so a prune that
# failed under new params (Snakemake records them for its output all the same) is retried by the next run.
rule install_model:
    input:
        NEW_PRUNED_MODEL,
    output:
        model=pruned_model_output(PRUNED_MODEL),
        report=metric_output("prune"),
    wildcard_constraints:
        method=PRUNED_METHODS_PATTERN,
    params:
        **PRUNE_PARAMS,
    log:
        "logs/install_model/{model}/{method}/{ratio}.log",
    benchmark:
        "logs/benchmarks/install_model/{model}/{method}/{ratio}.tsv"
    threads: 1
    resources:
        **job_resources("install_model"),
    conda:
        "../envs/pruning.yaml"
    script:
        "../scripts/install_model.py"
