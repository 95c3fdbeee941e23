"""GGUF hyper-parameters: the numbers llama.cpp needs, read from each family's config (whatever the config
calls them) and written as the architecture's GGUF keys. `ExportError` lives here, at the bottom of the
exporter's modules (hyper-parameters ← families ← vocabulary ← tensor plan ← writer), as every one raises it."""
from __future__ import annotations

from dataclasses import dataclass

import gguf


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


def llama_like(config: dict) -> Hyper:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    fraction = rope_settings(config).get("partial_rotary_factor", 1.0)
    return Hyper(layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                 kv_heads=config.get("num_key_value_heads") or heads, ffn=config["intermediate_size"],
                 head_dim=head_dim, context=config.get("max_position_embeddings", 2048), vocab=config["vocab_size"],
                 norm_eps=config.get("rms_norm_eps", 1e-6), rope_dims=int(head_dim * fraction))


def gpt2(config: dict) -> Hyper:
    hidden, heads = config["n_embd"], config["n_head"]
    return Hyper(layers=config["n_layer"], hidden=hidden, heads=heads, kv_heads=heads,
                 ffn=config.get("n_inner") or 4 * hidden, head_dim=hidden // heads, context=config["n_positions"],
                 vocab=config["vocab_size"], norm_eps=config.get("layer_norm_epsilon", 1e-5), rms_norm=False)


def gpt_neox(config: dict) -> Hyper:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    fraction = rope_settings(config).get("partial_rotary_factor", config.get("rotary_pct", 1.0))
    return Hyper(layers=config["num_hidden_layers"], hidden=hidden, heads=heads, kv_heads=heads,
                 ffn=config["intermediate_size"], head_dim=hidden // heads,
                 context=config.get("max_position_embeddings", 2048), vocab=config["vocab_size"],
                 norm_eps=config.get("layer_norm_eps", 1e-5), rms_norm=False,
                 rope_dims=int(hidden // heads * fraction), parallel_residual=config.get("use_parallel_residual", True))


def rope_settings(config: dict) -> dict:
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


def add_hyperparameters(writer: gguf.GGUFWriter, hyper: Hyper, layers: list, per_layer: bool, config: dict) -> None:
    """Block count, sizes, per-layer head and FFN counts (lists when `per_layer`), rope, norms and vocab size."""
    writer.add_block_count(len(layers))
    writer.add_context_length(hyper.context)
    writer.add_embedding_length(hyper.hidden)
    if per_layer:
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
        rope = rope_settings(config)
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
