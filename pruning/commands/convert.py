"""convert: write a (pruned) Hugging Face model directory as a GGUF file for llama.cpp."""
from __future__ import annotations

import json
from pathlib import Path

from ..core import arguments, model_checks
from ..export.gguf_hparams import ExportError
from ..export.outtypes import (DIRECT_OUTTYPES, INTERMEDIATE_OUTTYPES, LLAMACPP_OUTTYPES, OUTTYPES, QUANTIZATION_TYPES,
                               quantization_outtype)
from .common import add_overwrite_argument
from .optimize import default_output


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a model directory to GGUF (llama.cpp)",
        description="Write MODEL as a GGUF file. Equal layers keep their llama.cpp architecture (llama, qwen2, "
                    "qwen3, gemma; depth-pruned models stay llama); heterogeneous models (removed heads, "
                    "attention-free or FFN-free layers) are written as llama.cpp's deci architecture. "
                    f"Direct output types: {', '.join(DIRECT_OUTTYPES)}; llama.cpp quantization types (need "
                    f"llama-cpp-python): {', '.join(LLAMACPP_OUTTYPES)}. The file appears only when complete.")
    parser.add_argument("--model", required=True, help="model directory (or zoo spec)")
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--outtype", metavar="TYPE", help=f"one of: {', '.join(OUTTYPES)}")
    kind.add_argument("--quantization", metavar="Q",
                      help="PersLM's spelling, the values optimize takes: "
                           f"{', '.join(f'{bits} (= {outtype})' for bits, outtype in QUANTIZATION_TYPES.items())} "
                           "or any TYPE (e.g. q4_k_m)")
    parser.add_argument("--output", default=None,
                        help="GGUF file to write (default, as PersLM: beside a model directory, DIR-TYPE.gguf, e.g. "
                             "models/pruned/NAME-distill_pruned-q4_k_m.gguf; for a name or hub id, "
                             "models/optimized/NAME-TYPE.gguf)")
    parser.add_argument("--intermediate", default="f16", choices=INTERMEDIATE_OUTTYPES,
                        help="type of the temporary file llama.cpp quantizes from (k-quants only; default: f16)")
    parser.add_argument("--threads", type=int, default=None, help="threads for llama.cpp quantization")
    parser.add_argument("--report", default=None, help="also write the conversion report JSON here")
    add_overwrite_argument(parser, "output or report file")
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..export.gguf import export_gguf
    from ..core.io import atomic_write_json, versions

    if args.quantization is not None:
        outtype = quantization_outtype(args.quantization)
    elif args.outtype in OUTTYPES:
        outtype = args.outtype
    else:
        raise ExportError(f"unknown outtype {args.outtype!r}; use one of {', '.join(OUTTYPES)}")
    arguments.positive({"--threads": args.threads})
    output = Path(args.output) if args.output else default_output(args.model, outtype)
    path, _ = model_checks.model_and_outputs(args.model, [(output, "output"), (args.report, "report")],
                                             overwrite=args.overwrite)
    report = export_gguf(path, output, outtype, intermediate=args.intermediate, threads=args.threads,
                         overwrite=args.overwrite)
    if args.report:
        atomic_write_json(args.report, {**report, "versions": versions()})
    print(json.dumps({k: report[k] for k in ("output", "outtype", "arch", "block_count", "bytes", "seconds")}, indent=2))
    return 0
