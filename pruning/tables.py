"""Comparison tables and plots from the metric files of a grid of runs.

A run is one folder `.../{model}/{method}/{ratio}/` (the workflow writes `results/metrics/...`) holding
any of `ppl.json` (`pruning eval`), `prune.json` (a copy of the pruned model's report),
`zeroshot-{task}.json`, `gguf-{outtype}.json` and `speed.json`. Every table is built from measured
values only, states its protocol in a caption line, and comes as Markdown (for reading) plus a CSV in
long form whose `*_file` columns name the metric file behind each number. The same files give the same
bytes (only the columns ending in `_seconds` are timings).

Layouts: the Wanda/SparseGPT sparsity table, the PersLM "Performance Impact" summary, PruneGPT's
#Blocks × criterion table, Quark's layer-removal table, the zero-shot task table and a GGUF table.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Iterable

import pandas as pd
from tabulate import tabulate

from .io import atomic_write_text

DENSE = "dense"
LAYER_REMOVAL_METHODS = ("depth", "layers", "two_stage")
ZEROSHOT_METRIC = "acc"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MISSING = "—"
_FILE_PATTERNS = {
    "ppl": re.compile(r"^ppl\.json$"),
    "prune": re.compile(r"^prune\.json$"),
    "speed": re.compile(r"^speed\.json$"),
    "zeroshot": re.compile(r"^zeroshot-(?P<key>.+)\.json$"),
    "gguf": re.compile(r"^gguf-(?P<key>.+)\.json$"),
}


class TableError(ValueError):
    """Metric files that cannot be read or placed in the grid layout."""


@dataclass(frozen=True)
class Ratio:
    """A workflow ratio token read back: kind, value, the column label and an order for columns."""

    token: str
    kind: str
    value: object
    label: str

    @property
    def order(self) -> tuple:
        kinds = ("dense", "sparsity", "nm", "fraction", "prune_rate", "num_blocks", "custom")
        if self.kind == "nm":
            n, m = self.value
            return kinds.index("nm"), 1 - n / m, -m
        return kinds.index(self.kind), self.value if isinstance(self.value, (int, float)) else 0, 0


_TOKEN_RE = re.compile(r"^(?:(?P<s>s)(?P<sv>\d\.\d\d)|nm(?P<n>\d+)-(?P<m>\d+)|L(?P<blocks>\d+)|f(?P<fv>\d\.\d\d)|"
                       r"r(?P<rv>\d\.\d\d)|(?P<base>base)|(?P<custom>custom))$")


def parse_ratio(token: str) -> Ratio:
    """s0.50, nm2-4, L4, f0.25, r0.25, base (dense) or custom (ratios in the method's options)."""
    match = _TOKEN_RE.match(token)
    if not match:
        raise TableError(f"unknown ratio token {token!r} (expected s0.50, nm2-4, L4, f0.25, r0.25, base or custom)")
    if match["s"]:
        value = float(match["sv"])
        return Ratio(token, "sparsity", value, f"{value:.0%}")
    if match["n"]:
        n, m = int(match["n"]), int(match["m"])
        return Ratio(token, "nm", (n, m), f"{n}:{m}")
    if match["blocks"]:
        blocks = int(match["blocks"])
        return Ratio(token, "num_blocks", blocks, f"{blocks} block{'s' if blocks != 1 else ''}")
    if match["fv"]:
        value = float(match["fv"])
        return Ratio(token, "fraction", value, f"{value:.0%}")
    if match["rv"]:
        value = float(match["rv"])
        return Ratio(token, "prune_rate", value, f"{value:.0%}")
    if match["base"]:
        return Ratio(token, "dense", None, DENSE)
    return Ratio(token, "custom", None, "custom")


@dataclass
class Run:
    """The metric files of one grid row."""

    model: str
    method: str
    ratio: Ratio
    files: dict = field(default_factory=dict)  # kind -> relative path, or kind -> {key: relative path}
    ppl: dict | None = None
    prune: dict | None = None
    speed: dict | None = None
    zeroshot: dict = field(default_factory=dict)
    gguf: dict = field(default_factory=dict)

    @property
    def library_method(self) -> str | None:
        return self.prune.get("method") if self.prune else None

    @property
    def parameters(self) -> dict | None:
        """Parameters of the evaluated model, as counted when it was loaded for evaluation."""
        if self.ppl and self.ppl.get("parameters"):
            return self.ppl["parameters"]
        if self.prune:
            return self.prune["parameters"]["after"]
        return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TableError(f"cannot read metric file {path}: {type(exc).__name__}: {exc}") from None


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def load_runs(paths: Iterable[str | os.PathLike], root: str | os.PathLike = ".") -> list[Run]:
    """Runs from metric file paths `.../{model}/{method}/{ratio}/<file>.json`, in order of first appearance.
    Unrecognised file names are an error (a typo would silently drop a number)."""
    root = Path(root)
    runs: dict[Path, Run] = {}
    for path in map(Path, paths):
        folder = path.parent
        if folder not in runs:
            model, method, token = folder.parts[-3:]
            runs[folder] = Run(model=model, method=method, ratio=parse_ratio(token))
        run = runs[folder]
        for kind, pattern in _FILE_PATTERNS.items():
            match = pattern.match(path.name)
            if not match:
                continue
            data, where = _read_json(path), _relative(path, root)
            if "key" in pattern.groupindex:
                getattr(run, kind)[match["key"]] = data
                run.files.setdefault(kind, {})[match["key"]] = where
            else:
                setattr(run, kind, data)
                run.files[kind] = where
            break
        else:
            raise TableError(f"{path}: not a metric file name (ppl.json, prune.json, speed.json, "
                             "zeroshot-<task>.json, gguf-<outtype>.json)")
    return list(runs.values())


def collect(results: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Run]:
    """Every run under `results/metrics/{model}/{method}/{ratio}/`, sorted (model, dense first, method, ratio)."""
    metrics = Path(results) / "metrics"
    if not metrics.is_dir():
        raise TableError(f"{metrics} does not exist: no runs to tabulate")
    files = [p for p in metrics.glob("*/*/*/*.json") if any(r.match(p.name) for r in _FILE_PATTERNS.values())]
    runs = load_runs(sorted(files), root if root is not None else Path(results).resolve().parent)
    return sorted(runs, key=lambda r: (r.model, r.method != DENSE, r.method, r.ratio.order, r.ratio.token))


@dataclass
class Table:
    name: str
    title: str
    caption: str
    display: pd.DataFrame
    data: pd.DataFrame

    def markdown(self) -> str:
        body = tabulate(self.display, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)
        return f"## {self.title}\n\n{self.caption}\n\n{body}\n"


# ---- formatting -------------------------------------------------------------------------------------

def fmt_ppl(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.2f}" if value < 1e4 else f"{value:.3e}"


def fmt_count(value: int | None) -> str:
    if value is None:
        return MISSING
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}K"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return MISSING
    return f"{value / 1e6:.1f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def fmt_change(value: float | None, reference: float | None, digits: int = 2) -> str:
    """`+3.21 (+8.8%)` against the reference."""
    if value is None or reference is None:
        return MISSING
    delta = value - reference
    return f"{delta:+.{digits}f} ({delta / reference:+.1%})" if reference else f"{delta:+.{digits}f}"


