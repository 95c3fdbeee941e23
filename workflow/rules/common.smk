"""Config check, the grid (one row per real job), job resources and input/param functions. Building the DAG
imports only torch-free parts of the library: the pre-flight (`pruning.preflight`, which imports torch only where
a model config, a zero-shot task or a cuda device asks for it) and the grid contract (`pruning.reporting.grid`);
jobs call the library through `python -m pruning`."""
import os
import re
import shlex
import sys
import tempfile
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

REPO = Path(workflow.basedir).resolve()
# Where Snakemake was started (its --directory; the repository root in every documented command), before the
# Snakefile's `workdir:` moves into the config's run_dir: run_dir and published_dir are relative to it.
LAUNCH_DIR = Path.cwd()
sys.path.insert(0, str(REPO))  # the library of this checkout, whichever `pruning` is installed
from pruning.preflight import (WorkflowConfig, duplicate_keys, schema_problems, workflow_config_problems,
                               workflow_schema)
from pruning.core.io import PRUNE_REPORT
from pruning.reporting.evaluations import EVALUATIONS, STAGES, metric_file_names
from pruning.reporting.grid import DENSE_METHOD, grid_rows, plot_specs, table_specs

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# Jobs run `python -m pruning` from this checkout: the Python that runs Snakemake comes first on PATH
# (a conda env activated by --sdm conda still goes before it) and the checkout on PYTHONPATH; both reach
# Slurm jobs, which sbatch starts with the submitting environment. The conda env cannot install the
# checkout instead: Snakemake copies workflow/envs/pruning.yaml to .snakemake/conda/<hash>.yaml in the
# working directory and conda runs pip from that folder, so a relative `-e ../..` would name the working
# directory, which is this checkout only when Snakemake runs from it.
os.environ.update(
    PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
)


def _config_files() -> list[Path]:
    """The YAML/JSON files the config was read from: --configfile ones, and config/config.yaml unless replaced."""
    settings = workflow.config_settings
    files = settings.configfiles if settings.replace_workflow_config else workflow.configfiles
    return list(dict.fromkeys(Path(f).resolve() for f in files))


def check_config(cfg: dict) -> None:
    """Reject a bad config before any job, naming the key of each problem; fills the schema's defaults.
    Order: keys written twice in a config file, the schema (its method rules from the registry), then the
    library's pre-flight of the whole config (pruning.preflight.workflow_config_problems)."""
    errors = [e for path in _config_files() for e in duplicate_keys(path)]
    with tempfile.TemporaryDirectory() as folder:  # validate() reads a schema file
        schema = Path(folder, SCHEMA.name)
        schema.write_text(yaml.safe_dump(workflow_schema(yaml.safe_load(SCHEMA.read_text())), sort_keys=False))
        try:
            validate(cfg, schema=str(schema))
        except WorkflowError as error:
            errors += schema_problems(error)
    if not errors:
        errors = workflow_config_problems(
            cfg, REPO, jobs_run_here=workflow.resource_settings.nodes is None,
            jobs_have_own_env=DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method)
    if errors:
        raise WorkflowError("invalid workflow config:\n  " + "\n  ".join(errors))


check_config(config)

CONFIG = WorkflowConfig(config, REPO)
CALIBRATION, EVALUATION = CONFIG.protocol()
# Zero-shot tasks an offline run cannot read (offline_hub_tasks: skip): no jobs; the tables show them as online only
SKIPPED_TASKS, SKIP_REASON = CONFIG.skip_offline_hub_tasks()
if SKIPPED_TASKS:
    logger.warning(f"zero-shot tasks left out, {SKIP_REASON}: {', '.join(SKIPPED_TASKS)} (no local copy in data_dir)")
GPUS = config["gpus_per_job"] if config["gpus_per_job"] is not None else int(config["device"].startswith("cuda"))

