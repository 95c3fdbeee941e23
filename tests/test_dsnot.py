"""DSnoT mask refinement (pruning/methods/dsnot_refine.py, pruning/methods/dsnot.py) on stories260K: each linear's result
is checked against the base method's, recomputed here from the very inputs the linear saw in the run."""
import copy
import json
import subprocess
import sys

import pytest
import torch

import pruning
from pruning.core.adapters import weight_matrix
from pruning.core.data import calibration_windows
from pruning.methods.sparsify import inverse_hessian, is_valid_nm, select_mask, sparsegpt_solve, wanda_scores
from pruning.methods import MethodError, PruneContext
from pruning.methods.sparsegpt import HessianAccumulator
from pruning.methods.wanda import InputSquareMean
from pruning.core.ratios import NMPattern, mask_target
from pruning.methods.dsnot_refine import RefineSettings, dsnot_mask, refined_weights


@pytest.fixture(scope="module")
def stories(stories_dir, stories_text):
    model, tokenizer = pruning.load_model(stories_dir)
    calibration, _ = calibration_windows(tokenizer, str(stories_text["calibration"]), 16, 128, seed=0)
    return model, tokenizer, calibration


def _context(model, calibration):
    return PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                        calibration=lambda: (calibration, {}), batch_size=4, progress=False)


def _linears(model):
    adapter = pruning.get_adapter(model)
    return {name: module for index in range(adapter.num_layers(model))
            for name, module in adapter.linear_targets(model, index).items()}


def _run_recording_inputs(dense, calibration, **arguments):
    """Prune a copy with dsnot; per linear, the input batches it saw while still dense (the engine's
    statistics pass, not the re-run of the pruned layer), its dense weight, and the run's report."""
    model = copy.deepcopy(dense)
    linears = _linears(model)
    originals = {name: weight_matrix(m).detach().clone() for name, m in linears.items()}
    seen = {name: [] for name in linears}
    handles = [module.register_forward_pre_hook(
        lambda m, args, name=name: seen[name].append(args[0].detach().clone())
        if torch.equal(weight_matrix(m), originals[name]) else None) for name, module in linears.items()]
    try:
        report = pruning.build_method("dsnot", **arguments).prune(_context(model, calibration))
    finally:
        for handle in handles:
            handle.remove()
    return model, linears, originals, seen, report


def _base_weights(base, target, dense, batches):
    """What `base` (wanda or sparsegpt, default options) makes of `dense` given these input batches."""
    if base == "wanda":
        statistics = InputSquareMean(dense.shape[1], "cpu")
        for x in batches:
            statistics.add(x)
        return dense.masked_fill(select_mask(wanda_scores(dense, statistics.mean), target, per="row"), 0)
    statistics = HessianAccumulator(dense.shape[1], "cpu")
    for x in batches:
        statistics.add(x)
    return sparsegpt_solve(dense, inverse_hessian(statistics.hessian, 0.01), target, 128)[0]


def _error(dense, weight, batches):
    x = torch.cat([b.reshape(-1, b.shape[-1]) for b in batches]).double()
    return float(((x @ (dense.double() - weight.double()).t()) ** 2).sum())