def fmt_percent_change(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return MISSING
    return f"{value / reference - 1:+.1%}"


def fmt_reduction(value: float | None, reference: float | None) -> str:
    """Share removed relative to the reference, e.g. `43.6%`."""
    if value is None or not reference:
        return MISSING
    return f"{1 - value / reference:.1%}"


# ---- protocol captions ------------------------------------------------------------------------------

def _evaluation_protocol(ppl: dict) -> str:
    dataset = "WikiText-2" if ppl.get("dataset") == "wikitext2" else str(ppl.get("dataset"))
    split = f" {ppl['split']}" if ppl.get("split") else ""
    extent = "whole split" if ppl.get("max_windows") is None else f"first {ppl['windows']} windows"
    return (f"{dataset}{split} token-level perplexity, non-overlapping windows of {ppl['seqlen']} tokens "
            f"({extent}: {ppl['windows']} windows, {ppl['scored_tokens']:,} scored tokens), {ppl.get('dtype')}")


def _calibration_protocol(runs: list[Run]) -> str | None:
    described, free = [], []
    for run in runs:
        if not run.prune:
            continue
        calibration = run.prune.get("calibration")
        if calibration:
            text = (f"{calibration['source']}, {calibration['nsamples']} × {calibration['seqlen']} tokens, "
                    f"seed {calibration['seed']}")
            if text not in described:
                described.append(text)
        elif run.method not in free:
            free.append(run.method)
    if not described and not free:
        return None
    text = "Calibration: " + ("; ".join(described) if described else "none")
    if described and free:
        text += f" ({', '.join(free)}: no data)"
    return text


def caption(runs: list[Run], notes: dict[str, str] | None = None, extra: str = "") -> str:
    """One line: evaluation protocol per model (or one for all), calibration, notes, and `extra`."""
    by_model: dict[str, list[str]] = {}
    for run in runs:
        if run.ppl:
            text = _evaluation_protocol(run.ppl)
            if text not in by_model.setdefault(run.model, []):
                by_model[run.model].append(text)
    models = list(by_model)
    distinct = _unique(" / ".join(texts) for texts in by_model.values())
    if len(distinct) == 1:  # one protocol for every model
        evaluation = distinct[0]
    else:
        evaluation = "; ".join(f"{model}: {' / '.join(texts)}" for model, texts in by_model.items())
    parts = [f"Protocol: {evaluation}" if evaluation else "Protocol: no perplexity measured"]
    calibration = _calibration_protocol(runs)
    if calibration:
        parts.append(calibration)
    line = ". ".join(parts) + "."
    for model in dict.fromkeys(run.model for run in runs):
        if notes and notes.get(model):
            line += f" Note on {model}: {notes[model]}."
    if extra:
        line += f" {extra}"
    return line


# ---- tables -----------------------------------------------------------------------------------------

def _ppl(run: Run | None) -> float | None:
    return run.ppl["ppl"] if run and run.ppl else None


def _dense_runs(runs: list[Run]) -> dict[str, Run]:
    return {run.model: run for run in runs if run.ratio.kind == "dense"}


def _unique(values: Iterable) -> list:
    return list(dict.fromkeys(values))


def sparsity_table(runs: list[Run], model: str, notes=None) -> Table | None:
    """Wanda/SparseGPT layout: rows method, columns dense / sparsities / N:M patterns, cells PPL."""
    masked = [r for r in runs if r.model == model and r.ratio.kind in ("sparsity", "nm")]
    if not masked:
        return None
    dense = _dense_runs(runs).get(model)
    ratios = sorted(_unique(r.ratio for r in masked), key=lambda r: r.order)
    rows, data = [], []
    for method in _unique(r.method for r in masked):
        row = {"method": method, DENSE: fmt_ppl(_ppl(dense))}
        for ratio in ratios:
            run = next((r for r in masked if r.method == method and r.ratio == ratio), None)
            row[ratio.label] = fmt_ppl(_ppl(run))
            if run:
                data.append({"model": model, "method": method, "pattern": ratio.label, "ratio": ratio.token,
                             "total_sparsity": (run.prune or {}).get("result", {}).get("total_sparsity"),
                             "ppl": _ppl(run), "ppl_file": run.files.get("ppl"), "prune_file": run.files.get("prune")})
        rows.append(row)
    if dense:
        data.insert(0, {"model": model, "method": DENSE, "pattern": DENSE, "ratio": dense.ratio.token,
                        "total_sparsity": 0.0, "ppl": _ppl(dense), "ppl_file": dense.files.get("ppl"),
                        "prune_file": None})
    used = [r for r in masked] + ([dense] if dense else [])
    return Table(name=f"sparsity-{model}", title=f"Perplexity by sparsity pattern: {model}",
                 caption=caption(used, notes, "Percentages: share of the weights of every decoder linear layer set "
                                              "to zero; N:M keeps N of every M consecutive weights."),
                 display=pd.DataFrame(rows), data=pd.DataFrame(data))


def summary_table(runs: list[Run], notes=None) -> Table:
    """PersLM "Performance Impact" layout, measured: size reduction (parameters, bytes), speed change
    (when speed.json exists), quality change (PPL against the model's dense run)."""
    dense = _dense_runs(runs)
    with_speed = any(r.speed for r in runs)
    models = _unique(r.model for r in runs)
    rows, data = [], []
    for run in sorted(runs, key=lambda r: models.index(r.model)):  # grouped by model, order kept within
        params = run.parameters or {}
        reference = dense.get(run.model)
        ref_params = (reference.parameters if reference else None) or \
            ((run.prune or {}).get("parameters", {}).get("before"))
        dtype = (run.ppl or {}).get("dtype") or (run.prune or {}).get("dtype")
        size = params.get("total") * DTYPE_BYTES[dtype] if params.get("total") and dtype in DTYPE_BYTES else None
        ref_size = (ref_params or {}).get("total", 0) * DTYPE_BYTES.get(dtype, 0) or None
        ref_ppl = _ppl(reference)
        row = {
            "model": run.model, "method": run.method, "ratio": run.ratio.label,
            "parameters": fmt_count(params.get("total")), "non-zero": fmt_count(params.get("nonzero")),
            "size reduction (non-zero params)": MISSING if run is reference
            else fmt_reduction(params.get("nonzero"), (ref_params or {}).get("nonzero")),
            "weights (dense storage)": fmt_bytes(size),
            "size reduction (bytes)": MISSING if run is reference else fmt_reduction(size, ref_size),
        }
        record = {"model": run.model, "method": run.method, "ratio": run.ratio.token,
                  "library_method": run.library_method or (DENSE if run.ratio.kind == "dense" else None),
                  "parameters": params.get("total"), "nonzero_parameters": params.get("nonzero"),
                  "reference_nonzero_parameters": (ref_params or {}).get("nonzero"),
                  "weight_bytes_dense_storage": size, "ppl": _ppl(run), "dense_ppl": ref_ppl}
        if with_speed:
            hf = (run.speed or {}).get("hf") or {}
            ref_hf = ((reference.speed if reference else None) or {}).get("hf") or {}
            prefill = fmt_percent_change(hf.get("prefill_tokens_per_s"), ref_hf.get("prefill_tokens_per_s"))
            decode = fmt_percent_change(hf.get("decode_tokens_per_s"), ref_hf.get("decode_tokens_per_s"))
            row["speed change (prefill / decode)"] = (MISSING if run is reference or prefill == decode == MISSING
                                                      else f"{prefill} / {decode}")
            record.update(prefill_tokens_per_s=hf.get("prefill_tokens_per_s"),
                          decode_tokens_per_s=hf.get("decode_tokens_per_s"), speed_file=run.files.get("speed"))
        row["PPL"] = fmt_ppl(_ppl(run))
        row["quality change (PPL)"] = MISSING if run is reference else fmt_change(_ppl(run), ref_ppl)
        record.update(ppl_file=run.files.get("ppl"), prune_file=run.files.get("prune"),
                      prune_seconds=(run.prune or {}).get("prune_seconds"))
        rows.append(row)
        data.append(record)
    extra = ("Size reduction: non-zero parameters, and bytes of the weights stored densely (parameters × dtype "
             "size, as in safetensors, so unstructured and N:M zeros do not shrink them), against the dense model; "
             "quality change: PPL against the dense model.")
    if with_speed:
        extra += " Speed: Hugging Face prefill / decode tokens/s at batch 1 against the dense model (speed.json)."
    return Table(name="summary", title="Performance impact per run", caption=caption(runs, notes, extra),
                 display=pd.DataFrame(rows), data=pd.DataFrame(data))


def depth_table(runs: list[Run], model: str, notes=None) -> Table | None:
    """PruneGPT layout: rows number of removed blocks, columns #Param and PPL per criterion."""
    depth = [r for r in runs if r.model == model and r.library_method == "depth" and r.ratio.kind == "num_blocks"]
    if not depth:
        return None
    criteria = {r.method: str(r.prune.get("options", {}).get("criterion", r.method)).capitalize() for r in depth}
    if len(set(criteria.values())) < len(criteria):  # two entries share a criterion: name columns by entry
        criteria = {method: method for method in criteria}
    columns = _unique(criteria[r.method] for r in depth)
    dense = _dense_runs(runs).get(model)
    blocks = sorted(_unique(r.ratio.value for r in depth))
    rows, data = [], []
    if dense:
        rows.append({"#Blocks": "0", "#Param": fmt_count(dense.parameters["total"]),
                     **{c: fmt_ppl(_ppl(dense)) for c in columns}})
        data.append({"model": model, "method": DENSE, "criterion": None, "num_blocks": 0,
                     "parameters": dense.parameters["total"], "ppl": _ppl(dense), "ppl_file": dense.files.get("ppl"),
                     "prune_file": None})
    for count in blocks:
        matching = [r for r in depth if r.ratio.value == count]
        params = _unique(fmt_count(r.parameters["total"]) for r in matching if r.parameters)
        row = {"#Blocks": str(count), "#Param": " / ".join(params) or MISSING}
        for column in columns:
            run = next((r for r in matching if criteria[r.method] == column), None)
            row[column] = fmt_ppl(_ppl(run))
        rows.append(row)
        for run in matching:
            data.append({"model": model, "method": run.method, "criterion": criteria[run.method], "num_blocks": count,
                         "parameters": (run.parameters or {}).get("total"), "ppl": _ppl(run),
                         "removed_layers": json.dumps(run.prune.get("result", {}).get("removed_layers")),
                         "ppl_file": run.files.get("ppl"), "prune_file": run.files.get("prune")})
    return Table(name=f"depth-{model}", title=f"Depth pruning by removed blocks: {model}",
                 caption=caption(depth + ([dense] if dense else []), notes,
                                 "Blocks chosen on calibration data by the criterion of each column; #Param after removal."),
                 display=pd.DataFrame(rows), data=pd.DataFrame(data))


def layer_ranges(indices: Iterable[int]) -> str:
    """Sorted layer indices with consecutive runs written as ranges, Quark's way: [3, 10-14, 17]."""
    runs = [[i for _, i in run] for _, run in groupby(enumerate(sorted(indices)), key=lambda p: p[1] - p[0])]
    return "[" + ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) + "]"


