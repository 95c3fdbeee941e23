"""GGUF vocabulary: token list, scores, types, merges and special ids for llama.cpp's tokenizer.

SentencePiece models and special tokens go through `gguf.vocab` (SentencePieceVocab, SpecialVocab).
tokenizer.json tokenizers are written by hand because the package cannot express them exactly: its
LlamaHfVocab gives byte-fallback BPE a constant score (which changes llama.cpp's merge order) and it
names no llama.cpp pre-tokenizer (llama.cpp's converter hashes a test encoding; here the pre-tokenizer's
structure is matched, see `bpe_pre_tokenizer`).
"""
from __future__ import annotations

import logging
import re
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


def _hf_token_type(tokenizer, index: int, text: str, sentencepiece: bool) -> int:
    added = tokenizer.added_tokens_decoder.get(index)
    if added is not None:
        if sentencepiece and index == tokenizer.unk_token_id:  # SentencePiece's own <unk> piece
            return gguf.TokenType.UNKNOWN
        return gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _tokens_from_hf(model_dir: Path, vocab_size: int, byte_fallback: bool) -> tuple[list[bytes], list[float] | None, list[int]]:
    """Token texts, scores and types from the Hugging Face tokenizer; ids it lacks become [PAD{id}].

    Byte-level BPE (gpt2 model in llama.cpp) needs no scores. A byte-fallback BPE tokenizer.json is a
    converted SentencePiece model, which llama.cpp tokenizes by merging the adjacent pair whose result has
    the highest score: scoring each token by minus the rank of the first merge producing it reproduces the
    merge order the Hugging Face tokenizer applies (gguf's LlamaHfVocab writes a constant placeholder, which
    changes tokenization)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: text for text, index in tokenizer.get_vocab().items()}
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
        types.append(_hf_token_type(tokenizer, index, text, byte_fallback))
        scores.append(-float(rank[text]) if text in rank else -float(len(rank) + index))
    return tokens, scores if byte_fallback else None, types


def describe_vocabulary(model_dir: Path) -> dict:
    """Which tokenizer the directory holds, checked before export starts."""
    if (model_dir / "tokenizer.model").is_file():
        return {"model": "llama", "kind": "sentencepiece", "pre": None}
    tokenizer_json = model_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ExportError(f"{model_dir} has no tokenizer (tokenizer.model or tokenizer.json); llama.cpp needs one")
    data = read_json(tokenizer_json)
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"tokenizer model {model.get('type')!r} in {tokenizer_json} is not supported (BPE or SentencePiece)")
    if model.get("byte_fallback"):
        return {"model": "llama", "kind": "byte-fallback-bpe", "pre": None}
    return {"model": "gpt2", "kind": "byte-level-bpe", "pre": bpe_pre_tokenizer(data)}


def add_vocabulary(writer: gguf.GGUFWriter, model_dir: Path, vocab: dict, vocab_size: int) -> int:
    """Token list, scores, types, merges and special ids; returns the number of tokens written."""
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
        tokens, scores, types = _tokens_from_hf(model_dir, vocab_size, byte_fallback=vocab["kind"] == "byte-fallback-bpe")
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
        special = gguf.SpecialVocab(model_dir, load_merges=vocab["model"] == "gpt2", n_vocab=len(tokens))
    finally:
        vocab_logger.setLevel(level)
    special.add_to_gguf(writer, quiet=True)
    return len(tokens)

