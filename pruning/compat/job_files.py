"""Job files of the systems this project is built from, run as their users wrote them: a PruneGPT
`config.json`, a Quark depth-pruning config and a PP-LLMs argument set (JSON or YAML), each recognised by
its keys (or named), checked whole before any model is loaded, and translated to one `api.prune` call:

- PruneGPT -> method `depth`, criterion angular (`angular_distance`) or cosine (`cosine_similarity`), tokens
  last/all (`pruning_token`), one layer per block, `skip_blocks` kept; `quantize` + `bnb_config`: the scores
  come from a bitsandbytes 4-bit copy and the layers they pick are removed from the full-precision model,
  which is what is saved.
- Quark -> method `depth`, criterion perplexity (the window of `delete_layer_num` consecutive layers whose
  removal costs the least calibration perplexity); `model_decoder_layers` / `layer_norm_field` name the
  modules of a family without an adapter (pruning/core/adapters.py `paths_adapter`).
- PP-LLMs -> method `two_stage`: `ffn_remove_layers` / `mha_remove_layers` as the counts, else `prune_rate`
  with `mha_ffn_ratio` (PP-LLMs' default 2.0 when not given). Its command line (`ppllms.py --model_name ...`)
  is read by `pruning/commands/ppllms.py` into the same mapping and translated here.

Calibration reads the evaluation split only where the document does and its user asks for it: a PruneGPT
dataset with split `test` (its README's example) chooses the layers on WikiText-2 test, and so does a Quark
job run with `selection_split="test"` (`run --selection-split test`; Quark's tutorial searches on test, the
default here is validation). Such a run logs a warning and prune.json records `selection_split: test`.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import yaml

from ..core.data import SELECTION_ON_TEST
from ..core.model_checks import model_config
from ..core.protocols import Calibration, Evaluation
from ..methods import PruningMethod, build_method
from ..methods.depth import BNB_PACKAGE, QuantizedScoring
from ..core.dtypes import DEFAULT_DTYPE

log = logging.getLogger(__name__)

FORMATS = ("prunegpt", "quark", "ppllms")
JOB_SUFFIXES = (".json", ".yaml", ".yml")

# every key each system reads, with the JSON types it takes (None: the system's default)
_NUMBER = (int, float)
KEYS = {
    "prunegpt": {"model_name": str, "quantize": bool, "bnb_config": dict, "dataset": dict,
                 "num_blocks_to_prune": int, "skip_blocks": list, "pruning_method": str, "pruning_token": str,
                 "save_directory": str, "log_file": str, "calculate_ppl": bool},
    "quark": {"name": str, "delete_layer_num": int, "delete_layers_index": list, "save_gpu_memory": bool,
              "layer_num_field": str, "model_decoder_layers": str, "layer_norm_field": str},
    "ppllms": {"model_name": str, "num_blocks": int, "prune_rate": _NUMBER, "seed": int, "nsamples": int,
               "dataset": str, "eval_ppl": bool, "mha_remove_layers": int, "ffn_remove_layers": int,
               "mha_ffn_ratio": _NUMBER},
}
_SHARED = {"model_name", "dataset", "seed", "nsamples"}  # keys that do not tell the formats apart
PRUNEGPT_DATASET_KEYS = {"name": str, "subset": str, "split": str, "batch_size": int}
PRUNEGPT_CRITERIA = {"angular_distance": "angular", "cosine_similarity": "cosine"}
PRUNEGPT_NSAMPLES = 100  # PruneGPT scores on the first 100 rows of its dataset
QUARK_ALGORITHM = "layer_importance_depth_pruning"
QUARK_CALIBRATION = "wikitext2-validation"  # Quark's tutorial searches on WikiText-2 test: only when asked for
SELECTION_SPLITS = ("validation", "test")  # where a Quark search may run (run --selection-split)
CALIBRATION, EVALUATION = Calibration(), Evaluation()  # the defaults (PP-LLMs documents the same calibration)
# PP-LLMs' documented defaults (its README's Parameters), applied to job files and the `ppllms` command alike
PPLLMS_DEFAULTS = {"prune_rate": 0.25, "mha_ffn_ratio": 2.0, "seed": CALIBRATION.seed, "nsamples": CALIBRATION.nsamples,
                   "dataset": CALIBRATION.source, "eval_ppl": True}
# on AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights: output rows in blocks of 32, inputs in its
# quantization blocks of 64
CPU_4BIT_ROWS, CPU_4BIT_COLUMNS = 32, 64


class JobError(ValueError):
    """A job file that cannot be run as written; the message names the file and the key."""


@dataclass
class Job:
    """One job file translated: what `api.prune` is called with, and the settings around it."""

    path: str
    format: str
    method: str
    method_arguments: dict
    model: str | None = None
    output_dir: str | None = None
    calib: str = CALIBRATION.source
    nsamples: int = CALIBRATION.nsamples
    seed: int = CALIBRATION.seed
    batch_size: int = CALIBRATION.batch_size
    evaluate: bool = False
    log_file: str | None = None
    bnb_config: dict | None = None  # PruneGPT's quantize: scores from a bitsandbytes-quantized copy
    decoder_layers: str | None = None  # Quark's module paths
    final_norm: str | None = None
    layer_num_field: str | None = None
    num_layers: int | None = None  # PP-LLMs' num_blocks, checked against the model
    selection_on_test: bool = False  # the document chooses on WikiText-2 test (calib SELECTION_ON_TEST)
    source: dict = field(default_factory=dict)  # the file's own values


# ------------------------------------------------------------------------------------------ reading

class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key written twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise JobError(f"key {key!r} written twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs):
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise JobError(f"key {twice[0]!r} written twice")
    return dict(pairs)


def read_job_file(path: str | os.PathLike) -> dict:
    """The job file's mapping (JSON by .json, YAML by .yaml/.yml), keys written twice refused."""
    path = Path(path)
    if path.suffix.lower() not in JOB_SUFFIXES:
        raise JobError(f"{path}: a job file is .json, .yaml or .yml")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            values = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except JobError as exc:
        raise JobError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise JobError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except yaml.YAMLError as exc:
        raise JobError(f"{path}: invalid YAML ({' '.join(str(getattr(exc, 'problem', None) or exc).split())})") from None
    if not isinstance(values, dict) or not values:
        raise JobError(f"{path}: a job file holds one non-empty mapping of keys")
    return values


