# Measurements of every grid row (the dense model or a pruned one): perplexity, zero-shot accuracy,
# GGUF export with llama.cpp perplexity, and speed.


rule perplexity:
    input:
        model=model_dir,
    output:
        metric_output("ppl"),
    params:
        evaluation=evaluation_arguments(),
        runtime=runtime_arguments(),
    log:
        "logs/perplexity/{model}/{method}/{ratio}.log",
    benchmark:
        "logs/benchmarks/perplexity/{model}/{method}/{ratio}.tsv"
    threads: config["threads"]
    resources:
        **job_resources("perplexity"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pruning eval --model {input.model:q} --ppl {params.evaluation} "
        "{params.runtime} --output {output:q} > {log:q} 2>&1"


rule zeroshot:
    input:
        model=model_dir,
    output:
        metric_output("zeroshot"),
    params:
        settings=zeroshot_arguments,
        runtime=runtime_arguments(),
    log:
        "logs/zeroshot/{model}/{method}/{ratio}/{task}.log",
    benchmark:
        "logs/benchmarks/zeroshot/{model}/{method}/{ratio}/{task}.tsv"
    threads: config["threads"]
    resources:
        **job_resources("zeroshot"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pruning zeroshot --model {input.model:q} --task {wildcards.task} "
        "{params.settings} {params.runtime} --quiet --output {output:q} > {log:q} 2>&1"


rule gguf_convert:
    input:
        model=model_dir,
    output:
        gguf_output(GGUF_FILE),
    log:
        "logs/gguf_convert/{model}/{method}/{ratio}/{outtype}.log",
    benchmark:
        "logs/benchmarks/gguf_convert/{model}/{method}/{ratio}/{outtype}.tsv"
    threads: config["threads"]
    resources:
        **job_resources("gguf_convert"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pruning convert --model {input.model:q} --outtype {wildcards.outtype} "
        "--threads {threads} --output {output:q} > {log:q} 2>&1"


# The transformers PPL it is compared with is the perplexity rule's, on the same windows (tables join them).
rule gguf_eval:
    input:
        gguf=GGUF_FILE,
        model=model_dir,
    output:
        metric_output("gguf"),
    params:
        evaluation=evaluation_arguments(batch=False),
        runtime=runtime_arguments(device=False),
    log:
        "logs/gguf_eval/{model}/{method}/{ratio}/{outtype}.log",
    benchmark:
        "logs/benchmarks/gguf_eval/{model}/{method}/{ratio}/{outtype}.tsv"
    threads: config["threads"]
    resources:
        **job_resources("gguf_eval"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "OMP_NUM_THREADS={threads} python -m pruning gguf-eval --gguf {input.gguf:q} --model {input.model:q} "
        "{params.evaluation} {params.runtime} --no-compare-hf --threads {threads} --output {output:q} > {log:q} 2>&1"


rule speed:
    input:
        unpack(speed_inputs),
    output:
        metric_output("speed"),
    params:
        settings=speed_arguments(),
        gguf=lambda wildcards, input: f"--gguf {input.gguf}" if config["speed"]["gguf_outtype"] else "",
        threads=config["threads"],
    log:
        "logs/speed/{model}/{method}/{ratio}.log",
    benchmark:
        "logs/benchmarks/speed/{model}/{method}/{ratio}.tsv"
    threads: speed_job_threads
    resources:
        **job_resources("speed"),
    conda:
        "../envs/pruning.yaml"
    shell:
        "python -m pruning speed --model {input.model:q} {params.gguf} {params.settings} --threads {params.threads} "
        "--output {output:q} > {log:q} 2>&1"
