"""Out-of-core pruning: a model whose weights do not fit in memory is pruned one decoder layer at a time.

The model's modules are built on the meta device (accelerate's `init_empty_weights`; buffers such as the rotary
tables stay real), and only the weights outside the decoder layers (embeddings, final norm, head) are read.
`StreamedLayers` is the engine's layer source (engine.LAYER_SOURCE): right before the shared engine visits a
layer it reads that layer from the input's safetensors shards (memory-mapped, `safe_open`, one open per read so
nothing stays mapped), and right after it writes the layer, as it is now, to a staging shard in the output
folder and turns its parameters back into meta tensors. A later pass over the same layer reads the staged
version, so several passes (OWL's statistics, then the pruning) see what an in-memory model would. A pass that
only reads (a scoring pass, the layers after a search's candidate) borrows the layer instead and frees it without
writing it. At the end `finish` lays the layers out as the checkpoint's shards (renumbered when a method removed
layers, without the weights of sub-blocks removed while a layer was on disk), adds the shard of the outer weights
and the index, so the directory has the layout `save_model` writes.

Peak memory ≈ runtime + outer weights + one layer + calibration activations, whatever the depth.
`plan_memory` estimates both modes from config.json and the safetensors headers and picks one under a cap.
Methods that need the whole model at once (gradients through it, LoRA recovery, weights changed outside the
engine) are refused before any work by `streaming_refusal`, from each method's own `streaming_refusal`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .model_checks import ModelLoadError
from .protocols import Calibration
from .dtypes import DEFAULT_DTYPE

STREAMED, IN_MEMORY = "streamed", "in-memory"
MODES = (IN_MEMORY, STREAMED)
CALIBRATION = Calibration()  # the defaults
STAGING = ".streamed-layers"  # inside the output's scratch folder; gone before the output appears
INDEX_FILE = "model.safetensors.index.json"  # transformers' name for the shard index
SAFETENSORS_METADATA = {"format": "pt"}  # what transformers expects in a PyTorch safetensors header
_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


class MemoryCapError(ValueError):
    """A memory cap that cannot be honoured (or cannot be read); raised before any work."""


def parse_memory_size(text: str | int) -> int:
    """Bytes from '2GiB', '1.5GB', '512M' (K/M/G/T alone are binary, as GiB), or a plain byte count."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = found and found[2].lower()
    if not found or unit not in _UNITS or float(found[1]) <= 0:
        raise MemoryCapError(f"--max-memory {text!r}: give a positive size such as 2GiB, 1500MB or 4G")
    return int(float(found[1]) * _UNITS[unit])


def human_bytes(value: int) -> str:
    unit = next(unit for unit in (3, 2, 1, 0) if value >= 1024 ** unit or unit == 0)
    return f"{value / 1024 ** unit:.2f} {('B', 'KiB', 'MiB', 'GiB')[unit]}"


# ------------------------------------------------------------------------------------------- which methods

def streaming_refusal(method, *, evaluate: bool = False, recovery_steps: int = 0, save_format: str = "dense",
                      model_config: dict | None = None) -> str | None:
    """Why this run cannot stream its layers (one line), or None when it can."""
    from .sparse_formats import DENSE, save_format_of

    refusal = method.streaming_refusal()
    if refusal:
        return refusal
    if recovery_steps:
        return "recovery fine-tuning (LoRA through the whole model) cannot stream; drop --recover-steps"
    if evaluate:
        return "--evaluate needs the whole model in memory; evaluate the streamed output afterwards"
    if save_format != DENSE:
        return f"--save-format {save_format} needs the whole model in memory; streaming writes dense shards"
    if model_config is not None and save_format_of(model_config) != DENSE:
        return "a sparse (compressed) input checkpoint cannot stream; convert it to dense first"
    return None


# -------------------------------------------------------------------------------------------- the estimate

def _unique_parameters(module: nn.Module) -> list[torch.Tensor]:
    seen, unique = set(), []
    for param in module.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            unique.append(param)
    return unique


