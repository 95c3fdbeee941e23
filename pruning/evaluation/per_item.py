"""The per-item record of a metric file: what each window or document scored, kept so that every figure gets
its standard error and a paired comparison against the dense model on the same items
(`pruning.core.statistics`). Defined here once: the evaluations write it, the tables and plots read it.
Torch-free (the reporting layer imports it).

Perplexity files (`ppl.json`, `gguf-{outtype}.json`, and the perplexities in `prune.json`) carry

    "per_window": {"nll": [summed NLL of window 0, ...],            # float64, in window order
                   "scored_tokens": [tokens scored in window 0, ...],
                   "token_ids_sha256": "<sha256 of the windows' token ids, int64 little-endian, row-major>"}

Two perplexities pair when dataset, split, seqlen and window count agree and the token ids hash the same
(`windows_problem`): the same tokenizer on the same text cut the same way.

Zero-shot files (`zeroshot-{task}.json`) carry, per lm-eval leaf task (one for a task, several for a group)

    "per_document": {"<leaf task>": {
        "output_type": "multiple_choice",           # lm-eval's: multiple_choice, loglikelihood, generate_until
        "doc_id": [lm-eval's document index, ...],  # ascending
        "documents_sha256": "<sha256 over lm-eval's doc_hash of each document, in doc_id order>",
        "values": {"acc": [1, 0, ...], ...},       # every mean-aggregated metric, per document, named as in
                                                    # "metrics" ("metric,filter" for filters other than none)
        "loglikelihoods": [[per answer], ...],      # multiple choice only: lm-eval's log-likelihood of each answer
        "gold": [index of the right answer, ...]}}  # multiple choice, where lm-eval gives it as an index

Two runs pair on a metric when they scored the same leaf tasks, documents and shots (`documents_problem`).
Files written before these records existed have neither key: the readers return None and the tables show
no uncertainty for them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..core.statistics import chance_rate

WINDOWS = "per_window"
DOCUMENTS = "per_document"
MULTIPLE_CHOICE = "multiple_choice"
# Output types whose accuracy is an exact match of a free answer (a word, a number): guessing scores ~0.
FREE_ANSWER_TYPES = ("loglikelihood", "generate_until")
PAIRED_WINDOW_KEYS = ("dataset", "split", "seqlen", "windows")


# ---- writing ----------------------------------------------------------------------------------------

def token_ids_sha256(token_ids: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(token_ids, dtype="<i8").tobytes()).hexdigest()


def window_record(nll: list[float], scored_tokens: list[int], token_ids: np.ndarray) -> dict:
    return {"nll": [float(v) for v in nll], "scored_tokens": [int(t) for t in scored_tokens],
            "token_ids_sha256": token_ids_sha256(token_ids)}


def _compact(value) -> float | int:
    value = float(value)
    return int(value) if value.is_integer() else value


def _metric_key(metric: str, filter_name: str) -> str:
    return metric if filter_name == "none" else f"{metric},{filter_name}"


def document_record(samples: dict[str, list[dict]], tasks: dict) -> dict:
    """The per_document record from lm-eval's logged samples ({leaf task: samples}, `log_samples=True`) and
    its leaf Task objects (which metrics are means, the output type)."""
    from lm_eval.api.metrics import mean

    record = {}
    for name in sorted(samples):
        task, logged = tasks[name], sorted(samples[name], key=lambda s: (s["doc_id"], s["filter"]))
        averaged = [metric for metric, aggregate in task.aggregation().items() if aggregate is mean]
        by_filter: dict[str, list[dict]] = {}
        for sample in logged:
            by_filter.setdefault(sample["filter"], []).append(sample)
        first = next(iter(by_filter.values()))
        doc_ids = [sample["doc_id"] for sample in first]
        values = {}
        for filter_name, group in by_filter.items():
            if [sample["doc_id"] for sample in group] != doc_ids:
                raise ValueError(f"{name}: filter {filter_name} scored other documents than {first[0]['filter']}")
            for metric in averaged:
                if all(metric in sample for sample in group):
                    values[_metric_key(metric, filter_name)] = [_compact(sample[metric]) for sample in group]
        entry = {"output_type": task.OUTPUT_TYPE, "doc_id": doc_ids,
                 "documents_sha256": hashlib.sha256("".join(s["doc_hash"] for s in first).encode()).hexdigest(),
                 "values": values}
        if task.OUTPUT_TYPE == MULTIPLE_CHOICE:
            entry["loglikelihoods"] = [[float(response[0][0]) for response in sample["resps"]] for sample in first]
            gold = [sample["target"] for sample in first]
            if all(isinstance(g, int) and not isinstance(g, bool) for g in gold):
                entry["gold"] = gold
        record[name] = entry
    return record


# ---- reading ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Windows:
    nll: np.ndarray
    scored_tokens: np.ndarray
    token_ids_sha256: str


def windows(record: dict) -> Windows | None:
    """The per-window NLLs of a perplexity record, None for a file written without them."""
    entry = record.get(WINDOWS)
    if not isinstance(entry, dict) or not entry.get("nll"):
        return None
    return Windows(np.asarray(entry["nll"], dtype=np.float64), np.asarray(entry["scored_tokens"], dtype=np.float64),
                   entry["token_ids_sha256"])


def windows_problem(a: dict, b: dict) -> str | None:
    """Why two perplexity records cannot be paired window by window (None: same windows)."""
    differing = [key for key in PAIRED_WINDOW_KEYS if a.get(key) != b.get(key)]
    if differing:
        return f"other windows ({', '.join(differing)} differ)"
    first, second = windows(a), windows(b)
    if first is None or second is None:
        return "no per-window NLLs"
    if first.token_ids_sha256 != second.token_ids_sha256 or not np.array_equal(first.scored_tokens, second.scored_tokens):
        return "other token ids in the windows (another tokenizer or text)"
    return None


@dataclass(frozen=True)
class Documents:
    """One metric's per-document values of a zero-shot record, pooled over its leaf tasks."""
    keys: list[tuple[str, int]]  # (leaf task, doc_id) of every value
    values: np.ndarray
    signature: tuple  # what two runs must share to pair: leaf tasks with their documents' hash
    options: np.ndarray | None  # answers offered per document (multiple choice), else None
    gold: list | None  # index of the right answer per document, where every leaf gives it
    output_types: tuple[str, ...]


