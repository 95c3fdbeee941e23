"""convert: write a (pruned) Hugging Face model directory as a GGUF file for llama.cpp."""
from __future__ import annotations

import json

from ..core import arguments, model_checks
from ..export.gguf_hparams import ExportError
from ..export.outtypes import DIRECT_OUTTYPES, INTERMEDIATE_OUTTYPES, LLAMACPP_OUTTYPES, OUTTYPES
from .common import add_overwrite_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a model directory to GGUF (llama.cpp)",
        description="Write MODEL as a GGUF file. Equal layers keep their llama.cpp architecture (llama, qwen2, "
                    "qwen3, gemma; depth-pruned models stay llama); heterogeneous models (removed heads, "
                    "attention-free or FFN-free layers) are written as llama.cpp's deci architecture. "
                    f"Direct output types: {', '.join(DIRECT_OUTTYPES)}; llama.cpp quantization types (need "
                    f"llama-cpp-python): {', '.join(LLAMACPP_OUTTYPES)}. The file appears only when complete.")
    parser.add_argument("--model", required=True, help="model directory (or zoo spec)")
    parser.add_argument("--outtype", required=True, metavar="TYPE", help=f"one of: {', '.join(OUTTYPES)}")
    parser.add_argument("--output", required=True, help="GGUF file to write")
    parser.add_argument("--intermediate", default="f16", choices=INTERMEDIATE_OUTTYPES,
                        help="type of the temporary file llama.cpp quantizes from (k-quants only; default: f16)")
    parser.add_argument("--threads", type=int, default=None, help="threads for llama.cpp quantization")
    parser.add_argument("--report", default=None, help="also write the conversion report JSON here")
    add_overwrite_argument(parser, "output or report file")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..export.gguf import export_gguf
    from ..core.io import atomic_write_json, versions

    if args.outtype not in OUTTYPES:
        raise ExportError(f"unknown outtype {args.outtype!r}; use one of {', '.join(OUTTYPES)}")
    arguments.positive({"--threads": args.threads})
    path, _ = model_checks.model_and_outputs(args.model, [(args.output, "output"), (args.report, "report")],
                                       overwrite=args.overwrite)
    report = export_gguf(path, args.output, args.outtype, intermediate=args.intermediate, threads=args.threads,
                         overwrite=args.overwrite)
    if args.report:
        atomic_write_json(args.report, {**report, "versions": versions()})
    print(json.dumps({k: report[k] for k in ("output", "outtype", "arch", "block_count", "bytes", "seconds")}, indent=2))
    return 0
