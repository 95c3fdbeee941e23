"""eval: perplexity of a model directory (more evaluations join as they land)."""
from __future__ import annotations

import json

from ..api import evaluate_perplexity
from .common import add_overwrite_argument, add_runtime_arguments, positive_int, quiet_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model (perplexity)",
        description="Token-level perplexity over non-overlapping windows (tail dropped), as in the "
                    "SparseGPT/Wanda papers. The result records dataset, split, seqlen, windows, scored tokens, "
                    "dtype, device, batch size and the scoring throughput (tokens_per_s: windows x seqlen per "
                    "second of forwards and NLL).")
    parser.add_argument("--model", required=True, help="model directory or zoo spec")
    parser.add_argument("--ppl", action="store_true", required=True, help="measure perplexity")
    parser.add_argument("--dataset", default="wikitext2", help="wikitext2 or a local .txt/.jsonl file")
    parser.add_argument("--split", default="test", help="wikitext2 split (default: test)")
    parser.add_argument("--seqlen", type=int, required=True, help="tokens per window (always explicit)")
    parser.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="windows per forward (default: 4)")
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
                                 overwrite=args.overwrite)
    print(json.dumps({k: result[k] for k in ("ppl", "dataset", "split", "seqlen", "windows", "scored_tokens",
                                               "tokens_per_s")}, indent=2))
    return 0
