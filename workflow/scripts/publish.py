"""Snakemake script (`snakemake publish`): this run's tables and plots -> results/published/, the only tracked
results. Everything is checked before anything is replaced: every table and plot of the grid non-empty and
readable, and every grid row present in the tables; then the published folders are replaced whole (stale tables
of an older grid go), together (both built in scratch first; if the second cannot be swapped in, the first gets
its old files back), and only if they hold nothing but tables and plots."""
import shutil
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pandas as pd

from pruning.core.io import atomic_directory

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


def _copy_into(folder: Path, sources: list[Path]) -> None:
    for source in sources:
        shutil.copy2(source, folder / source.name)


def replace_folders(contents: dict[Path, list[Path]]) -> None:
    """Make each folder hold exactly its files, all folders or none: every new folder is built in scratch before
    any is swapped in, and if a swap fails, the folders already swapped get their old files back (kept in a
    temporary copy; `foreign` made sure they are flat tables and plots)."""
    swapped: list[Path] = []

    @contextmanager
    def replacing(dest: Path):
        with atomic_directory(dest, overwrite=True) as scratch:
            yield scratch
        swapped.append(dest)

    with tempfile.TemporaryDirectory() as backup:
        old = {dest: Path(backup) / str(index) for index, dest in enumerate(contents)}
        for dest in contents:
            if dest.is_dir():
                shutil.copytree(dest, old[dest])
        try:
            with ExitStack() as stack:
                for dest, sources in contents.items():
                    _copy_into(stack.enter_context(replacing(dest)), sources)
        except BaseException:
            for dest in swapped:
                if old[dest].is_dir():
                    with atomic_directory(dest, overwrite=True) as scratch:
                        _copy_into(scratch, sorted(old[dest].iterdir()))
                else:  # there was none: remove the one we made
                    shutil.rmtree(dest)
            raise


def main(snakemake) -> None:
    sys.stderr = sys.stdout = open(snakemake.log[0], "w")
    inputs = {key: [Path(p) for p in snakemake.input[key]] for key in ("md", "csv", "plots")}
    tables, plots = Path(snakemake.params.tables), Path(snakemake.params.plots)
    found = problems(inputs["md"], inputs["csv"], inputs["plots"], {tuple(run) for run in snakemake.params.runs})
    found += foreign(tables) + foreign(plots)
    if found:
        raise SystemExit("publish: refused, nothing replaced:\n  " + "\n  ".join(found))
    replace_folders({tables: inputs["md"] + inputs["csv"], plots: inputs["plots"]})
    print(f"published {len(inputs['md'])} tables to {tables} and {len(inputs['plots'])} plots to {plots}")


if "snakemake" in globals():  # run by Snakemake's `script:`; importable for tests
    main(snakemake)  # noqa: F821