def _removed_layers_text(result: dict) -> str:
    """Quark's "deleted layers [a-b] total N"; for two-stage the attention and FFN sub-blocks apart."""
    parts = []
    if result.get("removed_layers"):
        layers = result["removed_layers"]
        parts.append(f"{layer_ranges(layers)} total {len(layers)}")
    mha, ffn = result.get("mha_removed_layers") or [], result.get("ffn_removed_layers") or []
    if mha:
        parts.append(f"attention {layer_ranges(mha)} total {len(mha)}")
    if ffn:
        parts.append(f"FFN {layer_ranges(ffn)} total {len(ffn)}")
    return "; ".join(parts) or MISSING


def _prune_ratio_percent(run: Run) -> float | None:
    result = run.prune.get("result", {})
    if result.get("prune_ratio_percent") is not None:
        return float(result["prune_ratio_percent"])
    before, after = run.prune["parameters"]["before"]["total"], run.prune["parameters"]["after"]["total"]
    return 100.0 * (before - after) / before if before else None


def layer_removal_table(runs: list[Run], notes=None) -> Table | None:
    """Quark layout: model, PPL original, PPL after, prune ratio (parameters removed), deleted layers."""
    removal = [r for r in runs if r.library_method in LAYER_REMOVAL_METHODS]
    if not removal:
        return None
    dense = _dense_runs(runs)
    rows, data = [], []
    for run in removal:
        original = _ppl(dense.get(run.model))
        ratio = _prune_ratio_percent(run)
        result = run.prune.get("result", {})
        rows.append({"model": run.model, "method": run.method, "ratio": run.ratio.label,
                     "PPL original": fmt_ppl(original), "PPL after": fmt_ppl(_ppl(run)),
                     "prune ratio": MISSING if ratio is None else f"{ratio:.2f}%",
                     "deleted layers": _removed_layers_text(result)})
        data.append({"model": run.model, "method": run.method, "ratio": run.ratio.token,
                     "library_method": run.library_method, "ppl_original": original, "ppl_after": _ppl(run),
                     "prune_ratio_percent": ratio,
                     "parameters_before": run.prune["parameters"]["before"]["total"],
                     "parameters_after": run.prune["parameters"]["after"]["total"],
                     "removed_layers": json.dumps(result.get("removed_layers")),
                     "mha_removed_layers": json.dumps(result.get("mha_removed_layers")),
                     "ffn_removed_layers": json.dumps(result.get("ffn_removed_layers")),
                     "ppl_file": run.files.get("ppl"), "prune_file": run.files.get("prune"),
                     "original_ppl_file": dense[run.model].files.get("ppl") if run.model in dense else None})
    used = removal + [dense[m] for m in _unique(r.model for r in removal) if m in dense]
    return Table(name="layer-removal", title="Layer removal", display=pd.DataFrame(rows), data=pd.DataFrame(data),
                 caption=caption(used, notes, "Prune ratio: share of all parameters removed; deleted layers are "
                                              "indices in the original model."))