def _tensor_bytes(value, depth: int = 3) -> int:
    """Bytes of the tensors an accumulator holds, in its attributes and those of the accumulators it nests."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if depth == 0 or not hasattr(value, "__dict__"):
        return 0
    return sum(_tensor_bytes(item, depth - 1) for item in vars(value).values())


def _statistics_bytes(method, index: int, adapter, model) -> int:
    """Bytes of the input statistics a calibrated mask method holds for decoder layer `index`: its accumulators
    built on the meta device and measured (an upper bound: linears that share an input share one accumulator;
    statistics allocated only when data arrives are not counted)."""
    from .adapters import weight_matrix

    if not hasattr(method, "statistics"):
        return 0
    return sum(_tensor_bytes(method.statistics(weight_matrix(module), torch.device("meta")))
               for module in adapter.linear_targets(model, index).values())


def estimate_pruning_memory(model_dir: str | os.PathLike, method, dtype: str = DEFAULT_DTYPE,
                            nsamples: int = CALIBRATION.nsamples, seqlen: int = CALIBRATION.seqlen,
                            batch_size: int = CALIBRATION.batch_size, *, measure_runtime: bool = True) -> dict:
    """Peak resident memory of pruning `model_dir` with `method`, in memory and streamed, from config.json and
    the safetensors headers (no weight is read). Terms in bytes:

    - runtime: a fresh process with torch and transformers and the model's modules on meta (measured);
    - weights: every parameter in the working dtype; outer: those outside the decoder layers (embeddings,
      norms, head; tied ones once); largest_layer: the largest decoder layer;
    - conversion: a layer (streamed) or the whole file (in memory) read in its stored dtype before conversion;
    - activations: the calibration hidden states (inputs and outputs of a layer: 2 × nsamples × seqlen × hidden)
      plus one batch's working set inside a layer and the method's input statistics for one layer;
    - a calibration-loss search (`searches_by_loss`) also holds a candidate's suffix: one more decoder layer
      (streamed), its hidden states in and out, and one window's float32 logits with their log-softmax.
    """
    from dataclasses import replace

    from .adapters import get_adapter
    from .dtypes import dtype_bytes, safetensors_name
    from .footprint import activation_bytes, geometry, meta_model, runtime_bytes, stored_weights

    element = dtype_bytes(dtype)
    config, model = meta_model(model_dir)
    adapter = get_adapter(model)
    layers = adapter.decoder_layers(model)
    inside = {id(p) for p in layers.parameters()}
    layer_bytes = [sum(p.numel() for p in _unique_parameters(layer)) * element for layer in layers]
    largest = max(range(len(layers)), key=lambda i: layer_bytes[i])
    outer = sum(p.numel() for p in _unique_parameters(model) if id(p) not in inside) * element
    weights = outer + sum(layer_bytes)
    file_bytes, file_dtypes = stored_weights(Path(model_dir))
    converts = bool(file_dtypes) and file_dtypes != {safetensors_name(dtype)}
    file_layer = round(file_bytes * layer_bytes[largest] / max(1, weights)) if converts else 0
    shapes = geometry(config, model)
    hidden_states = 2 * nsamples * seqlen * shapes.hidden * element
    working = activation_bytes(replace(shapes, vocab=0), seqlen, min(batch_size, nsamples), element)
    statistics = _statistics_bytes(method, largest, adapter, model)
    search = method.searches_by_loss()
    suffix = (hidden_states + 2 * seqlen * shapes.vocab * 4) if search else 0
    activations = hidden_states + working + statistics + suffix
    runtime = runtime_bytes(model_dir) if measure_runtime else 0
    in_memory = runtime + weights + (file_bytes if converts else 0) + activations
    streamed = runtime + outer + (1 + search) * (layer_bytes[largest] + file_layer) + activations
    return {"runtime_bytes": runtime, "weights_bytes": weights, "outer_bytes": outer,
            "largest_layer_bytes": layer_bytes[largest], "conversion_bytes": file_bytes if converts else 0,
            "activation_bytes": activations, "statistics_bytes": statistics, "search_suffix_bytes": suffix,
            IN_MEMORY: in_memory, STREAMED: streamed,
            "formula": {IN_MEMORY: "runtime + weights + conversion + activations",
                        STREAMED: "runtime + outer + largest layer (+ its stored copy when converting; twice for a "
                                  "calibration-loss search) + activations"}}


@dataclass
class MemoryPlan:
    """How a prune runs: `mode` (in-memory or streamed), the cap asked for and the estimate behind the choice."""

    mode: str
    max_memory_bytes: int | None = None
    estimate: dict | None = None

    def record(self) -> dict:
        """prune.json's `memory` entry (the measured peak is its `peak_rss_mb`)."""
        return {"mode": self.mode, "max_memory_bytes": self.max_memory_bytes, "estimate_bytes": self.estimate}


