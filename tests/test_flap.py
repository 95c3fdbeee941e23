"""FLAP width pruning: fluctuation maths against hand computation, exact parameter arithmetic, GQA-valid
shapes, bias compensation that really lowers the error, identical logits after save/reload, GGUF through
llama.cpp's deci graph, and the CLI (bad options refused with exit code 2 before the model loads)."""
import copy
import json

import numpy as np
import pytest
import torch

import pruning
from pruning import cli
from pruning.core import heterogeneous, surgery as structure
from pruning.core.engine import InputMoments
from pruning.methods.flap_fluctuation import (Unit, channel_scores, compensation_bias, select_global,
                                 select_uniform, standardized, unit_scores)
from pruning.methods import MethodError, PruneContext
from pruning.methods.flap import unit_parameters
from pruning.core.modeling import load_model, save_model

PROMPT = "Once upon a time there was a little girl named Lily. She loved to play outside"


@pytest.fixture(scope="module")
def stories(stories_dir):
    return load_model(stories_dir)



def run(model, calib, **arguments):
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (calib, {"source": "test"}), batch_size=3, progress=False)
    method = pruning.build_method("flap", **arguments)
    method.check_model(ctx)
    return ctx.model, method.prune(ctx)


@pytest.fixture(scope="module")
def pruned(stories, calib_ids):
    """fraction 0.2 with and without compensation (same selection: the scores do not depend on it)."""
    return {compensation: run(copy.deepcopy(stories[0]), calib_ids, fraction=0.2, compensation=compensation)
            for compensation in (True, False)}


@torch.no_grad()
def logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


# ------------------------------------------------------------------------------------------------ maths

def test_fluctuation_statistics_and_scores_equal_hand_computation():
    torch.manual_seed(0)
    batches = [torch.randn(2, 5, 6) * torch.arange(1, 7) + 3 for _ in range(3)]
    meter = InputMoments(device="cpu")
    for batch in batches:
        meter.add(batch)
    tokens = torch.cat([b.reshape(-1, 6) for b in batches]).double()
    assert meter.tokens == 30
    torch.testing.assert_close(meter.mean, tokens.mean(0))
    torch.testing.assert_close(meter.sample_variance, tokens.var(0))  # sample variance
    weight = torch.randn(4, 6)
    torch.testing.assert_close(channel_scores("wifv", meter, weight), tokens.var(0) * (weight.double() ** 2).sum(0))
    torch.testing.assert_close(channel_scores("ifv", meter, weight), tokens.var(0))
    torch.testing.assert_close(channel_scores("wifn", meter, weight),
                               (weight.double().abs() * tokens.pow(2).mean(0).sqrt()).mean(0))
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    assert standardized(scores).mean().abs() < 1e-12 and abs(float(standardized(scores).std()) - 1) < 1e-12
    assert torch.equal(unit_scores(scores, 2), torch.tensor([1.5, 4.5], dtype=torch.float64))
    removed = torch.tensor([1, 4])
    torch.testing.assert_close(compensation_bias(weight, meter.mean, removed),
                               weight.double()[:, [1, 4]] @ tokens.mean(0)[[1, 4]])


def test_global_selection_takes_the_closest_prefix_and_keeps_each_layers_best():
    units = [Unit("ffn", 0, i, s, 10) for i, s in enumerate([0.1, 0.5, 0.9])] + \
            [Unit("attention", 0, 0, 0.2, 30), Unit("attention", 0, 1, 0.3, 30),
             Unit("ffn", 1, 0, -1.0, 10), Unit("ffn", 1, 1, 5.0, 10)]
    chosen = select_global(units, 55)  # ranked: ffn1/0 (10), ffn0/0 (20), attn0/0 (50), ffn0/1 (60): 50 and 60 tie
    assert [(u.kind, u.layer, u.index) for u in chosen] == [("ffn", 1, 0), ("ffn", 0, 0), ("attention", 0, 0)]
    everything = select_global(units, 10**6)  # never the best unit of a layer and kind
    assert {(u.kind, u.layer, u.index) for u in everything} == {("ffn", 1, 0), ("ffn", 0, 0), ("attention", 0, 0),
                                                                 ("ffn", 0, 1)}
    assert select_uniform(torch.tensor([0.3, 0.1, 0.2, 0.4]), 0.5) == [1, 2]
    assert select_uniform(torch.tensor([0.3, 0.1]), 0.9) == [1]  # one unit always stays


# ------------------------------------------------------------------------------------------------ method

