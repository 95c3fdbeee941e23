"""The uncertainty of the figures the tables and plots show, from the per-item records of the metric files
(`pruning.evaluation.per_item`) through `pruning.core.statistics`: each perplexity and accuracy as a `Figure`
with its standard error and interval, for a pruned run the paired comparison with its model's dense run on
the same windows or documents, and for a zero-shot task whether the dense model answers it at chance (does
not beat guessing by more than 2 standard errors: then the task is not informative for that model and stays
out of its averages). Files written before the per-item
records have none of it: their figures carry the value alone, and the tables say so.
"""
from __future__ import annotations

import math
from statistics import median
from dataclasses import asdict, dataclass, fields
from typing import Iterable

from ..core.statistics import (SE_MULTIPLE, Estimate, at_chance, indistinguishable, majority_rate,
                               mean_of_independent, mean_se, paired_difference, paired_perplexity,
                               perplexity_estimate)
from ..evaluation import per_item
from .metric_files import Results

# Past these, a table says plainly that it is a smoke run: comparing methods on accuracy needs paired standard
# errors of at most 1.5 points (issue 24's publication target), and a perplexity whose standard error is more
# than 5 % of itself has a 95 % interval wider than ±10 %.
PRECISE_ACCURACY_SE = 0.015
PRECISE_PPL_RELATIVE_SE = 0.05
PUBLICATION_PPL_WINDOWS = 64  # issue 24's publication protocol scores perplexity over at least this many windows


@dataclass(frozen=True)
class Figure:
    """A measured figure (as its metric file has it) and what the per-item data say about it. The fields
    after `value` are the CSV columns of the tables (docs/workflow.md#uncertainty)."""
    value: float | None
    n_items: int | None = None  # documents or windows measured
    se: float | None = None  # standard error of value (perplexity: delta method, ppl × SE of mean NLL)
    low: float | None = None  # value ± SE_MULTIPLE standard errors (perplexity: exp(mean NLL ± 2 SE))
    high: float | None = None
    vs_dense: float | None = None  # value − the dense run's, paired on the same items
    vs_dense_se: float | None = None  # its paired standard error
    vs_dense_ratio: float | None = None  # perplexity: value / the dense run's, with its interval
    vs_dense_ratio_low: float | None = None
    vs_dense_ratio_high: float | None = None
    indistinguishable: bool | None = None  # |paired difference| ≤ 2 paired SE (perplexity: of the log ratio)
    chance: float | None = None  # accuracy of guessing on these documents
    majority: float | None = None  # accuracy of always giving the most frequent gold answer
    at_chance: bool | None = None  # the model's dense run does not beat chance by more than 2 SE on this task
    unpaired: str | None = None  # why a pruned figure has no paired comparison (not a CSV column)

    def estimate(self) -> Estimate | None:
        return None if self.se is None else Estimate(self.value, self.se, self.n_items)

    def difference(self) -> Estimate | None:
        return None if self.vs_dense_se is None else Estimate(self.vs_dense, self.vs_dense_se, self.n_items)


CSV_FIELDS = [f.name for f in fields(Figure) if f.name not in ("value", "unpaired")]


def csv_values(figure: Figure | None) -> dict:
    """The CSV columns of a figure (all None for a number without one)."""
    values = asdict(figure) if figure is not None else {}
    return {name: values.get(name) for name in CSV_FIELDS}


# ---- perplexity -------------------------------------------------------------------------------------

def perplexity_figure(record: dict, reference: dict | None) -> Figure:
    """A perplexity record's figure; paired with `reference` (the dense run's record) when given."""
    windows = per_item.windows(record)
    if windows is None:
        return Figure(record["ppl"], unpaired="no per-window NLLs" if reference is not None else None)
    estimate = perplexity_estimate(windows.nll, windows.scored_tokens)
    figure = dict(value=record["ppl"], n_items=len(windows.nll), se=estimate.se, low=estimate.low, high=estimate.high)
    if reference is not None:
        problem = per_item.windows_problem(record, reference)
        if problem:
            figure["unpaired"] = problem
        else:
            paired = paired_perplexity(windows.nll, per_item.windows(reference).nll, windows.scored_tokens)
            figure.update(vs_dense=paired.difference.mean, vs_dense_se=paired.difference.se,
                          vs_dense_ratio=paired.ratio, vs_dense_ratio_low=paired.low, vs_dense_ratio_high=paired.high,
                          indistinguishable=paired.indistinguishable)
    return Figure(**figure)


