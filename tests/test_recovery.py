"""Recovery fine-tuning (LoRA through peft, merged back) after any method, and the methods that prune and
fine-tune in rounds (gradual, iterative): in-domain loss goes down on text never trained on, pruned weights
stay exactly zero, the saved directory is a plain model with the same logits, the evaluation split is refused,
the rounds end exactly at the target sparsity; the CLI, the API and a workflow config accept it."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import pruning
from pruning.core import heterogeneous
from pruning.cli import main as cli_main
from pruning.core.token_windows import token_windows, windows_nll
from pruning.methods import MethodError, PruneContext
from pruning.training.recovery_options import (RecoverySettings, cubic_schedule, geometric_schedule, linear_schedule,
                                        sparsity_schedule)
from pruning.core.modeling import load_model, save_model
from pruning.training.recovery import load_recovery_data, recover, recovery_documents

from test_workflow import TINY_CONFIG, pruning_commands, snakemake

CPU = torch.device("cpu")


def settings_for(text_file, **overrides) -> RecoverySettings:
    return RecoverySettings.parse({"steps": 20, "seqlen": 64, "lr": 2e-3, "data": str(text_file), **overrides})


def context(model, tokenizer, **extras) -> PruneContext:
    return PruneContext(model=model, tokenizer=tokenizer, adapter=pruning.get_adapter(model), device=CPU,
                        progress=False, extras=extras)


@torch.no_grad()
def text_loss(model, tokenizer, path, seqlen=64) -> float:
    nll, tokens = windows_nll(model, token_windows(tokenizer, path.read_text(), seqlen), batch_size=8)
    return nll / tokens


def zeros_of(model) -> dict[str, torch.Tensor]:
    return {name: (p == 0).clone() for name, p in model.named_parameters() if (p == 0).any()}


def linear_zero_count(model) -> tuple[int, int]:
    adapter = pruning.get_adapter(model)
    modules = [m for i in range(adapter.num_layers(model)) for m in adapter.linear_targets(model, i).values()]
    return sum(int((m.weight == 0).sum()) for m in modules), sum(m.weight.numel() for m in modules)


# ---- schedules ------------------------------------------------------------------------------------------

def test_schedules_rise_to_exactly_the_target():
    assert cubic_schedule(0.8, 4) == pytest.approx([0.8 * (1 - 0.75 ** 3), 0.8 * (1 - 0.5 ** 3), 0.8 * (1 - 0.25 ** 3), 0.8])
    assert linear_schedule(0.6, 3) == pytest.approx([0.2, 0.4, 0.6])
    geometric = geometric_schedule(0.75, 2)
    assert geometric == pytest.approx([0.5, 0.75])  # half of what is left, twice
    for kind in ("cubic", "linear", "geometric"):
        for target in (0.5, 0.7, 0.9):
            schedule = sparsity_schedule(kind, target, 5)
            assert schedule[-1] == target and schedule == sorted(schedule) and schedule[0] > 0
    assert sparsity_schedule("cubic", 0.7, 1) == [0.7]
    with pytest.raises(ValueError, match="target"):
        sparsity_schedule("cubic", 1.0, 3)


# ---- recovery itself --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def magnitude_pruned(stories_dir):
    model, tokenizer = load_model(stories_dir)
    pruning.build_method("magnitude", sparsity=0.5).prune(context(model, tokenizer))
    return model, tokenizer


@pytest.mark.slow
def test_recovery_lowers_heldout_loss_and_keeps_every_zero(magnitude_pruned, stories_text, tmp_path):
    pruned, tokenizer = magnitude_pruned
    model = copy.deepcopy(pruned)
    settings = settings_for(stories_text["calibration"])
    masks = zeros_of(model)
    zeros_before = linear_zero_count(model)
    unseen_before = text_loss(model, tokenizer, stories_text["evaluation"])
    data = load_recovery_data(tokenizer, settings, recovery_documents(settings), seed=0)
    record = recover(model, pruning.get_adapter(model), data, settings, CPU, seed=0, progress=False)

    assert record["steps"] == 20 and record["masked_modules"] == record["lora_modules"] == 35
    assert record["loss_after"] < record["loss_before"] - 0.05, record
    unseen_after = text_loss(model, tokenizer, stories_text["evaluation"])  # another in-domain text, never trained on
    assert unseen_after < unseen_before - 0.05, (unseen_before, unseen_after)
    assert linear_zero_count(model) == zeros_before  # exact count
    for name, parameter in model.named_parameters():
        if name in masks:
            assert torch.equal(parameter == 0, masks[name]), name  # the same zeros, no new ones
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, dict(pruned.named_parameters())[name])]
    assert changed and all("proj" in name for name in changed)  # only the adapted linears moved
    assert all(p.requires_grad for p in model.parameters())  # as loaded

    out = tmp_path / "recovered"
    save_model(model, tokenizer, out)
    assert not list(out.glob("adapter*")) and "peft" not in (out / "config.json").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = data.heldout[:2]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


@pytest.mark.slow
def test_recovery_is_deterministic_for_a_seed(magnitude_pruned, stories_text):
    pruned, tokenizer = magnitude_pruned
    settings = settings_for(stories_text["calibration"], steps=4)
    data = load_recovery_data(tokenizer, settings, recovery_documents(settings), seed=3)
    first, second = copy.deepcopy(pruned), copy.deepcopy(pruned)
    for model in (first, second):
        recover(model, pruning.get_adapter(model), data, settings, CPU, seed=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert not torch.equal(first.state_dict()["model.layers.0.self_attn.q_proj.weight"],
                           pruned.state_dict()["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.slow
def test_structured_heterogeneous_model_recovers_as_it_is(stories_dir, stories_text, tmp_path):
    model, tokenizer = load_model(stories_dir)
    ctx = context(model, tokenizer)
    pruning.build_method("heads", fraction=0.25).prune(ctx)
    pruning.build_method("layers", fraction=0.2).prune(ctx)
    model = ctx.model
    adapter = pruning.get_adapter(model)
    shape, count = heterogeneous.layer_structure(model, adapter), sum(p.numel() for p in model.parameters())
    settings = settings_for(stories_text["calibration"])
    data = load_recovery_data(tokenizer, settings, recovery_documents(settings))
    record = recover(model, adapter, data, settings, CPU, progress=False)
    assert record["masked_modules"] == 0 and record["loss_after"] < record["loss_before"] - 0.05, record
    assert heterogeneous.layer_structure(model, adapter) == shape
    assert sum(p.numel() for p in model.parameters()) == count

    out = tmp_path / "structured"
    save_model(model, tokenizer, out)
    for reloaded in (load_model(out)[0], AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()):
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=data.heldout).logits, model(input_ids=data.heldout).logits)


# ---- the API, the CLI and bad settings --------------------------------------------------------------------

def test_prune_with_recovery_records_the_protocol(stories_dir, stories_text, tmp_path):
    out = tmp_path / "magnitude-lora"
    report = pruning.prune(str(stories_dir), "magnitude", out, sparsity=0.5, device="cpu", progress=False, seed=1,
                           recovery={"steps": 6, "seqlen": 64, "lr": 2e-3, "data": str(stories_text["calibration"])})
    recorded = json.loads((out / "prune.json").read_text())["recovery"]
    assert recorded == report["recovery"]
    assert {k: recorded[k] for k in ("steps", "rank", "lr", "seed", "data")} == {
        "steps": 6, "rank": 8, "lr": 2e-3, "seed": 1, "data": str(stories_text["calibration"])}
    assert recorded["seconds"] > 0 and recorded["loss_after"] < recorded["loss_before"]
    model, _ = load_model(out)
    zeros, total = linear_zero_count(model)
    assert zeros == report["result"]["zeroed_parameters"] and total == report["result"]["targeted_parameters"]


def test_without_recovery_prune_json_says_none(stories_dir, tmp_path):
    report = pruning.prune(str(stories_dir), "magnitude", tmp_path / "m", sparsity=0.5, device="cpu", progress=False)
    assert report["recovery"] is None


@pytest.mark.parametrize("recovery,message", [
    ({"steps": 5, "data": "wikitext2"}, "recovery: data: calibration must not use the evaluation split"),
    ({"steps": 5, "data": "wikitext2-test"}, "must not use the evaluation split"),
    ({"steps": 5, "rank": 0}, "recovery: rank must be an integer >= 1, got 0"),
    ({"steps": 5, "lr": 0}, "recovery: lr must be a number in (0, 1]"),
    ({"steps": 5, "epochs": 2}, "recovery: unknown option epochs"),
    ({"steps": 5, "seqlen": 4096}, "--recover-seqlen 4096 exceeds the 512 positions"),
    ({"steps": 5, "data": "wikitext2-train"}, "no WikiText-2 train split in the local data directory"),
])
def test_bad_recovery_refused_before_the_model_loads(stories_dir, tmp_path, monkeypatch, recovery, message):
    def refuse(*_args, **_kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(pruning.api, "load_model", refuse)
    with pytest.raises(ValueError) as error:
        pruning.prune(str(stories_dir), "magnitude", tmp_path / "out", sparsity=0.5, device="cpu", recovery=recovery)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_cli_recover_flags(stories_dir, stories_text, tmp_path, capsys):
    out = tmp_path / "cli"
    common = ["prune", "--model", str(stories_dir), "--method", "magnitude", "--sparsity", "0.5", "--device", "cpu",
              "--quiet", "--output-dir", str(out)]
    assert cli_main(common + ["--recover-steps", "3", "--recover-seqlen", "64", "--recover-rank", "4",
                              "--recover-data", str(stories_text["calibration"])]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["recovery"]["steps"] == 3
    assert json.loads((out / "prune.json").read_text())["recovery"]["rank"] == 4
    for bad, message in ((["--recover-steps", "3", "--recover-data", "wikitext2"], "evaluation split"),
                         (["--recover-rank", "4"], "--recover-rank given without --recover-steps"),
                         (["--recover-steps", "3", "--recover-alpha", "-1"], "recovery: alpha must be a number > 0")):
        assert cli_main(common[:-1] + [str(tmp_path / "bad")] + bad) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1
        assert not (tmp_path / "bad").exists()


# ---- gradual and iterative --------------------------------------------------------------------------------

def test_gradual_without_fine_tuning_is_one_shot_magnitude(stories_dir, tmp_path):
    one_shot, tokenizer = load_model(stories_dir)
    pruning.build_method("magnitude", sparsity=0.7).prune(context(one_shot, tokenizer))
    gradual, _ = load_model(stories_dir)
    report = pruning.build_method("gradual", sparsity=0.7, rounds=3, recover_steps=0).prune(context(gradual, tokenizer))
    assert [r["sparsity"] for r in report["rounds"]] == pytest.approx(cubic_schedule(0.7, 3))
    assert all(torch.equal(a, b) for a, b in zip(one_shot.state_dict().values(), gradual.state_dict().values()))


@pytest.mark.slow
def test_gradual_reaches_the_target_exactly_and_keeps_its_masks(stories_dir, stories_text, tmp_path):
    out = tmp_path / "gradual"
    report = pruning.prune(str(stories_dir), "gradual", out, sparsity=0.6, rounds=3, recover_steps=4,
                           recover_seqlen=64, recover_lr=2e-3, recover_data=str(stories_text["calibration"]),
                           device="cpu", progress=False)
    rounds = report["result"]["rounds"]
    assert [r["sparsity"] for r in rounds] == pytest.approx(cubic_schedule(0.6, 3)) and rounds[-1]["sparsity"] == 0.6
    assert all(r["recovery"]["steps"] == 4 for r in rounds)
    assert [r["recovery"]["seed"] for r in rounds] == [0, 1, 2]
    model, _ = load_model(out)
    adapter = pruning.get_adapter(model)
    for index in range(adapter.num_layers(model)):
        for name, module in adapter.linear_targets(model, index).items():
            assert int((module.weight == 0).sum()) == int(module.weight.numel() * 0.6), name  # as one-shot magnitude
    assert report["result"]["zeroed_parameters"] == linear_zero_count(model)[0]


def test_iterative_wanda_reaches_the_target_exactly(stories_dir, stories_text, tmp_path):
    out = tmp_path / "iterative"
    report = pruning.prune(str(stories_dir), "iterative", out, base_method="wanda", sparsity=0.5, rounds=2,
                           recover_steps=3, recover_seqlen=64, recover_data=str(stories_text["calibration"]),
                           calib=str(stories_text["calibration"]), nsamples=8, seqlen=64, device="cpu", progress=False)
    assert report["options"]["base_method"] == "wanda" and report["options"]["round_schedule"] == "geometric"
    assert [r["sparsity"] for r in report["result"]["rounds"]] == pytest.approx([1 - 0.5 ** 0.5, 0.5])
    model, _ = load_model(out)
    adapter = pruning.get_adapter(model)
    for index in range(adapter.num_layers(model)):
        for name, module in adapter.linear_targets(model, index).items():
            per_row = (module.weight == 0).sum(dim=1)
            assert bool((per_row == int(module.weight.shape[1] * 0.5)).all()), name  # Wanda's per-row count


@pytest.mark.parametrize("arguments,message", [
    ({"base_method": "heads", "sparsity": 0.5}, "base_method: must be a mask-based method"),
    ({"base_method": "wanda", "nm": "2:4"}, "N:M pattern is not reached in rounds"),
    ({"base_method": "wanda"}, "iterative needs sparsity="),
    ({"base_method": "wanda", "sparsity": 0.5, "recover_data": "wikitext2"}, "evaluation split"),
    ({"base_method": "wanda", "sparsity": 0.5, "round_schedule": "cubicc"}, "round_schedule must be one of"),
])
def test_iterative_refuses_bad_arguments(arguments, message):
    with pytest.raises(MethodError, match=message):
        pruning.build_method("iterative", **arguments)


def test_gradual_refuses_a_recover_seqlen_longer_than_the_model_before_pruning(stories_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(pruning.methods.magnitude.Magnitude, "prune", lambda *_: pytest.fail("pruning started"))
    with pytest.raises(MethodError, match="gradual: recover_seqlen 4096 exceeds the 512 positions"):
        pruning.prune(str(stories_dir), "gradual", tmp_path / "g", sparsity=0.5, recover_seqlen=4096, device="cpu",
                      progress=False)
    assert not (tmp_path / "g").exists()


# ---- the workflow -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_workflow_config_with_recovery_plans_its_flags(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config["methods"] = {
        "magnitude_lora": {"method": "magnitude", "ratios": {"sparsity": [0.5]},
                           "recovery": {"steps": 20, "rank": 4, "seqlen": 64, "data": "wikitext2-validation"}},
        "gradual": {"method": "gradual", "ratios": {"sparsity": [0.5]}, "options": {"rounds": 2, "recover_steps": 2}},
        "iterative": {"method": "iterative", "ratios": {"sparsity": [0.5]},
                      "options": {"base_method": "wanda", "rounds": 2, "recover_steps": 2}},
    }
    result = snakemake(tmp_path / "ok", "-n", "-p", "--cores", "1", config=config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    prunes = [c for c in pruning_commands(result.stdout) if c[0] == "prune"]
    lora = next(c for c in prunes if "magnitude_lora" in " ".join(c))
    flags = dict(zip(lora, lora[1:]))
    assert (flags["--recover-steps"], flags["--recover-rank"], flags["--recover-data"]) == ("20", "4", "wikitext2-validation")
    assert {c[c.index("--method") + 1] for c in prunes} == {"magnitude", "gradual", "iterative"}

    config["methods"]["magnitude_lora"]["recovery"].update(data="wikitext2-test")
    result = snakemake(tmp_path / "bad", "--cores", "1", config=config)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "invalid workflow config" in output
    assert "config.methods.magnitude_lora.recovery.data: 'wikitext2-test' should not be valid" in output
    assert not (tmp_path / "bad" / "results").exists()
