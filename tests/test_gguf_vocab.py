"""Large vocabularies: the GGUF vocabulary step reads each tokenizer property once (linear in the vocabulary),
the fast paths (tokenizer.json head, metadata array packing, GGUF header reading) give what the slow ones
give. Tokenizers are synthetic (benchmarks/gguf_vocab.py builds them), small enough to take seconds."""
import importlib.util
import json
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGUFEndian, GGUFValueType

from pruning.core import zoo
from pruning.export import ExportError, export_gguf
from pruning.export.gguf import _Writer
from pruning.export.gguf_vocab import _hf_token_type, _read_tokenizer_json_head, _tokenizer_json_head, \
    _tokens_from_hf, add_vocabulary, describe_vocabulary
from pruning.evaluation.llamacpp import gguf_summary

_spec = importlib.util.spec_from_file_location(
    "gguf_vocab_benchmark", Path(__file__).resolve().parent.parent / "benchmarks" / "gguf_vocab.py")
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

# Tokenizer properties transformers rebuilds from the whole vocabulary (or all added tokens) on every access.
EXPENSIVE = ("added_tokens_decoder", "added_tokens_encoder", "get_vocab", "get_added_vocab", "vocab",
             "all_special_ids", "all_special_tokens", "convert_ids_to_tokens")


