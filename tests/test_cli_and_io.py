"""The CLI end to end on stories260K: save → reload identity, prune.json contents, bad inputs."""
import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import pruning
from pruning.methods.sparsify import is_valid_nm
from pruning.core.ratios import NMPattern


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pruning", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def pruned_dir(stories_dir, stories_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "sparsegpt-nm"
    result = run_cli("prune", "--model", stories_dir, "--method", "sparsegpt", "--nm", "2:4", "--output-dir", out,
                     "--calib", stories_text["calibration"], "--nsamples", 8, "--seqlen", 64, "--seed", 3,
                     "--evaluate", "--dataset", stories_text["evaluation"], "--eval-seqlen", 64, "--max-windows", 8,
                     "--quiet", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
def test_saved_model_reloads_with_identical_logits(pruned_dir):
    report = json.loads((pruned_dir / "prune.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(pruned_dir).eval()
    ours, _ = pruning.load_model(pruned_dir)
    ids = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ours(ids).logits)
    for layer in plain.model.layers:
        for module in (layer.self_attn.q_proj, layer.mlp.down_proj):
            assert is_valid_nm(module.weight, NMPattern(2, 4))
    assert report["parameters"]["after"]["nonzero"] == pruning.core.modeling.parameter_counts(plain)["nonzero"]


@pytest.mark.slow
def test_prune_json_records_the_protocol(pruned_dir, stories_dir):
    report = json.loads((pruned_dir / "prune.json").read_text())
    assert report["method"] == "sparsegpt"
    assert report["options"]["target"] == {"kind": "nm", "n": 2, "m": 4, "convention": "N kept out of every M"}
    assert report["calibration"]["nsamples"] == 8 and report["calibration"]["seqlen"] == 64
    assert report["calibration"]["seed"] == 3
    assert report["result"]["total_sparsity"] == pytest.approx(0.5)
    assert set(report["result"]["per_layer"]) == {"0", "1", "2", "3", "4"}
    assert report["parameters"]["before"]["total"] == 260032
    for when in ("before", "after"):
        ppl = report["evaluation"][when]
        assert ppl["seqlen"] == 64 and ppl["windows"] == 8 and ppl["scored_tokens"] == 8 * 63
    assert report["evaluation"]["before"]["ppl"] < report["evaluation"]["after"]["ppl"]
    for key in ("prune_seconds", "wall_seconds", "peak_rss_mb", "torch_threads", "versions", "git_commit", "dtype",
                "device"):
        assert key in report
    assert report["model"]["spec"] == str(stories_dir) and "pruning" not in report["model"]
    assert report["wall_seconds"] >= report["prune_seconds"] > 0
    assert report["versions"]["torch"] == torch.__version__


@pytest.mark.slow
def test_eval_command_writes_protocol(pruned_dir, stories_text, tmp_path):
    out = tmp_path / "ppl.json"
    result = run_cli("eval", "--model", pruned_dir, "--ppl", "--dataset", stories_text["evaluation"],
                     "--seqlen", 64, "--max-windows", 8, "--output", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(out.read_text())
    report = json.loads((pruned_dir / "prune.json").read_text())
    assert metrics["ppl"] == pytest.approx(report["evaluation"]["after"]["ppl"], rel=1e-6)
    assert metrics["model"]["spec"] == str(pruned_dir) and metrics["model"]["model_type"] == "llama"
    assert metrics["model"]["pruning"] == {key: report[key] for key in ("method", "options", "calibration", "seed", "recovery", "run_id")}
    assert metrics["model"]["pruning"]["method"] == "sparsegpt"
    for key in ("wall_seconds", "versions", "git_commit", "parameters"):
        assert key in metrics
    assert metrics["windows"] == 8 and metrics["seqlen"] == 64 and metrics["dtype"] == "float32"


@pytest.mark.parametrize("args,message", [
    (["--method", "obs", "--sparsity", "0.5"], "unknown method 'obs'"),
    (["--method", "wanda", "--sparsity", "1.2"], "[0, 1)"),
    (["--method", "wanda", "--nm", "5:4"], "1 <= N < M"),
    (["--method", "wanda"], "exactly one of a sparsity"),  # magnitude has PersLM's default 0.3
    (["--method", "wanda", "--sparsity", "0.5", "--calib", "/nonexistent/calib.txt"], "unknown calibration source"),
    (["--method", "wanda", "--sparsity", "0.5", "--calib", "wikitext2"], "must not use the evaluation split"),
    (["--method", "wanda", "--sparsity", "0.5", "--device", "tpu"], "device must be"),
    (["--method", "wanda", "--sparsity", "0.5", "--option", "nonsense"], "KEY=VALUE"),
])
@pytest.mark.slow
def test_bad_inputs_fail_cleanly(stories_dir, tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli("prune", "--model", stories_dir, "--output-dir", out, *args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_missing_model_and_unreadable_data_fail_cleanly(tmp_path):
    out = tmp_path / "out"
    result = run_cli("prune", "--model", tmp_path / "no-such-model", "--method", "magnitude", "--sparsity", "0.5",
                     "--output-dir", out)
    assert result.returncode == 2 and "not found" in result.stderr and not out.exists()
    empty = tmp_path / "empty-model"
    empty.mkdir()
    result = run_cli("eval", "--model", empty, "--ppl", "--seqlen", 64)
    assert result.returncode == 2 and "not a Hugging Face model directory" in result.stderr


@pytest.mark.slow
def test_unreadable_calibration_file_leaves_nothing(stories_dir, tmp_path):
    binary = tmp_path / "calib.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    out = tmp_path / "out"
    result = run_cli("prune", "--model", stories_dir, "--method", "wanda", "--sparsity", "0.5", "--output-dir", out,
                     "--calib", binary, "--nsamples", 2, "--seqlen", 16)
    assert result.returncode == 2 and "cannot read data file" in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt"]


@pytest.mark.slow
def test_failed_run_keeps_previous_good_result(stories_dir, stories_text, tmp_path):
    out = tmp_path / "out"
    good = run_cli("prune", "--model", stories_dir, "--method", "magnitude", "--sparsity", "0.3", "--output-dir", out,
                   "--quiet")
    assert good.returncode == 0, good.stderr
    before = (out / "prune.json").read_text()
    bad = run_cli("prune", "--model", stories_dir, "--method", "wanda", "--sparsity", "0.5", "--output-dir", out,
                  "--calib", stories_text["calibration"], "--nsamples", 2, "--seqlen", 100000, "--quiet")
    assert bad.returncode != 0
    assert (out / "prune.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_help_texts_name_the_methods_and_convention():
    result = run_cli("prune", "--help")
    assert result.returncode == 0
    for word in ("magnitude", "sparsegpt", "wanda", "N kept out of every M"):
        assert word in result.stdout


@pytest.mark.slow
def test_peak_rss_is_the_process_own_not_its_parents():
    """A job started by a large parent must not report the parent's peak (getrusage keeps it across exec)."""
    ballast = torch.ones(1024, 1024, 384)  # 1.5 GiB held by this (the parent) process
    child = subprocess.run([sys.executable, "-c", "from pruning.core.io import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    assert float(child.stdout) < 1024, child.stdout
    assert pruning.core.io.peak_rss_mb() > 1536
    del ballast


def test_atomic_directory_replaces_only_what_it_made(tmp_path):
    """The last guard, for library callers that skip pruning.core.outputs: a user's folder is never replaced."""
    from pruning.core.io import OutputError, atomic_directory

    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("precious")
    with pytest.raises(OutputError, match="not a previous result of this tool"):
        with atomic_directory(user) as tmp:
            (tmp / "prune.json").write_text("{}")
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user"]
    with atomic_directory(user, overwrite=True) as tmp:
        (tmp / "prune.json").write_text(json.dumps({"method": "magnitude", "versions": {}}))
    with atomic_directory(user) as tmp:  # now ours: replaced without overwrite
        (tmp / "prune.json").write_text(json.dumps({"method": "wanda", "versions": {}}))
    assert json.loads((user / "prune.json").read_text())["method"] == "wanda"
    (tmp_path / "empty").mkdir()
    with atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "user"]


def test_atomic_writes_honour_the_umask(tmp_path):
    import os
    import stat

    from pruning.core.io import atomic_directory, atomic_write_text

    previous = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "weights").write_bytes(b"x")
            os.chmod(tmp / "weights", 0o600)  # as safetensors and mkstemp leave them
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "d" / "weights").stat().st_mode) == 0o640


@pytest.mark.slow
def test_a_gguf_file_we_wrote_is_ours_and_replaced_without_overwrite(stories_dir, tmp_path):
    """The owner key the export writes is the one the output check reads (one constant, in the GGUF format module)."""
    from pruning.core.io import is_our_file

    out = tmp_path / "m.gguf"
    for _ in range(2):  # the second convert replaces the first one's file: it is ours
        result = run_cli("convert", "--model", stories_dir, "--outtype", "f32", "--output", out)
        assert result.returncode == 0, result.stderr
        assert is_our_file(out)
    (tmp_path / "other.gguf").write_bytes(out.read_bytes().replace(b"pruning.version", b"someone.elses"))
    assert not is_our_file(tmp_path / "other.gguf")


def test_token_lengths_and_counts_are_checked_by_one_rule():
    """The CLI, the library and the workflow's config check share checks.length_problems and checks.positive."""
    from pruning.core.arguments import MIN_SEQLEN, positive
    from pruning.core.model_checks import length_problems

    assert MIN_SEQLEN == 2
    config = {"max_position_embeddings": 512}
    assert length_problems("m", config, {"--seqlen": 512, "--eval-seqlen": None}) == []
    assert length_problems("m", config, {"--seqlen": 1, "--eval-seqlen": 513, "x": 2.5}) == [
        "--seqlen must be a whole number >= 2, got 1",
        "--eval-seqlen 513 exceeds the 512 positions of the model m (max_position_embeddings in config.json)",
        "x must be a whole number >= 2, got 2.5"]
    assert length_problems("m", {}, {"--seqlen": 0}) == ["--seqlen must be a whole number >= 2, got 0"]  # no positions
    positive({"warmup": 0}, minimum=0)
    with pytest.raises(pruning.methods.MethodError, match="^batch_size must be a whole number >= 1, got True$"):
        positive({"batch_size": True}, error=pruning.methods.MethodError)
