"""Architecture adapters: where each model family keeps its decoder layers, attention, MLP and norms.

Everything else in the library asks an adapter instead of naming modules itself, so supporting a new
family means adding one `ArchitectureAdapter` entry here; exporting it to GGUF adds one `GGUFFamily` entry
under the same model type in pruning/export/gguf_families.py.
"""
from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

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
    if isinstance(module, ExpertLinear):
        return module.weight
    raise TypeError(f"not a linear layer: {type(module).__name__}")


# config keys of query heads, key-value heads and FFN width, and of the output-projection bias flags, in Llama's
# configs (the default of every family that does not name its own)
DEFAULT_CONFIG_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
DEFAULT_OUTPUT_BIAS_KEYS = ("attention_bias", "mlp_bias")


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
    extra: dict = field(default_factory=dict, hash=False, compare=False)
    # Structured pruning (pruning/core/surgery.py, saved in the format of pruning/core/heterogeneous.py): every family
    # can lose query heads and whole attention / FFN sub-blocks; these fields say how its modules look.
    # FFN channel slicing (FLAP) is implemented for `sliceable_model_types` only.
    sliceable_model_types: tuple[str, ...] = ()
    head_dim_attribute: str = "head_dim"  # the attention's head size attribute
    # layout of a fused q/k/v projection: "blocks" ([all q | all k | all v], Phi-3, GPT-2) or "per_head"
    # ([q_h k_h v_h] per head, GPT-NeoX); None where q, k, v are separate
    qkv_layout: str | None = None
    # attention attributes that follow the head counts, each set to "heads", "kv_heads", "groups" (query heads
    # per key-value head) or "width" (heads x head size); "config.X" overrides X in the layer's view of the config
    head_attributes: tuple[tuple[str, str], ...] = (("num_key_value_groups", "groups"),)
    # norms applied to a sub-block's output (Gemma-2/3), removed with it
    attention_post_norm: str | None = None
    mlp_post_norm: str | None = None
    # config keys of query heads, key-value heads (absent: as many as query heads) and FFN width, and of
    # whether the attention / FFN output projections have a bias (a bool: always or never)
    config_keys: tuple[str, str, str] = DEFAULT_CONFIG_KEYS
    ffn_width_default: int | None = None  # FFN width = this x hidden size when the config leaves it null (GPT-2)
    output_bias_keys: tuple[str | bool, str | bool] = DEFAULT_OUTPUT_BIAS_KEYS
    # a config flag that must be true for the norms to feed the sub-blocks (OPT's post-norm variant has false):
    # removing a sub-block removes its input norm, which is only exact with pre-norm layers
    pre_norm_flag: str | None = None
    # the decoder honours a custom 4D attention mask with explicit position ids (transformers' masking utilities)
    # and the logits are the output embedding of its last hidden state, so the zero-shot scorer can run a
    # document's continuations side by side after one shared context and read only the positions it needs
    custom_attention_masks: bool = False

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

    def renumber_config(self, config, keep: list[int]) -> None:
        """After layer removal (`keep`: the old indices of the surviving layers), rewrite config entries that
        name layers by index; per-layer lists such as `layer_types` are handled by pruning/core/surgery.py."""


_LLAMA = ArchitectureAdapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma"),
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
    custom_attention_masks=True,
)

_GEMMA2 = replace(  # Gemma-2/3: the Llama layout plus a norm after each sub-block; the FFN reads its own pre-norm
    _LLAMA,
    family="gemma2",
    model_types=("gemma2", "gemma3_text"),
    norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
    mlp_norm="pre_feedforward_layernorm",
    attention_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm",
    sliceable_model_types=(),
    custom_attention_masks=False,  # sliding-window layers: packed rows not verified
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
    head_attributes=(("num_heads", "heads"),),
    config_keys=("num_attention_heads", "num_key_value_heads", "ffn_dim"),
    output_bias_keys=("enable_bias", "enable_bias"),
    pre_norm_flag="do_layer_norm_before",
)