def documents(record: dict, metric: str) -> Documents | None:
    """`metric`'s per-document values (None for a file without them, or a metric not kept per document)."""
    entry = record.get(DOCUMENTS)
    if not isinstance(entry, dict) or not entry or not all(metric in leaf.get("values", {}) for leaf in entry.values()):
        return None
    keys, values, options, gold = [], [], [], []
    for name, leaf in sorted(entry.items()):
        keys += [(name, doc_id) for doc_id in leaf["doc_id"]]
        values += leaf["values"][metric]
        answers = leaf.get("loglikelihoods") or [None] * len(leaf["doc_id"])
        options += [None if each is None else len(each) for each in answers]
        gold += leaf["gold"] if "gold" in leaf else [None] * len(leaf["doc_id"])
    return Documents(keys, np.asarray(values, dtype=np.float64),
                     tuple((name, leaf["documents_sha256"]) for name, leaf in sorted(entry.items())),
                     None if None in options else np.asarray(options), None if None in gold else gold,
                     tuple(dict.fromkeys(leaf["output_type"] for leaf in entry.values())))


def documents_problem(a: dict, b: dict, metric: str) -> str | None:
    """Why two zero-shot records cannot be paired document by document on `metric` (None: same documents)."""
    first, second = documents(a, metric), documents(b, metric)
    if first is None or second is None:
        return "no per-document outcomes"
    if a.get("num_fewshot") != b.get("num_fewshot"):
        return "other shots"
    if first.signature != second.signature or first.keys != second.keys:
        return "other documents"
    return None


def chance(scored: Documents) -> float | None:
    """Accuracy of guessing: 1/options averaged over the documents for multiple choice, 0 for a free answer
    (an exact match of a word or number); None where the output types do not say."""
    if scored.options is not None:
        return chance_rate(scored.options)
    if all(kind in FREE_ANSWER_TYPES for kind in scored.output_types):
        return 0.0
    return None
