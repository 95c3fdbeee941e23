"""The one pre-flight: everything a run can be refused for, found before any weight is loaded.

A `RunRequest` is a whole run as asked (model, method and options, calibration, evaluation, outputs, storage,
recovery, memory, runtime). `problems(request)` returns every problem it finds, each naming the request key
it is about; `check(request)` raises the first as the one-line error the API and the CLI print, and otherwise
returns what the checks learned (the method built, the model directory and its config.json, the recovery
settings, the memory plan). Only config.json, safetensors headers and data-file names are read.

`api.prune`, `api.evaluate_perplexity`, `Pruner`, the job files (through `api.prune`) and the workflow all ask
it; `workflow_config_problems` runs it on every grid row of a workflow config (with the files of each model that
is local already, checked as a prune checks them, and the calibration documents counted with its tokenizer) and
adds what only a config has (cross references, stages, optional parts), each problem naming its config key.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .core import arguments, model_checks, outputs
from .core.data import (DataError, calibration_documents, calibration_is_local, check_calibration_length,
                        check_calibration_source, check_evaluation_dataset, data_dir)
from .core.inputs import read_paths
from .core.options import READS_MODEL, READS_TEXT
from .core.protocols import Calibration, Evaluation
from .core.sparse_formats import DENSE, check_request as check_save_request
from .methods import PruningMethod, build_method
from .methods.base import reading_options
from .reporting.evaluations import STAGES
from .reporting.grid import GridError, ratio_token_problem, task_fewshot
from .training.recovery_options import RecoverySettings
from .core.dtypes import DEFAULT_DTYPE

# How a request key is named in a message where the key is part of the sentence (lengths, counts); the API's
# and the CLI's spelling unless the request gives its own `names` (the workflow gives config keys).
DEFAULT_NAMES = {"calibration.batch_size": "batch_size", "calibration.nsamples": "nsamples",
                 "calibration.seqlen": "--seqlen", "evaluation.seqlen": "--eval-seqlen",
                 "evaluation.max_windows": "--max-windows", "evaluation.batch_size": "--batch-size",
                 "recovery.seqlen": "--recover-seqlen", "ignore": "--ignore"}
MODEL_CONFIG = "model_config"  # the key of a problem the model's config.json raises against the method
_RESOLVE = object()  # survey(): resolve the model (fetching it if needed) and check its files


@dataclass(frozen=True)
class Problem:
    """One reason to refuse a request: the request key it is about and the error a front door raises."""

    key: str
    error: Exception

    @property
    def message(self) -> str:
        return " ".join(str(self.error).split())


@dataclass
class RunRequest:
    """One run as asked. `method` None: no method yet (a Pruner before its steps, an evaluation);
    `calibration` None: the run does not calibrate; `evaluation` None: it does not evaluate. `device` and
    `dtype` None: checked elsewhere (the workflow checks its device where its jobs run)."""

    model: str
    method: str | PruningMethod | None = None
    options: dict = field(default_factory=dict)
    calibration: Calibration | None = field(default_factory=Calibration)
    evaluation: Evaluation | None = None
    output_dir: str | os.PathLike | None = None
    output_file: str | os.PathLike | None = None
    overwrite: bool = False
    save_format: str = DENSE
    recovery: dict | None = None
    max_memory: str | int | None = None
    stream: bool | None = None
    device: str | None = "auto"
    dtype: str | None = DEFAULT_DTYPE
    data_dir: str | None = None
    selection_on_test: bool = False  # the documents' compat path: calibration on WikiText-2 test (core/data.py)
    trust_remote_code: bool = False  # the opt-in for a model with code of its own (config.json's auto_map)
    ignore: tuple[str, ...] = ()  # globs of linear modules to keep dense (methods that READS_IGNORE)
    names: dict = field(default_factory=dict)
    files: tuple = ()  # other files the run reads (a job file)
    log_file: str | os.PathLike | None = None  # a log the run appends to: an output like the others

    def name(self, key: str) -> str:
        return self.names.get(key) or DEFAULT_NAMES.get(key, key)

    def inputs(self, method: PruningMethod | None = None) -> list[Path]:
        """Every path the run reads, which no output may be, contain or lie inside (`read_paths`): the model's,
        the calibration and evaluation files through the data directory, the text a recovery or distillation
        trains on and a teacher model (from `method`'s options, defaults filled, where it is built), `files`.
        The calibration source counts even for a method that does not calibrate: the rule errs on the data's
        side."""
        values = method.options() if method is not None else self.options
        reads = reading_options()
        named = {kind: [value for key, value in values.items() if reads.get(key) == kind and isinstance(value, str)]
                 for kind in (READS_MODEL, READS_TEXT)}
        recovery = None
        if (self.recovery or {}).get("steps"):
            try:
                recovery = RecoverySettings.parse(self.recovery).data
            except ValueError:
                recovery = self.recovery.get("data")
        return read_paths(models=[self.model, *named[READS_MODEL]],
                          calibration=[self.calibration.source if self.calibration else None, recovery,
                                       *named[READS_TEXT]],
                          evaluation=[(self.evaluation.dataset, self.evaluation.split) if self.evaluation else None],
                          files=self.files, data_dir=self.data_dir)


@dataclass
class Preflight:
    """What the checks learned, for the run that follows them."""

    method: PruningMethod | None = None
    path: Path | None = None
    config: dict | None = None
    recovery: RecoverySettings | None = None
    memory: object | None = None  # core.streaming.MemoryPlan
    problems: list[Problem] = field(default_factory=list)


def problems(request: RunRequest) -> list[Problem]:
    """Every problem of `request`, found without loading weights (the model is resolved, fetched if needed)."""
    return survey(request).problems


def check(request: RunRequest, model_config=_RESOLVE) -> Preflight:
    """What `survey` learned; its first problem raised as the error the caller would have met."""
    found = survey(request, model_config)
    if found.problems:
        raise found.problems[0].error
    return found


def survey(request: RunRequest, model_config=_RESOLVE) -> Preflight:
    """Run every check of `request`. `model_config` given (a config.json mapping, or None where none is
    readable): the model is not resolved, outputs and the memory estimate are left to the job, and the checks
    that need the model's config use this one (skipped for None). A resolved model's tokenizer files are
    checked last (every run loads its tokenizer), so that what the arguments ask of the model comes first."""
    found = _survey(request, model_config)
    if found.path is not None:
        try:
            model_checks.tokenizer_files(found.path, found.config)
        except ValueError as error:
            found.problems.append(Problem("model", error))
    return found


def _survey(request: RunRequest, model_config) -> Preflight:
    found = Preflight()
    calibration, evaluation = request.calibration, request.evaluation

    def ask(key, check, *args, **kwargs):
        try:
            return check(*args, **kwargs)
        except ValueError as error:  # the project's errors are ValueErrors (OutputError, DataError, ...)
            found.problems.append(Problem(key, error))
            return None

    def count(key, value, minimum=1):
        if value is not None and (problem := arguments.count_problem(request.name(key), value, minimum)):
            found.problems.append(Problem(key, ValueError(problem)))

    ask("save_format", check_save_request, request.save_format, request.options.get("nm"))
    if calibration:
        count("calibration.batch_size", calibration.batch_size)
    found.recovery = ask("recovery", RecoverySettings.parse, request.recovery)
    method = request.method
    if isinstance(method, str):
        method = ask("method", build_method, method, **request.options)
    found.method = method
    if request.ignore and method is not None and not method.reads_ignore():
        from .methods.base import ignore_methods

        found.problems.append(Problem("ignore", ValueError(
            f"{request.name('ignore')} keeps linear modules dense in the methods that prune linears one by one "
            f"({', '.join(ignore_methods())}, and the composites running one); {method.name} does not read it")))
    calibrates = calibration is not None and (request.method is None or (method is not None and method.needs_calibration))
    if calibrates:
        ask("calibration.source", check_calibration_source, calibration.source, request.selection_on_test)
        count("calibration.nsamples", calibration.nsamples)
        if method is not None and arguments.count_problem("", calibration.nsamples) is None:
            ask("options", method.check_calibration, calibration.nsamples)
    if evaluation:
        ask("evaluation.dataset", check_evaluation_dataset, evaluation.dataset)
    ask("data_dir", data_dir, request.data_dir)
    if request.device is not None:
        from .core.modeling import resolve_device

        ask("device", resolve_device, request.device)
    if request.dtype is not None:
        from .core.modeling import torch_dtype

        ask("dtype", torch_dtype, request.dtype)
    if evaluation:
        count("evaluation.max_windows", evaluation.max_windows)
        if request.output_file is not None:
            count("evaluation.batch_size", evaluation.batch_size)
    if model_config is _RESOLVE:
        if found.problems and not Path(request.model).expanduser().is_dir():
            return found  # a bad argument is refused before a model is fetched
        resolved = ask("model", _resolve_model, request, method)
        if resolved is None:
            return found
        found.path, found.config = resolved
    else:
        found.config = model_config
    config = found.config
    if config is None:
        _memory_size(request, found)
        return found
    label = request.names.get("model") or found.path or request.model
    lengths = {}
    if calibrates and method is not None:
        lengths["calibration.seqlen"] = calibration.seqlen
    if evaluation:
        known = calibration.seqlen if calibration is not None and request.method is not None else None
        lengths["evaluation.seqlen"] = evaluation.seqlen if evaluation.seqlen is not None else known
    for key, value in lengths.items():
        for problem in model_checks.length_problems(label, config, {request.name(key): value}):
            found.problems.append(Problem(key, ValueError(problem)))
    if method is None:
        return found
    before = len(found.problems)
    ask(MODEL_CONFIG, method.check_config, config)
    if len(found.problems) == before:
        _check_weightless(request, found, label)
    if model_config is not _RESOLVE:
        _memory_size(request, found)
    elif not found.problems:  # the estimate needs a method the model can run
        found.memory = ask("max_memory", _memory_plan, request, found)
    if found.recovery is not None and found.recovery.steps:
        for problem in model_checks.length_problems(label, config, {request.name("recovery.seqlen"): found.recovery.seqlen}):
            found.problems.append(Problem("recovery.seqlen", ValueError(problem)))
    return found


def _check_weightless(request: RunRequest, found: Preflight, label) -> None:
    """The method's `check_model` on the model built without weights from its config.json (module names and
    shapes: head counts, layer counts, input widths, ignore patterns), so that what the loaded model would
    refuse is refused before it loads. Skipped where transformers cannot build the config or no adapter
    knows the family (a job file may give its layers' paths; the loaded model is checked again anyway)."""
    from .core.adapters import UnsupportedArchitecture, get_adapter

    model = model_checks.weightless_model(found.config)
    if model is None:
        return
    try:
        adapter = get_adapter(model)
    except UnsupportedArchitecture:
        return
    import torch

    from .methods import PruneContext

    context = PruneContext(model=model, tokenizer=None, adapter=adapter, device=torch.device("meta"),
                           ignore=tuple(request.ignore), progress=False, extras={"model_path": str(label)})
    try:
        found.method.check_model(context)
    except ValueError as error:
        found.problems.append(Problem(MODEL_CONFIG, error))


def _resolve_model(request: RunRequest, method: PruningMethod | None = None) -> tuple[Path, dict]:
    """Every output checked against every input the run reads, the model resolved (fetched if needed), the
    outputs checked once more against its directory, and its files checked (the tokenizer's last, by survey)."""
    _check_outputs(request, request.inputs(method))
    path = model_checks.local_model(request.model)
    _check_outputs(request, read_paths(models=[path]))
    return path, model_checks.model_files(path, tokenizer=False, trust_remote_code=request.trust_remote_code)


def _check_outputs(request: RunRequest, inputs: list[Path]) -> None:
    """The output file or directory, and the log file, against `inputs` and the rest of the output rule."""
    if request.output_file is not None:
        outputs.output_file(request.output_file, overwrite=request.overwrite, inputs=inputs)
    if request.output_dir is not None:
        outputs.output_directory(request.output_dir, overwrite=request.overwrite, inputs=inputs)
    if request.log_file is not None:
        outputs.appended_file(request.log_file, inputs=inputs, replaced=[request.output_dir])


def _memory_plan(request: RunRequest, found: Preflight):
    from .core.streaming import plan_memory

    calibration = request.calibration or Calibration()
    return plan_memory(found.path, found.method, max_memory=request.max_memory, stream=request.stream,
                       dtype=request.dtype or DEFAULT_DTYPE,
                       nsamples=calibration.nsamples if found.method.needs_calibration else 0,
                       seqlen=calibration.seqlen, batch_size=calibration.batch_size,
                       evaluate=request.evaluation is not None,
                       recovery_steps=found.recovery.steps if found.recovery else 0,
                       save_format=request.save_format, model_config=found.config)


def _memory_size(request: RunRequest, found: Preflight) -> None:
    """Without the model's files: `max_memory` must at least read as a size."""
    if request.max_memory is None:
        return
    from .core.streaming import MemoryCapError, parse_memory_size

    try:
        parse_memory_size(request.max_memory)
    except MemoryCapError as error:
        found.problems.append(Problem("max_memory", error))


# ============================================================================== the workflow's config

DATA_FILE_SUFFIXES = (".txt", ".jsonl", ".gz")  # calibration/evaluation text given as a file (path from the repo)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")  # Hugging Face's own switches, set = offline
HUB_HOST = "huggingface.co"


class WorkflowConfig:
    """A loaded workflow config (schema defaults filled) and the repository its relative paths start from."""

    def __init__(self, cfg: dict, repo: str | os.PathLike):
        self.cfg, self.repo = cfg, Path(repo)

    def path(self, text: str) -> Path:
        """Paths in the config are relative to the repository root, whatever the working directory."""
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.repo / path).resolve()

    @staticmethod
    def is_gguf_spec(spec: str) -> bool:
        """A local GGUF file given as model spec (the zoo dequantizes it; checked by zoo.check_spec)."""
        return spec.lower().endswith(".gguf") and not spec.startswith("pypi:")

    def is_path_spec(self, spec: str) -> bool:
        return spec.startswith((".", os.sep, "~")) or (self.repo / spec).is_dir() or self.is_gguf_spec(spec)

    def data_argument(self, source: str) -> str:
        """A calibration/evaluation source as jobs get it: files (by suffix) made absolute, names unchanged."""
        return str(self.path(source)) if Path(source).suffix in DATA_FILE_SUFFIXES else source

    def model_specs(self) -> dict[str, str]:
        """Each config model's zoo spec: an entry is the spec itself, or a mapping with `spec` (and a `note`)."""
        return {name: entry if isinstance(entry, str) else entry["spec"] for name, entry in self.cfg["models"].items()}

    def data_dir(self) -> str | None:
        return str(self.path(self.cfg["data_dir"])) if self.cfg["data_dir"] else None

    def skip_offline_hub_tasks(self) -> tuple[dict[str, int], str | None]:
        """With `offline_hub_tasks: skip` and the run offline (`hub_unreachable`), take the zero-shot tasks without
        a local copy out of the config (tasks and their shots), so that no job is made for them; returns them,
        each with its shots, and why (the tables show them as online only). Else nothing changes: ({}, None)."""
        z = self.cfg["zeroshot"]
        hub_tasks = online_only_tasks(z["tasks"], self.data_dir()) if z["offline_hub_tasks"] == "skip" else []
        reason = hub_unreachable() if hub_tasks else None
        if not reason:
            return {}, None
        shots = task_fewshot(z["tasks"], z["num_fewshot"])
        z["tasks"] = [task for task in z["tasks"] if task not in hub_tasks]
        if isinstance(z["num_fewshot"], dict):
            z["num_fewshot"] = {task: count for task, count in z["num_fewshot"].items() if task not in hub_tasks}
        return {task: shots[task] for task in hub_tasks}, reason

    def protocol(self) -> tuple[Calibration, Evaluation]:
        """The protocol's calibration and evaluation as jobs get them (data files made absolute)."""
        protocol = self.cfg["protocols"][self.cfg["protocol"]]
        calibration = Calibration.from_config(protocol["calibration"])
        evaluation = Evaluation.from_config(protocol["evaluation"])
        return (replace(calibration, source=self.data_argument(calibration.source)),
                replace(evaluation, dataset=self.data_argument(evaluation.dataset)))

    def recovery(self, entry: dict) -> dict:
        """A method entry's `recovery` settings as its job passes them (a data file made absolute)."""
        recovery = dict(entry.get("recovery", {}))
        if "data" in recovery:
            recovery["data"] = self.data_argument(recovery["data"])
        return recovery

    def model_dir(self, name: str, spec: str) -> Path | None:
        """A model's local directory where one is there offline (it holds a config.json): the local directory,
        the zoo's or the hub's cache, or the copy fetched into resources/; None when there is none yet (the
        checks that need its files are left to its jobs)."""
        from .core import zoo

        candidates = []
        cached_dir = zoo.cached_model_dir(str(self.path(spec)) if self.is_gguf_spec(spec) else spec)
        if cached_dir is not None:
            candidates.append(cached_dir)
        elif self.is_path_spec(spec):
            candidates.append(self.path(spec))
        else:
            from huggingface_hub import try_to_load_from_cache

            try:
                cached = try_to_load_from_cache(spec, "config.json")
            except ValueError:  # not a repo id: the spec check names it
                cached = None
            if isinstance(cached, str):
                candidates.append(Path(cached).parent)
        candidates.append(Path("resources", "models", name))
        return next((folder for folder in candidates if (folder / "config.json").is_file()), None)

    def prune_arguments(self, row: dict) -> list[str]:
        """The flags of one grid row's prune job: --method, its ratio, options, recovery, save format, memory cap."""
        entry = row["entry"]
        args = ["--method", entry["method"]]
        if row["kind"] in ("sparsity", "nm"):
            args += [f"--{row['kind']}", row["value"]]
        elif row["kind"]:
            args += ["--option", f"{row['kind']}={row['value']}"]
        for key, value in entry.get("options", {}).items():
            args += ["--option", f"{key}={json.dumps(value)}"]
        for key, value in self.recovery(entry).items():
            args += [f"--recover-{key.replace('_', '-')}", value]
        save_format = entry.get("save_format", self.cfg["save_format"])
        if save_format != DENSE:  # the default: rows saved dense keep the command (and results) they had
            args += ["--save-format", save_format]
        if self.cfg["max_memory"] is not None:  # over it the job streams its layers from disk (core/streaming.py)
            args += ["--max-memory", self.cfg["max_memory"]]
        return args

    def runtime_arguments(self, device: bool = True) -> list[str]:
        """--device, --dtype (and the remote-code opt-in) of the jobs that load models (`device`), --data-dir."""
        args = ["--device", self.cfg["device"], "--dtype", self.cfg["dtype"]] if device else []
        if device and self.cfg.get("trust_remote_code"):
            args.append("--trust-remote-code")
        return args + (["--data-dir", self.data_dir()] if self.data_dir() else [])

    def zeroshot_arguments(self, task: str) -> list[str]:
        """A zero-shot job's settings; shots per task (zeroshot.num_fewshot, a number or a map)."""
        z = self.cfg["zeroshot"]
        shots = task_fewshot(z["tasks"], z["num_fewshot"])[task]
        return ["--num-fewshot", shots, "--batch-size", z["batch_size"],
                *(["--limit", z["limit"]] if z["limit"] is not None else [])]

    def speed_arguments(self) -> list[str]:
        s = self.cfg["speed"]
        return ["--prompt-tokens", s["prompt_tokens"], "--new-tokens", s["new_tokens"], "--repeats", s["repeats"],
                "--device", self.cfg["device"], "--dtype", self.cfg["dtype"]]


