"""GGUF hyper-parameters: the numbers llama.cpp needs, read from each family's config (whatever the config
calls them) and written as the architecture's GGUF keys. `ExportError` lives here, at the bottom of the
exporter's modules (hyper-parameters ← families ← vocabulary ← tensor plan ← writer), as every one raises it."""
from __future__ import annotations

import dataclasses
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
    # Gemma-2/3: sliding-window attention on some layers, soft-capped logits, a rope base for sliding layers
    sliding_window: int | None = None
    sliding_window_period: int | None = None  # written only where the loader reads it (Gemma-3)
    attention_softcap: float | None = None
    final_softcap: float | None = None
    rope_base_sliding: float | None = None


def llama_like(config: dict) -> Hyper:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    fraction = rope_settings(config).get("partial_rotary_factor", 1.0)
    return Hyper(layers=config["num_hidden_layers"], hidden=config["hidden_size"], heads=heads,
                 kv_heads=config.get("num_key_value_heads") or heads, ffn=config["intermediate_size"],
                 head_dim=head_dim, context=config.get("max_position_embeddings", 2048), vocab=config["vocab_size"],
                 norm_eps=config.get("rms_norm_eps", 1e-6), rope_dims=int(head_dim * fraction))


SLIDING, FULL = "sliding_attention", "full_attention"
# llama.cpp takes Gemma's attention scale from the head size, except for the 27B models it recognises by their
# layer count, where it uses hidden / heads (its `f_attention_scale`); other query_pre_attn_scalar values are
# not representable in the file.
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3_text": 62}
_GEMMA_DEFAULT_PERIOD = {"gemma2": 2, "gemma3_text": 6}


def swa_period(layer_types: list[str]) -> int:
    """The period p of llama.cpp's `set_swa_pattern(p)` giving these layer types: layer i slides unless
    i % p == p - 1 (p = 0: every layer slides; p = 1: none does); ExportError when no period does."""
    sliding = [kind == SLIDING for kind in layer_types]
    for period in range(len(sliding) + 1):
        if all(s == (period == 0 or i % period < period - 1) for i, s in enumerate(sliding)):
            return period
    raise ExportError(f"layer types {layer_types} (after pruning) follow no sliding-window period, the only pattern "
                      "llama.cpp's Gemma-3 graph can express (every p-th layer full); remove layers so the full-attention "
                      "layers stay evenly spaced")


def gemma_sliding(config: dict) -> Hyper:
    """Gemma-2 / Gemma-3: llama-like sizes plus sliding-window layers, logit soft-capping and the attention scale
    llama.cpp hard-codes (checked against `query_pre_attn_scalar`)."""
    model_type = config["model_type"]
    hyper = llama_like(config)
    layers = hyper.layers
    expected = hyper.hidden // hyper.heads if layers == _GEMMA_27B_LAYERS[model_type] else hyper.head_dim
    if config.get("query_pre_attn_scalar", expected) != expected:
        raise ExportError(f"{model_type} with query_pre_attn_scalar {config['query_pre_attn_scalar']} cannot be exported: "
                          f"llama.cpp scales attention by 1/sqrt({expected}) for a {layers}-layer model")
    pattern = config.get("sliding_window_pattern") or _GEMMA_DEFAULT_PERIOD[model_type]  # configs without layer_types
    types = config.get("layer_types") or [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    if len(types) != layers:
        raise ExportError(f"layer_types has {len(types)} entries for {layers} layers")
    alternating = [SLIDING if i % 2 == 0 else FULL for i in range(layers)]
    if model_type == "gemma2" and types != alternating:
        raise ExportError(f"gemma2 layer types {types} (after pruning) are not alternating sliding/full, the only pattern "
                          "llama.cpp's Gemma-2 graph runs; remove layers in pairs to keep it")
    sliding = rope_settings(config, SLIDING)
    return dataclasses.replace(
        hyper, sliding_window=int(config["sliding_window"]),
        sliding_window_period=swa_period(types) if model_type != "gemma2" else None,
        attention_softcap=config.get("attn_logit_softcapping"), final_softcap=config.get("final_logit_softcapping"),
        rope_base_sliding=float(sliding["rope_theta"]) if model_type != "gemma2" else None)


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


def rope_settings(config: dict, layer_type: str = FULL) -> dict:
    """rope theta and scaling from a transformers 5 (`rope_parameters`, per layer type for Gemma-3) or older
    (`rope_theta`, `rope_scaling`, `rope_local_base_freq`) config; `layer_type` picks the sliding layers' rope."""
    params = dict(config.get("rope_parameters") or {})
    if layer_type in params or FULL in params:
        params = dict(params.get(layer_type) or {})
    elif layer_type == SLIDING and "rope_local_base_freq" in config:
        params = {"rope_theta": config["rope_local_base_freq"]}
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
    if hyper.sliding_window is not None:
        writer.add_sliding_window(hyper.sliding_window)
    if hyper.sliding_window_period is not None:
        writer.add_sliding_window_pattern(hyper.sliding_window_period)
    if hyper.rope_base_sliding is not None:
        writer.add_rope_freq_base_swa(hyper.rope_base_sliding)
    if hyper.attention_softcap is not None:
        writer.add_attn_logit_softcapping(float(hyper.attention_softcap))
    if hyper.final_softcap is not None:
        writer.add_final_logit_softcapping(float(hyper.final_softcap))
    if hyper.parallel_residual is not None:
        writer.add_parallel_residual(bool(hyper.parallel_residual))
    writer.add_vocab_size(hyper.vocab)
