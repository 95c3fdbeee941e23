"""Comparison tables from the long frame of a grid's metric files (`pruning.results`).

Each table is a filter of that frame, a pivot and a format step; it states its protocol in a caption line
and comes as Markdown (for reading) plus a CSV that is its filtered long frame (model, method, ratio, key,
metric, value, file: every number with the file behind it). Built from measured values only; the same
files give the same bytes.

Layouts: the Wanda/SparseGPT sparsity table, the PersLM "Performance Impact" summary, PruneGPT's
#Blocks × criterion table, Quark's layer-removal table, PP-LLMs' two-stage table, the zero-shot task table
and a GGUF table. Which of them a grid produces is decided by `pruning.grid.table_specs`, for the workflow
and for this module alike. A new table is a layout function here plus its entry in `table_specs`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Iterable

import pandas as pd

from .grid import DENSE_METHOD, DEPTH_METHOD, LAYER_REMOVAL_METHODS, MASK_KINDS, TWO_STAGE_METHOD, table_specs
from .io import atomic_write_text
from .results import Results, ordered_unique

ZEROSHOT_METRIC = "acc"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MISSING = "—"
CSV_COLUMNS = ["model", "method", "ratio", "key", "metric", "value", "file"]
# The metrics each layout reads, by file kind (flattened JSON keys).
PROTOCOL = ["dataset", "split", "seqlen", "windows", "max_windows", "scored_tokens", "dtype"]
CALIBRATION = ["calibration.source", "calibration.nsamples", "calibration.seqlen", "calibration.seed"]
PPL = ["ppl", "parameters.total", "parameters.nonzero", *PROTOCOL]
PRUNED = ["method", "parameters.before.total", "parameters.before.nonzero", "parameters.after.total",
          "parameters.after.nonzero", *CALIBRATION]
REMOVED = ["result.prune_ratio_percent", "result.removed_layers", "result.mha_removed_layers",
           "result.ffn_removed_layers"]
SPEED = ["hf.prefill_tokens_per_s", "hf.decode_tokens_per_s"]
ZEROSHOT = [f"metrics.{ZEROSHOT_METRIC}.value", f"metrics.{ZEROSHOT_METRIC}.stderr", "n_docs", "limit", "num_fewshot"]
GGUF = ["gguf.bytes", "ppl", "reference.ppl", "relative_difference", "load_seconds", "dataset", "split", "seqlen",
        "windows"]


@dataclass
class Table:
    name: str
    title: str
    caption: str
    display: pd.DataFrame
    data: pd.DataFrame  # the filtered long frame

    def markdown(self) -> str:
        body = self.display.to_markdown(index=False, tablefmt="github", disable_numparse=True)
        return f"## {self.title}\n\n{self.caption}\n\n{body}\n"


def _table(name: str, title: str, caption: str, display: list[dict] | pd.DataFrame, rows: pd.DataFrame) -> Table:
    return Table(name, title, caption, pd.DataFrame(display), rows[CSV_COLUMNS])


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


def layer_ranges(indices: Iterable[int]) -> str:
    """Sorted layer indices with consecutive runs written as ranges, Quark's way: [3, 10-14, 17]."""
    runs = [[i for _, i in run] for _, run in groupby(enumerate(sorted(indices)), key=lambda p: p[1] - p[0])]
    return "[" + ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs) + "]"


def _removed_layers_text(removed, mha, ffn) -> str:
    """Quark's "deleted layers [a-b] total N"; for two-stage the attention and FFN sub-blocks apart."""
    parts = [f"{name}{layer_ranges(layers)} total {len(layers)}"
             for name, layers in (("", removed), ("attention ", mha), ("FFN ", ffn)) if layers]
    return "; ".join(parts) or MISSING


# ---- protocol captions ------------------------------------------------------------------------------

def _evaluation_protocol(ppl: pd.Series) -> str:
    dataset = "WikiText-2" if ppl["dataset"] == "wikitext2" else str(ppl["dataset"])
    split = f" {ppl['split']}" if ppl["split"] else ""
    extent = "whole split" if ppl["max_windows"] is None else f"first {ppl['windows']} windows"
    return (f"{dataset}{split} token-level perplexity, non-overlapping windows of {ppl['seqlen']} tokens "
            f"({extent}: {ppl['windows']} windows, {ppl['scored_tokens']:,} scored tokens), {ppl['dtype']}")


