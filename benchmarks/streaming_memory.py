"""Out-of-core pruning benchmark: peak resident memory of a streamed Wanda prune of a synthetic Llama checkpoint of
several GB (random weights: right for memory, meaningless for quality) against the bound
1.5 × (largest decoder layer + embeddings + head + calibration activations), and optionally the in-memory peak
and a bit-identity check of streamed against in-memory weights on a real model.

    .venv/bin/python benchmarks/streaming_memory.py                      # ~5 GB model in a temporary folder
    .venv/bin/python benchmarks/streaming_memory.py --compare-in-memory --out results/benchmarks/streaming.json
    .venv/bin/python benchmarks/streaming_memory.py --skip-synthetic --identical smollm2-135m
    .venv/bin/python benchmarks/streaming_memory.py --structured --identical smollm2-135m   # Quark, two-stage,
                                                                   # heads and FLAP too, bounds and identity

Each prune runs in its own `python -m pruning prune` process; its peak is the one the child records in prune.json
(`peak_rss_mb`, VmHWM: ru_maxrss would carry over the parent's peak through fork and exec). `run(...)` returns the same figures as a dict for a
driver that runs several benchmarks.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("PRUNING_SHARED_DIR", REPO.parent / "shared"))
TOKENIZER_SOURCE = SHARED / "models" / "stories260K"  # any tokenizer whose ids fit the vocabulary does
BOUND_FACTOR = 1.5  # the target: peak RSS under 1.5 × (largest layer + embeddings + head + activations)
# Llama-like, few but wide layers, so the fixed runtime (torch, transformers) is small beside one layer.
SYNTHETIC = dict(hidden_size=6144, intermediate_size=8192, num_hidden_layers=3, num_attention_heads=48,
                 num_key_value_heads=48, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
SHARD_BYTES = 2 * 2**30  # transformers' habit: several layers per shard


def build_synthetic(folder: Path, shape: dict | None = None, seed: int = 0, shard_bytes: int | None = None) -> Path:
    """Write a random fp32 Llama checkpoint (config, safetensors shards + index, stories260K's tokenizer) into
    `folder`, one shard at a time so that building it needs about one shard of memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    shape, shard_bytes = shape or SYNTHETIC, shard_bytes or SHARD_BYTES
    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**shape, dtype="float32", bos_token_id=1, eos_token_id=2)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    shards, size = [[]], 0
    for name, param in skeleton.named_parameters():
        if shards[-1] and size + param.numel() * 4 > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, param.shape))
        size += param.numel() * 4
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for number, shard in enumerate(shards, 1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: torch.ones(shape_) if name.endswith("norm.weight")
                   else torch.empty(shape_).normal_(0, 0.02, generator=generator) for name, shape_ in shard}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        weight_map.update((name, file) for name in tensors)
        del tensors
    total = sum(param.numel() * 4 for param in skeleton.parameters())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER_SOURCE).save_pretrained(folder)
    return folder


def prune_process(model: str | Path, output: Path, *, stream: bool, method: str = "wanda",
                  arguments: tuple[str, ...] = ("--sparsity", "0.5"), nsamples: int = 8, seqlen: int = 64,
                  calib: str = "c4") -> dict:
    """Run `python -m pruning prune` in a child process; returns its prune.json (with the child's own peak,
    `peak_rss_mb`) plus `peak_rss_bytes` and its wall time."""
    from pruning.core.io import PRUNE_REPORT

    command = [sys.executable, "-m", "pruning", "prune", "--model", str(model), "--method", method, *arguments,
               "--output-dir", str(output), "--calib", calib, "--nsamples", str(nsamples),
               "--seqlen", str(seqlen), "--device", "cpu", "--quiet", *(["--stream"] if stream else [])]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
    env.setdefault("PRUNING_DATA_DIR", str(SHARED / "data"))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"prune failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    report = json.loads((output / PRUNE_REPORT).read_text())
    report["child_seconds"] = round(time.perf_counter() - started, 1)
    report["peak_rss_bytes"] = int(report["peak_rss_mb"] * 2**20)
    return report


def tensors_identical(first: Path, second: Path) -> dict:
    """Compare two checkpoints tensor by tensor (one tensor in memory at a time)."""
    import torch

    from pruning.core.streaming import ShardedWeights

    a, b = ShardedWeights(first), ShardedWeights(second)
    names = sorted(a.names())
    different = [name for name in names if name not in b.files
                 or not torch.equal(a.read([name])[name], b.read([name])[name])]
    return {"tensors": len(names), "same_names": set(names) == set(b.names()), "different": different[:10],
            "identical": not different and set(names) == set(b.names())}


# The structured methods streamed on the synthetic model (--structured): CLI method and arguments, and the options
# build_method takes for the estimate. A calibration-loss search holds a second layer and its suffix's activations,
# which its bound counts (streaming.estimate_pruning_memory).
STRUCTURED = {
    "depth perplexity (Quark)": ("depth", ("--num-blocks", "1", "--option", "criterion=perplexity"),
                                 {"num_blocks": 1, "criterion": "perplexity"}),
    "two_stage": ("two_stage", ("--option", "ffn_layers=2", "--option", "attention_layers=1"),
                  {"ffn_layers": 2, "attention_layers": 1}),
    "heads (activation)": ("heads", ("--head-reduction", "0.25", "--option", "importance=activation"),
                           {"fraction": 0.25, "importance": "activation"}),
    "flap": ("flap", ("--option", "fraction=0.2"), {"fraction": 0.2}),
}


