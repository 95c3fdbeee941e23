"""What a model occupies in memory, read without loading its weights: the per-layer
geometry of a (meta) model, its KV cache and one forward's activations, the stored safetensors, and resident
memory measured in a fresh process. The memory estimate (evaluation/memory.py) and the streaming planner
(core/streaming.py) both build on these."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .heterogeneous import LayerShape
from .dtypes import DEFAULT_DTYPE

# ------------------------------------------------------------------------------- KV cache and activations

@dataclass(frozen=True)
class Geometry:
    """What the memory of one forward pass depends on: per-layer heads and FFN widths, and the model's sizes."""

    layers: list[LayerShape]
    hidden: int
    head_dim: int
    vocab: int
    windows: list[int | None]  # sliding-window length per layer, None for full attention


def kv_cache_layer_bytes(geometry: Geometry, context: int, batch: int, element_bytes: int) -> list[int]:
    """Keys and values each layer caches after `context` tokens × `batch` sequences (a removed attention caches
    one placeholder value per token, see heterogeneous.RemovedAttention)."""
    sizes = []
    for layer, window in zip(geometry.layers, geometry.windows):
        tokens = min(context, window - 1) if window else context  # transformers keeps the last window - 1
        width = layer.kv_heads * geometry.head_dim if layer.heads else 1
        sizes.append(2 * batch * tokens * width * element_bytes)
    return sizes


def kv_cache_bytes(geometry: Geometry, context: int, batch: int, element_bytes: int) -> int:
    return sum(kv_cache_layer_bytes(geometry, context, batch, element_bytes))


def activation_bytes(geometry: Geometry, context: int, batch: int, element_bytes: int, eager: bool = False) -> int:
    """Transient tensors of one forward pass: the logits plus the largest decoder layer's working set."""
    tokens = batch * context
    largest = 0
    for layer in geometry.layers:
        attention = 3 * (layer.heads + layer.kv_heads) * geometry.head_dim  # q, k, v, rotated q and k, output
        if eager and layer.heads:
            attention += 2 * layer.heads * context  # scores and their softmax, per token
        largest = max(largest, 4 * geometry.hidden + max(attention, 3 * layer.ffn))
    return tokens * (largest + geometry.vocab) * element_bytes


# ---------------------------------------------------------------------------------------------- reading

def _config_value(config, *keys, default=None):
    for key in keys:
        value = getattr(config, key, None)
        if value is not None:
            return value
    return default


def geometry(config, model) -> Geometry:
    """Per-layer shapes read off a (meta) model where an adapter can slice its family, else from the config."""
    from . import heterogeneous
    from .adapters import UnsupportedArchitecture, get_adapter

    heads = _config_value(config, "num_attention_heads", "n_head")
    hidden = _config_value(config, "hidden_size", "n_embd", "d_model")
    head_dim = _config_value(config, "head_dim", default=hidden // heads)
    try:
        adapter = get_adapter(config)
    except UnsupportedArchitecture:
        adapter = None
    base_type = heterogeneous.base_model_type(config.to_dict())
    if adapter is not None and base_type in adapter.sliceable_model_types:
        layers = heterogeneous.layer_structure(model, adapter)
    else:
        kv_heads = _config_value(config, "num_key_value_heads", default=heads)
        ffn = _config_value(config, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)
        layers = [LayerShape(heads, kv_heads, ffn)] * _config_value(config, "num_hidden_layers", "n_layer")
    window = _config_value(config, "sliding_window")
    kinds = getattr(config, "layer_types", None) or []
    windows = [window if window and (not kinds or (i < len(kinds) and kinds[i] == "sliding_attention")) else None
               for i in range(len(layers))]
    return Geometry(layers, hidden, head_dim, config.vocab_size, windows)


def meta_model(model_dir: str | os.PathLike):
    """(config, model built on the meta device): every module and shape, no memory for weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from . import heterogeneous  # noqa: F401 - registers the pruned format with AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return config, model


def stored_weights(model_dir: Path) -> tuple[int, set[str]]:
    """Bytes of the safetensors files and the dtypes their headers give (safetensors names: F32, BF16, ...)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    dtypes = set()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            dtypes.update(str(handle.get_slice(name).get_dtype()) for name in handle.keys())
    return sum(file.stat().st_size for file in files), dtypes


_RUNTIME_PROBE = ("import sys\nfrom pruning.core.footprint import meta_model, resident_bytes\n"
                  "meta_model(sys.argv[1])\nprint(resident_bytes())")
_PEAK_PROBE = ("import sys\nfrom pruning.core.footprint import load_and_forward, resident_bytes\n"
               "load_and_forward(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))\n"
               "print(resident_bytes('VmHWM'))")


def resident_bytes(key: str = "VmRSS") -> int:
    """This process's resident memory now (VmRSS) or at its peak (VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {key} in /proc/self/status")


def _probe(code: str, *args) -> int:
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                            env=dict(os.environ, TRANSFORMERS_VERBOSITY="error"))
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring resident memory in a fresh process failed: {tail}")
    return int(result.stdout.split()[-1])


def runtime_bytes(model_dir: str | os.PathLike) -> int:
    """Resident memory of a fresh Python process that imported torch and transformers and built the model's
    modules (on the meta device): what any process running this model pays before its weights."""
    return _probe(_RUNTIME_PROBE, model_dir)


def load_and_forward(model_dir: str | os.PathLike, dtype: str, context: int, batch: int) -> None:
    """What the total estimates: load the model in `dtype` on CPU, one forward over random tokens with a KV cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from .modeling import torch_dtype

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype)).eval()
    tokens = torch.randint(0, model.config.vocab_size, (batch, context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(tokens, use_cache=True)


def measured_peak_bytes(model_dir: str | os.PathLike, dtype: str = DEFAULT_DTYPE, context: int = 512,
                        batch: int = 1) -> int:
    """Peak resident memory (VmHWM) of a fresh process running `load_and_forward`: the measurement the total is
    checked against."""
    return _probe(_PEAK_PROBE, model_dir, dtype, context, batch)
