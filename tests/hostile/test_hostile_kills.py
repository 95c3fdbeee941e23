"""Kills of a single prune (slow: each kill is a real `python -m pruning prune` in a new interpreter): SIGKILL or
SIGTERM while the model loads, with the whole new result in scratch, or between the two renames that swap it in
(SIGTERM unwinds like Ctrl-C: `pruning.cli.program`).
The earlier good result in the output directory survives every one byte for byte, nothing but our scratch is
left beside it, no traceback is printed, and the next run into the same directory cleans up and replaces it."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .hostile_harness import prune_args, run_in_process, signalled_prune, snapshot

pytestmark = pytest.mark.slow

def sparsity_of(out: Path) -> float:
    return json.loads((out / "prune.json").read_text())["options"]["target"]["sparsity"]


@pytest.fixture
def earlier(stories_dir, tmp_path, capfd) -> Path:
    """A good result in tmp_path/out (pruned to 0.25), the only entry of tmp_path."""
    out = tmp_path / "out"
    outcome = run_in_process(capfd, prune_args(stories_dir, out, sparsity="0.25"))
    assert outcome.code == 0, outcome.stderr
    return out


def rerun_replaces_it(model, out: Path, capfd) -> None:
    """The next run into the same directory cleans what the killed one left and puts its own result there."""
    outcome = run_in_process(capfd, prune_args(model, out, sparsity="0.5"))
    assert outcome.code == 0, outcome.stderr
    assert sparsity_of(out) == 0.5
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("point", ["loading", "scratch-written"])
def test_a_killed_prune_leaves_the_earlier_result(point, signame, stories_dir, earlier, capfd):
    """SIGKILL ends the process where it is (its scratch stays until the next run); SIGTERM unwinds like Ctrl-C:
    one line, exit 143, scratch removed."""
    before = snapshot(earlier)
    result = signalled_prune(point, signame, stories_dir, earlier)
    if signame == "SIGTERM":
        assert result.returncode == 143 and result.stderr.strip().splitlines()[-1] == "terminated", result.stderr
    else:
        assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert snapshot(earlier) == before
    beside = sorted(p.name for p in earlier.parent.iterdir() if p.name != "out")
    if point == "loading" or signame == "SIGTERM":
        assert beside == []  # nothing written yet, or the scratch removed on the way out
    else:  # the killed run's scratch, holding its complete result, until the next run
        assert len(beside) == 1 and beside[0].startswith(".out.pruning-tmp-"), beside
        assert sparsity_of(earlier.parent / beside[0]) == 0.5
    rerun_replaces_it(stories_dir, earlier, capfd)


def test_sigkill_between_the_renames_hides_the_earlier_result_until_the_next_run(stories_dir, earlier, capfd):
    """Killed after the earlier result was moved aside and before the new one took its place: the earlier one is
    whole, under our `-old-` name beside the output; the next run puts it back before its own work, then swaps."""
    before = snapshot(earlier)
    result = signalled_prune("between-renames", "SIGKILL", stories_dir, earlier)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not earlier.exists()
    moved = [p for p in earlier.parent.iterdir() if p.name.startswith(".out.pruning-old-")]
    assert len(moved) == 1 and snapshot(moved[0]) == before
    rerun_replaces_it(stories_dir, earlier, capfd)