def streamed_bound(model: Path, method, nsamples: int, seqlen: int) -> dict:
    """The figures behind the bound 1.5 × (decoder layers held + embeddings + head + activations) for `method`."""
    from pruning.core.footprint import meta_model
    from pruning.core.streaming import estimate_pruning_memory

    estimate = estimate_pruning_memory(model, method, nsamples=nsamples, seqlen=seqlen, batch_size=8,
                                       measure_runtime=False)
    _, skeleton = meta_model(model)
    embeddings = skeleton.get_input_embeddings().weight.numel() * 4
    head = skeleton.get_output_embeddings().weight.numel() * 4
    layers_held = 1 + method.searches_by_loss()
    bound = BOUND_FACTOR * (layers_held * estimate["largest_layer_bytes"] + embeddings + head
                            + estimate["activation_bytes"])
    return {"largest_layer_bytes": estimate["largest_layer_bytes"], "layers_held": layers_held,
            "embeddings_head_bytes": embeddings + head, "outer_bytes": estimate["outer_bytes"],
            "activation_bytes": estimate["activation_bytes"], "bound_bytes": int(bound)}


def structured_cases(model: Path, folder: Path, nsamples: int, seqlen: int) -> list[dict]:
    """Each structured method streamed on the synthetic model: its peak against its bound."""
    from pruning.methods import build_method

    rows = []
    for name, (method, arguments, options) in STRUCTURED.items():
        row = {"case": name, **streamed_bound(model, build_method(method, **options), nsamples, seqlen)}
        streamed = prune_process(model, folder / "structured", stream=True, method=method, arguments=arguments,
                                 nsamples=nsamples, seqlen=seqlen)
        row.update(streamed_peak_rss_bytes=streamed["peak_rss_bytes"], streamed_seconds=streamed["child_seconds"],
                   streamed_mode=streamed["memory"]["mode"], passed=streamed["peak_rss_bytes"] < row["bound_bytes"])
        shutil.rmtree(folder / "structured")
        rows.append(row)
    return rows


def synthetic_case(folder: Path, *, compare_in_memory: bool, nsamples: int, seqlen: int,
                   structured: bool = False) -> dict:
    """Build the synthetic model, prune it streamed (and in memory if asked), and check the bound; with
    `structured`, also stream each structured method (STRUCTURED) against its bound."""
    from pruning.methods import build_method

    model = build_synthetic(folder / "synthetic")
    figures = streamed_bound(model, build_method("wanda", sparsity=0.5), nsamples, seqlen)
    bound = figures["bound_bytes"]
    row = {"model_bytes_on_disk": sum(f.stat().st_size for f in model.glob("*.safetensors")),
           "layers": SYNTHETIC["num_hidden_layers"], **{k: v for k, v in figures.items() if k != "layers_held"},
           "nsamples": nsamples, "seqlen": seqlen}
    streamed = prune_process(model, folder / "streamed", stream=True, nsamples=nsamples, seqlen=seqlen)
    row.update(streamed_peak_rss_bytes=streamed["peak_rss_bytes"], streamed_seconds=streamed["child_seconds"],
               streamed_mode=streamed["memory"]["mode"])
    row["passed"] = streamed["peak_rss_bytes"] < bound
    if compare_in_memory:
        in_memory = prune_process(model, folder / "in-memory", stream=False, nsamples=nsamples, seqlen=seqlen)
        row.update(in_memory_peak_rss_bytes=in_memory["peak_rss_bytes"],
                   in_memory_seconds=in_memory["child_seconds"],
                   identical_to_in_memory=tensors_identical(folder / "in-memory", folder / "streamed")["identical"])
        shutil.rmtree(folder / "in-memory")
    shutil.rmtree(folder / "streamed")
    if structured:
        row["structured"] = structured_cases(model, folder, nsamples, seqlen)
    return row


def identical_case(model: str, folder: Path, method: str, nsamples: int, seqlen: int,
                   arguments: tuple[str, ...] = ("--sparsity", "0.5"), case: str | None = None) -> dict:
    """A real model pruned streamed and in memory: are the weights bit-identical?"""
    streamed = prune_process(model, folder / "streamed", stream=True, method=method, arguments=arguments,
                             nsamples=nsamples, seqlen=seqlen)
    in_memory = prune_process(model, folder / "in-memory", stream=False, method=method, arguments=arguments,
                              nsamples=nsamples, seqlen=seqlen)
    check = tensors_identical(folder / "in-memory", folder / "streamed")
    result = {"model": model, "method": case or method, **check, "streamed_peak_rss_bytes": streamed["peak_rss_bytes"],
              "in_memory_peak_rss_bytes": in_memory["peak_rss_bytes"],
              "same_result": streamed["result"] == in_memory["result"]}
    shutil.rmtree(folder / "streamed")
    shutil.rmtree(folder / "in-memory")
    return result


