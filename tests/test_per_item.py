"""pruning.evaluation.per_item: the per-window and per-document records read back, and the pairing rule
(two runs pair only on the same items). Real records are checked in tests/test_perplexity.py,
tests/test_zeroshot_run.py and tests/test_tables.py; here the rule's cases on small records."""
from __future__ import annotations

import numpy as np
import pytest

from pruning.evaluation.per_item import (chance, documents, documents_problem, token_ids_sha256, window_record,
                                         windows, windows_problem)

IDS = np.arange(12).reshape(3, 4)


def ppl_record(ids=IDS, **protocol) -> dict:
    settings = {"dataset": "wikitext2", "split": "test", "seqlen": ids.shape[1], "windows": ids.shape[0], **protocol}
    return {**settings, "per_window": window_record([10.0, 11.5, 9.25][:ids.shape[0]], [3] * ids.shape[0], ids)}


def test_window_record_reads_back():
    read = windows(ppl_record())
    assert read.nll.tolist() == [10.0, 11.5, 9.25] and read.scored_tokens.tolist() == [3, 3, 3]
    assert read.token_ids_sha256 == token_ids_sha256(IDS.astype(np.int32))  # the same ids whatever their dtype
    assert windows({"ppl": 3.0}) is None  # a file from before the records


def test_windows_pair_only_on_the_same_windows():
    assert windows_problem(ppl_record(), ppl_record()) is None
    assert windows_problem(ppl_record(), ppl_record(split="validation")) == "other windows (split differ)"
    fewer = IDS[:2]
    assert windows_problem(ppl_record(), ppl_record(fewer)) == "other windows (windows differ)"
    assert windows_problem(ppl_record(), ppl_record(IDS + 1)) == \
        "other token ids in the windows (another tokenizer or text)"
    assert windows_problem(ppl_record(), {**ppl_record(), "per_window": None}) == "no per-window NLLs"


def zeroshot_record(leaves: dict, shots: int = 0) -> dict:
    return {"num_fewshot": shots, "per_document": leaves}


def leaf(doc_ids, acc, answers=None, output_type="multiple_choice", documents="a" * 64) -> dict:
    entry = {"output_type": output_type, "doc_id": doc_ids, "documents_sha256": documents, "values": {"acc": acc}}
    if answers is not None:
        entry["loglikelihoods"] = [[-1.0] * k for k in answers]
        entry["gold"] = [0] * len(answers)
    return entry


def test_documents_pool_the_leaves_of_a_group():
    record = zeroshot_record({"b_leaf": leaf([0, 1], [1, 0], [2, 2]), "a_leaf": leaf([0], [1], [4])})
    read = documents(record, "acc")
    assert read.keys == [("a_leaf", 0), ("b_leaf", 0), ("b_leaf", 1)] and read.values.tolist() == [1, 1, 0]
    assert read.options.tolist() == [4, 2, 2] and chance(read) == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert documents(record, "acc_norm") is None  # a metric not kept per document
    free = documents(zeroshot_record({"x": leaf([0, 1], [0, 1], output_type="generate_until")}), "acc")
    assert free.options is None and chance(free) == 0.0  # an exact-match answer: guessing scores 0
    rolling = documents(zeroshot_record({"x": leaf([0], [0], output_type="loglikelihood_rolling")}), "acc")
    assert chance(rolling) is None


def test_documents_pair_only_on_the_same_documents_and_shots():
    one = zeroshot_record({"t": leaf([0, 1, 2], [1, 0, 1], [4, 4, 4])})
    assert documents_problem(one, zeroshot_record({"t": leaf([0, 1, 2], [0, 0, 1], [4, 4, 4])}), "acc") is None
    assert documents_problem(one, zeroshot_record({"t": leaf([0, 1, 2], [1, 0, 1], [4, 4, 4])}, shots=5),
                             "acc") == "other shots"
    assert documents_problem(one, zeroshot_record({"t": leaf([0, 1], [1, 0], [4, 4])}), "acc") == "other documents"
    assert documents_problem(one, zeroshot_record({"t": leaf([0, 1, 2], [1, 0, 1], [4, 4, 4], documents="b" * 64)}),
                             "acc") == "other documents"
    assert documents_problem(one, {"num_fewshot": 0}, "acc") == "no per-document outcomes"
