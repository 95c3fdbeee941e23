"""Sparse checkpoints: the compressed-tensors layouts `sparse-bitmask` and `sparse-24-bitmask`.

A pruned model saved dense keeps its zeros on disk. These layouts store, for each compressed linear `X`, the
non-zero values (`X.compressed`), a packed bitmask of where they go (`X.bitmask`, one bit per weight), the dense
shape (`X.shape`) and, for the bitmask layout, where each row starts in the values (`X.row_offsets`); config.json
names the layout under `quantization_config.sparsity_config`. Tensor names, shapes and config are those of the
compressed-tensors compressors that introduced them (BitmaskCompressor, Sparse24BitMaskCompressor): those of
compressed-tensors 0.14 (which needs transformers 4) decompress these files to the same bits and compress the dense
weights to the same tensors. compressed-tensors >= 0.15, the first that works with transformers 5, dropped both
compressors but keeps their config classes and the bit packing, which this module uses; writing and reading the
tensors is done here, and transformers 5 alone does not read these files (it leaves the linears uninitialised).

Round trip is exact: a weight is stored where its bits are non-zero (so -0.0 is kept, not turned into 0.0), and
`load_state_dict` gives back the dense tensors bit for bit. Everything but the compressed linears (embeddings, norms,
the output head, linears that would not shrink) is stored as it was.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are handled: the Snakefile's config check imports this module
    import torch
    from torch import nn

DENSE = "dense"
BITMASK = "sparse-bitmask"
SPARSE_24 = "sparse-24-bitmask"
AUTO = "auto"
SAVE_FORMATS = (DENSE, BITMASK, SPARSE_24)  # how a checkpoint is stored (compressed-tensors' format names)
SAVE_FORMAT_CHOICES = (AUTO, *SAVE_FORMATS)  # what a user may ask for; auto: the smallest on disk
CHECKPOINT = "checkpoint"  # prune.json's record of how the weights were saved: format, requested, bytes
INDEX_NAME = "model.safetensors.index.json"
_PARTS = ("shape", "compressed", "bitmask", "row_offsets")  # what a compressed weight is stored as


class SaveFormatError(ValueError):
    """A save format that does not fit the model or the request; raised before anything is written."""


def check_request(save_format: str, nm: str | None) -> None:
    """Refuse, before any work, a format that is unknown or cannot fit: sparse-24-bitmask needs a 2:4 prune."""
    if save_format not in SAVE_FORMAT_CHOICES:
        raise SaveFormatError(f"unknown save format {save_format!r}; use one of {', '.join(SAVE_FORMAT_CHOICES)}")
    if save_format == SPARSE_24 and (nm is None or str(nm).replace(" ", "") != "2:4"):
        raise SaveFormatError(f"save format {SPARSE_24} stores 2:4 sparsity only; prune with --nm 2:4 "
                              f"(got {'--nm ' + str(nm) if nm else 'no --nm'}) or use {BITMASK}")


# ------------------------------------------------------------------------------------------- one tensor

def _stored(weight: torch.Tensor) -> torch.Tensor:
    """Where a weight is stored: its bits are not all zero (-0.0 counts, so the round trip is bit-exact)."""
    import torch

    integer = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[weight.element_size()]
    return weight.view(integer) != 0


def is_24(weight: torch.Tensor) -> bool:
    """At most 2 stored values in every 4 consecutive input weights (rows of a 2-D weight)."""
    return (weight.dim() == 2 and weight.shape[1] % 4 == 0
            and bool((_stored(weight).view(-1, 4).sum(-1) <= 2).all()))


def _24_positions(weight: torch.Tensor) -> torch.Tensor:
    """Exactly 2 positions in every group of 4: the stored ones, topped up with the first zeros of the group."""
    import torch

    stored = _stored(weight).view(-1, 4)
    missing = 2 - stored.sum(-1, keepdim=True)
    zeros = ~stored
    top_up = zeros & (torch.cumsum(zeros.int(), -1) <= missing)
    return (stored | top_up).view(weight.shape)


def compressed_bytes(weight: torch.Tensor, save_format: str) -> int | None:
    """Bytes `weight` takes in `save_format` (the tensors, not the file header), None if it cannot be stored so."""
    rows, cols = weight.shape
    width, mask_bytes, shape_bytes = weight.element_size(), rows * ((cols + 7) // 8), 2 * 8
    if save_format == DENSE:
        return weight.numel() * width
    if save_format == BITMASK:
        return int(_stored(weight).sum()) * width + mask_bytes + rows * 8 + shape_bytes
    if save_format == SPARSE_24:
        return rows * cols // 2 * width + mask_bytes + shape_bytes if is_24(weight) else None
    raise SaveFormatError(f"unknown save format {save_format!r}")


def compress(weight: torch.Tensor, save_format: str) -> dict[str, torch.Tensor]:
    """The tensors that store `weight` (names local to its module: compressed, bitmask, shape[, row_offsets])."""
    import torch
    from compressed_tensors.utils import pack_bitmasks

    weight = weight.detach().cpu().contiguous()
    if save_format == BITMASK:
        positions = _stored(weight)
        counts = positions.sum(-1)
        return {"shape": torch.tensor(list(weight.shape)), "compressed": weight[positions],
                "bitmask": pack_bitmasks(positions), "row_offsets": torch.cumsum(counts, 0) - counts}
    if save_format == SPARSE_24:
        if not is_24(weight):
            raise SaveFormatError(f"a weight of shape {list(weight.shape)} is not 2:4 sparse")
        positions = _24_positions(weight)
        return {"shape": torch.tensor(list(weight.shape)).reshape(-1, 1),
                "compressed": weight[positions].reshape(weight.shape[0], weight.shape[1] // 2),
                "bitmask": pack_bitmasks(positions)}
    raise SaveFormatError(f"cannot compress into {save_format!r}")


def decompress(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense weight from its stored tensors (either layout)."""
    import torch
    from compressed_tensors.utils import unpack_bitmasks

    shape = parts["shape"].flatten().tolist()
    dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
    dense[unpack_bitmasks(parts["bitmask"], shape)] = parts["compressed"].flatten()
    return dense


