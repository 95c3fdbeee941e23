"""Zero-shot accuracy and measured speed of a dense model and its Wanda-pruned copy.

Prunes MODEL with Wanda (unstructured, --sparsity) once into --workdir, runs `pruning zeroshot` for each task on
both models and `pruning speed` on both (and on --gguf with llama.cpp when given), keeps every result JSON in
--workdir, and prints two Markdown tables: zero-shot in the PruneGPT layout (tasks as rows, models as columns,
Average last) and speed with the ratio to the dense model measured in the same script. The 1-minute load average
of the machine is printed with the speed table: on a busy machine, speed figures are not comparable.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/zeroshot_speed.py --tasks arc_easy piqa --limit 200
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

import pruning
from pruning.evaluation.speed import speed
from pruning.evaluation.zeroshot import zeroshot
from pruning.core.io import PRUNE_REPORT, atomic_write_text
from pruning.reporting.evaluations import EVALUATIONS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=["arc_easy", "piqa"])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and llama.cpp) threads for everything; 1 is steadier on a busy machine")
    parser.add_argument("--gguf", default=None, help="a GGUF of the dense model, measured with llama.cpp")
    parser.add_argument("--workdir", default="results/benchmarks/zeroshot_speed")
    parser.add_argument("--out", default=None, help="also write the Markdown tables here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    dense = pruning.fetch_model(args.model)
    wanda = workdir / f"wanda-s{args.sparsity:.2f}"
    if not (wanda / PRUNE_REPORT).is_file():
        pruning.prune(str(dense), "wanda", wanda, sparsity=args.sparsity, nsamples=args.nsamples, seqlen=args.seqlen,
                      device="cpu", progress=False)
    models = {"dense": str(dense), f"wanda {args.sparsity:.0%}": str(wanda)}

    accuracy: dict[str, dict[str, float]] = {}
    for label, path in models.items():
        for task in args.tasks:
            result = zeroshot(path, task, limit=args.limit, batch_size=args.batch_size, device="cpu", quiet=True,
                              output=str(workdir / label.replace(" ", "-").replace("%", "") / EVALUATIONS["zeroshot"].file_name(task)))
            metric = "acc_norm" if "acc_norm" in result["metrics"] else "acc"
            accuracy.setdefault(f"{task} ({metric}, {result['n_docs']} docs, {result['source']['kind']})",
                                {})[label] = result["metrics"][metric]["value"]
    lines = ["| task | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for row, values in accuracy.items():
        lines.append(f"| {row} | " + " | ".join(f"{100 * values[m]:.1f}" for m in models) + " |")
    lines.append("| Average | " + " | ".join(
        f"{100 * sum(v[m] for v in accuracy.values()) / len(accuracy):.1f}" for m in models) + " |")

    measured = {}
    for label, path in models.items():
        measured[label] = speed(path, gguf=args.gguf if label == "dense" else None, prompt_tokens=args.prompt_tokens,
                                new_tokens=args.new_tokens, repeats=args.repeats, device="cpu", threads=args.threads,
                                output=str(workdir / label.replace(" ", "-").replace("%", "") / EVALUATIONS["speed"].file_name()))
    base = measured["dense"]["hf"]
    lines += ["", f"Speed (CPU, batch 1, prompt {args.prompt_tokens}, {args.new_tokens} new tokens, median of "
                  f"{args.repeats}, {measured['dense']['settings']['threads']} threads, load average "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", "",
              "| model | non-zero params | safetensors MB | prefill tok/s | decode tok/s | prefill x dense | decode x dense |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, result in measured.items():
        hf, size = result["hf"], result["size"]
        lines.append(f"| {label} (transformers) | {size['parameters']['nonzero'] / 1e6:.1f} M | "
                     f"{size['safetensors_bytes']['total'] / 2**20:.1f} | {hf['prefill_tokens_per_s']:.0f} | "
                     f"{hf['decode_tokens_per_s']:.1f} | {hf['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f} | "
                     f"{hf['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f} |")
        gguf = result["gguf"]
        if gguf and "skipped" not in gguf:
            gguf_size = result["size"]["gguf"]
            lines.append(f"| {label} (llama.cpp, {Path(gguf_size['path']).name}) | | "
                         f"{gguf_size['bytes'] / 2**20:.1f} | {gguf['prefill_tokens_per_s']:.0f} | "
                         f"{gguf['decode_tokens_per_s']:.1f} | "
                         f"{gguf['prefill_tokens_per_s'] / base['prefill_tokens_per_s']:.2f} | "
                         f"{gguf['decode_tokens_per_s'] / base['decode_tokens_per_s']:.2f} |")
    lines += ["", measured["dense"]["sparse_speedup_note"]]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
    print(f"result JSON files under {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