_GPT_NEOX = ArchitectureAdapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    embeddings=("gpt_neox.embed_in",),
    final_norm="gpt_neox.final_layer_norm",
    lm_head="lm_head",  # transformers 5 (checkpoints still name it embed_out)
    attention="attention",
    attention_projections=("attention.query_key_value", "attention.dense"),
    mlp="mlp",
    mlp_projections=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    norms=("input_layernorm", "post_attention_layernorm"),
    attention_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    head_dim_attribute="head_size",
    qkv_layout="per_head",
    head_attributes=(),
    output_bias_keys=("attention_bias", True),
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
    qkv_layout="blocks",
    head_attributes=(("num_heads", "heads"), ("split_size", "width")),
    config_keys=("n_head", "num_key_value_heads", "n_inner"),
    ffn_width_default=4,
    output_bias_keys=(True, True),
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
    qkv_layout="blocks",
    head_attributes=(("num_key_value_groups", "groups"), ("num_key_value_heads", "kv_heads"),
                     ("config.num_attention_heads", "heads")),
)

# ------------------------------------------------------------------------------------------ mixture of experts
# transformers 5 stores a layer's experts fused, as 3-D parameters of one module: gate_up_proj
# [experts, 2·I, H] (gate rows, then up rows) and down_proj [experts, H, I]. Each expert's gate, up and down
# projection is exposed to the mask methods as an `ExpertLinear` named `<layer>.mlp.experts.<e>.<part>_proj`
# (the per-expert module names of transformers 4), a [out, in] view that writes through to the parameter. The
# calibration inputs of an expert's linears are the tokens the router sends to it (`feed_expert_inputs`), as
# in the reference MoE pruning code; the router and Qwen2-MoE's shared-expert gate are never targeted.

EXPERT_PARTS = ("gate", "up", "down")


def is_fused_experts(module: nn.Module) -> bool:
    """A transformers 5 experts module in the layout `ExpertLinear` reads: concatenated [gate; up] rows,
    [out, in] per expert, no bias."""
    gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return (isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.dim() == 3
            and getattr(module, "is_concatenated", True) and not getattr(module, "is_transposed", False)
            and not getattr(module, "has_bias", False) and getattr(module, "has_gate", True))


@dataclass(frozen=True, eq=False)
class ExpertLinear:
    """One expert's gate, up or down projection inside a fused experts module (hashed by identity)."""

    experts: nn.Module
    expert: int
    part: str  # one of EXPERT_PARTS

    @property
    def weight(self) -> torch.Tensor:
        """[out, in] view of this expert's rows of the shared 3-D parameter; writes land in the model."""
        if self.part == "down":
            return self.experts.down_proj.data[self.expert]
        gate_up = self.experts.gate_up_proj.data[self.expert]
        half = gate_up.shape[0] // 2
        return gate_up[:half] if self.part == "gate" else gate_up[half:]


def feed_expert_inputs(experts: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor,
                       targets: dict[str, ExpertLinear], on_input) -> None:
    """Call `on_input(name, x)` for every targeted expert linear with the inputs it gets in this forward: for
    gate and up (the same tensor, so they share statistics) the tokens routed to the expert, for down
    act(gate)·up of those tokens under the current weights (already pruned gate/up in one-pass mode).
    An expert that no token reaches gets no call."""
    hidden = hidden.reshape(-1, hidden.shape[-1])
    top_k_index = top_k_index.reshape(hidden.shape[0], -1)
    by_expert: dict[int, dict[str, str]] = {}
    for name, target in targets.items():
        by_expert.setdefault(target.expert, {})[target.part] = name
    for expert in sorted(by_expert):
        parts = by_expert[expert]
        tokens = (top_k_index == expert).any(dim=-1).nonzero().squeeze(-1)
        if tokens.numel() == 0:
            continue
        x = hidden[tokens]
        for part in ("gate", "up"):
            if part in parts:
                on_input(parts[part], x)
        if "down" in parts:
            gate, up = torch.nn.functional.linear(x, experts.gate_up_proj[expert]).chunk(2, dim=-1)
            on_input(parts["down"], experts.act_fn(gate) * up)


