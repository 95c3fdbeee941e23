"""The hostile-input suite's harness: a world of good and bad inputs, a snapshot of everything on disk, and one
way to run a command and assert a refusal (exit code 2, one line, what it says, how soon, no weights loaded,
nothing on disk changed). Used by every `test_hostile_*.py`; the fixtures live in this folder's conftest.py.

Read-only directories: tests run as root here, and root ignores permission bits. The synthetic read-only
directory is made immutable with `chattr +i` (which stops root too; os.access reports it unwritable), or,
where chattr is not allowed, made 0555 for a non-root user; the tests skip only when neither really stops
this process from writing.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pruning import cli

BAD_JSONL = '{"text": "one"}\n\n{"text": "two"}\n{"text": oops}\n'  # line 4 is bad (line 2 is blank)
NO_TEXT_JSONL = '{"text": "one"}\n{"body": "two"}\n'
REFUSAL_SECONDS = 20  # a refusal before any work comes in seconds (loading and calibrating take longer)


def make_readonly(folder: Path) -> bool:
    """Make `folder` really unwritable for this process; False if this system gives no way to."""
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        return True
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        return False
    return True


def undo_readonly(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def copy_model(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    for path in [dest, *dest.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


class Evil:
    """A pickle that would run a shell command when loaded."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def snapshot(root: Path) -> dict:
    """Every entry under `root`: type, mode, size, mtime and content hash (directories: mtime too, so a file
    created and removed again shows)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else None
            state[str(path.relative_to(root))] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode),
                                                  info.st_size, info.st_mtime_ns, digest)
    info = root.lstat()
    state["."] = (info.st_mtime_ns,)
    return state


@dataclass
class Outcome:
    """How one command ended: exit code, its output, and how long it took."""

    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


def run_in_process(capfd, argv: list[str]) -> Outcome:
    """`python -m pruning ARGV` in this interpreter (cases in milliseconds once torch is imported)."""
    started = time.perf_counter()
    try:
        code = cli.main([str(arg) for arg in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    seconds = time.perf_counter() - started
    out, err = capfd.readouterr()
    return Outcome(code, out, err, seconds)


def run_cli(*args, cwd=None, env=None, umask=None, **options) -> subprocess.CompletedProcess:
    """`python -m pruning ARGS` as a user runs it, in a new interpreter."""
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "pruning", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, preexec_fn=preexec, **options)


def prune_args(model, out, *extra, sparsity: str = "0.5") -> list[str]:
    """A magnitude prune of `model` into `out` on the CPU, quiet."""
    return ["prune", "--model", str(model), "--method", "magnitude", "--sparsity", sparsity, "--output-dir", str(out),
            "--device", "cpu", "--quiet", *extra]


def assert_refused(outcome: Outcome, expected: str, *, before: dict | None = None, root: Path | None = None,
                   seconds: float = REFUSAL_SECONDS) -> None:
    """Exit code 2, one line `error: ...` holding `expected`, in under `seconds`, and (given a snapshot) nothing
    under `root` changed. Loading weights is caught by the `no_weights` fixture, which fails the command."""
    assert outcome.code == 2, outcome.stderr
    assert len(outcome.lines) == 1, outcome.stderr
    assert outcome.lines[0].startswith("error: ") and expected in outcome.lines[0], outcome.lines[0]
    assert "Loading weights" not in outcome.stderr
    assert outcome.seconds < seconds, f"refused after {outcome.seconds:.1f} s"
    if before is not None:
        assert snapshot(root) == before


# `python -c KILLER POINT SIGNAL ARGV...`: the program (`pruning.cli.program`), signalling itself at POINT:
# "loading" (the checks passed, the weights being read), "scratch-written" (the whole new result in scratch),
# "between-renames" (the earlier result moved aside, the new one not yet in place).
KILLER = r"""
import os, signal, sys, time

from pruning import api
from pruning.core import modeling

point, sig, argv = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3:]
# Ctrl-C as at a terminal: a shell without job control starts background commands with SIGINT ignored, and
# Python then installs no KeyboardInterrupt handler (a test suite run as `... &` from a script would hang here).
signal.signal(signal.SIGINT, signal.default_int_handler)


def die(*_, **__):
    sys.stderr.flush()
    os.kill(os.getpid(), sig)
    # The kernel may hand the signal to any of the process's threads (torch's among them); Python runs the handler
    # in the main thread at its next check, which this loop reaches every 10 ms (signal.pause() need not return).
    while True:
        time.sleep(0.01)


if point == "loading":  # the checks passed, the weights are being read
    api.load_model = die
elif point == "scratch-written":  # the whole new result is in the scratch folder, the last file just written
    write_json = modeling.atomic_write_json

    def write_then_die(path, data):
        write_json(path, data)
        die()

    modeling.atomic_write_json = write_then_die
elif point == "between-renames":  # the earlier result moved aside, the new one not yet in its place
    replace = os.replace

    def replace_then_die(src, dst):
        replace(src, dst)
        if ".pruning-old-" in os.fspath(dst):
            die()

    os.replace = replace_then_die
from pruning.cli import program

sys.exit(program(argv))
"""


def signalled_prune(point: str, signame: str, model, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILLER, point, signame, *prune_args(model, out)],
                          capture_output=True, text=True, timeout=600)
