"""Zero-shot (and few-shot) accuracy with lm-evaluation-harness, run on our own model objects.

The model is loaded by `pruning.load_model` (so pruned and heterogeneous models work) and handed to lm-eval as
`ScoringLM`, lm-eval's `HFLM` that computes a document's shared context once and the logits of the
continuation positions only (same log-likelihoods, a fraction of the work; scoring_lm.py) and counts its
throughput; prompts, request building and aggregation are
lm-eval's. Each document's outcome is kept in the result (`per_document`, format in per_item.py), so that
the tables give every accuracy its standard error and compare pruned and dense models document by document.
Two kinds of task:

- hub: lm-eval's own task definitions (arc_easy, boolq, mmlu, gsm8k, ...), documents from the Hugging Face hub;
- local: `<task>_local` definitions shipped in `pruning/evaluation/tasks/`, the same prompts, choices and
  metrics as lm-eval's `<task>`, documents read from `<data dir>/zeroshot/` (the layout of shared/data).

`resolve_task` maps a requested name to one of them (see `TASK_SOURCES`).
"""
from __future__ import annotations

import difflib
import functools
import hashlib
import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from ..core import model_checks
from ..core.arguments import count_problem, positive
from ..core.data import DataError, data_dir
from ..core.inputs import read_paths
from ..core.modeling import load_model, parameter_counts, resolve_device, torch_dtype
from .per_item import DOCUMENTS, document_record
from .provenance import Measurement
from ..core.dtypes import DEFAULT_DTYPE

LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_SUFFIX = "_local"
TASK_SOURCES = {
    "auto": "the local copy when a data directory is set and the task has one, else lm-eval's hub task",
    "local": "the local copy (error if the task has none or no data directory is set)",
    "hub": "lm-eval's own task, documents from the Hugging Face hub",
}
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
CONFIG_KEYS = ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "target_delimiter",
               "fewshot_delimiter", "description")


class TaskError(ValueError):
    """A task that cannot be resolved or read; the message says what exists."""


@dataclass(frozen=True)
class TaskChoice:
    requested: str
    lm_eval_name: str
    source: str  # "local" or "hub"
    data_dir: Path | None = None


def local_tasks() -> dict[str, str]:
    """Standard lm-eval name -> name of our offline definition, e.g. arc_easy -> arc_easy_local."""
    names = sorted(path.stem for path in LOCAL_TASKS_DIR.glob(f"*{LOCAL_SUFFIX}.yaml"))
    return {name[: -len(LOCAL_SUFFIX)]: name for name in names}


