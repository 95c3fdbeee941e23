"""Config checks, the grid (one row per real job), job resources and input/param functions. Building the
DAG imports only torch-free parts of the library: the grid contract (`pruning.reporting.grid`) and the checks that ask
it what a job would refuse; jobs call the library through `python -m pruning`."""
import importlib.util
import inspect
import json
import os
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.settings.types import DeploymentMethod
from snakemake.utils import validate

REPO = Path(workflow.basedir).resolve()
sys.path.insert(0, str(REPO))  # the grid contract of this checkout, whichever `pruning` is installed
from pruning.core.io import PRUNE_REPORT
from pruning.reporting.evaluations import EVALUATIONS, STAGES, metric_file_names
from pruning.reporting.grid import (DENSE_METHOD, GridError, grid_rows, plot_specs, ratio_token_problem, table_specs,
                          task_fewshot)

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

DATA_FILE_SUFFIXES = (".txt", ".jsonl", ".gz")  # calibration/evaluation text given as a file (path from the repo)


def _key(path) -> str:
    """jsonschema path -> the config key as a user writes it: methods.wanda.ratios.sparsity[0]."""
    text = "config"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _schema_messages(error: Exception) -> list[str]:
    """The violation `validate` stopped at, naming its key; `if/then`/`oneOf` failures at their leaves."""
    cause = error.__context__  # validate() raises WorkflowError inside `except ValidationError`
    if not isinstance(cause, jsonschema.ValidationError):
        return [str(error)]
    leaves = [cause]
    while any(e.context for e in leaves):
        leaves = [c for e in leaves for c in (e.context or [e])]
    return sorted({f"{_key(leaf.absolute_path)}: {leaf.message}" for leaf in leaves})


def _config_files() -> list[Path]:
    """The YAML/JSON files the config was read from: --configfile ones, and config/config.yaml unless replaced."""
    settings = workflow.config_settings
    files = settings.configfiles if settings.replace_workflow_config else workflow.configfiles
    return list(dict.fromkeys(Path(f).resolve() for f in files))


def _duplicate_keys(path: Path) -> list[str]:
    """Keys written twice in one mapping of a config file (YAML keeps only the last one, silently)."""
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return []  # Snakemake itself reports a file it cannot read
    visited = set()  # an alias may point back at a node already walked

    def walk(node, key):
        if id(node) in visited:
            return
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines = {}
            for name, value in node.value:
                if isinstance(name, yaml.ScalarNode) and name.tag != "tag:yaml.org,2002:merge":
                    line = name.start_mark.line + 1
                    if name.value in lines:
                        yield (f"{key}.{name.value}: written twice in {path} (lines {lines[name.value]} and {line}); "
                               "remove one (YAML would keep only the last)")
                    lines.setdefault(name.value, line)
                yield from walk(value, f"{key}.{name.value}")
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from walk(item, f"{key}[{index}]")

    return list(walk(root, "config"))


def _resolve_path(text: str) -> Path:
    """Paths in the config are relative to the repository root, whatever the working directory."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else (REPO / path).resolve()


def _is_path_spec(spec: str) -> bool:
    return spec.startswith((".", os.sep, "~")) or (REPO / spec).is_dir() or _is_gguf_spec(spec)


def _is_gguf_spec(spec: str) -> bool:
    """A local GGUF file given as model spec (the zoo dequantizes it; checked by zoo.check_spec)."""
    return spec.lower().endswith(".gguf") and not spec.startswith("pypi:")


def _data_argument(source: str) -> str:
    """A calibration/evaluation source as jobs get it: files (by suffix) made absolute, names unchanged."""
    return str(_resolve_path(source)) if Path(source).suffix in DATA_FILE_SUFFIXES else source


def model_specs(models: dict) -> dict[str, str]:
    """Each config model's zoo spec: an entry is the spec itself, or a mapping with `spec` (and a `note`)."""
    return {name: entry if isinstance(entry, str) else entry["spec"] for name, entry in models.items()}