def detect_format(values: dict, where: str = "job") -> str:
    """The system whose distinctive keys the file uses; none or several is an error asking for --format."""
    matches = [f for f in FORMATS if set(values) & (set(KEYS[f]) - _SHARED)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise JobError(f"{where}: no PruneGPT, Quark or PP-LLMs key found (keys: {', '.join(map(str, values))}); "
                       f"name the format with --format {{{','.join(FORMATS)}}}")
    raise JobError(f"{where}: keys of {' and '.join(matches)} mixed; name the format with --format")


def _check_types(values: dict, declared: dict, fmt: str, where: str, prefix: str = "") -> dict:
    """The values with None dropped (the system's default); unknown keys and wrong types refused."""
    for key in values:
        if key not in declared:
            raise JobError(f"{where}: unknown {fmt} key '{prefix}{key}'; {fmt} keys: {', '.join(declared)}")
    checked = {}
    for key, value in values.items():
        if value is None:
            continue
        kinds = declared[key] if isinstance(declared[key], tuple) else (declared[key],)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true or false",
                                 list: "a list", dict: "a mapping"}[k] for k in kinds)
            raise JobError(f"{where}: {prefix}{key} must be {names}, got {value!r}")
        checked[key] = value
    return checked


# ------------------------------------------------------------------------------------ translating

def translate(values: dict, fmt: str | None = None, where: str = "job") -> Job:
    """The Job one file's values describe, in format `fmt` (else recognised by its keys)."""
    fmt = fmt or detect_format(values, where)
    if fmt not in FORMATS:
        raise JobError(f"unknown job format {fmt!r}; use one of {', '.join(FORMATS)}")
    checked = _check_types(values, KEYS[fmt], fmt, where)
    job = {"prunegpt": _prunegpt, "quark": _quark, "ppllms": _ppllms}[fmt](checked, where)
    job.source = values
    build_method(job.method, **job.method_arguments)  # option values refused now, before any model
    return job


