"""GGUF tensor plan: every tensor of the file decided (name, shape, type, how to load it) before any weight
is read, like the tensor mapping and `modify_tensors` steps of llama.cpp's converter.

Names come from the `gguf` package's `TensorNameMap`. Conventions of llama.cpp reproduced here (learned
from its converter and sources):
- the `llama` and `deci` graphs rotate adjacent pairs (rope "NORM") while Hugging Face rotates the two
  halves of each head, so Q and K rows are interleaved per head (`rotary_interleave_order`);
- Gemma's RMSNorms (all of them, Gemma-2/3's post-norms and q/k norms too) multiply by (1 + w): the file stores w + 1;
- GPT-2's Conv1D weights are stored [in, out] and are transposed; GPT-NeoX fuses q, k, v head by head
  and llama.cpp splits [all q, all k, all v], so those rows are regrouped (`qkv_grouping_order`);
- 1-D tensors (norms, biases) stay float32; a matrix whose rows do not split into q8_0 blocks of 32 is
  written as f16 instead (counted in the report).

Models with unequal layers (the heterogeneous format, pruning/core/heterogeneous.py) go to the `deci` architecture
with per-layer head, key-value head and FFN counts. In the llama.cpp this project pins, the deci graph
drops the attention output of a layer whose FFN length is 0 and takes the head size from layer 0's head
count, so the plan keeps every layer's computation exact by:
- giving an FFN-free layer that still has attention an all-zero FFN of `ZERO_FFN_WIDTH` (adds exactly 0);
- writing an attention-free layer 0 as deci's "linear attention" with an all-zero output matrix
  (adds exactly 0) so that layer 0 has a head count;
- leaving out layers with neither attention nor FFN (identity layers).
Output-projection biases of the heterogeneous record (FLAP's compensation) map to `attn_output.bias` /
`ffn_down.bias` like any bias; the deci graph adds them (checked against llama-cpp-python in tests/test_flap.py).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QType
from gguf import MODEL_ARCH, MODEL_TENSOR

from ..core import sparse_formats as compressed
from ..core import heterogeneous as heterogeneous_format
from ..core.heterogeneous import LayerShape
from .gguf_families import FAMILIES, GGUFFamily, supported_model_types
from .gguf_hparams import ExportError, Hyper, rope_settings
from .gguf_vocab import describe_vocabulary, read_json
from .outtypes import OUTPUT_TYPES, OUTTYPES

ZERO_FFN_WIDTH = 32  # smallest llama.cpp quantization block, so the zero FFN quantizes like the rest
_ATTENTION_TENSORS = {MODEL_TENSOR.ATTN_NORM, MODEL_TENSOR.ATTN_Q, MODEL_TENSOR.ATTN_K, MODEL_TENSOR.ATTN_V,
                      MODEL_TENSOR.ATTN_QKV, MODEL_TENSOR.ATTN_OUT, MODEL_TENSOR.ATTN_Q_NORM, MODEL_TENSOR.ATTN_K_NORM}
_FFN_TENSORS = {MODEL_TENSOR.FFN_NORM, MODEL_TENSOR.FFN_GATE, MODEL_TENSOR.FFN_UP, MODEL_TENSOR.FFN_DOWN}
_NORM_TENSORS = {MODEL_TENSOR.ATTN_NORM, MODEL_TENSOR.FFN_NORM, MODEL_TENSOR.OUTPUT_NORM,
                 MODEL_TENSOR.ATTN_Q_NORM, MODEL_TENSOR.ATTN_K_NORM, MODEL_TENSOR.ATTN_POST_NORM,
                 MODEL_TENSOR.FFN_PRE_NORM, MODEL_TENSOR.FFN_POST_NORM}
# Hugging Face buffers that are recomputed from the config and never stored in GGUF (rope frequencies,
# GPT-2's causal-mask buffers in old checkpoints).
_SKIPPED_SOURCE = re.compile(r"(^|\.)(rotary_emb\.inv_freq|attn\.bias|attn\.masked_bias)$")


@dataclass
class PlannedTensor:
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
    tensors: list[PlannedTensor] = field(default_factory=list)
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

def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name → safetensors file holding it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
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


# --------------------------------------------------------------------------------------------- plan

def _layer_shapes(config: dict, hyper: Hyper, heterogeneous: bool) -> list[LayerShape]:
    if not heterogeneous:
        return [LayerShape(hyper.heads, hyper.kv_heads, hyper.ffn)] * hyper.layers
    try:
        return heterogeneous_format.layer_shapes(config)
    except heterogeneous_format.FormatError as exc:
        raise ExportError(str(exc)) from None


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
    config = read_json(model_dir / "config.json")
    heterogeneous = heterogeneous_format.is_heterogeneous(config)
    model_type = heterogeneous_format.base_model_type(config)
    if model_type not in FAMILIES:
        raise ExportError(f"architecture {model_type!r} cannot be exported to GGUF here; supported model types: "
                          f"{', '.join(supported_model_types())}")
    family = FAMILIES[model_type]
    if heterogeneous and not family.deci_base:
        raise ExportError(f"heterogeneous {model_type} models cannot be exported: llama.cpp's deci architecture "
                          f"covers {', '.join(t for t, f in FAMILIES.items() if f.deci_base)}")
    arch = MODEL_ARCH.DECI if heterogeneous else family.arch
    if compressed.save_format_of(config) == compressed.DENSE:
        files = _weight_files(model_dir)
        shapes = _tensor_shapes(files)
        readers = {name: _loader(files[name], name) for name in shapes}
    else:  # a sparse checkpoint: the dense tensors, decompressed when written
        shapes, sparse_readers = compressed.dense_tensors(model_dir)
        shapes = {name: tuple(shape) for name, shape in shapes.items()}
        readers = {name: (lambda read=read: read().float().numpy()) for name, read in sparse_readers.items()}
    vocab = describe_vocabulary(model_dir)
    rope = rope_settings(config)
    try:
        hyper = family.hyper(config)
    except KeyError as exc:
        raise ExportError(f"config.json of {model_type} lacks {exc}") from None
    layers = _layer_shapes(config, hyper, heterogeneous)
    plan = ExportPlan(model_dir=model_dir, model_type=model_type, arch_name=gguf.MODEL_ARCH_NAMES[arch], config=config,
                      layers=[], source_layers=[], hyper=hyper, heterogeneous=heterogeneous, vocab=vocab)
    written = OUTPUT_TYPES[outtype]  # llama.cpp quantizes its types from the f16 plan
    qtype = QType.F16 if written.by_llama_cpp else QType[written.main_type]

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
        load = readers[source]
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
        plan.tensors.append(PlannedTensor(name, shape, _matrix_type(qtype, shape, name, plan), load))
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
                plan.tensors.append(PlannedTensor(name, shape, _matrix_type(qtype, shape, name, plan), _constant(shape, 0.0)))
            plan.tensors.append(PlannedTensor(f"blk.{index}.ffn_norm.weight", (hidden,), QType.F32, _constant((hidden,), 1.0)))
        if source in plan.zero_attention_layers:
            name = f"blk.{index}.attn_output.weight"
            plan.tensors.append(PlannedTensor(name, (hidden, hidden), _matrix_type(qtype, (hidden, hidden), name, plan),
                                               _constant((hidden, hidden), 0.0)))
            plan.tensors.append(PlannedTensor(f"blk.{index}.attn_norm.weight", (hidden,), QType.F32, _constant((hidden,), 1.0)))
    if rope["rope_type"] == "llama3":
        factors = llama3_rope_factors(plan.hyper.rope_dims, rope["rope_theta"], rope.get("factor", 8.0),
                                      rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0),
                                      rope.get("original_max_position_embeddings", 8192))
        plan.tensors.append(PlannedTensor("rope_freqs.weight", factors.shape, QType.F32, lambda: factors))


def _reordered(load: Callable[[], np.ndarray], order: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: load()[order]


def _plus_one(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: load() + 1.0


def _transposed(load: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    return lambda: np.ascontiguousarray(load().T)

