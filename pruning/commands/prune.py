"""prune: prune a model with one method and save it with prune.json."""
from __future__ import annotations

import json
from pathlib import Path

from ..api import prune
from ..core.sparse_formats import DENSE, SAVE_FORMAT_CHOICES
from ..core.protocols import Calibration
from ..methods import available_methods, streaming_methods
from ..methods.catalog import summary
from ..methods.combined import HEAD_REDUCTION, LAYER_REDUCTION, SPARSITY
from ..methods.depth import STREAMING_CRITERIA as STREAMING_DEPTH_CRITERIA
from ..methods.distill import PERSLM_DISTILLATION
from ..training.recovery_options import RECOVERY_OPTIONS
from ..core.options import describe
from ..pruner import check_not_evaluation_text
from .common import (add_eval_arguments, add_overwrite_argument, add_runtime_arguments, evaluation_summary,
                     parse_option_pairs, quiet_progress)

DISTILLATION, DISTILLATION_ARGUMENTS = PERSLM_DISTILLATION
OUTPUT_PARENT = Path("models/pruned")  # PersLM's --output-dir default; the model goes to NAME-METHOD_pruned inside


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune", help="prune a model and save it (HF directory + prune.json)",
        description="Prune MODEL with METHOD and save a reloadable Hugging Face directory with prune.json "
                    "(method, ratio, per-layer sparsity, parameter counts, calibration protocol, time, memory, "
                    "versions). Nothing is written unless the whole run succeeds.",
        epilog=f"Method options (--option KEY=VALUE; `python -m pruning methods` shows types, ranges, defaults): "
               f"{summary()}.")
    parser.add_argument("--model", required=True, help="local directory, embedded name (smollm2-135m) or hub id")
    parser.add_argument("--method", required=True,
                        help=f"one of: {', '.join(available_methods())}, or {DISTILLATION} (PersLM: magnitude pruning "
                             "to --sparsity, then distillation; distill with base_method=magnitude)")
    ratio = parser.add_mutually_exclusive_group()
    ratio.add_argument("--sparsity", type=float,
                       help=f"fraction of targeted weights to zero, in [0, 1) (default for magnitude, {DISTILLATION} "
                            f"and all: {SPARSITY}; 0 leaves all's sparsity stage out)")
    ratio.add_argument("--nm", help="N:M pattern, N kept out of every M consecutive input weights (e.g. 2:4)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="method option, repeatable, value read as YAML (e.g. per=row for magnitude, one_pass=true "
                             "for wanda/sparsegpt, skip_blocks=[0,-1] for depth); unknown keys are refused")
    structured = parser.add_argument_group("structured pruning and distillation (PersLM-style flags)")
    structured.add_argument("--head-reduction", type=float, metavar="F",
                            help=f"fraction of attention heads to remove, in (0, 1) (methods heads, all; default "
                                 f"{HEAD_REDUCTION}; 0 leaves all's heads stage out)")
    structured.add_argument("--layer-reduction", type=float, metavar="F",
                            help="fraction of decoder layers to remove, evenly spread, first and last kept (methods "
                                 f"layers, all; default {LAYER_REDUCTION}; 0 leaves all's layers stage out). all "
                                 "applies every method in sequence, as PersLM: a stage whose flag is not given runs "
                                 f"at its default ({HEAD_REDUCTION} heads, {LAYER_REDUCTION} layers, sparsity "
                                 f"{SPARSITY})")
    structured.add_argument("--num-blocks", type=int, metavar="N",
                            help="layers (or blocks of block_size layers) to remove (method depth)")
    structured.add_argument("--prune-rate", type=float, metavar="R",
                            help="fraction of all parameters to remove, in (0, 1) (method two_stage)")
    structured.add_argument("--teacher-model",
                            help="distillation teacher: directory, embedded name or hub id (default: the model before pruning)")
    structured.add_argument("--training-data", metavar="FILE",
                            help=f"local .txt/.jsonl text to distill on, never the evaluation split (methods distill, "
                                 f"{DISTILLATION}; all distills when given)")
    structured.add_argument("--distill-epochs", type=int, metavar="N",
                            help="passes over the training data (default: 3; no step cap unless --option max_steps=N)")
    structured.add_argument("--learning-rate", type=float, metavar="LR", help="AdamW learning rate for distillation (default: 5e-05)")
    add_recovery_arguments(parser)
    parser.add_argument("--output-dir", help="where the pruned model and prune.json go (default, as PersLM: "
                                             f"{OUTPUT_PARENT}/NAME-METHOD_pruned, NAME the model's last path "
                                             f"component, METHOD distill for {DISTILLATION})")
    add_overwrite_argument(parser, "output directory")
    parser.add_argument("--save-format", default=DENSE, choices=SAVE_FORMAT_CHOICES,
                        help="how the weights are stored: dense; sparse-bitmask (non-zeros + 1 bit per weight) or "
                             "sparse-24-bitmask (2:4 models; needs --nm 2:4), the compressed-tensors layouts; auto: "
                             "the smallest of the three (default: dense)")
    memory = parser.add_argument_group("models larger than memory")
    memory.add_argument("--max-memory", metavar="SIZE",
                        help="cap on the estimated peak memory (e.g. 16GiB, 1500MB): over it the decoder layers are "
                             "streamed from the safetensors shards one at a time (peak about one layer + embeddings + "
                             "head + calibration activations); a cap even streaming exceeds is refused before work. "
                             "Mode, cap and estimate go to prune.json's memory (default: no cap, in memory)")
    memory.add_argument("--stream", action="store_true",
                        help=f"stream the decoder layers whatever the size (methods: {', '.join(streaming_methods())}; "
                             f"depth with criterion {', '.join(STREAMING_DEPTH_CRITERIA)}; all without training_data; no "
                             "--evaluate, recovery or sparse --save-format); others are refused before work")
    Calibration.add_arguments(parser)
    parser.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                        help="skip linear modules whose full name matches (e.g. '*.mlp.down_proj'), repeatable")
    parser.add_argument("--evaluate", action="store_true", help="measure perplexity before and after pruning")
    add_eval_arguments(parser, seqlen_default=None)
    add_runtime_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars (ours, transformers', the hub's)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.quiet:
        quiet_progress()
    arguments = parse_option_pairs(args.option)
    if args.sparsity is not None:
        arguments["sparsity"] = args.sparsity
    if args.nm is not None:
        arguments["nm"] = args.nm
    method = perslm_method(args, arguments)
    arguments.update(structured_arguments(args, arguments))
    output_dir = args.output_dir or default_output_dir(args.model, method)
    if args.training_data:
        check_not_evaluation_text(args.training_data, args.dataset if args.evaluate else "wikitext2", args.data_dir)
    report = prune(args.model, method, output_dir, calib=args.calib, nsamples=args.nsamples,
                   seqlen=args.seqlen, seed=args.seed, device=args.device, dtype=args.dtype,
                   data_dir_path=args.data_dir, batch_size=args.batch_size, ignore=tuple(args.ignore),
                   evaluate=args.evaluate, eval_dataset=args.dataset, eval_seqlen=args.eval_seqlen,
                   eval_max_windows=args.max_windows, progress=not args.quiet, overwrite=args.overwrite,
                   recovery=recovery_arguments(args), save_format=args.save_format, max_memory=args.max_memory,
                   stream=True if args.stream else None, trust_remote_code=args.trust_remote_code, **arguments)
    summary = {"output_dir": str(output_dir), **{k: report[k] for k in ("method", "options", "parameters", "prune_seconds")}}
    summary["total_sparsity"] = report["result"].get("total_sparsity")
    summary["prune_ratio_percent"] = report["result"].get("prune_ratio_percent")
    summary["evaluation"] = evaluation_summary(report)
    summary["memory"] = {"mode": report["memory"]["mode"], "peak_rss_mb": report["peak_rss_mb"]}
    if report["recovery"]:
        summary["recovery"] = {k: report["recovery"][k] for k in ("steps", "loss_before", "loss_after", "seconds")}
    print(json.dumps(summary, indent=2))
    return 0


