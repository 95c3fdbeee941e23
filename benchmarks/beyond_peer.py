"""The project's one-shot configurations against llm-compressor's best on the same windows (issue 26's targets).

For one target (an unstructured sparsity or an N:M pattern) it prunes smollm2-135m with llm-compressor 0.14 in
each of its profiles (uniform; the per-layer list of the project's ramp, target ± 0.1 over the decoder layers;
OWL) through benchmarks/llmcompressor_worker.py in the peer's venv, then with each of the project's rows (SparseGPT,
ALPS, with the ramp, the searched allocation and block reconstruction, and optionally LoRA recovery), all on the
same C4 calibration windows, one job at a time. Every model is scored on the same WikiText-2 test windows by the
project's perplexity; each PPL carries its 95 % interval, and each of the project's rows its ratio to the peer's
best (the lowest-PPL profile that ran) paired window by window, with the interval of that ratio, and its pruning
time as a multiple of the project's plain SparseGPT in the same run. Writes beyond.md and beyond.json into
--out-dir, each replaced atomically.

    bash scripts/setup_peer.sh     # once: .venv-peer with llm-compressor 0.14
    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/beyond_peer.py --target 0.7 --threads 2 \\
        --out-dir results/beyond-70
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoConfig, AutoTokenizer

import pruning
from pruning.commands.common import quiet_progress
from pruning.core.data import calibration_windows
from pruning.core.io import atomic_write_text, versions
from pruning.core.zoo import resolve as resolve_spec
from pruning.reporting.uncertainty import perplexity_figure
from pruning.methods.allocation import ramp

from versus_llmcompressor import DEFAULT_PEER_PYTHON, peer_prune

RAMP_HALF_WIDTH = 0.1  # the ramp runs from target − 0.1 (first layer) to target + 0.1 (last layer), as issue 26's
TIME_REFERENCE = "sparsegpt"  # every row's pruning time is stated as a multiple of this row's
# Issue 26's targets: the project's best row at least this much lower in PPL than the peer's best.
TARGET_REDUCTION = {"0.7": 0.30, "2:4": 0.15, "0.5": 0.03}
LORA_REDUCTION = 0.60  # 70 %: with LoRA recovery, against the peer's best one-shot
LORA_CPU_SECONDS = 600  # ... within 10 CPU-minutes of recovery (wall seconds × torch threads)

# label -> (method, options); "ramp" rows only for unstructured targets. The options are the library's.
ROWS = {
    "sparsegpt": ("sparsegpt", {}),
    "sparsegpt ramp": ("sparsegpt", {"allocation": "ramp"}),
    "alps": ("alps", {}),
    "alps ramp": ("alps", {"allocation": "ramp"}),
    "sparsegpt search": ("sparsegpt", {"allocation": "search"}),
    "sparsegpt + blocks": ("sparsegpt", {"reconstruct": "blocks"}),
    "sparsegpt ramp + blocks": ("sparsegpt", {"allocation": "ramp", "reconstruct": "blocks"}),
    "alps ramp + blocks": ("alps", {"allocation": "ramp", "reconstruct": "blocks"}),
    "alps + blocks": ("alps", {"reconstruct": "blocks"}),
}
PEER_PROFILES = ("uniform", "ramp", "owl")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="zoo spec (default smollm2-135m)")
    parser.add_argument("--target", required=True, help="an unstructured sparsity (0.7) or an N:M pattern (2:4)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="LABEL", choices=list(ROWS),
                        help=f"the project's rows (default: all that apply; always with {TIME_REFERENCE!r})")
    parser.add_argument("--peer-profiles", nargs="*", default=list(PEER_PROFILES), choices=PEER_PROFILES,
                        help="llm-compressor's profiles (default all; ramp and owl only for unstructured targets)")
    parser.add_argument("--reconstruct-steps", type=int, default=None,
                        help="reconstruct_steps of the + blocks rows (default: the library's)")
    parser.add_argument("--recover-row", default=None, choices=list(ROWS),
                        help="also run this row followed by LoRA recovery (--recover-steps steps)")
    parser.add_argument("--recover-steps", type=int, default=200)
    parser.add_argument("--recover-lr", type=float, default=None, help="LoRA learning rate (default: the library's)")
    parser.add_argument("--peer-python", type=Path, default=DEFAULT_PEER_PYTHON)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows scored (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    unstructured = ":" not in args.target
    try:
        if unstructured:
            float(args.target)
        else:
            [int(x) for x in args.target.split(":")]
    except ValueError:
        parser.error(f"--target {args.target!r}: give a sparsity such as 0.7 or a pattern such as 2:4")
    if not args.peer_python.exists():
        parser.error(f"llm-compressor's python {args.peer_python} not found: run scripts/setup_peer.sh "
                     "or pass --peer-python")
    rows = args.rows or [label for label in ROWS if unstructured or not ROWS[label][1].get("allocation")]
    if not unstructured and any(ROWS[label][1].get("allocation") for label in rows):
        parser.error("ramp and search rows need an unstructured --target")
    args.rows = [TIME_REFERENCE] + [label for label in rows if label != TIME_REFERENCE]
    if not unstructured:
        args.peer_profiles = [p for p in args.peer_profiles if p == "uniform"]
    return args


def ppl_cells(record: dict) -> dict:
    """PPL and its 95 % interval from a perplexity record's per-window NLLs."""
    figure = perplexity_figure(record, None)
    return {"PPL": figure.value, "PPL low": figure.low, "PPL high": figure.high}