def _semantic_errors(cfg: dict) -> list[str]:
    """Checks a schema cannot express: cross references, token round trips, existing paths, shots per task."""
    from pruning.methods.catalog import is_composite

    errors = []
    models = cfg["models"]
    for name, spec in model_specs(models).items():
        if _is_path_spec(spec) and not _is_gguf_spec(spec) and not (_resolve_path(spec) / "config.json").is_file():
            errors.append(f"config.models.{name}: {_resolve_path(spec)} is not a Hugging Face model directory "
                          "(relative paths are taken from the repository root)")
    if cfg["protocol"] not in cfg["protocols"]:
        errors.append(f"config.protocol: {cfg['protocol']!r} is not one of the presets in protocols "
                      f"({', '.join(cfg['protocols'])})")
    for name, entry in cfg["methods"].items():
        for index, model in enumerate(entry.get("models", [])):
            if model not in models:
                errors.append(f"config.methods.{name}.models[{index}]: {model!r} is not a model in models "
                              f"({', '.join(models)})")
        ratios = entry.get("ratios", {})
        errors += [f"config.methods.{name}.ratios.{kind}[{index}]: {problem}" for kind, values in ratios.items()
                   for index, value in enumerate(values) if (problem := ratio_token_problem(kind, value))]
        for kind in sorted(set(ratios) & set(entry["options"])):
            errors.append(f"config.methods.{name}.options.{kind}: {kind} is already given in ratios")
        if not ratios and is_composite(entry["method"]) and not entry["options"]:
            errors.append(f"config.methods.{name}: {entry['method']} without ratios needs its ratios in options")
    data = cfg["data_dir"]
    if data and not _resolve_path(data).is_dir():
        errors.append(f"config.data_dir: {_resolve_path(data)} is not a directory")
    for stage in STAGES:
        for index, model in enumerate(cfg[stage]["models"] or []):
            if model not in models:
                errors.append(f"config.{stage}.models[{index}]: {model!r} is not a model in models "
                              f"({', '.join(models)})")
    speed = cfg["speed"]
    if speed["enabled"] and speed["gguf_outtype"]:
        if speed["gguf_outtype"] not in cfg["gguf"]["outtypes"]:
            errors.append(f"config.speed.gguf_outtype: {speed['gguf_outtype']!r} is not listed in gguf.outtypes")
        elif cfg["gguf"]["models"] is not None:
            timed = cfg["speed"]["models"] or list(models)
            unconverted = [model for model in timed if model not in cfg["gguf"]["models"]]
            if unconverted:
                errors.append(f"config.speed.gguf_outtype: the rows of {', '.join(unconverted)} are timed in "
                              "llama.cpp but not converted to GGUF (add them to gguf.models)")
    try:
        task_fewshot(cfg["zeroshot"]["tasks"], cfg["zeroshot"]["num_fewshot"])
    except GridError as exc:
        errors.append(f"config.zeroshot.num_fewshot: {exc}")
    return errors


def _model_config(name: str, spec: str) -> dict | None:
    """A model's config.json where it is readable offline: the local directory, the zoo's or the hub's cache,
    or the copy fetched into resources/; None when there is none yet (the checks that need it are skipped)."""
    from pruning.core import zoo

    candidates = []
    cached_dir = zoo.cached_model_dir(str(_resolve_path(spec)) if _is_gguf_spec(spec) else spec)
    if cached_dir is not None:
        candidates.append(cached_dir / "config.json")
    elif _is_path_spec(spec):
        candidates.append(_resolve_path(spec) / "config.json")
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec, "config.json")
        except ValueError:  # not a repo id: _spec_errors names it
            cached = None
        if isinstance(cached, str):
            candidates.append(Path(cached))
    candidates.append(Path("resources", "models", name, "config.json"))
    for path in candidates:
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(config, dict):
            return config
    return None


def _model_layers(config: dict | None) -> int | None:
    layers = (config or {}).get("num_hidden_layers")
    return layers if isinstance(layers, int) and not isinstance(layers, bool) else None


