"""Snakemake script (`snakemake publish`): this run's tables and plots -> results/published/, the only tracked
results. Everything is checked before anything is replaced: every table and plot of the grid non-empty and
readable, and every grid row present in the tables; then each published folder is replaced whole (stale tables
of an older grid go), atomically, and only if it holds nothing but tables and plots."""
import shutil
import sys
from pathlib import Path

import pandas as pd

from pruning.io import atomic_directory

PUBLISHABLE = {".md", ".csv", ".png"}


def problems(md: list[Path], csv: list[Path], plots: list[Path], runs: set[tuple]) -> list[str]:
    found = []
    for path in md:
        if "|" not in path.read_text(encoding="utf-8"):
            found.append(f"{path}: no Markdown table in it")
    covered = set()
    for path in csv:
        try:
            frame = pd.read_csv(path)
        except (ValueError, OSError) as exc:
            found.append(f"{path}: unreadable ({exc})")
            continue
        if frame.empty:
            found.append(f"{path}: no rows")
        elif {"model", "method", "ratio"} <= set(frame.columns):
            covered |= set(frame[["model", "method", "ratio"]].astype(str).itertuples(index=False, name=None))
    found += [f"{path}: not a PNG image" for path in plots if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n"]
    found += [f"grid row {'/'.join(run)}: in no table" for run in sorted(runs - covered)]
    return found


def foreign(dest: Path) -> list[str]:
    """What publishing would delete that is not a table or plot (someone else's file)."""
    entries = [p for p in dest.iterdir() if p.is_dir() or p.suffix not in PUBLISHABLE] if dest.is_dir() else []
    return [f"{p}: not a table or plot, would be deleted; move it away first" for p in entries]


def replace_folder(sources: list[Path], dest: Path) -> None:
    with atomic_directory(dest, overwrite=True) as scratch:
        for source in sources:
            shutil.copy2(source, scratch / source.name)


sys.stderr = sys.stdout = open(snakemake.log[0], "w")
inputs = {key: [Path(p) for p in snakemake.input[key]] for key in ("md", "csv", "plots")}
found = problems(inputs["md"], inputs["csv"], inputs["plots"], {tuple(run) for run in snakemake.params.runs})
found += foreign(Path(snakemake.params.tables)) + foreign(Path(snakemake.params.plots))
if found:
    raise SystemExit("publish: refused, nothing replaced:\n  " + "\n  ".join(found))
replace_folder(inputs["md"] + inputs["csv"], Path(snakemake.params.tables))
replace_folder(inputs["plots"], Path(snakemake.params.plots))
print(f"published {len(inputs['md'])} tables to {snakemake.params.tables} and {len(inputs['plots'])} plots "
      f"to {snakemake.params.plots}")