def two_stage_table(runs: list[Run], notes=None) -> Table | None:
    """PP-LLMs layout: which layers lost their attention (MHA) and which their FFN, parameters removed, PPL."""
    staged = [r for r in runs if r.library_method == "two_stage"]
    if not staged:
        return None
    dense = _dense_runs(runs)
    rows, data = [], []
    for run in staged:
        result = run.prune.get("result", {})
        before, after = run.prune["parameters"]["before"]["total"], run.prune["parameters"]["after"]["total"]
        mha, ffn = sorted(result.get("mha_removed_layers") or []), sorted(result.get("ffn_removed_layers") or [])
        ratio = _prune_ratio_percent(run)
        rows.append({"model": run.model, "method": run.method, "ratio": run.ratio.label,
                     "MHA layers removed": f"{len(mha)} {mha}", "FFN layers removed": f"{len(ffn)} {ffn}",
                     "params removed": f"{fmt_count(before - after)} ({ratio:.2f}%)",
                     "PPL original": fmt_ppl(_ppl(dense.get(run.model))), "PPL": fmt_ppl(_ppl(run))})
        data.append({"model": run.model, "method": run.method, "ratio": run.ratio.token,
                     "mha_removed_layers": json.dumps(mha), "ffn_removed_layers": json.dumps(ffn),
                     "parameters_removed": before - after, "prune_ratio_percent": ratio,
                     "ppl_original": _ppl(dense.get(run.model)), "ppl": _ppl(run),
                     "ppl_file": run.files.get("ppl"), "prune_file": run.files.get("prune")})
    used = staged + [dense[m] for m in _unique(r.model for r in staged) if m in dense]
    return Table(name="two-stage", title="Two-stage MHA/FFN removal", display=pd.DataFrame(rows),
                 data=pd.DataFrame(data),
                 caption=caption(used, notes, "Layer indices are those of the original model; parameters removed "
                                              "count all parameters, embeddings included."))


