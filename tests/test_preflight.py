"""The one pre-flight (pruning/preflight.py): a run request's every problem found together, before any weight
is loaded, each naming its key; `check` raises the first as the front doors always did; and the workflow's
config check, which runs it on every grid row (each case once ran only through Snakemake)."""
from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import yaml
from snakemake.utils import validate

import pruning.api as api
from pruning.core.adapters import UnsupportedArchitecture
from pruning.core.data import DataError
from pruning.core.protocols import Calibration, Evaluation
from pruning.core.sparse_formats import SaveFormatError
from pruning.preflight import MODEL_CONFIG, RunRequest, check, problems, survey, workflow_config_problems, workflow_schema

from conftest import DATA_DIR, REPO, STORIES, TINY_WORKFLOW_CONFIG

MOE_CONFIG = {"model_type": "mixtral", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 256, "vocab_size": 512,
              "num_local_experts": 4, "num_experts_per_tok": 2}


@pytest.fixture
def no_loading(monkeypatch):
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))


def test_every_problem_of_a_request_together_without_loading(tmp_path, no_loading):
    request = RunRequest(str(STORIES), "wanda", {"sparsity": 0.5},
                         calibration=Calibration("no/such/file.jsonl", nsamples=0, seqlen=600, batch_size=0),
                         evaluation=Evaluation(seqlen=1024), output_dir=tmp_path / "out",
                         save_format="sparse-24-bitmask", recovery={"steps": 2, "bogus": 1}, device="cpu")
    found = {problem.key: problem.message for problem in problems(request)}
    assert set(found) == {"save_format", "calibration.batch_size", "recovery", "calibration.source",
                          "calibration.nsamples", "calibration.seqlen", "evaluation.seqlen"}, found
    assert found["calibration.batch_size"] == "batch_size must be a whole number >= 1, got 0"
    assert found["calibration.seqlen"].startswith("--seqlen 600 exceeds the 512 positions of the model")
    assert found["evaluation.seqlen"].startswith("--eval-seqlen 1024 exceeds the 512 positions")
    with pytest.raises(SaveFormatError, match="stores 2:4 sparsity only"):  # the first, as api.prune raises it
        check(request)
    with pytest.raises(SaveFormatError):
        api.prune(str(STORIES), "wanda", tmp_path / "out", calib="no/such/file.jsonl", nsamples=0, seqlen=600,
                  batch_size=0, evaluate=True, eval_seqlen=1024, save_format="sparse-24-bitmask", device="cpu",
                  sparsity=0.5)
    assert not (tmp_path / "out").exists()


def test_a_sound_request_returns_what_the_run_needs(tmp_path):
    checked = check(RunRequest(str(STORIES), "magnitude", {"sparsity": 0.5}, output_dir=tmp_path / "out",
                               calibration=Calibration(seqlen=64), device="cpu", data_dir=str(DATA_DIR)))
    assert checked.method.name == "magnitude" and checked.path == STORIES.resolve()
    assert checked.config["num_hidden_layers"] == 5 and checked.memory.mode == "in-memory"
    assert checked.recovery.steps == 0


def test_plans_from_the_layer_count_before_loading(tmp_path, no_loading):
    """depth and layers plan against config.json's layer count in the pre-flight, not after the load."""
    with pytest.raises(ValueError, match="depth: removing 8 of 5 layers would leave none"):
        api.prune(str(STORIES), "depth", tmp_path / "out", num_blocks=8, calib="c4", nsamples=2, seqlen=32,
                  device="cpu", data_dir_path=str(DATA_DIR))


@pytest.mark.parametrize("method,options", [("heads", {"fraction": 0.25}), ("two_stage", {"prune_rate": 0.2}),
                                            ("all", {"head_fraction": 0.25})])
def test_moe_refused_from_a_config_alone(method, options):
    found = survey(RunRequest("tinymoe", method, options, calibration=Calibration(seqlen=64), device=None, dtype=None),
                   model_config=MOE_CONFIG)
    assert [p.key for p in found.problems] == [MODEL_CONFIG]
    assert isinstance(found.problems[0].error, UnsupportedArchitecture)
    assert "mixture-of-experts model type 'mixtral'" in found.problems[0].message
    assert not survey(RunRequest("tinymoe", "wanda", {"sparsity": 0.5}, calibration=Calibration(seqlen=64), device=None,
                                 dtype=None),
                      model_config=MOE_CONFIG).problems


def test_pruner_refuses_through_the_pre_flight(tmp_path):
    from pruning import Pruner

    with pytest.raises(DataError, match="unknown calibration source"):
        Pruner(STORIES, calib="no/such/file.jsonl", device="cpu")
    with pytest.raises(ValueError, match="eval_max_windows must be a whole number >= 1, got 0"):
        Pruner(STORIES, eval_max_windows=0, device="cpu")