def run(*, synthetic: bool = True, compare_in_memory: bool = False, identical: list[str] = (),
        method: str = "wanda", nsamples: int = 8, seqlen: int = 64, workdir: str | None = None,
        structured: bool = False) -> dict:
    """The benchmark's figures as a dict (see the module docstring); temporary files go under `workdir`."""
    from pruning.core.io import versions

    results = {"protocol": f"wanda 50 %, {nsamples} calibration windows × {seqlen} tokens of c4, CPU, fp32; peak: "
                           "VmHWM of the prune process (prune.json peak_rss_mb); bound: "
                           f"{BOUND_FACTOR} × (largest layer + embeddings + head + activations)",
               "synthetic_shape": SYNTHETIC, "torch_threads_env": os.environ.get("OMP_NUM_THREADS"),
               "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="streaming-bench-", dir=workdir) as scratch:
        if synthetic:
            results["synthetic"] = synthetic_case(Path(scratch), compare_in_memory=compare_in_memory,
                                                  nsamples=nsamples, seqlen=seqlen, structured=structured)
        results["identical"] = [identical_case(model, Path(scratch), method, nsamples, seqlen) for model in identical]
        if structured:
            results["identical"] += [identical_case(model, Path(scratch), name, nsamples, seqlen, arguments, case)
                                     for model in identical for case, (name, arguments, _) in STRUCTURED.items()]
    return results


def report_text(results: dict) -> str:
    gib = lambda value: f"{value / 2**30:.2f} GiB" if value is not None else "-"  # noqa: E731
    lines = []
    row = results.get("synthetic")
    if row:
        lines += [f"synthetic Llama, {row['layers']} layers, random fp32 weights",
                  f"  model size on disk          {gib(row['model_bytes_on_disk'])}",
                  f"  largest decoder layer       {gib(row['largest_layer_bytes'])}",
                  f"  embeddings + head           {gib(row['embeddings_head_bytes'])}",
                  f"  calibration activations     {gib(row['activation_bytes'])}",
                  f"  bound {BOUND_FACTOR} × (layer + emb + head + act) {gib(row['bound_bytes'])}",
                  f"  streamed peak RSS           {gib(row['streamed_peak_rss_bytes'])} "
                  f"({row['streamed_seconds']} s, mode {row['streamed_mode']})",
                  f"  in-memory peak RSS          {gib(row.get('in_memory_peak_rss_bytes'))}"
                  + (f" ({row['in_memory_seconds']} s; weights identical: {row['identical_to_in_memory']})"
                     if "in_memory_seconds" in row else " (not run; --compare-in-memory)"),
                  f"  {'PASS' if row['passed'] else 'FAIL'}: streamed peak "
                  f"{'<' if row['passed'] else '>='} bound"]
        for case in row.get("structured", []):
            lines.append(f"  {case['case']}, streamed: peak {gib(case['streamed_peak_rss_bytes'])} against the bound "
                         f"{BOUND_FACTOR} × ({case['layers_held']} × layer + emb + head + act "
                         f"{gib(case['activation_bytes'])}) = {gib(case['bound_bytes'])} "
                         f"({case['streamed_seconds']} s): {'PASS' if case['passed'] else 'FAIL'}")
    for case in results.get("identical", []):
        lines.append(f"{case['model']} {case['method']}: streamed == in-memory weights: "
                     f"{'PASS' if case['identical'] and case['same_result'] else 'FAIL'} ({case['tensors']} tensors; "
                     f"peak RSS streamed {gib(case['streamed_peak_rss_bytes'])}, in memory "
                     f"{gib(case['in_memory_peak_rss_bytes'])})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare-in-memory", action="store_true",
                        help="also prune the synthetic model in memory (needs about its size in RAM) and compare")
    parser.add_argument("--skip-synthetic", action="store_true", help="only the --identical checks")
    parser.add_argument("--structured", action="store_true",
                        help="also stream the structured methods (Quark's search, two-stage, heads, FLAP) on the "
                             "synthetic model, each against its bound, and in the --identical checks")
    parser.add_argument("--identical", nargs="*", default=[], metavar="MODEL",
                        help="models (zoo specs, e.g. smollm2-135m) to prune streamed and in memory and compare")
    parser.add_argument("--method", default="wanda", help="method of the --identical checks (default: wanda)")
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoints go (default: $TMPDIR)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    results = run(synthetic=not args.skip_synthetic, compare_in_memory=args.compare_in_memory,
                  identical=args.identical, method=args.method, nsamples=args.nsamples, seqlen=args.seqlen,
                  workdir=args.workdir, structured=args.structured)
    print(report_text(results), flush=True)
    if args.out:
        from pruning.core.io import atomic_write_json

        atomic_write_json(args.out, results)
    failed = (results.get("synthetic") and not all(
        case["passed"] for case in [results["synthetic"], *results["synthetic"].get("structured", [])])) or any(
        not (case["identical"] and case["same_result"]) for case in results["identical"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
