"""Our offline task definitions build exactly the requests lm-eval's own definitions build.

lm-eval's shipped YAML for each task is loaded unchanged except for its data source: the same documents,
converted from the local files to the hub schema, are handed to it through `custom_dataset`. Both tasks then
build their requests with lm-eval's own machinery; the (context, continuation) pairs of every request, and the
metrics each task derives from the same model answers, must be identical.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest

from conftest import DATA_DIR

lm_eval_tasks = pytest.importorskip("lm_eval.tasks")
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

from pruning.evaluation.zeroshot import TaskError, local_task_manager, local_tasks, resolve_task  # noqa: E402

LM_EVAL_TASKS = Path(lm_eval_tasks.__file__).parent
LABELS = "ABCDEFGH"


def _rows(name: str) -> list[dict]:
    with open(DATA_DIR / "zeroshot" / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _arc(rows):
    return [{"id": str(i), "question": r["query"].removeprefix("Question: "),
             "choices": {"text": r["choices"], "label": list(LABELS[: len(r["choices"])])},
             "answerKey": LABELS[r["gold"]]} for i, r in enumerate(rows)]


def _boolq(rows):
    docs = []
    for i, r in enumerate(rows):
        passage, _, question = r["query"].removeprefix("Passage: ").rpartition("\nQuestion: ")
        docs.append({"idx": i, "passage": passage, "question": question.removesuffix("?"), "label": r["gold"]})
    return docs


def _winogrande(rows):
    docs = []
    for r in rows:
        first, second = r["context_options"]
        shared = len(os.path.commonprefix([first, second]))
        cut = first.rfind(" ", 0, shared) + 1  # the blank starts at a word boundary
        docs.append({"sentence": f"{first[:cut]}_ {r['continuation']}", "option1": first[cut:],
                     "option2": second[cut:], "answer": str(r["gold"] + 1)})
    return docs


def _openbookqa(rows):
    return [{"id": str(i), "question_stem": r["query"],
             "choices": {"text": r["choices"], "label": list(LABELS[: len(r["choices"])])},
             "answerKey": LABELS[r["gold"]]} for i, r in enumerate(rows)]


def _lambada(rows):
    return [{"text": f"{r['context']} {r['continuation']}"} for r in rows]


def _hellaswag(rows):
    return [{**r, "label": str(r["label"])} for r in rows]  # the hub stores the label as a string


def _piqa_hub_docs():
    return list(datasets.load_from_disk(str(DATA_DIR / "zeroshot" / "piqa-hf"))["validation"])


# standard task: (lm-eval YAML, local file (None: piqa-hf, already in the hub schema), conversion to the
# hub schema, how many leading documents to compare, which further documents to compare because they are unusual).
# All documents would take minutes: lm-eval compiles each Jinja template anew for every document.
CASES = {
    "arc_easy": ("arc/arc_easy.yaml", "arc_easy.jsonl", _arc, 150, None),
    "arc_challenge": ("arc/arc_challenge.yaml", "arc_challenge.jsonl", _arc, 100, None),
    "boolq": ("super_glue/boolq/default.yaml", "boolq.jsonl", _boolq, 150,
              lambda r: r["query"].count("\nQuestion: ") > 1),
    "piqa": ("piqa/piqa.yaml", None, None, 150, None),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag_val_subset1000.jsonl", _hellaswag, 150,
                  lambda r: "[" in r["ctx"] or any("[" in e for e in r["endings"])),
    "winogrande": ("winogrande/default.yaml", "winogrande.jsonl", _winogrande, 1267, None),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbook_qa.jsonl", _openbookqa, 150, None),
    "lambada_openai": ("lambada/lambada_openai.yaml", "lambada_openai.jsonl", _lambada, 150,
                       lambda r: any(c.isspace() for c in r["continuation"])),
}


def lm_eval_task(yaml_file: str, hub_docs: list[dict]) -> ConfigurableTask:
    """lm-eval's own task definition with its documents supplied in memory instead of from the hub."""
    config = load_yaml(LM_EVAL_TASKS / yaml_file, resolve_func=True)
    splits = {config.get(key) for key in ("training_split", "validation_split", "test_split")} - {None}
    dataset = datasets.DatasetDict({split: datasets.Dataset.from_list(hub_docs) for split in splits})
    config = {k: v for k, v in config.items() if k not in ("tag", "group")}
    config["custom_dataset"] = lambda **_: dataset
    return ConfigurableTask(config=config)


def requests_and_scores(task, indices: list[int]) -> list:
    """Per document: its request (context, continuation) pairs, and the metrics the task derives from
    model answers that favour each choice in turn."""
    task.set_config(key="num_fewshot", value=0)
    task.build_all_requests(samples=indices)
    per_doc: dict[int, list] = {}
    docs = {}
    for instance in task.instances:
        per_doc.setdefault(instance.doc_id, []).append((instance.idx, instance.arguments))
        docs[instance.doc_id] = instance.doc
    out = []
    for doc_id, requests in sorted(per_doc.items()):
        requests.sort()
        doc = docs[doc_id]
        answers = []
        for best in range(len(requests)):
            fake = [(-1.0 if i == best else -3.0 - i, i == best) for i in range(len(requests))]
            answers.append(task.process_results(doc, fake))
        out.append((doc_id, [args for _, args in requests], answers))
    return out


