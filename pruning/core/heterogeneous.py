"""The heterogeneous-model format: pruned models whose decoder layers differ from each other.

A standard transformers config describes every layer alike. A model with removed heads, attention-free or
FFN-free layers is saved with the base family's config plus a record of every layer:

    "model_type": "pruning_heterogeneous", "pruning_base_model_type": "llama",
    "pruning_layer_structure": [{"num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 0}, ...]

(0 heads: attention removed; 0 intermediate size: FFN removed). A layer whose attention output projection
(o_proj) or FFN output projection (down_proj) carries a bias the base config does not give it (FLAP's bias
compensation, pruning/methods/flap.py) says so with `"attention_output_bias": true` / `"ffn_output_bias": true`
(keys left out when false). This module is the one home of that format:
its names, the per-layer `LayerShape`, how a removed sub-block looks in memory (`RemovedAttention`,
`RemovedFeedForward`), reading shapes off the modules, writing the record into a config (`record_layer_shapes`,
called once before saving), reading and validating it (`layer_shapes`), and loading: importing this module
registers the format with transformers' `AutoConfig` / `AutoModelForCausalLM`, so a plain
`AutoModelForCausalLM.from_pretrained(dir)` rebuilds such a model (base architecture reshaped layer by layer,
then the weights loaded by transformers itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from .adapters import (DEFAULT_CONFIG_KEYS, DEFAULT_OUTPUT_BIAS_KEYS, ArchitectureAdapter, adapter_for_model_type,
                       supported_model_types, weight_matrix)

HETEROGENEOUS_MODEL_TYPE = "pruning_heterogeneous"
BASE_TYPE_KEY = "pruning_base_model_type"
STRUCTURE_KEY = "pruning_layer_structure"
LAYER_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
BIAS_FIELDS = ("attention_output_bias", "ffn_output_bias")  # optional per-layer keys, written only when true


class FormatError(ValueError):
    """A heterogeneous record that does not describe a loadable model."""


@dataclass(frozen=True)
class LayerShape:
    """One decoder layer: query heads, key-value heads and FFN width (0 = sub-block removed), and whether its
    attention / FFN output projection has a bias."""

    heads: int
    kv_heads: int
    ffn: int
    attention_output_bias: bool = False
    ffn_output_bias: bool = False

    def to_record(self) -> dict:
        record = dict(zip(LAYER_FIELDS, (self.heads, self.kv_heads, self.ffn)))
        record.update({key: True for key, flag in zip(BIAS_FIELDS, self.output_biases) if flag})
        return record

    @property
    def output_biases(self) -> tuple[bool, bool]:
        return self.attention_output_bias, self.ffn_output_bias


def _get(config, key: str, default=None):
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


def is_heterogeneous(config) -> bool:
    """Whether a config (dict or transformers config) carries the heterogeneous record."""
    return _get(config, "model_type") == HETEROGENEOUS_MODEL_TYPE


def base_model_type(config) -> str | None:
    """The family's model type: the recorded base type of a heterogeneous config, else `model_type`."""
    return _get(config, BASE_TYPE_KEY) if is_heterogeneous(config) else _get(config, "model_type")


def base_shape(config) -> LayerShape:
    """The shape every layer has in the base config (dict or transformers config), read under the family's own
    config keys (pruning/core/adapters.py): key-value heads default to the query heads, as in transformers' configs
    without grouped-query attention; output biases as the family's flags give them (Llama's `attention_bias` /
    `mlp_bias`, OPT's `enable_bias`, always for GPT-2)."""
    model_type = base_model_type(config)
    adapter = adapter_for_model_type(model_type) if model_type in supported_model_types() else None
    keys, bias_keys, ffn_default = (adapter.config_keys, adapter.output_bias_keys, adapter.ffn_width_default) if adapter \
        else (DEFAULT_CONFIG_KEYS, DEFAULT_OUTPUT_BIAS_KEYS, None)  # no family's model type: Llama's keys
    heads, kv_heads, ffn = (_get(config, key) for key in keys)
    kv_heads = heads if kv_heads is None else kv_heads
    if ffn is None and ffn_default:
        ffn = ffn_default * (_get(config, "n_embd") or _get(config, "hidden_size"))
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (heads, kv_heads, ffn)):
        heads_key, kv_key, ffn_key = keys
        raise FormatError(f"the base config needs positive integers {heads_key}, {ffn_key} (and {kv_key}, else the "
                          f"query heads): got {heads!r}, {ffn!r} ({kv_heads!r})")
    biases = (key if isinstance(key, bool) else bool(_get(config, key, False)) for key in bias_keys)
    return LayerShape(heads, kv_heads, ffn, *biases)


