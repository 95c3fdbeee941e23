"""Architecture adapters: where each model family keeps its decoder layers, attention, MLP and norms.

Everything else in the library asks an adapter instead of naming modules itself, so supporting a new
family means adding one `ArchitectureAdapter` entry here; exporting it to GGUF adds one `GGUFFamily` entry
under the same model type in pruning/export/gguf_families.py.
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


class UnsupportedArchitecture(ValueError):
    pass


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear, or GPT-2's Conv1D (a linear layer storing its weight as [in, out])."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as a [out_features, in_features] view that writes through to the module."""
    if isinstance(module, nn.Linear):
        return module.weight.data
    if type(module).__name__ == "Conv1D":
        return module.weight.data.t()
    raise TypeError(f"not a linear layer: {type(module).__name__}")


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Paths (dotted, relative to the *CausalLM model) of one family's parts."""

    family: str
    model_types: tuple[str, ...]
    layers: str
    embeddings: tuple[str, ...]
    final_norm: str
    lm_head: str
    # relative to one decoder layer
    attention: str
    attention_projections: tuple[str, ...]  # q, k, v, o (or fused qkv, o)
    mlp_projections: tuple[str, ...]  # up/gate..., down last
    norms: tuple[str, ...]
    attention_norm: str  # norm feeding attention
    mlp_norm: str  # norm feeding the MLP
    mlp: str | None = None  # the MLP container, None where projections sit directly in the layer
    fused_qkv: bool = False
    extra: dict = field(default_factory=dict, hash=False, compare=False)
    # Structured pruning (pruning/structure.py): model types whose attention heads can be sliced and whose
    # attention / FFN sub-blocks can be removed (separate q/k/v/o, the norm before each sub-block owned by
    # it), and the attention's attribute names for the head size and query heads per key-value head.
    sliceable_model_types: tuple[str, ...] = ()
    head_dim_attribute: str = "head_dim"
    kv_groups_attribute: str = "num_key_value_groups"

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return _get(model, self.layers)

    def module(self, model: nn.Module, path: str) -> nn.Module:
        return _get(model, path)

    def layer_part(self, layer: nn.Module, path: str) -> nn.Module:
        return _get(layer, path)

    def linear_targets(self, model: nn.Module, layer_index: int, ignore: tuple[str, ...] = ()) -> dict[str, nn.Module]:
        """Every linear-like module inside one decoder layer, by full name, minus ignored patterns."""
        prefix = f"{self.layers}.{layer_index}"
        layer = self.decoder_layers(model)[layer_index]
        targets = {}
        for name, module in layer.named_modules():
            full = f"{prefix}.{name}"
            if name and is_linear_like(module) and not any(fnmatch.fnmatch(full, p) for p in ignore):
                targets[full] = module
        return targets

    def num_layers(self, model: nn.Module) -> int:
        return len(self.decoder_layers(model))


_LLAMA = ArchitectureAdapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"),
    layers="model.layers",
    embeddings=("model.embed_tokens",),
    final_norm="model.norm",
    lm_head="lm_head",
    attention="self_attn",
    attention_projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp="mlp",
    mlp_projections=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    norms=("input_layernorm", "post_attention_layernorm"),
    attention_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    sliceable_model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
)

_OPT = ArchitectureAdapter(
    family="opt",
    model_types=("opt",),
    layers="model.decoder.layers",
    embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
    final_norm="model.decoder.final_layer_norm",
    lm_head="lm_head",
    attention="self_attn",
    attention_projections=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
    mlp=None,
    mlp_projections=("fc1", "fc2"),
    norms=("self_attn_layer_norm", "final_layer_norm"),
    attention_norm="self_attn_layer_norm",
    mlp_norm="final_layer_norm",
)

_GPT_NEOX = ArchitectureAdapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    embeddings=("gpt_neox.embed_in",),
    final_norm="gpt_neox.final_layer_norm",
    lm_head="embed_out",
    attention="attention",
    attention_projections=("attention.query_key_value", "attention.dense"),
    mlp="mlp",
    mlp_projections=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    norms=("input_layernorm", "post_attention_layernorm"),
    attention_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    fused_qkv=True,
)

_GPT2 = ArchitectureAdapter(
    family="gpt2",
    model_types=("gpt2",),
    layers="transformer.h",
    embeddings=("transformer.wte", "transformer.wpe"),
    final_norm="transformer.ln_f",
    lm_head="lm_head",
    attention="attn",
    attention_projections=("attn.c_attn", "attn.c_proj"),
    mlp="mlp",
    mlp_projections=("mlp.c_fc", "mlp.c_proj"),
    norms=("ln_1", "ln_2"),
    attention_norm="ln_1",
    mlp_norm="ln_2",
    fused_qkv=True,
)

_PHI3 = ArchitectureAdapter(
    family="phi3",
    model_types=("phi3",),
    layers="model.layers",
    embeddings=("model.embed_tokens",),
    final_norm="model.norm",
    lm_head="lm_head",
    attention="self_attn",
    attention_projections=("self_attn.qkv_proj", "self_attn.o_proj"),
    mlp="mlp",
    mlp_projections=("mlp.gate_up_proj", "mlp.down_proj"),
    norms=("input_layernorm", "post_attention_layernorm"),
    attention_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    fused_qkv=True,
)

ADAPTERS: tuple[ArchitectureAdapter, ...] = (_LLAMA, _OPT, _GPT_NEOX, _GPT2, _PHI3)
_BY_MODEL_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def adapter_for_model_type(model_type: str) -> ArchitectureAdapter:
    try:
        return _BY_MODEL_TYPE[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported_model_types())}"
        ) from None


def paths_adapter(model_type: str, layers: str, final_norm: str, lm_head: str = "lm_head") -> ArchitectureAdapter:
    """A depth-only adapter from a model's own module paths (Quark's `model_decoder_layers` and
    `layer_norm_field`), for a family without an entry here: layer removal and every depth criterion need
    only the decoder layers, the final norm and the head; methods that reach into a layer are refused."""
    return ArchitectureAdapter(family=f"{model_type} (given paths)", model_types=(model_type,), layers=layers,
                               embeddings=(), final_norm=final_norm, lm_head=lm_head, attention="",
                               attention_projections=(), mlp_projections=(), norms=(), attention_norm="",
                               mlp_norm="")


@contextmanager
def adapter_added(adapter: ArchitectureAdapter):
    """`adapter` known by its model types for the duration (only types without an adapter of their own)."""
    taken = [t for t in adapter.model_types if t in _BY_MODEL_TYPE]
    if taken:
        raise UnsupportedArchitecture(f"model type(s) {', '.join(taken)} already have an adapter")
    _BY_MODEL_TYPE.update(dict.fromkeys(adapter.model_types, adapter))
    try:
        yield adapter
    finally:
        for model_type in adapter.model_types:
            _BY_MODEL_TYPE.pop(model_type, None)


def get_adapter(model_or_config) -> ArchitectureAdapter:
    """The adapter of a model or config; a config subclass (such as the heterogeneous format's, see
    pruning/heterogeneous.py) is adapted like the transformers config class it extends."""
    config = getattr(model_or_config, "config", model_or_config)
    for config_class in type(config).__mro__:
        if getattr(config_class, "model_type", None) in _BY_MODEL_TYPE:
            return _BY_MODEL_TYPE[config_class.model_type]
    return adapter_for_model_type(getattr(config, "model_type", None))