RATIOS = [{"sparsity": 0.5}, {"sparsity": 0.6}, {"nm": "2:4"}, {"nm": "4:8"}]


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: str(next(iter(r.values()))))
@pytest.mark.parametrize("base", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("error_guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.slow
def test_refinement_keeps_the_pattern_and_never_raises_a_linear_s_error(stories, base, ratio, error_guard):
    """Against the base method on the same inputs: every row keeps its count of zeros, N:M stays valid,
    weights the base kept keep the base's value (SparseGPT's updates), regrown ones get their dense value;
    with the guard no linear's ||W x − W_pruned x||² on the calibration inputs rises, and the total falls."""
    dense, _, calibration = stories
    model, linears, originals, seen, report = _run_recording_inputs(dense, calibration, base=base, skip="none",
                                                                    error_guard=error_guard, **ratio)
    target = mask_target(ratio.get("sparsity"), ratio.get("nm"))
    total = {"base": 0.0, "dsnot": 0.0}
    changed = 0
    for name, module in linears.items():
        weight, original = weight_matrix(module), originals[name]
        batches = seen[name]
        assert len(batches) == -(-calibration.shape[0] // 4), name
        base_weight = _base_weights(base, target, original, batches)
        assert torch.equal((weight == 0).sum(dim=1), (base_weight == 0).sum(dim=1)), name
        if isinstance(target, NMPattern):
            assert is_valid_nm(weight, target), name
        both = (weight != 0) & (base_weight != 0)
        assert torch.equal(weight[both], base_weight[both]), name
        regrown = (weight != 0) & (base_weight == 0)
        assert torch.equal(weight[regrown], original[regrown]), name
        changed += int(regrown.sum())
        errors = _error(original, base_weight, batches), _error(original, weight, batches)
        if error_guard:
            assert errors[1] <= errors[0] * (1 + 1e-9), (name, errors)
        total["base"] += errors[0]
        total["dsnot"] += errors[1]
    assert changed > 0 and changed == report["dsnot"]["swaps"]
    assert report["dsnot"]["refined_modules"] == len(linears)
    if error_guard:
        assert total["dsnot"] < total["base"], total


def test_default_refines_attention_only_as_the_reference(stories):
    """skip=mlp (the reference's default): the MLP linears keep exactly Wanda's mask."""
    dense, _, calibration = stories
    model, linears, originals, seen, report = _run_recording_inputs(dense, calibration, sparsity=0.6)
    target = mask_target(0.6, None)
    differs, base_zeros = {}, 0
    for name, module in linears.items():
        base_weight = _base_weights("wanda", target, originals[name], seen[name])
        differs[name] = not torch.equal(weight_matrix(module), base_weight)
        base_zeros += int((base_weight == 0).sum())
    assert not any(d for name, d in differs.items() if ".mlp." in name)
    assert any(d for name, d in differs.items() if ".self_attn." in name)
    assert report["dsnot"]["refined_modules"] == 4 * 5
    assert report["zeroed_parameters"] == base_zeros  # Wanda's int(in·0.6) per row


def test_same_calibration_same_masks(stories, stories_text):
    dense, tokenizer, calibration = stories
    masks = []
    for windows in (calibration, calibration,
                    calibration_windows(tokenizer, str(stories_text["calibration"]), 16, 128, seed=1)[0]):
        model = copy.deepcopy(dense)
        pruning.build_method("dsnot", base="sparsegpt", sparsity=0.6).prune(_context(model, windows))
        masks.append(torch.cat([(p == 0).flatten() for p in model.parameters()]))
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


def test_a_swap_regrows_and_prunes_by_the_error_s_sign():
    """One row, ε = Σ_removed W·E[x] > 0: the regrown weight is the removed one with the largest positive
    W·E[x]/Var[x], the removed one the kept one with a negative W·E[x] and the lowest Wanda score."""
    dense = torch.tensor([[2.0, 1.0, -0.5, 3.0, -1.0, -2.0]])
    current = torch.tensor([[0.0, 0.0, 0.0, 3.0, -1.0, -2.0]])  # removed: 0, 1, 2; ε = 2 + 1 − 0.5 = 2.5
    mean = torch.ones(6)
    variance = torch.tensor([4.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # 2/4 < 1/1: column 1 comes back before 0
    square_mean = torch.ones(6)
    mask, info = dsnot_mask(dense, current, mean, variance, square_mean,
                            settings=RefineSettings(max_cycles=1, update_threshold=0.1))
    assert mask.tolist() == [[True, False, True, False, True, False]]  # 1 regrown, 4 (|−1| < |−2|) removed
    assert info == {"swaps": 1, "rows_changed": 1, "cycles": 1}
    assert refined_weights(dense, current, mask).tolist() == [[0.0, 1.0, 0.0, 3.0, 0.0, -2.0]]
    # ε after = 2.5 − 1 + (−1) = 0.5 > 0.1: the next swap (0 back, 5 out) would make ε = −3.5; with
    # same_sign that flip is refused and the row stops.
    mask, info = dsnot_mask(dense, current, mean, variance, square_mean,
                            settings=RefineSettings(max_cycles=5, update_threshold=0.1, same_sign=True))
    assert info["swaps"] == 1
    # Below the threshold nothing moves.
    mask, info = dsnot_mask(dense, current, mean, variance, square_mean, settings=RefineSettings(update_threshold=3))
    assert info["swaps"] == 0 and torch.equal(mask, current == 0)


def test_nm_swaps_stay_inside_the_group_and_a_partial_tail():
    torch.manual_seed(0)
    dense = torch.randn(16, 14)  # 3 groups of 4 and a tail of 2 (keeps min(2, N) = 2 under 2:4)
    pattern = NMPattern(2, 4)
    current = dense.masked_fill(select_mask(dense.abs(), pattern), 0)
    mean, variance = torch.randn(14), torch.rand(14) + 0.1
    mask, info = dsnot_mask(dense, current, mean, variance, mean ** 2 + variance, pattern,
                            RefineSettings(update_threshold=0.0))
    assert info["swaps"] > 0
    assert is_valid_nm(refined_weights(dense, current, mask), pattern)
    assert torch.equal(mask.sum(dim=1), (current == 0).sum(dim=1))
    assert not mask[:, 12:].any()


def test_bad_options_refused():
    for arguments, message in [({"base": "magnitude"}, "base must be one of wanda, sparsegpt"),
                               ({"max_cycles": 0}, "max_cycles must be an integer >= 1"),
                               ({"update_threshold": -1}, "update_threshold must be a number >= 0"),
                               ({"skip": "all"}, "skip must be one of"),
                               ({"pow_of_var": 1}, "unknown option pow_of_var")]:
        with pytest.raises(MethodError, match=message):
            pruning.build_method("dsnot", sparsity=0.5, **arguments)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pruning", *map(str, args)], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_prunes_and_refuses_bad_options_before_loading(stories_dir, stories_text, tmp_path):
    out = tmp_path / "dsnot"
    common = ["--calib", stories_text["calibration"], "--nsamples", 8, "--seqlen", 64, "--quiet", "--device", "cpu"]
    result = run_cli("prune", "--model", stories_dir, "--method", "dsnot", "--option", "base=wanda", "--sparsity", 0.5,
                     "--output-dir", out, *common)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "prune.json").read_text())
    assert report["method"] == "dsnot" and report["options"]["base"] == "wanda"
    assert report["options"]["max_cycles"] == 50 and report["options"]["update_threshold"] == 0.1
    assert report["result"]["total_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert report["result"]["dsnot"]["refined_modules"] == 20
    # A bad option is refused before the model is even looked at: a missing model does not get a word in.
    missing = tmp_path / "no-such-model"
    for option, message in [("base=magnitude", "base must be one of wanda, sparsegpt"),
                            ("max_cycles=-3", "max_cycles must be")]:
        result = run_cli("prune", "--model", missing, "--method", "dsnot", "--option", option, "--sparsity", 0.5,
                         "--output-dir", tmp_path / "bad", *common)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert not (tmp_path / "bad").exists()



def test_owl_allocation_reaches_the_base_mask(stories):
    """allocation=owl on dsnot: the base method prunes each layer to OWL's planned count and DSnoT keeps every
    row's count, so each layer's measured zeros equal the plan and the total is exact."""
    from pruning.methods.allocation import target_zeros
    from pruning.methods import build_method

    model, _, calibration = stories
    pruned = copy.deepcopy(model)
    report = build_method("dsnot", sparsity=0.6, allocation="owl", skip="none").prune(_context(pruned, calibration))
    allocation = report["allocation"]
    assert allocation["kind"] == "owl" and len(set(allocation["layer_sparsity"])) > 1
    assert [layer["zeros"] for _, layer in sorted(report["per_layer"].items(), key=lambda kv: int(kv[0]))] \
        == allocation["layer_zeros"]
    assert report["zeroed_parameters"] == target_zeros(0.6, report["targeted_parameters"])