def _prunegpt(values: dict, where: str) -> Job:
    if "num_blocks_to_prune" not in values:
        raise JobError(f"{where}: PruneGPT needs num_blocks_to_prune")
    method = values.get("pruning_method", "angular_distance")
    if method not in PRUNEGPT_CRITERIA:
        raise JobError(f"{where}: pruning_method must be one of {', '.join(PRUNEGPT_CRITERIA)}, got {method!r}")
    token = values.get("pruning_token", "last")
    if token not in ("last", "all"):
        raise JobError(f"{where}: pruning_token must be last or all, got {token!r}")
    arguments = {"num_blocks": values["num_blocks_to_prune"], "criterion": PRUNEGPT_CRITERIA[method],
                 "tokens": token, "block_size": 1}
    if "skip_blocks" in values:
        arguments["skip_blocks"] = values["skip_blocks"]
    dataset = _check_types(values.get("dataset", {}), PRUNEGPT_DATASET_KEYS, "PruneGPT dataset", where, "dataset.")
    bnb_config = None
    if values.get("quantize"):
        if not values.get("bnb_config"):
            raise JobError(f"{where}: quantize is true but no bnb_config says how (e.g. load_in_4bit: true)")
        bnb_config = values["bnb_config"]
    calib = prunegpt_calibration(dataset, where)
    return Job(path=where, format="prunegpt", method="depth", method_arguments=arguments,
               model=values.get("model_name"), output_dir=values.get("save_directory"),
               calib=calib, selection_on_test=calib == SELECTION_ON_TEST, nsamples=PRUNEGPT_NSAMPLES,
               batch_size=dataset.get("batch_size", CALIBRATION.batch_size), evaluate=values.get("calculate_ppl", False),
               log_file=values.get("log_file"), bnb_config=bnb_config)


def prunegpt_calibration(dataset: dict, where: str = "job") -> str:
    """The calibration source of a PruneGPT dataset {name, subset, split}: WikiText-2 and C4 by name, or a
    local .txt/.jsonl file as name; WikiText-2's test split (PruneGPT's example) is SELECTION_ON_TEST."""
    name, split = dataset.get("name", "wikitext"), dataset.get("split", "validation")
    if Path(name).suffix in (".txt", ".jsonl") and not dataset.get("subset"):
        return name
    if name in ("wikitext", "Salesforce/wikitext") and dataset.get("subset", "wikitext-2-raw-v1") in (
            "wikitext-2-raw-v1", "wikitext-2-v1"):
        if split == "test":
            return SELECTION_ON_TEST
        if split not in ("train", "validation"):
            raise JobError(f"{where}: dataset.split must be train, validation or test for WikiText-2, got {split!r}")
        return f"wikitext2-{split}"
    if name in ("c4", "allenai/c4"):
        return "c4"
    raise JobError(f"{where}: dataset {name!r} (subset {dataset.get('subset')!r}) is not available here; use "
                   "wikitext / wikitext-2-raw-v1 (train or validation), c4, or a local .txt/.jsonl file as name")


def _quark(values: dict, where: str) -> Job:
    if values.get("name", QUARK_ALGORITHM) != QUARK_ALGORITHM:
        raise JobError(f"{where}: name {values['name']!r} is not Quark's depth pruning ({QUARK_ALGORITHM})")
    if values.get("delete_layers_index"):
        raise JobError(f"{where}: delete_layers_index (removing given layers without a search) is not supported; "
                       "give delete_layer_num for Quark's perplexity search")
    if (values.get("model_decoder_layers") is None) != (values.get("layer_norm_field") is None):
        raise JobError(f"{where}: model_decoder_layers and layer_norm_field go together (the layers and the "
                       "final norm the perplexity search runs)")
    # save_gpu_memory picks Quark's layer-by-layer mode; the engine here always runs layer by layer, and
    # the result is the same either way
    return Job(path=where, format="quark", method="depth",
               method_arguments={"num_blocks": values.get("delete_layer_num", 1), "criterion": "perplexity"},
               calib=QUARK_CALIBRATION, decoder_layers=values.get("model_decoder_layers"),
               final_norm=values.get("layer_norm_field"), layer_num_field=values.get("layer_num_field"))


