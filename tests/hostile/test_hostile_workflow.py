"""The workflow against hostile inputs and kills (issue 23, items 4, 6 and 10), on a real two-row stories260K
grid: what a prune would refuse before loading is refused by `snakemake -n` in one line (a model's unreadable
files, a calibration source too short for one window); a prune that fails where only the job can see it, or is
killed, leaves the previous model, its prune.json and its measurements as they were; and a rerun, plain or
--rerun-incomplete, re-runs every row whose files are missing or outdated and ends with tables listing exactly
the rows whose files are there."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import DATA_DIR, STORIES
from test_workflow import job_counts, snakemake, snakemake_command

pytestmark = pytest.mark.slow

GRID = {
    "models": {"stories260K": {"spec": str(STORIES)}},
    "methods": {"magnitude": {"method": "magnitude", "ratios": {"sparsity": [0.5]}},
                "wanda": {"method": "wanda", "ratios": {"sparsity": [0.5]}}},
    "protocol": "tiny",
    "protocols": {"tiny": {"calibration": {"source": "c4", "nsamples": 4, "seqlen": 64},
                           "evaluation": {"dataset": "wikitext2", "seqlen": 64, "max_windows": 2}}},
    "data_dir": str(DATA_DIR),
    "threads": 1,
    "keep_models": True,
}
ROWS = [("dense", "base"), ("magnitude", "s0.50"), ("wanda", "s0.50")]
PRUNED = ROWS[1:]
NOTHING_TO_DO = "Nothing to be done"


def with_changes(**calibration) -> dict:
    config = copy.deepcopy(GRID)
    config["protocols"]["tiny"]["calibration"].update(calibration)
    return config


def files(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under `root`: content hash and mtime."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def run_id(workdir: Path, method: str, ratio: str) -> str:
    return read_json(workdir / f"results/metrics/stories260K/{method}/{ratio}/prune.json")["run_id"]


def assert_rows_consistent(workdir: Path) -> None:
    """Each pruned row's files describe one prune: the model's prune.json is the metric folder's, and a ppl.json
    beside it measured that prune."""
    for method, ratio in PRUNED:
        model = workdir / f"results/models/stories260K/{method}/{ratio}"
        metrics = workdir / f"results/metrics/stories260K/{method}/{ratio}"
        assert (model / "prune.json").read_bytes() == (metrics / "prune.json").read_bytes(), (method, ratio)
        if (metrics / "ppl.json").exists():
            assert read_json(metrics / "ppl.json")["model"]["pruning"]["run_id"] == run_id(workdir, method, ratio)


def assert_complete(workdir: Path) -> None:
    """Every row's files are there and agree, and the tables list exactly those rows with their numbers."""
    metrics = workdir / "results" / "metrics" / "stories260K"
    for method, ratio in ROWS:
        assert (metrics / method / ratio / "ppl.json").is_file(), (method, ratio)
    for method, ratio in PRUNED:
        assert (workdir / f"results/models/stories260K/{method}/{ratio}/model.safetensors").is_file()
    assert_rows_consistent(workdir)
    assert not list(workdir.glob("results/models/*/*/*.new"))
    cells = pd.read_csv(workdir / "results" / "tables" / "sparsity-stories260K.csv")
    cells = cells[cells.metric == "ppl"]
    assert list(zip(cells.method, cells.ratio)) == ROWS
    for record in cells.itertuples():
        assert float(record.value) == read_json(workdir / record.file)["ppl"]


@pytest.fixture(scope="module")
def good_grid(tmp_path_factory):
    """The two-row grid run to the end once; each test works on its own copy."""
    workdir = tmp_path_factory.mktemp("good-grid")
    result = snakemake(workdir, "--cores", "2", config=GRID)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(workdir)
    return workdir


@pytest.fixture
def grid(good_grid, tmp_path):
    workdir = tmp_path / "grid"
    shutil.copytree(good_grid, workdir, symlinks=True)
    return workdir