def perslm_method(args, arguments: dict) -> str:
    """The library method for --method, with PersLM's defaults filled into `arguments` (and the flags of `args`)
    where the user left them out; `distillation` becomes distill with base_method magnitude."""
    method = args.method
    if method == DISTILLATION:
        if "base_method" in arguments:
            raise ValueError(f"--method {DISTILLATION} is magnitude pruning + distillation; for another base method "
                             "use --method distill --option base_method=NAME")
        if not args.training_data and "training_data" not in arguments:
            raise ValueError(f"--method {DISTILLATION} needs --training-data FILE (text to distill on)")
        method = "distill"
        arguments.update(DISTILLATION_ARGUMENTS)
    no_sparsity = "sparsity" not in arguments and "nm" not in arguments
    if args.method in ("magnitude", DISTILLATION) and no_sparsity:
        arguments["sparsity"] = SPARSITY
    elif method == "heads" and args.head_reduction is None and "fraction" not in arguments:
        args.head_reduction = HEAD_REDUCTION
    elif method == "layers" and args.layer_reduction is None and "fraction" not in arguments:
        args.layer_reduction = LAYER_REDUCTION
    return method  # all takes its stages' defaults itself (methods/combined.py)


def default_output_dir(model: str, method: str) -> Path:
    """PersLM's place for a pruned model: models/pruned/NAME-METHOD_pruned."""
    name = Path(str(model).rstrip("/\\")).name or "model"
    return OUTPUT_PARENT / f"{name}-{method}_pruned"


