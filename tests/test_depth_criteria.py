"""Shortened LLaMA's depth criteria (Kim et al. 2024) on stories260K (5 layers): one-block-removed perplexity
(`block_ppl`) against brute force, Taylor scores against whole-model autograd, one column each in the PruneGPT
table from real runs, the CLI, bad input refused before the model is loaded, determinism."""
from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import torch
from conftest import DATA_DIR

import pruning
from pruning.core import surgery as structure
from pruning.cli import main as cli_main
from pruning.core.token_windows import windows_nll
from pruning.methods import PruneContext
from pruning.core.modeling import load_model
from pruning.reporting.metric_files import collect
from pruning.reporting.tables import build_tables

MODEL = "stories260K"
NUM_LAYERS = 5


@pytest.fixture(scope="module")
def stories(stories_dir):
    return load_model(stories_dir)



def fresh(stories):
    return copy.deepcopy(stories[0])


def run(model, calib, batch_size=3, **arguments):
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (calib, {"source": "test"}), batch_size=batch_size, progress=False)
    return pruning.build_method("depth", **arguments).prune(ctx)


@torch.no_grad()
def calibration_ppl(model, ids) -> float:
    nll, tokens = windows_nll(model, ids, batch_size=4)
    return math.exp(nll / tokens)


@pytest.mark.slow
def test_block_ppl_removes_the_blocks_whose_single_removal_costs_least(stories, calib_ids):
    """Brute force: remove each layer alone from a copy, measure the calibration perplexity of the whole
    model; the scores are those perplexities and the removed layers the lowest ones (one-shot)."""
    assert stories[0].config.num_hidden_layers == NUM_LAYERS
    brute = {}
    for layer in range(NUM_LAYERS):
        reference = fresh(stories)
        structure.remove_layers(reference, pruning.get_adapter(reference), [layer])
        brute[layer] = calibration_ppl(reference, calib_ids)
    ranked = sorted(brute, key=brute.get)
    assert brute[ranked[0]] < brute[ranked[1]] < brute[ranked[2]]  # a clear order, so the test can fail

    report = run(fresh(stories), calib_ids, num_blocks=1, criterion="block_ppl")
    assert report["scores"] == {str(layer): pytest.approx(ppl, rel=1e-4) for layer, ppl in brute.items()}
    assert report["removed_layers"] == [ranked[0]]
    assert report["ppl_dense_calibration"] == pytest.approx(calibration_ppl(stories[0], calib_ids), rel=1e-4)

    model = fresh(stories)
    report = run(model, calib_ids, num_blocks=2, criterion="block_ppl")
    assert report["removed_layers"] == sorted(ranked[:2])
    assert structure.numel(model) == structure.numel(stories[0]) - 2 * structure.numel(stories[0].model.layers[0])


def hand_taylor(model, ids) -> list[float]:
    """Σ |w · ∂L/∂w| per decoder layer over its `*weight` parameters, L the model's own mean loss on all of
    `ids` in one batch, gradients by plain autograd through the whole model."""
    model = copy.deepcopy(model)
    model.zero_grad()
    with torch.enable_grad():
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return [sum(float((p.detach() * p.grad).abs().sum()) for name, p in layer.named_parameters() if name.endswith("weight"))
            for layer in model.model.layers]


@pytest.mark.parametrize("batch_size", [8, 3])  # one batch, and three unequal ones summed
def test_taylor_scores_equal_autograd_through_the_whole_model(stories, calib_ids, batch_size):
    expected = hand_taylor(stories[0], calib_ids)
    model = fresh(stories).requires_grad_(False)  # frozen weights are scored too, and stay frozen
    report = run(model, calib_ids, batch_size=batch_size, num_blocks=2, criterion="taylor")
    assert report["scores"] == {str(layer): pytest.approx(score, rel=1e-4) for layer, score in enumerate(expected)}
    assert report["removed_layers"] == sorted(sorted(range(NUM_LAYERS), key=expected.__getitem__)[:2])
    assert report["ppl_dense_calibration"] == pytest.approx(calibration_ppl(stories[0], calib_ids), rel=1e-4)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())  # nothing left behind
    assert report["parameters_removed"] == 2 * structure.numel(stories[0].model.layers[0])


@pytest.mark.slow
def test_taylor_blocks_and_skip_blocks(stories, calib_ids):
    """block_size 2 sums the layers' scores; skip_blocks (the paper's Taylor+ heuristic) keeps layers."""
    single = run(fresh(stories), calib_ids, num_blocks=1, criterion="taylor")["scores"]
    pairs = run(fresh(stories), calib_ids, num_blocks=1, criterion="taylor", block_size=2)
    assert pairs["scores"] == {f"{s}-{s + 1}": pytest.approx(single[str(s)] + single[str(s + 1)], rel=1e-6)
                               for s in range(NUM_LAYERS - 1)}
    kept = run(fresh(stories), calib_ids, num_blocks=2, criterion="taylor", skip_blocks=[0, -1])
    allowed = [1, 2, 3]
    assert kept["removed_layers"] == sorted(sorted(allowed, key=lambda i: single[str(i)])[:2])
    assert sorted(kept["scores"]) == ["1", "2", "3"]