def _notes(models: Iterable[str], notes: dict[str, str] | None) -> str:
    return "".join(f" Note on {model}: {notes[model]}." for model in ordered_unique(models) if notes and notes.get(model))


def caption(results: Results, ids: list[int], notes: dict[str, str] | None = None, extra: str = "") -> str:
    """One line for runs `ids` (in order): evaluation protocol per model (or one for all), calibration,
    notes, and `extra`."""
    _, wide = results.wide(ids, ppl=PROTOCOL, prune=CALIBRATION)
    runs = results.runs.loc[ids].assign(ppl=results.has("ppl")[ids], prune=results.has("prune")[ids])
    by_model: dict[str, list[str]] = {}
    for run in runs.index[runs.ppl]:
        text = _evaluation_protocol(wide.loc[run, "ppl"])
        if text not in by_model.setdefault(runs.model[run], []):
            by_model[runs.model[run]].append(text)
    distinct = ordered_unique(" / ".join(texts) for texts in by_model.values())
    if len(distinct) == 1:  # one protocol for every model
        evaluation = distinct[0]
    else:
        evaluation = "; ".join(f"{model}: {' / '.join(texts)}" for model, texts in by_model.items())
    parts = [f"Protocol: {evaluation}" if evaluation else "Protocol: no perplexity measured"]
    calibrated = wide.loc[runs.index[runs.prune], "prune"]
    described = ordered_unique(f"{c['calibration.source']}, {c['calibration.nsamples']} × {c['calibration.seqlen']} tokens, "
                        f"seed {c['calibration.seed']}" for _, c in calibrated.iterrows() if c["calibration.source"])
    free = ordered_unique(runs.method[run] for run, c in calibrated.iterrows() if not c["calibration.source"])
    if described or free:
        text = "Calibration: " + ("; ".join(described) if described else "none")
        parts.append(text + (f" ({', '.join(free)}: no data)" if described and free else ""))
    line = ". ".join(parts) + "." + _notes(runs.model, notes)
    return f"{line} {extra}" if extra else line


# ---- tables: filter, pivot, format -------------------------------------------------------------------

def _parameters(wide: pd.DataFrame, run: int) -> tuple:
    """(total, nonzero) of the evaluated model: as counted by the perplexity run, else after pruning."""
    counted = wide.loc[run, ("ppl", "parameters.total")], wide.loc[run, ("ppl", "parameters.nonzero")]
    if counted != (None, None):
        return counted
    return wide.loc[run, ("prune", "parameters.after.total")], wide.loc[run, ("prune", "parameters.after.nonzero")]


def summary_table(results: Results, notes=None) -> Table:
    """PersLM "Performance Impact" layout, measured: size reduction (parameters, bytes), speed change
    (when speed.json exists), quality change (PPL against the model's dense run)."""
    models = ordered_unique(results.runs.model)
    ids = results.ids()
    ids.sort(key=lambda run: models.index(results.runs.model[run]))  # grouped by model, order kept within
    with_speed = bool(results.has("speed").any())
    rows, wide = results.wide(ids, ppl=PPL, prune=[*PRUNED, "dtype", "prune_seconds"], speed=SPEED)
    dense = results.dense()
    display = []
    for run in ids:
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        w, reference = wide.loc[run], dense.get(model)
        total, nonzero = _parameters(wide, run)
        ref_total, ref_nonzero = _parameters(wide, reference) if reference is not None else (None, None)
        if (ref_total, ref_nonzero) == (None, None):
            ref_total, ref_nonzero = w["prune", "parameters.before.total"], w["prune", "parameters.before.nonzero"]
        dtype = w["ppl", "dtype"] or w["prune", "dtype"]
        size = total * DTYPE_BYTES[dtype] if total and dtype in DTYPE_BYTES else None
        ref_size = (ref_total or 0) * DTYPE_BYTES.get(dtype, 0) or None
        ref_ppl = wide.loc[reference, ("ppl", "ppl")] if reference is not None else None
        is_reference = run == reference
        row = {"model": model, "method": method, "ratio": ratio.label, "parameters": fmt_count(total),
               "non-zero": fmt_count(nonzero),
               "size reduction (non-zero params)": MISSING if is_reference else fmt_reduction(nonzero, ref_nonzero),
               "weights (dense storage)": fmt_bytes(size),
               "size reduction (bytes)": MISSING if is_reference else fmt_reduction(size, ref_size)}
        if with_speed:
            ref_speed = wide.loc[reference, "speed"] if reference is not None else pd.Series(dtype=object)
            prefill, decode = (fmt_percent_change(w["speed", f"hf.{m}"], ref_speed.get(f"hf.{m}"))
                               for m in ("prefill_tokens_per_s", "decode_tokens_per_s"))
            row["speed change (prefill / decode)"] = (MISSING if is_reference or prefill == decode == MISSING
                                                      else f"{prefill} / {decode}")
        row["PPL"] = fmt_ppl(w["ppl", "ppl"])
        row["quality change (PPL)"] = MISSING if is_reference else fmt_change(w["ppl", "ppl"], ref_ppl)
        display.append(row)
    extra = ("Size reduction: non-zero parameters, and bytes of the weights stored densely (parameters × dtype "
             "size, as in safetensors, so unstructured and N:M zeros do not shrink them), against the dense model; "
             "quality change: PPL against the dense model.")
    if with_speed:
        extra += " Speed: Hugging Face prefill / decode tokens/s at batch 1 against the dense model (speed.json)."
    return _table("summary", "Performance impact per run", caption(results, results.ids(), notes, extra), display, rows)


