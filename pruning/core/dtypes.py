"""The one table of dtype names: the working dtypes the CLI, the config and the library accept (with their
bytes per parameter, safetensors header name and torch dtype) and the bytes of every dtype a safetensors
header may name. Imports no torch (the torch dtype is looked up when asked for): Snakemake reads it to
fill the config schema's enum, and the tables read the bytes."""
from __future__ import annotations

from dataclasses import dataclass

# Bytes per element of every dtype a safetensors header may name (the safetensors format's own names).
SAFETENSORS_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                     "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


@dataclass(frozen=True)
class WorkingDtype:
    """A dtype the weights are loaded in while pruning and evaluating; `name` is torch's and the CLI's."""
    name: str
    safetensors: str  # its name in safetensors headers

    @property
    def bytes(self) -> int:
        return SAFETENSORS_BYTES[self.safetensors]


WORKING_DTYPES = {d.name: d for d in (WorkingDtype("float32", "F32"), WorkingDtype("bfloat16", "BF16"),
                                      WorkingDtype("float16", "F16"))}
DTYPE_NAMES = tuple(WORKING_DTYPES)  # --dtype choices and the config's dtype enum
DEFAULT_DTYPE = "float32"
# Short names `memory --dtype` also accepts.
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class DtypeError(ValueError):
    """A dtype name that is not one of DTYPE_NAMES."""


def working_dtype(name: str) -> WorkingDtype:
    try:
        return WORKING_DTYPES[name]
    except KeyError:
        raise DtypeError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}") from None


def dtype_bytes(name: str) -> int:
    """Bytes per parameter of a working dtype."""
    return working_dtype(name).bytes


def safetensors_name(name: str) -> str:
    """The safetensors header name of a working dtype (F32, BF16, F16)."""
    return working_dtype(name).safetensors


def torch_dtype(name: str):
    """The torch dtype of a working dtype name (imports torch)."""
    import torch

    return getattr(torch, working_dtype(name).name)