def refusal_lines(output: str) -> list[str]:
    """The problems of a config Snakemake refused, one line each (the lines after 'invalid workflow config:')."""
    block = output.split("invalid workflow config:\n", 1)[1]
    return [line.strip() for line in block.splitlines() if line.startswith("  config.")]


def test_unreadable_model_files_refused_by_a_dry_run(tmp_path):
    """Item 10: a model whose config.json is not JSON and one whose safetensors is cut short are refused by
    `snakemake -n`, one line each naming the model's key and the file, before any job."""
    broken_config, truncated = tmp_path / "broken-config", tmp_path / "truncated"
    for folder in (broken_config, truncated):
        shutil.copytree(STORIES, folder)
    (broken_config / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    (truncated / "model.safetensors").write_bytes((STORIES / "model.safetensors").read_bytes()[:1000])
    config = copy.deepcopy(GRID)
    config["models"] = {"broken": str(broken_config), "cut": str(truncated)}
    workdir = tmp_path / "run"
    result = snakemake(workdir, "-n", "--cores", "1", config=config)
    assert result.returncode != 0
    assert refusal_lines(result.stdout + result.stderr) == [
        f"config.models.broken: {broken_config}/config.json: not valid JSON (Expecting property name enclosed in "
        "double quotes at line 2 column 21)",
        f"config.models.cut: {truncated}/model.safetensors: not a valid safetensors file (header length 4856 does "
        "not fit its 1000 bytes; truncated or another format)"]
    assert [p.name for p in workdir.iterdir()] == ["config.yaml"]  # the test's own: nothing written


def test_too_short_calibration_refused_before_the_good_grid_is_touched(grid):
    """Item 4, at planning: after a good grid, a calibration file holding only the word "tiny" (4 tokens) is
    refused by `snakemake -n` in one line (a run is refused by the same check before any job), and nothing of
    the grid changes."""
    tiny = grid / "tiny.txt"
    tiny.write_text("tiny\n")
    before = files(grid / "results")
    config = with_changes(source=str(tiny))
    expected = [f"config.protocols.tiny.calibration.source: calibration source '{tiny}' has only 4 tokens, fewer "
                "than seqlen=64 (model stories260K)"]
    result = snakemake(grid, "-n", "--cores", "2", config=config)
    assert result.returncode != 0
    assert refusal_lines(result.stdout + result.stderr) == expected
    assert files(grid / "results") == before


def test_failing_prune_keeps_the_previous_result(grid):
    """Item 4, what only the job can find: a memory cap the plan accepts but no prune fits (the job's own
    pre-flight refuses it). Both prunes fail; the previous models, their prune.json and measurements and the
    tables stay exactly as they were (no scratch left), and the next run tries the prunes again."""
    before = files(grid / "results")
    config = copy.deepcopy(GRID)
    config["max_memory"] = "1KiB"
    planned = snakemake(grid, "-n", "--cores", "2", config=config)
    assert planned.returncode == 0, planned.stderr[-2000:]  # the planner cannot see it
    assert job_counts(planned.stdout)["prune"] == 2
    result = snakemake(grid, "--cores", "2", "--keep-going", config=config)
    assert result.returncode != 0
    for method, ratio in PRUNED:
        log = (grid / f"logs/prune/stories260K/{method}/{ratio}.log").read_text()
        assert "--max-memory 1.00 KiB is below what pruning needs" in log
    assert files(grid / "results") == before
    assert sorted(p.name for p in (grid / "results/models/stories260K/wanda").iterdir()) == ["s0.50"]
    assert_complete(grid)
    retried = snakemake(grid, "-n", "--cores", "2", config=config)
    assert retried.returncode == 0 and job_counts(retried.stdout)["prune"] == 2


def test_missing_files_are_remade_by_a_plain_run(grid):
    """Item 6, as the issue found it: a row's model, prune.json and ppl.json gone (as a kill left them before
    prunes were installed only on success) while the tables still list the row. A plain run plans the row's
    prune, its installation, its perplexity and the tables again, not "Nothing to be done"; a lone missing
    metric file (a killed evaluation) is remade on the model that is there."""
    shutil.rmtree(grid / "results/models/stories260K/wanda/s0.50")
    for name in ("prune.json", "ppl.json"):
        (grid / "results/metrics/stories260K/wanda/s0.50" / name).unlink()
    (grid / "results/metrics/stories260K/magnitude/s0.50/ppl.json").unlink()
    planned = snakemake(grid, "-n", "--cores", "2", config=GRID)
    assert planned.returncode == 0, planned.stderr[-2000:]
    assert NOTHING_TO_DO not in planned.stdout + planned.stderr
    assert job_counts(planned.stdout) == {"prune": 1, "install_model": 1, "perplexity": 2, "tables": 1, "plots": 1,
                                          "all": 1, "total": 7}


def incomplete_outputs(workdir: Path) -> set[str]:
    """The outputs Snakemake marked as being made (base64 file names under .snakemake/incomplete)."""
    folder = workdir / ".snakemake" / "incomplete"
    return {base64.urlsafe_b64decode(p.name).decode() for p in folder.glob("*") if not p.name.startswith("@")}


def kill_while_pruning(workdir: Path, config: dict) -> set[str]:
    """Start the grid in its own process group, wait until a prune job's command runs (its log written anew
    and its output marked incomplete), then SIGKILL the whole group; the outputs Snakemake had marked."""
    started = time.time()
    with open(workdir / "killed-run.log", "w") as log:
        process = subprocess.Popen(snakemake_command(workdir, ["--cores", "2"], config), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        logs = [p for p in (workdir / "logs" / "prune").rglob("*.log") if p.stat().st_mtime >= started]
        if logs and any(path.endswith(".new") for path in incomplete_outputs(workdir)):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before a prune could be killed"
    time.sleep(0.5)  # the prune's Python is starting
    marked = incomplete_outputs(workdir)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return marked


def test_killed_grid_resumes(grid):
    """Item 6: the good grid re-pruned under a new calibration size, the whole Snakemake process group killed
    with SIGKILL while a prune runs. The previous results are still there and agree with each other; after
    --unlock, a plain run and --rerun-incomplete both plan the killed prunes again (not "Nothing to be done"),
    and the plain run ends with every row's files present, both rows re-pruned under the new size, and the
    tables listing exactly the three rows with their numbers."""
    old_runs = {row: run_id(grid, *row) for row in PRUNED}
    config = with_changes(nsamples=6)
    marked = kill_while_pruning(grid, config)
    assert any(path.endswith(".new") for path in marked), marked
    assert_rows_consistent(grid)
    for method, ratio in PRUNED:
        assert (grid / f"results/models/stories260K/{method}/{ratio}/model.safetensors").is_file()

    unlocked = snakemake(grid, "--unlock", config=config)
    assert unlocked.returncode == 0, unlocked.stderr[-2000:]
    for args in ([], ["--rerun-incomplete"]):
        planned = snakemake(grid, "-n", "--cores", "2", *args, config=config)
        assert planned.returncode == 0, planned.stderr[-2000:]
        assert NOTHING_TO_DO not in planned.stdout + planned.stderr, args
        assert job_counts(planned.stdout)["prune"] == sum(run_id(grid, *row) == old_runs[row] for row in PRUNED)
    resumed = snakemake(grid, "--cores", "2", config=config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_complete(grid)
    for row in PRUNED:
        assert run_id(grid, *row) != old_runs[row]
    wanda = read_json(grid / "results/metrics/stories260K/wanda/s0.50/prune.json")
    assert wanda["calibration"]["nsamples"] == 6
    again = snakemake(grid, "-n", "--cores", "2", config=config)
    assert NOTHING_TO_DO in again.stdout + again.stderr
