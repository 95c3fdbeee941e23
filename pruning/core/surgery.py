"""Structural surgery that really removes parameters.

Plain functions on a loaded *CausalLM model and its `ArchitectureAdapter`:

- `remove_layers`: delete whole decoder layers, update `num_hidden_layers` (and per-layer config lists
  such as `layer_types`) and re-index every `layer_idx`, so the result reloads with plain
  `from_pretrained`.
- `slice_heads`: keep some query heads of one attention (q/k/v rows, or the rows of a fused q/k/v in the
  family's layout; o columns), consistent with grouped-query attention: every kept key-value group keeps
  the same number of query heads. Every family of pruning/core/adapters.py.
- `remove_attention` / `remove_feed_forward`: replace a sub-block (and its norms) by a module returning
  zeros, so the residual stream passes through unchanged. Every family with pre-norm layers.
- `slice_feed_forward`: keep some FFN channels.

Layers that then differ from the config are described by the heterogeneous format (pruning/core/heterogeneous.py),
which `pruning.save_model` records once, before saving.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .adapters import ADAPTERS, ArchitectureAdapter, adapter_for_model_type, supported_model_types
from .heterogeneous import (attention_paths, attention_removed, base_model_type, feed_forward_removed, ffn_width,
                            head_counts, install_removed_attention, install_removed_feed_forward, qkv_rows,
                            set_head_attributes, set_module)


class StructureError(ValueError):
    """A structural change that this model or these arguments do not allow."""


def numel(module: nn.Module) -> int:
    """Parameters of one module (shared ones counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def require_sliceable(model: nn.Module, adapter: ArchitectureAdapter, what: str) -> None:
    """Refuse FFN channel slicing (FLAP) on families where it is not implemented."""
    model_type = base_model_type(model.config)
    if model_type not in adapter.sliceable_model_types:
        supported = sorted({t for a in ADAPTERS for t in a.sliceable_model_types})
        raise StructureError(
            f"{what} needs FFN channel slicing, implemented for model types {', '.join(supported)}; {model_type!r} "
            "is not one of them (head pruning, sub-block and layer removal work for every family)"
        )


def structure_problem(config, what: str, sub_blocks: bool) -> str | None:
    """Why head slicing (and, with `sub_blocks`, attention/FFN sub-block removal) cannot run on a model with
    this config (dict or transformers config), or None; needs only the config, so it is asked before loading."""
    model_type = base_model_type(config)
    if model_type not in supported_model_types():
        return (f"{what} needs an architecture adapter; {model_type!r} is not one of the supported model types "
                f"{', '.join(supported_model_types())}")
    flag = adapter_for_model_type(model_type).pre_norm_flag
    if sub_blocks and flag and not (config.get(flag, True) if isinstance(config, dict) else getattr(config, flag, True)):
        return (f"{what} removes a sub-block together with the norm feeding it, exact only for pre-norm layers; this "
                f"{model_type} config has {flag}=false (head pruning and layer removal work)")
    return None


def require_structured(model: nn.Module, what: str, sub_blocks: bool = False) -> None:
    problem = structure_problem(model.config, what, sub_blocks)
    if problem:
        raise StructureError(problem)


# ----------------------------------------------------------------------------------------------- layers

def _per_layer_config_lists(config) -> list[str]:
    """Config attributes holding one entry per decoder layer (e.g. `layer_types`)."""
    layers = config.num_hidden_layers
    return [key for key in ("layer_types",)
            if isinstance(getattr(config, key, None), (list, tuple)) and len(getattr(config, key)) == layers]


def reindex_layers(model: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Give every module that knows its layer (`layer_idx`, used by the KV cache) its current index."""
    for index, layer in enumerate(adapter.decoder_layers(model)):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = index


def remove_layers(model: nn.Module, adapter: ArchitectureAdapter, indices) -> int:
    """Delete decoder layers `indices` (current indices); returns the number of parameters removed."""
    layers = adapter.decoder_layers(model)
    total = len(layers)
    drop = sorted({int(i) for i in indices})
    if any(i < 0 or i >= total for i in drop):
        raise StructureError(f"layer indices {drop} out of range for a model with {total} layers")
    if len(drop) >= total:
        raise StructureError(f"cannot remove {len(drop)} of {total} layers: at least one must remain")
    before = numel(model)
    keep = [i for i in range(total) if i not in set(drop)]
    config = model.config
    for key in _per_layer_config_lists(config):
        setattr(config, key, [getattr(config, key)[i] for i in keep])
    parent, _, name = adapter.layers.rpartition(".")
    setattr(model.get_submodule(parent), name, nn.ModuleList([layers[i] for i in keep]))
    config.num_hidden_layers = len(keep)
    adapter.renumber_config(config, keep)
    reindex_layers(model, adapter)
    return before - numel(model)


# ------------------------------------------------------------------------------------------ attention

def _attention(layer: nn.Module, adapter: ArchitectureAdapter) -> nn.Module:
    return adapter.layer_part(layer, adapter.attention)


def _is_conv1d(linear: nn.Module) -> bool:
    return type(linear).__name__ == "Conv1D"  # GPT-2: weight stored [in, out]


def _keep_rows(linear: nn.Module, rows: torch.Tensor) -> None:
    """Keep output features `rows` of an nn.Linear or Conv1D."""
    dim = 1 if _is_conv1d(linear) else 0
    linear.weight = nn.Parameter(linear.weight.data.index_select(dim, rows.to(linear.weight.device)).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows.to(linear.bias.device)).clone())
    setattr(linear, "nf" if dim else "out_features", int(rows.numel()))


def _keep_columns(linear: nn.Module, columns: torch.Tensor) -> None:
    """Keep input features `columns` of an nn.Linear or Conv1D."""
    dim = 0 if _is_conv1d(linear) else 1
    linear.weight = nn.Parameter(linear.weight.data.index_select(dim, columns.to(linear.weight.device)).clone())
    setattr(linear, "nx" if dim == 0 else "in_features", int(columns.numel()))


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def gqa_keep_plan(keep_query: list[int], query_heads: int, kv_heads: int) -> tuple[list[int], list[int]]:
    """Validate a set of query heads to keep under grouped-query attention.

    Query head h reads key-value head h // (query_heads // kv_heads). The kept heads must cover whole
    key-value groups with the same number of query heads in each, so that the sliced attention is again
    a valid GQA block. Returns (kept query heads ordered by group, kept key-value heads).
    """
    group = query_heads // kv_heads
    keep = sorted(set(int(h) for h in keep_query))
    if not keep:
        raise StructureError("keeping no query head would remove the attention; use remove_attention")
    if keep[0] < 0 or keep[-1] >= query_heads:
        raise StructureError(f"query heads {keep} out of range for {query_heads} heads")
    per_group: dict[int, list[int]] = {}
    for head in keep:
        per_group.setdefault(head // group, []).append(head)
    counts = {len(v) for v in per_group.values()}
    if len(counts) != 1:
        raise StructureError(
            f"kept query heads {keep} are not GQA-consistent: groups of {group} heads per key-value head keep "
            f"{ {g: len(v) for g, v in sorted(per_group.items())} } heads; every kept group must keep the same number")
    kv_keep = sorted(per_group)
    return [h for g in kv_keep for h in per_group[g]], kv_keep


def slice_heads(model: nn.Module, adapter: ArchitectureAdapter, layer_index: int, keep_query) -> int:
    """Keep only query heads `keep_query` in one layer (and the key-value heads they read); returns the
    number of parameters removed. head_dim is unchanged."""
    require_structured(model, "head slicing")
    layer = adapter.decoder_layers(model)[layer_index]
    if attention_removed(layer, adapter):
        raise StructureError(f"layer {layer_index} has no attention left to slice")
    attention = _attention(layer, adapter)
    head_dim = getattr(attention, adapter.head_dim_attribute)
    query_heads, kv_heads = head_counts(layer, adapter)
    keep_q, keep_kv = gqa_keep_plan(keep_query, query_heads, kv_heads)
    before = numel(layer)
    *inputs, output = (adapter.layer_part(layer, path) for path in adapter.attention_projections)
    for linear, rows in zip(inputs, qkv_rows(adapter, query_heads, kv_heads, keep_q, keep_kv, head_dim)):
        _keep_rows(linear, rows)
    _keep_columns(output, _head_rows(keep_q, head_dim))
    set_head_attributes(attention, adapter, len(keep_q), len(keep_kv))
    return before - numel(layer)


def remove_attention(model: nn.Module, adapter: ArchitectureAdapter, layer_index: int) -> int:
    """Replace one layer's attention and its input norm; returns the number of parameters removed."""
    require_structured(model, "attention removal", sub_blocks=True)
    layer = adapter.decoder_layers(model)[layer_index]
    if attention_removed(layer, adapter):
        return 0
    before = numel(layer)
    install_removed_attention(layer, adapter, layer_index)
    return before - numel(layer)


def remove_feed_forward(model: nn.Module, adapter: ArchitectureAdapter, layer_index: int) -> int:
    """Replace one layer's FFN and its input norm; returns the number of parameters removed."""
    require_structured(model, "FFN removal", sub_blocks=True)
    layer = adapter.decoder_layers(model)[layer_index]
    if feed_forward_removed(layer, adapter):
        return 0
    before = numel(layer)
    install_removed_feed_forward(layer, adapter)
    return before - numel(layer)


@contextmanager
def attention_swapped_out(layer: nn.Module, adapter: ArchitectureAdapter, layer_index: int):
    """Inside the context the layer's attention (and its norms) is removed; restored on exit. Measures
    what removing it would cost without copying the model."""
    paths = attention_paths(adapter)
    saved = [layer.get_submodule(path) for path in paths]
    install_removed_attention(layer, adapter, layer_index)
    try:
        yield layer
    finally:
        for path, module in zip(paths, saved):
            set_module(layer, path, module)


def slice_feed_forward(model: nn.Module, adapter: ArchitectureAdapter, layer_index: int, keep_channels) -> int:
    """Keep only FFN channels `keep_channels` (rows of gate/up, columns of down); returns parameters removed."""
    require_sliceable(model, adapter, "FFN slicing")
    layer = adapter.decoder_layers(model)[layer_index]
    if feed_forward_removed(layer, adapter):
        raise StructureError(f"layer {layer_index} has no FFN left to slice")
    width = ffn_width(layer, adapter)
    keep = sorted(set(int(c) for c in keep_channels))
    if not keep or keep[0] < 0 or keep[-1] >= width:
        raise StructureError(f"FFN channels to keep must be a non-empty subset of range({width})")
    before = numel(layer)
    channels = torch.tensor(keep, dtype=torch.long)
    *inputs, down = (adapter.layer_part(layer, path) for path in adapter.mlp_projections)
    for linear in inputs:
        _keep_rows(linear, channels)
    _keep_columns(down, channels)
    return before - numel(layer)


def removal_report(parameters_before: int, model: nn.Module) -> dict:
    """Exact parameters removed and the prune ratio in % of the model's parameters before pruning."""
    removed = parameters_before - numel(model)
    return {"parameters_before": parameters_before, "parameters_after": parameters_before - removed,
            "parameters_removed": removed, "prune_ratio_percent": round(100.0 * removed / parameters_before, 4)}


def rounded_count(fraction: float, total: int) -> int:
    """fraction × total rounded half up (0.25 × 30 layers → 8)."""
    return int(fraction * total + 0.5)
