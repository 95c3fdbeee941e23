"""Benchmark of the GGUF export: conversion time, and llama.cpp-vs-Hugging Face perplexity agreement.

1. Conversion time of the model to f16 and q8_0 (median of --repeats runs), against a baseline measured
   here: loading the same model with transformers and writing it back with `save_pretrained`.
2. For a dense model, 50 % Wanda, a depth-pruned and a two-stage model (all built with `pruning.prune`),
   WikiText-2 test perplexity of the Hugging Face model (float32) and of each GGUF file in llama.cpp, on
   the same token windows (`--seqlen` tokens, at most `--max-windows` of them, every shifted target
   scored), with file size, load time and how many greedy tokens agree with the HF model.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/gguf_export.py --out results/benchmarks/gguf_export.md
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import pruning
from pruning.core.data import evaluation_text
from pruning.core.token_windows import token_windows, windows_nll
from pruning.export import export_gguf
from pruning.evaluation.llamacpp import agreeing_prefix, gguf_summary, hf_greedy, llama_greedy, llama_windows_nll, load_llama
from pruning.core.io import atomic_write_json, atomic_write_text, versions
from pruning.core.modeling import parameter_counts


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def conversion_times(model_dir: Path, work: Path, repeats: int) -> dict:
    def hf_round_trip():
        model, tokenizer = pruning.load_model(model_dir)
        pruning.save_model(model, tokenizer, work / "hf-copy", overwrite=True)  # its own scratch copy, saved each repeat

    times = {"hf load + save_pretrained": median_seconds(hf_round_trip, repeats)}
    for outtype in ("f16", "q8_0"):
        times[f"convert to {outtype}"] = median_seconds(
            lambda: export_gguf(model_dir, work / f"timing-{outtype}.gguf", outtype), repeats)
    return times


def build_models(spec: str, work: Path, nsamples: int, calib_seqlen: int, depth_blocks: int, two_stage_rate: float) -> dict:
    """name → (directory or None, note) for dense, Wanda 50 %, depth and two-stage."""
    common = dict(calib="c4", nsamples=nsamples, seqlen=calib_seqlen, seed=0, device="cpu", progress=False)
    recipes = {
        "wanda 50%": ("wanda", dict(sparsity=0.5)),
        f"depth -{depth_blocks} layers (angular)": ("depth", dict(num_blocks=depth_blocks, criterion="angular")),
        f"two_stage r{two_stage_rate}": ("two_stage", dict(prune_rate=two_stage_rate)),
    }
    models = {"dense": (Path(pruning.fetch_model(spec)), "")}
    for name, (method, arguments) in recipes.items():
        dest = work / method
        started = time.perf_counter()
        try:
            report = pruning.prune(spec, method, dest, **common, **arguments)
        except Exception as exc:  # noqa: BLE001 - a failing method is reported in the table, not hidden
            models[name] = (None, f"prune failed: {type(exc).__name__}: {exc}")
            continue
        result = report["result"]
        detail = {k: result[k] for k in ("removed_layers", "ffn_removed_layers", "mha_removed_layers",
                                         "prune_ratio_percent") if k in result}
        models[name] = (dest, f"pruned in {time.perf_counter() - started:.0f} s {json.dumps(detail) if detail else ''}".strip())
    return models


def evaluate(name: str, model_dir: Path, windows: torch.Tensor, outtypes: list[str], work: Path, threads: int,
             generate: int) -> list[dict]:
    model, _ = pruning.load_model(model_dir)
    nll, scored = windows_nll(model, windows, batch_size=1, device=torch.device("cpu"))
    hf_ppl = math.exp(nll / scored)
    prompt = windows[0, :32].tolist()
    hf_tokens = hf_greedy(model, prompt, generate)
    counts = parameter_counts(model)
    del model
    rows = []
    for outtype in outtypes:
        path = work / f"{name.split()[0]}-{outtype}.gguf"
        report = export_gguf(model_dir, path, outtype, threads=threads)
        llm, load_seconds = load_llama(path, windows.shape[1], threads)
        try:
            gguf_nll, gguf_scored = llama_windows_nll(llm, windows)
            tokens = llama_greedy(llm, prompt, generate)
        finally:
            llm.close()
        gguf_ppl = math.exp(gguf_nll / gguf_scored)
        rows.append({"model": name, "parameters": counts, "hf_ppl": hf_ppl, "outtype": outtype,
                     "arch": report["arch"], "blocks": report["block_count"], "bytes": report["bytes"],
                     "load_seconds": load_seconds, "gguf_ppl": gguf_ppl, "relative_difference": (gguf_ppl - hf_ppl) / hf_ppl,
                     "greedy_agreeing": agreeing_prefix(hf_tokens, tokens), "greedy_tokens": generate,
                     "tensor_types": gguf_summary(path)["tensor_types"]})
        path.unlink()
    return rows


def markdown(times: dict, rows: list[dict], notes: dict, settings: dict) -> str:
    baseline = times["hf load + save_pretrained"]
    lines = [f"### GGUF conversion time ({settings['model']}, median of {settings['repeats']})", "",
             "| operation | seconds | ratio to HF load + save |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {v / baseline:.2f} |" for k, v in times.items()]
    lines += ["", f"### llama.cpp vs Hugging Face perplexity (WikiText-2 test, {settings['windows']} windows of "
                  f"{settings['seqlen']} tokens = {settings['scored_tokens']} scored targets; HF float32 on CPU; "
                  f"llama.cpp {settings['llama_cpp_python']}, {settings['threads']} threads)", "",
              "| model | arch (blocks) | params (non-zero) | HF PPL | type | GGUF MB | load s | GGUF PPL | Δ vs HF | "
              f"greedy agree (of {settings['generate']}) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        params = row["parameters"]
        lines.append(f"| {row['model']} | {row['arch']} ({row['blocks']}) | {params['total'] / 1e6:.1f}M "
                     f"({params['nonzero'] / 1e6:.1f}M) | {row['hf_ppl']:.3f} | {row['outtype']} | {row['bytes'] / 2**20:.1f} | "
                     f"{row['load_seconds']:.3f} | {row['gguf_ppl']:.3f} | {100 * row['relative_difference']:+.2f}% | "
                     f"{row['greedy_agreeing']} |")
    notes_lines = [f"- {name}: {note}" for name, note in notes.items() if note]
    return "\n".join(lines + ([""] + notes_lines if notes_lines else [])) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=32, help="WikiText-2 test windows scored")
    parser.add_argument("--outtypes", nargs="+", default=["f16", "q8_0", "q4_k_m"])
    parser.add_argument("--nsamples", type=int, default=32, help="C4 calibration windows for the pruned models")
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--depth-blocks", type=int, default=6)
    parser.add_argument("--two-stage-rate", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--generate", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", default=None, help="keep the pruned models here (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="also write the Markdown table here (and the rows as .json)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        dense_dir = Path(pruning.fetch_model(args.model))
        times = conversion_times(dense_dir, work, args.repeats)
        models = build_models(args.model, work, args.nsamples, args.calib_seqlen, args.depth_blocks, args.two_stage_rate)
        tokenizer = pruning.load_model(dense_dir)[1]
        windows = token_windows(tokenizer, evaluation_text("wikitext2", "test"), args.seqlen, args.max_windows)
        rows, notes = [], {}
        for name, (path, note) in models.items():
            notes[name] = note
            if path is not None:
                rows += evaluate(name, path, windows, args.outtypes, work, args.threads, args.generate)

    settings = {"model": args.model, "repeats": args.repeats, "windows": int(windows.shape[0]), "seqlen": args.seqlen,
                "scored_tokens": int(windows.shape[0]) * (args.seqlen - 1), "threads": args.threads,
                "generate": args.generate, "llama_cpp_python": versions("llama_cpp_python")["llama_cpp_python"],
                "calibration": {"source": "c4", "nsamples": args.nsamples, "seqlen": args.calib_seqlen, "seed": 0}}
    table = markdown(times, rows, notes, settings)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
        atomic_write_json(Path(args.out).with_suffix(".json"), {"settings": settings, "conversion_seconds": times,
                                                               "rows": rows, "notes": notes, "versions": versions()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