def layer_shapes(config) -> list[LayerShape]:
    """The validated per-layer record of a heterogeneous config (dict or transformers config)."""
    layers, records = _get(config, "num_hidden_layers"), _get(config, STRUCTURE_KEY)
    if not is_heterogeneous(config) or not _get(config, BASE_TYPE_KEY):
        raise FormatError(f"not a heterogeneous pruned model (needs model_type {HETEROGENEOUS_MODEL_TYPE!r} "
                          f"and {BASE_TYPE_KEY})")
    base = base_shape(config)
    if not isinstance(records, list) or len(records) != layers:
        raise FormatError(f"{STRUCTURE_KEY} must list one entry per layer ({layers}), got {records!r:.200}")
    shapes = []
    for index, entry in enumerate(records):
        if not isinstance(entry, dict) or not set(LAYER_FIELDS) <= set(entry) <= set(LAYER_FIELDS + BIAS_FIELDS):
            raise FormatError(f"{STRUCTURE_KEY}[{index}] must have the keys {LAYER_FIELDS} (and optionally "
                              f"{BIAS_FIELDS}), got {entry!r}")
        shape = LayerShape(*(entry[key] for key in LAYER_FIELDS), *(entry.get(key, False) for key in BIAS_FIELDS))
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                   for x in (shape.heads, shape.kv_heads, shape.ffn)):
            raise FormatError(f"{STRUCTURE_KEY}[{index}] values must be non-negative integers, got {entry!r}")
        if not all(isinstance(flag, bool) for flag in shape.output_biases) \
                or (shape.attention_output_bias and not shape.heads) or (shape.ffn_output_bias and not shape.ffn):
            raise FormatError(f"{STRUCTURE_KEY}[{index}] = {entry}: {BIAS_FIELDS} must be true or false, and true "
                              "only on a sub-block that is kept")
        if (shape.heads == 0) != (shape.kv_heads == 0) or (shape.kv_heads and shape.heads % shape.kv_heads) \
                or shape.heads > base.heads or shape.kv_heads > base.kv_heads or shape.ffn > base.ffn:
            raise FormatError(f"{STRUCTURE_KEY}[{index}] = {entry} does not fit the base config "
                              f"{base.to_record()} (heads a multiple of key-value heads, both 0 when removed)")
        shapes.append(shape)
    return shapes


# ------------------------------------------------------------------------------------ in memory

class RemovedAttention(nn.Module):
    """Stands in for a removed attention sub-block: adds nothing to the residual stream.

    With a KV cache it stores one zero per token (a single head of size 1), so that the cache still
    knows how many tokens were seen when the model's first layer is one of these.
    """

    def __init__(self, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, cache=None, past_key_values=None,
                layer_past=None, **kwargs):
        cache = next((c for c in (cache, past_key_values, layer_past) if c is not None), None)  # families name it
        if cache is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class RemovedFeedForward(nn.Module):
    """Stands in for a removed FFN sub-block: adds nothing to the residual stream."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def attention_paths(adapter: ArchitectureAdapter) -> tuple[str, ...]:
    """The modules that make up one layer's attention sub-block: the attention and its norms."""
    return (adapter.attention, adapter.attention_norm) + ((adapter.attention_post_norm,) if adapter.attention_post_norm else ())


def feed_forward_paths(adapter: ArchitectureAdapter) -> tuple[str, ...]:
    """The modules of one layer's FFN sub-block: the MLP (or its projections, where they sit in the layer, OPT)
    and its norms."""
    body = (adapter.mlp,) if adapter.mlp else adapter.mlp_projections
    return body + (adapter.mlp_norm,) + ((adapter.mlp_post_norm,) if adapter.mlp_post_norm else ())