def structured_arguments(args, arguments: dict) -> dict:
    """Method keywords from the PersLM-style flags; a reduction flag for the wrong method is an error."""
    target = arguments.get("base_method") if args.method == "distill" else args.method
    mapped = {}
    for flag, method, key in (("head_reduction", "heads", "head_fraction"), ("layer_reduction", "layers", "layer_fraction")):
        value = getattr(args, flag)
        if value is None:
            continue
        if args.method == "all":
            mapped[key] = value
        elif target == method:
            mapped["fraction"] = value
        else:
            raise ValueError(f"--{flag.replace('_', '-')} applies to --method {method} or all "
                             f"(or distill with base_method={method}), not {args.method}")
    for flag, key in (("num_blocks", "num_blocks"), ("prune_rate", "prune_rate"), ("teacher_model", "teacher_model"),
                      ("training_data", "training_data"), ("distill_epochs", "epochs"), ("learning_rate", "learning_rate")):
        if getattr(args, flag) is not None:
            mapped[key] = getattr(args, flag)
    return mapped


def _flag(name: str) -> str:
    return "--recover-" + name.replace("_", "-")


def add_recovery_arguments(parser) -> None:
    """--recover-steps N (0: off) and the other LoRA settings, one flag per RECOVERY_OPTIONS entry."""
    group = parser.add_argument_group(
        "recovery fine-tuning after any method (LoRA through peft, merged back; pruned weights stay zero)")
    for option in RECOVERY_OPTIONS:
        group.add_argument(_flag(option.name), dest=f"recover_{option.name}", type=option.type, default=None,
                           metavar=option.name.split("_")[-1].upper(), help=describe(option))


def recovery_arguments(args) -> dict | None:
    """The --recover-* values given, as api.prune's `recovery`; settings without --recover-steps are refused."""
    given = {o.name: getattr(args, f"recover_{o.name}") for o in RECOVERY_OPTIONS
             if getattr(args, f"recover_{o.name}") is not None}
    if given and "steps" not in given:
        raise ValueError(f"{', '.join(_flag(name) for name in given)} given without --recover-steps N: "
                         "no recovery would run")
    return given or None
