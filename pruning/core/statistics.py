"""The uncertainty of a measured figure, from its per-item values: the one home of the statistics that the
tables, the plots and the benchmarks print (pure Python and numpy, no torch).

Every estimate is a mean over items (documents of a task, windows of a text) with its standard error (SE).
Two models measured on the same items are compared by their PAIRED difference, whose SE is that of the
per-item differences: far smaller than two independent SEs when the models agree on most items (Miller 2024,
"Adding Error Bars to Evals"). Two figures are called indistinguishable when the paired difference is within
`SE_MULTIPLE` (2) paired SEs of zero, about a 95 % test; the same multiple gives every interval here.

Perplexity. Window i has summed NLL y_i over t_i scored tokens. The mean NLL per token is the token-weighted
ratio m = Σ y_i / Σ t_i (ppl = exp(m)), and its SE is the ratio estimator's

    SE(m) = sqrt(n / (n − 1) · Σ (y_i − m·t_i)²) / Σ t_i,

which for windows of equal length is the sample SD of the per-window means y_i / t_i over √n. The interval
of the perplexity is exp(m ∓ 2·SE(m)) (asymmetric: the mean is taken in log space), its SE by the delta
method ppl · SE(m). On the same windows two models compare by d = m_a − m_b, with SE from the per-window
y_a,i − y_b,i in the same formula; the PPL ratio is exp(d), its interval exp(d ∓ 2·SE(d)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

SE_MULTIPLE = 2.0  # intervals are ± 2 SE; |paired difference| ≤ 2 paired SE reads "not distinguishable"


def _array(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: a non-empty list of numbers is needed, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: every value must be finite")
    return array


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` items and its standard error (None for a single item: no spread to measure)."""
    mean: float
    se: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.se is None else self.mean - SE_MULTIPLE * self.se

    @property
    def high(self) -> float | None:
        return None if self.se is None else self.mean + SE_MULTIPLE * self.se

    def within(self, value: float) -> bool | None:
        """Whether `value` lies within SE_MULTIPLE standard errors of the mean (None without an SE)."""
        return None if self.se is None else abs(self.mean - value) <= SE_MULTIPLE * self.se


def ratio_mean_se(numerators: Sequence[float], denominators: Sequence[float]) -> Estimate:
    """Σ y / Σ t over items (y_i, t_i) and its SE by the ratio estimator (module docstring): the
    weighted mean of y_i / t_i with weights t_i."""
    y, t = _array(numerators, "numerators"), _array(denominators, "denominators")
    if y.shape != t.shape:
        raise ValueError(f"{y.size} numerators against {t.size} denominators")
    if (t <= 0).any():
        raise ValueError("denominators (item weights, scored tokens) must be positive")
    mean = float(y.sum() / t.sum())
    n = y.size
    if n < 2:
        return Estimate(mean, None, n)
    residual = y - mean * t
    return Estimate(mean, float(math.sqrt(n / (n - 1) * float(residual @ residual)) / t.sum()), n)


def mean_se(values: Sequence[float]) -> Estimate:
    """The mean of per-item values and its SE, sample SD (n − 1) / √n: lm-evaluation-harness's stderr of a
    mean-aggregated metric such as acc."""
    values = _array(values, "values")
    return ratio_mean_se(values, np.ones_like(values))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Estimate:
    """Mean of a_i − b_i over the same items, with the SE of those per-item differences."""
    a, b = _array(a, "a"), _array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same items: {a.size} against {b.size}")
    return mean_se(a - b)


def indistinguishable(difference: Estimate) -> bool | None:
    """|paired difference| ≤ SE_MULTIPLE paired SEs (None without an SE)."""
    return difference.within(0.0)


def mean_of_independent(estimates: Sequence[Estimate]) -> Estimate:
    """The plain mean of estimates over disjoint item sets (an average over tasks), SE sqrt(Σ SE²) / k;
    no SE when one of them has none."""
    if not estimates:
        raise ValueError("no estimates to average")
    ses = [e.se for e in estimates]
    se = None if None in ses else math.sqrt(sum(s * s for s in ses)) / len(estimates)
    return Estimate(sum(e.mean for e in estimates) / len(estimates), se, sum(e.n for e in estimates))