def workflow_schema(schema: dict) -> dict:
    """The workflow config schema with the library's part filled in: the method names and per-method rules
    (methods.catalog.config_schema), the working dtypes and the GGUF output types, so each list stays in the
    one module that declares it."""
    from .core.dtypes import DTYPE_NAMES
    from .export.outtypes import OUTTYPES
    from .methods.catalog import config_schema

    schema = config_schema(schema)
    schema["properties"]["dtype"]["enum"] = list(DTYPE_NAMES)
    schema["properties"]["gguf"]["properties"]["outtypes"]["items"]["enum"] = list(OUTTYPES)
    return schema

def schema_problems(error: Exception) -> list[str]:
    """The schema violation a validation error carries, each at its leaves (`if/then`/`oneOf` failures) and
    named by its config key as a user writes it (config.methods.wanda.ratios.sparsity[0])."""
    import jsonschema

    cause = error if isinstance(error, jsonschema.ValidationError) else error.__context__
    if not isinstance(cause, jsonschema.ValidationError):
        return [str(error)]
    leaves = [cause]
    while any(e.context for e in leaves):
        leaves = [c for e in leaves for c in (e.context or [e])]
    return sorted({"config" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                                      for part in leaf.absolute_path) + f": {leaf.message}" for leaf in leaves})