@dataclass(frozen=True)
class MoEAdapter(ArchitectureAdapter):
    """A family whose MLP is (in some or all layers) a routed mixture of experts, plus dense linears."""

    routers: tuple[str, ...] = ()  # linear-like gates, relative to one decoder layer, never pruned

    def linear_targets(self, model: nn.Module, layer_index: int, ignore: tuple[str, ...] = ()) -> dict:
        """The dense linears (attention, a shared expert, a dense MLP) minus the routers, then every expert's
        gate, up and down projection, by full name, minus ignored patterns."""
        prefix = f"{self.layers}.{layer_index}"
        routers = {f"{prefix}.{path}" for path in self.routers}
        targets = {name: module for name, module in super().linear_targets(model, layer_index, ignore).items()
                   if name not in routers}
        for name, module in self.decoder_layers(model)[layer_index].named_modules():
            if not is_fused_experts(module):
                continue
            for expert in range(module.gate_up_proj.shape[0]):
                for part in EXPERT_PARTS:
                    full = f"{prefix}.{name}.{expert}.{part}_proj"
                    if not any(fnmatch.fnmatch(full, p) for p in ignore):
                        targets[full] = ExpertLinear(module, expert, part)
        return targets

    def renumber_config(self, config, keep: list[int]) -> None:
        """After layer removal, keep which surviving layers are dense: Qwen-MoE builds layer i as MoE when
        (i+1) % decoder_sparse_step == 0 and i not in mlp_only_layers, so the old positions are rewritten as
        decoder_sparse_step 1 and the dense layers' new indices."""
        step = getattr(config, "decoder_sparse_step", None)
        if step is None:
            return
        dense_before = set(getattr(config, "mlp_only_layers", None) or ())
        dense_before |= {i for i in range(max(keep) + 1) if not (config.num_experts > 0 and (i + 1) % step == 0)}
        config.mlp_only_layers = [new for new, old in enumerate(keep) if old in dense_before]
        config.decoder_sparse_step = 1


_MOE = replace(  # the Llama layout, its MLP a routed mixture of experts
    MoEAdapter(**{f.name: getattr(_LLAMA, f.name) for f in fields(ArchitectureAdapter)}),
    family="moe",
    model_types=("mixtral", "qwen2_moe", "qwen3_moe"),
    mlp_projections=(),  # experts are fused 3-D parameters, not per-projection modules
    sliceable_model_types=(),
    routers=("mlp.gate", "mlp.shared_expert_gate"),
)
MOE_MODEL_TYPES = _MOE.model_types


def mixture_of_experts_type(config) -> str | None:
    """The model type of a config (config.json's dict or a transformers config) when its family routes its MLP
    through experts, else None: which methods can prune such a model each method says (SUPPORTS_MOE)."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    return model_type if model_type in MOE_MODEL_TYPES else None


ADAPTERS: tuple[ArchitectureAdapter, ...] = (_LLAMA, _GEMMA2, _OPT, _GPT_NEOX, _GPT2, _PHI3, _MOE)
_BY_MODEL_TYPE = {model_type: adapter for adapter in ADAPTERS for model_type in adapter.model_types}


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def takes_custom_attention_masks(model_type: str) -> bool:
    """Whether models of this type may be fed packed rows (a 4D mask and position ids); False when unknown."""
    adapter = _BY_MODEL_TYPE.get(model_type)
    return adapter is not None and adapter.custom_attention_masks


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
    pruning/core/heterogeneous.py) is adapted like the transformers config class it extends."""
    config = getattr(model_or_config, "config", model_or_config)
    for config_class in type(config).__mro__:
        if getattr(config_class, "model_type", None) in _BY_MODEL_TYPE:
            return _BY_MODEL_TYPE[config_class.model_type]
    return adapter_for_model_type(getattr(config, "model_type", None))