def _ppllms(values: dict, where: str) -> Job:
    values = {**PPLLMS_DEFAULTS, **values}
    counts = [k for k in ("ffn_remove_layers", "mha_remove_layers") if k in values]
    if len(counts) == 1:
        raise JobError(f"{where}: {counts[0]} without {({'ffn_remove_layers', 'mha_remove_layers'} - set(counts)).pop()}; "
                       "PP-LLMs takes both counts or derives both from prune_rate")
    if counts:
        arguments = {"ffn_layers": values["ffn_remove_layers"], "attention_layers": values["mha_remove_layers"]}
    else:
        arguments = {"prune_rate": values["prune_rate"], "ffn_attention_ratio": values["mha_ffn_ratio"]}
    return Job(path=where, format="ppllms", method="two_stage", method_arguments=arguments,
               model=values.get("model_name"), calib=ppllms_calibration(values["dataset"], where),
               nsamples=values["nsamples"], seed=values["seed"], evaluate=values["eval_ppl"],
               num_layers=values.get("num_blocks"))


def ppllms_calibration(dataset: str, where: str = "job") -> str:
    """PP-LLMs' `dataset` (a C4 path or name, wikitext2, or a local file) as a calibration source."""
    if dataset in ("c4", "wikitext2-train", "wikitext2-validation") or Path(dataset).is_file():
        return dataset
    if Path(dataset.rstrip("/")).name == "c4":  # its default, /workspace/datasets/allenai/c4
        return "c4"
    if dataset == "wikitext2":
        return "wikitext2-train"  # PP-LLMs calibrates on a train split
    raise JobError(f"{where}: dataset {dataset!r} is not available here; use c4, wikitext2 or a local .txt/.jsonl file")


def with_selection_split(job: Job, split: str) -> Job:
    """A Quark job whose window search runs on WikiText-2 `split`: validation (the default here) or test (Quark's
    tutorial). Other formats name their data in the file (PruneGPT: dataset.split)."""
    if job.format != "quark":
        raise JobError(f"{job.path}: a selection split is given for Quark jobs; a {job.format} file names its data "
                       + ("in dataset.split" if job.format == "prunegpt" else "in dataset"))
    if split not in SELECTION_SPLITS:
        raise JobError(f"selection split must be {' or '.join(SELECTION_SPLITS)}, got {split!r}")
    if split == "test":
        return replace(job, calib=SELECTION_ON_TEST, selection_on_test=True)
    return job


def load_job(path: str | os.PathLike, fmt: str | None = None) -> Job:
    """Read and translate one job file; every problem is refused naming the file and the key."""
    return translate(read_job_file(path), fmt, str(path))


# --------------------------------------------------------------------------------- before loading

def check_model_fields(job: Job, model_dir: Path, trust_remote_code: bool = False) -> None:
    """What the job says about the model, against its config.json: PP-LLMs' num_blocks, Quark's paths and
    layer-count field (a family with an adapter must be named as the adapter names it)."""
    from ..core.adapters import adapter_for_model_type, supported_model_types

    config = model_config(model_dir)
    layers = config.get(job.layer_num_field or "num_hidden_layers")
    if job.num_layers is not None and layers is not None and job.num_layers != layers:
        raise JobError(f"{job.path}: num_blocks {job.num_layers} but the model has {layers} layers")
    if job.method == "depth" and layers is not None:
        build_method(job.method, **job.method_arguments).plan(layers)
    if job.layer_num_field is not None:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(model_dir, **({"trust_remote_code": True} if trust_remote_code else {}))
        if job.layer_num_field not in config or getattr(hf_config, job.layer_num_field, None) != hf_config.num_hidden_layers:
            raise JobError(f"{job.path}: layer_num_field {job.layer_num_field!r} is not the layer count in "
                           f"{model_dir / 'config.json'}")
    model_type = config.get("model_type")
    if job.decoder_layers is not None and model_type in supported_model_types():
        adapter = adapter_for_model_type(model_type)
        for key, given, own in (("model_decoder_layers", job.decoder_layers, adapter.layers),
                                ("layer_norm_field", job.final_norm, adapter.final_norm)):
            if given != own:
                raise JobError(f"{job.path}: {key} {given!r} does not name the {model_type} model's {own!r}")