def workflow_config_problems(cfg: dict, repo: str | os.PathLike, *, jobs_run_here: bool = True,
                             jobs_have_own_env: bool = False) -> list[str]:
    """Every problem of a workflow config whose schema holds (defaults filled), each naming its config key:
    first the cross references a schema cannot express; where those hold, what a job would refuse: the files of
    each model that is local already (as a prune checks them before loading), the pre-flight of every grid row,
    the calibration documents against each local model's tokenizer, and the optional parts the config needs
    (llama-cpp-python unless `jobs_have_own_env`, CUDA when `jobs_run_here`, the network). torch is imported
    only where a model config, a zero-shot task or a cuda device asks for it."""
    config = WorkflowConfig(cfg, repo)
    errors = _cross_reference_errors(config)
    if errors:
        return errors
    specs = config.model_specs()
    model_dirs = {name: config.model_dir(name, spec) for name, spec in specs.items()}
    file_errors, model_configs = _model_files(model_dirs)
    sound_dirs = {name: folder for name, folder in model_dirs.items() if model_configs[name]}
    errors = [*_spec_errors(config, specs), *file_errors, *_row_errors(config, model_configs),
              *_calibration_errors(config, sound_dirs, model_configs),
              *_speed_length_errors(cfg, model_configs),
              *_remote_code_errors(cfg, model_configs),
              *_task_errors(cfg["zeroshot"]["tasks"], config.data_dir(), cfg["zeroshot"]["offline_hub_tasks"]),
              *([] if jobs_have_own_env else _llama_cpp_errors(cfg)),
              *(_device_errors(cfg["device"]) if jobs_run_here else [])]
    return list(dict.fromkeys(errors))


