"""Loaders and prompt helpers for the offline copies of the zero-shot tasks (`*_local` task YAMLs).

lm-eval calls `custom_dataset(**metadata, **dataset_kwargs)` when it builds a task; `pruning.evaluation.zeroshot`
passes the data directory as TaskManager metadata (`data_dir`), else `$PRUNING_DATA_DIR` is used. The prompts
themselves live in the YAMLs and follow lm-eval's own task definitions for the same tasks.
"""
from __future__ import annotations

from pathlib import Path

import datasets
# HellaSwag: lm-eval's own preprocessing, reused rather than copied.
from lm_eval.tasks.hellaswag.utils import process_docs as hellaswag_process_docs  # noqa: F401

from pruning.core.data import DataError, data_dir as resolve_data_dir, jsonl_records

BOOLQ_PREFIX = "Passage: "


def local_path(data_dir: str | None, relative: str) -> Path:
    root = resolve_data_dir(data_dir)
    if root is None:
        raise DataError(f"the offline task copy {relative} needs a data directory (--data-dir or $PRUNING_DATA_DIR)")
    path = root / relative
    if not path.exists():
        raise DataError(f"{path} not found: the data directory must have the layout of shared/data ({relative})")
    return path


def load_jsonl(data_dir: str | None = None, local_file: str = "", local_split: str = "test",
               local_fields: tuple[str, ...] | list[str] = (), **_) -> datasets.DatasetDict:
    """One split from a JSON-lines file, every row checked for the fields the task's prompt reads."""
    path = local_path(data_dir, local_file)
    with open(path, encoding="utf-8") as handle:
        rows = [row for _, row in jsonl_records(path, handle, tuple(local_fields))]
    if not rows:
        raise DataError(f"{path} holds no documents")
    return datasets.DatasetDict({local_split: datasets.Dataset.from_list(rows)})


def load_saved(data_dir: str | None = None, local_file: str = "", **_) -> datasets.DatasetDict:
    """A `datasets.save_to_disk` copy (same schema and splits as the hub dataset)."""
    return datasets.load_from_disk(str(local_path(data_dir, local_file)))


def boolq_doc_to_text(doc: dict) -> str:
    """lm-eval's boolq prompt "{passage}\\nQuestion: {question}?\\nAnswer:" from the local query
    "Passage: {passage}\\nQuestion: {question}?"."""
    query = doc["query"]
    if not query.startswith(BOOLQ_PREFIX):
        raise DataError(f"boolq query does not start with {BOOLQ_PREFIX!r}: {query[:60]!r}")
    return query[len(BOOLQ_PREFIX):] + "\nAnswer:"


def gsm8k_process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """The hub's GSM8K schema from the local fields: question, and answer "<reasoning>\\n#### <number>" (what
    lm-eval's gsm8k prompt, target and "#### " filter read)."""
    return dataset.map(lambda doc: {"question": doc["context"],
                                    "answer": f"{doc['chain_of_thought']}\n#### {doc['answer']}"},
                       remove_columns=dataset.column_names)
