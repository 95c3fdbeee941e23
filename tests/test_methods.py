"""Every core method on every adapter family, and the quality ordering on a real model."""
import copy

import pytest
import torch
from conftest import TINY_FAMILIES, build_tiny_model

import pruning
from pruning.core.adapters import UnsupportedArchitecture, adapter_for_model_type, weight_matrix
from pruning.core.data import calibration_windows
from pruning.core.engine import LayerwiseEngine, input_hooks, input_statistics
from pruning.core.token_windows import token_windows, windows_nll
from pruning.methods.sparsify import is_valid_nm
from pruning.methods import MethodError, PruneContext
from pruning.methods.wanda import InputSquareMean
from pruning.core.ratios import NMPattern


def _prune_in_memory(model, method, seed=0, calibration=None, **arguments):
    calibration = calibration if calibration is not None else torch.randint(0, 512, (6, 32), generator=torch.Generator().manual_seed(seed))
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (calibration, {}), batch_size=4, progress=False)
    return pruning.build_method(method, **arguments).prune(ctx)


def _untargeted_state(model):
    adapter = pruning.get_adapter(model)
    layers = adapter.decoder_layers(model)
    targeted = {id(m.weight) for i in range(len(layers)) for m in adapter.linear_targets(model, i).values()}
    return {name: p.detach().clone() for name, p in model.named_parameters() if id(p) not in targeted}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("method,options", [("magnitude", {}), ("wanda", {}), ("sparsegpt", {}),
                                            ("wanda", {"one_pass": True}), ("sparsegpt", {"one_pass": True})],
                         ids=["magnitude", "wanda", "sparsegpt", "wanda-one-pass", "sparsegpt-one-pass"])
