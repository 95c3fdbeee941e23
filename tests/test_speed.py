"""speed: sizes and parameter counts exact, medians of the recorded runs, the decode loop reproduces greedy
generation, settings recorded, llama.cpp measured on a real GGUF, bad inputs rejected without output.
Timings themselves are not asserted (benchmarks/zeroshot_speed.py prints them)."""
from __future__ import annotations

import json
import statistics

import pytest
import torch

from pruning.cli import main
from pruning.evaluation.speed import CPU_SPARSITY_NOTE, measure_hf, measure_semi_structured, prompt_ids
from pruning.core.modeling import load_model, parameter_counts

SETTINGS = ["--prompt-tokens", "16", "--new-tokens", "5", "--repeats", "3", "--warmup", "1", "--device", "cpu",
            "--threads", "1"]


def _check_runs(measured: dict, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    for phase, tokens in (("prefill", prompt_tokens), ("decode", new_tokens)):
        runs = measured[f"{phase}_seconds"]["runs"]
        assert len(runs) == repeats and all(r > 0 for r in runs)
        median = measured[f"{phase}_seconds"]["median"]
        assert median == pytest.approx(statistics.median(runs), abs=1e-3)
        assert measured[f"{phase}_tokens_per_s"] == pytest.approx(tokens / median)


def test_speed_command_records_sizes_medians_and_settings(stories_dir, tmp_path):
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", str(stories_dir), "--output", str(out), *SETTINGS]) == 0
    result = json.loads(out.read_text())
    model, _ = load_model(stories_dir)
    counts = parameter_counts(model)
    assert result["size"]["parameters"]["total"] == counts["total"] == 260_032
    assert result["size"]["parameters"]["nonzero"] == counts["nonzero"]
    weights = stories_dir / "model.safetensors"
    assert result["size"]["safetensors_bytes"] == {"total": weights.stat().st_size,
                                                  "files": {"model.safetensors": weights.stat().st_size}}
    assert result["settings"] == {"prompt_tokens": 16, "new_tokens": 5, "repeats": 3, "warmup": 1, "seed": 0,
                                  "batch_size": 1, "prompt": "seeded random token ids", "device": "cpu",
                                  "dtype": "float32", "threads": 1}
    _check_runs(result["hf"], 16, 5, 3)
    assert result["hf"]["threads"] == 1 and result["hf"]["dtype"] == "float32"
    assert result["sparse_speedup_note"] == CPU_SPARSITY_NOTE
    assert result["decoder_linears_2_4"] == {"sparse_2_4": 0, "total": 5 * 7}
    assert result["semi_structured_24"] is None
    assert result["gguf"] is None
    assert result["versions"]["torch"] == torch.__version__
    assert result["model"] == {"spec": str(stories_dir), "path": str(stories_dir.resolve()), "model_type": "llama"}
    assert result["wall_seconds"] > 0 and "git_commit" in result


def test_decode_loop_reproduces_greedy_generation(stories_dir):
    """The timed loop (prefill, then one token at a time through the KV cache) computes what generate() does."""
    model, _ = load_model(stories_dir)
    measured = measure_hf(model, 512, prompt_tokens=12, new_tokens=8, repeats=1, warmup=0, seed=3)
    ids = prompt_ids(512, 12, seed=3)
    generated = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)[0, 12:].tolist()
    assert measured["greedy_tokens"] == generated


@pytest.mark.slow
def test_llama_cpp_speed_on_an_exported_gguf(stories_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python (the 'llamacpp' extra) is not installed")
    from pruning.export import export_gguf

    gguf = tmp_path / "stories-f32.gguf"
    export_gguf(stories_dir, gguf, "f32")
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", str(stories_dir), "--gguf", str(gguf), "--output", str(out), *SETTINGS]) == 0
    result = json.loads(out.read_text())
    assert result["size"]["gguf"] == {"path": str(gguf), "bytes": gguf.stat().st_size}
    measured = result["gguf"]
    assert measured["backend"] == "llama.cpp" and measured["load_seconds"] > 0 and measured["threads"] == 1
    _check_runs(measured, 16, 5, 3)
    # same random prompt, same f32 weights: llama.cpp's greedy tokens start like the HF model's
    assert measured["greedy_tokens"][:4] == result["hf"]["greedy_tokens"][:4]


def test_semi_structured_kernels_refuse_the_cpu(stories_dir):
    model, _ = load_model(stories_dir)
    with pytest.raises(ValueError, match="CUDA"):
        measure_semi_structured(model, 512)


def test_speed_detects_a_2_4_model(stories_dir, tmp_path):
    import pruning

    pruned = tmp_path / "nm24"
    pruning.prune(str(stories_dir), "magnitude", pruned, nm="2:4", device="cpu", progress=False)
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", str(pruned), "--output", str(out), "--repeats", "1", "--warmup", "0",
                 "--prompt-tokens", "8", "--new-tokens", "2", "--device", "cpu"]) == 0
    result = json.loads(out.read_text())
    assert result["decoder_linears_2_4"] == {"sparse_2_4": 5 * 7, "total": 5 * 7}
    assert result["semi_structured_24"] is None  # CPU: not measured, and the note says why
    assert "no speed-up" in result["sparse_speedup_note"]
    assert result["size"]["parameters"]["nonzero"] < result["size"]["parameters"]["total"]


@pytest.mark.parametrize("extra, message", [
    (["--repeats", "0"], "repeats must be a whole number >= 1"),
    (["--new-tokens", "0"], "new_tokens must be a whole number >= 1"),
    (["--gguf", "/nonexistent/model.gguf"], "does not exist"),
    (["--device", "tpu"], "device must be"),
])
def test_bad_speed_arguments_fail_before_work(stories_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", str(stories_dir), "--output", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_speed_rejects_a_non_gguf_file_and_a_model_dir_without_weights(stories_dir, tmp_path, capsys):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file")
    out = tmp_path / "speed.json"
    assert main(["speed", "--model", str(stories_dir), "--gguf", str(fake), "--output", str(out)]) == 2
    assert "not a GGUF file" in capsys.readouterr().err
    empty = tmp_path / "empty_model"
    empty.mkdir()
    (empty / "config.json").write_text((stories_dir / "config.json").read_text())
    assert main(["speed", "--model", str(empty), "--output", str(out)]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    assert not out.exists()
