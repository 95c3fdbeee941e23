"""The calibration-loss searches (Quark's window search, two-stage's greedy attention rounds) on stories260K:
every score equals a brute-force evaluation of the changed model, bit for bit equal to the plain search that
walks the whole model every round, and the choices are the lowest scores; work counted per layer."""
from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch

import pruning
from pruning.core import surgery as structure
from pruning.core.engine import LayerwiseEngine
from pruning.core.token_windows import windows_nll
from pruning.methods.suffix_loss import SuffixLoss
from pruning.methods import PruneContext
from pruning.methods.search import RACE_FIRST_WINDOWS, choice_margin, race, race_rounds
from pruning.methods.two_stage import attention_round
from pruning.core.modeling import load_model


@pytest.fixture(scope="module")
def stories(stories_dir):
    return load_model(stories_dir)


def run(model, method, calib, batch_size=3, **arguments):
    ctx = PruneContext(model=model, tokenizer=None, adapter=pruning.get_adapter(model), device=torch.device("cpu"),
                       calibration=lambda: (calib, {"source": "test"}), batch_size=batch_size, progress=False)
    return pruning.build_method(method, **arguments).prune(ctx)


@torch.no_grad()
def mean_nll(model, ids) -> float:
    nll, tokens = windows_nll(model, ids, batch_size=4)
    return nll / tokens


@torch.no_grad()
def plain_round_losses(model, calib, batch_size, candidates) -> dict[int, float]:
    """The search as it was first written: capture the embeddings and walk every layer of the model, branching
    off at each candidate (the reference the faster walk must match exactly)."""
    adapter = pruning.get_adapter(model)
    layers = adapter.decoder_layers(model)
    engine = LayerwiseEngine(model, adapter, "cpu", batch_size, progress=False)
    suffix = SuffixLoss(model, adapter, engine, calib)
    losses = {}

    def probe(step):
        if step.index in candidates:
            with structure.attention_swapped_out(step.layer, adapter, step.index):
                losses[step.index] = suffix.mean_nll(step.inputs, list(layers[step.index:]))

    engine.capture(calib)
    engine.run(probe)
    return losses


@pytest.mark.parametrize("batch_size", [3, 8])
def test_two_stage_rounds_equal_brute_force_and_the_plain_walk(stories, calib_ids, batch_size):
    """Four greedy rounds over four candidates: each round's losses are those of the whole changed model
    (brute force, one copy per candidate) and exactly those of the plain whole-model walk."""
    report = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, batch_size=batch_size, ffn_layers=4,
                 attention_layers=4)
    candidates = report["ffn_removed_layers"]
    rounds = report["attention_rounds"]
    assert len(candidates) == 4 and len(rounds) == 4
    reference = copy.deepcopy(stories[0])
    adapter = pruning.get_adapter(reference)
    for layer in candidates:
        structure.remove_feed_forward(reference, adapter, layer)
    removed, first_chosen_early = [], False
    for round_ in rounds:
        remaining = [c for c in candidates if c not in removed]
        losses = {int(i): v for i, v in round_["candidate_losses"].items()}
        assert sorted(losses) == remaining
        assert losses == plain_round_losses(reference, calib_ids, batch_size, remaining)  # exactly
        for layer, loss in losses.items():
            probe = copy.deepcopy(reference)
            structure.remove_attention(probe, adapter, layer)
            assert loss == pytest.approx(mean_nll(probe, calib_ids), rel=1e-5)
        chosen = min(losses, key=lambda i: (losses[i], i))
        first_chosen_early = first_chosen_early or (chosen == remaining[0] and len(remaining) > 1)
        assert round_["removed"] == chosen and round_["loss"] == losses[chosen]
        structure.remove_attention(reference, adapter, chosen)
        removed.append(chosen)
    assert report["mha_removed_layers"] == sorted(removed)
    assert first_chosen_early  # a later round starts further on than the one before, from a stored state


@torch.no_grad()
def test_attention_round_walks_on_from_a_stored_state_and_hands_on_the_next(stories, calib_ids):
    """A round started before its first candidate, on a model whose layers between are intact, gives the
    plain walk's losses and hands on the inputs of its first candidate, as the plain walk computes them."""
    model = copy.deepcopy(stories[0])
    adapter = pruning.get_adapter(model)
    layers = adapter.decoder_layers(model)
    for layer in (2, 4):
        structure.remove_feed_forward(model, adapter, layer)
    engine = LayerwiseEngine(model, adapter, "cpu", 3, progress=False)
    suffix = SuffixLoss(model, adapter, engine, calib_ids)
    engine.capture(calib_ids)
    embeddings = engine.hidden
    windows, (start, state) = attention_round(suffix, adapter, layers, 0, embeddings, [2, 4])
    assert {i: suffix.mean_of(by_batch) for i, by_batch in windows.items()} == plain_round_losses(model, calib_ids, 3,
                                                                                                  [2, 4])
    assert start == 2
    expected = suffix.run_layers(embeddings, layers[:2])
    assert all(torch.equal(a, b) for a, b in zip(state, expected))
    assert not any(torch.equal(a, b) for a, b in zip(state, embeddings))