def install_removed_attention(layer: nn.Module, adapter: ArchitectureAdapter, layer_index: int) -> None:
    """Replace one layer's attention and its norms by their removed stand-ins."""
    for path in attention_paths(adapter):
        set_module(layer, path, RemovedAttention(layer_index) if path == adapter.attention else nn.Identity())


def install_removed_feed_forward(layer: nn.Module, adapter: ArchitectureAdapter) -> None:
    """Replace one layer's FFN and its norms: the last projection (or the MLP) returns zeros, the rest pass on."""
    last = adapter.mlp or adapter.mlp_projections[-1]
    for path in feed_forward_paths(adapter):
        set_module(layer, path, RemovedFeedForward() if path == last else nn.Identity())


def attention_removed(layer: nn.Module, adapter: ArchitectureAdapter) -> bool:
    return isinstance(adapter.layer_part(layer, adapter.attention), RemovedAttention)


def feed_forward_removed(layer: nn.Module, adapter: ArchitectureAdapter) -> bool:
    return isinstance(adapter.layer_part(layer, adapter.mlp or adapter.mlp_projections[-1]), RemovedFeedForward)


def out_features(module: nn.Module) -> int:
    return weight_matrix(module).shape[0]


def in_features(module: nn.Module) -> int:
    return weight_matrix(module).shape[1]


