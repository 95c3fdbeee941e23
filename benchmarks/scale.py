"""The scale figures in one run: pruning time against llm-compressor, out-of-core peak memory, the structured
searches against one calibration forward, and the evaluations' throughput.

It runs, one after the other in this process (each part is also a script of its own):
1. `versus_llmcompressor.compare`: Wanda and SparseGPT at 50 % and 2:4 on smollm2-135m, the project's two-pass
   and one-pass modes against llm-compressor 0.14 on the same windows and threads (`scripts/setup_peer.sh`
   first); targets: time ≤ 0.5 × llm-compressor's, PPL at most 1 % above two-pass;
2. `streaming_memory.run`: a synthetic multi-GB Llama pruned with its layers streamed from disk, peak RSS
   against 1.5 × (largest layer + embeddings + head + activations) and its in-memory peak, and the real model
   streamed == in memory;
3. `structured_search.measure`: Quark's window search and two-stage's rounds against one calibration forward
   (target ≤ 5 ×), and with --search-windows N also on that subset of the calibration windows;
4. `evaluation_throughput.measure`: perplexity against the bare forward (target ≥ 0.9 ×).
Writes scale.md and scale.json (and each part's own files) into --out-dir, replaced atomically.

    bash scripts/setup_peer.sh
    PRUNING_DATA_DIR=../shared/data .venv/bin/python benchmarks/scale.py --threads 2 \\
        --out-dir results/published/benchmarks/scale     # about 30 minutes on 2 quiet cores
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evaluation_throughput  # noqa: E402
import streaming_memory  # noqa: E402
import structured_search  # noqa: E402
import versus_llmcompressor  # noqa: E402

from pruning.core.io import atomic_write_text  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="zoo spec of the real model (default smollm2-135m)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every part (default 2)")
    parser.add_argument("--search-windows", type=int, default=None,
                        help="also time the structured searches on the first N calibration windows (structured_search.py)")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    structured_search.searches(search_windows=args.search_windows)  # a bad subset is refused before any part runs
    args.out_dir.mkdir(parents=True, exist_ok=True)
    versus_args = versus_llmcompressor.parse_args(["--model", args.model, "--threads", str(args.threads),
                                                   "--out-dir", str(args.out_dir)])
    started = time.perf_counter()
    results, sections = {}, []

    results["versus"] = versus_llmcompressor.compare(versus_args)
    sections.append((args.out_dir / "versus.md").read_text())

    results["streaming"] = streaming_memory.run(compare_in_memory=True, identical=[args.model])
    sections.append("## Out-of-core pruning\n\n" + results["streaming"]["protocol"] + "\n\n```\n"
                    + streaming_memory.report_text(results["streaming"]) + "\n```\n")

    results["searches"] = structured_search.measure(args.model, threads=args.threads,
                                                        search_windows=args.search_windows)
    sections.append("## Structured searches against one calibration forward\n\n"
                    + structured_search.summary(results["searches"]))

    results["evaluation"] = evaluation_throughput.measure(args.model, threads=args.threads)
    sections.append("## Evaluation throughput\n\n" + evaluation_throughput.markdown(results["evaluation"]))

    minutes = (time.perf_counter() - started) / 60
    text = f"# Scale figures ({args.model}, {args.threads} threads, {minutes:.0f} minutes in all)\n\n" + "\n".join(sections)
    atomic_write_text(args.out_dir / "scale.md", text)
    atomic_write_text(args.out_dir / "scale.json", json.dumps(results, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
