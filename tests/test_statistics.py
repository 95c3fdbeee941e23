"""pruning.core.statistics on known cases: hand-computed means and standard errors, paired differences (zero
for identical models, far below the unpaired SE when models agree on most items), the token-weighted
perplexity interval, the chance test on a model that answers at random, and the module stays torch-free."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from pruning.core.statistics import (SE_MULTIPLE, Estimate, Spread, at_chance, chance_rate, indistinguishable,
                                     majority_rate, mean_of_independent, mean_se, paired_difference,
                                     paired_perplexity, perplexity_estimate, ratio_mean_se)


def test_mean_and_standard_error_by_hand():
    # [1, 0, 1, 1]: mean 0.75, sample variance (3 · 0.25² + 0.75²) / 3 = 0.25, SE = 0.5 / √4
    estimate = mean_se([1, 0, 1, 1])
    assert (estimate.mean, estimate.se, estimate.n) == (0.75, pytest.approx(0.25), 4)
    assert (estimate.low, estimate.high) == (pytest.approx(0.25), pytest.approx(1.25))
    assert mean_se([0.3]).se is None and mean_se([0.3]).within(0.3) is None  # one item: no spread


def test_standard_error_is_lm_evals_stderr():
    from lm_eval.api.metrics import mean_stderr

    outcomes = np.random.default_rng(0).integers(0, 2, 57).tolist()
    assert mean_se(outcomes).se == pytest.approx(mean_stderr(outcomes), rel=1e-12)


def test_paired_difference_of_identical_models_is_zero():
    outcomes = [1, 0, 0, 1, 1, 0, 1]
    difference = paired_difference(outcomes, outcomes)
    assert (difference.mean, difference.se) == (0.0, 0.0)
    assert indistinguishable(difference) is True


def test_paired_difference_by_hand():
    # differences [0, 1, 0, 0, -1]: mean 0, sample variance 2 / 4, SE = sqrt(0.5 / 5)
    difference = paired_difference([1, 1, 0, 1, 0], [1, 0, 0, 1, 1])
    assert difference.mean == 0.0 and difference.se == pytest.approx(math.sqrt(0.1))
    every_item_better = paired_difference([1, 1, 1, 1], [0, 0, 0, 0])
    assert (every_item_better.mean, every_item_better.se) == (1.0, 0.0)
    assert indistinguishable(every_item_better) is False
    with pytest.raises(ValueError, match="same items: 3 against 2"):
        paired_difference([1, 0, 1], [1, 0])


def test_paired_se_is_far_below_the_unpaired_one_when_models_mostly_agree():
    rng = np.random.default_rng(1)
    dense = rng.integers(0, 2, 400)
    pruned = dense.copy()
    flipped = rng.choice(400, 20, replace=False)  # the pruned model differs on 5 % of the documents
    pruned[flipped] = 1 - pruned[flipped]
    paired = paired_difference(pruned, dense)
    unpaired = math.hypot(mean_se(pruned).se, mean_se(dense).se)
    assert paired.se < unpaired / 3
    assert paired.mean == pytest.approx(mean_se(pruned).mean - mean_se(dense).mean)


def test_indistinguishable_is_two_paired_standard_errors():
    assert SE_MULTIPLE == 2.0
    assert indistinguishable(Estimate(0.02, 0.01, 100)) is True  # exactly 2 SE
    assert indistinguishable(Estimate(-0.0201, 0.01, 100)) is False
    assert indistinguishable(Estimate(0.5, None, 1)) is None


def test_ratio_estimator_by_hand_and_equal_weights():
    # y = [1, 3, 2], t = [1, 1, 2]: m = 6 / 4; residuals -0.5, 1.5, -1; SE = sqrt(3/2 · 3.5) / 4
    estimate = ratio_mean_se([1, 3, 2], [1, 1, 2])
    assert estimate.mean == 1.5 and estimate.se == pytest.approx(math.sqrt(1.5 * 3.5) / 4)
    per_window = np.array([3.1, 2.7, 3.4, 2.9])
    equal = ratio_mean_se(per_window * 127, [127] * 4)
    assert equal.mean == pytest.approx(mean_se(per_window).mean) and equal.se == pytest.approx(mean_se(per_window).se)
    with pytest.raises(ValueError, match="must be positive"):
        ratio_mean_se([1.0], [0])


def test_perplexity_interval_contains_the_estimate_and_is_exp_mapped():
    rng = np.random.default_rng(2)
    tokens = np.array([511] * 15 + [300])  # one shorter window: token-weighted
    nll = rng.normal(3.3, 0.2, tokens.size) * tokens
    estimate = perplexity_estimate(nll, tokens)
    assert estimate.ppl == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert estimate.low < estimate.ppl < estimate.high
    assert estimate.high / estimate.ppl == pytest.approx(estimate.ppl / estimate.low)  # symmetric in log space
    assert math.log(estimate.high) - math.log(estimate.ppl) == pytest.approx(SE_MULTIPLE * estimate.nll.se)
    assert estimate.se == pytest.approx(estimate.ppl * estimate.nll.se)


def test_paired_perplexity_identical_and_shifted():
    tokens = [127, 127, 127, 127]
    nll = [400.0, 380.0, 420.5, 395.25]
    same = paired_perplexity(nll, nll, tokens)
    assert (same.ratio, same.log_ratio.se, same.difference.mean, same.difference.se) == (1.0, 0.0, 0.0, 0.0)
    assert same.indistinguishable is True and same.low == same.high == 1.0
    # every token 0.1 nats worse: the log ratio is exactly 0.1 with no spread, and the PPL difference's SE is
    # |ppl_a - ppl_b| times the SE of the mean NLL (the delta method's linearisation)
    worse = paired_perplexity([v + 0.1 * t for v, t in zip(nll, tokens)], nll, tokens)
    assert worse.log_ratio.mean == pytest.approx(0.1) and worse.log_ratio.se == pytest.approx(0.0, abs=1e-12)
    assert worse.ratio == pytest.approx(math.exp(0.1)) and worse.indistinguishable is False
    dense = perplexity_estimate(nll, tokens)
    assert worse.difference.mean == pytest.approx(dense.ppl * (math.exp(0.1) - 1))
    assert worse.difference.se == pytest.approx(abs(worse.difference.mean) * dense.nll.se)
    with pytest.raises(ValueError, match="same windows"):
        paired_perplexity(nll, nll[:3], tokens)


def test_a_model_answering_at_random_is_flagged_at_chance():
    rng = np.random.default_rng(3)
    options = rng.choice([3, 4, 5], 300)  # ARC has three to five answers per question
    gold = np.array([rng.integers(k) for k in options])
    guesses = np.array([rng.integers(k) for k in options])
    chance = chance_rate(options)
    assert chance == pytest.approx(np.mean(1 / options))
    assert at_chance(mean_se(guesses == gold), chance) is True
    knows = np.where(rng.random(300) < 0.6, gold, guesses)  # answers 60 % from knowledge
    assert at_chance(mean_se(knows == gold), chance) is False
    # yes/no questions, 62 % "yes": a model that answers "no" to all is far below chance, by a bias
    yes = rng.random(300) < 0.62
    outcome = mean_se(~yes)
    assert outcome.mean < 0.5 - 2 * outcome.se and at_chance(outcome, 0.5) is True
    assert at_chance(Estimate(0.3, None, 1), 0.25) is None


def test_chance_and_majority_rates():
    assert chance_rate([4, 4, 2]) == pytest.approx(1 / 3)
    assert chance_rate([2] * 10) == 0.5  # BoolQ
    assert majority_rate([1, 1, 0, 1]) == 0.75
    assert majority_rate(["yes", "no", "yes"]) == pytest.approx(2 / 3)


def test_mean_of_independent_estimates():
    average = mean_of_independent([Estimate(0.5, 0.03, 100), Estimate(0.7, 0.04, 50)])
    assert average.mean == pytest.approx(0.6) and average.se == pytest.approx(0.025) and average.n == 150
    assert mean_of_independent([Estimate(0.5, 0.03, 100), Estimate(0.5, None, 1)]).se is None


def test_spread_ratio_takes_the_least_and_most_favourable_pairs():
    pruned, dense = Spread(90.0, 100.0, 110.0), Spread(45.0, 50.0, 60.0)
    assert pruned.ratio(dense) == Spread(1.5, 2.0, 110.0 / 45.0)


def test_bad_values_are_refused():
    for values in ([], [1.0, float("nan")], [[1.0, 2.0]]):
        with pytest.raises(ValueError):
            mean_se(values)


def test_statistics_module_is_torch_free():
    loaded = subprocess.run([sys.executable, "-c", "import sys, pruning.core.statistics; print(*sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert "pruning.core.statistics" in loaded and "torch" not in loaded