def _cross_reference_errors(config: WorkflowConfig) -> list[str]:
    """Checks a schema cannot express: cross references, token round trips, existing paths, shots per task."""
    from .methods.catalog import is_composite

    cfg, errors = config.cfg, []
    models = cfg["models"]
    for name, spec in config.model_specs().items():
        if (config.is_path_spec(spec) and not config.is_gguf_spec(spec)
                and not (config.path(spec) / "config.json").is_file()):
            errors.append(f"config.models.{name}: {config.path(spec)} is not a Hugging Face model directory "
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
        listed = [value for values in ratios.values() for value in values]
        if isinstance(entry.get("ppl_only"), list):
            errors += [f"config.methods.{name}.ppl_only[{index}]: {value!r} is not one of the entry's ratios "
                       f"({', '.join(map(str, listed))})"
                       for index, value in enumerate(entry["ppl_only"]) if value not in listed]
        if not ratios and is_composite(entry["method"]) and not entry["options"] and not _builds(entry["method"]):
            errors.append(f"config.methods.{name}: {entry['method']} without ratios needs its ratios in options")
    if cfg["data_dir"] and not config.path(cfg["data_dir"]).is_dir():
        errors.append(f"config.data_dir: {config.path(cfg['data_dir'])} is not a directory")
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
            timed = speed["models"] or list(models)
            unconverted = [model for model in timed if model not in cfg["gguf"]["models"]]
            if unconverted:
                errors.append(f"config.speed.gguf_outtype: the rows of {', '.join(unconverted)} are timed in "
                              "llama.cpp but not converted to GGUF (add them to gguf.models)")
    try:
        task_fewshot(cfg["zeroshot"]["tasks"], cfg["zeroshot"]["num_fewshot"])
    except GridError as exc:
        errors.append(f"config.zeroshot.num_fewshot: {exc}")
    return errors


def _builds(method: str) -> bool:
    """Whether `method` runs with its defaults alone (all: PersLM's default stages)."""
    try:
        build_method(method)
    except (ValueError, TypeError):
        return False
    return True


def _spec_errors(config: WorkflowConfig, specs: dict) -> list[str]:
    """Embedded names and hub ids the zoo cannot resolve (directories were checked before)."""
    from .core import zoo

    errors = []
    for name, spec in specs.items():
        if not config.is_path_spec(spec) or config.is_gguf_spec(spec):
            try:
                zoo.check_spec(str(config.path(spec)) if config.is_gguf_spec(spec) else spec)
            except ValueError as exc:
                errors.append(f"config.models.{name}: {exc}")
    return errors


def _model_files(model_dirs: dict) -> tuple[list[str], dict]:
    """Each local model's files as a prune checks them before loading (config.json, safetensors headers and
    their shapes): the problems, each naming the model's config key, and each model's config (None where its
    directory is not there yet or its files are refused, so the checks that need them are skipped). Code of
    the model's own is named by `_remote_code_errors`, with the workflow's opt-in; none of it runs here."""
    errors, configs = [], {}
    for name, folder in model_dirs.items():
        configs[name] = None
        if folder is None:
            continue
        try:
            configs[name] = model_checks.model_files(folder, tokenizer=False, trust_remote_code=True)
        except ValueError as exc:  # ModelLoadError
            errors.append(f"config.models.{name}: {' '.join(str(exc).split())}")
    return errors, configs


def _calibration_errors(config: WorkflowConfig, model_dirs: dict, model_configs: dict) -> list[str]:
    """The protocol's calibration documents, read as a prune job reads them, and counted with the tokenizer of
    each local model a grid row calibrates: each must give more tokens than one window (the job's own
    refusal, made here before any job). Left to the jobs where the documents come from the hub or a model
    (or its tokenizer) is not local yet."""
    cfg = config.cfg
    calibration, _ = config.protocol()
    key = f"config.protocols.{cfg['protocol']}.calibration.source"
    models = [name for name in _calibrating_models(cfg) if model_dirs.get(name)]
    if not models:
        return []
    try:
        if not calibration_is_local(calibration.source, config.data_dir()):
            return []
        check_calibration_source(calibration.source)
    except DataError:  # a bad data directory or source: the rows' pre-flight names it
        return []
    try:
        documents = calibration_documents(calibration.source, config.data_dir())
    except DataError as exc:  # e.g. a data directory without the source's files
        return [f"{key}: {' '.join(str(exc).split())}"]
    errors = []
    for name in models:
        tokenizer = _local_tokenizer(model_dirs[name], model_configs[name])
        if tokenizer is None:
            continue
        try:
            check_calibration_length(tokenizer, documents, calibration.source, calibration.seqlen)
        except DataError as exc:
            errors.append(f"{key}: {exc} (model {name})")
    return errors


def _calibrating_models(cfg: dict) -> list[str]:
    """The models with a grid row whose method calibrates (a row that cannot be built is refused elsewhere)."""
    models = []
    for entry in cfg["methods"].values():
        ratios = [{kind: value} for kind, values in entry.get("ratios", {}).items() for value in values] or [{}]
        for ratio in ratios:
            try:
                method = build_method(entry["method"], **{**entry["options"], **ratio})
            except (ValueError, TypeError):
                continue
            if method.needs_calibration:
                models += entry.get("models", list(cfg["models"]))
                break
    return list(dict.fromkeys(models))


def _local_tokenizer(folder: Path, config: dict):
    """The tokenizer of a local model directory; None where its files would not make one (the job refuses
    that, naming them) or it is code of the model's own (never run here; `_remote_code_errors` names it)."""
    try:
        model_checks.tokenizer_files(folder, config)
    except ValueError:
        return None
    if model_checks.remote_code(folder, config) is not None:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError):  # what transformers raises for files it cannot read
        return None