def plan_memory(model_dir, method, *, max_memory: str | int | None = None, stream: bool | None = None,
                dtype: str = DEFAULT_DTYPE, nsamples: int = CALIBRATION.nsamples, seqlen: int = CALIBRATION.seqlen,
                batch_size: int = CALIBRATION.batch_size,
                evaluate: bool = False, recovery_steps: int = 0, save_format: str = "dense",
                model_config: dict | None = None) -> MemoryPlan:
    """Choose in-memory or streamed before any work. `stream` True forces streaming, False forbids it, None
    decides from `max_memory`: in memory when its estimate fits the cap (or no cap is given), else streamed when
    that fits; a cap that neither fits, or a run that must stream but cannot, is refused in one line."""
    cap = parse_memory_size(max_memory) if max_memory is not None else None
    refusal = streaming_refusal(method, evaluate=evaluate, recovery_steps=recovery_steps, save_format=save_format,
                                model_config=model_config)
    if stream and refusal:
        raise MemoryCapError(f"cannot stream: {refusal}")
    if cap is None:
        return MemoryPlan(STREAMED if stream else IN_MEMORY)
    estimate = estimate_pruning_memory(model_dir, method, dtype, nsamples, seqlen, batch_size)
    if stream is None:
        mode = IN_MEMORY if estimate[IN_MEMORY] <= cap or refusal else STREAMED
    else:
        mode = STREAMED if stream else IN_MEMORY
    if estimate[mode] > cap:
        why = f" (and {refusal})" if mode == IN_MEMORY and refusal and stream is None else ""
        raise MemoryCapError(f"--max-memory {human_bytes(cap)} is below what pruning needs {mode}: about "
                             f"{human_bytes(estimate[mode])} ({estimate['formula'][mode]}){why}")
    return MemoryPlan(mode, cap, estimate)


# ------------------------------------------------------------------------------------------- the weights