def paired_cells(record: dict, reference: dict, prefix: str) -> dict:
    """`record`'s PPL over `reference`'s, paired on the same windows, with its 95 % interval."""
    figure = perplexity_figure(record, reference)
    if figure.unpaired:
        raise RuntimeError(f"cannot pair with {prefix}: {figure.unpaired}")
    return {f"{prefix} ratio": figure.vs_dense_ratio, f"{prefix} low": figure.vs_dense_ratio_low,
            f"{prefix} high": figure.vs_dense_ratio_high}


def signed(reduction: float) -> str:
    """A PPL reduction in words: '12.0% lower PPL' or, when negative, '3.7% higher PPL'."""
    return f"{abs(reduction):.1%} {'lower' if reduction >= 0 else 'higher'} PPL"


def interval(cells: dict, key: str, low: str, high: str, fmt: str) -> str:
    return "" if cells.get(key) is None or math.isnan(cells[key]) else \
        f"{cells[key]:{fmt}} [{cells[low]:{fmt}}–{cells[high]:{fmt}}]"


def markdown_cells(cells: dict) -> dict:
    """One table row for the Markdown: each figure with its 95 % interval in brackets."""
    return {"tool": cells["tool"], "row": cells["row"],
            "PPL [95 % CI]": interval(cells, "PPL", "PPL low", "PPL high", ".2f"),
            "PPL / peer's best [95 % CI]": interval(cells, "vs peer best ratio", "vs peer best low",
                                                   "vs peer best high", ".3f"),
            "PPL / our SparseGPT [95 % CI]": interval(cells, "vs our sparsegpt ratio", "vs our sparsegpt low",
                                                     "vs our sparsegpt high", ".3f"),
            "prune s": f"{cells['seconds']:.1f}" if not math.isnan(cells["seconds"]) else "",
            "× our SparseGPT time": "" if cells["× our sparsegpt time"] is None else f"{cells['× our sparsegpt time']:.2f}",
            "LoRA s": "" if cells["recovery seconds"] is None else f"{cells['recovery seconds']:.0f}",
            "error": cells["error"]}


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_progress()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_spec(args.model)
    unstructured = ":" not in args.target
    target = float(args.target) if unstructured else None
    n, m = (0, 0) if unstructured else (int(x) for x in args.target.split(":"))
    ratio = {"sparsity": target} if unstructured else {"nm": args.target}
    layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    layer_ramp = ramp(target - RAMP_HALF_WIDTH, target + RAMP_HALF_WIDTH, layers) if unstructured else None
    evaluation = dict(seqlen=args.seqlen, max_windows=args.windows)
    peer_rows, ours, peer_versions = [], [], {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        windows, protocol = calibration_windows(tokenizer, "c4", args.nsamples, args.seqlen, seed=0)
        torch.save(windows, scratch / "windows.pt")
        dense = pruning.evaluate_perplexity(str(model_dir), device="cpu", **evaluation)
        for profile in args.peer_profiles:
            extra = {"uniform": [], "owl": ["--owl"],
                     "ramp": ["--layer-sparsities", ",".join(f"{s:.6f}" for s in layer_ramp or [])]}[profile]
            peer = peer_prune(args.peer_python, model_dir, scratch / "windows.pt", scratch / "peer", "sparsegpt",
                              target if unstructured else 1 - n / m, "0:0" if unstructured else args.target,
                              extra, args.threads)
            peer_versions = peer.get("versions") or peer_versions
            row = {"tool": "llm-compressor", "row": f"sparsegpt {profile}", "seconds": peer.get("seconds", math.nan),
                   "error": peer.get("error", "")}
            if "error" not in peer:
                tokenizer.save_pretrained(scratch / "peer")  # the worker saves the weights only
                row["record"] = pruning.evaluate_perplexity(str(scratch / "peer"), device="cpu", **evaluation)
            peer_rows.append(row)
            print(f"llm-compressor sparsegpt {profile}: " + (f"PPL {row['record']['ppl']:.2f} in {row['seconds']:.0f} s"
                                                              if "record" in row else row["error"][:160]), flush=True)
        recovery = {"steps": args.recover_steps, **({"lr": args.recover_lr} if args.recover_lr else {})}
        runs = [(label, None) for label in args.rows] + ([(args.recover_row, recovery)] if args.recover_row else [])
        for label, recovery in runs:
            method, options = ROWS[label]
            options = dict(options)
            if options.get("allocation") == "ramp":
                options["ramp"] = [target - RAMP_HALF_WIDTH, target + RAMP_HALF_WIDTH]
            if options.get("reconstruct") and args.reconstruct_steps:
                options["reconstruct_steps"] = args.reconstruct_steps
            report = pruning.prune(str(model_dir), method, scratch / "ours", calib="c4", nsamples=args.nsamples,
                                   seqlen=args.seqlen, seed=0, device="cpu", evaluate=True, eval_seqlen=args.seqlen,
                                   eval_max_windows=args.windows, progress=False, overwrite=True, recovery=recovery,
                                   **ratio, **options)
            row = {"tool": "project", "row": label + (" + LoRA" if recovery else ""), "options": options,
                   "seconds": report["prune_seconds"], "record": report["evaluation"]["after"],
                   "recovery seconds": report["recovery"]["seconds"] if recovery else None}
            ours.append(row)
            print(f"project {row['row']}: PPL {row['record']['ppl']:.2f} in {row['seconds']:.0f} s", flush=True)
            result = write_results(args, peer_rows, ours, dense, protocol, layers, peer_versions)
    return result


def write_results(args: argparse.Namespace, peer_rows: list[dict], ours: list[dict], dense: dict,
                  protocol, layers: int, peer_versions: dict) -> dict:
    """The table (each figure with its interval, paired ratios to the peer's best and to our SparseGPT) and the
    verdict against issue 26's targets, written to beyond.md and beyond.json; called after every row, so a run
    cut short keeps what it measured."""
    best_peer = min((r for r in peer_rows if "record" in r), key=lambda r: r["record"]["ppl"], default=None)
    reference_seconds = ours[0]["seconds"]
    table = []
    for row in peer_rows + ours:
        cells = {"tool": row["tool"], "row": row["row"]}
        if "record" in row:
            cells.update(ppl_cells(row["record"]))
            if row["tool"] == "project" and best_peer is not None:
                cells.update(paired_cells(row["record"], best_peer["record"], "vs peer best"))
                cells["lower than peer best"] = 1 - cells["vs peer best ratio"]
            if row["tool"] == "project":
                cells.update(paired_cells(row["record"], ours[0]["record"], "vs our sparsegpt"))
        cells["seconds"] = row["seconds"]
        cells["× our sparsegpt time"] = row["seconds"] / reference_seconds if row["tool"] == "project" else None
        cells["recovery seconds"] = row.get("recovery seconds")
        cells["error"] = row.get("error", "")
        table.append(cells)
    one_shot = [c for c in table if c["tool"] == "project" and "LoRA" not in c["row"] and "vs peer best ratio" in c]
    best = min(one_shot, key=lambda c: c["vs peer best ratio"], default=None)
    needed = TARGET_REDUCTION.get(args.target)
    verdict = ("no peer profile ran" if best is None else
               f"best one-shot row {best['row']!r}: {signed(best['lower than peer best'])} than the peer's best "
               f"({best_peer['row']}; paired 95 % interval of the ratio {best['vs peer best low']:.3f}–"
               f"{best['vs peer best high']:.3f})" + (f"; target ≥ {needed:.0%}: "
                                                     f"{'met' if best['lower than peer best'] >= needed else 'not met'}"
                                                     if needed is not None else ""))
    lora = [c for c in table if "LoRA" in c["row"] and "lower than peer best" in c]
    if lora and args.target == "0.7":
        c = lora[0]
        cpu_seconds = c["recovery seconds"] * torch.get_num_threads()
        met = c["lower than peer best"] >= LORA_REDUCTION and cpu_seconds <= LORA_CPU_SECONDS
        verdict += (f"; with LoRA ({args.recover_steps} steps, {c['recovery seconds']:.0f} s × "
                    f"{torch.get_num_threads()} thread(s) = {cpu_seconds / 60:.1f} CPU-minutes) "
                    f"{signed(c['lower than peer best'])} (target ≥ {LORA_REDUCTION:.0%} within "
                    f"{LORA_CPU_SECONDS / 60:.0f} CPU-minutes: {'met' if met else 'not met'})")
    protocol_text = (f"Model {args.model} (dense PPL {dense['ppl']:.2f}); target {args.target}; calibration C4 "
                     f"{args.nsamples} × {args.seqlen} tokens, seed 0, the same token windows for both tools; "
                     f"WikiText-2 test PPL over {args.windows} windows of {args.seqlen} tokens, measured by the project "
                     f"for every model, 95 % intervals (per-window delta method; ratios paired window by window); "
                     f"{torch.get_num_threads()} thread(s), one job at a time, float32 on CPU; times exclude loading "
                     f"and saving; the peer with ignore=['re:.*lm_head.*'] and, for its ramp and OWL profiles, "
                     f"targets = the decoder-layer class; ramp = target ± {RAMP_HALF_WIDTH} linear over the "
                     f"{layers} decoder layers for both; project {versions('torch', 'transformers')}, peer {peer_versions}.")
    frame = pd.DataFrame([markdown_cells(cells) for cells in table])
    atomic_write_text(args.out_dir / "beyond.md", f"## Project vs llm-compressor's best, target {args.target}\n\n"
                      f"{protocol_text}\n\n{verdict}.\n\n" + frame.to_markdown(index=False) + "\n")
    atomic_write_text(args.out_dir / "beyond.json", json.dumps(
        {"protocol": protocol_text, "verdict": verdict, "calibration": protocol.as_dict(), "dense": dense,
         "rows": peer_rows + ours, "table": table}, indent=1, default=str))
    print(verdict)
    print(f"wrote {args.out_dir / 'beyond.md'} and beyond.json")
    return {"verdict": verdict, "table": table}


def main(argv=None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