def _row_errors(config: WorkflowConfig, model_configs: dict) -> list[str]:
    """The pre-flight of every grid row (each model's dense row and each method entry's rows on its models),
    its problems named by config key: a row's ratio (`config.methods.E.ratios.K[I]`), or the entry, its
    options or recovery, or the protocol's calibration and evaluation keys."""
    cfg = config.cfg
    protocol_name = cfg["protocol"]
    calibration, evaluation = config.protocol()
    shared = dict(evaluation=evaluation, max_memory=cfg["max_memory"], device=None, dtype=None,
                  data_dir=config.data_dir())
    protocol_names = {f"{part}.{key}": f"config.protocols.{protocol_name}.{part}.{key}"
                      for part in ("calibration", "evaluation") for key in ("source", "dataset", "nsamples", "seqlen",
                                                                             "batch_size", "max_windows")}
    protocol_names.update({"max_memory": "config.max_memory", "data_dir": "config.data_dir"})
    errors = []
    for model, spec in config.model_specs().items():  # the dense rows: evaluation only
        request = RunRequest(spec, calibration=calibration, names={**protocol_names, "model": model}, **shared)
        errors += [_render(problem, protocol_names, model) for problem in survey(request, model_configs[model]).problems]
    for name, entry in cfg["methods"].items():
        rows = [(kind, index, value) for kind, values in entry.get("ratios", {}).items()
                for index, value in enumerate(values)] or [(None, None, None)]
        for kind, index, value in rows:
            ratio = {kind: value} if kind else {}
            row = f"config.methods.{name}" + (f".ratios.{kind}[{index}]" if kind else "")
            names = {**protocol_names, "method": _build_key(entry, ratio, row, name), "save_format": row,
                     MODEL_CONFIG: row, "options": f"config.methods.{name}.options",
                     "recovery": f"config.methods.{name}.recovery",
                     "recovery.seqlen": f"config.methods.{name}.recovery.seqlen"}
            for model in entry.get("models", list(model_configs)):
                request = RunRequest(config.model_specs()[model], entry["method"], {**entry["options"], **ratio},
                                     calibration=calibration, save_format=entry.get("save_format", cfg["save_format"]),
                                     recovery=config.recovery(entry), names={**names, "model": model}, **shared)
                errors += [_render(problem, names, model) for problem in survey(request, model_configs[model]).problems]
    return errors