def perplexity_figures(results: Results, ids: Iterable[int], source: str = "ppl", key: str = "",
                       paired: bool = True) -> dict[int, Figure]:
    """The perplexity figure of every run of `ids` that has the file, pruned runs paired with their model's
    dense run (its file of the same kind) unless not `paired`."""
    dense = results.dense()
    figures = {}
    for run in ids:
        record = results.record(run, source, key)
        if record is None or record.get("ppl") is None:
            continue
        reference_run = dense.get(results.runs.model[run])
        reference = (results.record(reference_run, source, key)
                     if paired and reference_run is not None and reference_run != run else None)
        figures[run] = perplexity_figure(record, reference)
    return figures


# ---- accuracy ---------------------------------------------------------------------------------------

def _accuracy_figure(record: dict, metric: str) -> tuple[Figure, per_item.Documents | None]:
    value = record.get("metrics", {}).get(metric, {}).get("value")
    scored = per_item.documents(record, metric)
    if value is None or scored is None or len(scored.values) < 2:
        return Figure(value), None
    estimate = mean_se(scored.values)
    if not math.isclose(estimate.mean, value, abs_tol=1e-9):  # a group that does not weigh its tasks by size
        return Figure(value), None
    chance = per_item.chance(scored)
    return Figure(value, n_items=len(scored.values), se=estimate.se, low=estimate.low, high=estimate.high,
                  chance=chance, majority=None if scored.gold is None else majority_rate(scored.gold),
                  at_chance=None if chance is None else at_chance(estimate, chance)), scored


def accuracy_figures(results: Results, ids: Iterable[int], metrics: dict[str, str]) -> dict[tuple[int, str], Figure]:
    """The figure of `metrics[task]` for every (run, task) of `ids` measured: the dense runs flag the tasks
    they answer at chance, and each pruned run carries its model's flag (same shots) and its paired difference
    from the dense run on the same documents."""
    ids = list(ids)
    dense = results.dense()
    own: dict[tuple[int, str], tuple[Figure, per_item.Documents | None, dict]] = {}
    for run in dict.fromkeys(ids + [dense[m] for m in dict.fromkeys(results.runs.model[ids]) if m in dense]):
        for task, metric in metrics.items():
            record = results.record(run, "zeroshot", task)
            if record is not None:
                own[(run, task)] = (*_accuracy_figure(record, metric), record)
    figures = {}
    for (run, task), (figure, scored, record) in own.items():
        if run not in ids:
            continue
        reference_run = dense.get(results.runs.model[run])
        if reference_run == run:
            figures[(run, task)] = figure
            continue
        if reference_run is None or (reference_run, task) not in own:  # no dense run to flag or pair with
            figures[(run, task)] = Figure(**{**asdict(figure), "at_chance": None})
            continue
        reference, reference_scored, reference_record = own[(reference_run, task)]
        same_shots = record.get("num_fewshot") == reference_record.get("num_fewshot")
        changes = dict(at_chance=reference.at_chance if same_shots else None)
        problem = per_item.documents_problem(record, reference_record, metrics[task])
        if problem is None and scored is not None and reference_scored is not None:
            difference = paired_difference(scored.values, reference_scored.values)
            changes.update(vs_dense=difference.mean, vs_dense_se=difference.se,
                           indistinguishable=indistinguishable(difference))
        else:
            changes["unpaired"] = problem or "no per-document outcomes"
        figures[(run, task)] = Figure(**{**asdict(figure), **changes})
    return figures


def informative(figures: Iterable[Figure]) -> list[Figure]:
    """The figures of tasks that separate the model from chance (not flagged at chance, or not testable)."""
    return [figure for figure in figures if figure.at_chance is not True]