# ------------------------------------------------------------------------------------------ a model

def _linear_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> weight of every linear that may be compressed: all but the output head (kept dense, as
    compressed-tensors' users do) and weights shared with another module (tied embeddings)."""
    from torch import nn

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shared = {id(p) for name, m in model.named_modules() if not isinstance(m, nn.Linear) for p in m.parameters(False)}
    return {name: module.weight for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module is not head and id(module.weight) not in shared}


def plan(model: nn.Module, save_format: str) -> tuple[str, list[str], float]:
    """(format, names of the linears it compresses, zero fraction of the linears). auto picks the smallest on disk
    of the three formats; sparse-bitmask compresses the linears it shrinks, sparse-24-bitmask those that are 2:4
    (others, such as --ignore'd ones, stay dense)."""
    import torch

    weights = _linear_weights(model)
    with torch.no_grad():
        sizes = {name: {fmt: compressed_bytes(w, fmt) for fmt in SAVE_FORMATS} for name, w in weights.items()}
        zeros = sum(int((w == 0).sum()) for w in weights.values())
    global_sparsity = zeros / max(1, sum(w.numel() for w in weights.values()))
    chosen = {DENSE: [], BITMASK: [n for n, s in sizes.items() if s[BITMASK] < s[DENSE]],
              SPARSE_24: [n for n, s in sizes.items() if s[SPARSE_24] is not None]}

    def total(fmt: str) -> int:
        return sum(s[fmt] if n in chosen[fmt] else s[DENSE] for n, s in sizes.items())

    if save_format == AUTO:
        save_format = min((DENSE, SPARSE_24, BITMASK), key=total)  # on a tie the first: dense, then 2:4
    if save_format != DENSE and not chosen[save_format]:
        if save_format == SPARSE_24:
            raise SaveFormatError(f"save format {SPARSE_24}: none of the {len(sizes)} linears is 2:4 sparse; "
                                  f"use {BITMASK} or {AUTO}")
        save_format = DENSE  # nothing would shrink: the bitmask layout would only add its masks
    return save_format, chosen[save_format], round(global_sparsity, 6)


def _sparsity_config(save_format: str, targets: list[str], global_sparsity: float) -> dict:
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

    config = {BITMASK: BitmaskConfig, SPARSE_24: Sparse24BitMaskConfig}[save_format]
    return config(targets=targets, ignore=[], global_sparsity=global_sparsity).model_dump()


def compress_directory(directory: str | os.PathLike, save_format: str, targets: list[str],
                       global_sparsity: float) -> None:
    """Rewrite the safetensors of a freshly saved Hugging Face directory (our scratch copy) in `save_format`,
    compressing the weights of the `targets` linears, and name the layout in config.json."""
    import compressed_tensors
    from compressed_tensors.base import (COMPRESSION_VERSION_NAME, QUANTIZATION_CONFIG_NAME, QUANTIZATION_METHOD,
                                         QUANTIZATION_METHOD_NAME, SPARSITY_CONFIG_NAME, TRANSFORM_CONFIG_NAME)
    from safetensors import safe_open
    from safetensors.torch import save_file

    directory = Path(directory)
    wanted = {f"{name}.weight" for name in targets}
    weight_map, total = {}, 0
    for file in sorted(directory.glob("*.safetensors")):
        tensors = {}
        with safe_open(file, framework="pt") as handle:
            metadata = handle.metadata()
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if name in wanted:
                    wanted.discard(name)
                    module = name.removesuffix(".weight")
                    tensors.update({f"{module}.{part}": value for part, value in compress(tensor, save_format).items()})
                else:
                    tensors[name] = tensor
        save_file(tensors, file, metadata=metadata)
        weight_map.update({name: file.name for name in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    if wanted:
        raise SaveFormatError(f"{directory}: weights to compress not found in the saved files: {sorted(wanted)[:3]}")
    index = directory / INDEX_NAME
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(weight_map.items()))
        data.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(data, indent=2) + "\n")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config[QUANTIZATION_CONFIG_NAME] = {
        COMPRESSION_VERSION_NAME: compressed_tensors.__version__,
        QUANTIZATION_METHOD_NAME: QUANTIZATION_METHOD,
        SPARSITY_CONFIG_NAME: _sparsity_config(save_format, targets, global_sparsity),
        TRANSFORM_CONFIG_NAME: {},
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def save_format_of(config: dict) -> str:
    """The sparse layout a checkpoint's config.json names, DENSE for anything else (dense weights, or a quantized
    format that transformers reads itself); sparse layouts this module does not read are refused."""
    section = config.get("quantization_config") or {}
    sparsity = section.get("sparsity_config") or {}
    if section.get("quant_method") != "compressed-tensors" or sparsity.get("format") in (None, DENSE):
        return DENSE
    if sparsity.get("format") not in (BITMASK, SPARSE_24) or section.get("config_groups"):
        raise SaveFormatError(f"the model's weights are stored as compressed-tensors {sparsity.get('format')}"
                              f"{' with quantization' if section.get('config_groups') else ''}; this tool reads "
                              f"{BITMASK} and {SPARSE_24} without quantization")
    return sparsity["format"]


def _read(file: Path, names: dict[str, str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as handle:
        return {key: handle.get_tensor(name) for key, name in names.items()}


def dense_tensors(directory: str | os.PathLike) -> tuple[dict[str, list[int]], dict[str, Callable[[], torch.Tensor]]]:
    """(name -> dense shape, name -> reader of the dense tensor) for every weight of a checkpoint, compressed or
    not, under the names of the dense checkpoint; weight data is read only when a reader is called."""
    from safetensors import safe_open

    files = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            files.update({name: (file, handle.get_slice(name).get_shape()) for name in handle.keys()})
    modules = {name.removesuffix(".bitmask") for name in files if name.endswith(".bitmask")}
    parts = {module: {part: f"{module}.{part}" for part in _PARTS if f"{module}.{part}" in files} for module in modules}
    stored_parts = {name for names in parts.values() for name in names.values()}
    shapes, readers = {}, {}
    for name, (file, shape) in files.items():
        if name not in stored_parts:
            shapes[name], readers[name] = list(shape), partial(lambda f, n: _read(f, {n: n})[n], file, name)
    for module, names in parts.items():
        if len({files[name][0] for name in names.values()}) != 1 or set(names) < {"shape", "compressed", "bitmask"}:
            raise SaveFormatError(f"{directory}: the stored parts of {module} ({', '.join(sorted(names))}) are "
                                  "incomplete or split over files")
        file = files[names["shape"]][0]
        shapes[f"{module}.weight"] = _read(file, {"shape": names["shape"]})["shape"].flatten().tolist()
        readers[f"{module}.weight"] = partial(lambda f, n: decompress(_read(f, n)), file, names)
    return shapes, readers


def load_state_dict(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, compressed linears decompressed to their dense `.weight`."""
    _, readers = dense_tensors(directory)
    return {name: read() for name, read in readers.items()}


def dense_config(directory: str | os.PathLike):
    """The transformers config of a compressed checkpoint without its quantization_config, so that the model is
    built dense (transformers would otherwise hand it to compressed-tensors, which no longer reads it)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config
