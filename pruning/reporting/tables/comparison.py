"""The cross-method layouts: the skill document's "Performance Comparison" (one row per method at its 50 % /
2:4 setting) and the PersLM "Performance Impact" per method family (measured ranges). Both compare each run
with its model's dense run: zero-shot average (headline metrics), perplexity, decode speed (speed.json),
size (parameters, GGUF q4_k_m bytes)."""
from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from ...core.dtypes import WORKING_DTYPES
from ...methods.base import method_families, method_family, retraining_methods
from ..grid import MASK_KINDS, compared_rows
from ..metric_files import Results, ordered_unique
from ..uncertainty import perplexity_figures
from .common import (INDISTINGUISHABLE, MISSING, PPL, PRUNED, SPEED_SPREAD, STORED, Table, _parameters, _table,
                     caption, decode_spread, fmt_bytes, fmt_ppl_change, keyed, perplexity_uncertainty)
from .tasks import accuracy_uncertainty, average, headline_keys, task_figures

COMPARED_GGUF = "q4_k_m"
SPEED_SETTINGS = ["settings.prompt_tokens", "settings.new_tokens", "settings.threads", "settings.device"]
DECODE = {"HF": "hf.decode_tokens_per_s", "llama.cpp": "gguf.decode_tokens_per_s"}
# PersLM's qualitative quality impact, from the measured perplexity change against dense: below the first bound
# Low, below the second Medium, else High (the impact table's caption states them).
QUALITY_LEVELS = ((0.25, "Low"), (1.00, "Medium"))
QUALITY_HIGH = "High"


class Measures(NamedTuple):
    rows: pd.DataFrame  # the long rows read
    frame: pd.DataFrame  # one row per run (below)
    accuracies: dict  # (run, task) -> the headline metric's Figure, runs and their dense runs
    headline: dict  # task -> its headline metric
    perplexities: dict  # run -> its perplexity Figure