def test_exact_sparsity_and_nm_on_every_family(family, method, options):
    for ratio in ({"sparsity": 0.5}, {"nm": "2:4"}):
        model = build_tiny_model(family)
        before = _untargeted_state(model)
        report = _prune_in_memory(model, method, **ratio, **options)
        adapter = pruning.get_adapter(model)
        for index in range(adapter.num_layers(model)):
            for name, module in adapter.linear_targets(model, index).items():
                weight = weight_matrix(module)
                zeros = (weight == 0)
                if "nm" in ratio:
                    assert is_valid_nm(weight, NMPattern(2, 4)), name
                    assert int(zeros.sum()) == weight.numel() // 2, name
                elif method == "wanda":
                    assert (zeros.sum(dim=1) == weight.shape[1] // 2).all(), name
                elif method == "magnitude":
                    assert int(zeros.sum()) == weight.numel() // 2, name
                else:  # SparseGPT: exact within each block of 128 columns
                    blocks = -(-weight.shape[1] // 128)
                    assert abs(int(zeros.sum()) - weight.numel() // 2) <= blocks, name
        assert report["total_sparsity"] == pytest.approx(0.5, abs=0.01)
        after = _untargeted_state(model)
        assert before.keys() == after.keys()
        for name in before:  # embeddings, norms, biases, lm_head untouched
            assert torch.equal(before[name], after[name]), name


def test_unsupported_architecture_lists_supported():
    with pytest.raises(UnsupportedArchitecture, match="supported model types: .*llama.*opt"):
        adapter_for_model_type("mamba")


def test_unknown_method_and_options_rejected():
    with pytest.raises(MethodError, match="available: .*magnitude.*sparsegpt.*wanda"):
        pruning.build_method("obs", sparsity=0.5)
    with pytest.raises(MethodError, match="unknown option"):
        pruning.build_method("wanda", sparsity=0.5, blocksize=3)
    with pytest.raises(MethodError, match=r"\[0, 1\)"):
        pruning.build_method("magnitude", sparsity=1.2)


def test_ignore_patterns_leave_modules_dense():
    model = build_tiny_model("llama")
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       ignore=("*.mlp.down_proj",), progress=False)
    pruning.build_method("magnitude", sparsity=0.5).prune(ctx)
    assert (model.model.layers[0].mlp.down_proj.weight != 0).all()
    assert (model.model.layers[0].mlp.up_proj.weight == 0).float().mean() == 0.5


@pytest.fixture(scope="module")
def stories_setup(stories_dir, stories_text):
    model, tokenizer = pruning.load_model(stories_dir)
    calibration, _ = calibration_windows(tokenizer, str(stories_text["calibration"]), 32, 128, seed=0)
    evaluation = token_windows(tokenizer, stories_text["evaluation"].read_text(), 128)
    return model, tokenizer, calibration, evaluation


@pytest.mark.slow
def test_quality_ordering_on_stories260k(stories_setup):
    """At 50%: reconstruction error and in-domain perplexity order SparseGPT < Wanda < magnitude."""
    dense, _, calibration, evaluation = stories_setup
    assert evaluation.shape[0] >= 8
    adapter = pruning.get_adapter(dense)
    engine = LayerwiseEngine(dense, adapter, "cpu", batch_size=8, progress=False)
    engine.capture(evaluation)
    reference_inputs = list(engine.hidden)

    def first_layer_error(model):
        layer = adapter.decoder_layers(model)[0]
        engine.hidden = reference_inputs
        dense_out = engine.forward_layer(adapter.decoder_layers(dense)[0])
        out = engine.forward_layer(layer)
        return sum(float(((a - b) ** 2).sum()) for a, b in zip(out, dense_out))

    def ppl(model):
        nll, tokens = windows_nll(model, evaluation, batch_size=8)
        return torch.tensor(nll / tokens).exp().item()

    errors, ppls = {}, {"dense": ppl(dense)}
    for method in ("magnitude", "wanda", "sparsegpt", "wanda-one-pass", "sparsegpt-one-pass"):
        model = copy.deepcopy(dense)
        options = {"one_pass": True} if method.endswith("one-pass") else {}
        _prune_in_memory(model, method.removesuffix("-one-pass"), calibration=calibration, sparsity=0.5, **options)
        errors[method] = first_layer_error(model)
        ppls[method] = ppl(model)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors
    assert ppls["dense"] < ppls["sparsegpt"] <= ppls["wanda"] < ppls["magnitude"], ppls
    assert errors["sparsegpt-one-pass"] < errors["wanda-one-pass"] < errors["magnitude"], errors
    assert ppls["dense"] < ppls["sparsegpt-one-pass"] <= ppls["wanda-one-pass"] < ppls["magnitude"], ppls


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.slow
def test_one_pass_prunes_each_linear_from_the_already_pruned_layer(stories_setup, method):
    """One pass: q/k/v read the layer's unchanged input, so their masks equal the two-pass ones; o_proj
    reads the output of the pruned q/k/v, so its statistics (and mask) differ."""
    dense, _, calibration, _ = stories_setup
    masks = {}
    for one_pass in (False, True):
        model = copy.deepcopy(dense)
        _prune_in_memory(model, method, calibration=calibration, sparsity=0.5, one_pass=one_pass)
        attention = model.model.layers[0].self_attn
        masks[one_pass] = {name: getattr(attention, name).weight == 0 for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
    for name in ("q_proj", "k_proj", "v_proj"):
        assert torch.equal(masks[False][name], masks[True][name]), name
    assert not torch.equal(masks[False]["o_proj"], masks[True]["o_proj"])


def test_lockstep_forward_stops_every_batch_before_each_module(stories_setup):
    """forward_in_lockstep: one stop per module in layer order with every batch's input, and a module
    changed at its stop is run changed by every batch (outputs equal to the changed layer's)."""
    dense, _, calibration, _ = stories_setup
    model = copy.deepcopy(dense)
    adapter = pruning.get_adapter(model)
    engine = LayerwiseEngine(model, adapter, "cpu", batch_size=8, progress=False)
    engine.capture(calibration)
    assert len(engine.hidden) == 4
    layer, targets = engine.layers[0], adapter.linear_targets(model, 0)
    seen, stops = {}, []
    with input_hooks(targets, lambda name, x: seen.setdefault(name, []).append(x.clone())):
        engine.forward_layer(layer)

    def on_stop(name, inputs):
        stops.append(name)
        assert len(inputs) == 4 and all(torch.equal(x, y) for x, y in zip(inputs, seen[name])), name
        if name.endswith("mlp.down_proj"):
            weight_matrix(targets[name]).zero_()

    outputs = engine.forward_in_lockstep(layer, targets, on_stop)
    assert stops == list(targets)
    expected = engine.forward_layer(layer)  # down_proj is zero now
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected))


def test_one_pass_rejects_a_module_called_twice():
    """One-pass pruning would prune a module on its first call and then see a second input: refused."""
    linear = torch.nn.Linear(4, 4)
    pruned = []
    with pytest.raises(RuntimeError, match="ran twice"):
        with input_statistics({"twice": linear}, lambda name: InputSquareMean(4, "cpu"),
                              on_ready=lambda name, stats: pruned.append(name)):
            linear(linear(torch.randn(2, 4)))
    assert pruned == ["twice"]
    with pytest.raises(MethodError, match="one_pass"):
        pruning.build_method("wanda", sparsity=0.5, one_pass="yes")


def test_same_seed_same_masks_different_seed_differs(stories_setup, stories_text):
    dense, tokenizer, _, _ = stories_setup
    masks = []
    for seed in (0, 0, 1):
        calibration, protocol = calibration_windows(tokenizer, str(stories_text["calibration"]), 8, 64, seed=seed)
        model = copy.deepcopy(dense)
        _prune_in_memory(model, "wanda", calibration=calibration, sparsity=0.5)
        masks.append(torch.cat([(p == 0).flatten() for p in model.parameters()]))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("one_pass", [False, True])
def test_sparsegpt_inverts_each_distinct_hessian_once(monkeypatch, one_pass):
    """q/k/v and gate/up read one input each: a llama layer needs 4 inverse Hessians, not 7."""
    from pruning.methods import sparsify as masks

    calls = []
    real = masks.inverse_hessian
    monkeypatch.setattr(masks, "inverse_hessian", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build_tiny_model("llama")
    _prune_in_memory(model, "sparsegpt", sparsity=0.5, one_pass=one_pass)
    assert len(calls) == 4 * pruning.get_adapter(model).num_layers(model)