def _remote_code_errors(cfg: dict, model_configs: dict) -> list[str]:
    """Models with code of their own (config.json's auto_map): refused without `trust_remote_code`, and with it
    in the stages that load no remote code (GGUF export, speed)."""
    stages = {"gguf": bool(cfg["gguf"]["outtypes"]), "speed": cfg["speed"]["enabled"]}
    trusted = cfg.get("trust_remote_code", False)
    errors = []
    for model, config in model_configs.items():
        if config is None or model_checks.remote_code(None, config) is None:
            continue
        if not trusted:
            errors.append(model_checks.remote_code_problem(f"config.models.{model}", None, config, False,
                                                           opt_in="trust_remote_code: true"))
            continue
        for stage, enabled in stages.items():
            if enabled and model in (cfg[stage]["models"] or model_configs):
                errors.append(f"config.{stage}.models: {model} holds code of its own (auto_map), which the {stage} "
                              f"jobs do not load; leave it out of {stage}.models")
    return errors


def _build_key(entry: dict, ratio: dict, row: str, name: str) -> str:
    """Where a method that cannot be built is refused: its options where the ratio alone builds, else the row."""
    if entry["options"] and ratio:
        try:
            build_method(entry["method"], **ratio)
            return f"config.methods.{name}.options"
        except (ValueError, TypeError):
            pass
    return row