def measures(results: Results, ids: list[int]) -> Measures:
    """The long rows read and one row per run of `ids` against its model's dense run, with the figures
    behind it: non-zero and total
    parameter reduction, decode speed-up per backend (Hugging Face also its range over the repeats), PPL and its
    change (with its perplexity figure), zero-shot average over the model's informative tasks and its loss in
    points (paired on the same documents where both runs kept them: with its SE and whether it is within 2 of
    them), GGUF q4_k_m bytes, the bytes of the saved checkpoint (in its save format; else dense storage) and
    their ratio to the dense weights, retraining. None where a side was not measured."""
    dense = results.dense()
    every = ordered_unique(ids + [dense[m] for m in ordered_unique(results.runs.model[ids]) if m in dense])
    rows, wide = results.wide(every, ppl=PPL, prune=[*PRUNED, "options.training_data", "recovery.steps", "dtype",
                                                     *STORED],
                              speed=[*DECODE.values(), *SPEED_SETTINGS, *SPEED_SPREAD])
    long = results.long
    gguf = long[long.run.isin(every) & (long.source == "gguf") & (long.key == COMPARED_GGUF) & (long.metric == "gguf.bytes")]
    zeroshot_rows, scores, headline, accuracies = task_figures(results, every)
    tasks = ordered_unique(scores.columns.get_level_values("task"))
    perplexities = perplexity_figures(results, every)
    gguf_bytes = gguf.set_index("run").value
    table = []
    for run in ids:
        reference = dense.get(results.runs.model[run])
        total, nonzero = _parameters(wide, run)
        ref_total, ref_nonzero = _parameters(wide, reference) if reference is not None else (None, None)
        w, ref = wide.loc[run], wide.loc[reference] if reference is not None else None

        def ratio(value, base):
            return value / base if value is not None and base else None

        measured_all = None not in list(scores.loc[run])
        accuracy = average(accuracies, run, tasks) if measured_all else None
        ref_accuracy = (average(accuracies, reference, tasks) if ref is not None and None not in list(scores.loc[reference])
                        else None)
        loss, loss_se, same = None, None, None
        if accuracy is not None and accuracy.vs_dense is not None:  # paired on the same documents
            loss, loss_se, same = -100 * accuracy.vs_dense, 100 * accuracy.vs_dense_se, accuracy.indistinguishable
        elif accuracy is not None and ref_accuracy is not None:
            loss = 100 * (ref_accuracy.value - accuracy.value)
        element = _element_bytes(w["ppl", "dtype"] or w["prune", "dtype"])
        stored_format, stored = w["prune", STORED[0]], w["prune", STORED[1]]
        dense_bytes = None if total is None or not element else total * element
        ref_bytes = None if ref_total is None or not element else ref_total * element
        own_speed, ref_speed = decode_spread(w["speed"]), None if ref is None else decode_spread(ref["speed"])
        speedup = own_speed.ratio(ref_speed) if own_speed and ref_speed else None
        library = results.runs.library_method[run]
        table.append({
            "run": run, "family": method_family(library),
            "nonzero_reduction": None if ratio(nonzero, ref_nonzero) is None else 1 - ratio(nonzero, ref_nonzero),
            "total_reduction": None if ratio(total, ref_total) is None else 1 - ratio(total, ref_total),
            **{f"speedup_{backend}": ratio(w["speed", key], None if ref is None else ref["speed", key])
               for backend, key in DECODE.items()},
            "speedup_HF_low": None if speedup is None else speedup.low,
            "speedup_HF_high": None if speedup is None else speedup.high,
            "ppl": w["ppl", "ppl"], "ppl_reference": None if ref is None else ref["ppl", "ppl"],
            "ppl_change": ratio(w["ppl", "ppl"], None if ref is None else ref["ppl", "ppl"]),
            "accuracy": None if accuracy is None else 100 * accuracy.value,
            "accuracy_reference": None if ref_accuracy is None else 100 * ref_accuracy.value,
            "accuracy_loss": loss, "accuracy_loss_se": loss_se, "accuracy_indistinguishable": same,
            "gguf_bytes": gguf_bytes.get(run),
            # the checkpoint prune wrote (sparse formats store non-zero values and a bitmask), else dense storage
            "memory_bytes": stored if stored is not None else dense_bytes,
            "memory_format": stored_format if stored is not None else "dense",
            "memory_change": ratio(stored if stored is not None else dense_bytes, ref_bytes),
            "retraining": library in retraining_methods() or bool(w["prune", "recovery.steps"])
                          or w["prune", "options.training_data"] is not None,  # distilled (all given training_data)
        })
    used = pd.concat([rows, gguf, zeroshot_rows])
    frame = pd.DataFrame(table).set_index("run").astype(object)
    return Measures(used, frame.where(frame.notna(), None), accuracies, headline, perplexities)


def _element_bytes(dtype) -> int | None:
    """Bytes per weight of a working dtype (`float32`: 4), None when the files name none."""
    return WORKING_DTYPES[dtype].bytes if dtype in WORKING_DTYPES else None


def _figure_keys(measured: Measures) -> dict:
    """The figures of a Measures by the long-frame row they describe (the CSV's uncertainty columns)."""
    return {**keyed(measured.perplexities), **headline_keys(measured.accuracies, measured.headline)}


def _speed_caption(rows: pd.DataFrame) -> str:
    settings = rows[(rows.source == "speed") & rows.metric.isin(SPEED_SETTINGS)]
    if settings.empty:
        return "Decode speed-up: not measured (speed.json)."
    described = ordered_unique(
        "{prompt_tokens}-token prompt, {new_tokens} new tokens, {threads} thread(s) on {device}".format(
            **{metric.removeprefix("settings."): value for metric, value in zip(group.metric, group.value)})
        for _, group in settings.groupby("run"))
    return (f"Decode speed-up: decode tokens/s at batch 1 against the dense model ({'; '.join(described)}), "
            "Hugging Face and llama.cpp (the GGUF of speed.json), medians of the timed repeats; [range]: from the "
            "slowest repeat against the dense model's fastest to the fastest against its slowest.")


def _times(value, low=None, high=None) -> str:
    """`1.37×`, with `[1.30–1.42]` the range over the repeats where measured."""
    if value is None:
        return MISSING
    return f"{value:.2f}×" + ("" if low is None else f" [{low:.2f}–{high:.2f}]")


