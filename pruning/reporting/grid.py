"""The grid contract shared by the workflow (`workflow/rules/common.smk`) and the tables (`pruning.reporting.tables`):
ratio tokens both ways, the rows a config expands to, method families, and which tables and plots a grid
produces. Imports neither torch nor pandas (the method registry it reads imports neither), so that Snakemake can
load it while it builds the DAG.

A run lives in `.../{model}/{method}/{ratio}/`, where `method` is the name of a config entry and `ratio`
a token: `s0.50` (sparsity), `nm2-4` (N:M), `L4` (blocks), `f0.25` (fraction of layers or heads),
`r0.25` (two-stage prune rate), `base` (the dense baseline) or `custom` (ratios in the entry's options).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

from ..methods.base import layer_removal_methods, method_family
from .evaluations import EVALUATIONS

DENSE_METHOD, DENSE_TOKEN = "dense", "base"
OPTIONS_ONLY_TOKEN = "custom"  # `all`/`distill` entries whose ratios live in `options`

# Library method names (as recorded in prune.json) with tables of their own; which methods remove layers, retrain
# or form a family each method declares (pruning/methods/base.py FACTS), asked of the registry when a grid is read.
DEPTH_METHOD, TWO_STAGE_METHOD = "depth", "two_stage"
MASK_KINDS = ("sparsity", "nm")  # ratio kinds that zero weights in place: the sparsity table and plot
COMPARED_MASKS = ("s0.50", "nm2-4")  # the skill document's settings of the mask-based methods

# Ratio kind -> its token; the config's ratio lists are keyed by these kinds.
RATIO_TOKENS = {
    "sparsity": lambda v: f"s{v:.2f}",
    "nm": lambda v: "nm{}-{}".format(*v.split(":")),
    "num_blocks": lambda v: f"L{v}",
    "fraction": lambda v: f"f{v:.2f}",
    "prune_rate": lambda v: f"r{v:.2f}",
}
DECIMAL_KINDS = ("sparsity", "fraction", "prune_rate")  # named with two decimals
_KIND_ORDER = ("dense", "sparsity", "nm", "fraction", "prune_rate", "num_blocks", "custom")  # table columns
_TOKEN_RE = re.compile(r"^(?:s(?P<sparsity>\d\.\d\d)|nm(?P<n>\d+)-(?P<m>\d+)|L(?P<num_blocks>\d+)|"
                       r"f(?P<fraction>\d\.\d\d)|r(?P<prune_rate>\d\.\d\d)|(?P<base>base)|(?P<custom>custom))$")


class GridError(ValueError):
    """A ratio token or grid row outside the contract."""


def ratio_token(kind: str, value) -> str:
    """The token of one ratio of a config entry: ratio_token("sparsity", 0.5) == "s0.50"."""
    return RATIO_TOKENS[kind](value)


def ratio_token_problem(kind: str, value) -> str | None:
    """Why a config ratio would not get a token of its own, or None: sparsity, fraction and prune rate are
    named with two decimals, so 0.525 would be filed as s0.53, the run of 0.53 (N:M patterns and block counts
    are named exactly)."""
    if kind in DECIMAL_KINDS and not math.isclose(round(value, 2), value, rel_tol=0, abs_tol=1e-12):
        return f"{value} has more than two decimals (its file token {ratio_token(kind, value)} would not name it)"
    return None


@dataclass(frozen=True)
class Ratio:
    """A ratio token read back: kind, value, the column label and an order for columns."""

    token: str
    kind: str
    value: object
    label: str

    @property
    def order(self) -> tuple:
        if self.kind == "nm":
            n, m = self.value
            return _KIND_ORDER.index("nm"), 1 - n / m, -m
        return _KIND_ORDER.index(self.kind), self.value if isinstance(self.value, (int, float)) else 0, 0


def parse_ratio(token: str) -> Ratio:
    """The inverse of `ratio_token` (plus `base` and `custom`)."""
    match = _TOKEN_RE.match(token)
    if not match:
        raise GridError(f"unknown ratio token {token!r} (expected s0.50, nm2-4, L4, f0.25, r0.25, base or custom)")
    if match["n"]:
        n, m = int(match["n"]), int(match["m"])
        return Ratio(token, "nm", (n, m), f"{n}:{m}")
    if match["num_blocks"]:
        blocks = int(match["num_blocks"])
        return Ratio(token, "num_blocks", blocks, f"{blocks} block{'s' if blocks != 1 else ''}")
    for kind in DECIMAL_KINDS:
        if match[kind]:
            value = float(match[kind])
            return Ratio(token, kind, value, f"{value:.0%}")
    if match["base"]:
        return Ratio(token, "dense", None, DENSE_METHOD)
    return Ratio(token, "custom", None, "custom")


def grid_rows(models: Iterable[str], methods: Mapping[str, dict]) -> list[dict]:
    """One row per (model, method entry, ratio) of a workflow config: the dense baseline of each model
    first, then config order. Keys: model, method (entry name), ratio (token), kind, value, entry (the
    config entry, None for dense) and library_method."""
    models = list(models)
    rows = [dict(model=model, method=DENSE_METHOD, ratio=DENSE_TOKEN, kind=None, value=None, entry=None,
                 library_method=DENSE_METHOD) for model in models]
    for name, entry in methods.items():
        ratios = [(kind, value) for kind, values in entry.get("ratios", {}).items() for value in values]
        for model in entry.get("models", models):
            if not ratios:
                rows.append(dict(model=model, method=name, ratio=OPTIONS_ONLY_TOKEN, kind=None, value=None,
                                 entry=entry, library_method=entry["method"]))
            for kind, value in ratios:
                rows.append(dict(model=model, method=name, ratio=ratio_token(kind, value), kind=kind, value=value,
                                 entry=entry, library_method=entry["method"]))
    return rows


class TableSpec(NamedTuple):
    """One table of a grid: its file name (without suffix), its layout and, for per-model layouts, the model."""

    name: str
    layout: str
    model: str | None = None


def compared_rows(rows: Iterable[Mapping]) -> list[Mapping]:
    """The rows of the skill document's "Performance Comparison": each method entry (`method`) of each model at
    50 % and at 2:4 when it has them, every other entry at its smallest ratio in the grid; only models with a
    dense row. `rows` need model, method, ratio and library_method."""
    rows = list(rows)
    dense = {row["model"] for row in rows if row["library_method"] == DENSE_METHOD}
    picked, smallest = set(), {}  # row indices; (model, entry) -> index of its smallest structured ratio
    for index, row in enumerate(rows):
        if row["model"] not in dense or row["library_method"] == DENSE_METHOD:
            continue
        ratio = parse_ratio(row["ratio"])
        if ratio.kind in MASK_KINDS:
            if row["ratio"] in COMPARED_MASKS:
                picked.add(index)
            continue
        key = (row["model"], row["method"])
        if key not in smallest or ratio.order < parse_ratio(rows[smallest[key]]["ratio"]).order:
            smallest[key] = index
    return [rows[index] for index in sorted(picked | set(smallest.values()))]


def table_specs(rows: Iterable[Mapping], measured: Iterable[str] = ()) -> list[TableSpec]:
    """The tables a grid produces. `rows` need model, method, ratio (token) and library_method; they come from
    a config (`grid_rows`) or from metric files (`pruning.reporting.tables`), so both agree by construction. The
    comparison and impact tables read speed and GGUF files where they exist and show a dash elsewhere. `measured`
    names the evaluations (sources, `pruning.reporting.evaluations`) some row has: each adds its tables."""
    measured = set(measured)
    rows = list(rows)
    models = list(dict.fromkeys(row["model"] for row in rows))
    kinds = [(row, parse_ratio(row["ratio"]).kind) for row in rows]
    specs = [TableSpec("summary", "summary")]
    specs += [TableSpec(f"sparsity-{m}", "sparsity", m) for m in models
              if any(r["model"] == m and kind in MASK_KINDS for r, kind in kinds)]
    specs += [TableSpec(f"depth-{m}", "depth", m) for m in models
              if any(r["model"] == m and r["library_method"] == DEPTH_METHOD and kind == "num_blocks"
                     for r, kind in kinds)]
    if any(row["library_method"] in layer_removal_methods() for row in rows):
        specs.append(TableSpec("layer-removal", "layer_removal"))
    if any(row["library_method"] == TWO_STAGE_METHOD for row in rows):
        specs.append(TableSpec("two-stage", "two_stage"))
    specs += [TableSpec(name, layout) for source, e in EVALUATIONS.items() if source in measured
              for name, layout in e.tables]
    if compared_rows(rows):
        specs.append(TableSpec("comparison", "comparison"))
    if any(method_family(row["library_method"]) for row in rows):
        specs.append(TableSpec("impact", "impact"))
    return specs


def _structured(row: Mapping) -> bool:
    """A row that removes parameters (heads, layers, sub-blocks) rather than zeroing weights in place."""
    return row["library_method"] != DENSE_METHOD and parse_ratio(row["ratio"]).kind not in MASK_KINDS


def plot_specs(rows: Iterable[Mapping], *, zeroshot_speed: Iterable[Mapping] = ()) -> list[TableSpec]:
    """The plots a grid produces: PPL against sparsity for every model with a sparsity or N:M run, PPL against
    parameters removed for every model with a structured run and its dense row, and the zero-shot average
    against decode speed-up when `zeroshot_speed`, the rows with both measurements, holds a pruned row and
    its model's dense row."""
    rows = list(rows)
    dense = {row["model"] for row in rows if row["library_method"] == DENSE_METHOD}
    specs = [spec._replace(layout="sparsity_plot")
             for spec in table_specs(rows) if spec.layout == "sparsity"]
    specs += [TableSpec(f"structured-{m}", "structured_plot", m) for m in dict.fromkeys(r["model"] for r in rows)
              if m in dense and any(r["model"] == m and _structured(r) for r in rows)]
    both = list(zeroshot_speed)
    measured_dense = {row["model"] for row in both if row["library_method"] == DENSE_METHOD}
    if any(r["model"] in measured_dense and r["library_method"] != DENSE_METHOD for r in both):
        specs.append(TableSpec("zeroshot-speed", "zeroshot_speed_plot"))
    return specs


def task_fewshot(tasks: Iterable[str], num_fewshot: int | Mapping[str, int]) -> dict[str, int]:
    """In-context examples per zero-shot task from the config's `zeroshot.num_fewshot`: one number for every
    task, or a map task -> shots (PruneGPT: winogrande 5, boolq 0, hellaswag 10, arc_challenge 25, mmlu 5,
    gsm8k 5) where a task it leaves out runs 0-shot. A map key that names no task is refused: a misspelt
    task would otherwise run 0-shot unnoticed."""
    tasks = list(tasks)
    if not isinstance(num_fewshot, Mapping):
        return {task: num_fewshot for task in tasks}
    unknown = [task for task in num_fewshot if task not in tasks]
    if unknown:
        raise GridError(f"{', '.join(map(repr, unknown))} not in zeroshot.tasks ({', '.join(tasks)})")
    return {task: num_fewshot.get(task, 0) for task in tasks}
