"""optimize: PersLM's `optimize --quantization 4bit|8bit`, a (pruned) model written as a quantized GGUF file."""
from __future__ import annotations

import json
from pathlib import Path

from ..core import arguments, model_checks
from ..export.outtypes import OUTTYPES, QUANTIZATION_TYPES, quantization_outtype
from .common import add_overwrite_argument

OUTPUT_PARENT = Path("models/optimized")  # for a model given by name or hub id rather than as a directory


def add_parser(subparsers) -> None:
    mapping = ", ".join(f"{bits} = {outtype}" for bits, outtype in QUANTIZATION_TYPES.items())
    parser = subparsers.add_parser(
        "optimize", help="quantize a (pruned) model to GGUF: --quantization 4bit|8bit (PersLM)",
        description=f"Write MODEL as a quantized GGUF file for llama.cpp, as PersLM's optimize command: {mapping}. "
                    "Any GGUF type of the convert command is accepted too. The file appears only when complete.")
    parser.add_argument("--model", required=True, help="model directory (e.g. models/pruned/NAME-magnitude_pruned) "
                                                       "or zoo spec")
    parser.add_argument("--quantization", required=True, metavar="Q",
                        help=f"{' or '.join(QUANTIZATION_TYPES)} ({mapping}), or a GGUF type: {', '.join(OUTTYPES)}")
    parser.add_argument("--output", default=None,
                        help="GGUF file to write (default: beside a model directory, DIR-TYPE.gguf; for a name or "
                             f"hub id, {OUTPUT_PARENT}/NAME-TYPE.gguf)")
    parser.add_argument("--threads", type=int, default=None, help="threads for llama.cpp quantization")
    add_overwrite_argument(parser, "output file")
    parser.set_defaults(run=run)


def default_output(model: str, outtype: str) -> Path:
    """PersLM's place for a GGUF file (optimize and convert without --output): beside a model directory, named
    after it (models/pruned/NAME-magnitude_pruned-q4_k_m.gguf), never inside it, which the output rule refuses;
    for a name or hub id, OUTPUT_PARENT/NAME-TYPE.gguf."""
    source = Path(str(model).rstrip("/\\")).expanduser()
    if source.is_dir():
        return source.with_name(f"{source.name}-{outtype}.gguf")
    return OUTPUT_PARENT / f"{source.name or 'model'}-{outtype}.gguf"


def run(args) -> int:
    from ..export.gguf import export_gguf

    outtype = quantization_outtype(args.quantization)
    arguments.positive({"--threads": args.threads})
    output = Path(args.output) if args.output else default_output(args.model, outtype)
    path, _ = model_checks.model_and_outputs(args.model, [(output, "output")], overwrite=args.overwrite)
    report = export_gguf(path, output, outtype, threads=args.threads, overwrite=args.overwrite)
    summary = {"quantization": args.quantization, **{k: report[k] for k in ("output", "outtype", "arch", "block_count",
                                                                             "bytes", "seconds")}}
    print(json.dumps(summary, indent=2))
    return 0
