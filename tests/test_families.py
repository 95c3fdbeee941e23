"""Head pruning and two-stage sub-block removal on every architecture family, on tiny random configs built
here (no downloads): exact head counts and parameter counts, sliced attention equal to masking the heads,
and saved models that reload with identical logits."""
import copy
import json

import pytest
import torch
from conftest import TINY_FAMILIES, assert_cached_generation_is_greedy, build_tiny_model, tiny_config
from transformers import AutoModelForCausalLM

import pruning
from pruning.core import heterogeneous, surgery as structure
from pruning.methods import MethodError, PruneContext

STRUCTURED_FAMILIES = TINY_FAMILIES  # every family the adapters support


def run(model, method, **arguments):
    calibration = torch.randint(3, 500, (4, 16), generator=torch.Generator().manual_seed(1))
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (calibration, {"source": "test"}), batch_size=2, progress=False)
    instance = pruning.build_method(method, **arguments)
    instance.check_config(model.config)
    instance.check_model(ctx)
    return ctx.model, instance.prune(ctx)


def probe_ids():
    return torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def logits(model, ids=None):
    return model(input_ids=probe_ids() if ids is None else ids, use_cache=False).logits


def reload(model, path):
    """Save with the library, reload with plain `from_pretrained`: the same logits and parameter count."""
    pruning.save_model(model, None, path)
    again = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert torch.equal(logits(again), logits(model))
    assert structure.numel(again) == structure.numel(model)
    return again