def sparsity_table(results: Results, model: str, notes=None) -> Table | None:
    """Wanda/SparseGPT layout: rows method, columns dense / sparsities / N:M patterns, cells PPL."""
    runs = results.runs
    masked = results.ids((runs.model == model) & runs.kind.isin(MASK_KINDS))
    if not masked:
        return None
    dense = [results.dense()[model]] if model in results.dense() else []
    rows, wide = results.wide(masked + dense, ppl=PPL, prune=["result.total_sparsity", *CALIBRATION])
    cells = pd.DataFrame({"method": runs.method[masked], "label": [runs.ratio[r].label for r in masked],
                          "PPL": [fmt_ppl(wide.loc[r, ("ppl", "ppl")]) for r in masked]})
    labels = [r.label for r in sorted(ordered_unique(runs.ratio[masked]), key=lambda r: r.order)]
    display = (cells.pivot(index="method", columns="label", values="PPL")
               .reindex(index=ordered_unique(cells.method), columns=labels).fillna(MISSING))
    display.insert(0, DENSE_METHOD, fmt_ppl(wide.loc[dense[0], ("ppl", "ppl")]) if dense else MISSING)
    return _table(f"sparsity-{model}", f"Perplexity by sparsity pattern: {model}",
                  caption(results, masked + dense, notes, "Percentages: share of the weights of every decoder linear "
                          "layer set to zero; N:M keeps N of every M consecutive weights."),
                  display.reset_index(), rows)


def depth_table(results: Results, model: str, notes=None) -> Table | None:
    """PruneGPT layout: rows number of removed blocks, columns #Param and PPL per criterion."""
    runs = results.runs
    depth = results.ids((runs.model == model) & (runs.library_method == DEPTH_METHOD) & (runs.kind == "num_blocks"))
    if not depth:
        return None
    dense = [results.dense()[model]] if model in results.dense() else []
    rows, wide = results.wide(depth + dense, ppl=PPL, prune=[*PRUNED, "options.criterion", "result.removed_layers"])
    criteria = {runs.method[r]: str(wide.loc[r, ("prune", "options.criterion")] or runs.method[r]).capitalize()
                for r in depth}
    if len(set(criteria.values())) < len(criteria):  # two entries share a criterion: name columns by entry
        criteria = {method: method for method in criteria}
    counted = [r for r in depth if _parameters(wide, r) != (None, None)]
    cells = pd.DataFrame({"#Blocks": [runs.ratio[r].value for r in depth],
                          "criterion": [criteria[runs.method[r]] for r in depth],
                          "PPL": [fmt_ppl(wide.loc[r, ("ppl", "ppl")]) for r in depth],
                          "#Param": [fmt_count(_parameters(wide, r)[0]) if r in counted else None for r in depth]})
    table = (cells.pivot(index="#Blocks", columns="criterion", values="PPL")
             .reindex(columns=ordered_unique(cells.criterion)).sort_index().fillna(MISSING))
    params = cells.dropna(subset="#Param").groupby("#Blocks")["#Param"].agg(lambda texts: " / ".join(ordered_unique(texts)))
    table.insert(0, "#Param", params.reindex(table.index).fillna(MISSING))
    if dense:
        table.loc[0] = [fmt_count(_parameters(wide, dense[0])[0])] + [fmt_ppl(wide.loc[dense[0], ("ppl", "ppl")])] * (
            len(table.columns) - 1)
        table = table.sort_index()
    table.index = table.index.map(str)
    return _table(f"depth-{model}", f"Depth pruning by removed blocks: {model}",
                  caption(results, depth + dense, notes, "Blocks chosen on calibration data by the criterion of each "
                          "column; #Param after removal."), table.reset_index(), rows)


