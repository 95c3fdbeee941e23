"""The perplexity layouts: the PersLM per-run summary, the Wanda/SparseGPT sparsity table, PruneGPT's #Blocks
table, Quark's layer-removal table and PP-LLMs' two-stage table."""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from ...core.dtypes import WORKING_DTYPES
from ...methods.base import layer_removal_methods
from ..grid import DENSE_METHOD, DEPTH_METHOD, MASK_KINDS, TWO_STAGE_METHOD
from ...methods.depth import CRITERION_LABELS
from ..metric_files import Results, ordered_unique
from ..uncertainty import perplexity_figures
from .common import (CALIBRATION, MISSING, PPL, PRUNED, REMOVED, SELECTION, SPEED, SPEED_SPREAD, STORED, Table,
                     NOT_APPLICABLE, _parameters, _table, caption, deleted_layers, fmt_bytes, fmt_count,
                     fmt_params, fmt_percent_change,
                     fmt_ppl_change, fmt_ppl_figure, fmt_rate_spread, fmt_reduction, keyed, perplexity_uncertainty,
                     test_mark)


def summary_table(results: Results, notes=None) -> Table:
    """PersLM "Performance Impact" layout, measured: size reduction (parameters, bytes), speed change
    (when speed.json exists), quality change (PPL against the model's dense run)."""
    models = ordered_unique(results.runs.model)
    ids = results.ids()
    ids.sort(key=lambda run: models.index(results.runs.model[run]))  # grouped by model, order kept within
    with_speed = bool(results.has("speed").any())
    rows, wide = results.wide(ids, ppl=PPL, prune=[*PRUNED, "dtype", "prune_seconds", *STORED],
                              speed=[*SPEED, *SPEED_SPREAD])
    dense = results.dense()
    figures = perplexity_figures(results, ids)
    display = []
    for run in ids:
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        w, reference = wide.loc[run], dense.get(model)
        total, nonzero = _parameters(wide, run)
        ref_total, ref_nonzero = _parameters(wide, reference) if reference is not None else (None, None)
        if (ref_total, ref_nonzero) == (None, None):
            ref_total, ref_nonzero = w["prune", "parameters.before.total"], w["prune", "parameters.before.nonzero"]
        dtype = w["ppl", "dtype"] or w["prune", "dtype"]
        element = WORKING_DTYPES[dtype].bytes if dtype in WORKING_DTYPES else 0
        size = total * element if total and element else None
        ref_size = (ref_total or 0) * element or None
        ref_ppl = wide.loc[reference, ("ppl", "ppl")] if reference is not None else None
        is_reference = run == reference
        row = {"model": model, "method": method + test_mark(results, run), "ratio": ratio.label,
               "parameters": fmt_count(total),
               "non-zero": fmt_count(nonzero),
               "size reduction (non-zero params)": MISSING if is_reference else fmt_reduction(nonzero, ref_nonzero),
               "weights (dense storage)": fmt_bytes(size),
               "size reduction (bytes)": MISSING if is_reference else fmt_reduction(size, ref_size),
               "checkpoint on disk": _stored(w["prune", STORED[1]], w["prune", STORED[0]], ref_size)}
        if with_speed:
            ref_speed = wide.loc[reference, "speed"] if reference is not None else pd.Series(dtype=object)
            prefill, decode = (fmt_percent_change(w["speed", f"hf.{m}"], ref_speed.get(f"hf.{m}"))
                               for m in ("prefill_tokens_per_s", "decode_tokens_per_s"))
            row["speed change (prefill / decode)"] = (MISSING if is_reference or prefill == decode == MISSING
                                                      else f"{prefill} / {decode}")
            row["decode tokens/s (median [min–max])"] = fmt_rate_spread(w["speed"])
        row["PPL"] = fmt_ppl_figure(figures.get(run), w["ppl", "ppl"])
        row["quality change (PPL)"] = MISSING if is_reference else fmt_ppl_change(figures.get(run), w["ppl", "ppl"], ref_ppl)
        display.append(row)
    extra = ("Size reduction: non-zero parameters, and bytes of the weights stored densely (parameters × dtype "
             "size, as in safetensors, so unstructured and N:M zeros do not shrink them), against the dense model; "
             "checkpoint on disk: the safetensors bytes prune wrote, in its save format (sparse-bitmask, "
             "sparse-24-bitmask: non-zero values and one bit per weight), and their reduction against the dense "
             "model's weights; quality change: PPL against the dense model, ± the paired standard error of the "
             "difference on the same windows.")
    if with_speed:
        extra += (" Speed: Hugging Face prefill / decode tokens/s at batch 1 against the dense model (medians of the "
                  "repeats in speed.json), and decode tokens/s as the median with the slowest and fastest repeat.")
    extra += " " + perplexity_uncertainty(figures.values())
    return _table("summary", "Performance impact per run", caption(results, results.ids(), notes, extra.strip()),
                  display, rows, keyed(figures))


