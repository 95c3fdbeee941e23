"""Time Snakemake needs to parse the workflow, check the config and build the DAG of a large grid
(3 models x 10 methods x 5 ratios = 150 pruned runs + 3 dense baselines, ~310 jobs) in a dry run.
Target: under 5 s. The baseline is the same dry run on a one-run grid, measured here the same way, so
the difference is the cost of the grid itself. One more run with `-X importtime` checks that building the
DAG imports neither torch nor transformers (the Snakefile imports only the torch-free `pruning.reporting.grid`;
Snakemake itself imports pandas).

    .venv/bin/python benchmarks/dag_build.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PRUNING_SHARED_DIR", REPO.parent / "shared")).resolve()
TARGET_SECONDS = 5.0


def grid_config(models: int, methods: int, ratios: int) -> dict:
    specs = {"smollm2-135m": "smollm2-135m", "stories260K": str(SHARED / "models" / "stories260K"),
             "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B"}
    kinds = [("magnitude", {}, False), ("magnitude", {"per": "row"}, False), ("wanda", {}, False),
             ("sparsegpt", {}, False), ("sparsegpt", {"block_size": 64}, False),
             ("sparsegpt", {"damp_fraction": 0.05}, False), ("magnitude", {}, True), ("wanda", {}, True),
             ("sparsegpt", {}, True), ("sparsegpt", {"block_size": 64}, True)]
    sparsities = [round(0.1 * (i + 3), 2) for i in range(ratios)]
    patterns = [f"{n}:{m}" for n, m in ((2, 4), (4, 8), (1, 4), (2, 8), (3, 8))][:ratios]
    method_entries = {}
    for index, (method, options, uses_nm) in enumerate(kinds[:methods]):
        method_entries[f"{method}-{index}"] = {"method": method, "options": options,
                                               "ratios": {"nm": patterns} if uses_nm else {"sparsity": sparsities}}
    return {"models": dict(list(specs.items())[:models]), "methods": method_entries, "protocol": "fast",
            "protocols": {"fast": {"calibration": {"source": "c4", "nsamples": 32, "seqlen": 512},
                                   "evaluation": {"dataset": "wikitext2", "seqlen": 512, "max_windows": 32}}},
            "data_dir": str(SHARED / "data")}


def dry_run_command(config: dict, workdir: Path, *python_options: str) -> list[str]:
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return [sys.executable, *python_options, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "2",
            "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(path), "--replace-workflow-config"]


def heavy_imports(config: dict, workdir: Path) -> list[str]:
    """Which of torch and transformers the dry run imports (they cost seconds)."""
    result = subprocess.run(dry_run_command(config, workdir, "-X", "importtime"), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"dry run failed:\n{result.stderr[-3000:]}")
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return [name for name in ("torch", "transformers") if name in imported]


def dry_run_seconds(config: dict, workdir: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the Snakemake process, its output)."""
    command = dry_run_command(config, workdir)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"dry run failed:\n{result.stderr[-3000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return seconds, cpu, result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "small").mkdir()
        (scratch / "large").mkdir()
        small, large = grid_config(1, 1, 1), grid_config(3, 10, 5)
        dry_run_seconds(small, scratch / "small")  # warm the file cache and bytecode
        baseline = [dry_run_seconds(small, scratch / "small")[:2] for _ in range(args.repeats)]
        measured, output = [], ""
        for _ in range(args.repeats):
            *timing, output = dry_run_seconds(large, scratch / "large")
            measured.append(tuple(timing))
        heavy = heavy_imports(large, scratch / "large")
    jobs = output.split("total")[-1].split()[0] if "total" in output else "?"
    (base, base_cpu), (grid, grid_cpu) = ((statistics.median(t[0] for t in runs), statistics.median(t[1] for t in runs))
                                          for runs in (baseline, measured))
    for label, runs, wall, cpu in (("1 model x 1 method x 1 ratio (baseline)", baseline, base, base_cpu),
                                   (f"3 models x 10 methods x 5 ratios ({jobs} jobs)", measured, grid, grid_cpu)):
        print(f"dry run, {label}: median {wall:.2f} s wall, {cpu:.2f} s CPU, of {args.repeats} "
              f"({', '.join(f'{w:.2f}' for w, _ in runs)} s)")
    print(f"heavy modules imported while building the DAG: {', '.join(heavy) or 'none'}")
    print(f"grid cost over baseline: {grid - base:+.2f} s wall ({grid / base:.2f}x), {grid_cpu - base_cpu:+.2f} s CPU; "
          f"target < {TARGET_SECONDS:.0f} s wall: {'met' if grid < TARGET_SECONDS else 'NOT met'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0 if grid < TARGET_SECONDS and not heavy else 1


if __name__ == "__main__":
    raise SystemExit(main())
