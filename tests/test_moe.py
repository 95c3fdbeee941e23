"""Mixture-of-experts models as transformers 5 builds them (experts fused into 3-D gate_up_proj / down_proj
parameters): Mixtral, Qwen2-MoE (with a shared expert and dense layers between MoE layers) and Qwen3-MoE on tiny
random configs built here. Every expert's linears are targeted with statistics from the tokens routed to them,
the router never; depth and layer removal keep the dense/MoE layout; pruned models reload with the same logits."""
import pytest
import torch
from conftest import DATA_DIR, TINY_VOCAB

import pruning
import pruning.api as api
from pruning.core.adapters import (EXPERT_PARTS, ExpertLinear, UnsupportedArchitecture, is_fused_experts,
                              weight_matrix)
from pruning.core.engine import input_statistics
from pruning.methods.sparsify import is_valid_nm, magnitude_scores, select_mask
from pruning.methods import PruneContext
from pruning.methods.wanda import InputSquareMean
from pruning.core.modeling import load_model, save_model
from pruning.core.ratios import Sparsity, parse_nm

MOE_FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe")
HIDDEN, EXPERTS = 64, 4


def moe_config(model_type: str, layers: int = 4, experts: int = EXPERTS):
    """Qwen2-MoE: MoE in layers 1 and 3 only (decoder_sparse_step 2); Qwen3-MoE: layer 0 dense (mlp_only_layers)."""
    from transformers import AutoConfig

    common = dict(vocab_size=TINY_VOCAB, num_hidden_layers=layers, hidden_size=HIDDEN, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256, tie_word_embeddings=False,
                  num_experts_per_tok=2)
    per_type = {
        "mixtral": dict(num_local_experts=experts),
        "qwen2_moe": dict(num_experts=experts, moe_intermediate_size=32, shared_expert_intermediate_size=48,
                          decoder_sparse_step=2),
        "qwen3_moe": dict(num_experts=experts, moe_intermediate_size=32, head_dim=16, mlp_only_layers=[0]),
    }
    return AutoConfig.for_model(model_type, **common, **per_type[model_type])


def build(model_type: str, seed: int = 0, **config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(moe_config(model_type, **config), dtype=torch.float32).eval()


def calibration(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, TINY_VOCAB, (6, 32), generator=torch.Generator().manual_seed(seed))


def prune_in_memory(model, method: str, **arguments) -> dict:
    ids = calibration()
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (ids, {}), batch_size=4, progress=False)
    return pruning.build_method(method, **arguments).prune(ctx)


def all_targets(model) -> dict:
    adapter = pruning.get_adapter(model)
    return {name: module for index in range(adapter.num_layers(model))
            for name, module in adapter.linear_targets(model, index).items()}


