"""Block-wise reconstruction (`reconstruct=blocks`, pruning/methods/reconstruction.py) on stories260K: each tuned
block's output error against the dense model falls, the zeros pruning chose stay zeros (exact sparsity, valid
N:M), the run is reproducible, and bad options are refused before any work."""
import copy

import pytest
import torch

import pruning
from conftest import prune_copy, stories_and_windows
from pruning.core.adapters import weight_matrix
from pruning.core.ratios import mask_target
from pruning.methods import MethodError, PruneContext
from pruning.methods.reconstruction import relative_error, tune_kept_weights
from pruning.methods.sparsify import is_valid_nm


@pytest.fixture(scope="module")
def stories(stories_dir, stories_text):
    return stories_and_windows(stories_dir, stories_text["calibration"], 16)



@pytest.mark.parametrize("method, ratio", [("wanda", {"sparsity": 0.7}), ("sparsegpt", {"nm": "2:4"}),
                                           ("magnitude", {"sparsity": 0.5})], ids=str)
def test_every_tuned_block_is_closer_to_dense_and_keeps_its_zeros(stories, method, ratio):
    """With reconstruct=blocks: every layer's output error against the dense stream is lower after tuning than
    after pruning; the first layer's mask is that of the same method without tuning and every matrix keeps its
    count of zeros (zeros stay zeros: exact sparsity or valid N:M); the kept weights did change; and the language-model loss on the calibration windows is lower."""
    dense, calibration = stories
    plain_model, plain, _ = prune_copy(dense, calibration, method, **ratio)
    tuned_model, tuned, report = prune_copy(dense, calibration, method, reconstruct="blocks", reconstruct_steps=24,
                                        reconstruct_lr=1e-3, **ratio)
    record = report["reconstruction"]
    assert [layer["layer"] for layer in record["per_layer"]] == list(range(len(record["per_layer"])))
    assert all(layer["error_tuned"] < layer["error_pruned"] for layer in record["per_layer"]), record["per_layer"]
    target = mask_target(ratio.get("sparsity"), ratio.get("nm"))
    first_layer = set(pruning.get_adapter(tuned_model).linear_targets(tuned_model, 0))  # later masks see tuned inputs
    changed = 0
    for name, module in tuned.items():
        weight, reference = weight_matrix(module), weight_matrix(plain[name])
        assert int((weight == 0).sum()) == int((reference == 0).sum()), name
        if name in first_layer:
            assert torch.equal(weight == 0, reference == 0), name
            changed += int((weight != reference).sum())
        if "nm" in ratio:
            assert is_valid_nm(weight, target), name
    assert changed > 0
    with torch.no_grad():
        losses = [model(input_ids=calibration, labels=calibration).loss.item() for model in (plain_model, tuned_model)]
    assert losses[1] < losses[0], losses
    assert report["total_sparsity"] == pytest.approx(
        sum(int((weight_matrix(m) == 0).sum()) for m in plain.values())
        / sum(weight_matrix(m).numel() for m in plain.values()), abs=1e-6)


def test_reconstruction_is_reproducible_and_recorded(stories):
    dense, calibration = stories
    arguments = dict(sparsity=0.6, reconstruct="blocks", reconstruct_steps=8)
    first_model, first, report = prune_copy(dense, calibration, "wanda", **arguments)
    _, second, _ = prune_copy(dense, calibration, "wanda", **arguments)
    assert all(torch.equal(weight_matrix(first[name]), weight_matrix(second[name])) for name in first)
    method = pruning.build_method("wanda", **arguments)
    assert method.options()["reconstruct"] == "blocks" and method.options()["reconstruct_steps"] == 8
    assert "reconstruct" not in pruning.build_method("wanda", sparsity=0.6).options()  # published layout kept
    assert report["reconstruction"]["steps"] == 8 and report["reconstruction"]["seconds"] > 0


def test_a_tuning_that_does_not_help_is_undone(stories):
    """A learning rate so large that Adam overshoots leaves every layer as it was pruned, and says so."""
    dense, calibration = stories
    _, plain, _ = prune_copy(dense, calibration, "wanda", sparsity=0.5)
    _, tuned, report = prune_copy(dense, calibration, "wanda", sparsity=0.5, reconstruct="blocks", reconstruct_steps=2,
                              reconstruct_lr=10.0)
    assert all(layer.get("kept", "").startswith("pruned") for layer in report["reconstruction"]["per_layer"])
    assert all(torch.equal(weight_matrix(tuned[name]), weight_matrix(plain[name])) for name in plain)


def test_tune_kept_weights_fits_a_masked_least_squares_problem():
    """One linear, its target made by a sparse weight of the same support: tuning from a perturbed start brings
    the error down by orders of magnitude and never touches a zero."""
    torch.manual_seed(0)
    truth = torch.randn(6, 10) * (torch.rand(6, 10) > 0.5)
    start = (truth + 0.3 * torch.randn(6, 10)) * (truth != 0)
    weight = torch.nn.Parameter(start.clone())
    inputs = [torch.randn(32, 10) for _ in range(3)]
    targets = [x @ truth.T for x in inputs]
    before = relative_error([x @ weight.detach().T for x in inputs], targets)
    with torch.enable_grad():
        tune_kept_weights(lambda i: inputs[i] @ weight.T, [weight], targets, steps=300, learning_rate=0.05)
    after = relative_error([x @ weight.detach().T for x in inputs], targets)
    assert after < before / 100
    assert torch.equal(weight.detach() == 0, truth == 0)


@pytest.mark.parametrize("arguments, message", [
    ({"reconstruct": "layers"}, "reconstruct"),
    ({"reconstruct_steps": 10}, "need reconstruct=blocks"),
    ({"reconstruct": "blocks", "reconstruct_steps": 0}, "reconstruct_steps"),
    ({"reconstruct": "blocks", "reconstruct_lr": 0}, "reconstruct_lr"),
], ids=str)
def test_bad_reconstruction_options_are_refused(arguments, message):
    with pytest.raises(MethodError, match=message):
        pruning.build_method("wanda", sparsity=0.5, **arguments)


def test_magnitude_needs_calibration_only_when_reconstructing():
    assert not pruning.build_method("magnitude", sparsity=0.5).needs_calibration
    assert pruning.build_method("magnitude", sparsity=0.5, reconstruct="blocks").needs_calibration


def test_a_bfloat16_model_is_tuned_in_float32_and_keeps_its_dtypes(stories):
    """The tuning runs on float32 copies (bfloat16 would round Adam's small steps away); every parameter ends in
    the dtype it had, and the zeros are kept."""
    dense, calibration = stories
    model = copy.deepcopy(dense).to(torch.bfloat16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    adapter = pruning.get_adapter(model)
    context = PruneContext(model=model, tokenizer=None, adapter=adapter, device=torch.device("cpu"),
                           calibration=lambda: (calibration, {}), batch_size=4, progress=False)
    report = pruning.build_method("wanda", sparsity=0.5, reconstruct="blocks", reconstruct_steps=4,
                                  reconstruct_lr=1e-3).prune(context)
    assert {name: p.dtype for name, p in model.named_parameters()} == dtypes
    linears = [m for index in range(adapter.num_layers(model)) for m in adapter.linear_targets(model, index).values()]
    assert sum(int((weight_matrix(m) == 0).sum()) for m in linears) == report["zeroed_parameters"]
    assert report["total_sparsity"] == pytest.approx(0.5, abs=1e-3)
