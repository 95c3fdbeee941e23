"""Non-uniform sparsity allocation (OWL, per-layer schedule, ramp) for magnitude, Wanda and SparseGPT: the maths,
the exact total count of zeros on a real model, the prune.json record, and the refusals before any work."""
import json
import subprocess
import sys

import pytest
import torch

import pruning
from conftest import prune_copy, stories_and_windows
import pruning.api
from pruning.core.adapters import weight_matrix
from pruning.methods.allocation import (AllocationError, apportion, layer_zero_counts, outlier_ratio, owl_sparsities, ramp,
                                split_zeros, target_zeros)
from pruning.cli import main as cli_main
from pruning.methods.sparsify import inverse_hessian, select_mask, sparsegpt_solve
from pruning.methods import MethodError, build_method
from pruning.core.ratios import Sparsity

SCHEDULE = [0.55, 0.6, 0.7, 0.8, 0.85]  # stories260K has 5 decoder layers; mean 0.7


# ------------------------------------------------------------------ the maths


def test_apportion_is_exact_capped_close_and_deterministic():
    ideal = [10.4, 3.35, 7.25, 0.0, 5.0]
    counts = apportion(ideal, 26, [20, 20, 20, 20, 20])
    assert sum(counts) == 26 and counts == apportion(ideal, 26, [20] * 5)
    assert all(abs(c - x) < 1 for c, x in zip(counts, ideal))
    assert counts == [11, 3, 7, 0, 5]  # the one unit left after the floors goes to the largest remainder (0.4)
    capped = apportion([9.0, 1.0], 12, [10, 10])
    assert capped == [10, 2] and sum(capped) == 12
    with pytest.raises(AllocationError):
        apportion([1.0, 1.0], 5, [2, 2])
    assert split_zeros(10, [64, 64, 44]) == [4, 4, 2]


def test_outlier_ratio_counts_scores_above_m_times_the_layer_mean():
    scores = [torch.ones(9, 11), torch.tensor([1000.0])]  # mean ≈ 10.9: only the one large score is an outlier
    assert outlier_ratio(scores, 5) == pytest.approx(1 / 100)
    assert outlier_ratio(scores, 200) == 0


def test_owl_spreads_inversely_to_outliers_with_the_mean_at_the_target():
    ratios, sizes = [0.02, 0.01, 0.015, 0.03, 0.012], [100, 100, 100, 100, 100]
    sparsities = owl_sparsities(ratios, sizes, 0.7, 0.08)
    assert sum(sparsities) / 5 == pytest.approx(0.7, abs=1e-12)
    assert max(sparsities) - min(sparsities) == pytest.approx(0.16)  # 2λ wide, as the reference code
    by_outliers = sorted(range(5), key=lambda i: ratios[i])
    assert [sparsities[i] for i in by_outliers] == sorted(sparsities, reverse=True)  # more outliers, pruned less
    assert owl_sparsities([0.01] * 3, [5, 5, 5], 0.6, 0.08) == [0.6] * 3
    # unequal layer sizes weight the mean; a layer without targeted weights takes no part
    weighted = owl_sparsities([0.01, 0.02, None], [300, 100, 0], 0.5, 0.1)
    assert (weighted[0] * 300 + weighted[1] * 100) / 400 == pytest.approx(0.5) and weighted[2] == 0.5


def test_ramp_and_exact_layer_counts():
    assert ramp(0.5, 0.9, 5) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    sizes = [4099, 4099, 4100, 3000, 1]
    counts = layer_zero_counts([0.61, 0.65, 0.71, 0.8, 0.5], sizes, 0.69)
    assert sum(counts) == target_zeros(0.69, sum(sizes)) == round(0.69 * sum(sizes))
    with pytest.raises(AllocationError, match="layer 1 the sparsity 1.0"):
        layer_zero_counts([0.5, 1.0], [10, 10], 0.75)


def test_exact_count_selection_per_row_per_matrix_and_in_sparsegpt_blocks():
    torch.manual_seed(0)
    scores = torch.rand(7, 300)
    rows = select_mask(scores, Sparsity(0.5), per="row", zeros=1003)
    assert int(rows.sum()) == 1003 and set(rows.sum(dim=1).tolist()) == {143, 144}
    assert int(select_mask(scores, Sparsity(0.5), per="matrix", zeros=1003).sum()) == 1003
    x = torch.randn(512, 300)
    weight = torch.randn(7, 300)
    inverse = inverse_hessian(2 * x.t() @ x / 512)
    new_weight, mask, _ = sparsegpt_solve(weight, inverse, Sparsity(0.5), block_size=128, zeros=1003)
    assert int(mask.sum()) == 1003 == int((new_weight == 0).sum())


