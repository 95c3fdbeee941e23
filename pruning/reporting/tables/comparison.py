"""The cross-method layouts: the skill document's "Performance Comparison" (one row per method at its 50 % /
2:4 setting) and the PersLM "Performance Impact" per method family (measured ranges). Both compare each run
with its model's dense run: zero-shot average (headline metrics), perplexity, decode speed (speed.json),
size (parameters, GGUF q4_k_m bytes)."""
from __future__ import annotations

import pandas as pd

from ...methods.base import method_families, method_family, retraining_methods
from ..grid import compared_rows
from ..metric_files import Results, ordered_unique
from .common import MISSING, PPL, PRUNED, Table, _parameters, _table, caption, fmt_bytes, fmt_change
from .tasks import average, headline_scores

COMPARED_GGUF = "q4_k_m"
FP32_BYTES = 4
SPEED_SETTINGS = ["settings.prompt_tokens", "settings.new_tokens", "settings.threads", "settings.device"]
DECODE = {"HF": "hf.decode_tokens_per_s", "llama.cpp": "gguf.decode_tokens_per_s"}


def measures(results: Results, ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the long rows read, one row per run of `ids` against its model's dense run): non-zero and total
    parameter reduction, decode speed-up per backend, PPL and its change, zero-shot average and loss in points,
    GGUF q4_k_m bytes, dense fp32 bytes, retraining. None where a side was not measured."""
    dense = results.dense()
    every = ordered_unique(ids + [dense[m] for m in ordered_unique(results.runs.model[ids]) if m in dense])
    rows, wide = results.wide(every, ppl=PPL, prune=[*PRUNED, "options.training_data", "recovery.steps"],
                              speed=[*DECODE.values(), *SPEED_SETTINGS])
    long = results.long
    gguf = long[long.run.isin(every) & (long.source == "gguf") & (long.key == COMPARED_GGUF) & (long.metric == "gguf.bytes")]
    zeroshot_rows, scores, headline = headline_scores(results, every)
    gguf_bytes = gguf.set_index("run").value
    table = []
    for run in ids:
        reference = dense.get(results.runs.model[run])
        total, nonzero = _parameters(wide, run)
        ref_total, ref_nonzero = _parameters(wide, reference) if reference is not None else (None, None)
        w, ref = wide.loc[run], wide.loc[reference] if reference is not None else None

        def ratio(value, base):
            return value / base if value is not None and base else None

        accuracy, ref_accuracy = average(scores.loc[run]), average(scores.loc[reference]) if ref is not None else None
        library = results.runs.library_method[run]
        table.append({
            "run": run, "family": method_family(library),
            "nonzero_reduction": None if ratio(nonzero, ref_nonzero) is None else 1 - ratio(nonzero, ref_nonzero),
            "total_reduction": None if ratio(total, ref_total) is None else 1 - ratio(total, ref_total),
            **{f"speedup_{backend}": ratio(w["speed", key], None if ref is None else ref["speed", key])
               for backend, key in DECODE.items()},
            "ppl": w["ppl", "ppl"], "ppl_reference": None if ref is None else ref["ppl", "ppl"],
            "ppl_change": ratio(w["ppl", "ppl"], None if ref is None else ref["ppl", "ppl"]),
            "accuracy_loss": None if accuracy is None or ref_accuracy is None else 100 * (ref_accuracy - accuracy),
            "gguf_bytes": gguf_bytes.get(run), "fp32_bytes": None if total is None else total * FP32_BYTES,
            "retraining": library in retraining_methods() or bool(w["prune", "recovery.steps"])
                          or w["prune", "options.training_data"] is not None,  # distilled (all given training_data)
        })
    used = pd.concat([rows, gguf, zeroshot_rows])
    frame = pd.DataFrame(table).set_index("run").astype(object)
    return used, frame.where(frame.notna(), None)


def _speed_caption(rows: pd.DataFrame) -> str:
    settings = rows[(rows.source == "speed") & rows.metric.isin(SPEED_SETTINGS)]
    if settings.empty:
        return "Decode speed-up: not measured (speed.json)."
    described = ordered_unique(
        "{prompt_tokens}-token prompt, {new_tokens} new tokens, {threads} thread(s) on {device}".format(
            **{metric.removeprefix("settings."): value for metric, value in zip(group.metric, group.value)})
        for _, group in settings.groupby("run"))
    return (f"Decode speed-up: decode tokens/s at batch 1 against the dense model ({'; '.join(described)}), "
            "Hugging Face and llama.cpp (the GGUF of speed.json).")


def _times(value) -> str:
    return MISSING if value is None else f"{value:.2f}×"


def comparison_table(results: Results, notes=None) -> Table | None:
    """Skill-document layout: method, setting, accuracy loss, PPL change, decode speed-up, memory, retraining."""
    picked = [row["run"] for row in compared_rows(results.grid_rows())]
    if not picked:
        return None
    rows, m = measures(results, picked)
    display = []
    for run in picked:
        r = m.loc[run]
        display.append({"model": results.runs.model[run], "method": results.runs.method[run],
                        "setting": results.runs.ratio[run].label,
                        "accuracy loss (points)": MISSING if r.accuracy_loss is None else f"{r.accuracy_loss:+.2f}",
                        "PPL change": fmt_change(r.ppl, r.ppl_reference),
                        "decode speed-up (HF)": _times(r.speedup_HF),
                        "decode speed-up (llama.cpp)": _times(r["speedup_llama.cpp"]),
                        f"memory (GGUF {COMPARED_GGUF})": fmt_bytes(r.gguf_bytes),
                        "memory (dense fp32)": fmt_bytes(r.fp32_bytes),
                        "retraining": "yes" if r.retraining else "no"})
    extra = ("One row per method at 50 % sparsity and at 2:4, the structured methods at their smallest ratio in the "
             "grid. Accuracy loss: zero-shot average of the tasks' headline metrics × 100, dense minus pruned "
             f"(as in the downstream table). {_speed_caption(rows)} Memory: bytes of the GGUF {COMPARED_GGUF} file, "
             "and parameters × 4 bytes (dense fp32 storage, so zeros in place do not shrink it). Retraining: "
             "distillation after pruning. A dash: not measured.")
    return _table("comparison", "Performance comparison", caption(results, picked, notes, extra), display, rows)


def _range(values, fmt) -> str:
    measured = sorted(v for v in values if v is not None)
    if not measured:
        return MISSING
    low, high = fmt(measured[0]), fmt(measured[-1])
    return low if low == high else f"{low} – {high}"


def impact_table(results: Results, notes=None) -> Table | None:
    """PersLM layout per method family: the measured range over the family's runs of size reduction, speed
    improvement and quality impact."""
    pruned = [run for run in results.ids() if method_family(results.runs.library_method[run])]
    if not pruned:
        return None
    rows, m = measures(results, pruned)
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
            "quality impact (zero-shot points)": _range([None if v is None else -v for v in mine.accuracy_loss],
                                                        "{:+.2f}".format)})
    extra = ("Ranges over every run of the family, each against its model's dense run: share of non-zero "
             "parameters and of all parameters removed, decode tokens/s change (Hugging Face, speed.json), "
             "perplexity change, and zero-shot average change in points (headline metrics). A dash: not measured.")
    runs = pruned + list(results.dense().values())
    return _table("impact", "Performance impact per method family", caption(results, runs, notes, extra), display,
                  rows)


LAYOUTS = {"comparison": comparison_table, "impact": impact_table}
