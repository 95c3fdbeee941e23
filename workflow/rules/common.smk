"""Config checks, the grid (one row per real job) and input/param functions. Of the library only the
torch-free grid contract (`pruning.grid`) is imported, so that building the DAG stays fast; jobs call the
library through `python -m pruning`."""
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

REPO = Path(workflow.basedir).resolve()
sys.path.insert(0, str(REPO))  # the grid contract of this checkout, whichever `pruning` is installed
from pruning.grid import (DENSE_METHOD, DENSE_TOKEN, OPTIONS_ONLY_TOKEN, RATIO_TOKENS, grid_rows, plot_specs,
                          table_specs)

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# Jobs run `python -m pruning` from this checkout: the Python that runs Snakemake comes first on PATH
# (a conda env activated by --sdm conda still goes before it) and the checkout on PYTHONPATH.
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


def _schema_errors(cfg: dict, schema: dict) -> list[str]:
    """Every schema violation, each naming its key; `if/then` failures are reported at the leaf."""
    messages = []
    validator = jsonschema.Draft202012Validator(schema)
    for error in validator.iter_errors(cfg):
        leaves = [error]
        while any(e.context for e in leaves):
            leaves = [c for e in leaves for c in (e.context or [e])]
        for leaf in leaves:
            messages.append(f"{_key(leaf.absolute_path)}: {leaf.message}")
    return sorted(set(messages))


def _resolve_path(text: str) -> Path:
    """Paths in the config are relative to the repository root, whatever the working directory."""
    path = Path(text).expanduser()
    return path if path.is_absolute() else (REPO / path).resolve()


def _is_path_spec(spec: str) -> bool:
    return spec.startswith((".", os.sep, "~")) or (REPO / spec).is_dir()


def _two_decimals(value: float) -> bool:
    return math.isclose(round(value, 2), value, rel_tol=0, abs_tol=1e-12)


def _semantic_errors(cfg: dict) -> list[str]:
    """Checks a schema cannot express: cross references, N < M, token round trips, existing paths."""
    errors = []
    models = cfg["models"]
    for name, entry in models.items():
        spec = entry if isinstance(entry, str) else entry["spec"]
        if _is_path_spec(spec) and not (_resolve_path(spec) / "config.json").is_file():
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
        for index, pattern in enumerate(ratios.get("nm", [])):
            n, m = (int(x) for x in pattern.split(":"))
            if n >= m:
                errors.append(f"config.methods.{name}.ratios.nm[{index}]: {pattern!r} must keep fewer than M "
                              "weights (N < M, N kept out of every M)")
        for kind in ("sparsity", "fraction", "prune_rate"):
            for index, value in enumerate(ratios.get(kind, [])):
                if not _two_decimals(value):
                    errors.append(f"config.methods.{name}.ratios.{kind}[{index}]: {value} has more than two "
                                  f"decimals (its file token {RATIO_TOKENS[kind](value)} would not name it)")
        if not ratios and entry["method"] in ("all", "distill") and not entry.get("options"):
            errors.append(f"config.methods.{name}: {entry['method']} without ratios needs its ratios in options")
    data = cfg.get("data_dir")
    if data and not _resolve_path(data).is_dir():
        errors.append(f"config.data_dir: {_resolve_path(data)} is not a directory")
    speed = cfg.get("speed", {})
    if speed.get("enabled") and speed.get("gguf_outtype") and speed["gguf_outtype"] not in cfg["gguf"]["outtypes"]:
        errors.append(f"config.speed.gguf_outtype: {speed['gguf_outtype']!r} is not listed in gguf.outtypes")
    return errors


def check_config(cfg: dict) -> None:
    """Reject a bad config before any job, with every problem and its key; then fill the defaults."""
    schema = yaml.safe_load(SCHEMA.read_text())
    errors = _schema_errors(cfg, schema)
    if not errors:
        errors = _semantic_errors(cfg)
    if errors:
        raise WorkflowError("invalid workflow config:\n  " + "\n  ".join(errors))
    validate(cfg, schema=str(SCHEMA))