def test_two_stage_without_attention_rounds(stories, calib_ids):
    report = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, ffn_layers=2, attention_layers=0)
    assert report["attention_rounds"] == [] and report["mha_removed_layers"] == []


@pytest.mark.parametrize("num_blocks", [1, 3])
def test_quark_window_scores_equal_brute_force(stories, calib_ids, num_blocks):
    report = run(copy.deepcopy(stories[0]), "depth", calib_ids, num_blocks=num_blocks, criterion="perplexity")
    num_layers = stories[0].config.num_hidden_layers
    starts = range(num_layers - num_blocks + 1)
    assert [w["layers"] for w in report["window_ppl"]] == [[s, s + num_blocks - 1] for s in starts]
    brute = {}
    for s in starts:
        reference = copy.deepcopy(stories[0])
        structure.remove_layers(reference, pruning.get_adapter(reference), list(range(s, s + num_blocks)))
        brute[s] = math.exp(mean_nll(reference, calib_ids))
    for window in report["window_ppl"]:
        assert window["ppl"] == pytest.approx(brute[window["layers"][0]], rel=1e-5)
    best = min(brute, key=lambda s: (brute[s], s))
    assert report["removed_layers"] == list(range(best, best + num_blocks))


def test_choice_margin_counts_windows_and_pairs_them():
    differences = [1.0, 0.5, -1.0]  # runner-up minus choice, window by window
    assert choice_margin([[1.0, 2.0], [3.0]], [[2.0, 2.5], [2.0]]) == {  # two batches of windows
        "windows_won": 2, "windows": 3,
        "paired_t": round(statistics.fmean(differences) / (statistics.stdev(differences) / math.sqrt(3)), 4)}
    assert choice_margin([[1.0]], [[2.0]])["paired_t"] is None  # one window: no spread to pair against


def test_quark_choice_margin_from_brute_force_windows(stories, calib_ids):
    """The margin compares the chosen window and the runner-up window by window, as brute force scores them."""
    report = run(copy.deepcopy(stories[0]), "depth", calib_ids, num_blocks=1, criterion="perplexity")
    ranked = sorted(report["window_ppl"], key=lambda w: (w["ppl"], w["layers"][0]))
    margin = report["choice_margin"]
    assert margin["runner_up"] == ranked[1]["layers"] and report["removed_layers"] == ranked[0]["layers"][:1]
    per_window = {}
    for start in (ranked[0]["layers"][0], ranked[1]["layers"][0]):
        reference = copy.deepcopy(stories[0])
        structure.remove_layers(reference, pruning.get_adapter(reference), [start])
        per_window[start] = [[windows_nll(reference, calib_ids[w:w + 1], batch_size=1)[0]
                              for w in range(len(calib_ids))]]  # one batch of every window
    expected = choice_margin(*per_window.values())
    assert margin["windows"] == len(calib_ids) and margin["windows_won"] == expected["windows_won"]
    assert margin["paired_t"] == pytest.approx(expected["paired_t"], rel=1e-3)


def test_two_stage_rounds_report_their_margin(stories, calib_ids):
    report = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, ffn_layers=3, attention_layers=3)
    for round_ in report["attention_rounds"]:
        losses = {int(i): v for i, v in round_["candidate_losses"].items()}
        ranked = sorted(losses, key=lambda i: (losses[i], i))
        if len(ranked) == 1:
            assert "choice_margin" not in round_
            continue
        margin = round_["choice_margin"]
        assert margin["runner_up"] == ranked[1] and margin["windows"] == len(calib_ids)
        assert 0 <= margin["windows_won"] <= len(calib_ids) and margin["paired_t"] > 0  # the choice's mean is lower


def count_layer_passes(model, rows: int):
    """Forward hooks counting, per decoder layer, the calls on a whole batch of `rows` windows (the suffix loss
    check's one-window forward is not search work)."""
    calls = []
    for layer in pruning.get_adapter(model).decoder_layers(model):
        layer.register_forward_hook(  # after the layer ran: the capture stops the model before layer 0 runs
            lambda _m, args, kwargs, _out: calls.append(1)
            if (args[0] if args else kwargs["hidden_states"]).shape[0] == rows else None, with_kwargs=True)
    return calls