# ---- perplexity -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Perplexity:
    """exp of the token-weighted mean NLL over windows, with its interval and delta-method SE."""
    nll: Estimate  # mean NLL per token and its SE (module docstring)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll.mean)

    @property
    def se(self) -> float | None:
        return None if self.nll.se is None else self.ppl * self.nll.se

    @property
    def low(self) -> float | None:
        return None if self.nll.se is None else math.exp(self.nll.low)

    @property
    def high(self) -> float | None:
        return None if self.nll.se is None else math.exp(self.nll.high)


def perplexity_estimate(window_nll: Sequence[float], window_tokens: Sequence[float]) -> Perplexity:
    """Perplexity of windows with summed NLLs `window_nll` over `window_tokens` scored tokens each."""
    return Perplexity(ratio_mean_se(window_nll, window_tokens))


@dataclass(frozen=True)
class PairedPerplexity:
    """Model a against model b on the same windows: the difference of mean NLL per token (log of the PPL
    ratio) with its paired SE, and the PPL difference with its paired delta-method SE."""
    log_ratio: Estimate
    difference: Estimate  # ppl_a − ppl_b

    @property
    def ratio(self) -> float:
        return math.exp(self.log_ratio.mean)

    @property
    def low(self) -> float | None:
        return None if self.log_ratio.se is None else math.exp(self.log_ratio.low)

    @property
    def high(self) -> float | None:
        return None if self.log_ratio.se is None else math.exp(self.log_ratio.high)

    @property
    def indistinguishable(self) -> bool | None:
        return indistinguishable(self.log_ratio)


def paired_perplexity(a_nll: Sequence[float], b_nll: Sequence[float], window_tokens: Sequence[float]) -> PairedPerplexity:
    """Two models' summed NLLs on the same windows (same order, same scored tokens)."""
    a, b, t = _array(a_nll, "a_nll"), _array(b_nll, "b_nll"), _array(window_tokens, "window_tokens")
    if not a.shape == b.shape == t.shape:
        raise ValueError(f"paired perplexity needs the same windows: {a.size} and {b.size} NLLs, {t.size} counts")
    log_ratio = ratio_mean_se(a - b, t)
    ppl_a, ppl_b = perplexity_estimate(a, t), perplexity_estimate(b, t)
    n, total = t.size, t.sum()
    # delta method: each window's contribution to ppl_a − ppl_b, linearised about the two means
    z = (ppl_a.ppl * (a - ppl_a.nll.mean * t) - ppl_b.ppl * (b - ppl_b.nll.mean * t)) / total
    se = float(math.sqrt(n / (n - 1) * float(z @ z))) if n > 1 else None
    return PairedPerplexity(log_ratio, Estimate(ppl_a.ppl - ppl_b.ppl, se, n))


# ---- chance -----------------------------------------------------------------------------------------

def chance_rate(options_per_item: Sequence[int]) -> float:
    """Expected accuracy of answering at random: the mean of 1 / (number of options) over the items."""
    options = _array(options_per_item, "options_per_item")
    if (options < 1).any():
        raise ValueError("every item needs at least one option")
    return float((1.0 / options).mean())


def majority_rate(labels: Sequence) -> float:
    """Accuracy of always giving the most frequent gold answer (BoolQ's "yes")."""
    if not len(labels):
        raise ValueError("no labels")
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / len(labels))


def at_chance(accuracy: Estimate, chance: float) -> bool | None:
    """Whether an accuracy fails to beat the chance rate by more than SE_MULTIPLE standard errors: within them
    of chance, or below it (a model below chance on a yes/no task answers by a bias, not by reading; BoolQ's
    "no" to every question scores 38 against chance 50). Such a task does not separate this model from
    guessing (None without an SE)."""
    if accuracy.se is None:
        return None
    return accuracy.mean - chance <= SE_MULTIPLE * accuracy.se


# ---- spread of repeated timings -----------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """Slowest, median and fastest of repeated measurements of a rate (timings are no means over items: no SE)."""
    low: float
    median: float
    high: float

    def ratio(self, reference: "Spread") -> "Spread":
        """This rate against a reference rate: median over median, the range from the least favourable pair
        (slowest here over fastest there) to the most favourable."""
        return Spread(self.low / reference.high, self.median / reference.median, self.high / reference.low)
