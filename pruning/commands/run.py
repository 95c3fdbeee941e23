"""run: a PruneGPT, Quark or PP-LLMs job file, as written, through the same library calls as `prune`."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from ..core.protocols import Calibration
from ..evaluation.provenance import SELECTION_SPLIT
from ..compat.job_files import FORMATS, SELECTION_SPLITS, Job, load_job, run_job
from .common import (add_eval_arguments, add_overwrite_argument, add_runtime_arguments, evaluation_summary,
                     quiet_progress)

LOG_FORMAT = "%(asctime)s - %(levelname)s - %(message)s"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run a PruneGPT config.json, a Quark prune config or a PP-LLMs argument set",
        description="Run JOB (.json, .yaml or .yml), a job file of PruneGPT (model_name, dataset, "
                    "num_blocks_to_prune, pruning_method, ...), Quark (delete_layer_num, model_decoder_layers, "
                    "layer_norm_field, ...) or PP-LLMs (prune_rate, mha_remove_layers, ffn_remove_layers, "
                    "mha_ffn_ratio, ...), recognised by its keys. It runs as method depth (PruneGPT: "
                    "angular/cosine; Quark: perplexity) or two_stage (PP-LLMs) and saves the model with "
                    "prune.json as `prune` does. Unknown keys are refused. Scores, candidates and rounds are "
                    "logged at INFO on stderr and in log_file. See config/jobs/ and config/README.md.")
    parser.add_argument("job", metavar="JOB", help="the job file")
    parser.add_argument("--format", choices=FORMATS, help="the job's system (default: recognised by its keys)")
    parser.add_argument("--selection-split", choices=SELECTION_SPLITS,
                        help="Quark: the WikiText-2 split its window search runs on (default: validation; Quark's "
                             "tutorial searches on test, the evaluation split: a warning is logged and prune.json "
                             "records selection_split test). PruneGPT files name theirs in dataset.split")
    parser.add_argument("--model", help="model spec, replacing the job's model_name (Quark files name none)")
    parser.add_argument("--output-dir", help="where the pruned model goes, replacing PruneGPT's save_directory "
                                             "(required for Quark and PP-LLMs files)")
    add_overwrite_argument(parser, "output directory")
    defaults = Calibration()
    Calibration.add_arguments(parser, defaults={
        "source": "the job's dataset; Quark: wikitext2-validation",
        "nsamples": f"the job's nsamples; PruneGPT 100, Quark {defaults.nsamples}",
        "seed": f"the job's seed, else {defaults.seed}",
        "batch_size": f"PruneGPT's dataset.batch_size, else {defaults.batch_size}"})
    add_eval_arguments(parser, seqlen_default=None)  # used when the job evaluates (calculate_ppl, eval_ppl)
    add_job_running_arguments(parser, run, "also log to this file (appended; default: the job's log_file)")


def add_job_running_arguments(parser, command, log_help: str) -> None:
    """--log-file, the runtime flags and --quiet of the commands that run a translated job (`execute`)."""
    parser.add_argument("--log-file", help=log_help)
    add_runtime_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=command)


def run(args) -> int:
    if args.quiet:
        quiet_progress()
    job = load_job(args.job, args.format)
    return execute(job, args.log_file, model=args.model, output_dir=args.output_dir, calib=args.calib,
                   nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, batch_size=args.batch_size,
                   device=args.device, dtype=args.dtype, data_dir_path=args.data_dir, eval_dataset=args.dataset,
                   eval_seqlen=args.eval_seqlen, max_windows=args.max_windows, overwrite=args.overwrite,
                   progress=not args.quiet, selection_split=args.selection_split,
                   trust_remote_code=args.trust_remote_code)


def execute(job: Job, log_file: str | None, **settings) -> int:
    """Run a translated job (`run_job` with `settings`), logging at INFO on stderr and in `log_file` (else the
    job's; opened only once the job's checks have passed), and print its summary; for `run` and the commands
    that take a system's own flags (`ppllms`)."""
    log_file = log_file or job.log_file
    logger = logging.getLogger("pruning")
    level = logger.level
    handlers: list[logging.Handler] = []
    try:
        report = run_job(job, **settings, log_file=log_file,
                         on_checked=lambda: handlers.extend(_log_handlers(log_file)))
    finally:
        logger.setLevel(level)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    result = report["result"]
    summary = {"format": job.format, "method": report["method"], "options": report["options"],
               "parameters": report["parameters"], "prune_ratio_percent": result.get("prune_ratio_percent")}
    for key in ("removed_layers", "ffn_removed_layers", "mha_removed_layers"):
        if key in result:
            summary[key] = result[key]
    if SELECTION_SPLIT in report:
        summary[SELECTION_SPLIT] = report[SELECTION_SPLIT]
    summary["evaluation"] = evaluation_summary(report)
    print(json.dumps(summary, indent=2))
    return 0


class _LogFile(logging.FileHandler):
    """Appends to the log file, created with its folder at the first line; opened only once the job's checks
    have passed, so a refused job writes none."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _log_handlers(log_file: str | None) -> list[logging.Handler]:
    """INFO lines of the library (scores, candidates, rounds) on stderr, and appended to `log_file` (checked by
    the job's pre-flight as an output: never an input, never inside the output directory)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(_LogFile(log_file, mode="a", encoding="utf-8", delay=True))
    logger = logging.getLogger("pruning")
    logger.setLevel(logging.INFO)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    return handlers