def _model(folder: Path, vocab_size: int, added: int) -> Path:
    benchmark.tiny_llama(folder, benchmark.synthetic_tokenizer(vocab_size, added))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return {size: _model(root / str(size), size, size // 8) for size in (2048, 8192)}


def _count_calls(monkeypatch, tokenizer_class) -> dict:
    """Count every access to the EXPENSIVE members of `tokenizer_class` (patched where each is defined)."""
    counts = dict.fromkeys(EXPENSIVE, 0)
    for name in EXPENSIVE:
        owner = next(cls for cls in tokenizer_class.__mro__ if name in vars(cls))
        member = vars(owner)[name]

        def counted(function, name=name):
            def wrapper(*args, **kwargs):
                counts[name] += 1
                return function(*args, **kwargs)
            return wrapper

        patched = property(counted(member.fget)) if isinstance(member, property) else counted(member)
        monkeypatch.setattr(owner, name, patched)
    return counts


@pytest.mark.parametrize("byte_fallback", [False, True])
def test_vocabulary_reads_each_tokenizer_property_once(models, monkeypatch, byte_fallback):
    """After the tokenizer is loaded, the vocabulary step reads each property that costs O(vocabulary) or
    O(added tokens) at most once, at every vocabulary size: a per-token read (the O(vocabulary x added)
    export of issue #27) would show as thousands."""
    from transformers import AutoTokenizer

    counts = _count_calls(monkeypatch, type(AutoTokenizer.from_pretrained(models[2048])))
    load = AutoTokenizer.from_pretrained

    def loaded_then_counted(*args, **kwargs):  # what transformers reads while loading is not ours
        tokenizer = load(*args, **kwargs)
        counts.update(dict.fromkeys(counts, 0))
        return tokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", loaded_then_counted)
    for size, folder in models.items():
        tokens, scores, types = _tokens_from_hf(folder, size, byte_fallback=byte_fallback)
        assert len(tokens) == len(types) == size and (scores is not None) == byte_fallback
        assert counts["added_tokens_decoder"] == counts["get_vocab"] == 1, counts
        assert max(counts.values()) == 1, counts


def test_vocabulary_time_grows_linearly(models):
    """4x the vocabulary (and 4x the added tokens) costs well under 16x, what O(vocabulary x added) costs:
    best of five, bound 6x for slack on a busy machine."""
    def best(folder, size):
        times = []
        for _ in range(5):
            started = time.perf_counter()
            add_vocabulary(gguf.GGUFWriter(None, "llama"), folder, describe_vocabulary(folder), size)
            times.append(time.perf_counter() - started)
        return min(times)

    small, large = best(models[2048], 2048), best(models[8192], 8192)
    assert large <= 6 * small, (small, large)


def test_token_types(models):
    """Added tokens are CONTROL when special, USER_DEFINED otherwise; <0xNN> is a byte only with byte fallback
    (llama.cpp's byte-level BPE has no byte tokens)."""
    from transformers import AutoTokenizer

    folder = models[2048]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _, _, types = _tokens_from_hf(folder, 2048, byte_fallback=False)
    for index, token in tokenizer.added_tokens_decoder.items():
        assert types[index] == (gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED)
    assert types[:len(tokenizer) - len(tokenizer.added_tokens_decoder)] == [gguf.TokenType.NORMAL] * (
        len(tokenizer) - len(tokenizer.added_tokens_decoder))
    assert _hf_token_type({}, 5, "<0x41>", None, byte_fallback=False) == gguf.TokenType.NORMAL
    assert _hf_token_type({}, 5, "<0x41>", None, byte_fallback=True) == gguf.TokenType.BYTE


def test_tokenizer_json_head_is_the_full_parse(models, tmp_path):
    text = (models[8192] / "tokenizer.json").read_text()
    full = json.loads(text)
    head = _tokenizer_json_head(text)
    assert head["pre_tokenizer"] == full["pre_tokenizer"]
    assert head["model"] == {key: full["model"][key] for key in head["model"]}
    assert {"type", "byte_fallback"} <= set(head["model"]) and "vocab" not in head["model"]
    # another layout (model first) is read whole, with the same result
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    (reordered / "tokenizer.json").write_text(json.dumps({"model": full["model"], **full}))
    assert _tokenizer_json_head((reordered / "tokenizer.json").read_text()) is None
    assert describe_vocabulary(reordered) == describe_vocabulary(models[8192]) == {
        "model": "gpt2", "kind": "byte-level-bpe", "pre": "llama-bpe"}
    # a head beyond the first piece read, with a two-byte character across the piece boundary
    padded = {"comment": "é" * (3 << 19), **full}
    (reordered / "tokenizer.json").write_text(json.dumps(padded, ensure_ascii=False))
    assert _read_tokenizer_json_head(reordered / "tokenizer.json") == head
    assert describe_vocabulary(reordered)["pre"] == "llama-bpe"
    for broken in ('{"pre_tokenizer": null, "model": {"type": "BPE",}', '{"a": 1,}', text[:1000]):
        (reordered / "tokenizer.json").write_text(broken)
        with pytest.raises(ExportError, match="not valid JSON"):
            describe_vocabulary(reordered)


@pytest.mark.parametrize("endianess", [GGUFEndian.LITTLE, GGUFEndian.BIG])
def test_array_packing_is_gguf_writers(endianess):
    ours, theirs = _Writer(None, "llama", endianess=endianess), gguf.GGUFWriter(None, "llama", endianess=endianess)
    arrays = [["a", "héllo wörld", b"\x00\xff", bytearray(b"xy"), ""], [gguf.TokenType.NORMAL, gguf.TokenType.BYTE, 7, -3],
              [0.5, -1e9, 3.0e38, -0.0, 1e-40], (1, 2, 3), ["x"] * 1000, [True, False], [1, 2.0], [2**31], [1e39],
              [float("inf")], [[1, 2], [3]], b"abc"]
    for values in arrays:
        for add_vtype in (True, False):
            results = []
            for writer in (ours, theirs):
                try:
                    results.append(writer._pack_val(values, GGUFValueType.ARRAY, add_vtype))
                except Exception as exc:  # noqa: BLE001 - the same refusal from both
                    results.append(type(exc))
            assert results[0] == results[1], values


def test_gguf_header_reader_is_gguf_readers(models, tmp_path):
    """zoo.read_gguf_header gives GGUFReader's metadata (string arrays stepped over) and tensor types, for an
    exported file and for a big-endian file with nested arrays; gguf_summary and gguf_quantization use it."""
    exported = tmp_path / "model.gguf"
    export_gguf(models[2048], exported, "q8_0")
    odd = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(odd, "llama", endianess=GGUFEndian.BIG)
    writer.add_block_count(3)
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_array("test.strings", ["a", "bc"])
    writer.add_array("test.floats", [0.5, 1.5])
    writer.add_string("test.text", "ünïcode")
    writer.add_bool("test.flag", True)
    writer.add_tensor("t", np.ones((2, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    for path in (exported, odd):
        reader = gguf.GGUFReader(path)
        expected = {name: None if field.types[:1] == [GGUFValueType.ARRAY] and field.types[-1] == GGUFValueType.STRING
                    else field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
        fields, tensors = zoo.read_gguf_header(path, tensors=True)
        if path == odd:  # GGUFReader flattens arrays of arrays
            assert expected.pop("test.nested") == [1, 2, 3] and fields.pop("test.nested") == [[1, 2], [3]]
        assert fields == expected
        assert tensors == [(tensor.name, int(tensor.tensor_type)) for tensor in reader.tensors]
    summary = gguf_summary(exported)
    assert summary["arch"] == "llama" and summary["file_type"] == "MOSTLY_Q8_0" and summary["block_count"] == 2
    assert zoo.gguf_quantization(exported) == {"file_type": "MOSTLY_Q8_0", "tensor_types": summary["tensor_types"]}
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(ValueError):
        zoo.read_gguf_header(truncated)
    with pytest.raises(zoo.ModelSpecError, match="unreadable GGUF header"):
        zoo.gguf_architecture(truncated)


def test_gguf_model_spec_reads_the_vocabulary_three_times_at_most(models, tmp_path, monkeypatch):
    """A .gguf spec: the zoo's own header reads step over the token list and merges, and transformers parses the
    metadata once each for the config, the weights and the tokenizer (GGUFReader objects, one per parse)."""
    exported = tmp_path / "model.gguf"
    export_gguf(models[2048], exported, "f16")
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    readers = []
    original = gguf.GGUFReader.__init__

    def counted(self, *args, **kwargs):
        readers.append(args[0] if args else kwargs.get("path"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(gguf.GGUFReader, "__init__", counted)
    zoo.check_spec(str(exported))
    path = zoo.resolve(str(exported))
    assert len(readers) <= 3, readers
    from transformers import AutoTokenizer

    source = AutoTokenizer.from_pretrained(models[2048]).get_vocab()
    assert source.items() <= AutoTokenizer.from_pretrained(path).get_vocab().items()  # transformers may add a default
