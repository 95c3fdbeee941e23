"""Quality frontier of the pruning methods on one model (issue 12's benchmark): WikiText-2 test perplexity of

- every sparsity method (magnitude, Wanda, SparseGPT) at each unstructured sparsity and N:M pattern, uniform,
  with OWL and with a linear ramp of layer sparsities (unstructured only) and, for Wanda and SparseGPT,
  refined by DSnoT;
- every structured method (FLAP, heads, layers, depth by angular distance, two-stage) at each fraction of
  parameters;
- each of them again followed by LoRA recovery fine-tuning when --recover-steps is given (a fixed budget).

All rows use the same calibration windows (C4) and the same evaluation windows; each prints as it finishes.
Writes frontier.md (the table with its protocol), frontier.csv and frontier.json (also with wall times) and
frontier.png (PPL against sparsity and against parameters removed, one line per method) into --out-dir, each
replaced atomically; --append adds rows to an earlier run's.

    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/quality_frontier.py --threads 1 \\
        --out-dir results/frontier                      # smollm2-135m, hours on 2 cores
    ... --model ../shared/models/stories260K --fractions 0.2 --sparsities 0.5 --nm 2:4   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import pruning
from pruning.commands.common import quiet_progress
from pruning.core.io import atomic_write_text, versions
from pruning.core.statistics import PairedPerplexity, Perplexity, paired_perplexity, perplexity_estimate
from pruning.core.modeling import load_model
from pruning.core.zoo import resolve as resolve_spec
from pruning.evaluation.per_item import WINDOWS

SPARSITY_METHODS = ("magnitude", "wanda", "sparsegpt")
DSNOT_BASES = ("wanda", "sparsegpt")
TIMES = ["seconds", "recovery seconds"]  # wall times: in the CSV and JSON, not in the table (machine-dependent)
RAMP_SPREAD = 0.1  # the +ramp rows: linear from target − 0.1 at the first layer to target + 0.1 at the last


def sparsity_variants(sparsities, patterns):
    """(label, method, ratio arguments, options) of every sparsity row."""
    rows = []
    for target in [*(("sparsity", s) for s in sparsities), *(("nm", p) for p in patterns)]:
        kind, value = target
        ratio = {kind: value}
        for method in SPARSITY_METHODS:
            rows.append((method, method, ratio, {}))
            if kind == "sparsity":
                rows.append((f"{method}+owl", method, ratio, {"allocation": "owl"}))
                ramp = [round(value - RAMP_SPREAD, 6), round(value + RAMP_SPREAD, 6)]
                rows.append((f"{method}+ramp", method, ratio, {"allocation": "ramp", "ramp": ramp}))
        rows += [(f"dsnot({base})", "dsnot", ratio, {"base": base}) for base in DSNOT_BASES]
    return rows


def structured_variants(fractions, num_layers: int):
    """(label, method, ratio arguments, options) of every structured row; depth removes round(f × layers)."""
    rows = []
    for fraction in fractions:
        rows += [("flap", "flap", {"fraction": fraction}, {}), ("heads", "heads", {"fraction": fraction}, {}),
                 ("layers", "layers", {"fraction": fraction}, {}),
                 ("depth(angular)", "depth", {"num_blocks": max(1, round(fraction * num_layers))},
                  {"criterion": "angular"}),
                 ("two_stage", "two_stage", {"prune_rate": fraction}, {})]
    return rows


def chosen(label: str, only: list[str] | None) -> bool:
    """Whether a row's label is in `only` (None: every row)."""
    return only is None or label in only


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="zoo spec (default smollm2-135m)")
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.6, 0.7])
    parser.add_argument("--nm", nargs="*", default=["2:4"], help="N:M patterns (default 2:4)")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.2, 0.3],
                        help="structured ratios: fraction / prune rate, depth blocks = round(fraction × layers)")
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="also run rows with this many LoRA recovery steps (0: no recovery rows)")
    parser.add_argument("--recover-lr", type=float, default=None, help="LoRA learning rate (default: the library's)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="LABEL",
                        help="only these row labels, e.g. wanda wanda+owl 'dsnot(wanda)' flap (default: all)")
    parser.add_argument("--recover-rows", nargs="+", default=None, metavar="LABEL",
                        help="recovery rows only for these labels (default: every row)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of an earlier run in --out-dir (same model and protocol), replacing "
                             "those run again")
    args = parser.parse_args(argv)
    key = {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "eval_seqlen": args.eval_seqlen,
           "max_windows": args.max_windows}
    earlier = []
    if args.append and (args.out_dir / "frontier.json").exists():
        previous = json.loads((args.out_dir / "frontier.json").read_text())
        if previous["protocol"] != key:
            parser.error(f"--append: {args.out_dir} holds rows of another protocol {previous['protocol']}")
        earlier = previous["rows"]
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_progress()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    model, _ = load_model(resolve_spec(args.model))
    num_layers = pruning.get_adapter(model).num_layers(model)
    del model
    common = dict(calib="c4", nsamples=args.nsamples, seqlen=args.seqlen, seed=0, device="cpu", evaluate=True,
                  eval_seqlen=args.eval_seqlen, eval_max_windows=args.max_windows, progress=False)
    recovery_settings = {"steps": args.recover_steps, **({"lr": args.recover_lr} if args.recover_lr else {})}
    recoveries = [None] + ([recovery_settings] if args.recover_steps else [])
    variants = [variant for variant in sparsity_variants(args.sparsities, args.nm)
                + structured_variants(args.fractions, num_layers) if chosen(variant[0], args.rows)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, (label, method, ratio, options) in enumerate(variants):
            for recovery in recoveries:
                if recovery and not chosen(label, args.recover_rows):
                    continue
                started = time.perf_counter()
                report = pruning.prune(args.model, method, Path(scratch) / f"{index}-{bool(recovery)}",
                                       recovery=recovery, **ratio, **options, **common)
                before, after = report["evaluation"]["before"], report["evaluation"]["after"]
                parameters = report["parameters"]
                interval, versus_dense = perplexity_intervals(before, after)
                row = {"method": label + (" + LoRA" if recovery else ""), "kind": next(iter(ratio)),
                       "ratio": next(iter(ratio.values())),
                       "sparsity": report["result"].get("total_sparsity"),
                       "parameters removed": 1 - parameters["after"]["total"] / parameters["before"]["total"],
                       "PPL dense": before["ppl"], "PPL": after["ppl"], "PPL low": interval.low,
                       "PPL high": interval.high, "PPL / dense low": versus_dense.low, "PPL / dense high": versus_dense.high,
                       "seconds": time.perf_counter() - started,
                       "recovery seconds": report["recovery"]["seconds"] if recovery else None,
                       "recovery": json.dumps(recovery) if recovery else "", "threads": torch.get_num_threads()}
                rows.append(row)
                print(f"{row['method']:24s} {row['kind']:10s} {row['ratio']!s:6s} PPL {row['PPL']:10.2f} "
                      f"({row['seconds']:.0f} s)", flush=True)
    replaced = {(row["method"], row["kind"], str(row["ratio"])) for row in rows}
    rows = [row for row in earlier if (row["method"], row["kind"], str(row["ratio"])) not in replaced] + rows
    frame = pd.DataFrame(rows)
    protocol = (f"Model {args.model}; calibration C4 {args.nsamples} × {args.seqlen} tokens, seed 0; WikiText-2 "
                f"test PPL over {args.max_windows} windows of {args.eval_seqlen} tokens (dense "
                f"{rows[0]['PPL dense']:.2f}); PPL low/high: exp(mean NLL ± 2 SE over the windows); PPL / dense "
                "low/high: the same for the paired ratio to dense on the same windows (pruning.core.statistics; "
                "error bars of the plot); LoRA recovery rows: the `recovery` column's settings, library "
                f"defaults otherwise, C4 training windows; versions {versions('torch', 'transformers')}.")
    atomic_write_text(args.out_dir / "frontier.json", json.dumps({"protocol": key, "rows": rows}, indent=1))
    atomic_write_text(args.out_dir / "frontier.md", f"## Quality frontier\n\n{protocol}\n\n"
                      + frame.drop(columns=TIMES).to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_text(args.out_dir / "frontier.csv", frame.to_csv(index=False))
    plot(frame, args.out_dir / "frontier.png")
    print(f"wrote {args.out_dir / 'frontier.md'}, .csv, .png")


def perplexity_intervals(before: dict, after: dict) -> tuple[Perplexity, PairedPerplexity]:
    """The pruned model's PPL with its interval over the evaluation windows, and its paired ratio to the
    dense model's PPL on the same windows (the prune report's per-window NLLs)."""
    dense, pruned = before[WINDOWS], after[WINDOWS]
    return (perplexity_estimate(pruned["nll"], pruned["scored_tokens"]),
            paired_perplexity(pruned["nll"], dense["nll"], pruned["scored_tokens"]))


def plot(frame: pd.DataFrame, path: Path) -> None:
    """PPL against sparsity (mask rows) and against parameters removed (structured rows), a line per method,
    with error bars from the windows (exp(mean NLL ± 2 SE))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    masks = frame[frame.kind == "sparsity"]
    structured = frame[~frame.kind.isin(["sparsity", "nm"])]
    for ax, rows_of, x in ((left, masks, "sparsity"), (right, structured, "parameters removed")):
        for method, rows in rows_of.groupby("method", sort=False):
            errors = [rows.PPL - rows["PPL low"], rows["PPL high"] - rows.PPL] if "PPL low" in rows else None
            ax.errorbar(rows[x], rows.PPL, yerr=errors, marker="o", capsize=3, label=method)
    for ax, xlabel in ((left, "sparsity of the targeted weights"), (right, "share of all parameters removed")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WikiText-2 PPL")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as handle:
        fig.savefig(handle.name)
    Path(handle.name).replace(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
