"""Load and save models: plain Hugging Face directories, and pruned models with unequal layers."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from . import checks
from .io import PRUNE_REPORT, atomic_directory, atomic_write_json

# model_type written into config.json of models whose layers differ from each other (removed heads,
# attention-free or FFN-free layers). Plain `from_pretrained` rejects it loudly; `load_model` rebuilds it.
HETEROGENEOUS_MODEL_TYPE = "pruning_heterogeneous"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    pass


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}") from None


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ModelLoadError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def read_config(path: str | os.PathLike) -> dict:
    return checks.model_config(path)


def load_model(path: str | os.PathLike, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) from a local directory, homogeneous or heterogeneous, in eval mode."""
    path = Path(path)
    config = checks.model_files(path)
    with checks.model_read_errors(path):
        model, tokenizer = _load(path, config, dtype)
    model.eval()
    return model.to(resolve_device(device)), tokenizer


def _load(path: Path, config: dict, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.get("model_type") == HETEROGENEOUS_MODEL_TYPE:
        from .structure import load_heterogeneous

        model = load_heterogeneous(path, torch_dtype(dtype))
        # the tokenizer would otherwise read config.json and warn about the unknown model type
        tokenizer = AutoTokenizer.from_pretrained(path, config=model.config)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


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
               report_name: str = PRUNE_REPORT, overwrite: bool = False) -> Path:
    """Write a reloadable Hugging Face directory (safetensors) and its report, atomically."""
    dest = Path(dest)
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            atomic_write_json(tmp / report_name, report)
    return dest
