"""Plots from the long frame of a grid's metric files (`pruning.results`); which plots a grid produces is
decided by `pruning.grid.plot_specs`."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .grid import MASK_KINDS, plot_specs
from .results import Results, ordered_unique


def plot_sparsity(results: Results, model: str, path: str | os.PathLike) -> Path | None:
    """PPL against sparsity per method (log scale), the dense model at 0 and N:M patterns as open markers."""
    runs = results.runs
    masked = results.ids((runs.model == model) & runs.kind.isin(MASK_KINDS) & results.has("ppl"))
    if not masked:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

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
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(x=0.1)
    ax.set_xlabel("sparsity of decoder linear layers (open squares: N:M)")
    ax.set_ylabel("perplexity")
    ax.set_title(f"{model}: perplexity against sparsity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_plots(long: pd.DataFrame, out_dir: str | os.PathLike) -> list[Path]:
    results = Results(long)
    paths = [plot_sparsity(results, spec.model, Path(out_dir) / f"{spec.name}.png")
             for spec in plot_specs(results.grid_rows())]
    return [p for p in paths if p is not None]