# ------------------------------------------------------------------ on stories260K


@pytest.fixture(scope="module")
def stories(stories_dir, stories_text):
    return stories_and_windows(stories_dir, stories_text["calibration"], 8)


def _zeros_per_layer(model):
    adapter = pruning.get_adapter(model)
    return [(sum(int((weight_matrix(m) == 0).sum()) for m in adapter.linear_targets(model, i).values()),
             sum(weight_matrix(m).numel() for m in adapter.linear_targets(model, i).values()))
            for i in range(adapter.num_layers(model))]


ALLOCATIONS = {"owl": {}, "schedule": {"schedule": SCHEDULE}, "ramp": {"ramp": [0.6, 0.8]}}
CASES = [(method, allocation, {}) for method in ("magnitude", "wanda", "sparsegpt") for allocation in ALLOCATIONS]
CASES += [("wanda", "owl", {"one_pass": True}), ("magnitude", "owl", {"per": "row"})]


@pytest.mark.parametrize("method,allocation,options", CASES,
                         ids=[f"{m}-{a}{'-' + '-'.join(map(str, o.values())) if o else ''}" for m, a, o in CASES])
def test_total_sparsity_is_exact_and_every_layer_gets_its_share(stories, method, allocation, options):
    dense, calibration = stories
    model, _, report = prune_copy(dense, calibration, method, sparsity=0.7, allocation=allocation,
                                   **ALLOCATIONS[allocation], **options)
    layers = _zeros_per_layer(model)
    numel = sum(n for _, n in layers)
    assert sum(z for z, _ in layers) == round(0.7 * numel) == report["zeroed_parameters"]
    record = report["allocation"]
    assert record["kind"] == allocation and [z for z, _ in layers] == record["layer_zeros"]
    sparsities = record["layer_sparsity"]
    assert sum(s * n for s, (_, n) in zip(sparsities, layers)) / numel == pytest.approx(0.7, abs=1e-5)
    for (zeros, size), asked in zip(layers, sparsities):
        assert abs(zeros / size - asked) <= 1 / size + 1e-6
    if allocation == "owl":
        assert len(set(sparsities)) == len(sparsities)
        assert max(sparsities) - min(sparsities) == pytest.approx(0.16, abs=1e-5)
        order = sorted(range(len(layers)), key=lambda i: record["outlier_ratio"][i])
        assert [sparsities[i] for i in order] == sorted(sparsities, reverse=True)
    elif allocation == "schedule":
        assert sparsities == pytest.approx(SCHEDULE)
    else:
        assert sparsities == pytest.approx([0.6, 0.65, 0.7, 0.75, 0.8])