# The skill document's row labels, in its order: the mask methods at 50 %, the 2:4 pattern, structured pruning.
DOCUMENT_METHODS = {"magnitude": "Magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
NM_LABEL = "N:M ({})"
STRUCTURED = "Structured"


def _document_label(library: str, ratio) -> str:
    """The skill document's Method for a run: Magnitude / Wanda / SparseGPT (50 %), N:M (2:4) for an N:M pattern,
    Structured for a run that removes parameters; any other method by its own name."""
    if ratio.kind == "nm":
        return NM_LABEL.format(ratio.label)
    if ratio.kind not in MASK_KINDS:
        return STRUCTURED
    return DOCUMENT_METHODS.get(library, library)


def _document_order(label: str) -> int:
    order = [*DOCUMENT_METHODS.values(), NM_LABEL, STRUCTURED]
    key = NM_LABEL if label.startswith(NM_LABEL.split("(")[0]) else label
    return order.index(key) if key in order else len(order)


def comparison_table(results: Results, notes=None) -> Table | None:
    """Skill-document layout: Method (Magnitude, Wanda, SparseGPT at 50 %, N:M (2:4), Structured, in its order),
    Accuracy Loss with its sign (negative = loss), Speed, Memory as a change against dense, Retraining Needed;
    beside them the PPL change, llama.cpp's speed-up and the bytes behind the Memory column."""
    picked = [row["run"] for row in compared_rows(results.grid_rows())]
    if not picked:
        return None
    measured = measures(results, picked)
    m = measured.frame
    runs = results.runs
    models = ordered_unique(runs.model[picked])
    labels = {run: _document_label(runs.library_method[run], runs.ratio[run]) for run in picked}
    picked = sorted(picked, key=lambda run: (models.index(runs.model[run]), _document_order(labels[run])))
    display = []
    for run in picked:
        r = m.loc[run]
        display.append({"model": runs.model[run], "Method": labels[run], "entry": runs.method[run],
                        "setting": runs.ratio[run].label,
                        "Accuracy Loss": _accuracy_change(r),
                        "PPL change": fmt_ppl_change(measured.perplexities.get(run), r.ppl, r.ppl_reference),
                        "Speed": _times(r.speedup_HF, r.speedup_HF_low, r.speedup_HF_high),
                        "Speed (llama.cpp)": _times(r["speedup_llama.cpp"]),
                        "Memory": MISSING if r.memory_change is None else f"{r.memory_change - 1:+.1%}",
                        "memory (bytes)": (MISSING if r.memory_bytes is None
                                           else f"{fmt_bytes(r.memory_bytes)} {r.memory_format}"),
                        f"memory (GGUF {COMPARED_GGUF})": fmt_bytes(r.gguf_bytes),
                        "Retraining Needed": "Yes" if r.retraining else "No"})
    rows = measured.rows
    extra = ("The skill document's rows: each mask method at 50 % sparsity (Magnitude, Wanda, SparseGPT), each at "
             "2:4 (N:M (2:4)), and the structured methods (Structured) at their smallest ratio in the grid. "
             "Accuracy Loss as the document signs it (its Magnitude −2.5%): the change of the zero-shot average "
             "accuracy in percentage points, pruned minus dense, so negative is a loss (headline metrics over the "
             "tasks not at chance for the model, as in the downstream table), ± the paired standard error on the "
             f"same documents; ≈: within 2 of them, not distinguishable from dense. Speed: {_speed_caption(rows)} "
             "Memory: the bytes of the checkpoint prune saved, in its save format (memory (bytes); sparse-bitmask and "
             "sparse-24-bitmask store the non-zero values and one bit per weight, so zeros shrink it), against the "
             "dense model's weights (parameters × dtype size); a run with no record of its checkpoint: its "
             "parameters × dtype size. A mask-pruned run saved dense keeps its size. GGUF: bytes of the "
             f"{COMPARED_GGUF} file. Retraining Needed: distillation after pruning. A dash: not measured. "
             + _uncertainty(measured, results, picked))
    return _table("comparison", "Performance comparison", caption(results, picked, notes, extra), display, rows,
                  _figure_keys(measured))


def _uncertainty(measured: Measures, results: Results, runs: list[int]) -> str:
    """The accuracy and perplexity sentences of the captions, for these runs and their dense runs."""
    dense = results.dense()
    shown = set(runs) | {dense[m] for m in results.runs.model[runs] if m in dense}
    accuracies = {key: figure for key, figure in measured.accuracies.items() if key[0] in shown}
    return " ".join(part for part in (accuracy_uncertainty(accuracies, results),
                                      perplexity_uncertainty(f for run, f in measured.perplexities.items() if run in shown))
                    if part)


def _accuracy_change(r) -> str:
    """`-10.63% ± 3.20 ≈`: the accuracy change in points with the document's sign (negative = loss) and its paired
    SE; a bare difference without per-document data."""
    if r.accuracy_loss is None:
        return MISSING
    text = f"{-r.accuracy_loss:+.2f}%" + ("" if r.accuracy_loss_se is None else f" ± {r.accuracy_loss_se:.2f}")
    return text + (f" {INDISTINGUISHABLE}" if r.accuracy_indistinguishable else "")


def _range(values, fmt) -> str:
    measured = sorted(v for v in values if v is not None)
    if not measured:
        return MISSING
    low, high = fmt(measured[0]), fmt(measured[-1])
    return low if low == high else f"{low} – {high}"


def quality_level(ppl_ratio: float) -> str:
    """PersLM's Low / Medium / High for a perplexity ratio to dense (QUALITY_LEVELS)."""
    return next((level for bound, level in QUALITY_LEVELS if ppl_ratio - 1 < bound), QUALITY_HIGH)


def _quality_thresholds() -> str:
    """`Low below +25%, Medium below +100%, High from +100%`: QUALITY_LEVELS as the caption says them."""
    return (", ".join(f"{level} below {bound:+.0%} PPL" for bound, level in QUALITY_LEVELS)
            + f", {QUALITY_HIGH} from {QUALITY_LEVELS[-1][0]:+.0%}")


def impact_table(results: Results, notes=None) -> Table | None:
    """PersLM layout per method family: the measured range over the family's runs of size reduction, speed
    improvement and quality impact."""
    pruned = [run for run in results.ids() if method_family(results.runs.library_method[run])]
    if not pruned:
        return None
    measured = measures(results, pruned)
    m = measured.frame
    display = []
    for name in method_families():
        mine = m[m.family == name]
        if mine.empty:
            continue
        display.append({
            "method family": name, "methods": ", ".join(ordered_unique(results.runs.method[mine.index])),
            "runs": str(len(mine)),
            "size reduction (non-zero params)": _range(mine.nonzero_reduction, "{:.1%}".format),
            "size reduction (dense bytes)": _range(mine.total_reduction, "{:.1%}".format),
            "speed improvement (decode, HF)": _range(mine.speedup_HF, lambda v: f"{v - 1:+.1%}"),
            "quality impact (PPL)": _range(mine.ppl_change, lambda v: f"{v - 1:+.1%}"),
            "quality impact": _range(mine.ppl_change, quality_level),
            "quality impact (zero-shot points)": _range([None if v is None else -v for v in mine.accuracy_loss],
                                                        "{:+.2f}".format)})
    extra = ("Ranges over every run of the family, each against its model's dense run: share of non-zero "
             "parameters and of all parameters removed, decode tokens/s change (Hugging Face, speed.json), "
             "perplexity change, and zero-shot average change in points (headline metrics, over the tasks not at "
             "chance for the model). Quality impact in PersLM's words, from the perplexity change: "
             + _quality_thresholds() + ". A dash: not measured. " + _uncertainty(measured, results, pruned))
    runs = pruned + list(results.dense().values())
    return _table("impact", "Performance impact per method family", caption(results, runs, notes, extra), display,
                  measured.rows, _figure_keys(measured))


LAYOUTS = {"comparison": comparison_table, "impact": impact_table}
