"""Hugging Face directory (dense, sparse, depth-pruned or heterogeneous) → GGUF file for llama.cpp.

Organised like llama.cpp's converter, one module per concern: `gguf_families` (which llama.cpp architecture
runs each model type), `gguf_hparams` (hyper-parameters), `gguf_vocab` (tokenizer), `gguf_tensors` (the
tensor plan: names, shapes, types and layout changes) and this writer. The file is written by the `gguf`
package's own `GGUFWriter` (`add_tensor` with lazy tensors that are read, reordered and quantized by
`gguf.quants.quantize` only when `write_tensors_to_file` reaches them, one tensor in memory at a time).
llama.cpp's k-quants (q4_k_m, q6_k, ...) are made by llama-cpp-python's quantize API from an intermediate
f16 (or f32) file.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import time
from itertools import chain
from dataclasses import asdict
from pathlib import Path

import numpy as np

import gguf
from gguf import GGUFEndian, GGUFValueType, LlamaFileType
from gguf.lazy import LazyNumpyTensor

from .. import __version__
from ..core import outputs
from ..core.inputs import read_paths
from ..core.io import (GGUF_OWNER_KEY, PRUNE_REPORT, file_mode, remove_stale_scratch, scratch_prefix, versions,
                       write_errors)
from .gguf_families import supported_model_types
from .gguf_hparams import ExportError, add_hyperparameters
from .gguf_tensors import ExportPlan, PlannedTensor, plan_export
from .outtypes import INTERMEDIATE_OUTTYPES, LLAMACPP_OUTTYPES, OUTPUT_TYPES
from .gguf_vocab import add_vocabulary, read_json

__all__ = ["ExportError", "export_gguf", "plan_export", "require_llama_cpp", "supported_model_types"]


def _lazy(tensor: PlannedTensor) -> LazyNumpyTensor:
    """The planned tensor's float32 data, loaded when the writer reaches it."""
    def load() -> np.ndarray:
        data = np.ascontiguousarray(tensor.load(), dtype=np.float32)
        if tuple(data.shape) != tuple(tensor.shape):
            raise ExportError(f"{tensor.name}: loaded shape {data.shape} differs from planned {tensor.shape}")
        return data

    return LazyNumpyTensor(meta=LazyNumpyTensor.meta_with_dtype_and_shape(np.float32, tuple(tensor.shape)), func=load)


def _packed_array(values, endianess: GGUFEndian) -> bytes | None:
    """A metadata array of strings, 32-bit ints or floats as GGUFWriter packs it (element type, count, elements),
    built in one pass; None for anything else, which GGUFWriter packs itself."""
    if not isinstance(values, (list, tuple)) or not values:
        return None
    order = "<" if endianess == GGUFEndian.LITTLE else ">"
    kinds = set(map(type, values))
    if all(issubclass(kind, (str, bytes, bytearray)) for kind in kinds):
        element = GGUFValueType.STRING
        encoded = [value.encode("utf-8") if isinstance(value, str) else bytes(value) for value in values]
        data = b"".join(chain.from_iterable(zip(map(struct.Struct(order + "Q").pack, map(len, encoded)), encoded)))
    elif all(issubclass(kind, int) and not issubclass(kind, bool) for kind in kinds):
        element = GGUFValueType.INT32
        numbers = np.array(values, dtype=np.int64)
        if numbers.min() < -2**31 or numbers.max() >= 2**31:
            return None
        data = numbers.astype(order + "i4").tobytes()
    elif kinds == {float}:
        element = GGUFValueType.FLOAT32
        numbers = np.array(values, dtype=np.float64)
        if not np.isfinite(numbers).all() or np.abs(numbers).max() > np.finfo(np.float32).max:
            return None  # struct refuses what does not fit a float32; let GGUFWriter say so
        data = numbers.astype(order + "f4").tobytes()
    else:
        return None
    return struct.pack(order + "IQ", element, len(values)) + data


