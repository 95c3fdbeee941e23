"""Structural surgery that really removes parameters, and the record that lets such models reload.

Plain functions on a loaded *CausalLM model and its `ArchitectureAdapter`:

- `remove_layers`: delete whole decoder layers, update `num_hidden_layers` (and per-layer config lists
  such as `layer_types`) and re-index every `layer_idx`, so the result reloads with plain
  `from_pretrained`.
- `slice_heads`: keep some query heads of one attention (q/k/v rows, o columns), consistent with
  grouped-query attention: every kept key-value group keeps the same number of query heads.
- `remove_attention` / `remove_feed_forward`: replace a sub-block (and the norm feeding it) by a module
  returning zeros, so the residual stream passes through unchanged.
- `slice_feed_forward`: keep some FFN channels.

Layers that differ from the config (other head counts, removed sub-blocks) cannot be described by a
standard transformers config. `record_structure` then turns the in-memory config into the heterogeneous
record (model_type "pruning_heterogeneous", `pruning_base_model_type`, `pruning_layer_structure`), so
`save_pretrained` writes it and plain `from_pretrained` refuses the directory; `load_heterogeneous`
rebuilds such a model exactly.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .adapters import ADAPTERS, ArchitectureAdapter, adapter_for_model_type
from .modeling import HETEROGENEOUS_MODEL_TYPE, ModelLoadError, read_config

BASE_TYPE_KEY = "pruning_base_model_type"
STRUCTURE_KEY = "pruning_layer_structure"
STRUCTURE_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


class StructureError(ValueError):
    """A structural change that this model or these arguments do not allow."""


class RemovedAttention(nn.Module):
    """Stands in for a removed attention sub-block: adds nothing to the residual stream.

    With a KV cache it stores one zero per token (a single head of size 1), so that the cache still
    knows how many tokens were seen when the model's first layer is one of these.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, past_key_values=None, **kwargs):
        if past_key_values is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            past_key_values.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class RemovedFeedForward(nn.Module):
    """Stands in for a removed FFN sub-block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _set(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def numel(module: nn.Module) -> int:
    """Parameters of one module (shared ones counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _model_type(model: nn.Module) -> str:
    config = model.config
    return getattr(config, BASE_TYPE_KEY, None) or config.model_type


def require_sliceable(model: nn.Module, adapter: ArchitectureAdapter, what: str) -> None:
    """Refuse head slicing / sub-block removal on families where it is not implemented."""
    model_type = _model_type(model)
    if model_type not in adapter.sliceable_model_types:
        supported = sorted({t for a in ADAPTERS for t in a.sliceable_model_types})
        raise StructureError(
            f"{what} needs per-head slicing and attention/FFN sub-block removal, implemented for model types "
            f"{', '.join(supported)}; {model_type!r} is not one of them (layer removal works for every family)"
        )


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
    reindex_layers(model, adapter)
    record_structure(model, adapter)
    return before - numel(model)


# ------------------------------------------------------------------------------------------ attention

def _attention(layer: nn.Module, adapter: ArchitectureAdapter) -> nn.Module:
    return adapter.layer_part(layer, adapter.attention)


def _projections(layer: nn.Module, adapter: ArchitectureAdapter) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    q, k, v, o = (adapter.layer_part(layer, path) for path in adapter.attention_projections)
    return q, k, v, o


def attention_removed(layer: nn.Module, adapter: ArchitectureAdapter) -> bool:
    return isinstance(_attention(layer, adapter), RemovedAttention)


def feed_forward_removed(layer: nn.Module, adapter: ArchitectureAdapter) -> bool:
    return isinstance(adapter.layer_part(layer, adapter.mlp), RemovedFeedForward)


def head_counts(layer: nn.Module, adapter: ArchitectureAdapter) -> tuple[int, int]:
    """(query heads, key-value heads) of one decoder layer; (0, 0) when its attention is removed."""
    if attention_removed(layer, adapter):
        return 0, 0
    attention = _attention(layer, adapter)
    head_dim = getattr(attention, adapter.head_dim_attribute)
    q, k, _, _ = _projections(layer, adapter)
    return q.out_features // head_dim, k.out_features // head_dim


def ffn_width(layer: nn.Module, adapter: ArchitectureAdapter) -> int:
    if feed_forward_removed(layer, adapter):
        return 0
    return adapter.layer_part(layer, adapter.mlp_projections[-1]).in_features


def _keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, rows.to(linear.weight.device)).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows.to(linear.bias.device)).clone())
    linear.out_features = int(rows.numel())


