"""The metric files of a grid of runs as one long frame, the one input of the tables and plots.

A run is one folder `.../{model}/{method}/{ratio}/` (the workflow writes `results/metrics/...`; tokens as
in `pruning.reporting.grid`) holding metric files named as `pruning.reporting.evaluations` declares (one per
evaluation, or one per task or GGUF output type). Every file is read once and
flattened into rows (run, model, method, ratio, source, key, metric, value, file): one row per run × metric
(the dotted JSON key), `source` the kind of file, `key` its task or GGUF output type. `Results` adds one
row per run and the filter and pivot steps the tables are made of. A run whose files come from two
different prunes is refused, so that no table row mixes an old measurement with a new model; the workflow
installs a new prune with `install_pruned_model`, which removes the old model's measurements as it does.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd

from .evaluations import file_patterns, parse_metric_file
from .grid import DENSE_METHOD, DENSE_TOKEN, GridError, parse_ratio
from ..core.model_checks import read_json_object
from ..core.io import PRUNE_REPORT, RUN_ID, OutputError, atomic_write_text, is_our_directory

COLUMNS = ["run", "model", "method", "ratio", "source", "key", "metric", "value", "file"]


def ordered_unique(values: Iterable) -> list:
    """The distinct values in order of first appearance (the order of columns and rows in the tables)."""
    return list(dict.fromkeys(values))


class TableError(ValueError):
    """Metric files that cannot be read, placed in the grid layout, or that mix two runs."""


# ---- reading: one long frame ------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    return read_json_object(path, "metric file", TableError)


def _flatten(data: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) for every leaf; lists and empty dicts are leaves."""
    for name, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _kind_of(path: Path) -> tuple[str, str]:
    kind = parse_metric_file(path.name)
    if kind is None:
        raise TableError(f"{path}: not a metric file name ({file_patterns()})")
    return kind


def _recorded_pruning(record: dict) -> dict | None:
    """How the measured model was pruned, as the metric file recorded it (from the model's prune.json)."""
    model = record.get("model")
    return record.get("pruning") or (model.get("pruning") if isinstance(model, dict) else None)


def check_same_run(folder: Path, records: dict[Path, dict]) -> None:
    """Refuse a run whose metric files come from another prune than its prune.json: a pruned run without
    prune.json (a failed or removed prune job), a metric file whose recorded pruning differs, or one that
    measured an earlier prune of this run. A table row would otherwise mix an old measurement with a new model.
    Each prune has its own run id, which every metric file measured on its model records; only files from
    before run ids (either side without one) fall back to the file times (written before prune.json)."""
    if folder.name == DENSE_TOKEN:
        return
    report = folder / PRUNE_REPORT
    measured = sorted(path.name for path in records if path.name != PRUNE_REPORT)
    if not measured:
        return
    if report not in records and not report.is_file():
        raise TableError(f"{folder}: {', '.join(measured)} without prune.json (its prune job failed or was removed): "
                         "re-run the prune and its evaluations, or remove the folder")
    pruned = records.get(report) or _read_json(report)
    for path, record in records.items():
        if path == report:
            continue
        recorded = _recorded_pruning(record) or {}
        if any(pruned.get(key) != value for key, value in recorded.items() if key != RUN_ID):
            raise TableError(f"{path} measured another prune than {report} (method/options/calibration/seed "
                             "differ): re-run its evaluation")
        if RUN_ID in recorded and (recorded[RUN_ID] or pruned.get(RUN_ID)):
            if recorded[RUN_ID] != pruned.get(RUN_ID):
                raise TableError(f"{path} measured an earlier prune of this run ({RUN_ID} {recorded[RUN_ID]}, "
                                 f"not {pruned.get(RUN_ID)}): re-run its evaluation (Snakemake does), or remove it")
        elif path.stat().st_mtime_ns < report.stat().st_mtime_ns:
            raise TableError(f"{path} is older than {report}, so it measured an earlier prune of this run: "
                             "re-run its evaluation (Snakemake does), or remove it")


def install_pruned_model(new: str | os.PathLike, dest: str | os.PathLike, report: str | os.PathLike) -> None:
    """Make a finished prune a run's model: `new` (a prune's output directory, written beside `dest`) is renamed
    to `dest`, its prune.json copied to `report` in the run's metric folder (the run's record, kept when the
    model is deleted after its measurements), and the folder's other metric files, measured on the model this
    one replaces, are removed first, so that none is left beside a model it does not describe. The workflow's
    prune jobs write `new` and this replaces the run's model only once a prune has succeeded: a failed or
    killed prune leaves the previous model and its files as they were. `dest` and `report` must be absent."""
    new, dest, report = Path(new), Path(dest), Path(report)
    if not is_our_directory(new):
        raise OutputError(f"{new}: not a finished prune (no {PRUNE_REPORT} in it)")
    for taken in (dest, report):
        if os.path.lexists(taken):
            raise OutputError(f"{taken} exists: a pruned model is installed only where none is")
    report.parent.mkdir(parents=True, exist_ok=True)
    for path in report.parent.iterdir():
        if path.name != PRUNE_REPORT and parse_metric_file(path.name):
            path.unlink()
    atomic_write_text(report, (new / PRUNE_REPORT).read_text(encoding="utf-8"))
    os.replace(new, dest)