def _render(problem: Problem, names: dict, model: str) -> str:
    """A problem as the config check prints it: a message that names its config key as it is (lengths), else
    the key first; a refusal from the model's config.json ends with the model's name."""
    message = problem.message
    if message.startswith("config."):
        return message
    line = f"{names.get(problem.key, 'config')}: {message}"
    return f"{line} (model {model})" if problem.key == MODEL_CONFIG else line


def _speed_length_errors(cfg: dict, model_configs: dict) -> list[str]:
    """Prompt + new tokens of the speed measurement against each model's positions."""
    speed = cfg["speed"]
    if not speed["enabled"]:
        return []
    prompt, new = speed["prompt_tokens"], speed["new_tokens"]
    label = f"config.speed.prompt_tokens {prompt} + new_tokens {new} ="
    return [problem for model, config in model_configs.items() if config
            for problem in model_checks.length_problems(model, config, {label: prompt + new})]


def _offline_variable() -> str | None:
    """The variable that puts this run offline (truthy as huggingface_hub reads it), or None."""
    return next((name for name in OFFLINE_VARIABLES
                 if os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}), None)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why this run is offline: an offline variable, or the Hugging Face hub refusing a connection within
    `timeout` seconds; None when the hub answers."""
    if variable := _offline_variable():
        return f"{variable} is set"
    import socket

    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
    except OSError as exc:
        return f"{HUB_HOST} cannot be reached ({exc.strerror or type(exc).__name__})"
    return None


def online_only_tasks(tasks: list, data_dir: str | None) -> list[str]:
    """The zero-shot tasks without a local copy in the data directory (their documents come from the hub)."""
    from .evaluation.zeroshot import resolve_task

    return [task for task in tasks if resolve_task(task, "auto", data_dir).source == "hub"]


def _task_errors(tasks: list, data_dir: str | None, offline_hub_tasks: str = "refuse") -> list[str]:
    """Zero-shot task names: a local copy in the data directory, else a task in lm-eval's list, which needs
    the hub: refused when offline unless the config skips such tasks (`offline_hub_tasks: skip`)."""
    if not tasks:
        return []
    from .evaluation.zeroshot import resolve_task

    errors, offline = [], _offline_variable() if offline_hub_tasks == "refuse" else None
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
    need llama-cpp-python in the Python that runs the jobs."""
    import sys

    asked = cfg["gguf"]["outtypes"] or (cfg["speed"]["enabled"] and cfg["speed"]["gguf_outtype"])
    if not asked or importlib.util.find_spec("llama_cpp") is not None:
        return []
    from .export.outtypes import LLAMACPP_OUTTYPES

    missing = f"llama-cpp-python: {sys.executable} cannot import it (bash scripts/setup.sh installs it)"
    errors = []
    for index, outtype in enumerate(cfg["gguf"]["outtypes"]):
        uses = ("made by llama.cpp's quantizer and evaluated in llama.cpp" if outtype in LLAMACPP_OUTTYPES
                else "evaluated in llama.cpp, as every GGUF file of the grid (gguf_eval)")
        errors.append(f"config.gguf.outtypes[{index}]: {outtype!r} is {uses}, which needs {missing}")
    if cfg["speed"]["enabled"] and cfg["speed"]["gguf_outtype"]:
        errors.append(f"config.speed.gguf_outtype: timing {cfg['speed']['gguf_outtype']!r} in llama.cpp needs {missing}")
    return errors


def _device_errors(device: str) -> list[str]:
    """`device: cuda[:N]` needs CUDA where the jobs run. Imports torch only for a cuda device."""
    if not device.startswith("cuda"):
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


def duplicate_keys(path: str | os.PathLike) -> list[str]:
    """Keys written twice in one mapping of a YAML config file (YAML keeps only the last one, silently)."""
    import yaml

    path = Path(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return []  # whoever reads the file reports a file it cannot read
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