def test_a_schedule_is_centred_on_the_target_sparsity(stories):
    dense, calibration = stories
    _, _, report = prune_copy(dense, calibration, "magnitude", sparsity=0.5, allocation="schedule", schedule=SCHEDULE)
    assert report["allocation"]["layer_sparsity"] == pytest.approx([s - 0.2 for s in SCHEDULE])
    assert report["total_sparsity"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.slow
def test_owl_is_deterministic_and_wanda_and_sparsegpt_share_its_outlier_ratios(stories):
    dense, calibration = stories
    first, _, report = prune_copy(dense, calibration, "wanda", sparsity=0.7, allocation="owl")
    again, _, _ = prune_copy(dense, calibration, "wanda", sparsity=0.7, allocation="owl")
    for a, b in zip(first.parameters(), again.parameters()):
        assert torch.equal(a == 0, b == 0)
    _, _, sparsegpt = prune_copy(dense, calibration, "sparsegpt", sparsity=0.7, allocation="owl")
    _, _, magnitude = prune_copy(dense, calibration, "magnitude", sparsity=0.7, allocation="owl")
    assert sparsegpt["allocation"]["outlier_ratio"] == report["allocation"]["outlier_ratio"]
    assert magnitude["allocation"]["layer_zeros"] == report["allocation"]["layer_zeros"]


def test_uniform_runs_keep_their_record_and_masks(stories):
    dense, calibration = stories
    uniform, _, report = prune_copy(dense, calibration, "wanda", sparsity=0.7)
    assert "allocation" not in report and "allocation" not in build_method("wanda", sparsity=0.7).options()
    for module in (m for i in range(5) for m in pruning.get_adapter(uniform).linear_targets(uniform, i).values()):
        weight = weight_matrix(module)
        assert ((weight == 0).sum(dim=1) == int(weight.shape[1] * 0.7)).all()  # Wanda's int(cols·s) per row


def test_prune_json_records_the_allocation_and_every_layer(stories_dir, stories_text, tmp_path, capsys):
    out = tmp_path / "owl"
    code = cli_main(["prune", "--model", str(stories_dir), "--method", "wanda", "--sparsity", "0.7",
                     "--option", "allocation=owl", "--option", "owl_lambda=0.1", "--calib",
                     str(stories_text["calibration"]), "--nsamples", "4", "--seqlen", "64", "--output-dir", str(out),
                     "--quiet", "--device", "cpu"])
    assert code == 0
    report = json.loads((out / "prune.json").read_text())
    assert report["options"] == {"target": {"kind": "sparsity", "sparsity": 0.7}, "one_pass": False,
                                 "allocation": "owl", "owl_m": 5.0, "owl_lambda": 0.1}
    result = report["result"]
    assert len(result["allocation"]["layer_sparsity"]) == len(result["per_layer"]) == 5
    assert [layer["zeros"] for layer in result["per_layer"].values()] == result["allocation"]["layer_zeros"]
    assert result["zeroed_parameters"] == round(0.7 * result["targeted_parameters"])


# ------------------------------------------------------------------ refusals, before any work



@pytest.mark.parametrize("argv,message", [
    (["--method", "sparsegpt", "--nm", "2:4", "--option", "allocation=owl"],
     "sparsegpt: allocation=owl needs a sparsity; an N:M pattern (2:4) prunes every layer alike"),
    (["--method", "wanda", "--sparsity", "0.7", "--option", "allocation=schedule", "--option", "schedule=[0.6, 0.8]"],
     "wanda: schedule has 2 sparsities but the model has 5 decoder layers"),
    (["--method", "magnitude", "--sparsity", "0.9", "--option", "allocation=ramp", "--option", "ramp=[0.7, 0.99]"],
     "magnitude: the allocation gives layer 4 the sparsity 1.0"),
    (["--method", "wanda", "--sparsity", "0.7", "--option", "allocation=owl", "--option", "owl_lambda=0.6"],
     r"wanda: owl_lambda must be a number in [0, 0.5), got 0.6"),
    (["--method", "wanda", "--sparsity", "0.7", "--option", "allocation=owl", "--option", "owl_lambda=0.35"],
     "wanda: owl_lambda 0.35 spreads sparsity 0.7 over"),
    (["--method", "magnitude", "--sparsity", "0.7", "--option", "ramp=[0.6, 0.8]"],
     "magnitude: ramp is given but allocation is uniform (add allocation=ramp)"),
])
def test_bad_allocations_exit_2_before_work_leaving_nothing(stories_dir, tmp_path, capsys, no_work, argv, message):
    out = tmp_path / "out"
    code = cli_main(["prune", "--model", str(stories_dir), *argv, "--output-dir", str(out), "--evaluate", "--quiet",
                     "--device", "cpu", "--nsamples", "2", "--seqlen", "16"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("error: ") and message in error, error
    assert not out.exists()


@pytest.mark.slow
def test_nm_with_owl_is_refused_by_python_m_pruning(stories_dir, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "pruning", "prune", "--model", str(stories_dir), "--method",
                             "wanda", "--nm", "2:4", "--option", "allocation=owl", "--output-dir", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: wanda: allocation=owl needs a sparsity; an N:M pattern (2:4) prunes "
                                     "every layer alike")
    assert not out.exists()


def test_allocation_options_are_checked_without_a_model():
    with pytest.raises(MethodError, match=r"^wanda: allocation=schedule needs schedule=\[\.\.\.\]$"):
        build_method("wanda", sparsity=0.7, allocation="schedule")
    with pytest.raises(MethodError, match=r"^sparsegpt: ramp: takes \[first, last\] \(two sparsities\), got 3"):
        build_method("sparsegpt", sparsity=0.7, allocation="ramp", ramp=[0.5, 0.6, 0.7])
    with pytest.raises(MethodError, match=r"^magnitude: schedule: every entry must be a sparsity in \[0, 1\), got 1"):
        build_method("magnitude", sparsity=0.7, allocation="schedule", schedule=[0.5, 1])
    assert build_method("magnitude", sparsity=0.7, allocation="owl").needs_calibration  # Wanda scores, as the paper
    assert not build_method("magnitude", sparsity=0.7, allocation="ramp", ramp=[0.6, 0.8]).needs_calibration
