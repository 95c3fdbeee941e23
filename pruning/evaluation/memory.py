"""How much memory a model needs: parameters, weight bytes per dtype and per GGUF type, KV cache, activations and
a total for loading it and running one forward pass over `context` tokens × `batch` sequences.

Everything comes from config.json and the safetensors headers; no weight is read: the model is built on
PyTorch's meta device (exact parameter count and per-layer shapes, heterogeneous pruned models included), the
GGUF tensors are those the exporter would write (`plan_export`) with the tensor types llama.cpp's quantizer
picks (`llamacpp_tensor_type`), and bytes per tensor type come from the `gguf` package's block sizes.

The total is a peak resident-memory estimate for a CPU process with transformers (PyTorch's default sdpa
attention):

    runtime + weights + max(load conversion, KV cache + activations)

- runtime: resident memory of a fresh Python process after importing torch/transformers and building the
  model's modules (measured, in a subprocess);
- weights: parameters × bytes of the working dtype (tied matrices counted once);
- load conversion: when the file's dtype differs from the working dtype, transformers reads the whole file
  (memory-mapped) while converting, so its bytes are resident at the same time as the converted weights;
  with the same dtype the tensors stay memory-mapped and are counted once, as weights;
- KV cache: 2 (keys, values) × batch × tokens × key-value heads × head size per layer (grouped-query heads,
  per-layer heads of pruned models, sliding-window layers keeping the last window - 1 tokens; a removed
  attention keeps one placeholder value per token);
- activations: the logits (batch × context × vocabulary) plus the largest layer's working set (residual stream
  copies, q/k/v with their rotated copies, the FFN's three intermediate tensors, and the attention scores
  with eager attention).
"""
from __future__ import annotations

import os
from pathlib import Path

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as QType

from ..export.gguf_tensors import plan_export
from ..export.outtypes import DIRECT_OUTTYPES, LLAMACPP_OUTTYPES, OUTPUT_TYPES, OUTTYPES
from ..export.gguf_hparams import ExportError
from ..core.dtypes import DTYPE_NAMES, dtype_bytes, safetensors_name
from ..core.footprint import activation_bytes, geometry, kv_cache_bytes, meta_model, runtime_bytes, stored_weights
from ..core.dtypes import DEFAULT_DTYPE

# What llama.cpp writes when a matrix's rows do not split into blocks of the chosen type (then F16 if still not).
_LLAMACPP_FALLBACK = {QType.Q2_K: QType.Q4_0, QType.Q3_K: QType.Q4_0, QType.Q4_K: QType.Q5_0,
                      QType.Q5_K: QType.Q5_1, QType.Q6_K: QType.Q8_0}


def tensor_bytes(shape: tuple[int, ...], qtype: QType) -> int:
    """Bytes of one tensor of `shape` (numpy order, rows last-but-one) stored as `qtype`."""
    block, size = GGML_QUANT_SIZES[qtype]
    elements = 1
    for dim in shape:
        elements *= dim
    return elements // block * size