def test_searches_run_each_layer_no_more_than_their_floor(stories, calib_ids):
    """Quark: the prefix once (one walk of the model, which also gives the dense loss), then for each window
    only the layers after it. Two-stage: one block-influence pass, the layers before the first candidate once,
    and per round only the layers from the first to the last remaining candidate plus each candidate's suffix."""
    rows, num_layers = calib_ids.shape[0], stories[0].config.num_hidden_layers
    for size in (1, 2):
        model = copy.deepcopy(stories[0])
        calls = count_layer_passes(model, rows)
        run(model, "depth", calib_ids, batch_size=rows, num_blocks=size, criterion="perplexity")
        assert len(calls) == num_layers + sum(num_layers - s - size for s in range(num_layers - size + 1))

    model = copy.deepcopy(stories[0])
    calls = count_layer_passes(model, rows)
    report = run(model, "two_stage", calib_ids, batch_size=rows, ffn_layers=4, attention_layers=3)
    candidates = report["ffn_removed_layers"]
    expected, start, removed = num_layers + candidates[0], candidates[0], []
    for round_ in report["attention_rounds"]:
        remaining = [c for c in candidates if c not in removed]
        expected += remaining[-1] - start + sum(num_layers - c for c in remaining)
        start = remaining[0]
        removed.append(round_["removed"])
    assert len(calls) == expected
    plain = num_layers + sum(num_layers + sum(num_layers - c for c in candidates[r:]) for r in range(3))
    assert expected < plain


SUBSET_FACTS = ("search_windows", "search_scored_tokens")


@pytest.mark.parametrize("method, arguments", [
    ("depth", {"num_blocks": 2, "criterion": "perplexity"}),
    ("depth", {"num_blocks": 2, "criterion": "block_ppl"}),
    ("two_stage", {"ffn_layers": 4, "attention_layers": 3}),
])
def test_search_on_every_window_is_the_exact_search(stories, calib_ids, method, arguments):
    """search_windows = nsamples changes nothing but the record: every loss bit for bit, every choice."""
    exact = run(copy.deepcopy(stories[0]), method, calib_ids, **arguments)
    subset = run(copy.deepcopy(stories[0]), method, calib_ids, search_windows=len(calib_ids), **arguments)
    data = "ppl_data" if method == "depth" else "attention_loss_data"
    assert {k: subset.pop(k) for k in (*SUBSET_FACTS, data)} == {
        "search_windows": 8, "search_scored_tokens": 8 * 63,
        data: "the first 8 of the 8 calibration windows (search_windows; see calibration in prune.json), never the "
              "test split"}
    exact.pop(data, None)
    assert subset == exact


def test_first_windows_of_a_draw_are_the_smaller_draw(stories_text, stories_tokenizer, calib_ids):
    """Why the first N windows are a fair subset: they are exactly the seeded draw of N windows."""
    from pruning.core.data import calibration_windows

    ids, _ = calibration_windows(stories_tokenizer, str(stories_text["calibration"]), 3, 64, seed=0)
    assert torch.equal(ids, calib_ids[:3])


@pytest.mark.parametrize("criterion", ["perplexity", "block_ppl"])
def test_quark_and_block_ppl_on_a_subset_are_the_search_on_those_windows(stories, calib_ids, criterion):
    """search_windows=3 of 8 gives the losses, perplexities and choice of the search run on the first 3 windows."""
    subset = run(copy.deepcopy(stories[0]), "depth", calib_ids, num_blocks=2, criterion=criterion, search_windows=3)
    alone = run(copy.deepcopy(stories[0]), "depth", calib_ids[:3], num_blocks=2, criterion=criterion)
    assert subset.pop("search_windows") == 3 and subset.pop("search_scored_tokens") == 3 * 63
    assert subset.pop("ppl_data").startswith("the first 3 of the 8 calibration windows")
    alone.pop("ppl_data")
    assert subset == alone
    exact = run(copy.deepcopy(stories[0]), "depth", calib_ids, num_blocks=2, criterion=criterion)
    assert subset["ppl_dense_calibration"] != exact["ppl_dense_calibration"]  # the subset really is smaller