def _prune_ratio_percent(w: pd.Series) -> float | None:
    if w["prune", "result.prune_ratio_percent"] is not None:
        return float(w["prune", "result.prune_ratio_percent"])
    before, after = w["prune", "parameters.before.total"], w["prune", "parameters.after.total"]
    return 100.0 * (before - after) / before if before else None


def _removal(results: Results, methods: Iterable[str]) -> tuple[list[int], list[int]]:
    """Runs of the given library methods, and the dense runs of their models."""
    ids = results.ids(results.runs.library_method.isin(list(methods)))
    dense = results.dense()
    return ids, [dense[m] for m in ordered_unique(results.runs.model[ids]) if m in dense]


def layer_removal_table(results: Results, notes=None) -> Table | None:
    """Quark layout: model, PPL original, PPL after, prune ratio (parameters removed), deleted layers."""
    removal, dense = _removal(results, LAYER_REMOVAL_METHODS)
    if not removal:
        return None
    rows, wide = results.wide(removal + dense, ppl=PPL, prune=[*PRUNED, *REMOVED])
    originals = {results.runs.model[d]: wide.loc[d, ("ppl", "ppl")] for d in dense}
    display = []
    for run in removal:
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        w, percent = wide.loc[run], _prune_ratio_percent(wide.loc[run])
        display.append({"model": model, "method": method, "ratio": ratio.label,
                        "PPL original": fmt_ppl(originals.get(model)), "PPL after": fmt_ppl(w["ppl", "ppl"]),
                        "prune ratio": MISSING if percent is None else f"{percent:.2f}%",
                        "deleted layers": _removed_layers_text(*(w["prune", m] for m in REMOVED[1:]))})
    return _table("layer-removal", "Layer removal",
                  caption(results, removal + dense, notes, "Prune ratio: share of all parameters removed; deleted "
                          "layers are indices in the original model."), display, rows)


def two_stage_table(results: Results, notes=None) -> Table | None:
    """PP-LLMs layout: which layers lost their attention (MHA) and which their FFN, parameters removed, PPL."""
    staged, dense = _removal(results, [TWO_STAGE_METHOD])
    if not staged:
        return None
    rows, wide = results.wide(staged + dense, ppl=PPL, prune=[*PRUNED, *REMOVED])
    originals = {results.runs.model[d]: wide.loc[d, ("ppl", "ppl")] for d in dense}
    display = []
    for run in staged:
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        w = wide.loc[run]
        mha, ffn = (sorted(w["prune", f"result.{part}_removed_layers"] or []) for part in ("mha", "ffn"))
        removed = w["prune", "parameters.before.total"] - w["prune", "parameters.after.total"]
        display.append({"model": model, "method": method, "ratio": ratio.label,
                        "MHA layers removed": f"{len(mha)} {mha}", "FFN layers removed": f"{len(ffn)} {ffn}",
                        "params removed": f"{fmt_count(removed)} ({_prune_ratio_percent(w):.2f}%)",
                        "PPL original": fmt_ppl(originals.get(model)), "PPL": fmt_ppl(w["ppl", "ppl"])})
    return _table("two-stage", "Two-stage MHA/FFN removal",
                  caption(results, staged + dense, notes, "Layer indices are those of the original model; parameters "
                          "removed count all parameters, embeddings included."), display, rows)


