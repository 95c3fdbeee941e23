"""ALPS (pruning/methods/alps.py, `alps_solve` in pruning/methods/sparsify.py) on stories260K: every linear's
result against SparseGPT's on the very inputs the linear saw in the run."""
import copy

import pytest
import torch

import pruning
from pruning.core.adapters import weight_matrix
from pruning.core.data import calibration_windows
from pruning.core.ratios import NMPattern, mask_target
from pruning.methods import MethodError, PruneContext
from pruning.methods.sparsegpt import HessianAccumulator
from pruning.methods.sparsify import (alps_solve, inverse_hessian, is_valid_nm, normalised_hessian,
                                      reconstruction_error, sparsegpt_solve)


@pytest.fixture(scope="module")
def stories(stories_dir, stories_text):
    model, tokenizer = pruning.load_model(stories_dir)
    calibration, _ = calibration_windows(tokenizer, str(stories_text["calibration"]), 16, 128, seed=0)
    return model, calibration


def _pruned_with_inputs(dense, calibration, **arguments):
    """A copy pruned by alps; per linear, the inputs it saw while still dense, its dense weight, the report."""
    model = copy.deepcopy(dense)
    adapter = pruning.get_adapter(model)
    linears = {name: module for index in range(adapter.num_layers(model))
               for name, module in adapter.linear_targets(model, index).items()}
    originals = {name: weight_matrix(m).detach().clone() for name, m in linears.items()}
    seen = {name: [] for name in linears}
    handles = [module.register_forward_pre_hook(
        lambda m, args, name=name: seen[name].append(args[0].detach().clone())
        if torch.equal(weight_matrix(m), originals[name]) else None) for name, module in linears.items()]
    context = PruneContext(model=model, tokenizer=None, adapter=adapter, device=torch.device("cpu"),
                           calibration=lambda: (calibration, {}), batch_size=4, progress=False)
    try:
        report = pruning.build_method("alps", **arguments).prune(context)
    finally:
        for handle in handles:
            handle.remove()
    return linears, originals, seen, report


@pytest.mark.parametrize("ratio", [{"sparsity": 0.5}, {"sparsity": 0.7}, {"nm": "2:4"}], ids=str)
def test_alps_error_is_at_most_sparsegpts_on_every_linear(stories, ratio):
    """On each linear's own calibration inputs, ALPS's output error (tr((W − W₀) H (W − W₀)ᵀ), undamped H) is
    at most SparseGPT's; the sparsity is exact (unstructured: int(numel · s) zeros per matrix) or a valid N:M."""
    dense_model, calibration = stories
    linears, originals, seen, report = _pruned_with_inputs(dense_model, calibration, **ratio)
    target = mask_target(ratio.get("sparsity"), ratio.get("nm"))
    worse = []
    for name, module in linears.items():
        weight, dense = weight_matrix(module).detach(), originals[name]
        statistics = HessianAccumulator(dense.shape[1], "cpu")
        for x in seen[name]:
            statistics.add(x)
        sparsegpt = sparsegpt_solve(dense, inverse_hessian(statistics.hessian, 0.01), target, 128)[0]
        ours, theirs = (reconstruction_error(w, dense, statistics.hessian) for w in (weight, sparsegpt))
        if ours > theirs * (1 + 1e-6):
            worse.append((name, ours, theirs))
        if isinstance(target, NMPattern):
            assert is_valid_nm(weight, target), name
        else:
            assert int((weight == 0).sum()) == int(weight.numel() * target.value), name
    assert not worse, worse
    assert report["solver"]["mean_relative_error"] <= report["solver"]["mean_relative_error_before_refinement"]


def test_admm_then_refinement_on_a_known_problem():
    """A least-squares problem whose best 50 % support is known (a diagonal H: the best support keeps the
    largest |w|·sqrt(h), and the kept weights stay as they were): ALPS finds it exactly, error as computed."""
    torch.manual_seed(0)
    h = torch.rand(16) + 0.5
    hessian = torch.diag(h)
    weight = torch.randn(4, 16)
    solved, info = alps_solve(weight, normalised_hessian(hessian, 1e-9), mask_target(0.5, None))
    best = weight.abs() * h.sqrt()
    keep = best.reshape(-1).argsort(descending=True)[:32]
    expected = torch.zeros(64)
    expected[keep] = weight.reshape(-1)[keep]
    assert torch.allclose(solved, expected.reshape(4, 16), atol=1e-4)
    assert info["error"] == pytest.approx(reconstruction_error(expected.reshape(4, 16), weight, hessian), rel=1e-3)


def test_same_calibration_same_weights(stories):
    dense_model, calibration = stories
    first = _pruned_with_inputs(dense_model, calibration, sparsity=0.5)
    second = _pruned_with_inputs(dense_model, calibration, sparsity=0.5)
    for name, module in first[0].items():
        assert torch.equal(weight_matrix(module), weight_matrix(second[0][name])), name


def test_bad_options_refused():
    for options in ({"rho": 0}, {"max_iterations": 0}, {"damp_fraction": 1.5}):
        with pytest.raises(MethodError):
            pruning.build_method("alps", sparsity=0.5, **options)