def test_two_stage_rounds_on_a_subset_score_on_those_windows(stories, calib_ids):
    """Stage 1 and the dense loss use all 8 windows; each attention round's losses are exactly the plain walk's
    on the first 3."""
    arguments = {"ffn_layers": 4, "attention_layers": 3}
    subset = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, search_windows=3, **arguments)
    exact = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, **arguments)
    for key in ("scores", "ffn_removed_layers", "calibration_loss_dense"):
        assert subset[key] == exact[key]
    assert subset["search_windows"] == 3 and subset["search_scored_tokens"] == 3 * 63
    assert subset["attention_loss_data"].startswith("the first 3 of the 8 calibration windows")
    reference = copy.deepcopy(stories[0])
    adapter = pruning.get_adapter(reference)
    for layer in subset["ffn_removed_layers"]:
        structure.remove_feed_forward(reference, adapter, layer)
    removed = []
    for round_, exact_round in zip(subset["attention_rounds"], exact["attention_rounds"]):
        remaining = [c for c in subset["ffn_removed_layers"] if c not in removed]
        losses = {int(i): v for i, v in round_["candidate_losses"].items()}
        assert losses == plain_round_losses(reference, calib_ids[:3], 3, remaining)  # exactly
        assert losses != {int(i): v for i, v in exact_round["candidate_losses"].items()}
        structure.remove_attention(reference, adapter, round_["removed"])
        removed.append(round_["removed"])


@pytest.mark.parametrize("method, arguments", [("depth", {"num_blocks": 1, "criterion": "perplexity"}),
                                               ("two_stage", {"ffn_layers": 2, "attention_layers": 1})])
def test_search_on_more_windows_than_given_is_refused_before_any_change(stories, calib_ids, method, arguments):
    """A library caller's calibration is only counted once read: still refused before the model changes."""
    model = copy.deepcopy(stories[0])
    with pytest.raises(pruning.methods.MethodError, match=f"^{method}: search_windows 9 is more than the 8 calibration"):
        run(model, method, calib_ids, search_windows=9, **arguments)
    before, after = stories[0].state_dict(), model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_race_drops_a_clearly_worse_candidate_after_one_round():
    """Candidate 1 is worse by 1 on every window of noise ±0.1: it is dropped after the first round; the
    scoring function is asked only for survivors."""
    asked = []

    def score(survivors, round_index):
        asked.append(list(survivors))
        noise = [0.1, -0.1, 0.05, -0.05]
        return {c: [5.0 + c + n for n in noise] for c in survivors}

    best, losses, rounds = race(score, [0, 1], rounds=4, z=3)
    assert best == 0 and asked == [[0, 1]] and rounds == [{"windows": 4, "candidates_left": 1}]
    assert len(losses[1]) == 4


def test_race_on_a_close_call_runs_every_round_and_returns_the_lowest_mean():
    """Two candidates within noise of each other are never separated: every round is scored and the lower mean
    over all windows wins, as in the exact search."""
    import random

    rng = random.Random(0)
    table = {c: [[3.0 + rng.gauss(0, 1) for _ in range(4)] for _ in range(5)] for c in (0, 1)}
    best, losses, rounds = race(lambda survivors, r: {c: table[c][r] for c in survivors}, [0, 1], rounds=5, z=3)
    means = {c: statistics.fmean(sum(table[c], [])) for c in (0, 1)}
    assert len(rounds) == 5 and rounds[-1]["windows"] == 20
    assert best == min(means, key=means.get)


@pytest.mark.parametrize("windows, batch_size, ends", [
    (32, 8, [RACE_FIRST_WINDOWS, 8, 16, 24, 32]), (20, 8, [RACE_FIRST_WINDOWS, 8, 16, 20]), (8, 3, [3, 6, 8]),
    (3, 8, [3]), (4, 1, [1, 2, 3, 4])])
def test_race_rounds_double_up_to_a_batch_then_add_a_batch(windows, batch_size, ends):
    """The first round (every candidate scored) is the smallest; the rounds tile the windows in order."""
    rounds = race_rounds(windows, batch_size)
    assert [r.stop for r in rounds] == ends and [r.start for r in rounds] == [0, *ends[:-1]]


