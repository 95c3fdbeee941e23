"""Output safety of the library itself: a result being replaced survives a failure between the two renames,
scratch cleanup touches only names carrying this tool's marker, ownership is read from a bounded prefix, and
every library function that writes checks its output before any work (not only the CLI commands)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from pruning import cli
from pruning.core import io
from pruning.core.outputs import output_file
from pruning.core.io import OutputError, atomic_directory, is_our_file, remove_stale_scratch

HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


def dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def earlier_result(dest: Path) -> None:
    with atomic_directory(dest) as tmp:
        (tmp / io.PRUNE_REPORT).write_text(json.dumps({"method": "magnitude", "versions": {"pruning": "0"}}))
        (tmp / "weights").write_text("the only good copy\n")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ point 1

@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_failure_between_the_renames_puts_the_previous_result_back(tmp_path, monkeypatch, error):
    dest = tmp_path / "out"
    earlier_result(dest)
    before = snapshot(dest)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # dest already moved aside, the new result not yet in place
            raise error("interrupted between the renames")
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(error):
        with atomic_directory(dest) as tmp:
            (tmp / io.PRUNE_REPORT).write_text(json.dumps({"method": "wanda", "versions": {"pruning": "1"}}))
    monkeypatch.undo()
    assert len(calls) >= 2 and snapshot(dest) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither scratch nor the moved-aside copy is left


def test_cleanup_restores_a_dead_old_entry_whose_destination_is_missing(tmp_path):
    """A run killed between the renames leaves only `.NAME.pruning-old-PID@HOST`: the next run puts it back
    instead of deleting the only copy; where the destination exists (the swap completed) it goes."""
    pid = dead_pid()
    earlier_result(tmp_path / "src")
    moved = tmp_path / f".gone.pruning-old-{pid}@{HOST}"
    os.rename(tmp_path / "src", moved)
    before = snapshot(moved)
    legacy = tmp_path / f".legacy.old-{pid}@{HOST}"  # an older version's name, beside its own output
    legacy.mkdir()
    (legacy / "weights").write_text("older version\n")
    replaced = tmp_path / f".kept.pruning-old-{pid}@{HOST}"
    replaced.mkdir()
    (tmp_path / "kept").mkdir()
    remove_stale_scratch(tmp_path / "gone")
    remove_stale_scratch(tmp_path / "legacy")
    assert snapshot(tmp_path / "gone") == before
    assert (tmp_path / "legacy" / "weights").read_text() == "older version\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone", "kept", "legacy"]


# ------------------------------------------------------------------------------------------------ point 2

def test_user_dotfiles_in_the_old_pattern_survive(tmp_path):
    pid = dead_pid()
    old = time.time() - 7200
    users = [tmp_path / f".notes.txt.tmp-{pid}@another.host", tmp_path / f".notes.txt.tmp-{pid}@{HOST}-abcdefgh.txt",
             tmp_path / f".thesis.old-{pid}@{HOST}", tmp_path / f".thesis.old-{pid}@another.host", tmp_path / ".draft.tmp-a1b2c3d4"]
    for path in users:
        path.write_text("mine\n")
        os.utime(path, (old, old))
    ours = tmp_path / f".other.pruning-tmp-{pid}@{HOST}-abcdefgh.json"
    ours.write_text("{")
    assert remove_stale_scratch(tmp_path / "ppl.json") == [ours]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in users)
    assert io.scratch_prefix(tmp_path / "ppl.json") == f".ppl.json.pruning-tmp-{os.getpid()}@{HOST}-"


# ------------------------------------------------------------------------------------------------ point 3

def test_ownership_reads_a_bounded_prefix(tmp_path):
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as handle:  # sparse: 256 MiB that are not UTF-8 JSON
        handle.write(b"\x80" * 16)
        handle.truncate(256 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(OutputError, match="was not written by this tool"):
            output_file(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * io.MAX_OWNED_JSON_BYTES + 2**20, peak
    record = {"versions": {"pruning": "0.1"}}
    (tmp_path / "ours.json").write_text(json.dumps(record))
    (tmp_path / "padded.json").write_text(json.dumps({**record, "pad": "x" * io.MAX_OWNED_JSON_BYTES}))
    assert is_our_file(tmp_path / "ours.json") and not is_our_file(tmp_path / "padded.json")


def test_gguf_owner_key_is_read_from_the_header(tmp_path):
    import gguf
    import numpy as np

    def write(path: Path, owner: bool) -> None:
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
        writer.add_array("tokenizer.ggml.scores", [0.0, 1.0, 2.0])
        if owner:
            writer.add_string(io.GGUF_OWNER_KEY, "0.1")
        writer.add_tensor("w", np.zeros((4, 4), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    write(tmp_path / "ours.gguf", True)
    write(tmp_path / "theirs.gguf", False)
    assert {"tokenizer.ggml.tokens", io.GGUF_OWNER_KEY} <= io.gguf_metadata_keys(tmp_path / "ours.gguf")
    assert is_our_file(tmp_path / "ours.gguf") and not is_our_file(tmp_path / "theirs.gguf")
    (tmp_path / "cut.gguf").write_bytes((tmp_path / "ours.gguf").read_bytes()[:40])
    assert io.gguf_metadata_keys(tmp_path / "cut.gguf") is None and not is_our_file(tmp_path / "cut.gguf")


# ------------------------------------------------------------------------------------------------ point 4

@pytest.fixture
def foreign(tmp_path) -> Path:
    path = tmp_path / "foreign.json"
    path.write_text('{"mine": true}\n')
    return path


def test_library_measurements_refuse_a_foreign_output(stories_dir, foreign, tmp_path):
    from pruning.evaluation.speed import speed
    from pruning.evaluation.zeroshot import zeroshot

    with pytest.raises(OutputError, match="was not written by this tool"):
        zeroshot(str(stories_dir), "arc_easy", limit=2, device="cpu", output=foreign)
    with pytest.raises(OutputError, match="was not written by this tool"):
        speed(str(stories_dir), repeats=1, device="cpu", output=foreign)
    with pytest.raises(OutputError, match="is inside the input"):
        speed(str(stories_dir), repeats=1, device="cpu", output=stories_dir / "speed.json")
    assert foreign.read_text() == '{"mine": true}\n'


def test_evaluate_gguf_refuses_a_foreign_output(stories_dir, foreign, tmp_path):
    from pruning.export.gguf import export_gguf
    from pruning.evaluation.llamacpp import evaluate_gguf

    export_gguf(stories_dir, tmp_path / "m.gguf", "f32")
    with pytest.raises(OutputError, match="was not written by this tool"):
        evaluate_gguf(tmp_path / "m.gguf", stories_dir, seqlen=32, max_windows=1, output=foreign)
    assert foreign.read_text() == '{"mine": true}\n'


def test_export_gguf_checks_its_output_and_cleans_scratch(stories_dir, tmp_path):
    from pruning.export.gguf import export_gguf

    theirs = tmp_path / "theirs.gguf"
    theirs.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(OutputError, match="was not written by this tool"):
        export_gguf(stories_dir, theirs, "f32")
    assert theirs.read_bytes() == b"GGUF" + b"\0" * 60
    stale = tmp_path / f".m.gguf.pruning-tmp-{dead_pid()}@{HOST}-abcdefgh.gguf"
    stale.write_bytes(b"half")
    export_gguf(stories_dir, tmp_path / "m.gguf", "f32")
    export_gguf(stories_dir, tmp_path / "m.gguf", "f16")  # our own earlier file is replaced
    export_gguf(stories_dir, theirs, "f32", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "theirs.gguf"]
    assert is_our_file(theirs)


@pytest.fixture(scope="module")
def dense_results(stories_dir, shared_data_dir, tmp_path_factory) -> Path:
    """The long frame of one real dense run, laid out as the workflow writes it."""
    import pruning

    root = tmp_path_factory.mktemp("tables") / "results"
    pruning.evaluate_perplexity(str(stories_dir), output=str(root / "metrics/stories260K/dense/base/ppl.json"),
                                dataset="wikitext2", seqlen=64, max_windows=1, device="cpu",
                                data_dir_path=str(shared_data_dir))
    return root


@pytest.fixture(scope="module")
def dense_metrics(dense_results) -> pd.DataFrame:
    from pruning.reporting.metric_files import collect

    return collect(dense_results)


def test_write_tables_replaces_only_its_own_tables(dense_metrics, tmp_path):
    """A table file is replaced only if it is exactly what an earlier write_tables put there (or empty, or
    with overwrite); every target is checked before anything is written."""
    from pruning.reporting.tables import TABLES_MANIFEST, write_tables

    out = tmp_path / "tables"
    first = write_tables(dense_metrics, out)
    assert first and all(p.parent == out for p in first)
    manifest = json.loads((out / TABLES_MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in first) and is_our_file(out / TABLES_MANIFEST)
    contents = {p.name: p.read_bytes() for p in first}
    assert write_tables(dense_metrics, out) == first  # our own tables: replaced without overwrite
    assert {p.name: p.read_bytes() for p in first} == contents

    md, csv = first[0], first[1]
    md.write_text("my own notes\n")  # edited by a user: no longer what we wrote
    csv.unlink()
    with pytest.raises(OutputError, match=f"table {md} exists and is not a table this tool wrote"):
        write_tables(dense_metrics, out)
    assert md.read_text() == "my own notes\n" and not csv.exists()  # refused before anything was written

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / md.name).write_text("someone else's table\n")  # a folder we never wrote tables in
    with pytest.raises(OutputError, match="is not a table this tool wrote"):
        write_tables(dense_metrics, fresh)
    assert sorted(p.name for p in fresh.iterdir()) == [md.name]
    (fresh / TABLES_MANIFEST).write_text('{"files": {}}\n')  # a manifest not of ours is refused too
    with pytest.raises(OutputError, match="was not written by this tool"):
        write_tables(dense_metrics, fresh)

    assert write_tables(dense_metrics, out, overwrite=True) == first
    assert {p.name: p.read_bytes() for p in first} == contents


def test_tables_cli_refuses_a_foreign_table_unless_overwrite(dense_results, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("someone else's summary\n")
    assert cli.main(["tables", "--results", str(dense_results), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a table this tool wrote" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["summary.md"]
    assert cli.main(["tables", "--results", str(dense_results), "--out", str(out), "--overwrite"]) == 0
    assert (out / "summary.md").read_text() != "someone else's summary\n"