class _Writer(gguf.GGUFWriter):
    """GGUFWriter that packs long metadata arrays (token list, merges, token types, scores) in one pass: gguf's
    own `_pack_val` packs element by element after checking each element's type, seconds for a 256k-token
    vocabulary. The bytes are the same (tests/test_gguf_vocab.py compares them)."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        packed = _packed_array(val, self.endianess) if vtype == GGUFValueType.ARRAY and sub_type is None else None
        if packed is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type)
        return (self._pack("I", vtype) if add_vtype else b"") + packed


def _write_plan(plan: ExportPlan, path: Path, file_type: LlamaFileType) -> None:
    """Stream the plan into `path`."""
    writer = _Writer(path, plan.arch_name)
    try:
        writer.add_name(plan.model_dir.name)
        writer.add_string(GGUF_OWNER_KEY, __version__)  # marks the file as ours: a later convert may replace it
        prune_report = plan.model_dir / PRUNE_REPORT
        if prune_report.is_file():
            report = read_json(prune_report)
            writer.add_description(f"pruned with {report.get('method')} {json.dumps(report.get('options'))}")
        add_hyperparameters(writer, plan.hyper, plan.layers, plan.heterogeneous, plan.config)
        writer.add_file_type(file_type)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_vocabulary(writer, plan.model_dir, plan.vocab, plan.config["vocab_size"])
        for tensor in plan.tensors:
            data = gguf.quants.quantize(_lazy(tensor), tensor.qtype)
            writer.add_tensor(tensor.name, data, raw_dtype=tensor.qtype if data.dtype == np.uint8 else None)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def _llama_cpp_quantize(source: Path, dest: Path, outtype: str, threads: int | None) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, OUTPUT_TYPES[outtype].llama_cpp_ftype)
    if threads:
        params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(dest).encode(), params)
    if status != 0:
        raise RuntimeError(f"llama.cpp quantization to {outtype} failed (status {status})")


def require_llama_cpp(purpose: str) -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        raise ExportError(f"{purpose} needs llama-cpp-python: pip install 'llm-pruning-zoo[llamacpp]' "
                          "(builds llama.cpp from source, ~6 minutes on 2 cores)") from None


def export_gguf(model_dir: str | os.PathLike, output: str | os.PathLike, outtype: str = "f16", *,
                intermediate: str = "f16", threads: int | None = None, overwrite: bool = False) -> dict:
    """Write `model_dir` as a GGUF file of `outtype` at `output` (atomically) and return a report. An existing
    `output` is replaced only if this tool wrote it, or with `overwrite`; checked before any work."""
    started = time.perf_counter()
    output = Path(output).expanduser()
    if output.is_dir():
        raise ExportError(f"output {output} is a directory; give a file name like model.gguf")
    outputs.output_file(output, overwrite=overwrite, inputs=read_paths(models=[model_dir]))
    remove_stale_scratch(output)
    if outtype in LLAMACPP_OUTTYPES:
        require_llama_cpp(f"outtype {outtype}")
        if intermediate not in INTERMEDIATE_OUTTYPES:
            raise ExportError(f"intermediate type for llama.cpp quantization must be {' or '.join(INTERMEDIATE_OUTTYPES)}, "
                              f"got {intermediate!r}")
    plan = plan_export(model_dir, intermediate if outtype in LLAMACPP_OUTTYPES else outtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    existed = output.exists()
    with write_errors(output, existed):
        fd, scratch = tempfile.mkstemp(prefix=scratch_prefix(output), suffix=".gguf", dir=output.parent)
    os.close(fd)
    scratch = Path(scratch)
    intermediate_file = scratch.with_name(scratch.name + f".{intermediate}")
    try:
        with write_errors(output, existed):
            if outtype in LLAMACPP_OUTTYPES:
                _write_plan(plan, intermediate_file, LlamaFileType[OUTPUT_TYPES[intermediate].file_type])
                _llama_cpp_quantize(intermediate_file, scratch, outtype, threads)
            else:
                _write_plan(plan, scratch, LlamaFileType[OUTPUT_TYPES[outtype].file_type])
            os.chmod(scratch, file_mode())  # mkstemp's 0600 would make shared results unreadable to others
            os.replace(scratch, output)
    finally:
        scratch.unlink(missing_ok=True)
        intermediate_file.unlink(missing_ok=True)
    installed = versions("gguf", "llama_cpp_python")
    return {
        "output": str(output),
        "outtype": outtype,
        "intermediate": intermediate if outtype in LLAMACPP_OUTTYPES else None,
        "source": str(plan.model_dir),
        "model_type": plan.model_type,
        "arch": plan.arch_name,
        "block_count": len(plan.layers),
        "layers": [asdict(layer) for layer in plan.layers] if plan.heterogeneous else None,
        "source_layers": plan.source_layers,
        "zero_ffn_layers": plan.zero_ffn_layers,
        "zero_attention_layers": plan.zero_attention_layers,
        "dropped_identity_layers": plan.dropped_identity_layers,
        "f16_fallback_tensors": plan.fallback_f16 if outtype == "q8_0" else [],
        "vocab": plan.vocab,
        "tensors": len(plan.tensors) if outtype not in LLAMACPP_OUTTYPES else None,
        "bytes": output.stat().st_size,
        "seconds": round(time.perf_counter() - started, 3),
        "gguf_version": installed["gguf"],
        "llama_cpp_python": installed["llama_cpp_python"] if outtype in LLAMACPP_OUTTYPES else None,
    }

