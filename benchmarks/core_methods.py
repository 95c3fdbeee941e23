"""Benchmark of the core methods on a real model: magnitude, Wanda and SparseGPT at 50 %, 4:8 and 2:4,
Wanda and SparseGPT also in one-pass mode.

Prints (and writes with --out) a Markdown table of WikiText-2 test perplexity, prune wall time, peak RSS,
and the ratio of prune time to the floor: one plain forward pass of the model over the same calibration
tokens, measured by this script. Each prune runs in its own process so peak RSS is its own.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/core_methods.py --threads 1 --out core_benchmark.md

With --results DIR the prunes are not repeated: the table is built from the workflow's measured runs
(DIR/metrics/{model}/{method}/{ratio}/prune.json and ppl.json, which record their own protocol) and only
the floor is measured here; pass --threads to match the threads those jobs used.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import pruning
from pruning.core.data import calibration_windows
from pruning.evaluation.perplexity import forward_throughput
from pruning.core.io import PRUNE_REPORT, atomic_write_text, peak_rss_mb
from pruning.reporting.evaluations import EVALUATIONS

PPL_FILE = EVALUATIONS["ppl"].file_name()

PATTERNS = (("50%", ["--sparsity", "0.5"], "s0.50"), ("4:8", ["--nm", "4:8"], "nm4-8"), ("2:4", ["--nm", "2:4"], "nm2-4"))
METHODS = ("magnitude", "wanda", "sparsegpt")
# Rows measured here: each method as the reference implementations run it (two passes per layer), and
# Wanda / SparseGPT in one-pass mode (each linear pruned as its input arrives, one layer forward).
VARIANTS = (("magnitude", "magnitude", []), ("wanda", "wanda", []), ("sparsegpt", "sparsegpt", []),
            ("wanda one-pass", "wanda", ["--option", "one_pass=true"]),
            ("sparsegpt one-pass", "sparsegpt", ["--option", "one_pass=true"]))


def forward_floor(model_dir: Path, nsamples: int, seqlen: int, batch_size: int, seed: int) -> float:
    """Seconds for one plain forward pass (with logits) over the calibration windows."""
    model, tokenizer = pruning.load_model(model_dir)
    windows, _ = calibration_windows(tokenizer, "c4", nsamples, seqlen, seed)
    forward_throughput(model, windows[:1], 1)  # warm-up
    return windows.numel() / forward_throughput(model, windows, batch_size)


def measured_rows(args, model_dir: Path, floor_seconds: float):
    """Prune every method variant × pattern here, each in its own process with the floor's thread count."""
    dense = pruning.evaluate_perplexity(str(model_dir), seqlen=512, max_windows=args.max_windows, device="cpu")
    rows = [("dense", "-", dense["ppl"], None, None, None)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with tempfile.TemporaryDirectory() as scratch:
        for name, method, options in VARIANTS:
            if args.methods and name not in args.methods:
                continue
            for label, ratio, token in PATTERNS:
                out = Path(scratch) / f"{name.replace(' ', '-')}-{token}"
                subprocess.run([sys.executable, "-m", "pruning", "prune", "--model", str(model_dir), "--method", method,
                                *ratio, *options, "--output-dir", str(out), "--calib", "c4", "--nsamples",
                                str(args.nsamples), "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size),
                                "--seed", str(args.seed), "--device", "cpu", "--quiet"],
                               check=True, capture_output=True, env=env)
                report = json.loads((out / PRUNE_REPORT).read_text())
                ppl = pruning.evaluate_perplexity(str(out), seqlen=512, max_windows=args.max_windows, device="cpu")
                rows.append((name, label, ppl["ppl"], report["prune_seconds"], report["peak_rss_mb"],
                             report["prune_seconds"] / floor_seconds))
                print(f"{name} {label}: ppl {ppl['ppl']:.2f}, {report['prune_seconds']:.1f} s "
                      f"({report['prune_seconds'] / floor_seconds:.2f}x floor)", file=sys.stderr)
    protocol = (f"calibration C4 {args.nsamples} x {args.seqlen} (seed {args.seed}, batch {args.batch_size}; "
                f"one-pass rows: all windows in one batch)")
    return rows, dense, protocol


def result_rows(results: Path, model: str, floor_seconds: float):
    """The same table from a workflow run's metric files."""
    metrics = results / "metrics" / model
    dense = json.loads((metrics / "dense" / "base" / PPL_FILE).read_text())
    rows = [("dense", "-", dense["ppl"], None, None, None)]
    calibration = None
    for method in METHODS:
        for label, _, token in PATTERNS:
            report = json.loads((metrics / method / token / PRUNE_REPORT).read_text())
            ppl = json.loads((metrics / method / token / PPL_FILE).read_text())
            calibration = report["calibration"] or calibration
            rows.append((method, label, ppl["ppl"], report["prune_seconds"], report["peak_rss_mb"],
                         report["prune_seconds"] / floor_seconds))
    protocol = (f"runs from {results} (calibration {calibration['source']} {calibration['nsamples']} x "
                f"{calibration['seqlen']}, seed {calibration['seed']})")
    return rows, dense, protocol


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-windows", type=int, default=64, help="WikiText-2 test windows scored (512 tokens each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=None, help="build the table from a workflow results directory")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--methods", nargs="+", choices=[name for name, _, _ in VARIANTS], default=None,
                        help="measure only these rows (default: all)")
    parser.add_argument("--floor-only", action="store_true", help="measure the forward floor and exit (internal)")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = pruning.fetch_model(args.model)
    if args.floor_only:
        seconds = forward_floor(model_dir, args.nsamples, args.seqlen, args.batch_size, args.seed)
        print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))
        return 0

    command = [sys.executable, __file__, "--floor-only", "--model", args.model, "--nsamples", str(args.nsamples),
               "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    floor = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    if args.results:
        rows, dense, protocol = result_rows(Path(args.results), args.model, floor["seconds"])
    else:
        rows, dense, protocol = measured_rows(args, model_dir, floor["seconds"])

    lines = [
        f"Model {args.model}; {protocol}; WikiText-2 test PPL, {dense['windows']} windows x {dense['seqlen']} tokens; "
        f"CPU, float32. Floor: one plain forward pass over the calibration tokens ({args.nsamples} x {args.seqlen}, "
        f"batch {args.batch_size}, {torch.get_num_threads()} threads) = {floor['seconds']:.1f} s "
        f"(peak RSS {floor['peak_rss_mb']:.0f} MiB).",
        "",
        "| method | pattern | PPL | prune time (s) | x floor | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for method, label, ppl, seconds, rss, ratio in rows:
        cells = [f"{seconds:.1f}" if seconds is not None else "-", f"{ratio:.2f}" if ratio is not None else "-",
                 f"{rss:.0f}" if rss is not None else "-"]
        lines.append(f"| {method} | {label} | {ppl:.2f} | {' | '.join(cells)} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