# What each rule's jobs ask for: memory (MB) and runtime (minutes) of the first attempt, each retry
# (--retries) asking for that much again, and whether the job takes the config's GPUs (gpus_per_job, or 1
# when device is cuda). The one place these are set; a profile or the command line overrides them per rule
# as Snakemake always allows (set-resources, --set-resources prune:mem_mb=64000).
JOB_RESOURCES = {
    "fetch_model": dict(mem_mb=8000, runtime=60, gpu=False),
    "prune": dict(mem_mb=32000, runtime=240, gpu=True),
    "install_model": dict(mem_mb=2000, runtime=10, gpu=False),
    "perplexity": dict(mem_mb=16000, runtime=120, gpu=True),  # also any evaluation rule not listed here
    "zeroshot": dict(mem_mb=16000, runtime=240, gpu=True),
    "gguf_convert": dict(mem_mb=16000, runtime=60, gpu=False),
    "gguf_eval": dict(mem_mb=16000, runtime=120, gpu=False),  # llama.cpp on CPU
    "speed": dict(mem_mb=16000, runtime=60, gpu=True),
    "tables": dict(mem_mb=2000, runtime=10, gpu=False),
    "plots": dict(mem_mb=2000, runtime=10, gpu=False),
    "publish": dict(mem_mb=2000, runtime=10, gpu=False),
}


def job_resources(rule: str) -> dict:
    """The `resources:` of `rule`, from JOB_RESOURCES (an evaluation rule not listed asks what perplexity does)."""
    need = JOB_RESOURCES.get(rule, JOB_RESOURCES["perplexity"])
    resources = dict(mem_mb=lambda wildcards, attempt: need["mem_mb"] * attempt,
                     runtime=lambda wildcards, attempt: need["runtime"] * attempt)
    if need["gpu"]:
        resources["gpu"] = GPUS
    return resources


MODEL_SPECS = CONFIG.model_specs()
MODEL_NOTES = {name: entry["note"] for name, entry in config["models"].items()
               if isinstance(entry, dict) and entry.get("note")}


GRID = grid_rows(config["models"], config["methods"])
RUNS = {(row["model"], row["method"], row["ratio"]): row for row in GRID}
PRUNED = [row for row in GRID if row["method"] != DENSE_METHOD]


def stage_applies(stage: str, row: dict) -> bool:
    """Whether a grid row gets a measurement stage: the stage is on, lists the row's model (or every model) and
    the row is not ppl_only."""
    return EVALUATIONS[stage].applies(config, row["model"], row["method"] != DENSE_METHOD, row["method"], row["value"])


def stage_on(stage: str) -> bool:
    """Whether any grid row gets `stage`."""
    return any(stage_applies(stage, row) for row in GRID)


def _alternation(values) -> str:
    return "|".join(re.escape(v) for v in sorted(set(values), key=lambda v: (-len(v), v)))


wildcard_constraints:
    model=_alternation(row["model"] for row in GRID),
    method=_alternation(row["method"] for row in GRID),
    ratio=_alternation(row["ratio"] for row in GRID),
    **{e.key: _alternation(e.keys(config)) or "(?!)" for e in EVALUATIONS.values() if e.key},  # task, outtype


PRUNED_METHODS_PATTERN = _alternation(row["method"] for row in PRUNED) if PRUNED else "(?!)"


def grid_paths(pattern: str, rows=GRID) -> list[str]:
    """`pattern` with {model}/{method}/{ratio} filled for each row (zip, not product)."""
    return [pattern.format(model=r["model"], method=r["method"], ratio=r["ratio"]) for r in rows]


def run_row(wildcards) -> dict:
    key = (wildcards.model, wildcards.method, wildcards.ratio)
    if key not in RUNS:
        raise WorkflowError(f"{'/'.join(key)} is not in the grid of this config")
    return RUNS[key]


def model_spec_argument(model: str) -> str:
    """The zoo spec of a model, local paths made absolute (jobs may run anywhere on a shared filesystem)."""
    spec = MODEL_SPECS[model]
    return shlex.quote(str(CONFIG.path(spec)) if CONFIG.is_path_spec(spec) else spec)


PRUNED_MODEL = "results/models/{model}/{method}/{ratio}"  # a pruned grid row's model directory
NEW_PRUNED_MODEL = "results/models/{model}/{method}/{ratio}.new"  # a prune job's output (install_model)


def model_dir(wildcards) -> str:
    """The directory a metric is measured on: the fetched model for dense, else the pruned one."""
    row = run_row(wildcards)
    if row["method"] == DENSE_METHOD:
        return f"resources/models/{row['model']}"
    return PRUNED_MODEL.format(**row)