def _spec_errors(specs: dict) -> list[str]:
    """Embedded names and hub ids the zoo cannot resolve (directories were checked before)."""
    from pruning.core import zoo

    errors = []
    for name, spec in specs.items():
        if not _is_path_spec(spec) or _is_gguf_spec(spec):
            try:
                zoo.check_spec(str(_resolve_path(spec)) if _is_gguf_spec(spec) else spec)
            except ValueError as exc:
                errors.append(f"config.models.{name}: {exc}")
    return errors


def _plans_from_layer_count(instance) -> bool:
    """A method whose `plan(num_layers)` needs only a layer count (depth, layers): a config can be planned."""
    plan = getattr(instance, "plan", None)
    return callable(plan) and list(inspect.signature(plan).parameters) == ["num_layers"]


def _recovery_arguments(entry: dict) -> dict:
    """A method entry's `recovery` settings as its job passes them (a data file made absolute)."""
    recovery = dict(entry.get("recovery", {}))
    if "data" in recovery:
        recovery["data"] = _data_argument(recovery["data"])
    return recovery


def _method_errors(methods: dict, specs: dict, configs: dict, save_format: str, nsamples: int) -> list[str]:
    """Each method entry built with each of its ratios by the library's option declarations, as `python -m
    pruning prune` builds it (unknown options, bad values such as N >= M; no torch), and checked against the
    protocol's `nsamples` calibration windows; entries whose plan needs only a layer count (depth, layers) also
    planned against each model's layer count; each row's save format checked against its ratio
    (sparse-24-bitmask needs nm 2:4)."""
    from pruning.core.sparse_formats import check_request as check_save_request
    from pruning.methods import build_method
    from pruning.training.recovery_options import RecoverySettings

    errors = []
    for name, entry in methods.items():
        method, options = entry["method"], entry["options"]
        try:
            RecoverySettings.parse(_recovery_arguments(entry))
        except ValueError as exc:
            errors.append(f"config.methods.{name}.recovery: {exc}")
        ratios = [(kind, index, value) for kind, values in entry.get("ratios", {}).items()
                  for index, value in enumerate(values)] or [(None, None, None)]
        for kind, index, value in ratios:
            ratio = {kind: value} if kind else {}
            where = f"config.methods.{name}" + (f".ratios.{kind}[{index}]" if kind else "")
            try:
                check_save_request(entry.get("save_format", save_format), value if kind == "nm" else options.get("nm"))
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
            try:
                instance = build_method(method, **options, **ratio)
            except (ValueError, TypeError) as exc:
                if options and ratio:
                    try:
                        build_method(method, **ratio)
                        where = f"config.methods.{name}.options"  # the ratio alone is fine
                    except (ValueError, TypeError):
                        pass
                errors.append(f"{where}: {exc}")
                continue
            try:
                instance.check_calibration(nsamples)
            except ValueError as exc:
                errors.append(f"config.methods.{name}.options: {exc}")
            if not _plans_from_layer_count(instance):
                continue
            for model in entry.get("models", list(specs)):
                layers = _model_layers(configs[model])
                if layers is not None:
                    try:
                        instance.plan(layers)
                    except ValueError as exc:
                        errors.append(f"{where}: {exc} (model {model})")
    return errors


