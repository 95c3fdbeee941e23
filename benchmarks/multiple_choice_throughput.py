"""Multiple-choice scoring speed: documents per second of the packed scorer against today's path, in one process.

On the same model object, documents, shots and threads, each task is scored by lm-eval's own loglikelihood
(the reference), by the continuation-only scorer that the grid used before (`--old-batch`, "today's path"),
and by the packed scorer at each `--packed-batches` size (pruning/evaluation/scoring_lm.py). For every
request, the log-likelihood must equal lm-eval's to `--tolerance` relative and the greedy flag must be the
same; the table gives documents/s, the speed-up over today's path, and the tokens each scorer computed
against the floor (the distinct input prefixes of each document: what any sharing scheme must compute).
Rounds are interleaved (`--repeats`) and the best of each scorer is kept, per wall second and per CPU second
of the process (steadier on a shared machine).

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/multiple_choice_throughput.py --threads 2 \\
        --limit 100 --out results/published/benchmarks/multiple-choice-throughput.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

import pruning
from pruning.core.dtypes import DEFAULT_DTYPE, DTYPE_NAMES
from pruning.core.io import atomic_write_text
from pruning.core.modeling import load_model
from pruning.evaluation.zeroshot import evaluation_lm, load_task, resolve_task, run_lm_eval

TASKS = {"winogrande": 5, "arc_easy": 0, "hellaswag": 0}  # task -> shots (the three, Winogrande 5-shot)


def scored(model, tokenizer, task: str, shots: int, limit: int, scoring: str, batch_size: int,
           data_dir: str | None) -> dict:
    """One scoring of one task: every request's (log-likelihood, greedy), the metrics and the counts."""
    manager, task_object, _ = load_task(resolve_task(task, data_dir_path=data_dir))
    lm = evaluation_lm(model, tokenizer, batch_size, "cpu", scoring=scoring)
    wall, cpu = time.perf_counter(), time.process_time()
    evaluated = run_lm_eval(lm, manager, task_object, num_fewshot=shots, limit=limit, quiet=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    samples = next(iter(evaluated["samples"].values()))
    counted = lm.throughput()["loglikelihood"]
    return {"answers": [response[0] for sample in samples for response in sample["resps"]],
            "metrics": {key: value for key, value in next(iter(evaluated["results"].values())).items()
                        if key.endswith(",none")},
            "documents": len(samples), "loglikelihood_seconds": counted["seconds"], "wall_seconds": wall,
            "cpu_seconds": cpu, "tokens_fed": counted["tokens"], "tokens_computed": counted["computed_tokens"],
            "floor_tokens": counted["floor_tokens"], "requests": counted["requests"]}


def largest_relative_difference(answers: list, reference: list) -> tuple[float, bool]:
    """Largest |ll - ll_ref| / max(|ll_ref|, 1e-12) over the requests, and whether every greedy flag agrees."""
    worst = max(abs(ll - ref) / max(abs(ref), 1e-12) for (ll, _), (ref, _) in zip(answers, reference))
    return worst, all(greedy == ref for (_, greedy), (_, ref) in zip(answers, reference))


def measure(model: str = "smollm2-135m", *, tasks: dict[str, int] = TASKS, limit: int = 100, old_batch: int = 8,
            packed_batches: tuple[int, ...] = (8, 32), repeats: int = 2, threads: int | None = None,
            dtype: str = DEFAULT_DTYPE, data_dir: str | None = None) -> dict:
    """Every task under every scorer, `repeats` interleaved rounds; see the module text."""
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    net, tokenizer = load_model(pruning.fetch_model(model), dtype=dtype, device="cpu")
    settings = [("lm-eval", "lm-eval", old_batch), ("today: continuations", "continuations", old_batch)]
    settings += [(f"packed, batch {batch}", "packed", batch) for batch in packed_batches]
    result = {"model": model, "dtype": dtype, "torch_threads": torch.get_num_threads(), "limit": limit,
              "repeats": repeats, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0], "tasks": {}}
    for task, shots in tasks.items():
        runs: dict[str, dict] = {}
        for _ in range(repeats):
            for label, scoring, batch in settings:
                run = scored(net, tokenizer, task, shots, limit, scoring, batch, data_dir)
                best = runs.setdefault(label, run | {"batch_size": batch, "scoring": scoring, "round_seconds": []})
                best["round_seconds"].append(run["loglikelihood_seconds"])
                best["loglikelihood_seconds"] = min(best["loglikelihood_seconds"], run["loglikelihood_seconds"])
                best["cpu_seconds"] = min(best["cpu_seconds"], run["cpu_seconds"])
        reference, today = runs["lm-eval"], runs["today: continuations"]
        for run in runs.values():
            run["documents_per_s"] = run["documents"] / run["loglikelihood_seconds"]
            run["documents_per_cpu_s"] = run["documents"] / run["cpu_seconds"]
            run["documents_per_s_slowest_round"] = run["documents"] / max(run["round_seconds"])
        for run in runs.values():
            # the speed-up with the rounds' spread: slowest round against today's fastest, fastest against slowest
            run["speedup_range"] = [run["documents_per_s_slowest_round"] / today["documents_per_s"],
                                    run["documents_per_s"] / today["documents_per_s_slowest_round"]]
            run["speedup"] = run["documents_per_s"] / today["documents_per_s"]
            run["cpu_speedup"] = run["documents_per_cpu_s"] / today["documents_per_cpu_s"]
            run["largest_relative_difference"], run["same_greedy"] = largest_relative_difference(
                run["answers"], reference["answers"])
            run["same_metrics"] = run["metrics"] == reference["metrics"]
        for run in runs.values():
            del run["answers"]
        result["tasks"][task] = {"shots": shots, "runs": runs}
    result["load_average_after"] = os.getloadavg()[0]
    return result


