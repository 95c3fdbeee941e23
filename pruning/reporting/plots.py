"""Plots from the long frame of a grid's metric files (`pruning.reporting.metric_files`); which plots a grid produces is
decided by `pruning.reporting.grid.plot_specs`: PPL against sparsity (mask-based methods), PPL against parameters
removed (structured methods) and the zero-shot average against decode speed-up. Error bars come from the
per-item data (`pruning.reporting.uncertainty`): ± 2 standard errors, perplexity's as exp(mean NLL ± 2 SE);
points from files without per-item data have none."""
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
from .uncertainty import perplexity_figures
from ..core.statistics import SE_MULTIPLE


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
    ax.set_ylabel("perplexity (bars: ±2 SE over the windows)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _ppl_bars(figures: dict, runs: list, values: list) -> list[list[float]] | None:
    """Asymmetric error bars [below, above] of perplexities (their 2-SE intervals), zero where not measured;
    None when no point has one."""
    bars = [[0.0, 0.0] if run not in figures or figures[run].low is None
            else [value - figures[run].low, figures[run].high - value] for run, value in zip(runs, values)]
    return [list(side) for side in zip(*bars)] if any(any(bar) for bar in bars) else None


def _dense_point(ax, start: tuple | None, figures: dict) -> None:
    """The dense model once, at 0, with its bar (the curves start from it)."""
    if start is not None:
        x, y, run = start
        ax.errorbar([x], [y], yerr=_ppl_bars(figures, [run], [y]), marker="*", markersize=10, color="black",
                    linestyle="none", label="dense", capsize=2)


def _curve(ax, curve: list[tuple], start: tuple | None, figures: dict, **style) -> None:
    """A method's measured points (x, PPL, run), joined from the dense point when it has two or more: a line
    from dense to a single point would draw a curve nobody measured, so a single point stands alone."""
    if len(curve) > 1 and start is not None:
        curve = [start] + curve
    x, y, ids = zip(*curve)
    ax.errorbar(x, y, yerr=_ppl_bars(figures, ids, y), marker="o", linestyle="-" if len(curve) > 1 else "none",
                capsize=2, **style)


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
    figures = perplexity_figures(results, masked + ([dense] if dense is not None else []))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    start = (0.0, ppl[dense], dense) if dense is not None and ppl[dense] is not None else None
    _dense_point(ax, start, figures)
    for index, method in enumerate(ordered_unique(runs.method[masked])):
        color = f"C{index}"
        mine = [r for r in masked if runs.method[r] == method]
        curve = sorted((runs.ratio[r].value, ppl[r], r) for r in mine if runs.kind[r] == "sparsity")
        if curve:
            _curve(ax, curve, start, figures, color=color, label=method)
        for run in (r for r in mine if runs.kind[r] == "nm"):
            n, m = runs.ratio[run].value
            ax.errorbar([1 - n / m], [ppl[run]], yerr=_ppl_bars(figures, [run], [ppl[run]]), marker="s",
                        markerfacecolor="none", color=color, linestyle="none", capsize=2)
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
    found = measures(results, structured)
    measured = found.frame[found.frame.total_reduction.notna() & found.frame.ppl.notna()]
    if measured.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    reference = measured.ppl_reference.iloc[0]
    start = (0.0, reference, dense) if reference is not None else None
    _dense_point(ax, start, found.perplexities)
    for index, method in enumerate(ordered_unique(runs.method[measured.index])):
        mine = measured[runs.method[measured.index] == method]
        curve = sorted(zip(100 * mine.total_reduction, mine.ppl, mine.index))
        _curve(ax, curve, start, found.perplexities, color=f"C{index}", label=method)
    _log_y(ax)
    import matplotlib.ticker

    ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(minor_thresholds=(2, 0.4)))  # labels within a decade
    _perplexity_axes(ax, "parameters removed (% of all parameters)", f"{model}: perplexity against parameters removed")
    return _save(fig, path)


MARKERS = "osD^v<>pPXhH*d"  # one per run of a model, so that the legend names every point


def plot_zeroshot_speed(results: Results, path: str | os.PathLike) -> Path | None:
    """Zero-shot average (headline metrics × 100, over the tasks not at chance for the model) against Hugging
    Face decode speed-up, one point per run that has both, colour by method family and a marker per run named
    (with its family) in the legend (no labels on the points, so none overlap), the dense models as stars at
    1×. Bars: ± 2 paired standard errors of the difference from dense (vertical) and the speed-up's range over
    the repeats. A model with no task above chance has no average to plot: a line on the plot says so (the
    plot is still drawn, as the grid names it)."""
    from .tables.comparison import measures

    pruned = [run for run in results.ids() if results.runs.kind[run] != "dense"]
    if not pruned:
        return None
    measured = measures(results, pruned).frame
    measured = measured[measured.speedup_HF.notna() & measured.family.notna()]
    if measured.empty:
        return None
    points = measured[measured.accuracy_loss.notna() & measured.accuracy_reference.notna()]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    families = list(method_families())
    for model_index, model in enumerate(ordered_unique(results.runs.model[points.index])):
        mine = points[results.runs.model[points.index] == model]
        baseline = mine.accuracy_reference.iloc[0]
        ax.plot([1.0], [baseline], marker="*", markersize=12, color=f"C{len(families) + model_index}",
                linestyle="none", label=f"{model} dense")
        for marker, (run, row) in zip(MARKERS * len(mine), mine.iterrows()):
            y = baseline - row.accuracy_loss
            yerr = None if row.accuracy_loss_se is None else [[SE_MULTIPLE * row.accuracy_loss_se]] * 2
            xerr = (None if row.speedup_HF_low is None
                    else [[row.speedup_HF - row.speedup_HF_low], [row.speedup_HF_high - row.speedup_HF]])
            ax.errorbar([row.speedup_HF], [y], xerr=xerr, yerr=yerr, marker=marker, color=f"C{families.index(row.family)}",
                        linestyle="none", capsize=2, markersize=6,
                        label=f"{model} {results.runs.method[run]} {results.runs.ratio[run].label} ({row.family})")
    plotted = set(results.runs.model[points.index])
    without = [m for m in ordered_unique(results.runs.model[measured.index]) if m not in plotted]
    if without:  # said on the plot, not drawn
        ax.text(0.5, 0.02, f"no zero-shot average for {', '.join(without)}: no task above chance (or one not measured)",
                transform=ax.transAxes, ha="center", va="bottom", fontsize=8)
    if not points.empty:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_xlabel("decode speed-up against the dense model (Hugging Face, batch 1; bars: range over repeats)")
    ax.set_ylabel("zero-shot average × 100\n(bars: ±2 paired SE against dense)")
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
