"""Fixtures of the hostile-input suite (its helpers: hostile_harness.py)."""
from __future__ import annotations

import json
import os

import pytest

from .hostile_harness import BAD_JSONL, NO_TEXT_JSONL, Evil, copy_model, make_readonly, undo_readonly


@pytest.fixture
def no_weights(monkeypatch):
    """Fail a command that loads model weights (a refusal must come before)."""
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)


@pytest.fixture(scope="module")
def world(stories_dir, tmp_path_factory):
    """Inputs of every kind, good and bad, in one folder the tests snapshot."""
    root = tmp_path_factory.mktemp("world")
    model = copy_model(stories_dir, root / "model")
    (root / "parent").mkdir()
    copy_model(stories_dir, root / "parent" / "model")
    for name in ("truncated", "random", "shape", "pickle", "config", "report"):
        copy_model(stories_dir, root / name)
    (root / "report" / "prune.json").write_text('{"method": "magnitude",\n')  # cut off mid-write
    weights = (stories_dir / "model.safetensors").read_bytes()
    (root / "truncated" / "model.safetensors").write_bytes(weights[:1000])
    (root / "random" / "model.safetensors").write_bytes(os.urandom(100_000))
    config = json.loads((stories_dir / "config.json").read_text())
    (root / "shape" / "config.json").write_text(json.dumps({**config, "intermediate_size": 200}))
    (root / "config" / "config.json").write_text('{"model_type": "llama",\n  "hidden_size": 64,,\n}\n')
    import torch
    from safetensors.torch import load_file

    state = load_file(root / "pickle" / "model.safetensors")
    (root / "pickle" / "model.safetensors").unlink()
    state["payload"] = Evil()
    torch.save(state, root / "pickle" / "pytorch_model.bin")

    userdir = root / "userdir"
    (userdir / "sub").mkdir(parents=True)
    (userdir / "notes.txt").write_text("precious\n")
    (root / "afile").write_text("a plain file\n")
    (root / "foreign.json").write_text('{"mine": true}\n')
    (root / "foreign.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    (root / "bad.jsonl").write_text(BAD_JSONL)
    (root / "notext.jsonl").write_text(NO_TEXT_JSONL)
    (root / "text.txt").write_text("Once upon a time there was a cat.\n\nThe cat sat.\n" * 50)
    (root / "results" / "metrics").mkdir(parents=True)
    (root / "ro").mkdir()
    (root / "ro" / "kept.txt").write_text("kept\n")
    readonly = make_readonly(root / "ro")
    yield {"root": root, "model": model, "readonly": readonly}
    undo_readonly(root / "ro")