def _length_errors(cfg: dict, configs: dict) -> list[str]:
    """Token lengths a job would refuse, by the check the library runs (checks.length_problems), against each
    model's positions (its config.json, where readable): the calibration seqlen where a calibrating method
    prunes the model, the evaluation seqlen on every model, and prompt + new tokens when speed is measured."""
    from pruning.core.checks import length_problems
    from pruning.methods import method_class
    from pruning.training.recovery_options import RECOVERY_OPTIONS

    default_recovery_seqlen = next(o.default for o in RECOVERY_OPTIONS if o.name == "seqlen")  # what a job uses by default

    name = cfg["protocol"]
    protocol, speed = cfg["protocols"][name], cfg["speed"]
    errors = []
    for model, config in configs.items():
        if not config:
            continue
        lengths = {f"config.protocols.{name}.evaluation.seqlen": protocol["evaluation"]["seqlen"]}
        if any(method_class(entry["method"]).needs_calibration and model in entry.get("models", configs)
               for entry in cfg["methods"].values()):
            lengths[f"config.protocols.{name}.calibration.seqlen"] = protocol["calibration"]["seqlen"]
        for entry_name, entry in cfg["methods"].items():
            recovery = entry.get("recovery", {})
            if recovery.get("steps") and model in entry.get("models", configs):
                lengths[f"config.methods.{entry_name}.recovery.seqlen"] = recovery.get("seqlen", default_recovery_seqlen)
        if speed["enabled"]:
            prompt, new = speed["prompt_tokens"], speed["new_tokens"]
            lengths[f"config.speed.prompt_tokens {prompt} + new_tokens {new} ="] = prompt + new
        errors += length_problems(model, config, lengths)
    return errors


def _data_errors(protocol_name: str, protocol: dict) -> list[str]:
    """The protocol's calibration source and evaluation dataset: known names, or files that exist."""
    from pruning.core.data import check_calibration_source, check_evaluation_dataset

    errors = []
    for part, field, check in (("calibration", "source", check_calibration_source),
                               ("evaluation", "dataset", check_evaluation_dataset)):
        try:
            check(_data_argument(protocol[part][field]))
        except ValueError as exc:
            errors.append(f"config.protocols.{protocol_name}.{part}.{field}: {exc}")
    return errors


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # Hugging Face's own switches, set = offline


def _offline_variable() -> str | None:
    """The variable that puts this run offline (truthy as huggingface_hub reads it), or None."""
    return next((name for name in OFFLINE_VARIABLES
                 if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}), None)


def _task_errors(tasks: list, data_dir: str | None) -> list[str]:
    """Zero-shot task names: a local copy in the data directory, else a task in lm-eval's list, which needs
    the hub: refused when offline."""
    if not tasks:
        return []
    from pruning.evaluation.zeroshot import resolve_task

    errors, offline = [], _offline_variable()
    for index, task in enumerate(tasks):
        try:
            choice = resolve_task(task, "auto", data_dir)
        except ValueError as exc:
            errors.append(f"config.zeroshot.tasks[{index}]: {exc}")
            continue
        if choice.source == "hub" and offline:
            where = f"in {choice.data_dir}" if choice.data_dir else "(no data_dir)"
            errors.append(f"config.zeroshot.tasks[{index}]: {task!r} has no local copy {where}, so its documents "
                          f"come from the Hugging Face hub, and {offline} is set (offline); use a task with a "
                          "local copy or run online")
    return errors


def _llama_cpp_errors(cfg: dict) -> list[str]:
    """GGUF outputs (each evaluated in llama.cpp; k-quants also made by its quantizer) and llama.cpp speed
    need llama-cpp-python in the Python that runs the jobs: this one, unless --sdm conda gives them theirs."""
    asked = cfg["gguf"]["outtypes"] or (cfg["speed"]["enabled"] and cfg["speed"]["gguf_outtype"])
    if (not asked or importlib.util.find_spec("llama_cpp") is not None
            or DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method):
        return []
    from pruning.export.outtypes import LLAMACPP_OUTTYPES

    missing = f"llama-cpp-python: {sys.executable} cannot import it (bash scripts/setup.sh installs it)"
    errors = []
    for index, outtype in enumerate(cfg["gguf"]["outtypes"]):
        uses = ("made by llama.cpp's quantizer and evaluated in llama.cpp" if outtype in LLAMACPP_OUTTYPES
                else "evaluated in llama.cpp, as every GGUF file of the grid (gguf_eval)")
        errors.append(f"config.gguf.outtypes[{index}]: {outtype!r} is {uses}, which needs {missing}")
    if cfg["speed"]["enabled"] and cfg["speed"]["gguf_outtype"]:
        errors.append(f"config.speed.gguf_outtype: timing {cfg['speed']['gguf_outtype']!r} in llama.cpp needs {missing}")
    return errors