def read_metrics(paths: Iterable[str | os.PathLike], root: str | os.PathLike = ".") -> pd.DataFrame:
    """The long frame of metric files `.../{model}/{method}/{ratio}/<file>.json`: one row per run × metric
    (columns COLUMNS; `run` numbers the folders in order of first appearance, `file` is relative to
    `root`). Unrecognised file names are an error (a typo would silently drop a number), and so is a run
    that mixes two prunes (`check_same_run`)."""
    root = Path(root).resolve()
    folders: dict[Path, dict[Path, dict]] = {}  # run folder -> its files, in order of first appearance
    run_of: dict[Path, int] = {}
    rows = []
    for path in map(Path, paths):
        source, key = _kind_of(path)
        folder = path.parent
        if folder not in folders:
            try:
                parse_ratio(folder.name)
            except GridError as exc:
                raise TableError(f"{path}: {exc}") from None
            folders[folder], run_of[folder] = {}, len(run_of)
        record = folders[folder][path] = _read_json(path)
        where = Path(os.path.relpath(path.resolve(), root)).as_posix()
        model, method, token = folder.parts[-3:]
        rows += [(run_of[folder], model, method, token, source, key, metric, value, where) for metric, value in _flatten(record)]
    for folder, records in folders.items():
        check_same_run(folder, records)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["value"] = pd.Series([row[7] for row in rows], dtype=object)  # numbers stay exact Python values
    return frame


def collect(results: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The long frame of every run under `results/metrics/{model}/{method}/{ratio}/`, runs sorted by
    (model, dense first, method, ratio)."""
    metrics = Path(results) / "metrics"
    if not metrics.is_dir():
        raise TableError(f"{metrics} does not exist: no runs to tabulate")
    files = [p for p in metrics.glob("*/*/*/*.json") if parse_metric_file(p.name)]
    frame = read_metrics(sorted(files), root if root is not None else Path(results).resolve().parent)
    runs = frame.drop_duplicates("run")
    order = sorted(runs.itertuples(), key=lambda r: (r.model, r.method != DENSE_METHOD, r.method,
                                                     parse_ratio(r.ratio).order, r.ratio))
    renumber = {r.run: index for index, r in enumerate(order)}
    return frame.assign(run=frame.run.map(renumber)).sort_values("run", kind="stable", ignore_index=True)


class Results:
    """The long frame plus one row per run (`runs`: model, method, ratio (a `grid.Ratio`), kind,
    library_method), and the filter and pivot steps every table is made of. `skipped_tasks`: zero-shot tasks
    the run was asked for but left out (task -> shots), with `skip_reason`, shown as such in the task tables."""

    def __init__(self, long: pd.DataFrame, skipped_tasks: dict[str, int] | None = None, skip_reason: str | None = None):
        if long.empty:
            raise TableError("no runs to tabulate")
        self.long = long
        self.skipped_tasks, self.skip_reason = dict(skipped_tasks or {}), skip_reason
        self._files: dict | None = None  # (run, source, key) -> its rows, grouped on first use by `record`
        first = long.drop_duplicates("run").set_index("run")
        library = long[(long.source == "prune") & (long.metric == "method")].set_index("run").value
        self.runs = pd.DataFrame({"model": first.model, "method": first.method,
                                  "ratio": first.ratio.map(parse_ratio)})
        self.runs["kind"] = self.runs.ratio.map(lambda ratio: ratio.kind)
        self.runs["library_method"] = [DENSE_METHOD if kind == "dense" else library.get(run)
                                       for run, kind in self.runs.kind.items()]

    def grid_rows(self) -> list[dict]:
        """The runs as `pruning.reporting.grid.table_specs` reads them, like the rows of a workflow config (plus `run`)."""
        return [{"run": run.Index, "model": run.model, "method": run.method, "ratio": run.ratio.token,
                 "library_method": run.library_method} for run in self.runs.itertuples()]

    def ids(self, mask: pd.Series | None = None) -> list[int]:
        return list(self.runs.index if mask is None else self.runs.index[mask])

    def dense(self) -> dict[str, int]:
        """The dense baseline run of each model."""
        return {model: run for run, model in self.runs.model[self.runs.kind == "dense"].items()}

    def has(self, source: str) -> pd.Series:
        """Per run: whether it has a file of `source`."""
        return pd.Series(self.runs.index.isin(self.long.run[self.long.source == source]), index=self.runs.index)

    def select(self, ids: Iterable[int], **metrics: list[str]) -> pd.DataFrame:
        """Filter: the rows of runs `ids` whose (file kind, metric) is asked for, e.g. ppl=["ppl"]."""
        pairs = [(source, metric) for source, names in metrics.items() for metric in names]
        asked = pd.MultiIndex.from_arrays([self.long.source, self.long.metric]).isin(pairs)
        return self.long[self.long.run.isin(list(ids)) & asked]

    @staticmethod
    def pivot(rows: pd.DataFrame, index: list[str] | str = "run", **metrics: list[str]) -> pd.DataFrame:
        """Pivot: one row per `index` value, columns (file kind, metric) for every metric asked for,
        None where a file lacks it."""
        columns = pd.MultiIndex.from_tuples(ordered_unique((source, m) for source, names in metrics.items() for m in names))
        wide = rows.pivot(index=index, columns=["source", "metric"], values="value").reindex(columns=columns)
        return wide.astype(object).where(wide.notna(), None)

    def record(self, run: int, source: str, key: str = "") -> dict | None:
        """One metric file of a run as its nested JSON again (from the long frame: the dotted keys split), for
        what is read whole, such as its per-item record; None when the run has no such file."""
        if self._files is None:
            self._files = {name: rows for name, rows in self.long.groupby(["run", "source", "key"], sort=False)}
        rows = self._files.get((run, source, key))
        if rows is None:
            return None
        nested: dict = {}
        for metric, value in zip(rows.metric, rows.value):
            *parents, leaf = metric.split(".")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return nested

    def wide(self, ids: list[int], **metrics: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(the filtered rows, their pivot with one row per run of `ids`, in that order)."""
        rows = self.select(ids, **metrics)
        wide = self.pivot(rows, **metrics).reindex(ids)
        return rows, wide.where(wide.notna(), None)


