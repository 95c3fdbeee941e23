"""zeroshot runs: the result file's schema and provenance, the same numbers lm-eval gets when it loads the model
directory itself, pruned heterogeneous models, and bad inputs rejected before the model loads, without output."""
from __future__ import annotations

import hashlib
import json

import pytest

from conftest import DATA_DIR

lm_eval = pytest.importorskip("lm_eval")

from pruning.cli import main  # noqa: E402
from pruning.evaluation import zeroshot as zeroshot_module  # noqa: E402
from pruning.evaluation.zeroshot import load_task, resolve_task, zeroshot  # noqa: E402


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zeroshot_command_writes_one_complete_result(stories_dir, tmp_path):
    out = tmp_path / "metrics" / "zeroshot-arc_easy.json"
    assert main(["zeroshot", "--model", str(stories_dir), "--task", "arc_easy", "--output", str(out), "--limit", "8",
                 "--batch-size", "4", "--device", "cpu", "--data-dir", str(DATA_DIR), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert (result["task"], result["lm_eval_task"]) == ("arc_easy", "arc_easy_local")
    assert set(result["metrics"]) == {"acc", "acc_norm"}
    for metric in result["metrics"].values():
        assert 0.0 <= metric["value"] <= 1.0
        assert metric["value"] * 8 == pytest.approx(round(metric["value"] * 8))  # a count of 8 documents
        assert metric["stderr"] is not None and 0.0 <= metric["stderr"] <= 0.5
    assert (result["n_docs"], result["n_docs_total"], result["limit"], result["num_fewshot"]) == (8, 2376, 8, 0)
    source = result["source"]
    local_file = DATA_DIR / "zeroshot" / "arc_easy.jsonl"
    assert source["kind"] == "local" and source["mirrors"] == "arc_easy" and source["split"] == "test"
    assert source["files"] == [{"path": str(local_file), "bytes": local_file.stat().st_size,
                                "sha256": _sha256(local_file)}]
    assert result["task_config"]["doc_to_text"] == "{{query}}\nAnswer:"
    assert (result["dtype"], result["device"], result["batch_size"]) == ("float32", "cpu", 4)
    assert result["lm_eval_version"] == lm_eval.__version__ == "0.4.13"
    assert result["parameters"] == {"total": 260_032, "nonzero": 260_032}
    assert {"torch", "transformers", "pruning"} <= set(result["versions"])
    assert result["model"] == {"spec": str(stories_dir), "path": str(stories_dir.resolve()), "model_type": "llama"}
    assert result["wall_seconds"] > 0 and "git_commit" in result
    throughput = result["throughput"]
    assert throughput["loglikelihood"]["requests"] >= 3 * 8  # three to five choices per question
    assert throughput["loglikelihood"]["tokens_per_s"] > 0 and throughput["generate_until"]["requests"] == 0
    check_per_document(result, "arc_easy_local", 8)


def check_per_document(result: dict, leaf: str, n_docs: int) -> None:
    """The per-document record (pruning.evaluation.per_item) reproduces lm-eval's figures: each metric's mean
    and stderr, and for multiple choice acc = (the best-scored answer is the gold one)."""
    import numpy as np

    from pruning.core.statistics import mean_se
    from pruning.evaluation.per_item import chance, documents

    record = result["per_document"][leaf]
    assert record["doc_id"] == list(range(n_docs)) and len(record["documents_sha256"]) == 64
    assert set(record["values"]) == set(result["metrics"]) - {"perplexity"}  # the mean-aggregated metrics
    for metric, values in record["values"].items():
        estimate = mean_se(values)
        assert estimate.mean == pytest.approx(result["metrics"][metric]["value"], abs=1e-12)
        assert estimate.se == pytest.approx(result["metrics"][metric]["stderr"], abs=1e-12)
        assert documents(result, metric).keys == [(leaf, d) for d in range(n_docs)]
    if record["output_type"] == "multiple_choice":
        picked = [int(np.argmax(answers)) for answers in record["loglikelihoods"]]
        assert record["values"]["acc"] == [int(p == g) for p, g in zip(picked, record["gold"])]
        options = [len(answers) for answers in record["loglikelihoods"]]
        assert chance(documents(result, "acc")) == pytest.approx(np.mean([1 / k for k in options]))
    else:
        assert "loglikelihoods" not in record and chance(documents(result, next(iter(record["values"])))) == 0.0


@pytest.mark.slow
def test_our_model_object_scores_what_lm_eval_scores_loading_the_directory(stories_dir):
    """Same task object, same documents: passing our loaded model gives lm-eval's own numbers exactly."""
    ours = zeroshot(str(stories_dir), "lambada_openai", limit=12, batch_size=4, device="cpu", quiet=True,
                    data_dir_path=str(DATA_DIR))
    manager, task, _ = load_task(resolve_task("lambada_openai", data_dir_path=str(DATA_DIR)))
    reference = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(stories_dir), "dtype": "float32"},
                                        device="cpu", batch_size=4, tasks=[task], task_manager=manager, limit=12,
                                        num_fewshot=0, log_samples=False)["results"]["lambada_openai_local"]
    assert ours["metrics"]["perplexity"]["value"] == pytest.approx(reference["perplexity,none"], rel=1e-6)
    assert ours["metrics"]["acc"]["value"] == reference["acc,none"]
    assert ours["metrics"]["perplexity"]["value"] > 1.0  # perplexity is the one metric not in [0, 1]


