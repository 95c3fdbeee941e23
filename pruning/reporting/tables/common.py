"""What every table shares: the Table record, formatting of cells, the protocol caption and the metrics
each layout reads (flattened JSON keys by file kind)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import groupby
from typing import Iterable

import pandas as pd

from ...core.sparse_formats import CHECKPOINT
from ...evaluation import provenance as prune_json  # prune.json's keys
from ..metric_files import Results, ordered_unique

ZEROSHOT_METRIC = "acc"
MISSING = "—"
CSV_COLUMNS = ["model", "method", "ratio", "key", "metric", "value", "file"]
# The metrics each layout reads, by file kind (flattened JSON keys).
PROTOCOL = ["dataset", "split", "seqlen", "windows", "max_windows", "scored_tokens", "dtype"]
CALIBRATION = [f"{prune_json.CALIBRATION}.{key}" for key in ("source", "nsamples", "seqlen", "seed")]
PPL = ["ppl", "parameters.total", "parameters.nonzero", *PROTOCOL]
SELECTION = [prune_json.SELECTION_SPLIT]  # "test" where a document's run chose on the evaluation split
PRUNED = [prune_json.METHOD, *(f"{prune_json.PARAMETERS}.{when}.{count}" for when in ("before", "after")
                               for count in ("total", "nonzero")), *CALIBRATION, *SELECTION]
TEST_MARK = "†"  # a run that chose what to prune on the evaluation split (PruneGPT's and Quark's documents do)
REMOVED = ["result.prune_ratio_percent", "result.removed_layers", "result.mha_removed_layers",
           "result.ffn_removed_layers"]
STORED = [f"{CHECKPOINT}.format", f"{CHECKPOINT}.safetensors_bytes"]  # how prune saved the weights (prune.json)
SPEED = ["hf.prefill_tokens_per_s", "hf.decode_tokens_per_s"]
ZEROSHOT = [f"metrics.{ZEROSHOT_METRIC}.value", f"metrics.{ZEROSHOT_METRIC}.stderr", "n_docs", "limit", "num_fewshot"]
GGUF = ["gguf.bytes", "ppl", "reference.ppl", "load_seconds", "dataset", "split", "seqlen",
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


def deleted_layers(removed, mha, ffn, layers: int | None) -> tuple[str, str]:
    """Quark's "delete 3 layer [11-13] total 32" as two cells: the count removed ("delete 3 layer") and the
    indices with the model's layer count ("[11-13] total 32"); for two-stage the attention and FFN sub-blocks
    apart ("delete 2 attention, 12 FFN"; "attention [13, 16]; FFN [3-6] total 30")."""
    parts = [(name, list(indices)) for name, indices in (("layer", removed), ("attention", mha), ("FFN", ffn))
             if indices]
    if not parts:
        return MISSING, MISSING
    count = "delete " + ", ".join(f"{len(indices)} {name}" for name, indices in parts)
    where = "; ".join(("" if name == "layer" else f"{name} ") + layer_ranges(indices) for name, indices in parts)
    return count, where + (f" total {layers}" if layers is not None else "")


# ---- protocol captions ------------------------------------------------------------------------------

def _evaluation_protocol(ppl: pd.Series) -> str:
    dataset = "WikiText-2" if ppl["dataset"] == "wikitext2" else str(ppl["dataset"])
    split = f" {ppl['split']}" if ppl["split"] else ""
    extent = "whole split" if ppl["max_windows"] is None else f"first {ppl['windows']} windows"
    return (f"{dataset}{split} token-level perplexity, non-overlapping windows of {ppl['seqlen']} tokens "
            f"({extent}: {ppl['windows']} windows, {ppl['scored_tokens']:,} scored tokens), {ppl['dtype']}")


def _notes(models: Iterable[str], notes: dict[str, str] | None) -> str:
    return "".join(f" Note on {model}: {notes[model]}." for model in ordered_unique(models) if notes and notes.get(model))


def selected_on_test(results: Results, ids: Iterable[int]) -> list[int]:
    """The runs of `ids` whose prune.json records `selection_split: test` (the documents' compat path)."""
    long = results.long
    marked = set(long.run[(long.source == "prune") & (long.metric == prune_json.SELECTION_SPLIT)
                          & (long.value == "test")])
    return [run for run in ids if run in marked]


def test_mark(results: Results, run: int) -> str:
    """` †` after a cell of a run selected on the test split, else nothing."""
    return f" {TEST_MARK}" if selected_on_test(results, [run]) else ""


def _test_note(results: Results, ids: list[int]) -> str:
    runs = results.runs.loc[selected_on_test(results, ids)]
    if runs.empty:
        return ""
    named = ", ".join(f"{r.model} {r.method} ({r.ratio.label})" for r in runs.itertuples())
    return (f"{TEST_MARK} Selected on test: {named} chose what to prune on the evaluation split (WikiText-2 test), "
            "as PruneGPT's example config and Quark's tutorial do, so its test perplexity is not a held-out score.")


def caption(results: Results, ids: list[int], notes: dict[str, str] | None = None, extra: str = "") -> str:
    """One line for runs `ids` (in order): evaluation protocol per model (or one for all), calibration,
    notes, `extra`, and which runs were selected on the test split (marked TEST_MARK in the rows)."""
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
    line = f"{line} {extra}" if extra else line
    note = _test_note(results, ids)
    return f"{line} {note}" if note else line


# ---- tables: filter, pivot, format -------------------------------------------------------------------

def _parameters(wide: pd.DataFrame, run: int) -> tuple:
    """(total, nonzero) of the evaluated model: as counted by the perplexity run, else after pruning."""
    counted = wide.loc[run, ("ppl", "parameters.total")], wide.loc[run, ("ppl", "parameters.nonzero")]
    if counted != (None, None):
        return counted
    return wide.loc[run, ("prune", "parameters.after.total")], wide.loc[run, ("prune", "parameters.after.nonzero")]


