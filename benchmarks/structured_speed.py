"""Structured pruning on a real model: does the smaller model run faster, and what does it cost in quality?

For smollm2-135m (30 layers): dense, depth-pruned 25 % of the layers (angular distance, last token),
two-stage at prune rate 0.25, and heads at 25 %, all calibrated on C4 (never the test split). Each
model is saved and reloaded the way users load it (`pruning.load_model`), then measured:
WikiText-2 test perplexity (512-token windows, capped at --max-windows) and CPU tokens/s for prefill and
decode (batch 1, `pruning.evaluation.speed.measure_hf`; one run of every model per round, --repeats rounds
after a warm-up round, medians).
Ratios are against the dense model measured in the same process. Prints a Markdown table.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/structured_speed.py --out results/benchmarks/structured_speed.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pruning
from pruning.evaluation.perplexity import perplexity
from pruning.evaluation.speed import measure_hf
from pruning.core.io import atomic_write_text, versions
from pruning.core.modeling import parameter_counts
from pruning.core.surgery import rounded_count


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
    parser.add_argument("--repeats", type=int, default=7, help="timing rounds after the warm-up round (default: 7)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine 2+ OpenMP threads spin-wait on each other "
                             "and decode timings become meaningless)")
    parser.add_argument("--out", default=None, help="also write the Markdown table (and a .json beside it) here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = pruning.fetch_model(args.model)
    layers = json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]
    records = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, method, arguments in variants(layers):
            record = {"variant": label, "method": method, "arguments": arguments, "path": model_dir,
                      "prune_seconds": None, "result": {}}
            if method:
                record["path"] = Path(scratch) / f"{method}-{len(records)}"
                started = time.perf_counter()
                report = pruning.prune(args.model, method, record["path"], calib="c4", nsamples=args.nsamples,
                                       seqlen=args.seqlen, device="cpu", progress=False, **arguments)
                record["prune_seconds"] = time.perf_counter() - started
                record["result"] = {k: report["result"].get(k) for k in (
                    "removed_layers", "ffn_removed_layers", "mha_removed_layers", "removed_heads",
                    "parameters_removed", "prune_ratio_percent")}
            model, tokenizer = pruning.load_model(record["path"])  # reloaded as users load it
            record["perplexity"] = perplexity(model, tokenizer, "wikitext2", "test", 512, args.max_windows)
            record["parameters"] = parameter_counts(model)["total"]
            record["layers"] = len(pruning.get_adapter(model).decoder_layers(model))
            records.append(record)
            print(f"pruned and evaluated: {label}", flush=True)
        # Timing rounds interleave the models (one run of each per round, the first round a warm-up), so a
        # change in background load on the machine hits every model alike.
        models = [pruning.load_model(r["path"])[0] for r in records]
        runs = [{"prefill": [], "decode": []} for _ in records]
        for round_index in range(args.repeats + 1):
            for model, timing in zip(models, runs):
                measured = measure_hf(model, model.config.vocab_size, args.prompt_tokens, args.new_tokens,
                                      repeats=1, warmup=0)
                if round_index:
                    timing["prefill"].append(measured["prefill_seconds"]["median"])
                    timing["decode"].append(measured["decode_seconds"]["median"])
        for record, timing in zip(records, runs):
            record["speed"] = {"prefill_tokens_per_s": args.prompt_tokens / statistics.median(timing["prefill"]),
                               "decode_tokens_per_s": args.new_tokens / statistics.median(timing["decode"]),
                               "prefill_seconds": timing["prefill"], "decode_seconds": timing["decode"]}

    dense = records[0]["speed"]
    rows = [[r["variant"], str(r["layers"]), f"{r['parameters'] / 1e6:.2f} M",
             f"{(r['result'].get('prune_ratio_percent') or 0.0):.1f} %", f"{r['perplexity']['ppl']:.2f}",
             f"{r['speed']['prefill_tokens_per_s']:.0f}", f"{r['speed']['decode_tokens_per_s']:.1f}",
             f"{r['speed']['prefill_tokens_per_s'] / dense['prefill_tokens_per_s']:.2f}×",
             f"{r['speed']['decode_tokens_per_s'] / dense['decode_tokens_per_s']:.2f}×",
             "" if r["prune_seconds"] is None else f"{r['prune_seconds']:.0f}"] for r in records]
    header = ["model", "layers", "params", "removed", f"PPL (WikiText-2 test, 512 × {args.max_windows})",
              "prefill tok/s", "decode tok/s", "prefill ×", "decode ×", "prune s"]
    table = "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    notes = (f"\n\n{args.model}; calibration C4 {args.nsamples}×{args.seqlen} (seed 0); CPU, {args.threads} threads, "
             f"float32, batch 1, prompt {args.prompt_tokens} tokens, {args.new_tokens} decode steps, median of "
             f"{args.repeats} rounds after 1 warm-up round, models interleaved in every round; "
             f"torch {versions()['torch']}, transformers {versions()['transformers']}.")
    print(table + notes)
    if args.out:
        atomic_write_text(args.out, table + notes + "\n")
        atomic_write_text(Path(args.out).with_suffix(".json"), json.dumps(records, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