def _keep_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data.index_select(1, columns.to(linear.weight.device)).clone())
    linear.in_features = int(columns.numel())


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
    require_sliceable(model, adapter, "head slicing")
    layer = adapter.decoder_layers(model)[layer_index]
    if attention_removed(layer, adapter):
        raise StructureError(f"layer {layer_index} has no attention left to slice")
    attention = _attention(layer, adapter)
    head_dim = getattr(attention, adapter.head_dim_attribute)
    query_heads, kv_heads = head_counts(layer, adapter)
    keep_q, keep_kv = gqa_keep_plan(keep_query, query_heads, kv_heads)
    before = numel(layer)
    q, k, v, o = _projections(layer, adapter)
    q_rows, kv_rows = _head_rows(keep_q, head_dim), _head_rows(keep_kv, head_dim)
    _keep_rows(q, q_rows)
    _keep_rows(k, kv_rows)
    _keep_rows(v, kv_rows)
    _keep_columns(o, q_rows)
    setattr(attention, adapter.kv_groups_attribute, len(keep_q) // len(keep_kv))
    record_structure(model, adapter)
    return before - numel(layer)


def remove_attention(model: nn.Module, adapter: ArchitectureAdapter, layer_index: int) -> int:
    """Replace one layer's attention and its input norm; returns the number of parameters removed."""
    require_sliceable(model, adapter, "attention removal")
    layer = adapter.decoder_layers(model)[layer_index]
    if attention_removed(layer, adapter):
        return 0
    before = numel(layer)
    _set(layer, adapter.attention, RemovedAttention(layer_index))
    _set(layer, adapter.attention_norm, nn.Identity())
    record_structure(model, adapter)
    return before - numel(layer)


def remove_feed_forward(model: nn.Module, adapter: ArchitectureAdapter, layer_index: int) -> int:
    """Replace one layer's FFN and its input norm; returns the number of parameters removed."""
    require_sliceable(model, adapter, "FFN removal")
    layer = adapter.decoder_layers(model)[layer_index]
    if feed_forward_removed(layer, adapter):
        return 0
    before = numel(layer)
    _set(layer, adapter.mlp, RemovedFeedForward())
    _set(layer, adapter.mlp_norm, nn.Identity())
    record_structure(model, adapter)
    return before - numel(layer)


@contextmanager
def attention_swapped_out(layer: nn.Module, adapter: ArchitectureAdapter, layer_index: int):
    """Inside the context the layer's attention (and its input norm) is removed; restored on exit. Measures
    what removing it would cost without copying the model."""
    paths = (adapter.attention, adapter.attention_norm)
    saved = [layer.get_submodule(path) for path in paths]
    _set(layer, adapter.attention, RemovedAttention(layer_index))
    _set(layer, adapter.attention_norm, nn.Identity())
    try:
        yield layer
    finally:
        for path, module in zip(paths, saved):
            _set(layer, path, module)


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
    record_structure(model, adapter)
    return before - numel(layer)


# ----------------------------------------------------------------------------------- config record

def layer_structure(model: nn.Module, adapter: ArchitectureAdapter) -> list[dict]:
    """One {num_attention_heads, num_key_value_heads, intermediate_size} per decoder layer, read from
    the modules themselves (0 heads: attention removed; 0 intermediate: FFN removed)."""
    structure = []
    for layer in adapter.decoder_layers(model):
        heads, kv_heads = head_counts(layer, adapter)
        structure.append({"num_attention_heads": heads, "num_key_value_heads": kv_heads,
                          "intermediate_size": ffn_width(layer, adapter)})
    return structure


_HETEROGENEOUS_CLASSES: dict[type, type] = {}


def _heterogeneous_class(base: type) -> type:
    """A subclass of the base config class whose serialized model_type is the heterogeneous one."""
    if base not in _HETEROGENEOUS_CLASSES:
        _HETEROGENEOUS_CLASSES[base] = type(f"Heterogeneous{base.__name__}", (base,),
                                            {"model_type": HETEROGENEOUS_MODEL_TYPE, "pruning_base_class": base})
    return _HETEROGENEOUS_CLASSES[base]


def record_structure(model: nn.Module, adapter: ArchitectureAdapter) -> bool:
    """Make the config describe the modules: the heterogeneous record when some layer differs from the
    base config (only families that can slice have such layers), the plain config otherwise.
    Returns whether the model is heterogeneous."""
    config = model.config
    if _model_type(model) not in adapter.sliceable_model_types:
        return False
    structure = layer_structure(model, adapter)
    uniform = {"num_attention_heads": config.num_attention_heads,
               "num_key_value_heads": config.num_key_value_heads,
               "intermediate_size": config.intermediate_size}
    base_class = getattr(type(config), "pruning_base_class", type(config))
    if all(entry == uniform for entry in structure):
        if base_class is not type(config):
            config.__class__ = base_class
            for key in (BASE_TYPE_KEY, STRUCTURE_KEY):
                config.__dict__.pop(key, None)
        return False
    if base_class is type(config):
        setattr(config, BASE_TYPE_KEY, base_class.model_type)
        config.__class__ = _heterogeneous_class(base_class)
    setattr(config, STRUCTURE_KEY, structure)
    return True


def _check_structure(structure, layers: int, base: dict) -> list[dict]:
    if not isinstance(structure, list) or len(structure) != layers:
        raise ModelLoadError(f"{STRUCTURE_KEY} must list one entry per layer ({layers}), got {structure!r:.200}")
    checked = []
    for index, entry in enumerate(structure):
        if not isinstance(entry, dict) or set(entry) != set(STRUCTURE_FIELDS):
            raise ModelLoadError(f"{STRUCTURE_KEY}[{index}] must have exactly the keys {STRUCTURE_FIELDS}, got {entry!r}")
        heads, kv, width = (entry[k] for k in STRUCTURE_FIELDS)
        if not all(isinstance(x, int) and x >= 0 for x in (heads, kv, width)):
            raise ModelLoadError(f"{STRUCTURE_KEY}[{index}] values must be non-negative integers, got {entry!r}")
        if (heads == 0) != (kv == 0) or (kv and heads % kv) or heads > base["num_attention_heads"] \
                or kv > base["num_key_value_heads"] or width > base["intermediate_size"]:
            raise ModelLoadError(f"{STRUCTURE_KEY}[{index}] = {entry} does not fit the base config {base}")
        checked.append(entry)
    return checked


def apply_layer_structure(model: nn.Module, adapter: ArchitectureAdapter, structure: list[dict]) -> None:
    """Reshape a freshly built (typically empty-weight) model to `structure`. Which heads or channels are
    kept does not matter here: the weights are loaded afterwards."""
    config = model.config
    group = config.num_attention_heads // config.num_key_value_heads
    for index, entry in enumerate(structure):
        heads, kv_heads, width = (entry[k] for k in STRUCTURE_FIELDS)
        if heads == 0:
            remove_attention(model, adapter, index)
        elif (heads, kv_heads) != (config.num_attention_heads, config.num_key_value_heads):
            per_group = heads // kv_heads
            slice_heads(model, adapter, index, [g * group + j for g in range(kv_heads) for j in range(per_group)])
        if width == 0:
            remove_feed_forward(model, adapter, index)
        elif width != config.intermediate_size:
            slice_feed_forward(model, adapter, index, range(width))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(path / shard))
        return state
    raise ModelLoadError(f"{path} holds no model.safetensors (or sharded index); cannot load its weights")


