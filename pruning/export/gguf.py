"""Hugging Face directory (dense, sparse, depth-pruned or heterogeneous) → GGUF file for llama.cpp.

Written with the `gguf` package: `GGUFWriter` for the file, `TensorNameMap` for tensor names,
`gguf.quants` for bf16/q8_0, `gguf.vocab` (SentencePieceVocab, SpecialVocab) for the tokenizer
(token lists of tokenizer.json tokenizers are built from the Hugging Face tokenizer). llama.cpp's
k-quants (q4_k_m, q6_k, ...) are made by llama-cpp-python's quantize API from an intermediate f16 (or
f32) file.

Conventions of llama.cpp that the export reproduces (learned from llama.cpp's own converter and
sources, reimplemented here):
- the `llama` and `deci` graphs rotate adjacent pairs (rope "NORM") while Hugging Face rotates the two
  halves of each head, so Q and K rows are interleaved per head (`rotary_interleave_order`);
- Gemma's RMSNorm multiplies by (1 + w): the file stores w + 1;
- GPT-2's Conv1D weights are stored [in, out] and are transposed; GPT-NeoX fuses q, k, v head by head
  and llama.cpp splits [all q, all k, all v], so those rows are regrouped (`qkv_grouping_order`);
- 1-D tensors (norms, biases) stay float32; a matrix whose rows do not split into q8_0 blocks of 32 is
  written as f16 instead (counted in the report).

Models with unequal layers (config `model_type: pruning_heterogeneous`) go to the `deci` architecture
with per-layer head, key-value head and FFN counts. In the llama.cpp this project pins, the deci graph
drops the attention output of a layer whose FFN length is 0 and takes the head size from layer 0's head
count, so the export keeps every layer's computation exact by:
- giving an FFN-free layer that still has attention an all-zero FFN of `ZERO_FFN_WIDTH` (adds exactly 0);
- writing an attention-free layer 0 as deci's "linear attention" with an all-zero output matrix
  (adds exactly 0) so that layer 0 has a head count;
- leaving out layers with neither attention nor FFN (identity layers).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QType
from gguf import LlamaFileType, MODEL_ARCH, MODEL_TENSOR

from .. import __version__
from ..checks import GGUF_OWNER_KEY
from ..io import file_mode, scratch_prefix
from ..modeling import HETEROGENEOUS_MODEL_TYPE

# Output types written directly by this module: tensor type for matrices and the file-type tag.
DIRECT_OUTTYPES = {
    "f32": (QType.F32, LlamaFileType.ALL_F32),
    "f16": (QType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (QType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (QType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# Output types made by llama.cpp's quantizer (llama-cpp-python), by their llama_cpp ftype constant.
LLAMACPP_OUTTYPES = {
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
OUTTYPES = tuple(DIRECT_OUTTYPES) + tuple(LLAMACPP_OUTTYPES)
ZERO_FFN_WIDTH = 32  # smallest llama.cpp quantization block, so the zero FFN quantizes like the rest
_ATTENTION_TENSORS = {MODEL_TENSOR.ATTN_NORM, MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V,
                      MODEL_TENSOR.ATTN_QKV, MODEL_TENSOR.ATTN_OUT, MODEL_TENSOR.ATTN_Q_NORM, MODEL_TENSOR.ATTN_K_NORM}
_FFN_TENSORS = {MODEL_TENSOR.FFN_NORM, MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN}
_NORM_TENSORS = {MODEL_TENSOR.ATTN_NORM, MODEL_TENSOR.FFN_NORM, MODEL_TENSOR.OUTPUT_NORM,
                 MODEL_TENSOR.ATTN_Q_NORM, MODEL_TENSOR.ATTN_K_NORM}
# Hugging Face buffers that are recomputed from the config and never stored in GGUF (rope frequencies,
# GPT-2's causal-mask buffers in old checkpoints).
_SKIPPED_SOURCE = re.compile(r"(^|\.)(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


class ExportError(ValueError):
    """Input that cannot be exported; raised before any output file is created."""


@dataclass(frozen=True)
class Hyper:
    """The numbers llama.cpp needs, whatever a family's config calls them."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    head_dim: int
    context: int
    vocab: int
    norm_eps: float
    rms_norm: bool = True
    rope_dims: int | None = None  # None: learned positions instead of rope
    parallel_residual: bool | None = None