def _zeroshot_value(record: dict) -> float | None:
    metrics = record.get("metrics") or {}
    chosen = metrics.get(ZEROSHOT_METRIC)
    return chosen["value"] if chosen else None


def zeroshot_table(runs: list[Run], notes=None) -> Table | None:
    """Tasks as columns, one row per run, plus the Average over tasks (only when every task was run)."""
    measured = [r for r in runs if r.zeroshot]
    if not measured:
        return None
    tasks = sorted(_unique(task for r in measured for task in r.zeroshot))
    rows, data = [], []
    for run in measured:
        row = {"model": run.model, "method": run.method, "ratio": run.ratio.label}
        values = []
        for task in tasks:
            record = run.zeroshot.get(task)
            value = _zeroshot_value(record) if record else None
            values.append(value)
            row[task] = MISSING if value is None else f"{100 * value:.2f}"
            if record:
                data.append({"model": run.model, "method": run.method, "ratio": run.ratio.token, "task": task,
                             "metric": ZEROSHOT_METRIC, "value": value,
                             "stderr": (record.get("metrics", {}).get(ZEROSHOT_METRIC) or {}).get("stderr"),
                             "n_docs": record.get("n_docs"), "limit": record.get("limit"),
                             "num_fewshot": record.get("num_fewshot"),
                             "zeroshot_file": run.files["zeroshot"][task]})
        complete = all(v is not None for v in values)
        row["Average"] = f"{100 * sum(values) / len(values):.2f}" if complete else MISSING
        rows.append(row)
    shots = sorted(_unique(r.zeroshot[t].get("num_fewshot") for r in measured for t in r.zeroshot))
    limits = sorted(_unique(str(r.zeroshot[t].get("limit")) for r in measured for t in r.zeroshot))
    extent = "all documents" if limits == ["None"] else f"first {', '.join(limits)} documents per task"
    text = (f"Protocol: lm-evaluation-harness, metric {ZEROSHOT_METRIC} × 100, {', '.join(map(str, shots))}-shot, "
            f"{extent}. Average over the tasks of the row.")
    notes_text = "".join(f" Note on {m}: {notes[m]}." for m in _unique(r.model for r in measured) if notes and notes.get(m))
    return Table(name="zeroshot", title="Zero-shot accuracy", caption=text + notes_text,
                 display=pd.DataFrame(rows), data=pd.DataFrame(data))