def load_heterogeneous(path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuild a model saved with the heterogeneous record: the base architecture built without
    weights, reshaped layer by layer, then every tensor loaded from safetensors (nothing left random)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    path = Path(path)
    raw = read_config(path)
    base_type = raw.get(BASE_TYPE_KEY)
    if raw.get("model_type") != HETEROGENEOUS_MODEL_TYPE or not base_type:
        raise ModelLoadError(f"{path} is not a heterogeneous pruned model (needs model_type "
                             f"{HETEROGENEOUS_MODEL_TYPE!r} and {BASE_TYPE_KEY})")
    if base_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"{path}: base model type {base_type!r} is unknown to this transformers version")
    adapter = adapter_for_model_type(base_type)
    base = {k: v for k, v in raw.items() if k not in ("model_type", BASE_TYPE_KEY, STRUCTURE_KEY)}
    config = CONFIG_MAPPING[base_type].from_dict(base)
    structure = _check_structure(raw.get(STRUCTURE_KEY), config.num_hidden_layers,
                                 {k: getattr(config, k) for k in STRUCTURE_FIELDS})
    if base_type not in adapter.sliceable_model_types:
        raise ModelLoadError(f"{path}: heterogeneous layers are not supported for {base_type!r}")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_layer_structure(model, adapter, structure)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _read_state_dict(path).items()}
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys:
        raise ModelLoadError(f"{path}: tensors that fit no parameter of the recorded structure: {result.unexpected_keys[:5]}")
    model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(f"{path}: tensors missing from the checkpoint: {missing[:5]}")
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


def removal_report(parameters_before: int, model: nn.Module) -> dict:
    """Exact parameters removed and the prune ratio in % of the model's parameters before pruning."""
    removed = parameters_before - numel(model)
    return {"parameters_before": parameters_before, "parameters_after": parameters_before - removed,
            "parameters_removed": removed, "prune_ratio_percent": round(100.0 * removed / parameters_before, 4)}


def check_fraction(value, what: str) -> float:
    """A fraction of layers or heads to remove: a number in (0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise StructureError(f"{what} must be a number in (0, 1), got {value!r}")
    return float(value)


def rounded_count(fraction: float, total: int) -> int:
    """fraction × total rounded half up (0.25 × 30 layers → 8)."""
    return int(fraction * total + 0.5)
