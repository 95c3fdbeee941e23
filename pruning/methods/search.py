"""Opt-in subset of the calibration windows for the calibration-loss searches (depth's perplexity and
block_ppl criteria, two-stage's attention rounds). Each candidate costs the layers after it plus the
full-vocabulary head on every window scored, so the exact search is at its floor; scoring the candidates
on the first `search_windows` windows (the windows are already a seeded random draw) cuts that cost in
proportion, at the price of a choice that may differ from the exact one.

Every search also reports its choice's margin over the runner-up, window by window (`choice_margin`): a loss
lower on average but on few windows, or by a small paired t statistic, is a choice another draw of calibration
windows may well not make, whatever the search's cost.
"""
from __future__ import annotations

from ..core.options import MethodError, Option
from ..core.statistics import paired_difference


def search_windows_option(candidates: str) -> Option:
    return Option("search_windows", int, f"score {candidates} on the first N calibration windows only (default: all, "
                                         "the exact search); the search's time falls with N / nsamples, and its "
                                         "choice may then differ from the exact one", low=1)


def check_search_windows(method: str, search_windows: int | None, nsamples: int) -> None:
    if search_windows is not None and search_windows > nsamples:
        raise MethodError(f"{method}: search_windows {search_windows} is more than the {nsamples} calibration windows "
                          f"(nsamples)")


def search_record(search_windows: int, nsamples: int, scored_tokens: int, data_key: str) -> dict:
    """What a subset search adds to the method's report: its size, and under `data_key` what the losses it
    reports were computed on."""
    return {"search_windows": search_windows, "search_scored_tokens": scored_tokens,
            data_key: f"the first {search_windows} of the {nsamples} calibration windows (search_windows; see "
                           f"calibration in prune.json), never the test split"}


def choice_margin(chosen: list[list[float]], runner_up: list[list[float]]) -> dict:
    """How decisively a search's choice beat its runner-up, from their losses on the same calibration windows
    (each window's summed NLL, batch by batch, as SuffixLoss.window_nlls gives them): the windows where the
    choice's loss was lower, and the paired t statistic of the runner-up's excess loss (mean over windows / its
    standard error; None with one window or no spread). Below about 2, another draw of calibration windows may
    well choose the runner-up."""
    pairs = [(ours, other) for ours_batch, other_batch in zip(chosen, runner_up, strict=True)
             for ours, other in zip(ours_batch, other_batch, strict=True)]
    excess = paired_difference([other for _, other in pairs], [ours for ours, _ in pairs])
    return {"windows_won": sum(other > ours for ours, other in pairs), "windows": len(pairs),
            "paired_t": round(excess.mean / excess.se, 4) if excess.se else None}
