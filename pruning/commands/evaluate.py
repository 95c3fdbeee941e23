"""eval: perplexity of a model directory (more evaluations join as they land)."""
from __future__ import annotations

import json

from ..api import evaluate_perplexity
from ..core.protocols import Evaluation
from .common import add_overwrite_argument, add_runtime_arguments, quiet_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model (perplexity)",
        description="Token-level perplexity over non-overlapping windows (tail dropped), as in the "
                    "SparseGPT/Wanda papers. The result records dataset, split, seqlen, windows, scored tokens, "
                    "dtype, device, batch size and the scoring throughput (tokens_per_s: windows x seqlen per "
                    "second of forwards and NLL).")
    parser.add_argument("--model", required=True, help="model directory or zoo spec")
    parser.add_argument("--ppl", action="store_true", required=True, help="measure perplexity")
    Evaluation.add_arguments(parser, seqlen_required=True)
    parser.add_argument("--output", default=None, help="write the result JSON here (atomically)")
    add_overwrite_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.quiet:
        quiet_progress()
    result = evaluate_perplexity(args.model, dataset=args.dataset, split=args.split, seqlen=args.seqlen,
                                 max_windows=args.max_windows, batch_size=args.batch_size, device=args.device,
                                 dtype=args.dtype, data_dir_path=args.data_dir, output=args.output,
                                 overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    print(json.dumps({k: result[k] for k in ("ppl", "dataset", "split", "seqlen", "windows", "scored_tokens",
                                               "tokens_per_s")}, indent=2))
    return 0
