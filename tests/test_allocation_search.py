"""Searched layer sparsities (`allocation=search`, pruning/methods/allocation_search.py): the maths on constructed
cases, and runs on stories260K (exact total, reproducible, recorded, never worse than uniform on its own fitness)."""
import random

import pytest
import torch

import pruning
from conftest import prune_copy, stories_and_windows
from pruning.core.adapters import weight_matrix
from pruning.methods import MethodError
from pruning.methods.allocation_search import evolutionary_search, kl_divergence, level_sparsities, mutate


def test_mutations_keep_every_groups_total_and_stay_in_range():
    rng = random.Random(0)
    groups = [[0, 1, 2, 3], [4, 5]]
    parent = (3, 3, 3, 3, 3, 3)
    for _ in range(500):
        child = mutate(parent, groups, 6, rng)
        assert sum(child[i] for i in groups[0]) == 12 and sum(child[i] for i in groups[1]) == 6
        assert all(0 <= level <= 6 for level in child)
        parent = child


def test_search_finds_a_known_optimum():
    """Fitness = squared distance to a chosen allocation of the same total: the search reaches it exactly, and
    the full fitness after each generation never rises."""
    goal = (0, 2, 4, 1, 3, 2)
    calls = []

    def fitness(candidate, full):
        calls.append(full)
        return float(sum((a - b) ** 2 for a, b in zip(candidate, goal)))

    best, history = evolutionary_search((2,) * 6, [list(range(6))], 4, fitness, generations=200, offspring=8, seed=0)
    assert best == goal
    assert history[0] == fitness((2,) * 6, True) and history[-1] == 0
    assert all(later <= earlier for earlier, later in zip(history, history[1:]))
    assert False in calls  # offspring are ranked on the cheap stage first


def test_search_without_two_equal_layers_keeps_the_start():
    best, history = evolutionary_search((1, 1), [[0], [1]], 2, lambda c, full: 1.0, generations=5, offspring=4,
                                        seed=0)
    assert best == (1, 1) and history == [1.0]


def test_kl_divergence_of_a_distribution_from_itself_is_zero_and_positive_otherwise():
    logits = torch.randn(5, 11)
    dense = torch.log_softmax(logits.double(), -1)
    assert kl_divergence(dense, logits) == pytest.approx(0, abs=1e-12)
    assert kl_divergence(dense, logits.flip(-1)) > 0


def test_levels_must_stay_inside_zero_one():
    assert level_sparsities(0.7, 0.05, 2) == pytest.approx([0.6, 0.65, 0.7, 0.75, 0.8])
    with pytest.raises(MethodError, match="leave"):
        pruning.build_method("wanda", sparsity=0.9, allocation="search", search_step=0.05, search_levels=3)


@pytest.mark.parametrize("arguments, message", [
    ({"sparsity": 0.5, "search_generations": 3}, "allocation=search"),
    ({"nm": "2:4", "allocation": "search"}, "needs a sparsity"),
    ({"sparsity": 0.5, "allocation": "search", "search_offspring": 0}, "search_offspring"),
], ids=str)
def test_bad_search_options_are_refused(arguments, message):
    with pytest.raises(MethodError, match=message):
        pruning.build_method("wanda", **arguments)


def test_search_needs_windows_left_for_the_database():
    method = pruning.build_method("wanda", sparsity=0.5, allocation="search", search_windows=4)
    with pytest.raises(MethodError, match="holds out"):
        method.check_calibration(4)
    method.check_calibration(5)
    assert "allocation=search" in method.streaming_refusal()


@pytest.fixture(scope="module")
def stories(stories_dir, stories_text):
    return stories_and_windows(stories_dir, stories_text["calibration"], 10)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_searched_allocation_on_stories(stories, method):
    """The total is exactly round(0.6 × targeted weights), each layer's zeros as planned, the search's KL at
    most uniform's (it starts there and only accepts improvements), the same seed gives the same masks."""
    dense, calibration = stories
    arguments = dict(sparsity=0.6, allocation="search", search_generations=6, search_offspring=4, search_levels=2,
                     search_step=0.1)
    _, linears, report = prune_copy(dense, calibration, method, **arguments)
    zeros = sum(int((weight_matrix(m) == 0).sum()) for m in linears.values())
    total = sum(weight_matrix(m).numel() for m in linears.values())
    assert zeros == round(0.6 * total)
    allocation = report["allocation"]
    assert allocation["kind"] == "search"
    assert [layer["zeros"] for layer in report["per_layer"].values()] == allocation["layer_zeros"]
    search = allocation["search"]
    assert search["kl_chosen"] <= search["kl_uniform"]
    assert len(search["kl_per_generation"]) == 7
    assert set(allocation["layer_sparsity"]) <= {round(level, 6) for level in search["levels"]}
    _, again, _ = prune_copy(dense, calibration, method, **arguments)
    assert all(torch.equal(weight_matrix(linears[name]) == 0, weight_matrix(again[name]) == 0) for name in linears)
