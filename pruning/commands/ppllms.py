"""ppllms: PP-LLMs' command line as its README writes it (`python ppllms.py --model_name ... --num_blocks ...
--prune_rate ... --mha_ffn_ratio ... --eval_ppl`), read into the mapping a PP-LLMs job file holds and run
through the same translation (`compat.job_files`), so flags and job files cannot drift apart."""
from __future__ import annotations

import ast

from ..compat.job_files import KEYS, PPLLMS_DEFAULTS, translate
from ..core.protocols import Calibration, Evaluation
from .common import add_overwrite_argument, positive_int, quiet_progress
from .run import add_job_running_arguments, execute

FORMAT = "ppllms"
# What PP-LLMs' README says of each of its parameters (the flags are its own names, from job_files.KEYS)
PPLLMS_HELP = {
    "model_name": "path to the model (here any model spec)",
    "num_blocks": "number of blocks in the model (checked against its config.json)",
    "prune_rate": "target pruning rate: share of all parameters to remove",
    "mha_remove_layers": "number of MHA layers to remove (with ffn_remove_layers; default: from prune_rate)",
    "ffn_remove_layers": "number of FFN layers to remove (with mha_remove_layers; default: from prune_rate)",
    "mha_ffn_ratio": "FFN/MHA layer-count ratio for the calculation from prune_rate",
    "nsamples": "calibration samples",
    "dataset": "calibration dataset: c4 (or a path ending in c4), wikitext2, or a local .txt/.jsonl file",
    "seed": "random seed",
    "eval_ppl": "evaluate perplexity (True or False; the bare flag is True)",
}


def _literal(text: str):
    """A flag's value as PP-LLMs' command line (python-fire) reads it: a Python literal (0.25, 40, True), else
    the text itself (a path)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return text


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "ppllms", help="PP-LLMs' command line: --model_name --num_blocks --prune_rate --mha_ffn_ratio --eval_ppl ...",
        description="Run PP-LLMs' two-stage pruning from its own flags, as `python ppllms.py` takes them (also "
                    "--flag=value and the hyphenated spelling), with its defaults ("
                    + ", ".join(f"{key} {value}" for key, value in PPLLMS_DEFAULTS.items())
                    + "). The flags become the mapping a PP-LLMs job file holds and run as `run` runs that file "
                    "(method two_stage); the model is saved with prune.json in --output-dir. See "
                    "docs/documents.md.")
    system = parser.add_argument_group("PP-LLMs' parameters")
    for key in KEYS[FORMAT]:
        names = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in key else [])
        default = f" (default: {PPLLMS_DEFAULTS[key]})" if key in PPLLMS_DEFAULTS else ""
        system.add_argument(*names, dest=key, metavar="VALUE", help=PPLLMS_HELP[key] + default,
                            required=key == "model_name",  # PP-LLMs' default is a path on its authors' machine
                            **({"nargs": "?", "const": "True"} if KEYS[FORMAT][key] is bool else {}))
    parser.add_argument("--output-dir", required=True, help="where the pruned model and prune.json go")
    add_overwrite_argument(parser, "output directory")
    parser.add_argument("--seqlen", type=int, default=None,
                        help=f"tokens per calibration window (default: {Calibration.seqlen})")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help=f"calibration windows per forward (default: {Calibration.batch_size})")
    measured = parser.add_argument_group("the evaluation (eval_ppl; PP-LLMs' --dataset is its calibration data)")
    measured.add_argument("--eval-dataset", default=Evaluation.dataset,
                          help=f"{Evaluation.DATASET_HELP} (default: {Evaluation.dataset})")
    measured.add_argument("--eval-seqlen", type=int, default=None,
                          help="tokens per perplexity window (default: the calibration --seqlen)")
    measured.add_argument("--max-windows", type=int, default=None,
                          help="score at most this many windows (default: the whole split)")
    add_job_running_arguments(parser, run, "also log to this file (appended)")


def run(args) -> int:
    if args.quiet:
        quiet_progress()
    values = {key: _literal(getattr(args, key)) for key in KEYS[FORMAT] if getattr(args, key) is not None}
    job = translate(values, FORMAT, "ppllms command line")
    return execute(job, args.log_file, output_dir=args.output_dir,
                   seqlen=Calibration.seqlen if args.seqlen is None else args.seqlen,
                   batch_size=args.batch_size, device=args.device, dtype=args.dtype, data_dir_path=args.data_dir,
                   eval_dataset=args.eval_dataset, eval_seqlen=args.eval_seqlen, max_windows=args.max_windows,
                   overwrite=args.overwrite, progress=not args.quiet, trust_remote_code=args.trust_remote_code)