def gguf_table(runs: list[Run], notes=None) -> Table | None:
    """Per run and GGUF output type: file size, llama.cpp PPL and the Hugging Face PPL on the same windows."""
    measured = [r for r in runs if r.gguf]
    if not measured:
        return None
    rows, data = [], []
    for run in measured:
        for outtype in sorted(run.gguf):
            record = run.gguf[outtype]
            reference = (record.get("reference") or {}).get("ppl")
            rows.append({"model": run.model, "method": run.method, "ratio": run.ratio.label, "type": outtype,
                         "GGUF size": fmt_bytes(record.get("gguf", {}).get("bytes")),
                         "PPL (llama.cpp)": fmt_ppl(record.get("ppl")), "PPL (transformers)": fmt_ppl(reference),
                         "difference": MISSING if record.get("relative_difference") is None
                         else f"{record['relative_difference']:+.2%}"})
            data.append({"model": run.model, "method": run.method, "ratio": run.ratio.token, "outtype": outtype,
                         "gguf_bytes": record.get("gguf", {}).get("bytes"), "ppl_llamacpp": record.get("ppl"),
                         "ppl_transformers": reference, "relative_difference": record.get("relative_difference"),
                         "load_seconds": record.get("load_seconds"), "gguf_file": run.files["gguf"][outtype]})
    first = measured[0].gguf[sorted(measured[0].gguf)[0]]
    text = (f"Protocol: llama.cpp (llama-cpp-python) token-level perplexity on the windows of the Hugging Face "
            f"evaluator: {first.get('dataset')} {first.get('split') or ''}, windows of {first.get('seqlen')} tokens, "
            f"{first.get('windows')} windows; transformers PPL of the same model on the same windows.")
    notes_text = "".join(f" Note on {m}: {notes[m]}." for m in _unique(r.model for r in measured) if notes and notes.get(m))
    return Table(name="gguf", title="GGUF export", caption=text + notes_text, display=pd.DataFrame(rows),
                 data=pd.DataFrame(data))