def check_quantization(bnb_config: dict, device: str, config: dict) -> None:
    """PruneGPT's bnb_config against what runs here: bitsandbytes installed, 4-bit (CPU or CUDA) or 8-bit
    (CUDA), keys BitsAndBytesConfig takes, and on a CPU with AVX512-BF16 the layer widths bitsandbytes'
    packed kernel there needs (multiples of 64; key/value 32). One line naming what is missing; `config` is the model's
    config.json."""
    import inspect

    from transformers import BitsAndBytesConfig

    known = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(bnb_config) - known)
    if unknown:
        raise JobError(f"bnb_config: unknown key {unknown[0]!r}; BitsAndBytesConfig takes {', '.join(sorted(known))}")
    if importlib.util.find_spec(BNB_PACKAGE) is None:
        raise JobError(f"quantize: true needs the {BNB_PACKAGE} package, which is not installed "
                       "(pip install 'pruning[bnb]'), or set quantize: false")
    if bnb_config.get("load_in_8bit") and not str(device).startswith("cuda"):
        raise JobError("bnb_config load_in_8bit: bitsandbytes 8-bit layers need a CUDA device here; "
                       "use load_in_4bit (runs on the CPU too)")
    if not (bnb_config.get("load_in_4bit") or bnb_config.get("load_in_8bit")):
        raise JobError("bnb_config: set load_in_4bit: true (or load_in_8bit on CUDA) to quantize")
    if not str(device).startswith("cuda"):
        from bitsandbytes.functional import has_avx512bf16

        if has_avx512bf16():
            for name, width in quantized_widths(config).items():
                block = CPU_4BIT_ROWS if name == "key/value width" else CPU_4BIT_COLUMNS
                if width % block:
                    raise JobError(f"quantize: bitsandbytes' 4-bit kernel for this CPU (AVX512-BF16) needs this "
                                   f"model's {name} ({width}) to be a multiple of {block}; run on CUDA or set "
                                   "quantize: false")


