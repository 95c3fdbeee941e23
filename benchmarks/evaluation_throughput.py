"""Throughput of the evaluations against the model's own forward, measured in one process.

Perplexity: the bare forward `model(input_ids)` over the evaluation windows (the floor), the project's scorer
(`windows_nll`, what `perplexity` times as scoring_seconds) and the earlier scorer (full cross-entropy over a
shifted copy of the logits), interleaved `--repeats` times on the same windows, batch, dtype and threads; the
best of each is reported, per wall second and per CPU second of the process (steadier when the machine is
shared), with the scorer/forward ratio (target >= 0.9). Zero-shot scoring speed is measured by
benchmarks/multiple_choice_throughput.py. `measure()` returns everything as a dict for a driver that imports it.

    PRUNING_DATA_DIR=../shared/data nice -n 19 .venv/bin/python benchmarks/evaluation_throughput.py \\
        --model ../shared/models/stories260K --seqlen 256 --windows 32
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch
import torch.nn.functional as F

from pruning.core.dtypes import DEFAULT_DTYPE, DTYPE_NAMES
import pruning
from pruning.core.data import evaluation_text
from pruning.core.token_windows import token_windows, windows_nll
from pruning.evaluation.perplexity import forward_throughput
from pruning.core.io import atomic_write_text
from pruning.core.modeling import load_model


@torch.no_grad()
def earlier_scorer(model, windows: torch.Tensor, batch_size: int) -> float:
    """Summed NLL as the project computed it before (kept here as the baseline): a float copy of the shifted
    logits, cross-entropy over the whole batch at once."""
    total = 0.0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size]
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1, :].float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum").item()
    return total


def timed(work) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process, all threads) of `work()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def perplexity_throughput(model, windows: torch.Tensor, batch_size: int, repeats: int) -> dict:
    """Best tokens/s (windows x seqlen per wall second, and per CPU second of this process: steadier on a
    shared machine) of forward, scorer and earlier scorer over `repeats` interleaved rounds, the ratios to the
    forward, and the NLL each scorer summed."""
    runs = {"forward": lambda: forward_throughput(model, windows, batch_size),
            "scorer": lambda: windows_nll(model, windows, batch_size)[0],
            "earlier_scorer": lambda: earlier_scorer(model, windows, batch_size)}
    wall, cpu, nll = {name: [] for name in runs}, {name: [] for name in runs}, {}
    forward_throughput(model, windows[:batch_size], batch_size)  # warm-up
    for _ in range(repeats):
        for name, work in runs.items():
            nll[name], wall_seconds, cpu_seconds = timed(work)
            wall[name].append(windows.numel() / wall_seconds)
            cpu[name].append(windows.numel() / cpu_seconds)
    best = {name: max(values) for name, values in wall.items()}
    best_cpu = {name: max(values) for name, values in cpu.items()}
    scorers = ("scorer", "earlier_scorer")
    return {"tokens_per_s": {name: round(value, 1) for name, value in best.items()},
            "tokens_per_cpu_s": {name: round(value, 1) for name, value in best_cpu.items()},
            "all_tokens_per_s": {name: [round(v, 1) for v in values] for name, values in wall.items()},
            "ratio_to_forward": {name: round(best[name] / best["forward"], 3) for name in scorers},
            "cpu_ratio_to_forward": {name: round(best_cpu[name] / best_cpu["forward"], 3) for name in scorers},
            "nll": {name: nll[name] for name in scorers},
            "ppl_relative_difference": abs(nll["scorer"] - nll["earlier_scorer"]) / nll["earlier_scorer"]}


def measure(model: str = "smollm2-135m", *, seqlen: int = 512, windows: int = 8, batch_size: int = 4,
            repeats: int = 3, threads: int | None = None, dtype: str = "float32", data_dir: str | None = None) -> dict:
    """Perplexity throughput of `model` (zoo spec or directory) on the CPU; see the module text."""
    if threads:
        torch.set_num_threads(threads)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    path = pruning.fetch_model(model)
    net, tokenizer = load_model(path, dtype=dtype, device="cpu")
    ids = token_windows(tokenizer, evaluation_text("wikitext2", "test", data_dir), seqlen, windows)
    result = {
        "model": model, "dtype": dtype, "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "perplexity": {"seqlen": seqlen, "windows": int(ids.shape[0]), "batch_size": batch_size, "repeats": repeats,
                       **perplexity_throughput(net, ids, batch_size, repeats)},
    }
    result["load_average_after"] = os.getloadavg()[0]
    return result


def markdown(result: dict) -> str:
    ppl = result["perplexity"]
    lines = [f"{result['model']}, {result['dtype']}, {result['torch_threads']} threads, load average "
             f"{result['load_average']:.1f} -> {result['load_average_after']:.1f} on {result['cpu_count']} cores", "",
             f"Perplexity: WikiText-2 test, {ppl['windows']} x {ppl['seqlen']} tokens, batch {ppl['batch_size']}, "
             f"best of {ppl['repeats']} interleaved rounds", "",
             "| | tokens/s | x forward | tokens per CPU s | x forward (CPU) |", "|---|---:|---:|---:|---:|",
             f"| bare forward | {ppl['tokens_per_s']['forward']:.0f} | 1.00 | {ppl['tokens_per_cpu_s']['forward']:.0f} "
             "| 1.00 |"]
    for name, label in (("scorer", "perplexity (windows_nll)"), ("earlier_scorer", "earlier scorer")):
        lines.append(f"| {label} | {ppl['tokens_per_s'][name]:.0f} | {ppl['ratio_to_forward'][name]:.2f} | "
                     f"{ppl['tokens_per_cpu_s'][name]:.0f} | {ppl['cpu_ratio_to_forward'][name]:.2f} |")
    lines += ["", f"NLL relative difference between the scorers: {ppl['ppl_relative_difference']:.1e}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="zoo spec or model directory")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=8, help="perplexity windows (WikiText-2 test)")
    parser.add_argument("--batch-size", type=int, default=4, help="perplexity windows per forward")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of forward and scorers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_NAMES)
    parser.add_argument("--data-dir", default=None, help="shared/data layout (else $PRUNING_DATA_DIR, else the hub)")
    parser.add_argument("--out", default=None, help="also write the result as JSON here (atomically)")
    args = parser.parse_args()
    result = measure(args.model, seqlen=args.seqlen, windows=args.windows, batch_size=args.batch_size,
                     repeats=args.repeats, threads=args.threads, dtype=args.dtype, data_dir=args.data_dir)
    print(markdown(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