def build_tables(runs: list[Run], notes: dict[str, str] | None = None) -> list[Table]:
    """Every table the runs support, in a fixed order."""
    models = _unique(r.model for r in runs)
    tables = [summary_table(runs, notes)]
    tables += [sparsity_table(runs, model, notes) for model in models]
    tables += [depth_table(runs, model, notes) for model in models]
    tables += [layer_removal_table(runs, notes), two_stage_table(runs, notes), zeroshot_table(runs, notes),
               gguf_table(runs, notes)]
    return [t for t in tables if t is not None]


def write_tables(runs: list[Run], out_dir: str | os.PathLike, notes: dict[str, str] | None = None) -> list[Path]:
    """`{name}.md` and `{name}.csv` for every table; returns the paths written."""
    if not runs:
        raise TableError("no runs to tabulate")
    out_dir = Path(out_dir)
    written = []
    for table in build_tables(runs, notes):
        md, csv = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
        atomic_write_text(md, table.markdown())
        atomic_write_text(csv, table.data.to_csv(index=False, lineterminator="\n"))
        written += [md, csv]
    return written


# ---- plots ------------------------------------------------------------------------------------------

def plot_sparsity(runs: list[Run], model: str, path: str | os.PathLike) -> Path | None:
    """PPL against sparsity per method (log scale), the dense model at 0 and N:M patterns as open markers."""
    masked = [r for r in runs if r.model == model and r.ratio.kind in ("sparsity", "nm") and r.ppl]
    if not masked:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dense = _dense_runs(runs).get(model)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for index, method in enumerate(_unique(r.method for r in masked)):
        color = f"C{index}"
        curve = sorted((r.ratio.value, r.ppl["ppl"]) for r in masked if r.method == method and r.ratio.kind == "sparsity")
        if dense and dense.ppl:
            curve.insert(0, (0.0, dense.ppl["ppl"]))
        if curve:
            ax.plot(*zip(*curve), marker="o", color=color, label=method)
        for run in (r for r in masked if r.method == method and r.ratio.kind == "nm"):
            n, m = run.ratio.value
            ax.plot([1 - n / m], [run.ppl["ppl"]], marker="s", markerfacecolor="none", color=color, linestyle="none")
            ax.annotate(run.ratio.label, (1 - n / m, run.ppl["ppl"]), textcoords="offset points", xytext=(4, 2),
                        fontsize=7, color=color)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.1)
    ax.set_xlabel("sparsity of decoder linear layers (open squares: N:M)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{model}: perplexity against sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_plots(runs: list[Run], out_dir: str | os.PathLike) -> list[Path]:
    paths = [plot_sparsity(runs, model, Path(out_dir) / f"sparsity-{model}.png") for model in _unique(r.model for r in runs)]
    return [p for p in paths if p is not None]