def _stored(size: int | None, save_format: str | None, ref_size: int | None) -> str:
    """`655.4 kB sparse-bitmask (37.3% smaller)`: bytes on disk, format, reduction against the dense weights
    (only where there is one: a mask-pruned model stored dense is as large, give or take its header);
    MISSING where prune.json has no record (written before save formats)."""
    if size is None:
        return MISSING
    smaller = ref_size and size < ref_size
    return f"{fmt_bytes(size)} {save_format}" + (f" ({fmt_reduction(size, ref_size)} smaller)" if smaller else "")


def sparsity_table(results: Results, model: str, notes=None) -> Table | None:
    """Wanda/SparseGPT layout: rows method, columns dense / sparsities / N:M patterns, cells PPL."""
    runs = results.runs
    masked = results.ids((runs.model == model) & runs.kind.isin(MASK_KINDS))
    if not masked:
        return None
    dense = [results.dense()[model]] if model in results.dense() else []
    rows, wide = results.wide(masked + dense, ppl=PPL, prune=["result.total_sparsity", *CALIBRATION, *SELECTION])
    figures = perplexity_figures(results, masked + dense)
    cells = pd.DataFrame({"method": runs.method[masked], "label": [runs.ratio[r].label for r in masked],
                          "PPL": [fmt_ppl_figure(figures.get(r), wide.loc[r, ("ppl", "ppl")]) + test_mark(results, r)
                                  for r in masked]})
    labels = [r.label for r in sorted(ordered_unique(runs.ratio[masked]), key=lambda r: r.order)]
    display = (cells.pivot(index="method", columns="label", values="PPL")
               .reindex(index=ordered_unique(cells.method), columns=labels).fillna(MISSING))
    display.insert(0, DENSE_METHOD, fmt_ppl_figure(figures.get(dense[0]), wide.loc[dense[0], ("ppl", "ppl")])
                   if dense else MISSING)
    return _table(f"sparsity-{model}", f"Perplexity by sparsity pattern: {model}",
                  caption(results, masked + dense, notes, "Percentages: share of the weights of every decoder linear "
                          "layer set to zero; N:M keeps N of every M consecutive weights. "
                          + perplexity_uncertainty(figures.values())),
                  display.reset_index(), rows, keyed(figures))


BLOCKS = "# Blocks"  # PruneGPT's first column
BASELINE = "Baseline"  # PruneGPT's row of the unpruned model


def depth_table(results: Results, model: str, notes=None) -> Table | None:
    """PruneGPT layout: rows number of removed blocks, columns #Param and PPL per criterion; its Baseline row
    (the dense model) has the dense PPL under the first criterion and "-" under the others, as PruneGPT writes
    it, and #Param in one unit with one decimal."""
    runs = results.runs
    depth = results.ids((runs.model == model) & (runs.library_method == DEPTH_METHOD) & (runs.kind == "num_blocks"))
    if not depth:
        return None
    dense = [results.dense()[model]] if model in results.dense() else []
    rows, wide = results.wide(depth + dense, ppl=PPL, prune=[*PRUNED, "options.criterion", "result.removed_layers"])
    criteria = {runs.method[r]: _criterion_label(wide.loc[r, ("prune", "options.criterion")] or runs.method[r])
                for r in depth}
    if len(set(criteria.values())) < len(criteria):  # two entries share a criterion: name columns by entry
        criteria = {method: method for method in criteria}
    counted = [r for r in depth if _parameters(wide, r) != (None, None)]
    figures = perplexity_figures(results, depth + dense)
    cells = pd.DataFrame({BLOCKS: [runs.ratio[r].value for r in depth],
                          "criterion": [criteria[runs.method[r]] for r in depth],
                          "PPL": [fmt_ppl_figure(figures.get(r), wide.loc[r, ("ppl", "ppl")]) + test_mark(results, r)
                                  for r in depth],
                          "#Param": [fmt_params(_parameters(wide, r)[0]) if r in counted else None for r in depth]})
    table = (cells.pivot(index=BLOCKS, columns="criterion", values="PPL")
             .reindex(columns=ordered_unique(cells.criterion)).sort_index().fillna(MISSING))
    params = (cells.dropna(subset="#Param").groupby(BLOCKS)["#Param"]
              .agg(lambda texts: " / ".join(ordered_unique(texts))))
    table.insert(0, "#Param", params.reindex(table.index).fillna(MISSING))
    table.index = table.index.map(str)
    if dense:
        baseline = [fmt_params(_parameters(wide, dense[0])[0]),
                    fmt_ppl_figure(figures.get(dense[0]), wide.loc[dense[0], ("ppl", "ppl")])]
        baseline += [NOT_APPLICABLE] * (len(table.columns) - len(baseline))
        table = pd.concat([pd.DataFrame([baseline], index=[BASELINE], columns=table.columns), table])
    table.index.name = BLOCKS
    return _table(f"depth-{model}", f"Depth pruning by removed blocks: {model}",
                  caption(results, depth + dense, notes, "Blocks chosen on calibration data by the criterion of each "
                          "column; #Param: all parameters after removal. Baseline: the unpruned model, its PPL under "
                          "the first criterion and \"-\" under the others, as PruneGPT's table. "
                          + perplexity_uncertainty(figures.values())),
                  table.reset_index(), rows, keyed(figures))


