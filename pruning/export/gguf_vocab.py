"""GGUF vocabulary: token list, scores, types, merges and special ids for llama.cpp's tokenizer.

SentencePiece models and special tokens go through `gguf.vocab` (SentencePieceVocab, SpecialVocab).
tokenizer.json tokenizers are written by hand because the package cannot express them exactly: its
LlamaHfVocab gives byte-fallback BPE a constant score (which changes llama.cpp's merge order) and it
names no llama.cpp pre-tokenizer (llama.cpp's converter hashes a test encoding; here the pre-tokenizer's
structure is matched, see `bpe_pre_tokenizer`).
"""
from __future__ import annotations

import codecs
import gc
import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path

import gguf

from ..core.model_checks import read_json_object
from .gguf_hparams import ExportError


def read_json(path: Path) -> dict:
    return read_json_object(path, "file", ExportError)


_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer_steps(pre: dict | None) -> list[tuple]:
    """A tokenizer.json pre-tokenizer as comparable steps."""
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [step for item in pre.get("pretokenizers", []) for step in _pre_tokenizer_steps(item)]
    kind = pre.get("type")
    if kind == "ByteLevel":
        return [("ByteLevel", bool(pre.get("use_regex", True)))]
    if kind == "Digits":
        return [("Digits", bool(pre.get("individual_digits", False)))]
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return [("Split", pattern.get("Regex", pattern.get("String")))]
    return [(kind,)]


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for the pre-tokenizer a byte-level BPE tokenizer.json describes.

    Recognised from the pre-tokenizer's structure (llama.cpp's converter hashes a test encoding instead);
    anything else is refused rather than silently tokenized differently."""
    steps = _pre_tokenizer_steps(tokenizer_json.get("pre_tokenizer"))
    known = {
        (("ByteLevel", True),): "gpt-2",
        (("Digits", True), ("ByteLevel", True)): "smollm",
        (("Split", _LLAMA3_REGEX), ("ByteLevel", False)): "llama-bpe",
        (("Split", _QWEN2_REGEX), ("ByteLevel", False)): "qwen2",
        (("Split", _GPT2_REGEX), ("ByteLevel", False)): "gpt-2",
    }
    try:
        return known[tuple(steps)]
    except KeyError:
        raise ExportError(f"byte-level BPE pre-tokenizer {steps} is not one llama.cpp is known to reproduce "
                          f"here (supported: {sorted(set(known.values()))})") from None


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector paused: loading a large tokenizer makes millions of small containers
    (tokenizer.json parsed, vocabulary dicts, merges) and no cycles, which the collector would otherwise scan
    over and over (a quarter to a third of the vocabulary step at 256k tokens)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _hf_token_type(added, index: int, text: str, unk_id: int | None, byte_fallback: bool) -> int:
    """llama.cpp's type of one token; `added` is the tokenizer's added_tokens_decoder read once by the caller
    (transformers rebuilds that dict on every access, which made the vocabulary O(vocabulary x added))."""
    token = added.get(index)
    if token is not None:
        if byte_fallback and index == unk_id:  # SentencePiece's own <unk> piece
            return gguf.TokenType.UNKNOWN
        return gguf.TokenType.CONTROL if token.special else gguf.TokenType.USER_DEFINED
    if byte_fallback and _BYTE_TOKEN.fullmatch(text):  # byte-level BPE has no byte tokens (llama.cpp's gpt2 neither)
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _tokens_from_hf(model_dir: Path, vocab_size: int, byte_fallback: bool) -> tuple[list[bytes], list[float] | None, list[int]]:
    """Token texts, scores and types from the Hugging Face tokenizer; ids it lacks become [PAD{id}].

    Byte-level BPE (gpt2 model in llama.cpp) needs no scores. A byte-fallback BPE tokenizer.json is a
    converted SentencePiece model, which llama.cpp tokenizes by merging the adjacent pair whose result has
    the highest score: scoring each token by minus the rank of the first merge producing it reproduces the
    merge order the Hugging Face tokenizer applies (gguf's LlamaHfVocab writes a constant placeholder, which
    changes tokenization). Every tokenizer property is read once, so this is linear in the vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: text for text, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    unk_id = tokenizer.unk_token_id if byte_fallback else None
    size = max(vocab_size, max(by_id) + 1)
    rank: dict[str, int] = {}
    if byte_fallback:
        for position, merge in enumerate(read_json(model_dir / "tokenizer.json")["model"].get("merges", [])):
            left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
            rank.setdefault(left + right, position)
    tokens, scores, types = [], [], []
    for index in range(size):
        text = by_id.get(index)
        if text is None:
            tokens.append(f"[PAD{index}]".encode("utf-8"))
            types.append(gguf.TokenType.UNUSED)
            scores.append(-1e9)
            continue
        tokens.append(text.encode("utf-8"))
        types.append(_hf_token_type(added, index, text, unk_id, byte_fallback))
        scores.append(-float(rank[text]) if text in rank else -float(len(rank) + index))
    return tokens, scores if byte_fallback else None, types


_SPACE = re.compile(r"[ \t\n\r]*")
_SCAN = json.JSONDecoder()


