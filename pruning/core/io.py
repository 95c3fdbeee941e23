"""Atomic outputs and provenance: a result is either complete or absent, never half-written, and a good
result is only replaced once its successor is complete.

Scratch names carry this tool's marker and the process and host that made them
(`.NAME.pruning-tmp-PID@HOST-XXXXXXXX`, and `.NAME.pruning-old-PID@HOST` for the result being replaced), so a
later run into the same folder can tell a leftover of a killed run of ours from the scratch of a live one and
from anybody else's dotfiles. A leftover `-old-` entry is a complete earlier result: it is put back when its
destination is missing, never deleted in that case.

Ownership (`is_our_file`, `is_our_directory`) is decided here, once, from a bounded prefix of the file.
"""
from __future__ import annotations

import errno
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
GGUF_OWNER_KEY = "pruning.version"  # written into every GGUF file this tool exports
PNG_OWNER_KEY = GGUF_OWNER_KEY  # a text chunk of every PNG plot this tool draws (pruning.reporting.plots)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_TEXT_BYTES = 2**16  # our text chunks are a few bytes; a larger chunk before the image data is not ours
SCRATCH_MARK = "pruning"  # in every scratch name we make: `.NAME.pruning-tmp-...`, `.NAME.pruning-old-...`
MAX_OWNED_JSON_BYTES = 4 * 2**20  # our JSON records and prune.json are far smaller; larger files are not ours
STALE_SECONDS = 3600  # a scratch entry untouched this long, from another host or an older version, is dead
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


class OutputError(ValueError):
    """An output that cannot or must not be written; raised before any work."""


# What only a write can fail with: the disk or the quota is full, a file passes the size limit (`ulimit -f`: Python
# ignores SIGXFSZ, so the write fails with EFBIG instead of killing the process), the file system is read-only.
WRITE_ERRNOS = {errno.ENOSPC: "", errno.EFBIG: " (the file size limit, ulimit -f)", errno.EDQUOT: "",
                errno.EROFS: ""}  # with a hint where the system's message alone leaves the cause open
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")  # how the safetensors writer (Rust) reports an OSError
_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")  # numpy's tofile (the GGUF writer): no errno


class WriteError(OSError):
    """Writing an output failed part-way (see `write_failure`); the output was left as it was before."""

    def __init__(self, code: int, message: str, reason: str):
        super().__init__(code, message)
        self.reason = reason

    def __str__(self) -> str:
        return self.strerror  # the whole sentence (OSError would put "[Errno N]" before it)


def write_failure(exc: BaseException) -> str | None:
    """Why `exc` is a failed write, in words: an OSError (or the safetensors writer's error naming one) of
    WRITE_ERRNOS, or a write the system took only part of; None for any other error."""
    if isinstance(exc, WriteError):
        return exc.reason
    code = _errno(exc)
    if code in WRITE_ERRNOS:
        return os.strerror(code) + WRITE_ERRNOS[code]
    short = _SHORT_WRITE.fullmatch(str(exc)) if isinstance(exc, OSError) and code is None else None
    if short:
        return f"the system took {short[2]} of {short[1]} bytes (a full disk or quota, or the file size limit)"
    return None


def _errno(exc: BaseException) -> int | None:
    if isinstance(exc, OSError):
        return exc.errno
    found = _OS_ERROR_CODE.search(str(exc)) if type(exc).__name__ == "SafetensorError" else None
    return int(found[1]) if found else None