def quantized_widths(config: dict) -> dict[str, int]:
    """Widths of a decoder layer's linear layers, from config.json (those it states): hidden, intermediate
    and query widths are also inputs; the key/value width is only an output."""
    hidden, heads = config.get("hidden_size"), config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (hidden // heads if hidden and heads else None)
    kv_heads = config.get("num_key_value_heads", heads)
    widths = {"hidden_size": hidden, "intermediate_size": config.get("intermediate_size"),
              "query width": heads * head_dim if heads and head_dim else None,
              "key/value width": kv_heads * head_dim if kv_heads and head_dim else None}
    return {k: v for k, v in widths.items() if isinstance(v, int)}


# ---------------------------------------------------------------------------------------- running

def run_job(job: Job, *, model: str | None = None, output_dir: str | None = None, calib: str | None = None,
            nsamples: int | None = None, seqlen: int = CALIBRATION.seqlen, seed: int | None = None,
            batch_size: int | None = None, device: str = "auto", dtype: str = DEFAULT_DTYPE, data_dir_path: str | None = None,
            eval_dataset: str = EVALUATION.dataset, eval_seqlen: int | None = None, max_windows: int | None = None,
            overwrite: bool = False, progress: bool = True, selection_split: str | None = None,
            trust_remote_code: bool = False, log_file: str | None = None,
            on_checked: Callable[[], None] | None = None) -> dict:
    """Run one translated job through `api.prune`; the keyword arguments, where given, replace the job's own
    values (a job without a model or output directory needs them here; `selection_split`: Quark's search split,
    `with_selection_split`; `trust_remote_code`: the opt-in for a model with code of its own, as `api.prune`).
    Returns prune.json's record.

    `log_file` (the log the caller appends to) is checked with the outputs, against every input the job reads
    (its job file among them); `on_checked` is called once every check has passed, before any work, so a
    caller that opens its log there leaves none behind for a refused job."""
    from contextlib import nullcontext

    from .. import preflight
    from ..api import prune
    from ..core.adapters import adapter_added, paths_adapter, supported_model_types
    from ..preflight import RunRequest
    from ..core.modeling import resolve_device

    if selection_split is not None:
        job = with_selection_split(job, selection_split)
    model = model or job.model
    output_dir = output_dir or job.output_dir
    if not model:
        raise JobError(f"{job.path}: no model: the {job.format} file names none (model_name); give --model")
    if not output_dir:
        raise JobError(f"{job.path}: no output directory: give --output-dir"
                       + (" or save_directory" if job.format == "prunegpt" else ""))
    # the document's selection on test holds only while the job's own calibration is used
    selection_on_test = job.selection_on_test and (calib or job.calib) == SELECTION_ON_TEST
    settings = dict(calib=calib or job.calib, nsamples=job.nsamples if nsamples is None else nsamples, seqlen=seqlen,
                    seed=job.seed if seed is None else seed, batch_size=batch_size or job.batch_size)
    checked = preflight.check(RunRequest(  # the run as api.prune will check it again, before the job's own checks
        model, job.method, job.method_arguments, calibration=Calibration(*settings.values()),
        evaluation=Evaluation(eval_dataset, seqlen=eval_seqlen, max_windows=max_windows) if job.evaluate else None,
        output_dir=output_dir, overwrite=overwrite, device=device, dtype=dtype, data_dir=data_dir_path,
        selection_on_test=selection_on_test, trust_remote_code=trust_remote_code, files=(job.path,),
        log_file=log_file))
    model_dir = checked.path
    check_model_fields(job, model_dir, trust_remote_code)
    method: str | PruningMethod = job.method
    if job.bnb_config is not None:
        check_quantization(job.bnb_config, str(resolve_device(device)), checked.config)
        method = QuantizedScoring.build(job.bnb_config, **job.method_arguments)
    model_type = checked.config.get("model_type")
    given_paths = job.decoder_layers is not None and model_type not in supported_model_types()
    if on_checked is not None:
        on_checked()
    _log_start(job, settings)
    with adapter_added(paths_adapter(model_type, job.decoder_layers, job.final_norm)) if given_paths else nullcontext():
        report = prune(model, method, output_dir, device=device, dtype=dtype, data_dir_path=data_dir_path,
                       evaluate=job.evaluate, eval_dataset=eval_dataset, eval_seqlen=eval_seqlen,
                       eval_max_windows=max_windows, progress=progress, overwrite=overwrite,
                       selection_on_test=selection_on_test, trust_remote_code=trust_remote_code,
                       **settings, **({} if isinstance(method, PruningMethod) else job.method_arguments))
    _log_result(job, report, output_dir)
    return report


def _log_start(job: Job, settings: dict) -> None:
    arguments = job.method_arguments
    log.info("Started model pruning process (%s job %s): method %s %s, calibration %s", job.format, job.path,
             job.method, json.dumps(arguments), json.dumps(settings))
    if job.format == "prunegpt":
        log.info("Pruning %d blocks using %s and %s tokens.", arguments["num_blocks"],
                 job.source.get("pruning_method", "angular_distance"), arguments["tokens"])
    elif job.format == "quark":
        log.info("Searching the %d consecutive layers whose removal costs the least calibration perplexity",
                 arguments["num_blocks"])


def _log_result(job: Job, report: dict, output_dir) -> None:
    result, parameters = report["result"], report["parameters"]
    if job.format == "ppllms":
        log.info("MHA removed layers: %s", result["mha_removed_layers"])
        log.info("FFN removed layers: %s", result["ffn_removed_layers"])
        log.info("Total removed: %d MHA + %d FFN", len(result["mha_removed_layers"]), len(result["ffn_removed_layers"]))
    else:
        log.info("Removed layers %s of %d", result["removed_layers"], result["layers_before"])
    log.info("Number of parameters post pruning: %d (before %d, %.2f %% removed)", parameters["after"]["total"],
             parameters["before"]["total"], result["prune_ratio_percent"])
    for stage, value in (report.get("evaluation") or {}).items():
        log.info("%s perplexity %s pruning: %.4f", value.get("dataset", "evaluation"), stage, value["ppl"])
    log.info("Saved pruned model to %s.", output_dir)