def zeroshot_table(results: Results, notes=None) -> Table | None:
    """Tasks as columns, one row per run, plus the Average over tasks (only when every task was run)."""
    measured = results.ids(results.has("zeroshot"))
    if not measured:
        return None
    rows = results.select(measured, zeroshot=ZEROSHOT)
    values = results.pivot(rows, ["run", "key"], zeroshot=ZEROSHOT)["zeroshot"]
    tasks = sorted(ordered_unique(values.index.get_level_values("key")))
    accuracy = values[f"metrics.{ZEROSHOT_METRIC}.value"].unstack("key").reindex(index=measured, columns=tasks)
    accuracy = accuracy.astype(object).where(accuracy.notna(), None)
    display = results.runs.loc[measured, ["model", "method"]].assign(ratio=results.runs.ratio[measured].map(
        lambda r: r.label))
    for task in tasks:
        display[task] = accuracy[task].map(lambda v: MISSING if v is None else f"{100 * v:.2f}")
    display["Average"] = [MISSING if None in row else f"{100 * sum(row) / len(row):.2f}"
                          for row in accuracy.itertuples(index=False)]
    shots = sorted(ordered_unique(values.num_fewshot))
    limits = sorted(ordered_unique(map(str, values.limit)))
    extent = "all documents" if limits == ["None"] else f"first {', '.join(limits)} documents per task"
    text = (f"Protocol: lm-evaluation-harness, metric {ZEROSHOT_METRIC} × 100, {', '.join(map(str, shots))}-shot, "
            f"{extent}. Average over the tasks of the row.")
    return _table("zeroshot", "Zero-shot accuracy", text + _notes(display.model, notes), display, rows)


def gguf_table(results: Results, notes=None) -> Table | None:
    """Per run and GGUF output type: file size, llama.cpp PPL and the Hugging Face PPL on the same windows."""
    measured = results.ids(results.has("gguf"))
    if not measured:
        return None
    rows = results.select(measured, gguf=GGUF)
    records = results.pivot(rows, ["run", "key"], gguf=GGUF)["gguf"].reindex(measured, level="run")
    display = []
    for (run, outtype), record in records.iterrows():
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        difference = record["relative_difference"]
        display.append({"model": model, "method": method, "ratio": ratio.label, "type": outtype,
                        "GGUF size": fmt_bytes(record["gguf.bytes"]), "PPL (llama.cpp)": fmt_ppl(record["ppl"]),
                        "PPL (transformers)": fmt_ppl(record["reference.ppl"]),
                        "difference": MISSING if difference is None else f"{difference:+.2%}"})
    first = records.iloc[0]
    text = (f"Protocol: llama.cpp (llama-cpp-python) token-level perplexity on the windows of the Hugging Face "
            f"evaluator: {first['dataset']} {first['split'] or ''}, windows of {first['seqlen']} tokens, "
            f"{first['windows']} windows; transformers PPL of the same model on the same windows.")
    return _table("gguf", "GGUF export", text + _notes((d["model"] for d in display), notes), display, rows)


LAYOUTS = {"summary": summary_table, "sparsity": sparsity_table, "depth": depth_table,
           "layer_removal": layer_removal_table, "two_stage": two_stage_table, "zeroshot": zeroshot_table,
           "gguf": gguf_table}


def build_tables(long: pd.DataFrame, notes: dict[str, str] | None = None) -> list[Table]:
    """Every table the runs support (`pruning.grid.table_specs`), in its order."""
    results = Results(long)
    specs = table_specs(results.grid_rows(), zeroshot=bool(results.has("zeroshot").any()),
                        gguf=bool(results.has("gguf").any()))
    return [LAYOUTS[spec.layout](results, *([spec.model] if spec.model else []), notes) for spec in specs]


def write_tables(long: pd.DataFrame, out_dir: str | os.PathLike, notes: dict[str, str] | None = None) -> list[Path]:
    """`{name}.md` and `{name}.csv` for every table; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for table in build_tables(long, notes):
        md, csv = out_dir / f"{table.name}.md", out_dir / f"{table.name}.csv"
        atomic_write_text(md, table.markdown())
        atomic_write_text(csv, table.data.to_csv(index=False, lineterminator="\n"))
        written += [md, csv]
    return written
