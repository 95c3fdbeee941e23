"""The grid contract shared by the workflow (`workflow/rules/common.smk`) and the tables (`pruning.tables`):
ratio tokens both ways, the rows a config expands to, method families, and which tables and plots a grid
produces. Imports neither torch nor pandas, so that Snakemake can load it while it builds the DAG.

A run lives in `.../{model}/{method}/{ratio}/`, where `method` is the name of a config entry and `ratio`
a token: `s0.50` (sparsity), `nm2-4` (N:M), `L4` (blocks), `f0.25` (fraction of layers or heads),
`r0.25` (two-stage prune rate), `base` (the dense baseline) or `custom` (ratios in the entry's options).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

DENSE_METHOD, DENSE_TOKEN = "dense", "base"
OPTIONS_ONLY_TOKEN = "custom"  # `all`/`distill` entries whose ratios live in `options`

# Method families (library method names, as recorded in prune.json).
DEPTH_METHOD, TWO_STAGE_METHOD = "depth", "two_stage"
LAYER_REMOVAL_METHODS = (DEPTH_METHOD, "layers", TWO_STAGE_METHOD)
MASK_KINDS = ("sparsity", "nm")  # ratio kinds that zero weights in place: the sparsity table and plot

# Ratio kind -> its token; the config's ratio lists are keyed by these kinds.
RATIO_TOKENS = {
    "sparsity": lambda v: f"s{v:.2f}",
    "nm": lambda v: "nm{}-{}".format(*v.split(":")),
    "num_blocks": lambda v: f"L{v}",
    "fraction": lambda v: f"f{v:.2f}",
    "prune_rate": lambda v: f"r{v:.2f}",
}
_KIND_ORDER = ("dense", "sparsity", "nm", "fraction", "prune_rate", "num_blocks", "custom")  # table columns
_TOKEN_RE = re.compile(r"^(?:s(?P<sparsity>\d\.\d\d)|nm(?P<n>\d+)-(?P<m>\d+)|L(?P<num_blocks>\d+)|"
                       r"f(?P<fraction>\d\.\d\d)|r(?P<prune_rate>\d\.\d\d)|(?P<base>base)|(?P<custom>custom))$")


class GridError(ValueError):
    """A ratio token or grid row outside the contract."""


def ratio_token(kind: str, value) -> str:
    """The token of one ratio of a config entry: ratio_token("sparsity", 0.5) == "s0.50"."""
    return RATIO_TOKENS[kind](value)


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
    for kind in ("sparsity", "fraction", "prune_rate"):
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


def table_specs(rows: Iterable[Mapping], *, zeroshot: bool, gguf: bool) -> list[TableSpec]:
    """The tables a grid produces. `rows` need model, ratio (token) and library_method; they come from a
    config (`grid_rows`) or from metric files (`pruning.tables`), so both agree by construction."""
    rows = list(rows)
    models = list(dict.fromkeys(row["model"] for row in rows))
    kinds = [(row, parse_ratio(row["ratio"]).kind) for row in rows]
    specs = [TableSpec("summary", "summary")]
    specs += [TableSpec(f"sparsity-{m}", "sparsity", m) for m in models
              if any(r["model"] == m and kind in MASK_KINDS for r, kind in kinds)]
    specs += [TableSpec(f"depth-{m}", "depth", m) for m in models
              if any(r["model"] == m and r["library_method"] == DEPTH_METHOD and kind == "num_blocks"
                     for r, kind in kinds)]
    if any(row["library_method"] in LAYER_REMOVAL_METHODS for row in rows):
        specs.append(TableSpec("layer-removal", "layer_removal"))
    if any(row["library_method"] == TWO_STAGE_METHOD for row in rows):
        specs.append(TableSpec("two-stage", "two_stage"))
    if zeroshot:
        specs.append(TableSpec("zeroshot", "zeroshot"))
    if gguf:
        specs.append(TableSpec("gguf", "gguf"))
    return specs


def plot_specs(rows: Iterable[Mapping]) -> list[TableSpec]:
    """The plots a grid produces: PPL against sparsity for every model with a sparsity or N:M run."""
    return [spec._replace(layout="sparsity_plot")
            for spec in table_specs(rows, zeroshot=False, gguf=False) if spec.layout == "sparsity"]