check_config(config)

PROTOCOL = config["protocols"][config["protocol"]]
CALIBRATION, EVALUATION = PROTOCOL["calibration"], PROTOCOL["evaluation"]
DATA_DIR = str(_resolve_path(config["data_dir"])) if config["data_dir"] else None
GPUS = config["gpus_per_job"] if config["gpus_per_job"] is not None else int(config["device"].startswith("cuda"))
MODEL_SPECS = {name: entry if isinstance(entry, str) else entry["spec"] for name, entry in config["models"].items()}
MODEL_NOTES = {name: entry["note"] for name, entry in config["models"].items()
               if isinstance(entry, dict) and entry.get("note")}


GRID = grid_rows(config["models"], config["methods"])
RUNS = {(row["model"], row["method"], row["ratio"]): row for row in GRID}
PRUNED = [row for row in GRID if row["method"] != DENSE_METHOD]
ZEROSHOT_TASKS = config["zeroshot"]["tasks"]
GGUF_OUTTYPES = config["gguf"]["outtypes"]


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
    return _quote(args)


def calibration_arguments() -> str:
    c = CALIBRATION
    source = _resolve_path(c["source"]) if Path(c["source"]).suffix in DATA_FILE_SUFFIXES else c["source"]
    return _quote(["--calib", source,
                   "--nsamples", c["nsamples"], "--seqlen", c["seqlen"], "--seed", c["seed"],
                   "--batch-size", c["batch_size"]])


def evaluation_arguments(batch: bool = True) -> str:
    e = EVALUATION
    dataset = _resolve_path(e["dataset"]) if Path(e["dataset"]).suffix in DATA_FILE_SUFFIXES else e["dataset"]
    args = ["--dataset", dataset, "--split", e["split"], "--seqlen", e["seqlen"]]
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


def zeroshot_arguments() -> str:
    z = config["zeroshot"]
    args = ["--num-fewshot", z["num_fewshot"], "--batch-size", z["batch_size"]]
    if z["limit"] is not None:
        args += ["--limit", z["limit"]]
    return _quote(args)


def speed_inputs(wildcards) -> dict:
    inputs = {"model": model_dir(wildcards)}
    outtype = config["speed"]["gguf_outtype"]
    if outtype:
        inputs["gguf"] = "results/gguf/{model}/{method}/{ratio}/model-{outtype}.gguf".format(outtype=outtype, **wildcards)
    return inputs


def speed_arguments() -> str:
    s = config["speed"]
    return _quote(["--prompt-tokens", s["prompt_tokens"], "--new-tokens", s["new_tokens"], "--repeats", s["repeats"],
                   "--device", config["device"], "--dtype", config["dtype"]])


def run_metric_files(row: dict) -> list[str]:
    """Every metric file the config asks for on one grid row."""
    folder = f"results/metrics/{row['model']}/{row['method']}/{row['ratio']}"
    files = [f"{folder}/ppl.json"]
    if row["method"] != DENSE_METHOD:
        files.append(f"{folder}/prune.json")
    files += [f"{folder}/zeroshot-{task}.json" for task in ZEROSHOT_TASKS]
    files += [f"{folder}/gguf-{outtype}.json" for outtype in GGUF_OUTTYPES]
    if config["speed"]["enabled"]:
        files.append(f"{folder}/speed.json")
    return files


def all_metric_files() -> list[str]:
    return [path for row in GRID for path in run_metric_files(row)]


def table_names() -> list[str]:
    """The tables pruning.tables writes for this grid (pruning.grid decides for both)."""
    return [spec.name for spec in table_specs(GRID, zeroshot=bool(ZEROSHOT_TASKS), gguf=bool(GGUF_OUTTYPES))]


def plot_names() -> list[str]:
    return [spec.name for spec in plot_specs(GRID)]
