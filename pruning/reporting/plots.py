"""Plots from the long frame of a grid's metric files (`pruning.reporting.metric_files`); which plots a grid produces is
decided by `pruning.reporting.grid.plot_specs`: PPL against sparsity (mask-based methods), PPL against parameters
removed (structured methods) and the zero-shot average against decode speed-up."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import __version__
from ..core.io import PNG_OWNER_KEY
from ..core.outputs import output_file
from ..methods.base import method_families
from .grid import MASK_KINDS, plot_specs
from .metric_files import Results, ordered_unique


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _log_y(ax) -> None:
    import matplotlib.ticker

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _perplexity_axes(ax, xlabel: str, title: str) -> None:
    """Labels, grid and legend of a perplexity-against-something plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, path: str | os.PathLike) -> Path:
    """Written atomically, marked as ours (PNG_OWNER_KEY: our version, so a later run may replace it), without the
    matplotlib version in the metadata (same data, same bytes)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None, PNG_OWNER_KEY: __version__})
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_sparsity(results: Results, model: str, path: str | os.PathLike) -> Path | None:
    """PPL against sparsity per method (log scale), the dense model at 0 and N:M patterns as open markers."""
    runs = results.runs
    masked = results.ids((runs.model == model) & runs.kind.isin(MASK_KINDS) & results.has("ppl"))
    if not masked:
        return None
    plt = _pyplot()
    dense = results.dense().get(model)
    _, wide = results.wide(masked + ([dense] if dense is not None else []), ppl=["ppl"])
    ppl = wide["ppl", "ppl"]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for index, method in enumerate(ordered_unique(runs.method[masked])):
        color = f"C{index}"
        mine = [r for r in masked if runs.method[r] == method]
        curve = sorted((runs.ratio[r].value, ppl[r]) for r in mine if runs.kind[r] == "sparsity")
        if dense is not None and ppl[dense] is not None:
            curve.insert(0, (0.0, ppl[dense]))
        if curve:
            ax.plot(*zip(*curve), marker="o", color=color, label=method)
        for run in (r for r in mine if runs.kind[r] == "nm"):
            n, m = runs.ratio[run].value
            ax.plot([1 - n / m], [ppl[run]], marker="s", markerfacecolor="none", color=color, linestyle="none")
            ax.annotate(runs.ratio[run].label, (1 - n / m, ppl[run]), textcoords="offset points", xytext=(4, 2),
                        fontsize=7, color=color)
    _log_y(ax)
    ax.margins(x=0.1)
    _perplexity_axes(ax, "sparsity of decoder linear layers (open squares: N:M)", f"{model}: perplexity against sparsity")
    return _save(fig, path)


def plot_structured(results: Results, model: str, path: str | os.PathLike) -> Path | None:
    """PPL against the share of all parameters removed, one curve per structured method entry, the dense
    model at 0 (log scale)."""
    from .tables.comparison import measures

    runs = results.runs
    dense = results.dense().get(model)
    structured = results.ids((runs.model == model) & ~runs.kind.isin(MASK_KINDS) & (runs.kind != "dense")
                             & results.has("ppl"))
    if dense is None or not structured:
        return None
    _, measured = measures(results, structured)
    measured = measured[measured.total_reduction.notna() & measured.ppl.notna()]
    if measured.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    reference = measured.ppl_reference.iloc[0]
    for index, method in enumerate(ordered_unique(runs.method[measured.index])):
        mine = measured[runs.method[measured.index] == method]
        curve = sorted(zip(100 * mine.total_reduction, mine.ppl))
        if reference is not None:
            curve.insert(0, (0.0, reference))
        ax.plot(*zip(*curve), marker="o", color=f"C{index}", label=method)
    _log_y(ax)
    import matplotlib.ticker

    ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(minor_thresholds=(2, 0.4)))  # labels within a decade
    _perplexity_axes(ax, "parameters removed (% of all parameters)", f"{model}: perplexity against parameters removed")
    return _save(fig, path)


def plot_zeroshot_speed(results: Results, path: str | os.PathLike) -> Path | None:
    """Zero-shot average (headline metrics × 100) against Hugging Face decode speed-up, one point per run that
    has both, colour by method family, the dense models at 1×."""
    from .tables.comparison import measures
    from .tables.tasks import average, headline_scores

    pruned = [run for run in results.ids() if results.runs.kind[run] != "dense"]
    if not pruned:
        return None
    _, measured = measures(results, pruned)
    measured = measured[measured.speedup_HF.notna() & measured.accuracy_loss.notna() & measured.family.notna()]
    if measured.empty:
        return None
    dense = results.dense()
    _, scores, _ = headline_scores(results, list(dense.values()))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    families = list(method_families())
    for model, run in dense.items():
        if (results.runs.model[measured.index] == model).any() and average(scores.loc[run]) is not None:
            baseline = 100 * average(scores.loc[run])
            ax.plot([1.0], [baseline], marker="*", markersize=12, color="black", linestyle="none")
            ax.annotate(f"{model} dense", (1.0, baseline), textcoords="offset points", xytext=(4, 2), fontsize=7)
            for run_id, row in measured[results.runs.model[measured.index] == model].iterrows():
                color = f"C{families.index(row.family)}"
                ax.plot([row.speedup_HF], [baseline - row.accuracy_loss], marker="o", color=color, linestyle="none",
                        label=row.family)
                ax.annotate(f"{results.runs.method[run_id]} {results.runs.ratio[run_id].label}",
                            (row.speedup_HF, baseline - row.accuracy_loss), textcoords="offset points",
                            xytext=(4, 2), fontsize=7, color=color)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel("decode speed-up against the dense model (Hugging Face, batch 1)")
    ax.set_ylabel("zero-shot average (headline metrics × 100)")
    ax.set_title("Zero-shot accuracy against decode speed")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def planned_plots(long: pd.DataFrame, out_dir: str | os.PathLike, *, overwrite: bool = False,
                  inputs=()) -> list[Callable[[], Path | None]]:
    """Every plot `pruning.reporting.grid.plot_specs` names for these runs, each file checked by the output rule
    before anything is drawn (an existing file is replaced only if this tool drew it, or with `overwrite`; never
    an input: `inputs` from `pruning.core.inputs.read_paths`); call each to draw it (None: nothing to draw)."""
    results = Results(long)
    draw = {"sparsity_plot": plot_sparsity, "structured_plot": plot_structured,
            "zeroshot_speed_plot": plot_zeroshot_speed}
    both = results.has("zeroshot") & results.has("speed")
    rows = results.grid_rows()
    specs = plot_specs(rows, zeroshot_speed=[row for row in rows if both[row["run"]]])
    paths = [output_file(Path(out_dir).expanduser() / f"{spec.name}.png", overwrite=overwrite, inputs=inputs,
                         what="plot") for spec in specs]
    return [functools.partial(draw[spec.layout], results, *([spec.model] if spec.model else []), path)
            for spec, path in zip(specs, paths)]


def write_plots(long: pd.DataFrame, out_dir: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> list[Path]:
    """Every plot of `planned_plots`, all checked first; returns the paths written."""
    paths = [draw() for draw in planned_plots(long, out_dir, overwrite=overwrite, inputs=inputs)]
    return [p for p in paths if p is not None]