def _memory_errors(max_memory) -> list[str]:
    """`max_memory` must read as a size (prune --max-memory); whether a run fits is decided inside its job."""
    if max_memory is None:
        return []
    from pruning.core.streaming import MemoryCapError, parse_memory_size

    try:
        parse_memory_size(max_memory)
    except MemoryCapError as error:
        return [f"config.max_memory: {error}"]
    return []


def _device_errors(device: str) -> list[str]:
    """`device: cuda[:N]` needs CUDA where the jobs run: checked here when they run on this machine (a
    cluster executor, given --jobs, runs them on its nodes). Imports torch only for a cuda device."""
    if not device.startswith("cuda") or workflow.resource_settings.nodes is not None:
        return []
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU visible"
        return [f"config.device: {device!r} needs CUDA, which torch {torch.__version__} here has not ({build}); "
                "use cpu, or submit to GPU nodes (--workflow-profile profiles/slurm)"]
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        return [f"config.device: {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s)"]
    return []


def _library_errors(cfg: dict) -> list[str]:
    """What a job would refuse, asked of the library before any job, and the optional parts the config
    needs (llama-cpp-python, CUDA, the network). Specs, method options and data need no torch; depth/layers
    plans against a known layer count, zero-shot task names and a cuda device import it (about a second),
    only when the config has them."""
    specs = model_specs(cfg["models"])
    data_dir = str(_resolve_path(cfg["data_dir"])) if cfg["data_dir"] else None
    configs = {name: _model_config(name, spec) for name, spec in specs.items()}
    errors = [*_spec_errors(specs), *_method_errors(cfg["methods"], specs, configs, cfg["save_format"],
                             cfg["protocols"][cfg["protocol"]]["calibration"]["nsamples"]),
              *_length_errors(cfg, configs),
              *_data_errors(cfg["protocol"], cfg["protocols"][cfg["protocol"]]),
              *_task_errors(cfg["zeroshot"]["tasks"], data_dir), *_llama_cpp_errors(cfg),
              *_device_errors(cfg["device"]), *_memory_errors(cfg["max_memory"])]
    return list(dict.fromkeys(errors))


def check_config(cfg: dict) -> None:
    """Reject a bad config before any job, naming the key of each problem; fills the schema's defaults.
    Order: keys written twice in a config file, the schema (`validate`), the cross-checks, then what the
    library itself would refuse inside a job."""
    errors = [e for path in _config_files() for e in _duplicate_keys(path)]
    try:
        validate(cfg, schema=str(SCHEMA))
    except WorkflowError as error:
        errors += _schema_messages(error)
    if not errors:
        errors = _semantic_errors(cfg)
    if not errors:
        errors = _library_errors(cfg)
    if errors:
        raise WorkflowError("invalid workflow config:\n  " + "\n  ".join(errors))


check_config(config)

PROTOCOL = config["protocols"][config["protocol"]]
CALIBRATION, EVALUATION = PROTOCOL["calibration"], PROTOCOL["evaluation"]
DATA_DIR = str(_resolve_path(config["data_dir"])) if config["data_dir"] else None
GPUS = config["gpus_per_job"] if config["gpus_per_job"] is not None else int(config["device"].startswith("cuda"))