@contextmanager
def write_errors(dest: str | os.PathLike, existed: bool):
    """A failed write inside becomes a WriteError naming `dest` (the outermost writer's name wins, so the user
    reads the output they asked for, not a scratch file) and saying what became of it."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only write failures are translated, the rest re-raised as they are
        reason = write_failure(exc)
        if reason is None:
            raise
        kept = f"the earlier {dest} is unchanged" if existed else f"nothing was written to {dest}"
        raise WriteError(_errno(exc) or errno.EIO, f"writing {dest} failed: {reason}; {kept}", reason) from exc


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
    return f".{dest.name}.{SCRATCH_MARK}-tmp-{os.getpid()}@{_HOST}-"


def _old_name(dest: Path) -> Path:
    """Where `dest` waits while its successor is moved in."""
    return dest.with_name(f".{dest.name}.{SCRATCH_MARK}-old-{os.getpid()}@{_HOST}")


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


_SCRATCH = re.compile(rf"\.(?P<name>.+)\.{SCRATCH_MARK}-(?P<kind>tmp|old)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]+?)"
                      r"(?:-[A-Za-z0-9_]{8}(?:\.[a-z0-9.]+)?)?")


def _legacy_scratch(entry_name: str, dest_name: str) -> re.Match | None:
    """Names of older versions (no marker), recognised only beside the same `dest_name`."""
    name = re.escape(dest_name)
    return re.fullmatch(rf"\.(?P<name>{name})\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]+?)"
                        r"(?:-[A-Za-z0-9_]{8}(?:\.[a-z0-9.]+)?)?|[A-Za-z0-9_]{8}(?:\.[a-z0-9.]+)?|\d+)", entry_name)


def _scratch_match(entry: Path, dest_name: str) -> re.Match | None:
    return _SCRATCH.fullmatch(entry.name) or _legacy_scratch(entry.name, dest_name)


def is_stale_scratch(entry: Path, dest_name: str) -> bool:
    """True for a scratch entry of ours whose writer is gone: named by this host and a dead pid, or (named by
    another host, or an older version's name beside `dest_name`) untouched for STALE_SECONDS. Entries without
    our marker are considered only beside `dest_name`, so nobody else's dotfiles are ever judged."""
    found = _scratch_match(entry, dest_name)
    if not found:
        return False
    if found["pid"] and found["host"] == _HOST:
        return not _pid_alive(int(found["pid"]))
    try:
        return time.time() - _last_touched(entry) > STALE_SECONDS
    except OSError:
        return False


def remove_stale_scratch(dest: str | os.PathLike) -> list[Path]:
    """Clean leftovers of killed runs of ours from the folder `dest` is written to; returns what went.

    Dead scratch (`-tmp-`) is removed. A dead `-old-` entry is an earlier complete result: if its destination is
    missing (killed between the two renames of `atomic_directory`) it is renamed back; it is removed only when
    its destination exists, i.e. its successor was already in place.
    """
    dest = Path(dest)
    removed = []
    try:
        candidates = [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    except OSError:
        return removed
    for entry in candidates:
        if not is_stale_scratch(entry, dest.name):
            continue
        found = _scratch_match(entry, dest.name)
        try:
            if found["kind"] == "old":
                target = entry.with_name(found["name"])
                if not os.path.lexists(target):
                    os.replace(entry, target)
                    continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def _read_json_prefix(path: Path):
    """The JSON object in `path` if the file is a small JSON object (read at most MAX_OWNED_JSON_BYTES), else None."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_OWNED_JSON_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_OWNED_JSON_BYTES or not raw.lstrip().startswith(b"{"):
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def gguf_metadata_keys(path: Path) -> set[str] | None:
    """The metadata keys of a GGUF file (gguf's reader maps the file, so tensor data is never read); None if
    it does not parse."""
    from gguf import GGUFReader

    try:
        return set(GGUFReader(path).fields)
    except Exception:  # noqa: BLE001 - a file gguf's reader cannot parse is not one we wrote
        return None


def png_text_keys(path: Path) -> set[str]:
    """The keywords of a PNG file's text chunks before its image data (read chunk by chunk, never the image)."""
    keys = set()
    try:
        with open(path, "rb") as handle:
            if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                return keys
            while len(header := handle.read(8)) == 8:
                length, kind = int.from_bytes(header[:4], "big"), header[4:]
                if kind in (b"IDAT", b"IEND") or length > MAX_PNG_TEXT_BYTES:
                    break
                data = handle.read(length + 4)[:length]  # the chunk and its CRC
                if kind in (b"tEXt", b"iTXt", b"zTXt"):
                    keys.add(data.split(b"\0", 1)[0].decode("latin-1"))
    except OSError:
        pass
    return keys


def is_our_file(path: str | os.PathLike) -> bool:
    """A file this tool wrote: a JSON record with our `versions` (at most MAX_OWNED_JSON_BYTES), a GGUF file
    whose metadata holds GGUF_OWNER_KEY, or a PNG plot with a PNG_OWNER_KEY text chunk. Reads only that much of
    any file."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
    except OSError:
        return False
    if head[:4] == b"GGUF":
        return GGUF_OWNER_KEY in (gguf_metadata_keys(path) or ())
    if head == PNG_SIGNATURE:
        return PNG_OWNER_KEY in png_text_keys(path)
    data = _read_json_prefix(path)
    return data is not None and isinstance(data.get("versions"), dict) and "pruning" in data["versions"]


def is_our_directory(path: Path) -> bool:
    """A directory this tool wrote before: it holds our prune.json (a JSON object naming method and versions)."""
    data = _read_json_prefix(Path(path) / PRUNE_REPORT)
    return data is not None and "method" in data and "versions" in data


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
    `pruning.core.outputs.output_directory`, this is the last guard.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(dest)
    if not overwrite and not replaceable_directory(dest):
        raise OutputError(f"output directory {dest} exists and is not a previous result of this tool "
                          f"(no {PRUNE_REPORT}): refusing to replace it; remove it or choose another path")
    existed = dest.exists()
    with write_errors(dest, existed):
        tmp = Path(tempfile.mkdtemp(prefix=scratch_prefix(dest), dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make shared results unreadable to others
    old = _old_name(dest)
    try:
        with write_errors(dest, existed):
            yield tmp
            _share_like_directories(tmp)
            if dest.exists():
                os.replace(dest, old)
                os.replace(tmp, dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(dest):  # failed between the renames: put it back
            os.replace(old, dest)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a scratch file beside it, with the umask's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(path)
    existed = path.exists()
    with write_errors(path, existed):
        fd, tmp = tempfile.mkstemp(prefix=scratch_prefix(path), dir=path.parent)
    try:
        with write_errors(path, existed), os.fdopen(fd, "w", encoding="utf-8") as handle:
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

    from .. import __version__

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
