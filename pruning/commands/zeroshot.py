"""zeroshot: accuracy of a model directory on one lm-eval task (hub, or the offline copy in the data directory)."""
from __future__ import annotations

import json

from ..evaluation.zeroshot import TASK_SOURCES, local_tasks, zeroshot
from .common import add_overwrite_argument, add_runtime_arguments, positive_int, quiet_progress


def _batch_size(value: str):
    return value if value == "auto" else positive_int(value)


def add_parser(subparsers) -> None:
    local = local_tasks()
    parser = subparsers.add_parser(
        "zeroshot", help="zero-shot accuracy on one lm-eval task",
        description="Run lm-evaluation-harness on MODEL (loaded by pruning.load_model, so pruned and heterogeneous "
                    "models work) for one task and write one JSON file with the metrics (value and stderr), the "
                    "document source (local file and sha256, or hub dataset), limit, documents scored, num_fewshot, "
                    "dtype, device and versions. Task names are lm-eval's (arc_easy, boolq, mmlu, gsm8k, ...). "
                    f"With a data directory, {', '.join(local)} read the local copies under <data dir>/zeroshot "
                    "(task definitions <name>_local, same prompts and metrics as lm-eval's); "
                    "--source hub forces lm-eval's own task. Log-likelihoods are lm-eval's values, computed with "
                    "less work: a document's shared context once, logits only where a continuation token is "
                    "predicted; the result records the throughput (requests, tokens fed and computed per second).")
    parser.add_argument("--model", required=True, help="model directory or zoo spec")
    parser.add_argument("--task", required=True, help="lm-eval task or group name, or <name>_local")
    parser.add_argument("--output", required=True, help="result JSON (written atomically)")
    add_overwrite_argument(parser)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N documents (quick runs)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="in-context examples (default: 0)")
    parser.add_argument("--batch-size", type=_batch_size, default=32, help="requests per forward (a document's requests stay together), or 'auto' (default: 32)")
    parser.add_argument("--source", choices=list(TASK_SOURCES), default="auto",
                        help="; ".join(f"{k}: {v}" for k, v in TASK_SOURCES.items()) + " (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="only errors from lm-eval's logging, no progress bars")
    add_runtime_arguments(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.quiet:
        quiet_progress()
    result = zeroshot(args.model, args.task, limit=args.limit, num_fewshot=args.num_fewshot,
                      batch_size=args.batch_size, device=args.device, dtype=args.dtype, data_dir_path=args.data_dir,
                      source=args.source, output=args.output, quiet=args.quiet,
                      overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    summary = {k: result[k] for k in ("task", "lm_eval_task", "n_docs", "num_fewshot")}
    summary["source"] = result["source"]["kind"]
    summary["metrics"] = {k: round(v["value"], 4) for k, v in result["metrics"].items()}
    summary["loglikelihood_tokens_per_s"] = result["throughput"]["loglikelihood"].get("tokens_per_s")
    print(json.dumps(summary, indent=2))
    return 0