def test_flap_removes_the_planned_parameters_exactly_with_gqa_valid_shapes(stories, pruned):
    dense = stories[0]
    adapter = pruning.get_adapter(dense)
    costs = [unit_parameters(layer, adapter) for layer in adapter.decoder_layers(dense)]
    total = sum(4 * a + 172 * f for a, f in costs)  # stories260K: 4 key-value groups, 172 FFN channels per layer
    for compensation, (model, report) in pruned.items():
        shapes = heterogeneous.layer_structure(model, adapter)
        removed = sum((4 - s.kv_heads) * a + (172 - s.ffn) * f for s, (a, f) in zip(shapes, costs))
        biases = sum(64 * ((s.kv_heads < 4) + (s.ffn < 172)) for s in shapes) if compensation else 0
        assert structure.numel(model) == structure.numel(dense) - removed + biases
        assert report["parameters_after"] == structure.numel(model) and report["bias_parameters_added"] == biases
        assert report["target_parameters"] == round(0.2 * total) and report["attention_ffn_parameters"] == total
        assert abs(removed - report["target_parameters"]) <= max(max(c) for c in costs) / 2
        assert all(s.heads == 2 * s.kv_heads and s.kv_heads >= 1 and s.ffn >= 1 for s in shapes)  # groups whole
        assert sum(s.ffn for s in shapes) < 5 * 172  # really narrower
        assert all(s.output_biases == (compensation and s.kv_heads < 4, compensation and s.ffn < 172) for s in shapes)
        for layer, shape in zip(adapter.decoder_layers(model), shapes):
            q, k, v, o = (adapter.layer_part(layer, p) for p in adapter.attention_projections)
            assert q.out_features == o.in_features == 8 * shape.heads and k.out_features == 8 * shape.kv_heads
            assert layer.self_attn.num_key_value_groups == 2
    with_bias, without = pruned[True][1], pruned[False][1]
    for key in ("removed_kv_groups", "removed_ffn_channels", "parameters_removed"):  # compensation only adds biases
        assert with_bias[key] == without[key] or key == "parameters_removed" and \
            with_bias[key] == without[key] - with_bias["bias_parameters_added"]


def test_flap_is_deterministic(stories, calib_ids, pruned):
    again, report = run(copy.deepcopy(stories[0]), calib_ids, fraction=0.2)
    assert report["layer_shapes"] == pruned[True][1]["layer_shapes"]
    assert torch.equal(logits(again, calib_ids[:2]), logits(pruned[True][0], calib_ids[:2]))


def test_reloaded_model_computes_what_the_pruned_model_computes(pruned, stories, calib_ids, tmp_path):
    from transformers import AutoModelForCausalLM

    model = pruned[True][0]
    save_model(model, stories[1], tmp_path / "flap")
    config = json.loads((tmp_path / "flap" / "config.json").read_text())
    assert config["model_type"] == heterogeneous.HETEROGENEOUS_MODEL_TYPE
    assert any(entry.get("ffn_output_bias") for entry in config[heterogeneous.STRUCTURE_KEY])
    again, _ = load_model(tmp_path / "flap")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "flap", dtype=torch.float32).eval()
    for other in (again, plain):
        assert structure.numel(other) == structure.numel(model)
        assert torch.equal(logits(other, calib_ids[:3]), logits(model, calib_ids[:3]))
    assert heterogeneous.layer_structure(again, pruning.get_adapter(again)) == \
        heterogeneous.layer_structure(model, pruning.get_adapter(model))


def test_output_bias_record_is_validated(pruned, stories, tmp_path):
    save_model(pruned[True][0], stories[1], tmp_path / "flap")
    config = json.loads((tmp_path / "flap" / "config.json").read_text())
    config[heterogeneous.STRUCTURE_KEY][1]["ffn_output_bias"] = "yes"
    with pytest.raises(heterogeneous.FormatError, match="true or false"):
        heterogeneous.layer_shapes(config)
    config[heterogeneous.STRUCTURE_KEY][1]["ffn_output_bias"] = True
    config[heterogeneous.STRUCTURE_KEY][1]["extra"] = 1
    with pytest.raises(heterogeneous.FormatError, match="must have the keys"):
        heterogeneous.layer_shapes(config)


def test_compensation_cancels_the_mean_error_and_lowers_the_output_error(stories, pruned, calib_ids):
    """Fed the dense model's inputs, a narrowed down_proj with its compensation bias has zero mean output error
    over the calibration tokens (and a lower squared error); the whole model's next-token distribution stays
    closer to the dense model's (KL) on the calibration inputs."""
    dense = stories[0]
    adapter = pruning.get_adapter(dense)
    captured = {}

    def grab(name):
        def hook(module, args, output):
            captured[name] = (args[0].detach(), output.detach())
        return hook

    outputs = {}
    ffn_layer = next(i for i, s in enumerate(heterogeneous.layer_structure(pruned[True][0], adapter)) if s.ffn < 172)
    for name, model in (("dense", dense), ("with", pruned[True][0]), ("without", pruned[False][0])):
        handle = adapter.decoder_layers(model)[ffn_layer].mlp.down_proj.register_forward_hook(grab(name))
        outputs[name] = logits(model, calib_ids)
        handle.remove()
    # the dense inputs of the first narrowed down_proj, through its pruned weights with and without the bias
    x_dense, y_dense = captured["dense"]
    down = adapter.decoder_layers(pruned[True][0])[ffn_layer].mlp.down_proj
    kept = _kept_channels(dense, pruned[True][0], ffn_layer)
    error_with = (torch.nn.functional.linear(x_dense[..., kept], down.weight, down.bias) - y_dense).reshape(-1, 64)
    error_without = (torch.nn.functional.linear(x_dense[..., kept], down.weight) - y_dense).reshape(-1, 64)
    assert error_with.mean(0).abs().max() < 1e-4 * error_without.mean(0).abs().max() + 1e-6
    assert error_with.pow(2).mean() < error_without.pow(2).mean()
    # the output distribution (not the raw logits: softmax ignores a constant shift) stays closer to the dense one
    dense_log = torch.log_softmax(outputs["dense"], -1)
    kl = {name: (dense_log.exp() * (dense_log - torch.log_softmax(outputs[name], -1))).sum(-1).mean()
          for name in ("with", "without")}
    assert kl["with"] < kl["without"]


