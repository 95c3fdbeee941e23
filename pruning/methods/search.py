"""Opt-in subset of the calibration windows for the calibration-loss searches (depth's perplexity and
block_ppl criteria, two-stage's attention rounds). Each candidate costs the layers after it plus the
full-vocabulary head on every window scored, so the exact search is at its floor; scoring the candidates
on the first `search_windows` windows (the windows are already a seeded random draw) cuts that cost in
proportion, at the price of a choice that may differ from the exact one.

Every search also reports its choice's margin over the runner-up, window by window (`choice_margin`): a loss
lower on average but on few windows, or by a small paired t statistic, is a choice another draw of calibration
windows may well not make, whatever the search's cost.

A racing search (`search=race`, `race`) scores the candidates on growing numbers of windows instead and drops
a candidate as soon as its paired excess loss over the leader is more than `race_z` standard errors: a clear
choice is made on a few windows, a close one runs on to all of them among the candidates still close. The
first round is the costliest (every candidate is scored on it), so the windows scored double from
`RACE_FIRST_WINDOWS` up to one calibration batch, then grow by one batch per round (`race_rounds`).
"""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

from ..core.options import MethodError, Option
from ..core.statistics import paired_difference

EXACT, RACE = "exact", "race"
SEARCHES = (EXACT, RACE)
RACE_Z = 3.0
RACE_FIRST_WINDOWS = 4  # the fewest windows a drop is decided on: a paired SE from 4 windows has 3 degrees of freedom


def race_options(candidates: str) -> tuple[Option, Option]:
    return (Option("search", str, f"how {candidates} are compared: exact (every candidate on every window) or race "
                                  "(more calibration windows each round, a candidate dropped once it is race_z "
                                  "paired standard errors behind the leader)", default=EXACT, choices=SEARCHES),
            Option("race_z", float, "search=race: standard errors behind the leader that drop a candidate",
                   default=RACE_Z, low=0, low_open=True))


def race(score: Callable[[list, int], dict[Hashable, Sequence[float]]], candidates: Sequence, rounds: int,
         z: float = RACE_Z) -> tuple[Hashable, dict[Hashable, list[float]], list[dict]]:
    """Successive elimination. `score(survivors, r)` gives each survivor's loss on every window of round r (the
    same windows for all). After each round the leader is the lowest mean loss (ties to the smaller candidate);
    a candidate whose paired excess loss over the leader is more than z standard errors (or positive on every
    window alike) is dropped. Stops with one survivor or after the last round, then returns the lowest mean loss
    among the survivors, every candidate's losses on the windows it was scored on, and each round's record."""
    losses: dict[Hashable, list[float]] = {candidate: [] for candidate in candidates}
    survivors = list(candidates)
    history = []
    for round_index in range(rounds):
        for candidate, values in score(survivors, round_index).items():
            losses[candidate].extend(values)
        means = {c: sum(losses[c]) / len(losses[c]) for c in survivors}
        leader = min(survivors, key=lambda c: (means[c], c))

        def behind(candidate) -> bool:
            excess = paired_difference(losses[candidate], losses[leader])
            return excess.mean > 0 and (excess.se == 0 or (excess.se is not None and excess.mean > z * excess.se))

        survivors = [c for c in survivors if c == leader or not behind(c)]
        history.append({"windows": len(losses[leader]), "candidates_left": len(survivors)})
        if len(survivors) == 1:
            break
    means = {c: sum(losses[c]) / len(losses[c]) for c in survivors}
    return min(survivors, key=lambda c: (means[c], c)), losses, history


def race_rounds(windows: int, batch_size: int) -> list[range]:
    """The windows each round of a race adds: cumulative counts RACE_FIRST_WINDOWS, twice that, ... up to one
    batch, then one batch more per round, the last round ending at `windows`."""
    ends, end = [], min(RACE_FIRST_WINDOWS, batch_size)
    while end < windows:
        ends.append(end)
        end = min(2 * end, batch_size) if end < batch_size else end + batch_size
    ends.append(windows)
    return [range(start, end) for start, end in zip([0, *ends[:-1]], ends)]


def check_race_z(method: str, search: str, race_z: float) -> None:
    if race_z != RACE_Z and search != RACE:
        raise MethodError(f"{method}: race_z needs search=race")


def runner_up_margin(chosen: Hashable, losses: dict[Hashable, list[float]], means: dict[Hashable, float]
                     ) -> tuple[Hashable, dict] | None:
    """A search's runner-up and `choice_margin` against it, from each candidate's per-window losses (a raced
    search scores candidates on different numbers of windows): the runner-up is the lowest mean among the
    candidates scored on the most windows, compared with the choice on the windows both were scored on.
    None when there is no other candidate."""
    others = sorted((c for c in losses if c != chosen), key=lambda c: (-len(losses[c]), means[c], c))
    if not others:
        return None
    common = min(len(losses[chosen]), len(losses[others[0]]))
    return others[0], choice_margin([losses[chosen][:common]], [losses[others[0]][:common]])


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