# What each rule's jobs ask for: memory (MB) and runtime (minutes) of the first attempt, each retry
# (--retries) asking for that much again, and whether the job takes the config's GPUs (gpus_per_job, or 1
# when device is cuda). The one place these are set; a profile or the command line overrides them per rule
# as Snakemake always allows (set-resources, --set-resources prune:mem_mb=64000).
JOB_RESOURCES = {
    "fetch_model": dict(mem_mb=8000, runtime=60, gpu=False),
    "prune": dict(mem_mb=32000, runtime=240, gpu=True),
    "perplexity": dict(mem_mb=16000, runtime=120, gpu=True),
    "zeroshot": dict(mem_mb=16000, runtime=240, gpu=True),
    "gguf_convert": dict(mem_mb=16000, runtime=60, gpu=False),
    "gguf_eval": dict(mem_mb=16000, runtime=120, gpu=False),  # llama.cpp on CPU
    "speed": dict(mem_mb=16000, runtime=60, gpu=True),
    "tables": dict(mem_mb=2000, runtime=10, gpu=False),
    "plots": dict(mem_mb=2000, runtime=10, gpu=False),
    "publish": dict(mem_mb=2000, runtime=10, gpu=False),
}


def job_resources(rule: str) -> dict:
    """The `resources:` of `rule`, from JOB_RESOURCES."""
    need = JOB_RESOURCES[rule]
    resources = dict(mem_mb=lambda wildcards, attempt: need["mem_mb"] * attempt,
                     runtime=lambda wildcards, attempt: need["runtime"] * attempt)
    if need["gpu"]:
        resources["gpu"] = GPUS
    return resources
MODEL_SPECS = model_specs(config["models"])
MODEL_NOTES = {name: entry["note"] for name, entry in config["models"].items()
               if isinstance(entry, dict) and entry.get("note")}


GRID = grid_rows(config["models"], config["methods"])
RUNS = {(row["model"], row["method"], row["ratio"]): row for row in GRID}
PRUNED = [row for row in GRID if row["method"] != DENSE_METHOD]
ZEROSHOT_TASKS = config["zeroshot"]["tasks"]
GGUF_OUTTYPES = config["gguf"]["outtypes"]


def stage_applies(stage: str, row: dict) -> bool:
    """Whether a grid row gets a measurement stage: the stage is on and lists the row's model (or every model)."""
    return EVALUATIONS[stage].applies(config, row["model"], row["method"] != DENSE_METHOD)


def stage_on(stage: str) -> bool:
    """Whether any grid row gets `stage`."""
    return any(stage_applies(stage, row) for row in GRID)


def _alternation(values) -> str:
    return "|".join(re.escape(v) for v in sorted(set(values), key=lambda v: (-len(v), v)))


wildcard_constraints:
    model=_alternation(row["model"] for row in GRID),
    method=_alternation(row["method"] for row in GRID),
    ratio=_alternation(row["ratio"] for row in GRID),
    task=_alternation(ZEROSHOT_TASKS) if ZEROSHOT_TASKS else "(?!)",
    outtype=_alternation(GGUF_OUTTYPES) if GGUF_OUTTYPES else "(?!)",


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
    return shlex.quote(str(_resolve_path(spec)) if _is_path_spec(spec) else spec)


def model_dir(wildcards) -> str:
    """The directory a metric is measured on: the fetched model for dense, else the pruned one."""
    row = run_row(wildcards)
    if row["method"] == DENSE_METHOD:
        return f"resources/models/{row['model']}"
    return f"results/models/{row['model']}/{row['method']}/{row['ratio']}"


def _quote(args) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def prune_arguments(wildcards) -> str:
    """--method, the ratio and the options of one grid row, shell-quoted."""
    row = run_row(wildcards)
    entry = row["entry"]
    args = ["--method", entry["method"]]
    if row["kind"] in ("sparsity", "nm"):
        args += [f"--{row['kind']}", row["value"]]
    elif row["kind"]:
        args += ["--option", f"{row['kind']}={row['value']}"]
    for key, value in entry.get("options", {}).items():
        args += ["--option", f"{key}={json.dumps(value)}"]
    for key, value in _recovery_arguments(entry).items():
        args += [f"--recover-{key.replace('_', '-')}", value]
    save_format = entry.get("save_format", config["save_format"])
    if save_format != "dense":  # the default: rows saved dense keep the command (and results) they had
        args += ["--save-format", save_format]
    if config["max_memory"] is not None:  # over it the job streams its layers from disk (pruning/core/streaming.py)
        args += ["--max-memory", config["max_memory"]]
    return _quote(args)


