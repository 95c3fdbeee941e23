"""prune: prune a model with one method and save it with prune.json."""
from __future__ import annotations

import json

from ..api import prune
from ..data import CALIBRATION_SOURCES
from ..methods import available_methods
from .common import add_eval_arguments, add_runtime_arguments, parse_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune", help="prune a model and save it (HF directory + prune.json)",
        description="Prune MODEL with METHOD and save a reloadable Hugging Face directory with prune.json "
                    "(method, ratio, per-layer sparsity, parameter counts, calibration protocol, time, memory, "
                    "versions). Nothing is written unless the whole run succeeds.")
    parser.add_argument("--model", required=True, help="local directory, embedded name (smollm2-135m) or hub id")
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(available_methods())}")
    ratio = parser.add_mutually_exclusive_group()
    ratio.add_argument("--sparsity", type=float, help="fraction of targeted weights to zero, in [0, 1)")
    ratio.add_argument("--nm", help="N:M pattern, N kept out of every M consecutive input weights (e.g. 2:4)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="method option, repeatable (e.g. per=row for magnitude)")
    parser.add_argument("--output-dir", required=True, help="where the pruned model and prune.json go")
    parser.add_argument("--calib", default="c4",
                        help=f"calibration data: {', '.join(CALIBRATION_SOURCES)} or a .txt/.jsonl file (default: c4)")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (default: 128)")
    parser.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default: 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed for calibration sampling (default: 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="calibration windows per layer forward (default: 8)")
    parser.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                        help="skip linear modules whose full name matches (e.g. '*.mlp.down_proj'), repeatable")
    parser.add_argument("--evaluate", action="store_true", help="measure perplexity before and after pruning")
    add_eval_arguments(parser, seqlen_default=None)
    add_runtime_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)


def run(args) -> int:
    arguments = parse_options(args.option)
    if args.sparsity is not None:
        arguments["sparsity"] = args.sparsity
    if args.nm is not None:
        arguments["nm"] = args.nm
    report = prune(args.model, args.method, args.output_dir, calib=args.calib, nsamples=args.nsamples,
                   seqlen=args.seqlen, seed=args.seed, device=args.device, dtype=args.dtype,
                   data_dir_path=args.data_dir, batch_size=args.batch_size, ignore=tuple(args.ignore),
                   evaluate=args.evaluate, eval_dataset=args.dataset, eval_seqlen=args.eval_seqlen,
                   eval_max_windows=args.max_windows, progress=not args.quiet, **arguments)
    summary = {k: report[k] for k in ("method", "options", "parameters", "prune_seconds")}
    summary["total_sparsity"] = report["result"].get("total_sparsity")
    summary["evaluation"] = {k: round(v["ppl"], 4) for k, v in (report["evaluation"] or {}).items()}
    print(json.dumps(summary, indent=2))
    return 0