@pytest.mark.parametrize("num_blocks", [1, 2])
def test_raced_quark_search_agrees_with_the_exact_search(stories, calib_ids, num_blocks):
    """On stories260K: the raced choice is the exact choice where the exact choice's margin has t >= 2, and
    otherwise its exact loss is within one standard error of the exact choice's; it never scores more
    candidate-windows than the exact search, and its losses are the exact search's on the windows it scored."""
    exact = run(copy.deepcopy(stories[0]), "depth", calib_ids, num_blocks=num_blocks, criterion="perplexity")
    raced = run(copy.deepcopy(stories[0]), "depth", calib_ids, num_blocks=num_blocks, criterion="perplexity",
                search="race")
    record = raced["race"]
    assert record["candidate_windows"] <= record["exact_candidate_windows"]
    t = exact["choice_margin"]["paired_t"]
    if t is not None and t >= 2:
        assert raced["removed_layers"] == exact["removed_layers"]
    else:
        scores = {w["layers"][0]: math.log(w["ppl"]) for w in exact["window_ppl"]}  # mean NLL per token
        reference = copy.deepcopy(stories[0])
        structure.remove_layers(reference, pruning.get_adapter(reference), exact["removed_layers"])
        per_window = [windows_nll(reference, calib_ids[w:w + 1], batch_size=1) for w in range(len(calib_ids))]
        per_token = [nll / tokens for nll, tokens in per_window]
        standard_error = statistics.stdev(per_token) / math.sqrt(len(per_token))
        assert scores[raced["removed_layers"][0]] - scores[exact["removed_layers"][0]] <= standard_error
    full = [w for w in raced["window_ppl"] if w["windows"] == len(calib_ids)]
    exact_ppl = {tuple(w["layers"]): w["ppl"] for w in exact["window_ppl"]}
    assert all(w["ppl"] == pytest.approx(exact_ppl[tuple(w["layers"])], rel=1e-6) for w in full)
    assert pruning.build_method("depth", num_blocks=1, criterion="perplexity").options().get("search") is None


@pytest.mark.parametrize("batch_size", [1, 3])
def test_raced_two_stage_rounds_agree_with_the_exact_rounds(stories, calib_ids, batch_size):
    """On stories260K, round by round while the two searches have removed the same layers: the raced choice is
    the exact one where the exact margin has t >= 2, and otherwise its exact loss is within one standard error
    (over windows) of the exact choice's; a candidate raced on every window has the exact loss; the race never
    scores more candidate-windows than the exact search."""
    arguments = {"ffn_layers": 4, "attention_layers": 3}
    exact = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, batch_size=batch_size, **arguments)
    raced = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, batch_size=batch_size, search="race", **arguments)
    assert raced["ffn_removed_layers"] == exact["ffn_removed_layers"]
    record = raced["race"]
    assert record["z"] == 3.0 and record["candidate_windows"] <= record["exact_candidate_windows"] == (4 + 3 + 2) * 8
    reference = copy.deepcopy(stories[0])
    adapter = pruning.get_adapter(reference)
    for layer in exact["ffn_removed_layers"]:
        structure.remove_feed_forward(reference, adapter, layer)
    for raced_round, exact_round in zip(raced["attention_rounds"], exact["attention_rounds"]):
        exact_losses = {int(i): v for i, v in exact_round["candidate_losses"].items()}
        for layer, loss in raced_round["candidate_losses"].items():
            if raced_round["candidate_windows"][layer] == len(calib_ids):
                assert loss == pytest.approx(exact_losses[int(layer)], rel=1e-6)
        chosen, ours = exact_round["removed"], raced_round["removed"]
        if exact_round["choice_margin"]["paired_t"] is not None and exact_round["choice_margin"]["paired_t"] >= 2:
            assert ours == chosen
        else:
            probe = copy.deepcopy(reference)
            structure.remove_attention(probe, adapter, chosen)
            per_token = [nll / tokens for nll, tokens in (windows_nll(probe, calib_ids[w:w + 1], batch_size=1)
                                                          for w in range(len(calib_ids)))]
            assert exact_losses[ours] - exact_losses[chosen] <= statistics.stdev(per_token) / math.sqrt(len(per_token))
        if ours != chosen:
            break  # the greedy rounds after a different choice search different models
        structure.remove_attention(reference, adapter, chosen)
    again = run(copy.deepcopy(stories[0]), "two_stage", calib_ids, batch_size=batch_size, search="race", **arguments)
    assert again["attention_rounds"] == raced["attention_rounds"]  # deterministic


def test_race_options_are_refused_where_they_do_not_apply():
    from pruning.methods import MethodError

    with pytest.raises(MethodError, match="criterion perplexity"):
        pruning.build_method("depth", num_blocks=1, criterion="angular", search="race")
    with pytest.raises(MethodError, match="race_z needs search=race"):
        pruning.build_method("depth", num_blocks=1, criterion="perplexity", race_z=2.0)
    with pytest.raises(MethodError, match="two_stage: race_z needs search=race"):
        pruning.build_method("two_stage", ffn_layers=2, race_z=2.0)
    assert pruning.build_method("two_stage", ffn_layers=2, search="race").options() == {
        "ffn_layers": 2, "attention_layers": 0, "search": "race", "race_z": 3.0}