def calibration_arguments() -> str:
    c = CALIBRATION
    return _quote(["--calib", _data_argument(c["source"]),
                   "--nsamples", c["nsamples"], "--seqlen", c["seqlen"], "--seed", c["seed"],
                   "--batch-size", c["batch_size"]])


def evaluation_arguments(batch: bool = True) -> str:
    e = EVALUATION
    args = ["--dataset", _data_argument(e["dataset"]), "--split", e["split"], "--seqlen", e["seqlen"]]
    if e["max_windows"] is not None:
        args += ["--max-windows", e["max_windows"]]
    if batch:
        args += ["--batch-size", e["batch_size"]]
    return _quote(args)


def runtime_arguments(device: bool = True) -> str:
    args = ["--device", config["device"], "--dtype", config["dtype"]] if device else []
    if DATA_DIR:
        args += ["--data-dir", DATA_DIR]
    return _quote(args)


def pruned_model_output(path: str):
    """Pruned model directories are kept, or deleted once every evaluation of them is done."""
    return directory(path) if config["keep_models"] else temp(directory(path))


def gguf_output(path: str):
    return path if config["keep_models"] else temp(path)


ZEROSHOT_SHOTS = task_fewshot(ZEROSHOT_TASKS, config["zeroshot"]["num_fewshot"])  # checked in check_config


def zeroshot_arguments(wildcards) -> str:
    """The zeroshot job's settings; shots per task (config.zeroshot.num_fewshot, a number or a map)."""
    z = config["zeroshot"]
    args = ["--num-fewshot", ZEROSHOT_SHOTS[wildcards.task], "--batch-size", z["batch_size"]]
    if z["limit"] is not None:
        args += ["--limit", z["limit"]]
    return _quote(args)


def speed_inputs(wildcards) -> dict:
    inputs = {"model": model_dir(wildcards)}
    outtype = config["speed"]["gguf_outtype"]
    if outtype:
        inputs["gguf"] = "results/gguf/{model}/{method}/{ratio}/model-{outtype}.gguf".format(outtype=outtype, **wildcards)
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
    s = config["speed"]
    return _quote(["--prompt-tokens", s["prompt_tokens"], "--new-tokens", s["new_tokens"], "--repeats", s["repeats"],
                   "--device", config["device"], "--dtype", config["dtype"]])


RUN_METRICS = "results/metrics/{model}/{method}/{ratio}"  # a grid row's metric files (pruning.reporting.evaluations)


def metric_output(source: str) -> str:
    """The metric file an evaluation's rule writes, with {model}/{method}/{ratio} (and its key) as wildcards."""
    return f"{RUN_METRICS}/{EVALUATIONS[source].file_pattern}"


def run_metric_files(row: dict) -> list[str]:
    """Every metric file the config asks for on one grid row."""
    folder = RUN_METRICS.format(**row)
    return [f"{folder}/{name}" for name in metric_file_names(config, row["model"], row["method"] != DENSE_METHOD)]


def all_metric_files() -> list[str]:
    return [path for row in GRID for path in run_metric_files(row)]


def table_names() -> list[str]:
    """The tables pruning.reporting.tables writes for this grid (pruning.reporting.grid decides for both)."""
    return [spec.name for spec in table_specs(GRID, [stage for stage in STAGES if stage_on(stage)])]


def plot_names() -> list[str]:
    both = [row for row in GRID if stage_applies("zeroshot", row) and stage_applies("speed", row)]
    return [spec.name for spec in plot_specs(GRID, zeroshot_speed=both)]


# Where `snakemake publish` copies a finished run's tables and plots: the only tracked results. The workflow
# itself writes only ignored paths (results/tables, results/plots, ...), so a fresh clone runs the grid.
PUBLISHED_TABLES = "results/published/tables"
PUBLISHED_PLOTS = "results/published/plots"
