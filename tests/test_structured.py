"""Structured pruning: exact parameter arithmetic, scores against hand computation, reload with identical
logits, heterogeneous models under transformers, and bad input rejected before any work."""
import copy
import json
import math

import pytest
import torch
from conftest import TINY_FAMILIES, assert_cached_generation_is_greedy, build_tiny_model

import pruning
from pruning.core import heterogeneous, surgery as structure
from pruning.cli import main as cli_main
from pruning.core.token_windows import windows_nll
from pruning.methods import MethodError, PruneContext
from pruning.methods.heads import magnitude_importance
from pruning.methods.two_stage import counts_for_rate
from pruning.core.modeling import ModelLoadError, load_model, save_model
from pruning.methods.depth_similarity import evenly_spread, select_blocks, token_cosines


@pytest.fixture(scope="module")
def stories(stories_dir):
    model, tokenizer = load_model(stories_dir)
    return model, tokenizer



def fresh(stories):
    return copy.deepcopy(stories[0])


def run(model, method, calib=None, tokenizer=None, **arguments):
    ctx = PruneContext(model=model, tokenizer=tokenizer, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (calib, {"source": "test"}), batch_size=3, progress=False)
    report = pruning.build_method(method, **arguments).prune(ctx)
    return ctx.model, report


def probe_ids():
    return torch.randint(3, 512, (2, 24), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def logits(model, ids=None):
    return model(input_ids=probe_ids() if ids is None else ids, use_cache=False).logits


def assert_reloads(model, tokenizer, path, plain: bool):
    """Save, then reload with plain `from_pretrained` (`plain`; heterogeneous models too, once pruning is
    imported) or with `load_model` (which also checks that every tensor fits)."""
    save_model(model, tokenizer, path)
    expected = logits(model)
    if plain or tokenizer is None:  # tiny random models have no tokenizer for load_model
        from transformers import AutoModelForCausalLM

        again = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    else:
        again, _ = load_model(path)
    assert torch.equal(logits(again), expected)
    assert structure.numel(again) == structure.numel(model)
    return again


@torch.no_grad()
def mean_nll(model, ids):
    nll, tokens = windows_nll(model, ids, batch_size=4)
    return nll / tokens


# ------------------------------------------------------------------------------------- structure.py

def test_removing_k_layers_removes_exactly_k_layers_params_and_reloads_plainly(stories, tmp_path):
    model = fresh(stories)
    one_layer = structure.numel(model.model.layers[0])
    removed = structure.remove_layers(model, pruning.get_adapter(model), [1, 3])
    assert removed == 2 * one_layer
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2]
    again = assert_reloads(model, stories[1], tmp_path / "m", plain=True)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llama"
    assert_cached_generation_is_greedy(again, probe_ids()[:1, :6], 8)  # the KV cache works after re-indexing


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_layer_removal_reloads_with_from_pretrained_on_every_family(family, tmp_path):
    model = build_tiny_model(family)
    adapter = pruning.get_adapter(model)
    one_layer = structure.numel(adapter.decoder_layers(model)[0])
    assert structure.remove_layers(model, adapter, [0]) == one_layer
    assert_reloads(model, None, tmp_path / family, plain=True)
    model.generate(probe_ids()[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)


def test_head_slices_remove_exactly_their_rows_and_columns(stories):
    model = fresh(stories)
    adapter = pruning.get_adapter(model)
    hidden, head_dim = 64, 8
    per_query_head = 2 * hidden * head_dim  # q rows + o columns
    per_kv_head = 2 * hidden * head_dim  # k rows + v rows
    # 8 query heads in 4 groups of 2: keep one per group -> 4 query heads gone, every kv head kept
    assert structure.slice_heads(model, adapter, 0, [0, 3, 4, 7]) == 4 * per_query_head
    # keep two whole groups -> 4 query heads and 2 kv heads gone
    assert structure.slice_heads(model, adapter, 1, [2, 3, 6, 7]) == 4 * per_query_head + 2 * per_kv_head
    assert heterogeneous.head_counts(model.model.layers[0], adapter) == (4, 4)
    assert heterogeneous.head_counts(model.model.layers[1], adapter) == (4, 2)
    original = stories[0].model.layers[1].self_attn
    sliced = model.model.layers[1].self_attn
    assert torch.equal(sliced.q_proj.weight, torch.cat([original.q_proj.weight[16:32], original.q_proj.weight[48:64]]))
    assert torch.equal(sliced.o_proj.weight, torch.cat([original.o_proj.weight[:, 16:32], original.o_proj.weight[:, 48:64]], 1))
    assert torch.equal(sliced.k_proj.weight, torch.cat([original.k_proj.weight[8:16], original.k_proj.weight[24:32]]))
    with pytest.raises(structure.StructureError, match="GQA-consistent"):
        structure.slice_heads(model, adapter, 2, [0, 1, 2])  # group 0 keeps 2, group 1 keeps 1


def test_sliced_attention_computes_what_the_original_does_without_those_heads(stories):
    """Slicing is right iff it equals the dense model with the removed heads' o_proj columns zeroed
    (a removed query head contributes only through its o columns; a whole removed kv group likewise)."""
    model, reference = fresh(stories), fresh(stories)
    adapter = pruning.get_adapter(model)
    for layer, keep in ((0, [0, 3, 4, 7]), (1, [2, 3, 6, 7]), (3, [0, 1])):
        structure.slice_heads(model, adapter, layer, keep)
        with torch.no_grad():
            for head in set(range(8)) - set(keep):
                reference.model.layers[layer].self_attn.o_proj.weight[:, head * 8:(head + 1) * 8] = 0
    structure.remove_attention(model, adapter, 2)  # likewise a removed sub-block == its output projection zeroed
    structure.remove_feed_forward(model, adapter, 4)
    with torch.no_grad():
        reference.model.layers[2].self_attn.o_proj.weight.zero_()
        reference.model.layers[4].mlp.down_proj.weight.zero_()
    assert torch.allclose(logits(model), logits(reference), atol=1e-5)
    assert not torch.allclose(logits(model), logits(stories[0]), atol=1e-3)


def test_heterogeneous_model_reloads_with_plain_from_pretrained_and_generates(stories, tmp_path):
    from transformers import AutoModelForCausalLM

    model = fresh(stories)
    adapter = pruning.get_adapter(model)
    attention = structure.numel(model.model.layers[0].self_attn) + 64  # with its input norm
    ffn = structure.numel(model.model.layers[2].mlp) + 64
    assert structure.remove_attention(model, adapter, 0) == attention
    assert structure.remove_feed_forward(model, adapter, 2) == ffn
    structure.slice_heads(model, adapter, 1, [0, 2, 4, 6])
    structure.slice_feed_forward(model, adapter, 3, range(100))
    path = tmp_path / "hetero"
    again = assert_reloads(model, stories[1], path, plain=False)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "pruning_heterogeneous" and config["pruning_base_model_type"] == "llama"
    assert config["num_attention_heads"] == 8 and config["num_hidden_layers"] == 5
    assert config["pruning_layer_structure"] == [
        {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 172},
        {"num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 172},
        {"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 0},
        {"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 100},
        {"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 172}]
    plain = AutoModelForCausalLM.from_pretrained(path).eval()  # the format is registered with transformers
    assert torch.equal(logits(plain), logits(model))
    save_model(again, stories[1], tmp_path / "again")  # reloaded and saved again: the same config.json
    assert (tmp_path / "again" / "config.json").read_text() == (path / "config.json").read_text()
    # unequal layers run under generate with a KV cache (layer 0 has no attention): same as uncached greedy
    assert_cached_generation_is_greedy(again, probe_ids()[:1, :6], 8)


def test_heterogeneous_record_is_validated_on_load(stories, tmp_path):
    model = fresh(stories)
    structure.remove_attention(model, pruning.get_adapter(model), 0)
    save_model(model, stories[1], tmp_path / "h")
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    config["pruning_layer_structure"] = config["pruning_layer_structure"][:-1]
    (tmp_path / "h" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="one entry per layer"):
        load_model(tmp_path / "h")


def test_heterogeneous_base_shape_is_one_rule():
    """Key-value heads default to the query heads everywhere (recording, validating, shaping); a base config
    without heads or FFN width is a FormatError, not a TypeError."""
    from pruning.core.heterogeneous import FormatError, base_shape, layer_shapes, record_layer_shapes

    from transformers import LlamaConfig, LlamaForCausalLM

    heads, ffn = 4, 32
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=ffn, num_hidden_layers=2,
                                         num_attention_heads=heads, num_key_value_heads=heads))
    del model.config.num_key_value_heads  # a config from before grouped-query attention
    assert base_shape(model.config) == (base := base_shape({"num_attention_heads": heads, "intermediate_size": ffn}))
    assert base.kv_heads == heads and not record_layer_shapes(model)  # uniform: saved as a plain config
    record = {"model_type": "pruning_heterogeneous", "pruning_base_model_type": "llama", "num_hidden_layers": 1,
              "intermediate_size": ffn, "pruning_layer_structure": [base.to_record()]}
    with pytest.raises(FormatError, match="num_attention_heads"):
        layer_shapes(record)
    assert layer_shapes({**record, "num_attention_heads": heads}) == [base]


def test_heterogeneous_weights_must_fit_the_record(stories, tmp_path):
    from safetensors.torch import load_file, save_file

    model = fresh(stories)
    structure.slice_heads(model, pruning.get_adapter(model), 1, [0, 1, 2, 3])
    save_model(model, stories[1], tmp_path / "h")
    weights = tmp_path / "h" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["model.layers.3.mlp.up_proj.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing.*layers.3.mlp.up_proj"):
        load_model(tmp_path / "h")


def test_sharded_heterogeneous_checkpoint_loads(stories, tmp_path):
    """Sharded safetensors are read by transformers itself (no hand-written reader)."""
    from pruning.core.heterogeneous import record_layer_shapes

    model = fresh(stories)
    structure.remove_feed_forward(model, pruning.get_adapter(model), 1)
    assert record_layer_shapes(model)
    model.save_pretrained(tmp_path / "h", max_shard_size="100KB")
    stories[1].save_pretrained(tmp_path / "h")
    assert (tmp_path / "h" / "model.safetensors.index.json").is_file()
    again, _ = load_model(tmp_path / "h")
    assert torch.equal(logits(again), logits(model))


def test_uniform_again_saves_the_plain_config(stories, tmp_path):
    """A reloaded heterogeneous model whose odd layer is removed is saved as a plain llama model."""
    model = fresh(stories)
    structure.remove_attention(model, pruning.get_adapter(model), 2)
    save_model(model, stories[1], tmp_path / "h")
    again, tokenizer = load_model(tmp_path / "h")
    structure.remove_layers(again, pruning.get_adapter(again), [2])
    assert_reloads(again, tokenizer, tmp_path / "plain", plain=True)
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["model_type"] == "llama" and "pruning_layer_structure" not in config


# --------------------------------------------------------------------------------------- similarity

def test_distances_equal_hand_computed_values():
    a = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    b = torch.tensor([[[0.0, 2.0], [1.0, 1.0]]])
    assert token_cosines(a, b, "all").tolist() == pytest.approx([0.0, 1 / math.sqrt(2)])
    assert token_cosines(a, b, "last").tolist() == pytest.approx([1 / math.sqrt(2)])
    from pruning.methods.depth_similarity import distances

    assert distances(token_cosines(a, b, "all"), "angular").tolist() == pytest.approx([0.5, 0.25])
    assert distances(token_cosines(a, b, "all"), "cosine").tolist() == pytest.approx([1.0, 1 - 1 / math.sqrt(2)])


def test_block_selection_and_even_spread():
    # greedy would take block 1 (score 1) and then only block 3 (9); the exact choice is 0 + 2 (total 4)
    assert select_blocks({0: 2.0, 1: 1.0, 2: 2.0, 3: 9.0}, 5, 2, 2) == [0, 2]
    assert select_blocks({0: 3.0, 1: 1.0, 2: 2.0, 3: 0.5}, 4, 1, 2) == [1, 3]
    assert evenly_spread(30, 8) == [2, 6, 9, 13, 16, 20, 23, 27]  # symmetric about the middle, ends kept
    assert evenly_spread(5, 3) == [1, 2, 3]


@torch.no_grad()
def layer_io(model, ids):
    """(inputs, outputs) of every decoder layer, taken with hooks: the hand reference."""
    inputs, outputs, handles = {}, {}, []

    def save_input(index, args, kwargs):
        inputs[index] = (args[0] if args else kwargs["hidden_states"]).double()

    def save_output(index, output):
        outputs[index] = (output[0] if isinstance(output, tuple) else output).double()

    for index, layer in enumerate(model.model.layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, kw, i=index: save_input(i, a, kw), with_kwargs=True))
        handles.append(layer.register_forward_hook(lambda m, a, o, i=index: save_output(i, o)))
    model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    return inputs, outputs


@pytest.mark.parametrize("criterion", ["angular", "cosine"])
@pytest.mark.parametrize("tokens,block_size", [("last", 1), ("all", 1), ("last", 2)])
def test_depth_scores_equal_hand_computed(stories, calib_ids, criterion, tokens, block_size):
    model = fresh(stories)
    inputs, outputs = layer_io(model, calib_ids)
    expected = {}
    for start in range(5 - block_size + 1):
        a, b = inputs[start], outputs[start + block_size - 1]
        if tokens == "last":
            a, b = a[:, -1], b[:, -1]
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        d = torch.arccos(cos) / math.pi if criterion == "angular" else 1 - cos
        expected[start] = d.mean().item()
    _, report = run(model, "depth", calib_ids, num_blocks=1, criterion=criterion, tokens=tokens, block_size=block_size)
    names = {s: str(s) if block_size == 1 else f"{s}-{s + 1}" for s in expected}
    for start, value in expected.items():
        assert report["scores"][names[start]] == pytest.approx(value, rel=1e-5, abs=1e-9)
    best = min(expected, key=expected.get)
    assert report["removed_layers"] == list(range(best, best + block_size))


def test_depth_respects_skip_blocks_and_reloads(stories, calib_ids, tmp_path):
    model, report = run(fresh(stories), "depth", calib_ids, num_blocks=2, criterion="cosine", skip_blocks=[0, -1])
    assert not {0, 4} & set(report["removed_layers"]) and len(report["removed_layers"]) == 2
    kept = [s for s in report["scores"] if int(s) not in report["removed_layers"]]
    assert max(report["scores"][str(i)] for i in report["removed_layers"]) <= min(report["scores"][s] for s in kept)
    one_layer = structure.numel(stories[0].model.layers[0])
    assert report["parameters_removed"] == 2 * one_layer
    assert report["prune_ratio_percent"] == pytest.approx(100 * 2 * one_layer / 260032, abs=1e-3)
    assert_reloads(model, stories[1], tmp_path / "d", plain=True)


def test_quark_window_search_picks_lowest_perplexity_window(stories, calib_ids):
    model, report = run(fresh(stories), "depth", calib_ids, num_blocks=2, criterion="perplexity")
    assert [w["layers"] for w in report["window_ppl"]] == [[0, 1], [1, 2], [2, 3], [3, 4]]
    for window in report["window_ppl"]:  # independent: remove the window, run the whole model
        reference = fresh(stories)
        structure.remove_layers(reference, pruning.get_adapter(reference), window["layers"])
        assert window["ppl"] == pytest.approx(math.exp(mean_nll(reference, calib_ids)), rel=1e-4)
    best = min(report["window_ppl"], key=lambda w: w["ppl"])
    assert report["removed_layers"] == best["layers"]
    assert report["ppl_dense_calibration"] == pytest.approx(math.exp(mean_nll(stories[0], calib_ids)), rel=1e-4)
    assert report["ppl_dense_calibration"] < best["ppl"]


# ------------------------------------------------------------------------------------------ methods

def test_layers_method_spreads_evenly_keeping_first_and_last(stories, tmp_path):
    model, report = run(fresh(stories), "layers", fraction=0.4)
    assert report["removed_layers"] == [1, 3]
    assert report["parameters_removed"] == 2 * structure.numel(stories[0].model.layers[0])
    assert_reloads(model, stories[1], tmp_path / "l", plain=True)


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_heads_method_removes_lowest_heads_exactly_and_reloads(stories, calib_ids, importance, tmp_path):
    model, report = run(fresh(stories), "heads", calib_ids, fraction=0.25, importance=importance)
    # 40 query heads, 25% = 10; a unit is one query head from each of the 4 groups -> 2 units (8 heads)
    removed = {int(k): v for k, v in report["removed_heads"].items()}
    assert sum(len(v) for v in removed.values()) == 8 and report["heads_after"] == 32
    assert report["parameters_removed"] == 8 * 2 * 64 * 8
    assert structure.numel(model) == 260032 - report["parameters_removed"]
    for layer, heads in removed.items():  # one head per group, the lower-scored of each pair
        scores = report["scores"][str(layer)]
        assert sorted(h // 2 for h in heads) == [0, 1, 2, 3]
        assert all(scores[h] <= scores[h ^ 1] for h in heads)
    if importance == "magnitude":
        attention = stories[0].model.layers[0].self_attn
        assert report["scores"]["0"] == pytest.approx(
            magnitude_importance(attention.q_proj.weight, attention.o_proj.weight, 8).tolist(), abs=1e-6)
    assert_reloads(model, stories[1], tmp_path / "h", plain=False)


def test_heads_group_mode_removes_whole_kv_groups(stories, tmp_path):
    model, report = run(fresh(stories), "heads", fraction=0.5, gqa="group")
    # 20 heads = 10 groups of (2 query heads + 1 kv head): 10 × (2·1024 + 1024)
    assert report["parameters_removed"] == 10 * 3 * 1024
    for heads in report["removed_heads"].values():
        assert len(heads) % 2 == 0 and all(h ^ 1 in heads for h in heads)
    assert_reloads(model, stories[1], tmp_path / "g", plain=False)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "qwen3", "gemma"])
def test_heads_and_sub_blocks_on_other_llama_like_families(family, tmp_path):
    model = build_tiny_model(family)
    adapter = pruning.get_adapter(model)
    model, _ = run(model, "heads", fraction=0.25)
    structure.remove_feed_forward(model, adapter, 1)
    structure.remove_attention(model, adapter, 0)
    assert_reloads(model, None, tmp_path / family, plain=False)


@pytest.mark.parametrize("family", ["phi3", "gpt2", "opt", "gemma2"])
def test_ffn_channel_slicing_refused_clearly_where_not_implemented(family):
    # head pruning and sub-block removal run on every family (tests/test_families.py); FLAP's channel slicing not
    with pytest.raises(MethodError, match="implemented for model types"):
        run(build_tiny_model(family), "flap", fraction=0.2)


def test_two_stage_counts_follow_the_real_sub_block_sizes():
    # smollm2-135m: FFN 3·576·1536 + 576, attention (9 q / 3 kv heads of 64) 2·576·576 + 2·576·192 + 576
    ffn, attention = 3 * 576 * 1536 + 576, 2 * 576 * 576 + 2 * 576 * 192 + 576
    target = 0.25 * 134_515_008
    n, m = counts_for_rate(target, ffn, attention, 30)
    assert (n, m) == (12, 2)
    assert abs(n * ffn + m * attention - target) <= attention / 2


def test_two_stage_hits_the_rate_and_removes_the_cheapest_attention(stories, calib_ids, tmp_path):
    model, report = run(fresh(stories), "two_stage", calib_ids, prune_rate=0.3)
    ffn, attention = report["ffn_block_parameters"], report["attention_block_parameters"]
    assert (ffn, attention) == (3 * 64 * 172 + 64, 2 * 64 * 64 + 2 * 64 * 32 + 64)  # q,o 64x64; k,v 64x32; norm
    target = 0.3 * 260032
    assert abs(report["parameters_removed"] - target) <= attention
    n, m = len(report["ffn_removed_layers"]), len(report["mha_removed_layers"])
    assert report["parameters_removed"] == n * ffn + m * attention == 260032 - structure.numel(model)
    bi = report["scores"]
    assert report["ffn_removed_layers"] == sorted(int(i) for i in sorted(bi, key=bi.get)[:n])
    # the greedy round's losses equal an independent full-model evaluation, and the lowest one won
    reference = fresh(stories)
    adapter = pruning.get_adapter(reference)
    for layer in report["ffn_removed_layers"]:
        structure.remove_feed_forward(reference, adapter, layer)
    losses = report["attention_rounds"][0]["candidate_losses"]
    for layer, loss in losses.items():
        probe = copy.deepcopy(reference)
        structure.remove_attention(probe, adapter, int(layer))
        assert loss == pytest.approx(mean_nll(probe, calib_ids), rel=1e-4)
    assert report["mha_removed_layers"] == [int(min(losses, key=losses.get))]
    assert_reloads(model, stories[1], tmp_path / "t", plain=False)


def test_all_runs_each_stage_and_reports_it(stories, calib_ids, tmp_path):
    model, report = run(fresh(stories), "all", calib_ids, head_fraction=0.25, layer_fraction=0.2, sparsity=0.5,
                        sparsity_method="magnitude")
    assert [s["stage"] for s in report["stages"]] == ["heads", "layers", "magnitude"]
    assert report["stages"][1]["result"]["removed_layers"] == [2]
    assert report["parameters_removed"] == sum(s["parameters_removed"] for s in report["stages"])
    assert report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert_reloads(model, stories[1], tmp_path / "a", plain=False)


# ---------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("method,arguments,message", [
    ("layers", {"fraction": 1.0}, "in \\(0, 1\\)"),
    ("layers", {"fraction": -0.1}, "in \\(0, 1\\)"),
    ("heads", {"fraction": 1.0}, "in \\(0, 1\\)"),
    ("heads", {"fraction": 0.2, "importance": "gradient"}, "importance"),
    ("depth", {"num_blocks": 0}, ">= 1"),
    ("depth", {"num_blocks": 2, "criterion": "euclid"}, "criterion"),
    ("depth", {"num_blocks": 2, "criterion": "perplexity", "block_size": 2}, "block_size"),
    ("depth", {"num_blocks": 2, "skip_blocks": "0,1"}, "skip_blocks"),
    ("two_stage", {"prune_rate": 1.5}, "prune_rate"),
    ("two_stage", {"ffn_layers": 1, "attention_layers": 2}, "attention_layers"),
    ("distill", {"base_method": "layers", "fraction": 0.2}, "training_data"),
    ("distill", {"base_method": "all", "training_data": "x.txt"}, "base_method"),
    ("all", {"head_fraction": 0, "layer_fraction": 0, "sparsity": 0}, "every stage is left out"),
])
def test_bad_arguments_fail_at_build(method, arguments, message):
    with pytest.raises(MethodError, match=message):
        pruning.build_method(method, **arguments)