def _quote(args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def prune_arguments(wildcards) -> str:
    return _quote(CONFIG.prune_arguments(run_row(wildcards)))


def calibration_arguments() -> str:
    return _quote(CALIBRATION.arguments())


def evaluation_arguments(batch: bool = True) -> str:
    return _quote(EVALUATION.arguments(batch))


def runtime_arguments(device: bool = True) -> str:
    return _quote(CONFIG.runtime_arguments(device))


# A prune job's params, recorded by Snakemake with its output and again with the installed model (install_model).
PRUNE_PARAMS = {"method": prune_arguments, "calibration": calibration_arguments(), "runtime": runtime_arguments(),
                "report": PRUNE_REPORT}


def pruned_model_output(path: str):
    """Pruned model directories are kept, or deleted once every evaluation of them is done."""
    return directory(path) if config["keep_models"] else temp(directory(path))


def gguf_output(path: str):
    return path if config["keep_models"] else temp(path)


GGUF_FILE = "results/gguf/{model}/{method}/{ratio}/model-{outtype}.gguf"


def zeroshot_arguments(wildcards) -> str:
    return _quote(CONFIG.zeroshot_arguments(wildcards.task))


def speed_inputs(wildcards) -> dict:
    inputs = {"model": model_dir(wildcards)}
    outtype = config["speed"]["gguf_outtype"]
    if outtype:
        inputs["gguf"] = GGUF_FILE.format(outtype=outtype, **wildcards)
    return inputs


def speed_job_threads(wildcards) -> int:
    """Cores a speed job holds. Locally it holds them all, so that no other job runs beside it and every row
    is timed on an otherwise idle machine (it still times with config.threads, as --threads says); on a
    cluster (--jobs) each job has its own allocation and asks for config.threads like every job."""
    cores = workflow.resource_settings.cores
    if workflow.resource_settings.nodes is None and isinstance(cores, int):
        return max(config["threads"], cores)
    return config["threads"]


def speed_arguments() -> str:
    return _quote(CONFIG.speed_arguments())


RUN_METRICS = "results/metrics/{model}/{method}/{ratio}"  # a grid row's metric files (pruning.reporting.evaluations)


def metric_output(source: str) -> str:
    """The metric file an evaluation's rule writes, with {model}/{method}/{ratio} (and its key) as wildcards."""
    return f"{RUN_METRICS}/{EVALUATIONS[source].file_pattern}"


def run_metric_files(row: dict) -> list[str]:
    """Every metric file the config asks for on one grid row."""
    folder = RUN_METRICS.format(**row)
    return [f"{folder}/{name}" for name in metric_file_names(config, row["model"], row["method"] != DENSE_METHOD,
                                                                     row["method"], row["value"])]


def all_metric_files() -> list[str]:
    return [path for row in GRID for path in run_metric_files(row)]


def kept_models() -> list[str]:
    """The pruned model directories the grid keeps (none with keep_models: false)."""
    return grid_paths(PRUNED_MODEL, PRUNED) if config["keep_models"] else []


def grid_outputs() -> list[str]:
    """Every file the grid keeps for its rows: the metric files, and with keep_models the pruned models and GGUF
    files. The aggregating targets (all, evaluate_all) take them all as input, so a rerun remakes whichever is
    missing: Snakemake re-runs a job for a missing output only when a job that needs it runs, and the tables,
    newer than every metric file that is still there, would not."""
    gguf = [GGUF_FILE.format(outtype=outtype, **row) for row in GRID if stage_applies("gguf", row)
            for outtype in config["gguf"]["outtypes"]] if config["keep_models"] else []
    return [*all_metric_files(), *kept_models(), *gguf]


def table_names() -> list[str]:
    """The tables pruning.reporting.tables writes for this grid (pruning.reporting.grid decides for both)."""
    return [spec.name for spec in table_specs(GRID, [stage for stage in STAGES if stage_on(stage)])]


def plot_names() -> list[str]:
    both = [row for row in GRID if stage_applies("zeroshot", row) and stage_applies("speed", row)]
    return [spec.name for spec in plot_specs(GRID, zeroshot_speed=both)]


# Where `snakemake publish` copies a finished run's tables and plots: the only tracked results. The workflow
# itself writes only ignored paths (results/tables, results/plots, ...), so a fresh clone runs the grid.
PUBLISHED_TABLES = str(LAUNCH_DIR / config["published_dir"] / "tables")
PUBLISHED_PLOTS = str(LAUNCH_DIR / config["published_dir"] / "plots")
