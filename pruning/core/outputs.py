"""The output rule, checked before any work: an existing output is replaced only if this tool wrote it (a
directory holding our prune.json, a JSON record with our `versions`, a GGUF file with our metadata key, a PNG plot
with our text chunk), or with `overwrite`; never when the output is, contains or lies inside an input, and only
where this process may write. The inputs are the paths a command reads (`pruning.core.inputs.read_paths`: model
files, data files resolved through the data directory, job files), not the words it was given."""
from __future__ import annotations

import os
from pathlib import Path

from .io import PRUNE_REPORT, OutputError, is_our_file, replaceable_directory


def _local(paths) -> list[Path]:
    """The inputs that are local files or folders, resolved (hub ids and dataset names drop out)."""
    found = []
    for item in paths:
        if item is None:
            continue
        path = Path(str(item)).expanduser()
        if path.exists():
            found.append(path.resolve())
    return found


def check_against_inputs(what: str, dest: Path, inputs) -> None:
    """Refuse `dest` if it is, contains or lies inside one of `inputs` (paths; `read_paths` gives them)."""
    resolved = dest.resolve()
    for source in _local(inputs):
        if resolved == source:
            raise OutputError(f"{what} {dest} is the input {source}; choose another path")
        if source in resolved.parents:
            raise OutputError(f"{what} {dest} is inside the input {source}; choose a path outside it")
        if resolved in source.parents:
            raise OutputError(f"{what} {dest} contains the input {source}; replacing it would delete that input")


def writable_location(dest: str | os.PathLike, what: str = "output") -> None:
    """The folder `dest` will be created in exists (or can be made) and this process may write there."""
    dest = Path(dest)
    anchor = dest.parent
    while not os.path.lexists(anchor) and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise OutputError(f"{what} {dest} lies under {anchor}, which is a file, not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {dest}: cannot write in {anchor} (permission denied or read-only file system)")


def output_directory(dest: str | os.PathLike, *, overwrite: bool = False, inputs=()) -> Path:
    """Refuse, before any work, an output directory that cannot be written or must not be replaced."""
    dest = Path(dest).expanduser()
    check_against_inputs("output directory", dest, inputs)
    writable_location(dest, "output directory")
    if os.path.lexists(dest):
        if not dest.is_dir():
            raise OutputError(f"output directory {dest} exists and is not a directory")
        if not overwrite and not replaceable_directory(dest):
            raise OutputError(f"output directory {dest} exists and is not a previous result of this tool (no "
                              f"{PRUNE_REPORT}); refusing to replace it: remove it, choose another, or pass --overwrite")
    return dest


def output_file(path: str | os.PathLike, *, overwrite: bool = False, inputs=(), what: str = "output") -> Path:
    """Refuse, before any work, an output file that cannot be written or must not be replaced."""
    path = Path(path).expanduser()
    check_against_inputs(what, path, inputs)
    writable_location(path, what)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    if os.path.lexists(path):
        if not path.is_file():
            raise OutputError(f"{what} {path} exists and is not a regular file")
        if not overwrite and path.stat().st_size and not is_our_file(path):
            raise OutputError(f"{what} {path} exists and was not written by this tool; refusing to replace it: "
                              "remove it, choose another, or pass --overwrite")
    return path


def appended_file(path: str | os.PathLike, *, inputs=(), replaced=(), what: str = "log file") -> Path:
    """Refuse, before any work, a file lines are appended to (a log) that is, contains or lies inside an input,
    or lies inside (or would hold) an output directory the run replaces (`replaced`: the log would go with the
    old result and make the new one look like someone else's folder), or cannot be written. An existing file is
    appended to, not replaced, so whose it is does not matter."""
    path = Path(path).expanduser()
    check_against_inputs(what, path, inputs)
    resolved = path.resolve()
    for directory in replaced:
        if directory is None:
            continue
        directory = Path(directory).expanduser().resolve()
        if resolved == directory or directory in resolved.parents:
            where = "is" if resolved == directory else "is inside"
            raise OutputError(f"{what} {path} {where} the output directory {directory}, which the run replaces; "
                              "put it outside")
        if resolved in directory.parents:
            raise OutputError(f"{what} {path} would hold the output directory {directory}; choose another path")
    writable_location(path, what)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    if os.path.lexists(path) and not path.is_file():
        raise OutputError(f"{what} {path} exists and is not a regular file")
    return path