@pytest.mark.parametrize("criterion", ["block_ppl", "taylor"])
@pytest.mark.slow
def test_new_criteria_are_deterministic_and_record_their_options(stories, calib_ids, criterion):
    first, second = fresh(stories), fresh(stories)
    report = run(first, calib_ids, num_blocks=2, criterion=criterion)
    assert run(second, calib_ids, num_blocks=2, criterion=criterion) == report
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    options = pruning.build_method("depth", num_blocks=2, criterion=criterion).options()
    assert options == {"num_blocks": 2, "criterion": criterion, "skip_blocks": [], "block_size": 1}


EVAL = dict(dataset="wikitext2", seqlen=128, max_windows=4, device="cpu", data_dir_path=str(DATA_DIR))
CALIB = ["--calib", "c4", "--nsamples", "4", "--seqlen", "64", "--data-dir", str(DATA_DIR)]


@pytest.mark.slow
def test_depth_table_gets_one_column_per_new_criterion(stories_dir, tmp_path, capsys):
    """Real runs laid out as the workflow writes them (angular and block_ppl through the API, taylor through
    the CLI with --option criterion=taylor): the PruneGPT table shows Block PPL and Taylor beside Angular."""
    metrics = tmp_path / "results" / "metrics" / MODEL
    pruning.evaluate_perplexity(str(stories_dir), output=str(metrics / "dense/base/ppl.json"), **EVAL)
    for criterion in ("angular", "block_ppl", "taylor"):
        for blocks in (1, 2):
            out = tmp_path / "results" / "models" / MODEL / criterion / f"L{blocks}"
            if criterion == "taylor":
                code = cli_main(["prune", "--model", str(stories_dir), "--method", "depth", "--num-blocks", str(blocks),
                                 "--option", "criterion=taylor", "--output-dir", str(out), "--quiet", "--device", "cpu",
                                 *CALIB])
                assert code == 0, capsys.readouterr().err
            else:
                pruning.prune(str(stories_dir), "depth", out, calib="c4", nsamples=4, seqlen=64, device="cpu",
                              data_dir_path=str(DATA_DIR), progress=False, num_blocks=blocks, criterion=criterion)
            report = json.loads((out / "prune.json").read_text())
            assert report["options"]["criterion"] == criterion and len(report["result"]["removed_layers"]) == blocks
            assert load_model(out)[0].config.num_hidden_layers == NUM_LAYERS - blocks
            (metrics / criterion / f"L{blocks}").mkdir(parents=True)
            shutil.copy(out / "prune.json", metrics / criterion / f"L{blocks}" / "prune.json")
            pruning.evaluate_perplexity(str(out), output=str(metrics / criterion / f"L{blocks}" / "ppl.json"), **EVAL)

    table = {t.name: t for t in build_tables(collect(tmp_path / "results"))}[f"depth-{MODEL}"]
    lines = [line for line in table.markdown().splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[:1] + lines[2:]]
    assert rows[0] == ["# Blocks", "#Param", "Angular", "Block PPL", "Taylor"]
    for row, blocks in zip(rows[2:], (1, 2)):
        ppl = [json.loads((metrics / c / f"L{blocks}" / "ppl.json").read_text())["ppl"]
               for c in ("angular", "block_ppl", "taylor")]
        assert row[0] == str(blocks) and [cell.split(" ± ")[0] for cell in row[2:]] == [f"{p:.2f}" for p in ppl]
        assert all(" ± " in cell for cell in row[2:])  # each with its uncertainty over the windows
    assert "Calibration: c4, 4 × 64 tokens, seed 0" in table.caption


def test_bad_criterion_refused_before_the_model_is_loaded(tmp_path, capsys):
    """The model path does not exist: the criterion is refused first (exit 2, one line), nothing written."""
    out = tmp_path / "out"
    code = cli_main(["prune", "--model", str(tmp_path / "no-such-model"), "--method", "depth", "--num-blocks", "1",
                     "--option", "criterion=taylor_plus", "--output-dir", str(out), "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip() == ("error: depth: criterion must be one of angular, cosine, perplexity, block_ppl, taylor, "
                           "got 'taylor_plus'")


def test_search_windows_through_the_cli_is_recorded(stories_dir, tmp_path, capsys):
    """prune.json names the subset: the option, the windows and tokens scored, and what the perplexities are on."""
    out = tmp_path / "out"
    code = cli_main(["prune", "--model", str(stories_dir), "--method", "depth", "--num-blocks", "1", "--option",
                     "criterion=block_ppl", "--option", "search_windows=2", "--output-dir", str(out), "--quiet",
                     "--device", "cpu", *CALIB])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "prune.json").read_text())
    assert report["options"]["search_windows"] == 2 and report["calibration"]["nsamples"] == 4
    result = report["result"]
    assert result["search_windows"] == 2 and result["search_scored_tokens"] == 2 * 63
    assert result["ppl_data"] == ("the first 2 of the 4 calibration windows (search_windows; see calibration in "
                                  "prune.json), never the test split")