def _criterion_label(criterion) -> str:
    return CRITERION_LABELS.get(str(criterion), str(criterion).capitalize())


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


LAYERS_BEFORE = "result.layers_before"  # the original model's layer count, recorded by every layer-removal method


def layer_removal_table(results: Results, notes=None) -> Table | None:
    """Quark layout: model, PPL original, PPL after, prune ratio (parameters removed), deleted layers."""
    removal, dense = _removal(results, layer_removal_methods())
    if not removal:
        return None
    rows, wide = results.wide(removal + dense, ppl=PPL, prune=[*PRUNED, *REMOVED, LAYERS_BEFORE])
    figures = perplexity_figures(results, removal + dense)
    originals = {results.runs.model[d]: fmt_ppl_figure(figures.get(d), wide.loc[d, ("ppl", "ppl")]) for d in dense}
    display = []
    for run in removal:
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        w, percent = wide.loc[run], _prune_ratio_percent(wide.loc[run])
        count, where = deleted_layers(*(w["prune", m] for m in REMOVED[1:]), w["prune", LAYERS_BEFORE])
        display.append({"model": model, "method": method + test_mark(results, run), "ratio": ratio.label,
                        "PPL original": originals.get(model, MISSING),
                        "PPL after": fmt_ppl_figure(figures.get(run), w["ppl", "ppl"]),
                        "prune ratio": MISSING if percent is None else f"{percent:.2f}%",
                        "deleted": count, "deleted layers": where})
    return _table("layer-removal", "Layer removal",
                  caption(results, removal + dense, notes, "Prune ratio: share of all parameters removed; deleted "
                          "layers are indices in the original model, in Quark's notation: [11-13] total 32 is "
                          "layers 11 to 13 of a 32-layer model. " + perplexity_uncertainty(figures.values())),
                  display, rows, keyed(figures))


def two_stage_table(results: Results, notes=None) -> Table | None:
    """PP-LLMs layout: which layers lost their attention (MHA) and which their FFN, parameters removed, PPL."""
    staged, dense = _removal(results, [TWO_STAGE_METHOD])
    if not staged:
        return None
    rows, wide = results.wide(staged + dense, ppl=PPL, prune=[*PRUNED, *REMOVED])
    figures = perplexity_figures(results, staged + dense)
    originals = {results.runs.model[d]: fmt_ppl_figure(figures.get(d), wide.loc[d, ("ppl", "ppl")]) for d in dense}
    display = []
    for run in staged:
        model, method, ratio = results.runs.loc[run, ["model", "method", "ratio"]]
        w = wide.loc[run]
        mha, ffn = (sorted(w["prune", f"result.{part}_removed_layers"] or []) for part in ("mha", "ffn"))
        removed = w["prune", "parameters.before.total"] - w["prune", "parameters.after.total"]
        display.append({"model": model, "method": method + test_mark(results, run), "ratio": ratio.label,
                        "MHA layers removed": f"{len(mha)} {mha}", "FFN layers removed": f"{len(ffn)} {ffn}",
                        "params removed": f"{fmt_count(removed)} ({_prune_ratio_percent(w):.2f}%)",
                        "PPL original": originals.get(model, MISSING),
                        "PPL": fmt_ppl_figure(figures.get(run), w["ppl", "ppl"])})
    return _table("two-stage", "Two-stage MHA/FFN removal",
                  caption(results, staged + dense, notes, "Layer indices are those of the original model; parameters "
                          "removed count all parameters, embeddings included. "
                          + perplexity_uncertainty(figures.values())), display, rows, keyed(figures))




LAYOUTS = {"summary": summary_table, "sparsity": sparsity_table, "depth": depth_table,
           "layer_removal": layer_removal_table, "two_stage": two_stage_table}
