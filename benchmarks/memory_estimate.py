"""Benchmark of `python -m pruning memory`: the estimated total against the measured peak resident memory (VmHWM)
of a fresh process that loads the model with transformers on CPU and runs one forward pass over `--context`
tokens × `--batch` sequences (`pruning.core.footprint.load_and_forward`), for each model, dtype and context asked.

    .venv/bin/python benchmarks/memory_estimate.py --model ../shared/models/stories260K --context 256 512
    .venv/bin/python benchmarks/memory_estimate.py --model smollm2-135m --dtype float32 bfloat16 --context 512 2048 \
        --out results/benchmarks/memory_estimate.json

Prints one row per case (MiB) with the relative error; --out writes the rows and the software versions as JSON.
"""
from __future__ import annotations

import argparse
import sys

from pruning.core import model_checks
from pruning.core import footprint
from pruning.evaluation import memory
from pruning.core.io import atomic_write_json, versions
from pruning.core.dtypes import DEFAULT_DTYPE, DTYPE_NAMES

TOLERANCE = 0.10  # the target: estimate within 10 % of the measured peak


def cases(model: str, dtypes: list[str], contexts: list[int], batch: int) -> list[dict]:
    path = model_checks.local_model(model)
    rows = []
    for dtype in dtypes:
        for context in contexts:
            report = memory.estimate(path, dtype, context, batch)
            measured = footprint.measured_peak_bytes(path, dtype, context, batch)
            rows.append({"model": model, "dtype": dtype, "context": context, "batch": batch,
                         "parameters": report["parameters"], "runtime_bytes": report["runtime_bytes"],
                         "weights_bytes": report["weights_bytes"][dtype], "kv_cache_bytes": report["kv_cache_bytes"],
                         "activation_bytes": report["activation_bytes"],
                         "load_conversion_bytes": report["load_conversion_bytes"],
                         "estimate_bytes": report["total_bytes"], "measured_peak_bytes": measured,
                         "relative_error": round(report["total_bytes"] / measured - 1, 4)})
            print(_row(rows[-1]), flush=True)
    return rows


def _row(row: dict) -> str:
    mib = lambda key: f"{row[key] / 2**20:9.1f}"  # noqa: E731
    return (f"{row['model'][-28:]:>28} {row['dtype']:>8} {row['context']:>6}x{row['batch']:<3} "
            f"runtime {mib('runtime_bytes')} weights {mib('weights_bytes')} kv {mib('kv_cache_bytes')} "
            f"act {mib('activation_bytes')} estimate {mib('estimate_bytes')} measured {mib('measured_peak_bytes')} "
            f"MiB {100 * row['relative_error']:+.1f} %")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", required=True, help="model specs")
    parser.add_argument("--dtype", nargs="+", default=[DEFAULT_DTYPE], choices=DTYPE_NAMES)
    parser.add_argument("--context", nargs="+", type=int, default=[512])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = [row for model in args.model for row in cases(model, args.dtype, args.context, args.batch)]
    if args.out:
        atomic_write_json(args.out, {"protocol": "estimate: python -m pruning memory; measured: VmHWM of a fresh "
                                                 "process, transformers load on CPU + one forward with KV cache",
                                     "tolerance": TOLERANCE, "rows": rows, "versions": versions()})
    outside = [row for row in rows if abs(row["relative_error"]) > TOLERANCE]
    print(f"{len(rows) - len(outside)}/{len(rows)} within {TOLERANCE:.0%}")
    return 1 if outside else 0


if __name__ == "__main__":
    sys.exit(main())
