"""GGUF families: how llama.cpp runs each Hugging Face model type (its architecture, its hyper-parameter
reader and the layout conventions the tensor plan reproduces), like the per-architecture classes of
llama.cpp's converter.

Keyed by the same model types as the architecture adapters in pruning/core/adapters.py: a new family is one
`ArchitectureAdapter` entry there (pruning) plus one `FAMILIES` entry here (GGUF export); tests check that
every family here has an adapter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gguf import MODEL_ARCH

from .gguf_hparams import Hyper, gemma_sliding, gpt2, gpt_neox, llama_like


_SPLIT_PARTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
_GEMMA2_PARTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "post_attention_norm", "ffn_norm", "ffn_gate",
                 "ffn_up", "ffn_down", "post_ffw_norm")
_GEMMA3_PARTS = _GEMMA2_PARTS + ("attn_q_norm", "attn_k_norm")
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
    "llama": GGUFFamily(MODEL_ARCH.LLAMA, llama_like, interleave_rotary=True, deci_base=True),
    "mistral": GGUFFamily(MODEL_ARCH.LLAMA, llama_like, interleave_rotary=True, deci_base=True),
    "qwen2": GGUFFamily(MODEL_ARCH.QWEN2, llama_like, deci_base=True),
    "qwen3": GGUFFamily(MODEL_ARCH.QWEN3, llama_like),
    "gemma": GGUFFamily(MODEL_ARCH.GEMMA, llama_like, norm_plus_one=True),
    "gemma2": GGUFFamily(MODEL_ARCH.GEMMA2, gemma_sliding, layer_parts=_GEMMA2_PARTS, norm_plus_one=True),
    "gemma3_text": GGUFFamily(MODEL_ARCH.GEMMA3, gemma_sliding, layer_parts=_GEMMA3_PARTS, norm_plus_one=True),
    "phi3": GGUFFamily(MODEL_ARCH.PHI3, llama_like, layer_parts=_FUSED_PARTS, fused_gate_up=True),
    "gpt2": GGUFFamily(MODEL_ARCH.GPT2, gpt2, layer_parts=_FUSED_PARTS, conv1d=True, learned_positions=True),
    "gpt_neox": GGUFFamily(MODEL_ARCH.GPTNEOX, gpt_neox, layer_parts=_FUSED_PARTS, qkv_per_head=True),
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)