@pytest.mark.slow
def test_zeroshot_runs_a_heterogeneous_pruned_model(stories_dir, tmp_path):
    import pruning

    pruned = tmp_path / "two_stage"
    pruning.prune(str(stories_dir), "two_stage", pruned, prune_rate=0.2, nsamples=4, seqlen=64, device="cpu",
                  progress=False)
    result = zeroshot(str(pruned), "piqa", limit=6, device="cpu", quiet=True)
    assert result["model"]["model_type"] == "pruning_heterogeneous"
    assert result["model"]["pruning"]["method"] == "two_stage"
    assert result["parameters"]["total"] < 260_032
    assert result["n_docs"] == 6 and 0.0 <= result["metrics"]["acc"]["value"] <= 1.0


@pytest.mark.slow
def test_unknown_task_fails_before_the_model_loads_and_keeps_a_good_result(stories_dir, tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "zeroshot.json"
    out.write_text('{"good": true, "versions": {"pruning": "0.1"}}\n')  # an earlier result of ours

    def no_model(*_, **__):
        raise AssertionError("the model must not be loaded for a bad task")

    monkeypatch.setattr(zeroshot_module, "load_model", no_model)
    assert main(["zeroshot", "--model", str(stories_dir), "--task", "arc_eazy", "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert "unknown task 'arc_eazy'" in error and "arc_easy" in error  # names the close match
    assert out.read_text() == '{"good": true, "versions": {"pruning": "0.1"}}\n'


def test_an_unreachable_hub_is_reported_before_the_model_loads(stories_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(zeroshot_module, "load_model", lambda *_, **__: pytest.fail("model loaded"))
    out = tmp_path / "zeroshot.json"
    assert main(["zeroshot", "--model", str(stories_dir), "--task", "arc_easy", "--source", "hub",
                 "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert "could not load the documents of task 'arc_easy' from the Hugging Face hub" in error
    assert "arc_easy" in error.split("use a local copy")[1]
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--task", "mmlu_local"], "unknown local task 'mmlu_local'"),
    (["--task", "mmlu", "--source", "local"], "no local copy of 'mmlu'"),
    (["--task", "piqa", "--limit", "0"], "limit must be a whole number"),
    (["--task", "piqa", "--num-fewshot", "-1"], "num_fewshot must be a whole number >= 0"),
    (["--task", "piqa", "--data-dir", "/nonexistent/data"], "does not exist"),
])
def test_bad_zeroshot_arguments_fail_without_output(stories_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "zeroshot.json"
    assert main(["zeroshot", "--model", str(stories_dir), "--output", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_model_dir_without_weights_fails_without_output(stories_dir, tmp_path, capsys):
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.json").write_text((stories_dir / "config.json").read_text())
    out = tmp_path / "zeroshot.json"
    assert main(["zeroshot", "--model", str(empty), "--task", "piqa", "--output", str(out)]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    assert not out.exists()


def test_a_missing_local_file_is_reported_before_the_model_loads(stories_dir, tmp_path, capsys, monkeypatch):
    partial = tmp_path / "data"
    (partial / "zeroshot").mkdir(parents=True)
    monkeypatch.setattr(zeroshot_module, "load_model", lambda *_, **__: pytest.fail("model loaded"))
    out = tmp_path / "zeroshot.json"
    assert main(["zeroshot", "--model", str(stories_dir), "--task", "boolq", "--output", str(out),
                 "--data-dir", str(partial)]) == 2
    assert "zeroshot/boolq.jsonl not found" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_local_gsm8k_generates_and_scores_exact_match(stories_dir):
    """GSM8K offline: generation scored by lm-eval's exact match under both of its filters, few-shot examples
    from the test split (the only one the local copy has), recorded."""
    result = zeroshot(str(stories_dir), "gsm8k", limit=2, num_fewshot=1, device="cpu", quiet=True,
                      data_dir_path=str(DATA_DIR))
    assert (result["lm_eval_task"], result["source"]["kind"], result["source"]["mirrors"]) == ("gsm8k_local", "local", "gsm8k")
    assert set(result["metrics"]) == {"exact_match,strict-match", "exact_match,flexible-extract"}
    for metric in result["metrics"].values():
        assert metric["value"] * 2 == round(metric["value"] * 2)  # a count of 2 problems
    assert (result["n_docs"], result["n_docs_total"], result["num_fewshot"]) == (2, 1319, 1)
    assert result["fewshot_split"] == {"gsm8k_local": "test"}
    assert result["task_config"]["output_type"] == "generate_until"
    assert result["task_config"]["doc_to_text"] == "Question: {{question}}\nAnswer:"
    check_per_document(result, "gsm8k_local", 2)


@pytest.mark.parametrize("task,num_fewshot", [("arc_easy", 0), ("boolq", 0), ("hellaswag", 0), ("winogrande", 5),
                                              ("piqa", 0), ("lambada_openai", 0)])
def test_faster_scorings_give_lm_evals_loglikelihoods(stories_dir, task, num_fewshot):
    """ScoringLM's packed rows (a document's shared prefix once) and continuation-only logits against lm-eval's
    own scoring of every position, same model object: the same log-likelihood (1e-5 relative) and greedy flag
    for every request, so the same accuracies; multi-token continuations (arc, hellaswag, piqa), one-token ones
    sharing a context (boolq), partial-context scoring after five shots (winogrande) and one request per document
    (lambada) included. Packing computes fewer tokens than lm-eval feeds whenever a document has several
    requests; the throughput counts every request's tokens."""
    from pruning.evaluation.scoring_lm import ScoringLM
    from pruning.core.modeling import load_model

    net, tokenizer = load_model(stories_dir, dtype="float32", device="cpu")
    manager, task_object, _ = load_task(resolve_task(task, data_dir_path=str(DATA_DIR)))
    runs = {}
    for scoring in ("lm-eval", "continuations", "packed"):
        lm = ScoringLM(pretrained=net, tokenizer=tokenizer, backend="causal", batch_size=5, device="cpu",
                       scoring=scoring)
        evaluated = lm_eval.simple_evaluate(model=lm, tasks=[task_object], task_manager=manager, limit=7,
                                            num_fewshot=num_fewshot, log_samples=True, **zeroshot_module.SEEDS)
        samples = next(iter(evaluated["samples"].values()))
        runs[scoring] = ([response[0] for sample in samples for response in sample["resps"]],
                         evaluated["results"], lm.throughput()["loglikelihood"])
    reference, reference_results, reference_count = runs["lm-eval"]
    for scoring in ("continuations", "packed"):
        ours, results, count = runs[scoring]
        assert len(ours) == len(reference) == count["requests"] >= 7
        for (ll, greedy), (ll_ref, greedy_ref) in zip(ours, reference):
            assert ll == pytest.approx(ll_ref, rel=1e-5, abs=1e-5) and greedy == greedy_ref
        for name, metrics in reference_results.items():  # every metric and stderr (lambada's perplexity: 1e-5)
            assert results[name].keys() == metrics.keys()
            for key, value in metrics.items():
                assert results[name][key] == (pytest.approx(value, rel=1e-5) if "perplexity" in key else value), key
        assert count["tokens"] == reference_count["tokens"] > count["requests"] and count["tokens_per_s"] > 0
    packed = runs["packed"][2]
    assert packed["scoring"] == "packed"
    if packed["requests"] > 7:  # several requests per document share their prefix
        assert packed["computed_tokens"] < packed["tokens"]
    else:
        assert packed["computed_tokens"] == packed["tokens"]


def test_packed_scoring_of_a_structured_pruned_model(stories_dir, tmp_path):
    """A two-stage pruned model (heterogeneous layers: FFN and attention sub-blocks removed) is scored packed by
    default, with lm-eval's log-likelihoods."""
    import pruning
    from pruning.evaluation.scoring_lm import ScoringLM
    from pruning.core.modeling import load_model

    pruning.prune(str(stories_dir), "two_stage", tmp_path / "two-stage", prune_rate=0.25, nsamples=4, seqlen=64,
                  data_dir_path=str(DATA_DIR), device="cpu", progress=False)
    net, tokenizer = load_model(tmp_path / "two-stage", dtype="float32", device="cpu")
    manager, task_object, _ = load_task(resolve_task("hellaswag", data_dir_path=str(DATA_DIR)))
    answers = {}
    for scoring in ("lm-eval", None):
        lm = ScoringLM(pretrained=net, tokenizer=tokenizer, backend="causal", batch_size=8, device="cpu",
                       scoring=scoring)
        evaluated = lm_eval.simple_evaluate(model=lm, tasks=[task_object], task_manager=manager, limit=5,
                                            log_samples=True, **zeroshot_module.SEEDS)
        samples = next(iter(evaluated["samples"].values()))
        answers[lm.scoring] = [response[0] for sample in samples for response in sample["resps"]]
    assert set(answers) == {"lm-eval", "packed"} and len(answers["packed"]) == 20
    for (ll, greedy), (ll_ref, greedy_ref) in zip(answers["packed"], answers["lm-eval"]):
        assert ll == pytest.approx(ll_ref, rel=1e-5, abs=1e-5) and greedy == greedy_ref


def test_packed_rows_keep_requests_apart():
    """The packed layout on a hand-made document: the shared prefix once, positions restarting after it, each
    request seeing the prefix and itself only, padding seeing something (no empty softmax row), and each
    continuation token read from the position that precedes it."""
    from pruning.evaluation.scoring_lm import PackedDocument, packed_batch

    document = PackedDocument([[1, 2, 3, 7, 8], [1, 2, 3, 9]], [2, 1])  # contexts [1, 2, 3], continuations
    assert document.tokens == [1, 2, 3, 7]  # the prefix 1 2 3 once; request 0 feeds 7, request 1 nothing more
    assert document.positions == [0, 1, 2, 3]
    assert document.targets == [[(2, 7), (3, 8)], [(2, 9)]]
    short = PackedDocument([[5, 6]], [1])
    ids, positions, mask = packed_batch([document, short], "cpu")
    assert ids.tolist() == [[1, 2, 3, 7], [5, 0, 0, 0]]
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert mask[0, 0].int().tolist() == expected
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    two_branches = PackedDocument([[1, 2, 4, 5], [1, 2, 6, 7]], [1, 1])
    assert two_branches.tokens == [1, 2, 4, 6] and two_branches.positions == [0, 1, 2, 2]
    _, _, mask = packed_batch([two_branches], "cpu")
    assert mask[0, 0, 3].int().tolist() == [1, 1, 0, 1]  # request 1 sees the prefix and itself, not request 0
    assert two_branches.targets == [[(2, 5)], [(3, 7)]]


def test_continuation_logits_without_logits_to_keep_are_the_same(stories_dir):
    """A model whose forward takes no logits_to_keep gets its full logits cut to the same positions."""
    import torch

    from pruning.evaluation.scoring_lm import ScoringLM
    from pruning.core.modeling import load_model

    net, tokenizer = load_model(stories_dir, dtype="float32", device="cpu")
    lm = ScoringLM(pretrained=net, tokenizer=tokenizer, backend="causal", batch_size=2, device="cpu")
    batch = torch.randint(3, 512, (2, 12))
    kept = lm._continuation_logits(batch, 7)
    lm.keeps_logits = False
    assert kept.shape == (2, 5, 512) and torch.allclose(lm._continuation_logits(batch, 7), kept, atol=1e-6)


def test_prefix_tree_size_counts_distinct_prefixes():
    from pruning.evaluation.scoring_lm import prefix_tree_size

    assert prefix_tree_size([[1, 2, 3], [1, 2, 4], [1, 5]]) == 5  # 1, 12, 123, 124, 15
    assert prefix_tree_size([[1, 2], [1, 2]]) == 2 and prefix_tree_size([[7]]) == 1
