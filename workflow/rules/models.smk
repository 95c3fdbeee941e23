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


rule prune:
    input:
        model="resources/models/{model}",
    output:
        model=pruned_model_output("results/models/{model}/{method}/{ratio}"),
        report=metric_output("prune"),
    wildcard_constraints:
        method=PRUNED_METHODS_PATTERN,
    params:
        method=prune_arguments,
        calibration=calibration_arguments(),
        runtime=runtime_arguments(),
        report=PRUNE_REPORT,
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
        "{params.calibration} {params.runtime} --output-dir {output.model:q} --quiet > {log:q} 2>&1 "
        "&& cp {output.model:q}/{params.report} {output.report:q}"
