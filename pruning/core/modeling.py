"""Load and save models: plain Hugging Face directories, and pruned models with unequal layers."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import model_checks, dtypes, sparse_formats as compressed
from .model_checks import ModelLoadError
from .heterogeneous import is_heterogeneous, record_layer_shapes  # also registers the format with transformers
from .io import PRUNE_REPORT, atomic_directory, atomic_write_json
from .dtypes import DEFAULT_DTYPE



def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a working dtype name (pruning/core/dtypes.py); an unknown name is a ModelLoadError."""
    try:
        return dtypes.torch_dtype(name)
    except dtypes.DtypeError as exc:
        raise ModelLoadError(str(exc)) from None


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ModelLoadError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def load_model(path: str | os.PathLike, dtype: str = DEFAULT_DTYPE, device: str = "cpu", tokenizer: bool = True,
               trust_remote_code: bool = False):
    """(model, tokenizer) from a local directory, homogeneous or heterogeneous (pruning/core/heterogeneous.py),
    in eval mode; sparse checkpoints (pruning/core/sparse_formats.py) are decompressed to their dense weights. Files are
    checked first (config, safetensors headers, shapes, tokenizer files unless `tokenizer` is False: then the
    tokenizer is None), and what the loaders still raise becomes one line naming the file. A model with code of
    its own (config.json's auto_map) is refused unless `trust_remote_code`, which lets transformers import and run
    that code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    config = model_checks.model_files(path, tokenizer, trust_remote_code)
    heterogeneous = is_heterogeneous(config)
    loader, source, stored = AutoModelForCausalLM, path, {}
    with model_checks.model_read_errors(path):
        if compressed.save_format_of(config) != compressed.DENSE:  # weights from the decompressed state dict
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

            stored = {"config": compressed.dense_config(path), "state_dict": compressed.load_state_dict(path)}
            loader, source = MODEL_FOR_CAUSAL_LM_MAPPING[type(stored["config"])], None
        trusted = {"trust_remote_code": True} if trust_remote_code else {}
        model, info = loader.from_pretrained(source, dtype=torch_dtype(dtype), output_loading_info=True, **stored,
                                             **trusted)
        tokenizer = AutoTokenizer.from_pretrained(path, **trusted) if tokenizer else None
    if heterogeneous and (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]):
        raise ModelLoadError(f"{path}: weights do not fit the recorded layer structure (missing "
                             f"{sorted(info['missing_keys'])[:5]}, unexpected {sorted(info['unexpected_keys'])[:5]}, "
                             f"mismatched {sorted(info['mismatched_keys'])[:5]})")
    model.eval()
    return model.to(resolve_device(device)), tokenizer


def parameter_counts(model: nn.Module) -> dict:
    """Unique parameters (tied weights counted once) and how many are non-zero."""
    seen, total, nonzero = set(), 0, 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        nonzero += int(torch.count_nonzero(param))
    return {"total": total, "nonzero": nonzero}


def save_model(model: nn.Module, tokenizer, dest: str | os.PathLike, report: dict | None = None,
               report_name: str = PRUNE_REPORT, overwrite: bool = False, save_format: str = compressed.DENSE) -> Path:
    """Write a reloadable Hugging Face directory (safetensors) and its report, atomically; models with unequal
    layers get the heterogeneous record in their config first. `save_format` (compressed.SAVE_FORMAT_CHOICES)
    stores the zeros of sparse linears compactly; the report gets its `checkpoint` record (format, bytes)."""
    dest = Path(dest)
    chosen, targets, global_sparsity = compressed.plan(model, save_format)
    record_layer_shapes(model)
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if chosen != compressed.DENSE:
            compressed.compress_directory(tmp, chosen, targets, global_sparsity)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            report[compressed.CHECKPOINT] = {
                "format": chosen, "requested": save_format, "compressed_linears": len(targets),
                "safetensors_bytes": sum(f.stat().st_size for f in tmp.glob("*.safetensors"))}
            atomic_write_json(tmp / report_name, report)
    return dest