def _kept_channels(dense, model, layer_index) -> list[int]:
    """The dense FFN channels one pruned layer kept, in order: where its gate rows come from."""
    dense_gate = dense.model.layers[layer_index].mlp.gate_proj.weight
    pruned_gate = model.model.layers[layer_index].mlp.gate_proj.weight
    return [int((dense_gate == row).all(1).nonzero()[0]) for row in pruned_gate]


def test_uniform_structure_narrows_every_layer_alike(stories, calib_ids):
    model, report = run(copy.deepcopy(stories[0]), calib_ids, fraction=0.25, structure="ul-um", compensation=False)
    shapes = heterogeneous.layer_structure(model, pruning.get_adapter(model))
    assert {(s.heads, s.kv_heads, s.ffn) for s in shapes} == {(6, 3, 129)}  # round(0.25 × 4), round(0.25 × 172)
    assert report["bias_parameters_added"] == 0 and not any(s.output_biases != (False, False) for s in shapes)


def test_impossible_fraction_is_refused_before_any_change(stories):
    model = copy.deepcopy(stories[0])
    before = structure.numel(model)
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: pytest.fail("calibration data read before the check"))
    with pytest.raises(MethodError, match="at most .* can go"):
        pruning.build_method("flap", fraction=0.999).check_model(ctx)
    assert structure.numel(model) == before


# ------------------------------------------------------------------------------------------------ GGUF

def test_gguf_carries_the_compensation_biases_through_deci(pruned, stories, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed", exc_type=ImportError)
    from pruning.export.gguf import export_gguf
    from pruning.export.gguf_tensors import plan_export

    model, tokenizer = pruned[True][0], stories[1]
    save_model(model, tokenizer, tmp_path / "flap")
    plan = plan_export(tmp_path / "flap", "f32")
    assert {t.name for t in plan.tensors} >= {"blk.1.ffn_down.bias"}
    report = export_gguf(tmp_path / "flap", tmp_path / "flap.gguf", "f32")
    assert report["arch"] == "deci"
    ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    reference = logits(model, torch.tensor([ids]))[0].numpy()
    llm = llama_cpp.Llama(str(tmp_path / "flap.gguf"), n_ctx=128, n_batch=128, n_ubatch=128, logits_all=True,
                          verbose=False, n_threads=1)
    try:
        llm.eval(ids)
        got = np.array(llm.scores[:len(ids)])
    finally:
        llm.close()
    assert np.abs(got - reference).max() < 2e-3 * np.abs(reference).max()
    # and the biases matter: llama.cpp's PPL equals transformers', not that of the model without them
    targets = np.array(ids[1:])

    def nll(scores):
        scores = scores[:-1] - scores[:-1].max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(scores).sum(1)) - scores[np.arange(len(targets)), targets]))

    assert abs(np.exp(nll(got)) - np.exp(nll(reference))) < 0.01 * np.exp(nll(reference))


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_prunes_saves_and_reloads(stories_dir, stories_text, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli.main(["prune", "--model", str(stories_dir), "--method", "flap", "--option", "fraction=0.2",
                     "--calib", str(stories_text["calibration"]), "--nsamples", "4", "--seqlen", "64",
                     "--output-dir", str(out), "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "prune.json").read_text())
    assert report["method"] == "flap" and report["options"]["fraction"] == 0.2
    model, _ = load_model(out)
    assert structure.numel(model) == report["parameters"]["after"]["total"] == report["result"]["parameters_after"]


@pytest.mark.parametrize("option, message", [
    ("fraction=1.0", "fraction must be a number in (0, 1)"),
    ("metric=norm", "metric must be one of wifv, ifv, wifn"),
    ("structure=al-mm", "structure must be one of al-am, ul-um"),
    ("compensation=maybe", "compensation must be true or false"),
    ("ratio=0.2", "unknown option ratio"),
])
def test_cli_bad_options_exit_2_before_the_model_loads(stories_dir, tmp_path, capfd, monkeypatch, option, message):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    extra = [] if option.startswith("fraction") else ["--option", "fraction=0.2"]
    code = cli.main(["prune", "--model", str(stories_dir), "--method", "flap", "--option", option, *extra,
                     "--output-dir", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_model_dependent_refusal_exits_2_without_output(stories_dir, tmp_path, capfd):
    code = cli.main(["prune", "--model", str(stories_dir), "--method", "flap", "--option", "fraction=0.999",
                     "--seqlen", "64", "--output-dir", str(tmp_path / "out"), "--quiet", "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 2 and "at most" in err and not (tmp_path / "out").exists()