# ---- the workflow's config: every grid row through the pre-flight, problems named by config key ---------

TINY = TINY_WORKFLOW_CONFIG


def workflow_problems(mutate, tmp_path) -> list[str]:
    """The config's problems as the workflow finds them: the schema (method rules from the registry) fills
    the defaults, then `workflow_config_problems`."""
    config = copy.deepcopy(TINY)
    mutate(config)
    schema = tmp_path / "schema.yaml"
    schema.write_text(yaml.safe_dump(workflow_schema(yaml.safe_load(
        (REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()))))
    validate(config, schema=str(schema))
    return workflow_config_problems(config, REPO, jobs_run_here=False, jobs_have_own_env=True)


BAD_CONFIGS = {
    "N not below M": (lambda c: c["methods"]["wanda"]["ratios"].update(nm=["4:2"]),
                      "config.methods.wanda.ratios.nm[0]: wanda: nm: N:M pattern needs integers 1 <= N < M "
                      "(N kept out of every M), got 4:2"),
    "unknown model in subset": (lambda c: c["methods"]["wanda"].update(models=["gpt-5"]),
                                "config.methods.wanda.models[0]: 'gpt-5' is not a model in models"),
    "ppl_only value not a ratio": (lambda c: c["methods"]["wanda"].update(ppl_only=[0.6]),
                                   "config.methods.wanda.ppl_only[0]: 0.6 is not one of the entry's ratios"),
    "three decimals": (lambda c: c["methods"]["wanda"]["ratios"].update(sparsity=[0.525]),
                       "config.methods.wanda.ratios.sparsity[0]: 0.525 has more than two decimals"),
    "unknown protocol": (lambda c: c.update(protocol="slow"), "config.protocol: 'slow' is not one of the presets"),
    "missing model directory": (lambda c: c["models"].update(ghost="./no/such/model"), "config.models.ghost: "),
    "2:4 layout on an unstructured row": (lambda c: c.update(save_format="sparse-24-bitmask"),
                                          "config.methods.magnitude.ratios.sparsity[0]: save format sparse-24-bitmask "
                                          "stores 2:4 sparsity only"),
    "bad option value": (lambda c: c["methods"]["magnitude"].update(options={"per": "banana"}),
                         re.compile(r"config\.methods\.magnitude\.options: magnitude: per .*'banana'")),
    "option repeating a ratio": (lambda c: c["methods"].update(combined={"method": "all", "ratios": {"sparsity": [0.5]},
                                                                         "options": {"sparsity": 0.3}}),
                                 "config.methods.combined.options.sparsity: sparsity is already given in ratios"),
    "search on more windows than calibrated": (
        lambda c: c["methods"].update(quark={"method": "depth", "ratios": {"num_blocks": [1]},
                                             "options": {"criterion": "perplexity", "search_windows": 9}}),
        "config.methods.quark.options: depth: search_windows 9 is more than the 8 calibration windows (nsamples)"),
    "missing calibration file": (lambda c: c["protocols"]["tiny"]["calibration"].update(source="no/such/calib.jsonl"),
                                 f"config.protocols.tiny.calibration.source: unknown calibration source "
                                 f"'{REPO / 'no/such/calib.jsonl'}'"),
    "unknown zero-shot task": (lambda c: c.update(zeroshot={"tasks": ["arc_easy", "nosuchtask"]}),
                               "config.zeroshot.tasks[1]: unknown task 'nosuchtask': not an lm-eval task or group"),
    "malformed hub id": (lambda c: c["models"].update(qwen="Qwen/Qwen2.5 0.5B"),
                         "config.models.qwen: model 'Qwen/Qwen2.5 0.5B' not found"),
    "evaluation windows longer than the model": (
        lambda c: c["protocols"]["tiny"]["evaluation"].update(seqlen=1024),
        "config.protocols.tiny.evaluation.seqlen 1024 exceeds the 512 positions of the model stories260K"),
    "calibration windows longer than the model": (
        lambda c: c["protocols"]["tiny"]["calibration"].update(seqlen=600),
        "config.protocols.tiny.calibration.seqlen 600 exceeds the 512 positions of the model stories260K"),
    "recovery windows longer than the model": (
        lambda c: c["methods"]["wanda"].update(recovery={"steps": 2, "seqlen": 600}),
        "config.methods.wanda.recovery.seqlen 600 exceeds the 512 positions of the model stories260K"),
    "bad recovery setting": (lambda c: c["methods"]["wanda"].update(recovery={"steps": 2, "data": "no/such/file.jsonl"}),
                             "config.methods.wanda.recovery: "),
    "shots for a task not run": (lambda c: c.update(zeroshot={"tasks": ["winogrande"], "num_fewshot": {"winogrand": 5}}),
                                 "config.zeroshot.num_fewshot: 'winogrand' not in zeroshot.tasks (winogrande)"),
    "GGUF speed type without a gguf section": (lambda c: c.update(speed={"enabled": True, "gguf_outtype": "q4_0"}),
                                               "config.speed.gguf_outtype: 'q4_0' is not listed in gguf.outtypes"),
    "stage for an unknown model": (lambda c: c.update(zeroshot={"tasks": ["boolq"], "models": ["stories"]}),
                                   "config.zeroshot.models[0]: 'stories' is not a model in models (stories260K)"),
    "llama.cpp timing of rows not converted": (
        lambda c: c.update(gguf={"outtypes": ["f16"], "models": []}, speed={"enabled": True, "gguf_outtype": "f16"}),
        "config.speed.gguf_outtype: the rows of stories260K are timed in llama.cpp but not converted to GGUF "
        "(add them to gguf.models)"),
    "max_memory not a size": (lambda c: c.update(max_memory="plenty"), "config.max_memory: --max-memory 'plenty'"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_named_by_its_key(case, tmp_path):
    mutate, expected = BAD_CONFIGS[case]
    found = workflow_problems(mutate, tmp_path)
    text = "\n".join(found)
    assert (expected.search(text) if isinstance(expected, re.Pattern) else expected in text), found


def test_every_row_s_problems_together(tmp_path):
    """A MoE model beside the tiny one: heads is refused on the MoE model's row, depth on both models'
    rows it cannot plan, the evaluation length on both models, all in one list."""
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps(MOE_CONFIG))

    def mutate(c):
        c["models"]["tinymoe"] = str(moe)
        c["methods"]["heads"] = {"method": "heads", "ratios": {"fraction": [0.25]}, "models": ["tinymoe"]}
        c["methods"]["depth"] = {"method": "depth", "ratios": {"num_blocks": [2, 8]}}
        c["protocols"]["tiny"]["evaluation"]["seqlen"] = 300

    found = workflow_problems(mutate, tmp_path)
    assert found[0] == "config.protocols.tiny.evaluation.seqlen 300 exceeds the 256 positions of the model tinymoe " \
                       "(max_position_embeddings in config.json)"
    assert any(line.startswith("config.methods.heads.ratios.fraction[0]: heads cannot prune mixture-of-experts model "
                               "type 'mixtral'") and line.endswith("(model tinymoe)") for line in found), found
    assert "config.methods.depth.ratios.num_blocks[0]: depth: removing 2 of 2 layers would leave none " \
           "(model tinymoe)" in found
    assert "config.methods.depth.ratios.num_blocks[1]: depth: removing 8 of 5 layers would leave none " \
           "(model stories260K)" in found
    assert len(found) == 5, found


def test_a_sound_config_has_no_problems(tmp_path):
    assert workflow_problems(lambda c: None, tmp_path) == []


def test_local_model_files_read_as_a_prune_reads_them(tmp_path):
    """A local model's config.json that is not JSON, or a safetensors file cut short, is refused by the
    workflow's pre-flight, naming the model's key and the file, as `prune` refuses it before loading."""
    broken_config, truncated = tmp_path / "broken-config", tmp_path / "truncated"
    for folder in (broken_config, truncated):
        shutil.copytree(STORIES, folder)
    (broken_config / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    (truncated / "model.safetensors").write_bytes((STORIES / "model.safetensors").read_bytes()[:1000])
    found = workflow_problems(lambda c: c["models"].update(broken=str(broken_config), cut=str(truncated)), tmp_path)
    assert found == [
        f"config.models.broken: {broken_config}/config.json: not valid JSON (Expecting property name enclosed in "
        "double quotes at line 2 column 21)",
        f"config.models.cut: {truncated}/model.safetensors: not a valid safetensors file (header length 4856 does "
        "not fit its 1000 bytes; truncated or another format)"]


def test_calibration_documents_counted_with_each_local_tokenizer(tmp_path):
    """A calibration file with fewer tokens than one window is the prune job's own refusal, made by the
    pre-flight with the tokenizer of each local model a calibrating method prunes; magnitude alone does not
    calibrate, and a model without a local tokenizer is left to its job."""
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("tiny\n")

    def source(c):
        c["protocols"]["tiny"]["calibration"]["source"] = str(tiny)

    assert workflow_problems(source, tmp_path) == [
        f"config.protocols.tiny.calibration.source: calibration source '{tiny}' has only 4 tokens, fewer than "
        "seqlen=64 (model stories260K)"]
    assert workflow_problems(lambda c: (source(c), c["methods"].pop("wanda")), tmp_path) == []
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((STORIES / "config.json").read_text())
    assert workflow_problems(lambda c: (source(c), c.update(models={"bare": str(no_tokenizer)})), tmp_path) == []
