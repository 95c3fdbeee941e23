"""The project against llm-compressor on the same calibration windows, threads and evaluation windows.

For each method (Wanda, SparseGPT) and target (unstructured sparsities, N:M patterns) it prunes with
`pruning.prune` in each of the project's modes (two-pass, the reference's; one-pass, the batches in
lockstep) and once with llm-compressor's `oneshot` (run by benchmarks/llmcompressor_worker.py in
llm-compressor's own venv, which `scripts/setup_peer.sh` creates: it pins an older transformers), one job at
a time, and prints the pruning times (model loading and saving excluded), their ratio (the target is
≤ 0.5), the WikiText-2 PPLs measured by the project on the same windows, and each mode's PPL against the
two-pass one (the target: at most 1 % worse). `--peer-owl` also runs llm-compressor's OWL profile
(`sparsity_profile="owl"`, M = 5, λ = 0.08) at the unstructured targets; its error is reported if it fails.
Writes versus.md and versus.json into --out-dir, each replaced atomically.

    bash scripts/setup_peer.sh     # once: .venv-peer with llm-compressor 0.14
    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/versus_llmcompressor.py --threads 2 \\
        --out-dir results/versus      # smollm2-135m; about 15 minutes on 2 cores for the default cases
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer

import pruning
from pruning.commands.common import quiet_progress
from pruning.core.data import calibration_windows
from pruning.core.io import atomic_write_text, versions
from pruning.core.zoo import resolve as resolve_spec

WORKER = Path(__file__).with_name("llmcompressor_worker.py")
DEFAULT_PEER_PYTHON = Path(__file__).resolve().parents[1] / ".venv-peer" / "bin" / "python"


def peer_prune(python: Path, model_dir: Path, windows: Path, out_dir: Path, method: str, sparsity: float,
               mask: str, profile: list[str], threads: int | None) -> dict:
    """Run the worker in llm-compressor's venv with the `profile` arguments (none: uniform; ["--owl"];
    ["--layer-sparsities", "0.6,..."]); its JSON line (seconds or error)."""
    command = [str(python), str(WORKER), str(model_dir), str(windows), str(out_dir), "--method", method,
               "--sparsity", str(sparsity), "--mask", mask] + profile + \
              ([f"--threads={threads}"] if threads else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"worker exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


MODES = {"two-pass": False, "one-pass": True}  # mode name -> the methods' one_pass option
TIME_TARGET = 0.5  # the project's pruning time over llm-compressor's
PPL_TOLERANCE = 0.01  # how much worse than the two-pass PPL a faster mode may be


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="zoo spec (default smollm2-135m)")
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"], choices=["wanda", "sparsegpt"])
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.5])
    parser.add_argument("--nm", nargs="*", default=["2:4"], help="N:M patterns (default 2:4)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES),
                        help="the project's modes to run (default both; two-pass is the PPL reference)")
    parser.add_argument("--peer-owl", action="store_true", help="also run llm-compressor's OWL profile")
    parser.add_argument("--peer-python", type=Path, default=Path(os.environ.get("PEER_PYTHON", DEFAULT_PEER_PYTHON)),
                        help="python of llm-compressor's venv (default .venv-peer/bin/python or $PEER_PYTHON)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if not args.peer_python.exists():
        parser.error(f"llm-compressor's python {args.peer_python} not found: run scripts/setup_peer.sh "
                     "or pass --peer-python")
    return args


def compare(args: argparse.Namespace) -> dict:
    """Run every case; write versus.md/json into args.out_dir and return {"protocol", "rows"}."""
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_progress()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_spec(args.model)
    evaluation = dict(seqlen=args.seqlen, max_windows=args.max_windows)
    targets = [(s, "0:0") for s in args.sparsities] + [(None, p) for p in args.nm]
    rows, peer_versions = [], {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        windows, protocol = calibration_windows(tokenizer, "c4", args.nsamples, args.seqlen, seed=0)
        torch.save(windows, scratch / "windows.pt")
        dense = pruning.evaluate_perplexity(str(model_dir), **evaluation)["ppl"]
        for method in args.methods:
            for sparsity, mask in targets:
                ratio = {"sparsity": sparsity} if sparsity is not None else {"nm": mask}
                n, m = (int(x) for x in mask.split(":"))
                peer_sparsity = sparsity if sparsity is not None else 1 - n / m
                ours = {mode: pruning.prune(str(model_dir), method, scratch / "ours", calib="c4",
                                            nsamples=args.nsamples, seqlen=args.seqlen, seed=0, device="cpu",
                                            evaluate=True, eval_seqlen=args.seqlen, eval_max_windows=args.max_windows,
                                            progress=False, overwrite=True, one_pass=MODES[mode], **ratio)
                        for mode in args.modes}
                reference_ppl = ours["two-pass"]["evaluation"]["after"]["ppl"] if "two-pass" in ours else math.nan
                for owl in [False] + ([True] if args.peer_owl and sparsity is not None else []):
                    peer = peer_prune(args.peer_python, model_dir, scratch / "windows.pt", scratch / "peer",
                                      method, peer_sparsity, mask, ["--owl"] if owl else [], args.threads)
                    if "error" not in peer:
                        tokenizer.save_pretrained(scratch / "peer")  # the worker saves the weights only
                    peer_ppl = (math.nan if "error" in peer else
                                pruning.evaluate_perplexity(str(scratch / "peer"), **evaluation)["ppl"])
                    peer_seconds = peer.get("seconds", math.nan)
                    for mode, report in ours.items():
                        ppl = report["evaluation"]["after"]["ppl"]
                        row = {"method": method, "target": mask if sparsity is None else sparsity, "mode": mode,
                               "peer profile": "owl" if owl else "uniform",
                               "ours s": report["prune_seconds"], "peer s": peer_seconds,
                               "time ratio": report["prune_seconds"] / peer_seconds,
                               "ours PPL": ppl, "vs two-pass PPL": ppl / reference_ppl - 1, "peer PPL": peer_ppl,
                               "peer error": peer.get("error", "")}
                        row["meets targets"] = bool(row["time ratio"] <= TIME_TARGET
                                                    and row["vs two-pass PPL"] <= PPL_TOLERANCE)
                        rows.append(row)
                        print(f"{method:10s} {row['target']!s:5s} {mode:8s} {row['peer profile']:8s} "
                              f"ours {row['ours s']:7.1f} s PPL {ppl:9.2f} ({row['vs two-pass PPL']:+.2%}) | "
                              f"llm-compressor {peer_seconds:7.1f} s PPL {peer_ppl:9.2f} | ratio "
                              f"{row['time ratio']:.2f} {'meets' if row['meets targets'] else 'misses'} the targets "
                              f"{row['peer error'][:80]}", flush=True)
                    peer_versions = peer.get("versions") or peer_versions
    protocol_text = (f"Model {args.model} (dense PPL {dense:.2f}); calibration C4 {args.nsamples} × {args.seqlen} "
                     f"tokens, seed 0, the same token windows for both; WikiText-2 test PPL over {args.max_windows} "
                     f"windows of {args.seqlen} tokens, measured by the project for both; "
                     f"{torch.get_num_threads()} thread(s) each, one job at a time; times exclude loading and "
                     f"saving; targets: time ratio ≤ {TIME_TARGET} with PPL at most {PPL_TOLERANCE:.0%} above the "
                     f"two-pass mode's; project {versions('torch', 'transformers')}, peer {peer_versions}.")
    frame = pd.DataFrame(rows)
    atomic_write_text(args.out_dir / "versus.md", f"## Project vs llm-compressor\n\n{protocol_text}\n\n"
                      + frame.to_markdown(index=False, floatfmt=".4g") + "\n")
    atomic_write_text(args.out_dir / "versus.json", json.dumps({"protocol": protocol_text, "calibration":
                                                                protocol.as_dict(), "rows": rows}, indent=1))
    print(f"wrote {args.out_dir / 'versus.md'} and versus.json")
    return {"protocol": protocol_text, "rows": rows}


def main(argv=None) -> None:
    compare(parse_args(argv))


if __name__ == "__main__":
    main()
