"""Atomic outputs and provenance: a result is either complete or absent, never half-written, and a good
result is only replaced once its successor is complete.

Scratch names carry the process and host that made them (`.NAME.tmp-PID@HOST-XXXXXXXX`) so that a later
run into the same folder can tell a leftover of a killed run from the scratch of a live one and remove it.
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

PRUNE_REPORT = "prune.json"  # the report a pruned model directory holds; its presence marks our own output
RUN_ID = "run_id"  # prune.json's id of that one prune, copied into every metric file measured on its model
STALE_SECONDS = 3600  # a scratch entry untouched this long, from another host or an older version, is dead
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


class OutputError(ValueError):
    """An output that cannot or must not be written; raised before any work."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file under the current umask (what open() would give)."""
    return 0o666 & ~_umask()


def _share_like_directories(root: Path) -> None:
    """mkstemp and some writers create 0600 files; give every file the umask's mode, as the folders have."""
    mode = file_mode()
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            current = stat.S_IMODE(path.lstat().st_mode)
            if not path.is_symlink():
                os.chmod(path, mode | (current & 0o111 & ~_umask()))


def scratch_prefix(dest: Path) -> str:
    """Prefix of a scratch entry beside `dest` (the random part follows): names our process and host."""
    return f".{dest.name}.tmp-{os.getpid()}@{_HOST}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _last_touched(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [entry.lstat().st_mtime for entry in path.iterdir()]
    return max(times)


_SCRATCH = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]+?)"
                      r"(?:-[A-Za-z0-9_]{8}(?:\.[a-z0-9.]+)?)?")


def is_stale_scratch(entry: Path, dest_name: str) -> bool:
    """True for a scratch entry of ours whose writer is gone: named by this host and a dead pid, or (named by
    another host, or an older version's `.DEST.tmp-XXXXXXXX` beside `dest_name`) untouched for STALE_SECONDS."""
    ours = _SCRATCH.fullmatch(entry.name)
    name = re.escape(dest_name)
    legacy = re.fullmatch(rf"\.{name}\.tmp-[A-Za-z0-9_]{{8}}(?:\.[a-z0-9.]+)?|\.{name}\.old-\d+", entry.name)
    if ours and ours["host"] == _HOST:
        return not _pid_alive(int(ours["pid"]))
    if ours or legacy:
        try:
            return time.time() - _last_touched(entry) > STALE_SECONDS
        except OSError:
            return False
    return False


def remove_stale_scratch(dest: str | os.PathLike) -> list[Path]:
    """Remove leftovers of killed runs of ours (`.NAME.tmp-PID@HOST-*`, `.NAME.old-PID@HOST`) from the folder
    `dest` is written to; returns what went."""
    dest = Path(dest)
    removed = []
    try:
        candidates = [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    except OSError:
        return removed
    for entry in candidates:
        if not is_stale_scratch(entry, dest.name):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def is_our_directory(path: Path) -> bool:
    """A directory this tool wrote before: it holds our prune.json (a JSON object naming method and versions)."""
    report = path / PRUNE_REPORT
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "method" in data and "versions" in data


def replaceable_directory(path: Path) -> bool:
    """Absent, empty, or a previous result of ours: replacing it loses nothing the tool did not make."""
    if not path.exists():
        return True
    return path.is_dir() and (not any(path.iterdir()) or is_our_directory(path))


@contextmanager
def atomic_directory(dest: str | os.PathLike, *, overwrite: bool = False):
    """Yield a scratch directory beside `dest`; on success it replaces `dest`, on error it vanishes.

    An existing `dest` is replaced only if it is empty or a previous result of ours (see
    `replaceable_directory`), or with `overwrite`; callers check this before their work with
    `pruning.checks.output_directory`, this is the last guard.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(dest)
    if not overwrite and not replaceable_directory(dest):
        raise OutputError(f"output directory {dest} exists and is not a previous result of this tool "
                          f"(no {PRUNE_REPORT}): refusing to replace it; remove it or choose another path")
    tmp = Path(tempfile.mkdtemp(prefix=scratch_prefix(dest), dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make shared results unreadable to others
    try:
        yield tmp
        _share_like_directories(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}@{_HOST}")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a scratch file beside it, with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(path)
    fd, tmp = tempfile.mkstemp(prefix=scratch_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def versions(*packages: str) -> dict:
    """Versions of the software behind a result, plus those of `packages` (distribution names; None where
    not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    from . import __version__

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "pruning": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **{name: installed(name) for name in packages},
    }


def git_commit() -> str | None:
    """Commit of the checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is VmHWM of /proc/self/status: getrusage's ru_maxrss survives fork and exec, so a job
    started by a large parent (a benchmark script, a notebook) would report the parent's peak instead.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)