def _use_more_bits(index: int, count: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in the _M mixtures (first and last eighth, every third)."""
    return index < count // 8 or index >= 7 * count // 8 or (index - count // 8) % 3 == 2


def llamacpp_tensor_type(outtype: str, name: str, shape: tuple[int, ...], index: int, count: int,
                         gqa: int, has_output: bool) -> QType:
    """The type llama.cpp's quantizer gives tensor `name` (GGUF name, numpy `shape`) for `outtype`: the main type,
    Q6_K for the output matrix, more bits for some attn_v / ffn_down / attn_output / attn_qkv of the mixtures
    (`index` of `count` such tensors), and the fallbacks for rows that do not split into blocks. 1-D tensors
    stay F32. Rules of the llama.cpp version llama-cpp-python pins (checked against its files in tests)."""
    if len(shape) < 2:
        return QType.F32
    main = QType[OUTPUT_TYPES[outtype].main_type]
    chosen = main
    columns = shape[-1]
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        chosen = QType.Q8_0 if columns % GGML_QUANT_SIZES[main][0] else QType.Q6_K
    elif "attn_v.weight" in name:
        chosen = {"q2_k": QType.Q4_K if gqa >= 4 else QType.Q3_K, "q3_k_m": QType.Q5_K if index < 2 else QType.Q4_K,
                  "q3_k_l": QType.Q5_K, "q4_k_s": QType.Q5_K if index < 4 else main,
                  "q4_k_m": QType.Q6_K if _use_more_bits(index, count) else main,
                  "q5_k_m": QType.Q6_K if _use_more_bits(index, count) else main}.get(outtype, main)
    elif "ffn_down" in name:
        chosen = {"q2_k": QType.Q3_K, "q3_k_m": QType.Q5_K if index < count // 16 else QType.Q4_K,
                  "q3_k_l": QType.Q5_K, "q4_k_s": QType.Q5_K if index < count // 8 else main,
                  "q4_k_m": QType.Q6_K if _use_more_bits(index, count) else main,
                  "q5_k_m": QType.Q6_K if _use_more_bits(index, count) else main}.get(outtype, main)
    elif "attn_output.weight" in name:
        chosen = {"q2_k": QType.Q3_K, "q3_k_m": QType.Q4_K, "q3_k_l": QType.Q5_K}.get(outtype, main)
    elif "attn_qkv.weight" in name:
        chosen = {"q3_k_m": QType.Q4_K, "q3_k_l": QType.Q4_K, "q4_k_m": QType.Q5_K,
                  "q5_k_m": QType.Q6_K}.get(outtype, main)
    if columns % GGML_QUANT_SIZES[chosen][0]:
        chosen = _LLAMACPP_FALLBACK.get(chosen, QType.F16)
        if columns % GGML_QUANT_SIZES[chosen][0]:
            chosen = QType.F16
    return chosen


def llamacpp_tensor_types(outtype: str, tensors: list[tuple[str, tuple[int, ...]]], gqa: int) -> list[QType]:
    """The type of each (GGUF name, shape) of an f16/f32 file after llama.cpp quantizes it to `outtype`; the
    quantizer takes tensors in name order (its weights map is sorted), which decides the counts of the mixtures."""
    names = {name for name, _ in tensors}
    counts = {kind: sum(kind in name for name in names) for kind in ("attn_v.weight", "ffn_down")}
    order = {}
    for kind in counts:
        order.update({name: index for index, name in enumerate(sorted(n for n in names if kind in n))})
    return [llamacpp_tensor_type(outtype, name, shape, order.get(name, 0),
                                 next((count for kind, count in counts.items() if kind in name), 0), gqa,
                                 "output.weight" in names)
            for name, shape in tensors]


def gguf_tensor_bytes(model_dir: str | os.PathLike, gqa: int) -> dict[str, int]:
    """Tensor bytes of the file `convert --outtype T` writes for `model_dir`, for every T, without reading weights:
    the exporter's own plans, quantized by llama.cpp's rules for its output types (from the f16 plan)."""
    sizes, plans = {}, {}
    for outtype in DIRECT_OUTTYPES:
        plans[outtype] = plan_export(model_dir, outtype).tensors
        sizes[outtype] = sum(tensor_bytes(t.shape, t.qtype) for t in plans[outtype])
    intermediate = [(t.name, t.shape) for t in plans["f16"]]
    for outtype in LLAMACPP_OUTTYPES:
        types = llamacpp_tensor_types(outtype, intermediate, gqa)
        sizes[outtype] = sum(tensor_bytes(shape, qtype) for (_, shape), qtype in zip(intermediate, types))
    return {outtype: sizes[outtype] for outtype in OUTTYPES}


# ------------------------------------------------------------------------------------------- the estimate

def estimate(model_dir: str | os.PathLike, dtype: str = DEFAULT_DTYPE, context: int | None = None, batch: int = 1, *,
             measure_runtime: bool = True) -> dict:
    """The memory report of the model in `model_dir` (a local Hugging Face directory) for `dtype` weights and one
    forward over `context` tokens (default: the positions the model declares) × `batch` sequences."""
    from ..core.model_checks import model_positions

    model_dir = Path(model_dir)
    element = dtype_bytes(dtype)
    config, model = meta_model(model_dir)
    shapes = geometry(config, model)
    if context is None:
        declared = model_positions(config.to_dict())
        context = declared[1] if declared else 2048
    parameters = sum(p.numel() for p in model.parameters())  # shared (tied) parameters are yielded once
    weights = {name: parameters * dtype_bytes(name) for name in DTYPE_NAMES}

    gqa = max(1, shapes.layers[0].heads // max(1, shapes.layers[0].kv_heads))
    try:
        gguf, gguf_note = gguf_tensor_bytes(model_dir, gqa), None
    except ExportError as exc:
        gguf, gguf_note = {}, f"no GGUF sizes: {exc}"

    file_bytes, file_dtypes = stored_weights(model_dir)
    conversion = file_bytes if file_dtypes and file_dtypes != {safetensors_name(dtype)} else 0
    kv = kv_cache_bytes(shapes, context, batch, element)
    eager = getattr(config, "_attn_implementation", None) == "eager"
    activations = activation_bytes(shapes, context, batch, element, eager=eager)
    runtime = runtime_bytes(model_dir) if measure_runtime else 0
    total = runtime + weights[dtype] + max(conversion, kv + activations)
    return {
        "model": str(model_dir), "model_type": getattr(config, "model_type", None),
        "layers": len(shapes.layers), "heterogeneous": config.model_type == "pruning_heterogeneous",
        "parameters": parameters, "dtype": dtype, "context": context, "batch": batch,
        "weights_bytes": weights,
        "gguf_weights_bytes": gguf,
        "gguf_bits_per_weight": {t: round(8 * size / parameters, 3) for t, size in gguf.items()},
        **({"gguf_note": gguf_note} if gguf_note else {}),
        "kv_cache_bytes": kv, "activation_bytes": activations, "load_conversion_bytes": conversion,
        "runtime_bytes": runtime if measure_runtime else None,
        "total_bytes": total,
        "protocol": {"formula": "runtime + weights[dtype] + max(load_conversion, kv_cache + activations)",
                     "runtime": "measured: fresh process, torch + transformers imported, modules built on meta"
                                if measure_runtime else "not measured (0)",
                     "attention": "eager" if eager else "sdpa",
                     "gguf": "tensor data only (no metadata), types chosen as the exporter and llama.cpp's "
                             "quantizer choose them"},
    }


def format_report(report: dict) -> str:
    """The report as aligned text (KiB, MiB or GiB)."""
    def human(value: int) -> str:
        unit = next(unit for unit in (3, 2, 1, 0) if value >= 1024 ** unit or unit == 0)
        return f"{value / 1024 ** unit:,.1f} {('B', 'KiB', 'MiB', 'GiB')[unit]}" if unit else f"{value} B"

    lines = [f"model        {report['model']} ({report['model_type']}, {report['layers']} layers"
             f"{', heterogeneous' if report['heterogeneous'] else ''})",
             f"parameters   {report['parameters']:,}",
             "weights      " + ", ".join(f"{name} {human(size)}" for name, size in report["weights_bytes"].items())]
    gguf = report["gguf_weights_bytes"]
    bits = report["gguf_bits_per_weight"]
    lines += [f"{'GGUF' if index == 0 else '':12} {outtype:7} {human(size):>12} ({bits[outtype]} bits per weight)"
              for index, (outtype, size) in enumerate(gguf.items())] or [f"GGUF         {report['gguf_note']}"]
    lines += [f"for          {report['dtype']}, context {report['context']} × batch {report['batch']}",
              f"KV cache     {human(report['kv_cache_bytes'])}",
              f"activations  {human(report['activation_bytes'])}",
              f"load convert {human(report['load_conversion_bytes'])}",
              "runtime      " + (human(report["runtime_bytes"]) if report["runtime_bytes"] is not None
                                   else "not measured"),
              f"total        {human(report['total_bytes'])}  ({report['protocol']['formula']})"]
    return "\n".join(lines)
