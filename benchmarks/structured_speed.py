"""Structured pruning on a real model: does the smaller model run faster, and what does it cost in quality?

For smollm2-135m (30 layers): dense, depth-pruned 25 % of the layers (angular distance, last token),
two-stage at prune rate 0.25, and heads at 25 %, all calibrated on C4 (never the test split). Each
model is saved and reloaded the way users load it (`pruning.load_model`), then measured:
WikiText-2 test perplexity (512-token windows, capped at --max-windows) and CPU tokens/s for prefill and
decode (batch 1, medians of --repeats runs after warm-up; `pruning.evaluation.speed.measure_hf`).
Ratios are against the dense model measured in the same process. Prints a Markdown table.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/structured_speed.py --out results/tables/structured_speed.md
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import pruning
from pruning.evaluation.perplexity import perplexity
from pruning.evaluation.speed import measure_hf
from pruning.io import atomic_write_text, versions
from pruning.modeling import parameter_counts
from pruning.structure import rounded_count


def variants(num_layers: int) -> list[tuple[str, str | None, dict]]:
    depth_blocks = rounded_count(0.25, num_layers)
    return [
        ("dense", None, {}),
        (f"depth, {depth_blocks} of {num_layers} layers (angular)", "depth", {"num_blocks": depth_blocks}),
        ("two_stage, rate 0.25", "two_stage", {"prune_rate": 0.25}),
        ("heads, 25 % (magnitude)", "heads", {"fraction": 0.25}),
        ("heads, 25 % (activation, whole groups)", "heads", {"fraction": 0.25, "importance": "activation", "gqa": "group"}),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--nsamples", type=int, default=32, help="C4 calibration windows (default: 32)")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration window length (default: 512)")
    parser.add_argument("--max-windows", type=int, default=32, help="WikiText-2 test windows of 512 tokens scored")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine 2+ OpenMP threads spin-wait on each other "
                             "and decode timings become meaningless)")
    parser.add_argument("--out", default=None, help="also write the Markdown table (and a .json beside it) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = pruning.fetch_model(args.model)
    layers = json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]
    rows, records = [], []
    with tempfile.TemporaryDirectory() as scratch:
        dense_speed = None
        for label, method, arguments in variants(layers):
            path, prune_seconds, result = model_dir, None, {}
            if method:
                path = Path(scratch) / f"{method}-{len(records)}"
                started = time.perf_counter()
                report = pruning.prune(args.model, method, path, calib="c4", nsamples=args.nsamples,
                                       seqlen=args.seqlen, device="cpu", progress=False, **arguments)
                prune_seconds, result = time.perf_counter() - started, report["result"]
            model, tokenizer = pruning.load_model(path)
            ppl = perplexity(model, tokenizer, "wikitext2", "test", 512, args.max_windows)
            speed = measure_hf(model, model.config.vocab_size, args.prompt_tokens, args.new_tokens, args.repeats)
            dense_speed = dense_speed or speed
            params = parameter_counts(model)["total"]
            rows.append([label, str(len(pruning.get_adapter(model).decoder_layers(model))), f"{params / 1e6:.2f} M",
                         f"{result.get('prune_ratio_percent', 0.0):.1f} %", f"{ppl['ppl']:.2f}",
                         f"{speed['prefill_tokens_per_s']:.0f}", f"{speed['decode_tokens_per_s']:.1f}",
                         f"{speed['prefill_tokens_per_s'] / dense_speed['prefill_tokens_per_s']:.2f}×",
                         f"{speed['decode_tokens_per_s'] / dense_speed['decode_tokens_per_s']:.2f}×",
                         "" if prune_seconds is None else f"{prune_seconds:.0f}"])
            records.append({"variant": label, "method": method, "arguments": arguments, "parameters": params,
                            "result": {k: result.get(k) for k in ("removed_layers", "ffn_removed_layers",
                                                                  "mha_removed_layers", "removed_heads",
                                                                  "parameters_removed", "prune_ratio_percent")},
                            "perplexity": ppl, "speed": speed, "prune_seconds": prune_seconds})
            print(f"done: {label}", flush=True)

    header = ["model", "layers", "params", "removed", f"PPL (WikiText-2 test, 512 × {args.max_windows})",
              "prefill tok/s", "decode tok/s", "prefill ×", "decode ×", "prune s"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    notes = (f"\n\n{args.model}; calibration C4 {args.nsamples}×{args.seqlen} (seed 0); CPU, {args.threads} threads, "
             f"float32, batch 1, prompt {args.prompt_tokens} tokens, {args.new_tokens} decode steps, median of "
             f"{args.repeats} runs after 1 warm-up; torch {versions()['torch']}, transformers {versions()['transformers']}.")
    print(table + notes)
    if args.out:
        atomic_write_text(args.out, table + notes + "\n")
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(records, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