@pytest.mark.parametrize("method,arguments,message", [
    ("depth", {"num_blocks": 5}, "leave none"),
    ("depth", {"num_blocks": 2, "skip_blocks": [0, 7]}, "out of range"),
    ("depth", {"num_blocks": 3, "skip_blocks": [0, 1, -1]}, "skip_blocks"),
    ("depth", {"num_blocks": 2, "block_size": 2, "skip_blocks": [2, 3]}, "skip_blocks"),
    ("layers", {"fraction": 0.9}, "first and last"),
    ("two_stage", {"prune_rate": 0.9}, "more than"),
])
def test_model_dependent_errors_come_before_any_change(stories, stories_dir, method, arguments, message, tmp_path):
    model = fresh(stories)
    with pytest.raises(MethodError, match=message):
        run(model, method, calib=None, **arguments)  # calibration None: fails if anything tried to use it
    assert torch.equal(logits(model), logits(stories[0]))
    with pytest.raises(MethodError, match=message):  # through the API: nothing written
        pruning.prune(str(stories_dir), method, tmp_path / "out", device="cpu", progress=False, nsamples=2, seqlen=16,
                      **arguments)
    assert not (tmp_path / "out").exists()


def test_cli_bad_input_exits_nonzero_without_output(stories_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for argv in (["--method", "layers", "--layer-reduction", "1.0"],
                 ["--method", "heads", "--layer-reduction", "0.2"],
                 ["--method", "depth", "--num-blocks", "5"],
                 ["--method", "depth", "--num-blocks", "2", "--option", "skip_blocks=[0,9]"]):
        code = cli_main(["prune", "--model", str(stories_dir), *argv, "--output-dir", str(out), "--quiet",
                         "--device", "cpu", "--nsamples", "2", "--seqlen", "16"])
        assert code != 0 and not out.exists()
        assert "error:" in capsys.readouterr().err


def test_cli_structured_run_writes_a_reloadable_model(stories_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["prune", "--model", str(stories_dir), "--method", "all", "--head-reduction", "0.25",
                     "--layer-reduction", "0.2", "--output-dir", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "prune.json").read_text())
    assert [s["stage"] for s in report["result"]["stages"]] == ["heads", "layers"]
    parameters = report["parameters"]
    assert parameters["after"]["total"] == parameters["before"]["total"] - report["result"]["parameters_removed"]
    model, _ = load_model(out)
    assert structure.numel(model) == report["parameters"]["after"]["total"]
    assert json.loads(capsys.readouterr().out)["prune_ratio_percent"] == report["result"]["prune_ratio_percent"]
