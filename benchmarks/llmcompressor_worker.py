"""One llm-compressor one-shot run for benchmarks/versus_llmcompressor.py, in llm-compressor's own environment.

llm-compressor pins an older transformers than the project, so it lives in a separate venv
(`scripts/setup_peer.sh`) and this script imports nothing from `pruning`. It reads the calibration windows
the project cut (a torch file of token ids), prunes with Wanda or SparseGPT, saves the model uncompressed and
prints one JSON line: the seconds spent in `oneshot` (model loading and saving excluded), or the error.

Its per-layer sparsity list (`--layer-sparsities`, e.g. a ramp the project computed) and its OWL profile are
given with `targets` set to the decoder-layer class: llm-compressor 0.14 counts every Linear as a "layer" under
its default `["Linear"]` and refuses a list there.

    .venv-peer/bin/python benchmarks/llmcompressor_worker.py MODEL_DIR WINDOWS.pt OUT_DIR \\
        --method sparsegpt --sparsity 0.7 [--mask 2:4] [--owl | --layer-sparsities 0.6,...,0.8] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
import traceback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("windows")
    parser.add_argument("out_dir")
    parser.add_argument("--method", choices=("wanda", "sparsegpt"), required=True)
    parser.add_argument("--sparsity", type=float, required=True)
    parser.add_argument("--mask", default="0:0", help="N:M mask structure (0:0 = unstructured)")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--owl", action="store_true", help="sparsity_profile='owl' with owl_m=5, owl_lmbda=0.08")
    profile.add_argument("--layer-sparsities", default=None,
                         help="comma-separated sparsity of each decoder layer (replaces --sparsity)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import AutoModelForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    windows = torch.load(args.windows)
    dataset = Dataset.from_dict({"input_ids": windows.tolist(), "attention_mask": torch.ones_like(windows).tolist()})
    modifier = {"wanda": WandaPruningModifier, "sparsegpt": SparseGPTModifier}[args.method]
    # "lm_head" alone does not match in 0.14 (module names end with "."), and the head is tied to the embedding.
    options = dict(sparsity=args.sparsity, mask_structure=args.mask, targets=["Linear"], ignore=["re:.*lm_head.*"])
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32)
    layer_class = type(model.model.layers[0]).__name__
    if args.owl:
        options.update(sparsity_profile="owl", owl_m=5, owl_lmbda=0.08, targets=[layer_class])
    if args.layer_sparsities:
        sparsities = [float(value) for value in args.layer_sparsities.split(",")]
        if len(sparsities) != len(model.model.layers):
            parser.error(f"{len(sparsities)} layer sparsities for {len(model.model.layers)} decoder layers")
        options.update(sparsity=sparsities, targets=[layer_class])
    started = time.perf_counter()
    try:
        oneshot(model=model, dataset=dataset, recipe=modifier(**options), num_calibration_samples=len(windows),
                max_seq_length=windows.shape[1], shuffle_calibration_samples=False)
    except Exception as exc:  # the peer's own failure is a result to report, not a crash of the benchmark
        print(json.dumps({"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                          "traceback_tail": traceback.format_exc().splitlines()[-3:]}))
        return
    seconds = time.perf_counter() - started
    model.save_pretrained(args.out_dir, save_compressed=False)
    import llmcompressor
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads(),
                      "versions": {"llmcompressor": llmcompressor.__version__, "torch": torch.__version__}}))


if __name__ == "__main__":
    main()