@torch.no_grad()
def masked_head_logits(model, adapter, removed: dict[int, list[int]]):
    """Logits of the model with the `removed` heads of each layer zeroed at the output projection's input: what
    slicing them away must compute."""
    handles = []
    for index, heads in removed.items():
        layer = adapter.decoder_layers(model)[index]
        head_dim = getattr(adapter.layer_part(layer, adapter.attention), adapter.head_dim_attribute)

        def zero(_module, args, heads=heads, head_dim=head_dim):
            x = args[0].clone()
            for h in heads:
                x[..., h * head_dim:(h + 1) * head_dim] = 0
            return (x,)

        handles.append(adapter.layer_part(layer, adapter.attention_projections[-1]).register_forward_pre_hook(zero))
    try:
        return logits(model)
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("family", STRUCTURED_FAMILIES)
def test_heads_prunes_exact_counts_on_every_family_and_reloads(family, tmp_path):
    model, reference = build_tiny_model(family), build_tiny_model(family)
    adapter = pruning.get_adapter(model)
    assert [heterogeneous.head_counts(layer, adapter) for layer in adapter.decoder_layers(model)] == \
        [(4, 4 if adapter.family in ("opt", "gpt_neox", "gpt2") else 2)] * 2
    before = structure.numel(model)
    pruned, report = run(model, "heads", fraction=0.25)
    removed = {int(k): v for k, v in report["removed_heads"].items()}
    # 25 % of 8 heads: one query head from each of a layer's 2 kv groups, or two single heads without GQA
    assert sum(len(v) for v in removed.values()) == 2 and (report["heads_before"], report["heads_after"]) == (8, 6)
    counts = [heterogeneous.head_counts(layer, adapter) for layer in adapter.decoder_layers(pruned)]
    assert sum(q for q, _ in counts) == 6 and all(q % kv == 0 for q, kv in counts)
    assert structure.numel(pruned) == before - report["parameters_removed"] > 0
    torch.testing.assert_close(logits(pruned), masked_head_logits(reference, adapter, removed), rtol=1e-4, atol=1e-5)
    assert torch.equal(logits(copy.deepcopy(pruned)), logits(pruned))
    again = reload(pruned, tmp_path / family)
    assert json.loads((tmp_path / family / "config.json").read_text())["model_type"] == "pruning_heterogeneous"
    assert [heterogeneous.head_counts(layer, adapter) for layer in adapter.decoder_layers(again)] == counts
    generated = again.generate(probe_ids()[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(generated, pruned.generate(probe_ids()[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0))


@pytest.mark.parametrize("family", STRUCTURED_FAMILIES)
def test_two_stage_removes_sub_blocks_on_every_family_and_reloads(family, tmp_path):
    model = build_tiny_model(family)
    adapter = pruning.get_adapter(model)
    before = structure.numel(model)
    pruned, report = run(model, "two_stage", ffn_layers=1, attention_layers=1)
    (ffn_layer,), (attention_layer,) = report["ffn_removed_layers"], report["mha_removed_layers"]
    assert ffn_layer == attention_layer  # attention only from FFN-removed candidates
    layers = adapter.decoder_layers(pruned)
    assert heterogeneous.attention_removed(layers[ffn_layer], adapter)
    assert heterogeneous.feed_forward_removed(layers[ffn_layer], adapter)
    assert report["parameters_removed"] == report["ffn_block_parameters"] + report["attention_block_parameters"]
    assert structure.numel(pruned) == before - report["parameters_removed"]
    assert structure.numel(layers[ffn_layer]) == 0  # the layer's norms went with its sub-blocks
    again = reload(pruned, tmp_path / family)
    assert heterogeneous.layer_structure(again, adapter)[ffn_layer].to_record() == \
        {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 0}
    # with a KV cache, generation equals recomputing the whole prefix each step
    assert_cached_generation_is_greedy(again, probe_ids()[:1, :5], 4)


def test_sub_block_removal_refused_from_the_config_for_post_norm_opt(tmp_path):
    config = tiny_config("opt")
    config.do_layer_norm_before = False
    method = pruning.build_method("two_stage", ffn_layers=1)
    with pytest.raises(MethodError, match="do_layer_norm_before=false"):
        method.check_config(config.to_dict())
    pruning.build_method("heads", fraction=0.25).check_config(config.to_dict())  # head slicing is fine
    with pytest.raises(MethodError, match="supported model types"):
        method.check_config({"model_type": "mamba"})
    composite = pruning.build_method("all", head_fraction=0.25, sparsity=0.5)  # asks its heads stage
    with pytest.raises(MethodError, match="supported model types"):
        composite.check_config({"model_type": "mamba"})
    pruning.build_method("all", head_fraction=0, layer_fraction=0.25, sparsity=0.5).check_config({"model_type": "mamba"})


def test_gemma3_depth_pruning_keeps_layer_types_with_their_layers(tmp_path):
    """Each remaining layer keeps its own sliding/full attention: config.layer_types follows the kept layers and
    the reloaded model computes the same (over a probe longer than the sliding window)."""
    config = tiny_config("gemma3_text")
    config.num_hidden_layers, config.sliding_window = 6, 4
    config.layer_types = ["sliding_attention", "sliding_attention", "full_attention"] * 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    structure.remove_layers(model, pruning.get_adapter(model), [0, 2])
    assert model.config.layer_types == ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
    again = reload(model, tmp_path / "g3")
    assert again.config.layer_types == model.config.layer_types
    assert [layer.self_attn.sliding_window for layer in again.model.layers] == [4, 4, 4, None]


def test_refusal_comes_before_the_weights_are_loaded(tmp_path, monkeypatch):
    config = tiny_config("opt")
    config.do_layer_norm_before = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "opt")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(pruning.api, "load_model", no_loading)
    with pytest.raises(MethodError, match="do_layer_norm_before=false"):
        pruning.prune(str(tmp_path / "opt"), "two_stage", tmp_path / "out", ffn_layers=1, calib="wikitext2-train",
                      seqlen=16, nsamples=4)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family, query_rows", [
    ("phi3", lambda layer: layer.self_attn.qkv_proj.weight[:64]),  # [q | k | v]
    ("gpt2", lambda layer: layer.attn.c_attn.weight[:, :64].T),  # Conv1D [in, out]
    ("gpt_neox", lambda layer: layer.attention.query_key_value.weight.view(4, 3, 16, 64)[:, 0].reshape(64, 64)),
])
def test_head_magnitude_reads_the_query_rows_out_of_fused_projections(family, query_rows):
    from pruning.core.adapters import weight_matrix
    from pruning.methods.heads import magnitude_importance, query_weight

    model = build_tiny_model(family)
    adapter = pruning.get_adapter(model)
    layer = adapter.decoder_layers(model)[0]
    assert torch.equal(query_weight(layer, adapter, 4), query_rows(layer))
    output = weight_matrix(adapter.layer_part(layer, adapter.attention_projections[-1]))
    expected = magnitude_importance(query_rows(layer), output, 4).tolist()
    _, report = run(model, "heads", fraction=0.25)
    assert report["scores"]["0"] == pytest.approx(expected, abs=1e-6)
