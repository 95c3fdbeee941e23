"""gguf-eval: perplexity of a GGUF file in llama.cpp on the Hugging Face evaluator's token windows."""
from __future__ import annotations

import argparse
import json

from .common import add_overwrite_argument


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gguf-eval", help="llama.cpp perplexity of a GGUF file, size and load time (vs the HF model)",
        description="Load GGUF in llama.cpp (llama-cpp-python) and measure token-level perplexity on exactly the "
                    "windows `pruning eval` uses (MODEL's tokenizer, non-overlapping windows of --seqlen tokens, "
                    "every shifted target scored), plus file size, load time, greedy-generation agreement and "
                    "tokenizer agreement. With --compare-hf (default) the Hugging Face model is scored on the "
                    "same windows and the relative difference recorded.")
    parser.add_argument("--gguf", required=True, help="GGUF file")
    parser.add_argument("--model", required=True, help="the Hugging Face directory it came from (tokenizer, reference)")
    parser.add_argument("--seqlen", type=int, required=True, help="tokens per window (always explicit)")
    parser.add_argument("--max-windows", type=int, default=None, help="score at most this many windows")
    parser.add_argument("--dataset", default="wikitext2", help="wikitext2 or a local .txt/.jsonl file")
    parser.add_argument("--split", default="test", help="wikitext2 split (default: test)")
    parser.add_argument("--data-dir", default=None, help="local data directory (else $PRUNING_DATA_DIR, else the hub)")
    parser.add_argument("--compare-hf", action=argparse.BooleanOptionalAction, default=True,
                        help="also score the Hugging Face model on the same windows (default: on)")
    parser.add_argument("--generate", type=int, default=16, help="greedy tokens to compare (default: 16; 0 = none)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: torch's thread count)")
    parser.add_argument("--output", default=None, help="write the metrics JSON here (atomically)")
    add_overwrite_argument(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..evaluation.llamacpp import evaluate_gguf

    result = evaluate_gguf(args.gguf, args.model, dataset=args.dataset, split=args.split, seqlen=args.seqlen,
                           max_windows=args.max_windows, data_dir=args.data_dir, compare_hf=args.compare_hf,
                           generate_tokens=args.generate, threads=args.threads, output=args.output,
                           overwrite=args.overwrite)
    summary = {k: result.get(k) for k in ("ppl", "relative_difference", "windows", "scored_tokens", "load_seconds")}
    summary["bytes"] = result["gguf"]["bytes"]
    summary["reference_ppl"] = (result.get("reference") or {}).get("ppl")
    summary["generation_agreeing_prefix"] = result["generation"].get("agreeing_prefix")
    print(json.dumps(summary, indent=2))
    return 0