def average_figure(figures: list[Figure]) -> Figure | None:
    """The mean over tasks (disjoint documents) of their figures, with SE and paired difference where every
    task has them; None when a task was not measured."""
    if not figures or any(figure.value is None for figure in figures):
        return None
    value = sum(figure.value for figure in figures) / len(figures)
    estimates, differences = [f.estimate() for f in figures], [f.difference() for f in figures]
    average = Figure(value)
    if None not in estimates:
        estimate = mean_of_independent(estimates)
        average = Figure(value, n_items=estimate.n, se=estimate.se, low=estimate.low, high=estimate.high)
    if None not in differences:
        difference = mean_of_independent(differences)
        average = Figure(**{**asdict(average), "vs_dense": difference.mean, "vs_dense_se": difference.se,
                            "indistinguishable": indistinguishable(difference)})
    return average


# ---- what the captions say ----------------------------------------------------------------------------

def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _span(values: list[float], fmt) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def accuracy_note(figures: Iterable[Figure]) -> str:
    """How sure the accuracies are, from their measured standard errors: a smoke run says so plainly."""
    figures = list(figures)
    measured = [f for f in (informative(figures) or figures) if f.se is not None]
    if not measured:
        return ""
    paired = [f.vs_dense_se for f in measured if f.vs_dense_se is not None]
    text = (f"standard errors of {_span([f.se for f in measured], _points)} points over "
            f"{_span([f.n_items for f in measured], str)} documents per task"
            + (f", paired against dense {_span(paired, _points)} points" if paired else ""))
    worst = max(paired) if paired else max(f.se for f in measured)
    if worst > PRECISE_ACCURACY_SE:
        return (f"Smoke run, large uncertainty: {text}; telling methods apart needs paired standard errors of "
                f"at most {100 * PRECISE_ACCURACY_SE:.1f} points, so these rows check the pipeline and rank nothing.")
    return f"Uncertainty: {text}."


def perplexity_note(figures: Iterable[Figure]) -> str:
    """How sure the perplexities are, from their measured standard errors: a smoke run says so plainly. The rows
    are compared on the same windows, so what decides is the paired spread (of each pruned row's ratio to dense;
    the plain one when nothing is paired): a run is a smoke run when it scored fewer windows than the publication
    protocol or its typical (median) row's standard error is above PRECISE_PPL_RELATIVE_SE. The few rows far above
    it (80 % sparsity, whose PPL varies most from window to window) carry their own ±."""
    measured = [f for f in figures if f.se is not None]
    if not measured:
        return ""
    relative = [f.se / f.value for f in measured]
    paired = [math.log(f.vs_dense_ratio_high / f.vs_dense_ratio_low) / (2 * SE_MULTIPLE) for f in measured
              if f.vs_dense_ratio_low and f.vs_dense_ratio_high]
    windows = [f.n_items for f in measured]
    percent = "{:.1%}".format
    text = (f"the standard error of a perplexity is {_span(relative, percent)} of it over {_span(windows, str)} "
            "windows" + (f", of its paired ratio to dense {_span(paired, percent)}" if paired else ""))
    if min(windows) < PUBLICATION_PPL_WINDOWS or median(paired or relative) > PRECISE_PPL_RELATIVE_SE:
        return (f"Smoke run, large uncertainty: {text} (the publication protocol scores at least "
                f"{PUBLICATION_PPL_WINDOWS} windows with typical standard errors of at most "
                f"{PRECISE_PPL_RELATIVE_SE:.0%}): differences of a few standard errors between rows are noise.")
    return f"Uncertainty: {text}."


def missing_note(figures: Iterable[Figure], items: str) -> str:
    """Said when some figures come from files without per-item data (never a made-up ±)."""
    if any(figure.value is not None and figure.se is None for figure in figures):
        return (f"A value without ± comes from a metric file written without per-{items} data (before they were "
                "recorded, or too few to measure a spread): no standard error or paired comparison for it.")
    return ""


def unpaired_note(figures: Iterable[Figure]) -> str:
    """Pruned figures measured on other items than their dense run's: never paired, and said why."""
    reasons = sorted({f.unpaired for f in figures if f.unpaired and not f.unpaired.startswith("no per-")})
    return f"Not paired with dense, measured on {'; '.join(reasons)}." if reasons else ""


def se_legend(kind: str) -> str:
    """What ± and ≈ mean in a table of figures measured over `kind` (windows, documents)."""
    return (f"±: one standard error over the {kind}; a pruned value marked ≈ is within {SE_MULTIPLE:g} paired standard "
            f"errors of its dense model on the same {kind} — not distinguishable from dense.")