class ShardedWeights:
    """The tensors of a safetensors checkpoint by name (one file or shards with an index); every read opens the
    shards it needs and closes them, so no mapping outlives the read."""

    def __init__(self, model_dir: str | os.PathLike):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: self.model_dir / file for name, file in weight_map.items()}
        else:
            self.files = {}
            for file in sorted(self.model_dir.glob("*.safetensors")):
                with safe_open(file, framework="pt") as handle:
                    self.files.update((name, file) for name in handle.keys())
        if not self.files:
            raise ModelLoadError(f"{self.model_dir}: no safetensors weights to stream from")

    def names(self, prefix: str = "") -> list[str]:
        return [name for name in self.files if name.startswith(prefix)]

    def read(self, names, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors `names`, converted to `dtype` (floating tensors only) when given."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        tensors = {}
        for file, wanted in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in wanted:
                    tensor = handle.get_tensor(name)
                    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                        tensor = tensor.to(dtype)
                    tensors[name] = tensor
        return tensors


def _save(tensors: dict[str, torch.Tensor], path: Path) -> int:
    """Write a safetensors file (safetensors writes from the tensors' memory, no copy); returns tensor bytes."""
    from safetensors.torch import save_file

    save_file({name: t.contiguous() for name, t in tensors.items()}, path, metadata=SAFETENSORS_METADATA)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _nonzero(tensors) -> int:
    return sum(int(torch.count_nonzero(t)) for t in tensors)


def _to_meta(layer: nn.Module) -> None:
    """Free a layer's parameters (meta tensors of the same shapes); its buffers (small, maybe not saved) stay."""
    for module in layer.modules():
        for name, param in module._parameters.items():
            if param is not None:
                module._parameters[name] = nn.Parameter(torch.empty_like(param, device="meta"),
                                                        requires_grad=param.requires_grad)


class StreamedLayers:
    """The layer source of a streamed model (engine.LayerSource) and the writer of its checkpoint shards."""

    def __init__(self, model: nn.Module, adapter, weights: ShardedWeights, dtype: torch.dtype, staging: Path):
        self.model, self.adapter, self.weights, self.dtype = model, adapter, weights, dtype
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.origin = {id(layer): index for index, layer in enumerate(adapter.decoder_layers(model))}
        self.staged: dict[int, Path] = {}  # original index -> its latest version
        self.nonzero_before: dict[int, int] = {}
        self.nonzero_after: dict[int, int] = {}
        self.loaded: set[int] = set()
        self.total_before = total_parameters(model)

    def _prefix(self, index: int) -> str:
        return f"{self.adapter.layers}.{index}."

    def _layer(self, index: int) -> tuple[nn.Module, int]:
        layer = self.adapter.decoder_layers(self.model)[index]
        return layer, self.origin[id(layer)]

    def _read(self, origin: int) -> dict[str, torch.Tensor]:
        """The layer's tensors (names inside the layer): its staged version, else the input's, counted once."""
        prefix = self._prefix(origin)
        if origin in self.staged:
            with safe_open(self.staged[origin], framework="pt") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        else:
            tensors = self.weights.read(self.weights.names(prefix), self.dtype)
            self.nonzero_before.setdefault(origin, _nonzero(tensors.values()))
        return {name.removeprefix(prefix): tensor for name, tensor in tensors.items()}

    def load(self, index: int) -> None:
        layer, origin = self._layer(index)
        tensors = self._read(origin)
        expected = {name for name, _ in layer.named_parameters()}
        missing = sorted(expected - set(tensors))
        if missing:
            raise ModelLoadError(f"{self.weights.model_dir}: decoder layer {origin} lacks {missing[:3]} in its "
                                 "safetensors files")
        layer.load_state_dict(tensors, strict=False, assign=True)
        self.loaded.add(index)

    def release(self, index: int) -> None:
        layer, origin = self._layer(index)
        state = {self._prefix(origin) + name: tensor for name, tensor in layer.state_dict().items()}
        path = self.staging / f"layer-{origin:05d}.safetensors"
        _save(state, path)
        self.staged[origin] = path
        self.nonzero_after[origin] = _nonzero(t for name, t in layer.named_parameters())
        _to_meta(layer)
        self.loaded.discard(index)

    def discard(self, index: int) -> None:
        _to_meta(self._layer(index)[0])
        self.loaded.discard(index)

    def is_loaded(self, index: int) -> bool:
        return index in self.loaded

    def _staged_names(self, origin: int) -> set[str]:
        """The names (inside the layer) of the tensors in the layer's staged version."""
        with safe_open(self.staged[origin], framework="pt") as handle:
            return {name.removeprefix(self._prefix(origin)) for name in handle.keys()}

    def counts_before(self) -> int:
        """Non-zero weights of every original layer (read now for those no pass has loaded)."""
        for origin in sorted(set(self.origin.values()) - set(self.nonzero_before)):
            self.nonzero_before[origin] = _nonzero(
                self.weights.read(self.weights.names(self._prefix(origin)), self.dtype).values())
        return sum(self.nonzero_before.values())

    def finish(self, dest: Path) -> dict:
        """Write the checkpoint's shards and index into `dest`: one shard per decoder layer (staged versions
        moved in, renumbered where layers were removed, unvisited ones copied from the input) and a last one
        with the outer weights. Returns the parameter counts after pruning (and before, for the report)."""
        if self.loaded:
            raise RuntimeError(f"decoder layers {sorted(self.loaded)} were loaded and never released")
        dest = Path(dest)
        layers = list(self.adapter.decoder_layers(self.model))
        count = len(layers) + 1
        weight_map, total_size, nonzero_layers = {}, 0, 0
        before = self.counts_before()
        for index, layer in enumerate(layers):
            origin = self.origin[id(layer)]
            file = f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            current = set(layer.state_dict())
            if origin in self.staged and origin == index and self._staged_names(origin) == current:
                os.replace(self.staged.pop(origin), dest / file)
                with safe_open(dest / file, framework="pt") as handle:
                    names = list(handle.keys())
                    total_size += sum(_slice_bytes(handle.get_slice(n)) for n in names)
                nonzero_layers += self.nonzero_after[origin]
            else:  # never staged, renumbered, or changed in structure since (a sub-block removed while on disk)
                tensors = {name: tensor for name, tensor in self._read(origin).items() if name in current}
                if set(tensors) != current:
                    raise ModelLoadError(f"decoder layer {origin} lacks {sorted(current - set(tensors))[:3]} on disk")
                tensors = {self._prefix(index) + name: tensor for name, tensor in tensors.items()}
                names = list(tensors)
                total_size += _save(tensors, dest / file)
                nonzero_layers += _nonzero(tensors.values())
                del tensors
            weight_map.update((name, file) for name in names)
        outer = self.outer_state()
        file = f"model-{count:05d}-of-{count:05d}.safetensors"
        total_size += _save(outer, dest / file)
        weight_map.update((name, file) for name in outer)
        index_text = json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
                                indent=2, sort_keys=False)
        (dest / INDEX_FILE).write_text(index_text + "\n")
        for leftover in self.staging.glob("*.safetensors"):  # versions of layers a method removed
            leftover.unlink()
        self.staging.rmdir()
        outer_nonzero = _nonzero(outer_params(self.model, self.adapter))
        return {"before": {"total": self.total_before, "nonzero": outer_nonzero + before},
                "after": {"total": total_parameters(self.model), "nonzero": outer_nonzero + nonzero_layers}}

    def outer_state(self) -> dict[str, torch.Tensor]:
        """The model's tensors outside the decoder layers as its state dict names them, a tied matrix once (under
        its first name, as transformers saves it)."""
        prefix = f"{self.adapter.layers}."
        state, seen = {}, set()
        for name, tensor in self.model.state_dict().items():
            if name.startswith(prefix) or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            state[name] = tensor
        return state


