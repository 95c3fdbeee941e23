"""Corrupt and hostile models, refused by every command that reads one (prune, eval, convert, memory, speed,
zeroshot) before any weight loads, in one line naming the file, with nothing on disk changed: safetensors whose
header lies, config.json that transformers cannot build a model from, pickles that would run code, remote code
that would run on load, directories that are no model. And what held in the probe stays held: code shipped
with a model is never run, a pickle beside safetensors is never unpickled, plain-tensor pickles still load.

Each model kind lives in its own folder (the snapshot of a case reads only that folder); the table runs the
CLI in-process, so the whole cross product takes seconds."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .hostile_harness import assert_refused, copy_model, run_in_process, snapshot

MARKER = "CODE_RAN"  # what a payload would write (or delete: the victim folder) if it ever ran
VICTIM = "victim"


# ------------------------------------------------------------------------------------------------ the models

def _weights(source: Path) -> tuple[dict, bytes]:
    raw = (source / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _write_safetensors(model: Path, header: dict | None, data: bytes, raw_header: bytes | None = None) -> None:
    encoded = json.dumps(header).encode() if raw_header is None else raw_header
    (model / "model.safetensors").write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)


def _edit_entry(model: Path, source: Path, edit) -> None:
    """Rewrite the header entry of the first tensor (model.embed_tokens.weight) with `edit(entry, header, data)`."""
    header, data = _weights(source)
    name = next(key for key in header if key != "__metadata__")
    entry = dict(header[name])
    edit(entry, header, data)
    _write_safetensors(model, {**header, name: entry}, data)


def _overlap(model: Path, source: Path) -> None:
    """Two tensors of one shape pointing at the same bytes (the second norm weight reads the first's)."""
    header, data = _weights(source)
    first, second = "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"
    _write_safetensors(model, {**header, second: {**header[second], "data_offsets": header[first]["data_offsets"]}},
                       data)


def _state_edit(model: Path, source: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(source / "model.safetensors")
    edit(state)
    save_file(state, model / "model.safetensors", metadata={"format": "pt"})


def _missing_shard(model: Path, source: Path) -> None:
    header, _ = _weights(source)
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors" for name in header if name != "__metadata__"}
    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _config(model: Path, change) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(change(config)))


def _remote_code(model: Path, model_type: str) -> None:
    """config.json asks for the model's own code (auto_map); importing that code would write the marker."""
    code = (f"import pathlib\npathlib.Path({str(model.parent / MARKER)!r}).write_text('ran')\n"
            "from transformers import LlamaConfig, LlamaForCausalLM\n"
            "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
            "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    (model / "evil.py").write_text(code)
    _config(model, lambda c: {**c, "model_type": model_type,
                              "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"}})


class _Payload:
    """A pickled object that would run `call(*args)` when loaded."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def _pickle(model: Path, source: Path, payload_of, *, name="pytorch_model.bin", legacy=False, whole=False) -> None:
    """The weights as a torch pickle with a payload beside the tensors (or instead of them, `whole`)."""
    import torch
    from safetensors.torch import load_file

    state = load_file(source / "model.safetensors")
    (model / "model.safetensors").unlink()
    payload = payload_of(model.parent)
    torch.save(payload if whole else {**state, "payload": payload}, model / name,
               _use_new_zipfile_serialization=not legacy)


def _raw_pickle(model: Path, source: Path, payload_of) -> None:
    import pickle

    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": payload_of(model.parent)}))


def _system(folder: Path):
    return _Payload(os.system, f"touch {folder / MARKER}")


def _exec(folder: Path):
    import builtins

    return _Payload(builtins.exec, f"open({str(folder / MARKER)!r}, 'w').close()")


def _eval(folder: Path):
    import builtins

    return _Payload(builtins.eval, f"open({str(folder / MARKER)!r}, 'w')")


def _rmtree(folder: Path):
    return _Payload(shutil.rmtree, str(folder / VICTIM))


def _unlink(model: Path, *names: str) -> None:
    for name in names:
        (model / name).unlink()


HEADER_LENGTH = 5280  # stories260K's safetensors header: the first tensor's entry is model.embed_tokens.weight

# kind: (how the copy of stories260K is spoilt: f(model, source), what the one line says)
MODELS = {
    # safetensors headers that lie about the file
    "st-header-length-beyond-the-file": (
        lambda m, s: (m / "model.safetensors").write_bytes((2**40).to_bytes(8, "little")
                                                           + (s / "model.safetensors").read_bytes()[8:]),
        "model.safetensors: not a valid safetensors file (header length 1099511627776 does not fit its"),
    "st-header-not-json": (lambda m, s: _write_safetensors(m, None, _weights(s)[1], b"\x00garbage{" * 10),
                           "model.safetensors: not a valid safetensors file (its header is not JSON)"),
    "st-header-a-json-list": (lambda m, s: _write_safetensors(m, None, _weights(s)[1], b"[1, 2, 3]"),
                              "model.safetensors: not a valid safetensors file (its header is not JSON)"),
    "st-empty-file": (lambda m, s: (m / "model.safetensors").write_bytes(b""),
                      "model.safetensors: 0 bytes, too short for a safetensors header (truncated?)"),
    "st-offsets-beyond-the-data": (
        lambda m, s: _edit_entry(m, s, lambda e, h, d: e.update(data_offsets=[len(d) - 4, len(d) + 1000])),
        "model.safetensors: truncated: tensor model.embed_tokens.weight ends at byte 1041128 of 1040128 data bytes"),
    "st-overlapping-offsets": (_overlap, "model.safetensors: corrupt: tensor model.layers.0.post_attention_layernorm."
                                         "weight starts at byte 131072 of the data, not at 131328"),
    "st-unknown-dtype": (lambda m, s: _edit_entry(m, s, lambda e, h, d: e.update(dtype="Q7")),
                         "tensor model.embed_tokens.weight has unknown dtype 'Q7'"),
    "st-entry-without-shape": (lambda m, s: _edit_entry(m, s, lambda e, h, d: e.pop("shape")),
                               "not a valid safetensors file (bad entry for model.embed_tokens.weight)"),
    "st-negative-shape": (lambda m, s: _edit_entry(m, s, lambda e, h, d: e.update(shape=[-1, 64])),
                          "corrupt: tensor model.embed_tokens.weight has 131072 bytes for shape [-1, 64]"),
    "st-shape-not-its-bytes": (lambda m, s: _edit_entry(m, s, lambda e, h, d: e.update(shape=[1024, 64])),
                               "corrupt: tensor model.embed_tokens.weight has 131072 bytes for shape [1024, 64]"),
    # sound files, but not the tensors config.json implies
    "st-tensor-missing": (lambda m, s: _state_edit(m, s, lambda st: st.pop("model.layers.2.self_attn.q_proj.weight")),
                          "missing tensor model.layers.2.self_attn.q_proj.weight: "),
    "st-tensor-unexpected": (
        lambda m, s: _state_edit(m, s, lambda st: st.update({"model.layers.9.mlp.extra.weight": st["model.norm.weight"]
                                                             .clone()})),
        "unexpected tensor model.layers.9.mlp.extra.weight: "),
    "st-index-names-a-missing-shard": (_missing_shard, "model.safetensors.index.json names model-00002-of-00002."
                                                       "safetensors, which is not in"),
    # config.json that is no model's
    "config-a-json-list": (lambda m, s: (m / "config.json").write_text("[]"), "config.json: not a JSON object"),
    "config-null": (lambda m, s: (m / "config.json").write_text("null"), "config.json: not a JSON object"),
    "config-empty": (lambda m, s: (m / "config.json").write_text(""),
                     "config.json: not valid JSON (Expecting value at line 1 column 1)"),
    "config-not-utf8": (lambda m, s: (m / "config.json").write_bytes(b"\xff\xfe{garbage"),
                        "config.json: 'utf-8' codec can't decode byte 0xff"),
    "config-a-directory": (lambda m, s: ((m / "config.json").unlink(), (m / "config.json").mkdir()),
                           "is not a Hugging Face model directory (needs config.json and weights)"),
    "config-without-model-type": (lambda m, s: _config(m, lambda c: {k: v for k, v in c.items() if k != "model_type"}),
                                  "config.json: no model_type; supported model types: gemma, gemma2"),
    "config-unknown-model-type": (lambda m, s: _config(m, lambda c: {**c, "model_type": "llamazilla"}),
                                  "config.json: model_type 'llamazilla' is not an architecture transformers"),
    "config-remote-code": (lambda m, s: _remote_code(m, "evil"),
                           "config.json maps to code in the model folder (auto_map: "),
    "config-zero-layers": (lambda m, s: _config(m, lambda c: {**c, "num_hidden_layers": 0}),
                           "unexpected tensor model.layers.0.input_layernorm.weight (and 44 more)"),
    "config-layers-a-string": (lambda m, s: _config(m, lambda c: {**c, "num_hidden_layers": "five"}),
                               "Field 'num_hidden_layers' expected int, got str"),
    "config-heads-do-not-divide": (lambda m, s: _config(m, lambda c: {**c, "num_attention_heads": 7}),
                                   "The hidden size (64) is not a multiple of the number of attention heads (7)"),
    "config-negative-size": (lambda m, s: _config(m, lambda c: {**c, "hidden_size": -64}),
                             "config.json: transformers cannot build the model it describes (Trying to create tensor "
                             "with negative dimension -64"),
    # pickles that would run code, and other files torch cannot read safely
    "pickle-os-system": (lambda m, s: _pickle(m, s, _system), "pytorch_model.bin: refused to unpickle (Trying to load "
                                                               "unsupported GLOBAL posix.system"),
    "pickle-builtins-exec": (lambda m, s: _pickle(m, s, _exec),
                             "pytorch_model.bin: refused to unpickle (WeightsUnpickler error: Unsupported global: "
                             "GLOBAL exec"),
    "pickle-builtins-eval": (lambda m, s: _pickle(m, s, _eval), "refused to unpickle (WeightsUnpickler error: "
                                                                "Unsupported global: GLOBAL eval"),
    "pickle-shutil-rmtree": (lambda m, s: _pickle(m, s, _rmtree), "refused to unpickle (WeightsUnpickler error: "
                                                                  "Unsupported global: GLOBAL shutil.rmtree"),
    "pickle-payload-is-the-whole-file": (lambda m, s: _pickle(m, s, _system, whole=True),
                                         "pytorch_model.bin: refused to unpickle"),
    "pickle-in-a-shard": (lambda m, s: _pickle(m, s, _system, name="pytorch_model-00001-of-00001.bin"),
                          "pytorch_model-00001-of-00001.bin: refused to unpickle"),
    "pickle-legacy-format": (lambda m, s: _pickle(m, s, _system, legacy=True),
                             "pytorch_model.bin: not a readable PyTorch checkpoint"),
    "pickle-raw-not-torch": (lambda m, s: _raw_pickle(m, s, _system),
                             "pytorch_model.bin: not a readable PyTorch checkpoint"),
    "pickle-random-bytes": (lambda m, s: ((m / "model.safetensors").unlink(),
                                          (m / "pytorch_model.bin").write_bytes(os.urandom(5000))),
                            "pytorch_model.bin: not a readable PyTorch checkpoint"),
    # directories that hold no model
    "dir-empty": (lambda m, s: [p.unlink() for p in m.iterdir()],
                  "is not a Hugging Face model directory (needs config.json and weights)"),
    "dir-config-only": (lambda m, s: [p.unlink() for p in m.iterdir() if p.name != "config.json"],
                        "is not a Hugging Face model directory (needs config.json and weights)"),
    "dir-weights-as-pt-only": (lambda m, s: _pickle(m, s, _system, name="model.pt"),
                               "is not a Hugging Face model directory (needs config.json and weights)"),
    "dir-is-a-file": (None, "is not a Hugging Face model directory (needs config.json and weights)"),
}

M = "{model}"
COMMANDS = {
    "prune": ["prune", "--model", M, "--method", "magnitude", "--sparsity", "0.5", "--output-dir", "{folder}/out",
              "--device", "cpu", "--quiet"],
    "eval": ["eval", "--model", M, "--ppl", "--seqlen", "64", "--max-windows", "1", "--dataset", "{text}",
             "--output", "{folder}/ppl.json", "--device", "cpu"],
    "convert": ["convert", "--model", M, "--outtype", "f16", "--output", "{folder}/m.gguf"],
    "memory": ["memory", "--model", M],
    "speed": ["speed", "--model", M, "--output", "{folder}/speed.json", "--repeats", "1", "--warmup", "0",
              "--device", "cpu"],
    "zeroshot": ["zeroshot", "--model", M, "--task", "arc_easy", "--limit", "2", "--output", "{folder}/z.json",
                 "--device", "cpu"],
}


@pytest.fixture(scope="module")
def models(stories_dir, tmp_path_factory) -> dict:
    """{kind: its folder}: each holds `model` (the spoilt copy) and a `victim` folder a payload would delete."""
    root = tmp_path_factory.mktemp("hostile-models")
    (root / "text.txt").write_text("Once upon a time there was a cat.\n\nThe cat sat.\n" * 50)
    folders = {}
    for kind, (spoil, _) in MODELS.items():
        folder = root / kind
        folder.mkdir()
        (folder / VICTIM).mkdir()
        (folder / VICTIM / "thesis.txt").write_text("years of work\n")
        if spoil is None:
            (folder / "model").write_text("not a model\n")
        else:
            spoil(copy_model(stories_dir, folder / "model"), stories_dir)
        folders[kind] = folder
    return {"root": root, "folders": folders}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_bad_model_is_refused_before_loading(kind, command, models, capfd, monkeypatch, no_weights):
    folder = models["folders"][kind]
    argv = [arg.format(model=folder / "model", folder=folder, text=models["root"] / "text.txt")
            for arg in COMMANDS[command]]
    monkeypatch.chdir(folder)
    before = snapshot(folder)
    assert_refused(run_in_process(capfd, argv), MODELS[kind][1], before=before, root=folder)
    assert not (folder / MARKER).exists() and (folder / VICTIM / "thesis.txt").is_file()


def test_the_model_table_covers_every_kind_of_file():
    prefixes = {kind.split("-")[0] for kind in MODELS}
    assert prefixes == {"st", "config", "pickle", "dir"} and len(MODELS) >= 35


# ------------------------------------------------------------------------------------------------ what loads

@pytest.fixture
def work(stories_dir, tmp_path) -> Path:
    (tmp_path / VICTIM).mkdir()
    return tmp_path


def _prune(capfd, model, out):
    outcome = run_in_process(capfd, ["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5",
                                     "--output-dir", str(out), "--device", "cpu", "--quiet"])
    assert outcome.code == 0, outcome.stderr
    return json.loads((Path(out) / "prune.json").read_text())


def _refused_unrun(capfd, model, out, where):
    """A model naming code of its own is refused without the opt-in (--trust-remote-code), and its code never runs."""
    outcome = run_in_process(capfd, ["prune", "--model", str(model), "--method", "magnitude", "--sparsity", "0.5",
                                     "--output-dir", str(out), "--device", "cpu", "--quiet"])
    assert_refused(outcome, f"{where} maps to code in the model folder")
    assert not Path(out).exists()


def test_code_shipped_with_a_known_architecture_is_never_run(stories_dir, work, capfd, no_weights):
    """auto_map naming the model's own code, model_type llama: refused without the opt-in, evil.py never imported."""
    model = copy_model(stories_dir, work / "model")
    _remote_code(model, "llama")
    _refused_unrun(capfd, model, work / "out", "config.json")
    assert not (work / MARKER).exists()


def test_tokenizer_code_shipped_with_a_model_is_never_run(stories_dir, work, capfd, no_weights):
    model = copy_model(stories_dir, work / "model")
    _remote_code(model, "llama")
    _config(model, lambda c: {k: v for k, v in c.items() if k != "auto_map"})
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    _refused_unrun(capfd, model, work / "out", "tokenizer_config.json")
    assert not (work / MARKER).exists()


def test_a_pickle_beside_safetensors_is_never_unpickled(stories_dir, work, capfd):
    """The loader reads model.safetensors; the pickle beside it, whose payload would delete a folder, stays shut."""
    import torch

    model = copy_model(stories_dir, work / "model")
    torch.save({"payload": _rmtree(work)}, model / "pytorch_model.bin")
    (work / VICTIM / "thesis.txt").write_text("years of work\n")
    _prune(capfd, model, work / "out")
    assert (work / VICTIM / "thesis.txt").read_text() == "years of work\n"
    assert not (work / "out" / "pytorch_model.bin").exists()


def test_plain_tensor_pickles_still_load(stories_dir, work, capfd):
    """weights_only pickles hold only tensors: accepted, and pruned to the same figures as the safetensors copy."""
    import torch
    from safetensors.torch import load_file

    model = copy_model(stories_dir, work / "model")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    from_pickle = _prune(capfd, model, work / "from-pickle")
    from_safetensors = _prune(capfd, stories_dir, work / "from-safetensors")
    assert from_pickle["result"] == from_safetensors["result"]


def test_a_model_reached_through_symlinks_is_read_and_never_replaced(stories_dir, work, capfd):
    """A linked model directory and a directory of linked files are models like any other; an output named by
    the link is the input itself, refused even with --overwrite."""
    linked_files = work / "linked-files"
    linked_files.mkdir()
    for file in stories_dir.iterdir():
        (linked_files / file.name).symlink_to(file)
    (work / "link").symlink_to(stories_dir)
    _prune(capfd, linked_files, work / "a")
    _prune(capfd, work / "link", work / "b")
    before = snapshot(stories_dir)
    outcome = run_in_process(capfd, ["prune", "--model", str(stories_dir), "--method", "magnitude", "--sparsity",
                                     "0.5", "--output-dir", str(work / "link"), "--overwrite", "--device", "cpu"])
    assert_refused(outcome, f"output directory {work / 'link'} is the input {stories_dir}", before=before,
                   root=stories_dir)
    assert (work / "link").is_symlink()