def _llama_like(config: dict) -> Hyper:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    fraction = _rope_settings(config).get("partial_rotary_factor", 1.0)
    return Hyper(layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                 kv_heads=config.get("num_key_value_heads") or heads, ffn=config["intermediate_size"],
                 head_dim=head_dim, context=config.get("max_position_embeddings", 2048), vocab=config["vocab_size"],
                 norm_eps=config.get("rms_norm_eps", 1e-6), rope_dims=int(head_dim * fraction))


def _gpt2(config: dict) -> Hyper:
    hidden, heads = config["n_embd"], config["n_head"]
    return Hyper(layers=config["n_layer"], hidden=hidden, heads=heads, kv_heads=heads,
                 ffn=config.get("n_inner") or 4 * hidden, head_dim=hidden // heads, context=config["n_positions"],
                 vocab=config["vocab_size"], norm_eps=config.get("layer_norm_epsilon", 1e-5), rms_norm=False)


def _gpt_neox(config: dict) -> Hyper:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    fraction = _rope_settings(config).get("partial_rotary_factor", config.get("rotary_pct", 1.0))
    return Hyper(layers=config["num_hidden_layers"], hidden=hidden, heads=heads, kv_heads=heads,
                 ffn=config["intermediate_size"], head_dim=hidden // heads,
                 context=config.get("max_position_embeddings", 2048), vocab=config["vocab_size"],
                 norm_eps=config.get("layer_norm_eps", 1e-5), rms_norm=False,
                 rope_dims=int(hidden // heads * fraction), parallel_residual=config.get("use_parallel_residual", True))


_SPLIT_PARTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
_FUSED_PARTS = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


@dataclass(frozen=True)
class GGUFFamily:
    """How llama.cpp runs one Hugging Face model type."""

    arch: MODEL_ARCH
    hyper: Callable[[dict], Hyper]
    layer_parts: tuple[str, ...] = _SPLIT_PARTS  # weights every intact layer has in the file
    interleave_rotary: bool = False  # llama.cpp rope "NORM": Q/K rows interleaved per head
    norm_plus_one: bool = False  # Gemma-style (1 + w) RMSNorm
    deci_base: bool = False  # heterogeneous variants can be exported through deci
    conv1d: bool = False  # GPT-2 stores its linear weights as [in, out]
    qkv_per_head: bool = False  # GPT-NeoX fuses q, k, v head by head; llama.cpp wants all q, all k, all v
    fused_gate_up: bool = False  # Phi-3: ffn_up holds gate and up rows (2 x ffn)
    learned_positions: bool = False  # GPT-2's position embedding table


FAMILIES = {
    "llama": GGUFFamily(MODEL_ARCH.LLAMA, _llama_like, interleave_rotary=True, deci_base=True),
    "mistral": GGUFFamily(MODEL_ARCH.LLAMA, _llama_like, interleave_rotary=True, deci_base=True),
    "qwen2": GGUFFamily(MODEL_ARCH.QWEN2, _llama_like, deci_base=True),
    "qwen3": GGUFFamily(MODEL_ARCH.QWEN3, _llama_like),
    "gemma": GGUFFamily(MODEL_ARCH.GEMMA, _llama_like, norm_plus_one=True),
    "phi3": GGUFFamily(MODEL_ARCH.PHI3, _llama_like, layer_parts=_FUSED_PARTS, fused_gate_up=True),
    "gpt2": GGUFFamily(MODEL_ARCH.GPT2, _gpt2, layer_parts=_FUSED_PARTS, conv1d=True, learned_positions=True),
    "gpt_neox": GGUFFamily(MODEL_ARCH.GPTNEOX, _gpt_neox, layer_parts=_FUSED_PARTS, qkv_per_head=True),
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


@dataclass(frozen=True)
class LayerShape:
    heads: int
    kv_heads: int
    ffn: int


@dataclass
class _PlannedTensor:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    qtype: QType
    load: Callable[[], np.ndarray]  # float32 array in GGUF layout


@dataclass
class ExportPlan:
    model_dir: Path
    model_type: str
    arch_name: str
    config: dict
    layers: list[LayerShape]  # layers as written to the file
    source_layers: list[int]  # Hugging Face index of each written layer
    hyper: Hyper
    heterogeneous: bool
    vocab: dict
    tensors: list[_PlannedTensor] = field(default_factory=list)
    zero_ffn_layers: list[int] = field(default_factory=list)
    zero_attention_layers: list[int] = field(default_factory=list)
    dropped_identity_layers: list[int] = field(default_factory=list)
    fallback_f16: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- maths

def rotary_interleave_order(num_heads: int, head_dim: int) -> np.ndarray:
    """Row order turning Hugging Face's rotate-half layout ([x_0..x_{d/2-1}, y_0..y_{d/2-1}] per head) into
    llama.cpp's adjacent pairs ([x_0, y_0, x_1, y_1, ...]): new row 2i of a head is old row i, new row
    2i+1 is old row i + d/2."""
    if head_dim % 2:
        raise ExportError(f"rotary head size must be even, got {head_dim}")
    half = head_dim // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    return (np.arange(num_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def qkv_grouping_order(num_heads: int, head_dim: int) -> np.ndarray:
    """Row order turning GPT-NeoX's fused projection ([q_0, k_0, v_0, q_1, k_1, v_1, ...] per head) into
    [all q, all k, all v], the layout llama.cpp splits."""
    rows = np.arange(3 * num_heads * head_dim).reshape(num_heads, 3, head_dim)
    return rows.transpose(1, 0, 2).reshape(-1)


def llama3_rope_factors(head_dim: int, theta: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_context: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3's rope scaling (llama.cpp reads them as `rope_freqs`)."""
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / freqs
    low_wavelen, high_wavelen = original_context / low_freq_factor, original_context / high_freq_factor
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    factors = np.where(wavelen < high_wavelen, 1.0,
                       np.where(wavelen > low_wavelen, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


# ------------------------------------------------------------------------------------------- reading

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from None


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name → safetensors file holding it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map", {})
        return {name: model_dir / file for name, file in weight_map.items()}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        if any(model_dir.glob("*.bin")):
            raise ExportError(f"{model_dir} holds PyTorch .bin weights only; re-save it with safetensors "
                              "(model.save_pretrained(dir, safe_serialization=True))")
        raise ExportError(f"{model_dir} has no model weights (*.safetensors)")
    from safetensors import safe_open

    names = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            names.update({name: file for name in handle.keys()})
    return names


def _tensor_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for file in sorted(set(files.values())):
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():
                if files.get(name) == file:
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def _loader(file: Path, name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from safetensors import safe_open

        with safe_open(file, framework="pt") as handle:
            return handle.get_tensor(name).float().numpy()

    return load


def _rope_settings(config: dict) -> dict:
    """rope theta and scaling from a transformers 5 (`rope_parameters`) or older (`rope_theta`,
    `rope_scaling`) config."""
    params = dict(config.get("rope_parameters") or {})
    if "rope_theta" not in params:
        params["rope_theta"] = config.get("rope_theta", config.get("rotary_emb_base", 10000.0))
    if config.get("rope_scaling"):
        params = {**params, **config["rope_scaling"]}
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ("default", "linear", "llama3"):
        raise ExportError(f"rope type {kind!r} is not supported by this GGUF export (default, linear, llama3)")
    params["rope_type"] = kind
    return params


# ------------------------------------------------------------------------------------------ vocabulary

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
        for position, merge in enumerate(_read_json(model_dir / "tokenizer.json")["model"].get("merges", [])):
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
    data = _read_json(tokenizer_json)
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


# --------------------------------------------------------------------------------------------- plan

def _layer_shapes(config: dict, hyper: Hyper, heterogeneous: bool) -> list[LayerShape]:
    if heterogeneous:
        records = config.get("pruning_layer_structure")
        if not isinstance(records, list) or not records:
            raise ExportError("heterogeneous config lacks a pruning_layer_structure list")
        try:
            layers = [LayerShape(int(r["num_attention_heads"]), int(r["num_key_value_heads"]), int(r["intermediate_size"]))
                      for r in records]
        except (KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"malformed pruning_layer_structure entry: {exc}") from None
        if hyper.layers != len(layers):
            raise ExportError(f"num_hidden_layers={hyper.layers} but pruning_layer_structure has {len(layers)} entries")
    else:
        layers = [LayerShape(hyper.heads, hyper.kv_heads, hyper.ffn)] * hyper.layers
    for index, layer in enumerate(layers):
        if min(layer.heads, layer.kv_heads, layer.ffn) < 0 or (layer.heads == 0) != (layer.kv_heads == 0) \
                or (layer.kv_heads and layer.heads % layer.kv_heads):
            raise ExportError(f"layer {index}: inconsistent structure {asdict(layer)} (heads must be a multiple "
                              "of key-value heads; both zero when attention is removed)")
    return layers


def _matrix_type(outtype: QType, shape: tuple[int, ...], name: str, plan: ExportPlan) -> QType:
    if len(shape) < 2:
        return QType.F32
    if outtype == QType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[QType.Q8_0][0]:
        plan.fallback_f16.append(name)
        return QType.F16
    return outtype


def plan_export(model_dir: str | os.PathLike, outtype: str = "f16") -> ExportPlan:
    """Check everything and decide every tensor of the file without reading weight data."""
    model_dir = Path(model_dir)
    if outtype not in OUTTYPES:
        raise ExportError(f"unknown outtype {outtype!r}; use one of {', '.join(OUTTYPES)}")
    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    config = _read_json(model_dir / "config.json")
    heterogeneous = config.get("model_type") == HETEROGENEOUS_MODEL_TYPE
    model_type = config.get("pruning_base_model_type") if heterogeneous else config.get("model_type")
    if model_type not in FAMILIES:
        raise ExportError(f"architecture {model_type!r} cannot be exported to GGUF here; supported model types: "
                          f"{', '.join(supported_model_types())}")
    family = FAMILIES[model_type]
    if heterogeneous and not family.deci_base:
        raise ExportError(f"heterogeneous {model_type} models cannot be exported: llama.cpp's deci architecture "
                          f"covers {', '.join(t for t, f in FAMILIES.items() if f.deci_base)}")
    arch = MODEL_ARCH.DECI if heterogeneous else family.arch
    files = _weight_files(model_dir)
    shapes = _tensor_shapes(files)
    vocab = describe_vocabulary(model_dir)
    rope = _rope_settings(config)
    try:
        hyper = family.hyper(config)
    except KeyError as exc:
        raise ExportError(f"config.json of {model_type} lacks {exc}") from None
    layers = _layer_shapes(config, hyper, heterogeneous)
    plan = ExportPlan(model_dir=model_dir, model_type=model_type, arch_name=gguf.MODEL_ARCH_NAMES[arch], config=config,
                      layers=[], source_layers=[], hyper=hyper, heterogeneous=heterogeneous, vocab=vocab)
    qtype = DIRECT_OUTTYPES.get(outtype, DIRECT_OUTTYPES["f16"])[0]

    # layers as written: identity layers dropped, FFN-free attention layers padded, layer 0 given heads
    written: dict[int, LayerShape] = {}
    for index, layer in enumerate(layers):
        if heterogeneous and layer.heads == 0 and layer.ffn == 0:
            plan.dropped_identity_layers.append(index)
            continue
        if heterogeneous and layer.ffn == 0:
            plan.zero_ffn_layers.append(index)
            layer = LayerShape(layer.heads, layer.kv_heads, ZERO_FFN_WIDTH)
        if heterogeneous and layer.heads == 0 and not written:
            plan.zero_attention_layers.append(index)
            layer = LayerShape(hyper.heads, 0, layer.ffn)  # deci "linear attention"
        written[index] = layer
    if not written:
        raise ExportError("every layer is removed: nothing to export")
    plan.source_layers = list(written)
    plan.layers = list(written.values())
    new_index = {old: new for new, old in enumerate(plan.source_layers)}

    name_map = gguf.get_tensor_name_map(arch, len(layers))
    tied = config.get("tie_word_embeddings", True) if "lm_head.weight" not in shapes \
        else bool(config.get("tie_word_embeddings", False))
    if not tied and MODEL_TENSOR.OUTPUT not in gguf.MODEL_TENSORS[arch]:
        raise ExportError(f"{model_type} with an untied lm_head cannot be exported: llama.cpp's {plan.arch_name} graph "
                          "always reuses the token embedding as output matrix")
    seen: set[str] = set()
    for source, shape in shapes.items():
        if _SKIPPED_SOURCE.search(source) or (source == "lm_head.weight" and tied):
            continue
        mapped = name_map.get_type_and_name(source, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ExportError(f"tensor {source!r} has no GGUF name for {plan.arch_name}; is {model_type} really "
                              f"what config.json says?")
        kind, name = mapped
        block = re.match(r"blk\.(\d+)\.", name)
        layer = layers[int(block.group(1))] if block else None
        if block:
            old = int(block.group(1))
            if old not in written or math.prod(shape) == 0 \
                    or (kind in _ATTENTION_TENSORS and layer.heads == 0) or (kind in _FFN_TENSORS and layer.ffn == 0):
                continue
            name = name.replace(f"blk.{old}.", f"blk.{new_index[old]}.", 1)
        load = _loader(files[source], source)
        if family.conv1d and len(shape) == 2 and block:
            load, shape = _transposed(load), (shape[1], shape[0])
        _check_shape(kind, name, shape, layer, hyper, family, model_type)
        if kind in (MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K) and (family.interleave_rotary or heterogeneous):
            # deci always uses llama.cpp's NORM rope, whatever the base family
            heads = layer.heads if kind == MODEL_TENSOR.ATTN_Q else layer.kv_heads
            load = _reordered(load, rotary_interleave_order(heads, hyper.head_dim))
        if kind == MODEL_TENSOR.ATTN_QKV and family.qkv_per_head:
            load = _reordered(load, qkv_grouping_order(layer.heads, hyper.head_dim))
        if kind in _NORM_TENSORS and family.norm_plus_one:
            load = _plus_one(load)
        plan.tensors.append(_PlannedTensor(name, shape, _matrix_type(qtype, shape, name, plan), load))
        seen.add(name)

    missing = sorted(_required_tensors(plan, family, tied) - seen)
    if missing:
        raise ExportError(f"weights missing for {len(missing)} GGUF tensor(s), e.g. {missing[:4]}")
    _add_synthetic_tensors(plan, qtype, rope)
    return plan


def _check_shape(kind, name, shape, layer, hyper: Hyper, family: GGUFFamily, model_type: str) -> None:
    """Catch a config that does not describe the weights before writing a file llama.cpp would reject."""
    expected = None
    if layer:
        d, hidden = hyper.head_dim, hyper.hidden
        rows = {MODEL_TENSOR.ATTN_Q: layer.heads * d, MODEL_TENSOR.ATTN_K: layer.kv_heads * d,
                MODEL_TENSOR.ATTN_V: layer.kv_heads * d, MODEL_TENSOR.ATTN_QKV: (layer.heads + 2 * layer.kv_heads) * d,
                MODEL_TENSOR.ATTN_OUT: hidden, MODEL_TENSOR.FFN_GATE: layer.ffn,
                MODEL_TENSOR.FFN_UP: layer.ffn * (2 if family.fused_gate_up else 1), MODEL_TENSOR.FFN_DOWN: hidden}
        if kind in rows:
            cols = {MODEL_TENSOR.ATTN_OUT: layer.heads * d, MODEL_TENSOR.FFN_DOWN: layer.ffn}.get(kind, hidden)
            expected = (rows[kind], cols) if name.endswith(".weight") else (rows[kind],)
    elif kind in (MODEL_TENSOR.TOKEN_EMBD, MODEL_TENSOR.OUTPUT):
        expected = (hyper.vocab, hyper.hidden)
    elif kind == MODEL_TENSOR.POS_EMBD:
        expected = (hyper.context, hyper.hidden)
    if expected is not None and tuple(shape) != tuple(expected):
        raise ExportError(f"{name}: weight shape {tuple(shape)} does not match the {model_type} config "
                          f"(expected {tuple(expected)})")


def _required_tensors(plan: ExportPlan, family: GGUFFamily, tied: bool) -> set[str]:
    required = {"token_embd.weight", "output_norm.weight"} | (set() if tied else {"output.weight"})
    if family.learned_positions:
        required.add("position_embd.weight")
    for index, (source, layer) in enumerate(zip(plan.source_layers, plan.layers)):
        for part in family.layer_parts:
            synthetic = source in (plan.zero_ffn_layers if part.startswith("ffn") else plan.zero_attention_layers)
            removed = part.startswith("attn") and layer.heads == 0
            if not synthetic and not removed:
                required.add(f"blk.{index}.{part}.weight")
    return required


def _constant(shape: tuple[int, ...], value: float) -> Callable[[], np.ndarray]:
    return lambda: np.full(shape, value, dtype=np.float32)


def _add_synthetic_tensors(plan: ExportPlan, qtype: QType, rope: dict) -> None:
    """Zero sub-blocks that keep deci layers exact, and Llama 3 rope factors."""
    hidden = plan.hyper.hidden
    for index, source in enumerate(plan.source_layers):
        if source in plan.zero_ffn_layers:
            for part, shape in (("ffn_gate", (ZERO_FFN_WIDTH, hidden)), ("ffn_up", (ZERO_FFN_WIDTH, hidden)),
                                ("ffn_down", (hidden, ZERO_FFN_WIDTH))):
                name = f"blk.{index}.{part}.weight"
                plan.tensors.append(_PlannedTensor(name, shape, _matrix_type(qtype, shape, name, plan), _constant(shape, 0.0)))
            plan.tensors.append(_PlannedTensor(f"blk.{index}.ffn_norm.weight", (hidden,), QType.F32, _constant((hidden,), 1.0)))
        if source in plan.zero_attention_layers:
            name = f"blk.{index}.attn_output.weight"
            plan.tensors.append(_PlannedTensor(name, (hidden, hidden), _matrix_type(qtype, (hidden, hidden), name, plan),
                                               _constant((hidden, hidden), 0.0)))
            plan.tensors.append(_PlannedTensor(f"blk.{index}.attn_norm.weight", (hidden,), QType.F32, _constant((hidden,), 1.0)))
    if rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(plan.hyper.rope_dims, rope["rope_theta"], rope.get("factor", 8.0),
                                      rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0),
                                      rope.get("original_max_position_embeddings", 8192))
        plan.tensors.append(_PlannedTensor("rope_freqs.weight", factors.shape, QType.F32, lambda: factors))


def _reordered(load: Callable[[], np.ndarray], order: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: load()[order]


def _plus_one(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: load() + 1.0


def _transposed(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.ascontiguousarray(load().T)


# -------------------------------------------------------------------------------------------- write

def _add_metadata(writer: gguf.GGUFWriter, plan: ExportPlan, file_type: LlamaFileType) -> None:
    hyper, layers = plan.hyper, plan.layers
    writer.add_name(plan.model_dir.name)
    writer.add_string(GGUF_OWNER_KEY, __version__)  # marks the file as ours: a later convert may replace it
    prune_report = plan.model_dir / "prune.json"
    if prune_report.is_file():
        report = _read_json(prune_report)
        writer.add_description(f"pruned with {report.get('method')} {json.dumps(report.get('options'))}")
    writer.add_block_count(len(layers))
    writer.add_context_length(hyper.context)
    writer.add_embedding_length(hyper.hidden)
    if plan.heterogeneous:
        writer.add_head_count([layer.heads for layer in layers])
        writer.add_head_count_kv([layer.kv_heads for layer in layers])
        writer.add_feed_forward_length([layer.ffn for layer in layers])
    else:
        writer.add_head_count(layers[0].heads)
        writer.add_head_count_kv(layers[0].kv_heads)
        writer.add_feed_forward_length(layers[0].ffn)
    writer.add_key_length(hyper.head_dim)
    writer.add_value_length(hyper.head_dim)
    if hyper.rope_dims is not None:
        rope = _rope_settings(plan.config)
        writer.add_rope_dimension_count(hyper.rope_dims)
        writer.add_rope_freq_base(float(rope["rope_theta"]))
        if rope["rope_type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
    if hyper.rms_norm:
        writer.add_layer_norm_rms_eps(float(hyper.norm_eps))
    else:
        writer.add_layer_norm_eps(float(hyper.norm_eps))
    if hyper.parallel_residual is not None:
        writer.add_parallel_residual(bool(hyper.parallel_residual))
    writer.add_vocab_size(hyper.vocab)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _encode(array: np.ndarray, qtype: QType) -> np.ndarray:
    if qtype == QType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == QType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def _nbytes(shape: tuple[int, ...], qtype: QType) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * size


def _write_plan(plan: ExportPlan, path: Path, file_type: LlamaFileType) -> None:
    """Stream the plan into `path`, one tensor in memory at a time."""
    writer = gguf.GGUFWriter(path, plan.arch_name)
    try:
        _add_metadata(writer, plan, file_type)
        add_vocabulary(writer, plan.model_dir, plan.vocab, plan.config["vocab_size"])
        for tensor in plan.tensors:
            quantized = tensor.qtype not in (QType.F32, QType.F16)
            shape = gguf.quants.quant_shape_to_byte_shape(tensor.shape, tensor.qtype) if quantized else tensor.shape
            writer.add_tensor_info(tensor.name, shape, np.dtype(np.uint8 if quantized else
                                                               np.float32 if tensor.qtype == QType.F32 else np.float16),
                                   _nbytes(tensor.shape, tensor.qtype), raw_dtype=tensor.qtype if quantized else None)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in plan.tensors:
            data = tensor.load()
            if tuple(data.shape) != tuple(tensor.shape):
                raise ExportError(f"{tensor.name}: loaded shape {data.shape} differs from planned {tensor.shape}")
            writer.write_tensor_data(_encode(data, tensor.qtype))
    finally:
        writer.close()


def _llama_cpp_quantize(source: Path, dest: Path, outtype: str, threads: int | None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMACPP_OUTTYPES[outtype])
    if threads:
        params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp quantization to {outtype} failed (status {status})")


def require_llama_cpp(purpose: str) -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ExportError(f"{purpose} needs llama-cpp-python: pip install 'llm-pruning-zoo[llamacpp]' "
                          "(builds llama.cpp from source, ~6 minutes on 2 cores)") from None


def export_gguf(model_dir: str | os.PathLike, output: str | os.PathLike, outtype: str = "f16", *,
                intermediate: str = "f16", threads: int | None = None) -> dict:
    """Write `model_dir` as a GGUF file of `outtype` at `output` (atomically) and return a report."""
    started = time.perf_counter()
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"output {output} is a directory; give a file name like model.gguf")
    if outtype in LLAMACPP_OUTTYPES:
        require_llama_cpp(f"outtype {outtype}")
        if intermediate not in ("f16", "f32"):
            raise ExportError(f"intermediate type for llama.cpp quantization must be f16 or f32, got {intermediate!r}")
    plan = plan_export(model_dir, intermediate if outtype in LLAMACPP_OUTTYPES else outtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=scratch_prefix(output), suffix=".gguf", dir=output.parent)
    os.close(fd)
    scratch = Path(scratch)
    intermediate_file = scratch.with_name(scratch.name + f".{intermediate}")
    try:
        if outtype in LLAMACPP_OUTTYPES:
            _write_plan(plan, intermediate_file, DIRECT_OUTTYPES[intermediate][1])
            _llama_cpp_quantize(intermediate_file, scratch, outtype, threads)
        else:
            _write_plan(plan, scratch, DIRECT_OUTTYPES[outtype][1])
        os.chmod(scratch, file_mode())  # mkstemp's 0600 would make shared results unreadable to others
        os.replace(scratch, output)
    finally:
        scratch.unlink(missing_ok=True)
        intermediate_file.unlink(missing_ok=True)
    return {
        "output": str(output),
        "outtype": outtype,
        "intermediate": intermediate if outtype in LLAMACPP_OUTTYPES else None,
        "source": str(plan.model_dir),
        "model_type": plan.model_type,
        "arch": plan.arch_name,
        "block_count": len(plan.layers),
        "layers": [asdict(layer) for layer in plan.layers] if plan.heterogeneous else None,
        "source_layers": plan.source_layers,
        "zero_ffn_layers": plan.zero_ffn_layers,
        "zero_attention_layers": plan.zero_attention_layers,
        "dropped_identity_layers": plan.dropped_identity_layers,
        "f16_fallback_tensors": plan.fallback_f16 if outtype == "q8_0" else [],
        "vocab": plan.vocab,
        "tensors": len(plan.tensors) if outtype not in LLAMACPP_OUTTYPES else None,
        "bytes": output.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
        "gguf_version": package_version("gguf"),
        "llama_cpp_python": package_version("llama_cpp_python") if outtype in LLAMACPP_OUTTYPES else None,
    }


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