@functools.lru_cache(maxsize=1)
def hub_task_manager():
    """lm-eval's index of its shipped tasks (built once per process: it reads ~15k YAML files)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def local_task_manager(root: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=False, metadata={"data_dir": str(root)})


def resolve_task(task: str, source: str = "auto", data_dir_path: str | None = None) -> TaskChoice:
    """Which definition `task` runs with; raises TaskError before any model or document is loaded."""
    if source not in TASK_SOURCES:
        raise TaskError(f"task source must be one of {', '.join(TASK_SOURCES)}, got {source!r}")
    local = local_tasks()
    explicit_local = task.endswith(LOCAL_SUFFIX)
    standard = task[: -len(LOCAL_SUFFIX)] if explicit_local else task
    if explicit_local and standard not in local:
        raise TaskError(f"unknown local task {task!r}; local tasks: {', '.join(local.values())}")
    if explicit_local and source == "hub":
        raise TaskError(f"{task!r} is a local task; --source hub asks for lm-eval's {standard!r}")
    root = data_dir(data_dir_path)
    wants_local = explicit_local or source == "local" or (source == "auto" and root is not None and standard in local)
    if wants_local:
        if standard not in local:
            raise TaskError(f"no local copy of {task!r}; local copies exist for: {', '.join(local)}")
        if root is None:
            raise TaskError(f"the local task {local[standard]!r} needs a data directory (--data-dir or $PRUNING_DATA_DIR)")
        return TaskChoice(task, local[standard], "local", root)
    known = hub_task_manager().all_tasks
    if task not in known:
        close = difflib.get_close_matches(task, known, n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise TaskError(f"unknown task {task!r}: not an lm-eval task or group{hint} "
                        f"(local copies: {', '.join(local)})")
    return TaskChoice(task, task, "hub", root)


def task_documents(choice: TaskChoice) -> Path | None:
    """Where a local task's documents are read from: its definition's `dataset_kwargs.local_file` under the data
    directory (what tasks/utils.py's loaders open); None for a hub task. Read from the YAML, before any model."""
    if choice.source != "local":
        return None
    import yaml

    class Loader(yaml.SafeLoader):  # the definitions name Python loaders with lm-eval's !function tag
        pass

    Loader.add_constructor("!function", lambda loader, node: None)
    definition = yaml.load((LOCAL_TASKS_DIR / f"{choice.lm_eval_name}.yaml").read_text(encoding="utf-8"), Loader)
    return choice.data_dir / definition["dataset_kwargs"]["local_file"]


def load_task(choice: TaskChoice):
    """(task manager, the lm-eval Task or Group object, its leaf tasks by name), documents read."""
    manager = local_task_manager(choice.data_dir) if choice.source == "local" else hub_task_manager()
    try:
        loaded = manager.load([choice.lm_eval_name])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub/dataset failures become one clear message
        where = ("from the Hugging Face hub; offline, use a local copy (--data-dir, tasks: "
                 f"{', '.join(local_tasks())})") if choice.source == "hub" else f"from {choice.data_dir}"
        raise DataError(f"could not load the documents of task {choice.lm_eval_name!r} {where}: "
                        f"{type(exc).__name__}: {exc}") from None
    name = choice.lm_eval_name
    top = loaded["groups"][name] if name in loaded["groups"] else loaded["tasks"][name]
    return manager, top, loaded["tasks"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _eval_split(task) -> str | None:
    config = task.config
    return config.test_split if task.has_test_docs() else config.validation_split


def _fewshot_split(task) -> str | None:
    """The split lm-eval draws in-context examples from (it skips the document being scored)."""
    config = task.config
    if task.fewshot_cfg.split is not None:
        return task.fewshot_cfg.split
    if task.has_training_docs():
        return config.training_split
    return config.validation_split if task.has_validation_docs() else config.test_split


def source_record(choice: TaskChoice, tasks: dict) -> dict:
    """Where the documents came from: local files with sha256, or the hub dataset of each leaf task."""
    record = {"kind": choice.source}
    if choice.source == "local":
        task = tasks[choice.lm_eval_name]
        path = task_documents(choice)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        record.update(
            mirrors=task.config.metadata.get("mirrors"),
            path=str(path),
            files=[{"path": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files],
            split=_eval_split(task),
            note=task.config.metadata.get("note"),
        )
    else:
        record["datasets"] = {name: {"dataset_path": task.config.dataset_path, "dataset_name": task.config.dataset_name,
                                     "split": _eval_split(task)} for name, task in sorted(tasks.items())}
    return record


def _metrics(entry: dict) -> dict:
    """lm-eval's "acc,none"/"acc_stderr,none" keys as {"acc": {"value", "stderr"}} ("metric,filter" kept
    for filters other than none)."""
    metrics = {}
    for key, value in entry.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filter_name = key.split(",", 1)
        stderr = entry.get(f"{metric}_stderr,{filter_name}")
        name = metric if filter_name == "none" else key
        metrics[name] = {"value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return metrics


@contextmanager
def _request_bars_silenced():
    """lm-eval 0.4 builds requests under a tqdm bar that takes no disable argument: quiet runs swap in a
    disabled one for the evaluation (lm-eval is pinned, so the module global is known)."""
    from lm_eval.api import task as task_module

    original = task_module.tqdm
    task_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = original


def _check_settings(limit, num_fewshot, batch_size) -> None:
    positive({"limit": limit})
    positive({"num_fewshot": num_fewshot}, minimum=0)
    if batch_size != "auto" and (problem := count_problem("batch_size", batch_size)):
        raise ValueError(f"{problem}; or 'auto'")


def evaluation_lm(net, tokenizer, batch_size: int | str, device: str, *, scoring: str | None = None):
    """The lm-eval model over a loaded model: `ScoringLM` (pruning/evaluation/scoring_lm.py); `scoring` one of
    its SCORING ("lm-eval": lm-eval's own, the reference to compare with), None for the fastest exact one."""
    from .scoring_lm import ScoringLM

    return ScoringLM(pretrained=net, tokenizer=tokenizer, backend="causal", batch_size=batch_size, device=device,
                     scoring=scoring)


def run_lm_eval(lm, manager, task_object, *, num_fewshot: int = 0, limit: int | None = None,
                quiet: bool = False) -> dict:
    """lm-eval's `simple_evaluate` of one task with the fixed seeds, bars off when `quiet`; with its logged
    samples (`log_samples`), from which the per-document record is kept."""
    import lm_eval

    if quiet:  # lm-eval's request bars take disable=disable_tqdm, which the evaluator never sets
        for request_type in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
            setattr(lm, request_type, functools.partial(getattr(lm, request_type), disable_tqdm=True))
    with _request_bars_silenced() if quiet else nullcontext():
        return lm_eval.simple_evaluate(model=lm, tasks=[task_object], task_manager=manager, num_fewshot=num_fewshot,
                                       limit=limit, log_samples=True, **SEEDS)


def zeroshot(model: str, task: str, *, limit: int | None = None, num_fewshot: int = 0, batch_size: int | str = 32,
             device: str = "auto", dtype: str = DEFAULT_DTYPE, data_dir_path: str | None = None, source: str = "auto",
             output: str | None = None, quiet: bool = False, overwrite: bool = False,
             trust_remote_code: bool = False) -> dict:
    """Evaluate `model` (a model directory or zoo spec) on one lm-eval task; written atomically to `output`
    (replacing only an earlier result of ours unless `overwrite`); `trust_remote_code` as for `pruning.prune`.

    Every argument, the output, the task name and its documents are checked before the model is loaded.
    """
    measurement = Measurement(model)
    _check_settings(limit, num_fewshot, batch_size)
    compute = resolve_device(device)
    torch_dtype(dtype)
    choice = resolve_task(task, source, data_dir_path)
    if quiet:
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    path, _ = model_checks.model_and_outputs(model, [(output, "output")], overwrite=overwrite,
                                             inputs=read_paths(files=[task_documents(choice)]),
                                             trust_remote_code=trust_remote_code)
    manager, task_object, leaf_tasks = load_task(choice)

    import lm_eval

    net, tokenizer = load_model(measurement.resolve(path), dtype=dtype, device=str(compute),
                                trust_remote_code=trust_remote_code)
    lm = evaluation_lm(net, tokenizer, batch_size, str(compute))
    evaluated = run_lm_eval(lm, manager, task_object, num_fewshot=num_fewshot, limit=limit, quiet=quiet)
    name = choice.lm_eval_name
    results = evaluated["results"]
    samples = evaluated["n-samples"]
    subtasks = {sub: {"metrics": _metrics(results[sub]), "n_docs": samples[sub]["effective"],
                      "n_docs_total": samples[sub]["original"]}
                for sub in sorted(leaf_tasks) if sub != name and sub in results}
    counted = [name] if name in samples else list(subtasks)
    config = evaluated.get("configs", {}).get(name, {})
    record = {
        "task": task,
        "lm_eval_task": name,
        "source": source_record(choice, leaf_tasks),
        "metrics": _metrics(results[name]),
        "higher_is_better": evaluated.get("higher_is_better", {}).get(name),
        "n_docs": sum(samples[t]["effective"] for t in counted),
        "n_docs_total": sum(samples[t]["original"] for t in counted),
        "limit": limit,
        "num_fewshot": num_fewshot,
        "fewshot_split": {sub: _fewshot_split(t) for sub, t in sorted(leaf_tasks.items())} if num_fewshot else None,
        "subtasks": subtasks or None,
        DOCUMENTS: document_record(evaluated["samples"], leaf_tasks),
        "task_config": {key: config[key] for key in CONFIG_KEYS if key in config} or None,
        "task_version": evaluated.get("versions", {}).get(name),
        "parameters": parameter_counts(net),
        "dtype": dtype,
        "device": str(compute),
        "batch_size": batch_size,
        "throughput": lm.throughput(),
        "add_bos_token": lm.add_bos_token,
        "max_length": lm.max_length,
        "seeds": SEEDS,
        "lm_eval_version": lm_eval.__version__,
    }
    return measurement.finish(record, output)