def _scored_split(task) -> str:
    return task.config.test_split if task.has_test_docs() else task.config.validation_split


@pytest.fixture(scope="module")
def local_manager():
    return local_task_manager(DATA_DIR)


@pytest.mark.parametrize("name", sorted(CASES))
def test_local_task_builds_lm_eval_requests(name, local_manager):
    yaml_file, local_file, to_hub, count, unusual = CASES[name]
    rows = None if local_file is None else _rows(local_file)
    hub_docs = _piqa_hub_docs() if rows is None else to_hub(rows)
    indices = sorted(set(range(min(count, len(hub_docs))))
                     | {i for i, r in enumerate(rows or []) if unusual and unusual(r)})
    ours = local_manager.load([local_tasks()[name]])["tasks"][f"{name}_local"]
    theirs = lm_eval_task(yaml_file, hub_docs)
    assert len(ours.eval_docs) == len(theirs.eval_docs) == len(hub_docs)
    mine, reference = requests_and_scores(ours, indices), requests_and_scores(theirs, indices)
    assert len(mine) == len(indices)
    assert mine == reference
    assert ours.OUTPUT_TYPE == theirs.OUTPUT_TYPE
    assert _scored_split(ours) == _scored_split(theirs)
    assert sorted(ours._metric_fn_list) == sorted(theirs._metric_fn_list)


def _gsm8k(rows):
    return [{"question": r["context"], "answer": f"{r['chain_of_thought']}\n#### {r['answer']}"} for r in rows]


def test_local_gsm8k_builds_lm_eval_requests_and_scores(local_manager):
    """Generation task: the same prompts and stop sequences as lm-eval's gsm8k, the same filters and metric,
    so the same generated text scores the same under both filters."""
    rows = _rows("gsm8k.jsonl")
    assert len(rows) == 1319
    ours = local_manager.load([local_tasks()["gsm8k"]])["tasks"]["gsm8k_local"]
    theirs = lm_eval_task("gsm8k/gsm8k.yaml", _gsm8k(rows))
    assert len(ours.eval_docs) == len(theirs.eval_docs) == 1319
    for task in (ours, theirs):
        task.set_config(key="num_fewshot", value=0)
        task.build_all_requests(samples=list(range(100)))
    assert [i.arguments for i in ours.instances] == [i.arguments for i in theirs.instances]
    assert ours.instances[0].arguments[0].startswith("Question: Janet’s ducks lay 16 eggs")
    assert ours.instances[0].arguments[0].endswith("\nAnswer:")
    for key in ("metric_list", "filter_list", "generation_kwargs", "output_type", "repeats", "doc_to_text",
                "doc_to_target"):
        assert getattr(ours.config, key) == getattr(theirs.config, key), key
    assert (ours.config.test_split, ours.config.fewshot_split) == ("test", "test")  # no train split offline
    doc = ours.eval_docs[0]
    assert doc["answer"].endswith("\n#### 18") and doc == theirs.eval_docs[0]
    cases = {" She sells 9 eggs.\n#### 18": {"strict-match": 1.0, "flexible-extract": 1.0},
             " She makes $18.": {"strict-match": 0.0, "flexible-extract": 1.0},
             " #### 17": {"strict-match": 0.0, "flexible-extract": 0.0}}
    for task in (ours, theirs):
        for answer, expected in cases.items():
            scored = {}
            for ensemble in task._filters:
                responses = [[answer]]
                for step in ensemble.filters:
                    responses = step().apply(responses, [doc])
                scored[ensemble.name] = task.process_results(doc, [list(responses)[0]])["exact_match"]
            assert scored == expected, answer


def test_every_local_task_is_compared():
    assert set(local_tasks()) == set(CASES) | {"gsm8k"}


def test_task_names_resolve_to_local_copies_only_with_a_data_dir(monkeypatch):
    monkeypatch.delenv("PRUNING_DATA_DIR", raising=False)
    assert resolve_task("arc_easy_local", data_dir_path=str(DATA_DIR)).lm_eval_name == "arc_easy_local"
    chosen = resolve_task("piqa", data_dir_path=str(DATA_DIR))
    assert (chosen.lm_eval_name, chosen.source) == ("piqa_local", "local")
    with pytest.raises(TaskError, match="needs a data directory"):
        resolve_task("piqa_local")
    with pytest.raises(TaskError, match="no local copy of 'mmlu'"):
        resolve_task("mmlu", source="local", data_dir_path=str(DATA_DIR))
    with pytest.raises(TaskError, match="unknown local task"):
        resolve_task("mmlu_local", data_dir_path=str(DATA_DIR))