def markdown(result: dict, tolerance: float) -> str:
    lines = [f"{result['model']}, {result['dtype']}, {result['torch_threads']} threads, the first {result['limit']} "
             f"documents of each task, best of {result['repeats']} interleaved rounds; load average "
             f"{result['load_average']:.1f} -> {result['load_average_after']:.1f} on {result['cpu_count']} cores.",
             "", "docs/s: the fastest round, with the slowest in brackets; x today: documents/s against the "
             "continuation-only scorer the grid used before (batch 8), fastest round against fastest, in brackets "
             "the range the rounds allow (slowest against fastest, fastest against slowest): how sure the figure is. "
             "Per CPU second: fastest rounds only, no spread given. Token counts and log-likelihood differences are exact "
             "(the same in every round). Tokens: as lm-eval feeds them / as the scorer computed them / the floor (distinct input "
             "prefixes per document). Likelihoods: the largest relative difference of any request's "
             f"log-likelihood from lm-eval's (target <= {tolerance:g}), and whether every greedy flag and metric "
             "is the same.", "",
             "| task | shots | scorer | docs/s | x today | docs per CPU s | x today (CPU) | tokens fed | computed "
             "| floor | computed / floor | likelihoods vs lm-eval |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for task, entry in result["tasks"].items():
        for label, run in entry["runs"].items():
            floor = run["floor_tokens"]
            same = run["largest_relative_difference"] <= tolerance and run["same_greedy"] and run["same_metrics"]
            lines.append(
                f"| {task} | {entry['shots']} | {label} | {run['documents_per_s']:.2f} "
                f"[{run['documents_per_s_slowest_round']:.2f}] | {run['speedup']:.2f} "
                f"[{run['speedup_range'][0]:.2f}–{run['speedup_range'][1]:.2f}] | "
                f"{run['documents_per_cpu_s']:.2f} | {run['cpu_speedup']:.2f} | {run['tokens_fed']} | "
                f"{run['tokens_computed']} | {floor if floor else '-'} | "
                f"{run['tokens_computed'] / floor if floor else float('nan'):.3f} | "
                f"{run['largest_relative_difference']:.1e} {'same' if same else 'DIFFERENT'} |".replace("nan", "-"))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="zoo spec or model directory")
    parser.add_argument("--limit", type=int, default=100, help="documents per task")
    parser.add_argument("--old-batch", type=int, default=8, help="batch of lm-eval and of today's scorer")
    parser.add_argument("--packed-batches", type=int, nargs="+", default=[8, 32], help="packed scorer batch sizes")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest relative log-likelihood difference")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES)
    parser.add_argument("--data-dir", default=None, help="shared/data layout (else $PRUNING_DATA_DIR, else the hub)")
    parser.add_argument("--out", default=None, help="also write the result as JSON here, and the table beside it")
    args = parser.parse_args()
    result = measure(args.model, limit=args.limit, old_batch=args.old_batch, packed_batches=tuple(args.packed_batches),
                     repeats=args.repeats, threads=args.threads, dtype=args.dtype, data_dir=args.data_dir)
    table = markdown(result, args.tolerance)
    print(table)
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
        atomic_write_text(os.path.splitext(args.out)[0] + ".md", table)
    worst = max(run["largest_relative_difference"] for entry in result["tasks"].values()
                for run in entry["runs"].values())
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    raise SystemExit(main())
