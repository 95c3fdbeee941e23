"""speed: size on disk, parameters and measured prefill/decode throughput (Hugging Face and llama.cpp)."""
from __future__ import annotations

import json

from ..core.dtypes import DEFAULT_DTYPE, DTYPE_NAMES
from ..evaluation.speed import speed
from .common import add_overwrite_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "speed", help="parameters, bytes on disk and measured prefill/decode tokens/s",
        description="Measure MODEL (and optionally its GGUF file in llama.cpp): parameters total and non-zero, "
                    "safetensors/GGUF bytes, prefill and decode tokens/s at batch 1 (median of --repeats timed "
                    "runs after --warmup untimed ones, every run kept). On CUDA, 2:4-sparse models are measured "
                    "again with torch's semi-structured sparse kernels; on CPU the result says plainly that "
                    "unstructured and N:M sparsity give no speed-up there.")
    parser.add_argument("--model", required=True, help="model directory or zoo spec")
    parser.add_argument("--gguf", default=None, help="GGUF file of the same model, measured with llama-cpp-python")
    parser.add_argument("--output", required=True, help="result JSON (written atomically)")
    add_overwrite_argument(parser)
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default: 128)")
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy decode steps (default: 32)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; medians are reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: 1)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's current setting)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompt (default: 0)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default: auto)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES,
                        help=f"weights dtype (default: {DEFAULT_DTYPE})")
    parser.set_defaults(run=run)


def run(args) -> int:
    result = speed(args.model, gguf=args.gguf, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                   repeats=args.repeats, warmup=args.warmup, seed=args.seed, device=args.device, dtype=args.dtype,
                   threads=args.threads, output=args.output, overwrite=args.overwrite)
    summary = {"parameters": result["size"]["parameters"], "safetensors_bytes": result["size"]["safetensors_bytes"]["total"]}
    for backend in ("hf", "gguf"):
        measured = result[backend]
        if measured:
            summary[backend] = measured.get("skipped") or {k: round(measured[k], 1) for k in
                                                           ("prefill_tokens_per_s", "decode_tokens_per_s")}
    if result["semi_structured_24"]:
        summary["semi_structured_24"] = {k: result["semi_structured_24"].get(k) for k in
                                         ("prefill_speedup", "decode_speedup", "skipped")}
    summary["note"] = result["sparse_speedup_note"]
    print(json.dumps(summary, indent=2))
    return 0