def _open(text: str, index: int) -> tuple[int, bool]:
    """At a JSON object: (just inside it, whether it has members)."""
    index = _SPACE.match(text, index).end()
    if text[index] != "{":
        raise ValueError("not a JSON object")
    index = _SPACE.match(text, index + 1).end()
    return (index + 1, False) if text[index] == "}" else (index, True)


def _key(text: str, index: int) -> tuple[str, int]:
    """At a member: (its key, where its value starts)."""
    if text[index] != '"':
        raise ValueError("not a JSON object member")
    key, index = json.decoder.scanstring(text, index + 1)
    index = _SPACE.match(text, index).end()
    if text[index] != ":":
        raise ValueError("not a JSON object member")
    return key, _SPACE.match(text, index + 1).end()


def _after(text: str, index: int) -> tuple[int, bool]:
    """Past a member's value: (where the next member starts, whether there is one)."""
    index = _SPACE.match(text, index).end()
    if text[index] == "}":
        return index + 1, False
    if text[index] != ",":
        raise ValueError("not a JSON object")
    return _SPACE.match(text, index + 1).end(), True


def _tokenizer_json_head(text: str) -> dict | None:
    """{"pre_tokenizer": ..., "model": {"type": ..., "byte_fallback": ...}} from tokenizer.json without parsing its
    vocabulary and merges: the tokenizers library writes them last, after everything this needs (a full parse of
    a 256k-token file takes seconds, and every export plan and memory estimate reads this). None when the file
    is laid out otherwise; the caller then parses it whole. ValueError or IndexError if it is not JSON."""
    head: dict = {}
    index, more = _open(text, 0)
    while more:
        key, index = _key(text, index)
        if key == "model":
            if "pre_tokenizer" not in head:
                return None
            model: dict = {}
            index, more = _open(text, index)
            while more:
                key, index = _key(text, index)
                if key in ("vocab", "merges"):
                    break
                model[key], index = _SCAN.raw_decode(text, index)
                index, more = _after(text, index)
            if "type" in model and (model["type"] != "BPE" or "byte_fallback" in model or not more):
                return {"pre_tokenizer": head["pre_tokenizer"], "model": model}
            return None
        head[key], index = _SCAN.raw_decode(text, index)
        index, more = _after(text, index)
    return head


def _read_tokenizer_json_head(path: Path) -> dict | None:
    """`_tokenizer_json_head` of the file, read from its start in growing pieces: the head is usually in the
    first megabyte of a file of tens."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    text, piece = "", 1 << 20
    with open(path, "rb") as handle:
        while True:
            data = handle.read(piece)
            text += decoder.decode(data, final=not data)
            try:
                return _tokenizer_json_head(text)
            except (ValueError, IndexError):
                if not data:
                    raise
            piece *= 4


def describe_vocabulary(model_dir: Path) -> dict:
    """Which tokenizer the directory holds, checked before export starts."""
    if (model_dir / "tokenizer.model").is_file():
        return {"model": "llama", "kind": "sentencepiece", "pre": None}
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ExportError(f"{model_dir} has no tokenizer (tokenizer.model or tokenizer.json); llama.cpp needs one")
    try:
        data = _read_tokenizer_json_head(tokenizer_json)
    except (ValueError, IndexError, OSError):  # unreadable or malformed: the full read below says why
        data = None
    if data is None:
        data = read_json(tokenizer_json)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"tokenizer model {model.get('type')!r} in {tokenizer_json} is not supported (BPE or SentencePiece)")
    if model.get("byte_fallback"):
        return {"model": "llama", "kind": "byte-fallback-bpe", "pre": None}
    return {"model": "gpt2", "kind": "byte-level-bpe", "pre": bpe_pre_tokenizer(data)}


def add_vocabulary(writer: gguf.GGUFWriter, model_dir: Path, vocab: dict, vocab_size: int) -> int:
    """Token list, scores, types, merges and special ids; returns the number of tokens written."""
    with _collector_paused():
        if vocab["kind"] == "sentencepiece":
            tokens, scores, types = [], [], []
            for text, score, kind in gguf.vocab.SentencePieceVocab(model_dir).all_tokens():
                tokens.append(text)
                scores.append(score)
                types.append(kind)
            for index in range(len(tokens), vocab_size):  # embedding rows beyond the tokenizer
                tokens.append(f"[PAD{index}]".encode("utf-8"))
                scores.append(-1000.0)
                types.append(gguf.TokenType.UNUSED)
        else:
            tokens, scores, types = _tokens_from_hf(model_dir, vocab_size,
                                                    byte_fallback=vocab["kind"] == "byte-fallback-bpe")
    if len(tokens) != vocab_size:
        raise ExportError(f"tokenizer has {len(tokens)} tokens but the embedding has {vocab_size} rows")
    writer.add_tokenizer_model(vocab["model"])
    if vocab["pre"]:
        writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(tokens)
    if scores is not None:
        writer.add_token_scores(scores)
    writer.add_token_types(types)
    vocab_logger = logging.getLogger("gguf.vocab")  # it warns about pair templates llama.cpp never reads
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        with _collector_paused():
            special = gguf.SpecialVocab(model_dir, load_merges=vocab["model"] == "gpt2", n_vocab=len(tokens))
    finally:
        vocab_logger.setLevel(level)
    special.add_to_gguf(writer, quiet=True)
    return len(tokens)