def head_counts(layer: nn.Module, adapter: ArchitectureAdapter) -> tuple[int, int]:
    """(query heads, key-value heads) of one decoder layer; (0, 0) when its attention is removed. Query heads
    from the output projection's inputs; key-value heads from k, or from what a fused q/k/v has beyond q."""
    if attention_removed(layer, adapter):
        return 0, 0
    head_dim = getattr(adapter.layer_part(layer, adapter.attention), adapter.head_dim_attribute)
    first, second, *_ = (adapter.layer_part(layer, path) for path in adapter.attention_projections)
    heads = in_features(adapter.layer_part(layer, adapter.attention_projections[-1])) // head_dim
    if adapter.qkv_layout is None:
        return heads, out_features(second) // head_dim
    return heads, (out_features(first) // head_dim - heads) // 2


class LayerConfigView:
    """One layer's view of the model config with its own values for some keys (Phi-3's attention reads its
    query width from the config); everything else is the model config's."""

    def __init__(self, config, **overrides):
        if isinstance(config, LayerConfigView):  # a view of a view: one view with both sets of overrides
            overrides = {**{k: v for k, v in vars(config).items() if k != "_base"}, **overrides}
            config = vars(config)["_base"]
        vars(self).update(_base=config, **overrides)

    def __getattr__(self, name):
        base = self.__dict__.get("_base")
        if base is None:
            raise AttributeError(name)
        return getattr(base, name)


def set_head_attributes(attention: nn.Module, adapter: ArchitectureAdapter, heads: int, kv_heads: int) -> None:
    """Give an attention module whose projections now hold `heads` / `kv_heads` the matching attributes."""
    head_dim = getattr(attention, adapter.head_dim_attribute)
    values = {"heads": heads, "kv_heads": kv_heads, "groups": heads // kv_heads, "width": heads * head_dim}
    for attribute, quantity in adapter.head_attributes:
        if attribute.startswith("config."):
            attention.config = LayerConfigView(attention.config, **{attribute[len("config."):]: values[quantity]})
        else:
            setattr(attention, attribute, values[quantity])


def qkv_rows(adapter: ArchitectureAdapter, heads: int, kv_heads: int, keep_query: list[int], keep_kv: list[int],
             head_dim: int) -> tuple[torch.Tensor, ...]:
    """Output rows to keep of each input projection of the attention (q, k, v; or the one fused q/k/v) when a
    layer with `heads` query and `kv_heads` key-value heads keeps query heads `keep_query` and key-value heads
    `keep_kv`."""
    def rows(indices, stride=head_dim, offset=0):
        return torch.tensor([offset + h * stride + d for h in indices for d in range(head_dim)], dtype=torch.long)

    if adapter.qkv_layout is None:
        return rows(keep_query), rows(keep_kv), rows(keep_kv)
    if adapter.qkv_layout == "per_head":  # [q_h k_h v_h] per head: these families have no grouped-query attention
        return (torch.cat([rows([h], 3 * head_dim, part * head_dim) for h in keep_query for part in range(3)]),)
    return (torch.cat([rows(keep_query), rows(keep_kv, offset=heads * head_dim),
                       rows(keep_kv, offset=(heads + kv_heads) * head_dim)]),)


def ffn_width(layer: nn.Module, adapter: ArchitectureAdapter) -> int:
    if feed_forward_removed(layer, adapter):
        return 0
    return in_features(adapter.layer_part(layer, adapter.mlp_projections[-1]))


def output_biases(layer: nn.Module, adapter: ArchitectureAdapter) -> tuple[bool, bool]:
    """Whether the attention and the FFN output projections of one layer have a bias (False when removed)."""
    return tuple(not removed(layer, adapter) and adapter.layer_part(layer, path).bias is not None
                 for removed, path in ((attention_removed, adapter.attention_projections[-1]),
                                       (feed_forward_removed, adapter.mlp_projections[-1])))


def layer_structure(model: nn.Module, adapter: ArchitectureAdapter) -> list[LayerShape]:
    """Every decoder layer's shape, read from the modules themselves."""
    return [LayerShape(*head_counts(layer, adapter), ffn_width(layer, adapter), *output_biases(layer, adapter))
            for layer in adapter.decoder_layers(model)]


def add_output_bias(linear: nn.Module, bias: torch.Tensor) -> None:
    """Add `bias` to a linear layer's output: into its bias, or as a new bias where it has none."""
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(out_features(linear), device=linear.weight.device,
                                               dtype=linear.weight.dtype), requires_grad=linear.weight.requires_grad)
    linear.bias.data += bias.to(linear.bias.device, linear.bias.dtype)


def _resized(linear: nn.Module, rows: int, columns: int) -> nn.Module:
    """A new, unloaded linear layer like `linear` (nn.Linear or GPT-2's Conv1D) with [rows, columns] weights."""
    if type(linear).__name__ == "Conv1D":
        resized = type(linear)(rows, columns)
        return resized.to(device=linear.weight.device, dtype=linear.weight.dtype)
    return nn.Linear(columns, rows, bias=linear.bias is not None, device=linear.weight.device, dtype=linear.weight.dtype)


def shape_layers(model: nn.Module, adapter: ArchitectureAdapter, shapes: list[LayerShape]) -> None:
    """Give a freshly built model the recorded layer shapes (new, unloaded projections of the right sizes)."""
    base = base_shape(model.config)
    for index, (layer, shape) in enumerate(zip(adapter.decoder_layers(model), shapes)):
        if shape.heads == 0:
            install_removed_attention(layer, adapter, index)
        elif (shape.heads, shape.kv_heads) != (base.heads, base.kv_heads):
            attention = adapter.layer_part(layer, adapter.attention)
            head_dim = getattr(attention, adapter.head_dim_attribute)
            *inputs, output = adapter.attention_projections
            widths = [len(rows) for rows in qkv_rows(adapter, shape.heads, shape.kv_heads, list(range(shape.heads)),
                                                     list(range(shape.kv_heads)), head_dim)]
            for path, width in zip(inputs, widths):
                linear = adapter.layer_part(layer, path)
                set_module(layer, path, _resized(linear, width, in_features(linear)))
            linear = adapter.layer_part(layer, output)
            set_module(layer, output, _resized(linear, out_features(linear), shape.heads * head_dim))
            set_head_attributes(attention, adapter, shape.heads, shape.kv_heads)
        if shape.ffn == 0:
            install_removed_feed_forward(layer, adapter)
        elif shape.ffn != base.ffn:
            *inputs, down = adapter.mlp_projections
            for path in inputs:
                linear = adapter.layer_part(layer, path)
                set_module(layer, path, _resized(linear, shape.ffn, in_features(linear)))
            linear = adapter.layer_part(layer, down)
            set_module(layer, down, _resized(linear, out_features(linear), shape.ffn))
        for flag, path in zip(shape.output_biases, (adapter.attention_projections[-1], adapter.mlp_projections[-1])):
            if flag and adapter.layer_part(layer, path).bias is None:
                add_output_bias(adapter.layer_part(layer, path), torch.zeros(()))


# -------------------------------------------------------------------------- config and transformers

class HeterogeneousConfig(PretrainedConfig):
    """What `AutoConfig` finds for model_type "pruning_heterogeneous": it reads the recorded base type and
    returns the base family's config (as its heterogeneous subclass), validated."""

    model_type = HETEROGENEOUS_MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        base_type = config_dict.get(BASE_TYPE_KEY)
        if base_type not in CONFIG_MAPPING or base_type == HETEROGENEOUS_MODEL_TYPE:
            raise FormatError(f"heterogeneous model with base model type {base_type!r}: not a model type this "
                              "transformers version knows")
        if base_type not in supported_model_types():
            raise FormatError(f"heterogeneous layers are not supported for {base_type!r}")
        plain = {k: v for k, v in config_dict.items() if k not in ("model_type", BASE_TYPE_KEY, STRUCTURE_KEY)}
        loaded = heterogeneous_config_class(CONFIG_MAPPING[base_type]).from_dict(plain, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        setattr(config, BASE_TYPE_KEY, base_type)
        setattr(config, STRUCTURE_KEY, config_dict.get(STRUCTURE_KEY))
        layer_shapes(config)
        return loaded


_CONFIG_CLASSES: dict[type, type] = {}


def heterogeneous_config_class(base: type) -> type:
    """The heterogeneous subclass of a family's config class (serialized with the heterogeneous model_type),
    registered with `AutoModelForCausalLM` together with its model class."""
    if base not in _CONFIG_CLASSES:
        config_class = type(f"Heterogeneous{base.__name__}", (base,),
                            {"model_type": HETEROGENEOUS_MODEL_TYPE, "base_config_class": base, "__module__": __name__})
        base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base]

        def __init__(self, config, *args, **kwargs):
            base_model.__init__(self, config, *args, **kwargs)
            shape_layers(self, adapter_for_model_type(config.base_config_class.model_type), layer_shapes(config))

        # named like its base, so that `architectures` in a re-saved config.json stays e.g. LlamaForCausalLM; not
        # "custom code" to transformers, so the base's checkpoint key renamings (GPT-NeoX's embed_out) apply on load
        # as they did on save
        model_class = type(base_model.__name__, (base_model,), {"config_class": config_class, "__init__": __init__,
                                                                "is_custom_code": classmethod(lambda cls: False),
                                                                "__module__": __name__,
                                                                "__qualname__": f"Heterogeneous{base_model.__name__}"})
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
        _CONFIG_CLASSES[base] = config_class
    return _CONFIG_CLASSES[base]


def record_layer_shapes(model: nn.Module) -> bool:
    """Make the config describe the modules, before saving: the heterogeneous record when some layer
    differs from the base config, the plain config
    otherwise. Returns whether the model is heterogeneous."""
    config = model.config
    base_type = base_model_type(config)
    if base_type not in supported_model_types():
        return False
    adapter = adapter_for_model_type(base_type)
    if not adapter.mlp_projections:  # mixture of experts: no method slices or removes their sub-blocks
        return False
    shapes = layer_structure(model, adapter)
    uniform = base_shape(config)
    base_class = getattr(type(config), "base_config_class", type(config))
    if all(shape == uniform for shape in shapes):
        if base_class is not type(config):
            config.__class__ = base_class
            for key in (BASE_TYPE_KEY, STRUCTURE_KEY):
                config.__dict__.pop(key, None)
        return False
    if base_class is type(config):
        setattr(config, BASE_TYPE_KEY, base_class.model_type)
        config.__class__ = heterogeneous_config_class(base_class)
    setattr(config, STRUCTURE_KEY, [shape.to_record() for shape in shapes])
    return True


AutoConfig.register(HETEROGENEOUS_MODEL_TYPE, HeterogeneousConfig, exist_ok=True)