def moe_layers(model) -> list[int]:
    return [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")]


def untargeted(model) -> dict[str, torch.Tensor]:
    """Every parameter but the targeted linears' weights (routers, norms, embeddings, head)."""
    targeted = {id(m.weight) for m in all_targets(model).values() if not isinstance(m, ExpertLinear)}
    return {name: p.detach().clone() for name, p in model.named_parameters()
            if id(p) not in targeted and not name.endswith(("experts.gate_up_proj", "experts.down_proj"))}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(calibration(seed=7)).logits


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_every_expert_linear_is_a_target_and_the_router_is_not(family):
    model = build(family)
    adapter = pruning.get_adapter(model)
    assert moe_layers(model) == {"mixtral": [0, 1, 2, 3], "qwen2_moe": [1, 3], "qwen3_moe": [1, 2, 3]}[family]
    for index in moe_layers(model):
        targets = adapter.linear_targets(model, index)
        prefix = f"model.layers.{index}.mlp"
        experts = [n for n in targets if n.startswith(f"{prefix}.experts.")]
        assert experts == [f"{prefix}.experts.{e}.{p}_proj" for e in range(EXPERTS) for p in EXPERT_PARTS]
        assert not any(n in (f"{prefix}.gate", f"{prefix}.shared_expert_gate") for n in targets)
        shared = {f"{prefix}.shared_expert.{p}_proj" for p in EXPERT_PARTS}
        assert shared <= set(targets) if family == "qwen2_moe" else not shared & set(targets)
        # each expert linear is an [out, in] view writing through to the fused parameter
        fused = model.model.layers[index].mlp.experts
        assert is_fused_experts(fused)
        gate, up, down = (weight_matrix(targets[f"{prefix}.experts.2.{p}_proj"]) for p in EXPERT_PARTS)
        assert gate.shape == up.shape == (fused.gate_up_proj.shape[1] // 2, HIDDEN) and down.shape == (HIDDEN, gate.shape[0])
        up[0, 0] = 123.0
        assert fused.gate_up_proj[2, gate.shape[0], 0] == 123.0
    assert pruning.get_adapter(model).linear_targets(model, moe_layers(model)[0], ignore=("*.experts.*",)).keys() \
        .isdisjoint({n for n in all_targets(model) if ".experts." in n})


def test_expert_statistics_come_from_the_tokens_routed_to_it():
    model = build("qwen2_moe")
    block = model.model.layers[1].mlp
    targets = {n: m for n, m in pruning.get_adapter(model).linear_targets(model, 1).items() if ".mlp." in n}
    x = torch.randn(2, 16, HIDDEN, generator=torch.Generator().manual_seed(3))
    flat = x.reshape(-1, HIDDEN)
    with input_statistics(targets, lambda name: InputSquareMean(weight_matrix(targets[name]).shape[1], "cpu")) as stats:
        with torch.no_grad():
            block(x)
    _, _, chosen = block.gate(flat)
    routed = 0
    for expert in range(EXPERTS):
        tokens = (chosen == expert).any(dim=-1)
        name = f"model.layers.1.mlp.experts.{expert}."
        assert stats[name + "gate_proj"] is stats[name + "up_proj"]  # one accumulator for the shared input
        assert stats[name + "gate_proj"].tokens == int(tokens.sum())
        torch.testing.assert_close(stats[name + "gate_proj"].mean, flat[tokens].pow(2).mean(0))
        gate, up = (flat[tokens] @ block.experts.gate_up_proj[expert].T).chunk(2, dim=-1)
        torch.testing.assert_close(stats[name + "down_proj"].mean, (block.experts.act_fn(gate) * up).pow(2).mean(0))
        routed += stats[name + "gate_proj"].tokens
    assert routed == flat.shape[0] * 2  # top-2: every token reaches two experts
    assert stats["model.layers.1.mlp.shared_expert.gate_proj"].tokens == flat.shape[0]  # the shared expert sees all


@pytest.mark.parametrize("family,method,options", [
    *[(family, method, {"sparsity": 0.5}) for family in MOE_FAMILIES for method in ("wanda", "sparsegpt")],
    ("qwen2_moe", "wanda", {"nm": "2:4", "one_pass": True}), ("qwen2_moe", "sparsegpt", {"nm": "2:4", "one_pass": True}),
    ("qwen2_moe", "magnitude", {"sparsity": 0.5}), ("qwen2_moe", "dsnot", {"sparsity": 0.5}),
    ("mixtral", "wanda", {"sparsity": 0.5, "allocation": "owl", "owl_lambda": 0.05}),
])
def test_mask_methods_prune_every_expert_exactly_and_leave_the_router(family, method, options):
    model = build(family, layers=2)
    kept = untargeted(model)
    report = prune_in_memory(model, method, **options)
    assert "uncalibrated_experts" not in report  # 192 tokens reach all four experts of every layer
    targets = all_targets(model)
    assert sum(isinstance(m, ExpertLinear) for m in targets.values()) == len(moe_layers(model)) * EXPERTS * 3
    for name, module in targets.items():
        weight = weight_matrix(module)
        if "nm" in options:
            assert is_valid_nm(weight, parse_nm("2:4")), name
        elif "allocation" in options:
            continue  # OWL: layers differ, the total is exact
        elif method in ("wanda", "dsnot"):
            assert ((weight == 0).sum(dim=1) == weight.shape[1] // 2).all(), name  # exactly half of every row
        else:
            assert int((weight == 0).sum()) == weight.numel() // 2, name
        assert report["per_module"][name]["sparsity"] == 0.5
    assert report["total_sparsity"] == 0.5
    for name, before in kept.items():  # routers (and shared-expert gate), norms, embeddings, head
        assert torch.equal(before, dict(model.named_parameters())[name]), name


@pytest.mark.parametrize("method,one_pass", [("wanda", False), ("sparsegpt", True)])
@pytest.mark.slow
def test_an_expert_no_token_reaches_is_pruned_by_magnitude(method, one_pass):
    """Router rows (0, v, -v, u, -u) give logits (0, a, -a, b, -b): top-2 always takes |a| and |b|, never expert 0."""
    model = build("mixtral", experts=5)
    for layer in model.model.layers:
        v, u = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(1))
        layer.mlp.gate.weight.data = torch.stack([torch.zeros(HIDDEN), v, -v, u, -u])
    expected = {name: select_mask(magnitude_scores(weight_matrix(m)), Sparsity(0.5), per="row")
                for name, m in all_targets(model).items() if ".experts.0." in name}
    dense = {name: weight_matrix(all_targets(model)[name]).clone() for name in expected}
    report = prune_in_memory(model, method, sparsity=0.5, one_pass=one_pass)
    assert report["uncalibrated_experts"]["linears"] == list(expected)  # expert 0's three linears in each layer
    targets = all_targets(model)
    for name, mask in expected.items():
        weight = weight_matrix(targets[name])
        assert torch.equal(weight == 0, mask) and torch.equal(weight[~mask], dense[name][~mask]), name


def test_masks_are_deterministic():
    first, second = build("qwen2_moe"), build("qwen2_moe")
    prune_in_memory(first, "sparsegpt", sparsity=0.5)
    prune_in_memory(second, "sparsegpt", sparsity=0.5)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_wanda_pruned_model_reloads_with_identical_logits(family, tmp_path, stories_tokenizer):
    model = build(family, layers=2)
    prune_in_memory(model, "wanda", sparsity=0.5)
    save_model(model, stories_tokenizer, tmp_path / "out")
    reloaded, _ = load_model(tmp_path / "out")
    assert torch.equal(logits(model), logits(reloaded))


@pytest.mark.parametrize("family,method,options", [
    ("mixtral", "layers", {"fraction": 0.5}),
    ("qwen3_moe", "layers", {"fraction": 0.5}),
    ("qwen2_moe", "layers", {"fraction": 0.5}),
    *[("qwen2_moe", "depth", {"num_blocks": 1, "criterion": c}) for c in ("angular", "cosine", "perplexity",
                                                                           "block_ppl", "taylor")],
    ("mixtral", "depth", {"num_blocks": 2, "criterion": "angular"}),
    ("qwen3_moe", "depth", {"num_blocks": 2, "criterion": "taylor"}),
])
def test_layer_removal_keeps_the_moe_layout_and_reloads(family, method, options, tmp_path, stories_tokenizer):
    model = build(family)
    is_moe = [hasattr(layer.mlp, "experts") for layer in model.model.layers]
    report = prune_in_memory(model, method, **options)
    kept = [i for i in range(4) if i not in report["removed_layers"]]
    assert report["layers_after"] == len(kept) == 4 - len(report["removed_layers"])
    save_model(model, stories_tokenizer, tmp_path / "out")
    reloaded, _ = load_model(tmp_path / "out")
    assert reloaded.config.num_hidden_layers == len(kept)
    assert [hasattr(layer.mlp, "experts") for layer in reloaded.model.layers] == [is_moe[i] for i in kept]
    assert torch.equal(logits(model), logits(reloaded))


def test_prune_api_end_to_end_on_a_saved_moe_model(tmp_path, stories_tokenizer):
    model = build("qwen2_moe")
    model.save_pretrained(tmp_path / "moe")
    stories_tokenizer.save_pretrained(tmp_path / "moe")
    report = pruning.prune(str(tmp_path / "moe"), "sparsegpt", tmp_path / "out", calib="c4", nsamples=4, seqlen=32,
                           device="cpu", data_dir_path=str(DATA_DIR), progress=False, sparsity=0.5)
    assert report["result"]["total_sparsity"] == 0.5
    reloaded, _ = load_model(tmp_path / "out")
    experts = reloaded.model.layers[1].mlp.experts
    for fused in (experts.gate_up_proj, experts.down_proj):
        assert ((fused == 0).sum(dim=(1, 2)) == fused[0].numel() // 2).all()  # every expert at exactly 50 %


@pytest.mark.parametrize("method,arguments", [("heads", {"fraction": 0.25}), ("two_stage", {"prune_rate": 0.2}),
                                              ("flap", {"fraction": 0.2}),
                                              ("all", {"head_fraction": 0.25, "layer_fraction": 0.25})])
def test_methods_that_cannot_prune_experts_are_refused_before_loading(method, arguments, tmp_path, monkeypatch):
    model = build("mixtral", layers=2)
    model.config.save_pretrained(tmp_path / "moe")
    model.save_pretrained(tmp_path / "moe")
    monkeypatch.setattr(api, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(UnsupportedArchitecture, match="mixture-of-experts model type 'mixtral'"):
        pruning.prune(str(tmp_path / "moe"), method, tmp_path / "out", calib="c4", nsamples=2, seqlen=32,
                      device="cpu", data_dir_path=str(DATA_DIR), progress=False, **arguments)
    assert not (tmp_path / "out").exists()


def test_gguf_export_of_an_moe_model_is_refused_from_its_config(tmp_path):
    from pruning.export import ExportError, export_gguf

    build("qwen3_moe", layers=2).save_pretrained(tmp_path / "moe")
    with pytest.raises(ExportError, match="'qwen3_moe' cannot be exported to GGUF"):
        export_gguf(tmp_path / "moe", tmp_path / "moe.gguf")
    assert not (tmp_path / "moe.gguf").exists()