def _slice_bytes(tensor_slice) -> int:
    from safetensors.torch import _getdtype  # noqa: PLC2701 - safetensors' own dtype table

    elements = 1
    for dim in tensor_slice.get_shape():
        elements *= dim
    return elements * _getdtype(tensor_slice.get_dtype()).itemsize


def outer_params(model: nn.Module, adapter) -> list[torch.Tensor]:
    inside = {id(p) for p in adapter.decoder_layers(model).parameters()}
    return [p for p in _unique_parameters(model) if id(p) not in inside]


def total_parameters(model: nn.Module) -> int:
    """Unique parameters (tied once), meta ones included: parameter_counts' total without reading weights."""
    return sum(p.numel() for p in _unique_parameters(model))


# ------------------------------------------------------------------------------------------ the model

def open_streamed(model_dir: str | os.PathLike, dtype: str, staging: Path):
    """(model, tokenizer, StreamedLayers): the model's modules on meta with its outer weights read, its decoder
    layers left on disk behind the returned layer source (attached to the model as engine.LAYER_SOURCE)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from . import heterogeneous  # noqa: F401 - registers the pruned format with AutoConfig
    from .adapters import get_adapter
    from .engine import LAYER_SOURCE
    from .modeling import torch_dtype

    model_dir = Path(model_dir)
    working = torch_dtype(dtype)
    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights():  # parameters on meta; buffers (rotary tables) computed for real
        model = AutoModelForCausalLM.from_config(config, dtype=working)
    model.eval()
    adapter = get_adapter(model)
    weights = ShardedWeights(model_dir)
    layer_prefix = f"{adapter.layers}."
    outer_names = [name for name in weights.names() if not name.startswith(layer_prefix)]
    model.load_state_dict(weights.read(outer_names, working), strict=False, assign=True)
    model.tie_weights()
    missing = sorted(name for name, param in model.named_parameters()
                     if param.is_meta and not name.startswith(layer_prefix))
    if missing:
        raise ModelLoadError(f"{model_dir}: weights {missing[:3]} are missing from its safetensors files")
    source = StreamedLayers(model, adapter, weights, working, staging)
    setattr(model, LAYER_SOURCE, source)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer, source


def save_streamed(model: nn.Module, tokenizer, dest: Path, report: dict | None, report_name: str) -> None:
    """Add config, generation config, tokenizer and the report to `dest` (the output's scratch folder, where
    `StreamedLayers.finish` wrote the shards), as `modeling.save_model` lays them out."""
    from .sparse_formats import CHECKPOINT, DENSE
    from .heterogeneous import record_layer_shapes
    from .io import atomic_write_json

    record_layer_shapes(model)
    model.config.dtype = str(model.dtype).split(".")[1]  # what save_pretrained records
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(dest)
    if model.can_generate() and getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(dest)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    if report is not None:
        report[CHECKPOINT] = {"format": DENSE, "requested": DENSE, "compressed_linears": 0,
                              "safetensors_bytes": sum(f.stat().st_size for f in dest.glob("*.safetensors"))}
        atomic_write_json(dest / report_name, report)
