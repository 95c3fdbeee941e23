"""The whole job in a few calls: validate, load, prune, evaluate, save — all from Python.

Every argument is validated before a model is loaded, and outputs appear only when complete.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from . import preflight
from .core.adapters import get_adapter
from .core.data import CalibrationCache
from .core.io import PRUNE_REPORT, atomic_directory
from .core.modeling import load_model, parameter_counts, resolve_device, save_model
from .core.protocols import Calibration, Evaluation
from .core.sparse_formats import DENSE
from .core.streaming import STAGING, STREAMED, MemoryPlan, open_streamed, save_streamed
from .evaluation.perplexity import perplexity
from .evaluation.provenance import SELECTION_SPLIT, Measurement, prune_report
from .methods import PruneContext, PruningMethod
from .preflight import RunRequest
from .training.recovery import load_recovery_data, recover, recovery_documents
from .core.dtypes import DEFAULT_DTYPE

CALIBRATION, EVALUATION = Calibration(), Evaluation()  # the defaults
log = logging.getLogger(__name__)


def prune(model: str, method: str | PruningMethod, output_dir: str | os.PathLike, *, calib: str = CALIBRATION.source,
          nsamples: int = CALIBRATION.nsamples, seqlen: int = CALIBRATION.seqlen, seed: int = CALIBRATION.seed,
          device: str = "auto", dtype: str = DEFAULT_DTYPE, data_dir_path: str | None = None,
          batch_size: int = CALIBRATION.batch_size, ignore: tuple[str, ...] = (), evaluate: bool = False,
          eval_dataset: str = EVALUATION.dataset, eval_seqlen: int | None = None, eval_max_windows: int | None = None,
          progress: bool = True, overwrite: bool = False, recovery: dict | None = None, save_format: str = DENSE,
          max_memory: str | int | None = None, stream: bool | None = None, selection_on_test: bool = False,
          trust_remote_code: bool = False, **method_arguments) -> dict:
    """Prune `model` (any zoo spec) with `method` and save the result plus prune.json in `output_dir`.

    `recovery` ({steps, rank, alpha, lr, batch_size, seqlen, data, heldout_windows}; pruning/training/recovery.py) adds
    LoRA recovery fine-tuning after the method when its steps are > 0. `save_format` (dense, sparse-bitmask,
    sparse-24-bitmask, auto; pruning/core/sparse_formats.py) is how the weights are stored. `max_memory` ('64GiB', or
    bytes) caps the estimated peak memory: over it the decoder layers are streamed from disk one at a time
    (pruning/core/streaming.py), and a cap even streaming exceeds is refused; `stream` True forces streaming, False
    forbids it. `selection_on_test` is the documents' compatibility path (PruneGPT's example config and Quark's
    tutorial choose their layers on WikiText-2 test): `calib` must then be "wikitext2-test", a warning is logged
    and prune.json records `selection_split: test`; nothing else calibrates on the evaluation split.
    `trust_remote_code` lets a model with code of its own in its folder (config.json's auto_map, e.g.
    deepseek-moe) load and run that code; without it such a model is refused before loading, and prune.json
    records the opt-in. Every argument is checked first by the pre-flight (pruning/preflight.py)."""
    measurement = Measurement(model)
    calibration = Calibration(calib, nsamples, seqlen, seed, batch_size)
    evaluation = Evaluation(eval_dataset, seqlen=eval_seqlen, max_windows=eval_max_windows) if evaluate else None
    checked = preflight.check(RunRequest(
        model, method, method_arguments, calibration=calibration, evaluation=evaluation, output_dir=output_dir,
        overwrite=overwrite, save_format=save_format, recovery=recovery, max_memory=max_memory, stream=stream,
        device=device, dtype=dtype, data_dir=data_dir_path, selection_on_test=selection_on_test,
        trust_remote_code=trust_remote_code, ignore=tuple(ignore)))
    instance, path, memory, recovery_settings = checked.method, checked.path, checked.memory, checked.recovery
    if selection_on_test:
        log.warning("%s chooses what to prune on %s, the evaluation split (as the document it reproduces does): "
                    "its test perplexity is not a held-out score", instance.name, calib)
    compute = resolve_device(device)
    output_dir = Path(output_dir)
    if memory.mode == STREAMED:
        if trust_remote_code:
            raise ValueError("a model with code of its own (trust_remote_code) is not streamed: its layers are "
                             "built by that code; prune it in memory (no --max-memory cap below its size)")
        return _prune_streamed(measurement, instance, path, output_dir, memory, calib=calib, nsamples=nsamples,
                               seqlen=seqlen, seed=seed, compute=compute, dtype=dtype, data_dir_path=data_dir_path,
                               batch_size=batch_size, ignore=tuple(ignore), progress=progress, overwrite=overwrite,
                               selection_on_test=selection_on_test)
    recovery_text = None  # read now, so that a missing split is refused before the model loads
    if recovery_settings.steps:
        recovery_text = recovery_documents(recovery_settings, data_dir_path)

    net, tokenizer = load_model(measurement.resolve(path), dtype=dtype, device="cpu",
                                trust_remote_code=trust_remote_code)
    adapter = get_adapter(net)
    ctx, calibration = _context(instance, net, tokenizer, adapter, path, calib=calib, nsamples=nsamples,
                                seqlen=seqlen, seed=seed, compute=compute, data_dir_path=data_dir_path,
                                batch_size=batch_size, progress=progress, ignore=tuple(ignore),
                                selection_on_test=selection_on_test)
    eval_settings = dict(dataset=eval_dataset, seqlen=(evaluation or EVALUATION).window(seqlen),
                         max_windows=eval_max_windows, data_dir=data_dir_path)
    evaluation = {}
    if evaluate:
        evaluation["before"] = perplexity(net.to(compute), tokenizer, **eval_settings)
        net.to("cpu")
    before = parameter_counts(net)
    method_report, prune_seconds = _timed_prune(instance, ctx, compute)
    net = ctx.model  # structured methods may rebuild the model
    recovered = None
    if recovery_text is not None:
        if evaluate:
            evaluation["pruned"] = perplexity(net.to(compute), tokenizer, **eval_settings)  # before recovery
            net.to("cpu")
        data = load_recovery_data(tokenizer, recovery_settings, recovery_text, seed)
        recovered = recover(net, adapter, data, recovery_settings, compute, seed, progress)
    if evaluate:
        evaluation["after"] = perplexity(net.to(compute), tokenizer, **eval_settings)
        net.to("cpu")

    report = _report(instance, calibration, seed, compute, dtype, ignore,
                     {"before": before, "after": parameter_counts(net)}, method_report, evaluation, prune_seconds,
                     recovered, memory, selection_on_test)
    if trust_remote_code:
        report["trust_remote_code"] = True  # the model's own code ran (and is saved beside the weights)
    report = measurement.finish(report, peak_rss=True)
    save_model(net, tokenizer, output_dir, report, overwrite=overwrite, save_format=save_format)
    return report


def _context(instance: PruningMethod, net, tokenizer, adapter, path: Path, *, calib: str, nsamples: int, seqlen: int,
             seed: int, compute: torch.device, data_dir_path: str | None, batch_size: int, progress: bool,
             ignore: tuple[str, ...], selection_on_test: bool) -> tuple[PruneContext, CalibrationCache]:
    """The method's context on a loaded (or streamed) model, checked by the method before any work."""
    torch.manual_seed(seed)
    calibration = CalibrationCache(tokenizer, calib, nsamples, seqlen, seed, data_dir_path, selection_on_test)
    ctx = PruneContext(model=net, tokenizer=tokenizer, adapter=adapter, device=compute, calibration=calibration,
                       seed=seed, batch_size=batch_size, progress=progress, ignore=ignore,
                       extras={"data_dir": data_dir_path, "model_path": str(path)})
    instance.check_model(ctx)
    return ctx, calibration


def _timed_prune(instance: PruningMethod, ctx: PruneContext, compute: torch.device) -> tuple[dict, float]:
    """The method's report and its seconds (CUDA peak memory counted from here)."""
    if compute.type == "cuda":
        torch.cuda.reset_peak_memory_stats(compute)
    started = time.perf_counter()
    report = instance.prune(ctx)
    return report, time.perf_counter() - started


def _report(instance: PruningMethod, calibration: CalibrationCache, seed: int, compute: torch.device, dtype: str,
            ignore, parameters: dict, method_report: dict, evaluation: dict, prune_seconds: float, recovered,
            memory: MemoryPlan, selection_on_test: bool) -> dict:
    """prune.json's fields before `Measurement.finish` adds the model, time, peak memory and versions."""
    return prune_report(
        method=instance.name, options=instance.options(), calibration=calibration.protocol, seed=seed, device=compute,
        dtype=dtype, ignore=ignore, parameters=parameters, result=method_report, evaluation=evaluation,
        prune_seconds=prune_seconds, recovery=recovered,
        peak_cuda_mb=round(torch.cuda.max_memory_allocated(compute) / 2**20, 1) if compute.type == "cuda" else None,
        memory=memory.record(), **({SELECTION_SPLIT: "test"} if selection_on_test else {}))


def _prune_streamed(measurement: Measurement, instance: PruningMethod, path: Path, output_dir: Path,
                    memory: MemoryPlan, *, calib: str, nsamples: int, seqlen: int, seed: int, compute: torch.device,
                    dtype: str, data_dir_path: str | None, batch_size: int, ignore: tuple[str, ...], progress: bool,
                    overwrite: bool, selection_on_test: bool) -> dict:
    """`prune` with the decoder layers streamed from disk: the shards are written into the output's scratch
    folder while the engine walks the layers, and the folder replaces `output_dir` only once complete."""
    with atomic_directory(output_dir, overwrite=overwrite) as scratch:
        net, tokenizer, source = open_streamed(measurement.resolve(path), dtype, scratch / STAGING)
        ctx, calibration = _context(instance, net, tokenizer, source.adapter, path, calib=calib, nsamples=nsamples,
                                    seqlen=seqlen, seed=seed, compute=compute, data_dir_path=data_dir_path,
                                    batch_size=batch_size, progress=progress, ignore=ignore,
                                    selection_on_test=selection_on_test)
        method_report, prune_seconds = _timed_prune(instance, ctx, compute)
        parameters = source.finish(scratch)
        report = _report(instance, calibration, seed, compute, dtype, ignore, parameters, method_report, {},
                         prune_seconds, None, memory, selection_on_test)
        report = measurement.finish(report, peak_rss=True)
        save_streamed(ctx.model, tokenizer, scratch, report, PRUNE_REPORT)
    return report


def evaluate_perplexity(model: str, *, dataset: str = EVALUATION.dataset, split: str = EVALUATION.split,
                        seqlen: int = 512, max_windows: int | None = EVALUATION.max_windows,
                        batch_size: int = EVALUATION.batch_size, device: str = "auto", dtype: str = DEFAULT_DTYPE,
                        data_dir_path: str | None = None, output: str | None = None, overwrite: bool = False,
                        trust_remote_code: bool = False) -> dict:
    """Perplexity of a model directory or spec; written atomically to `output` when given (replacing only
    an earlier result of ours unless `overwrite`); `trust_remote_code` as for `prune`."""
    measurement = Measurement(model)
    checked = preflight.check(RunRequest(
        model, calibration=None, evaluation=Evaluation(dataset, split, seqlen, max_windows, batch_size),
        output_file=output, overwrite=overwrite, device=device, dtype=dtype, data_dir=data_dir_path,
        names={"evaluation.seqlen": "--seqlen"}, trust_remote_code=trust_remote_code))
    compute = resolve_device(device)
    net, tokenizer = load_model(measurement.resolve(checked.path), dtype=dtype, device=str(compute),
                                trust_remote_code=trust_remote_code)
    result = perplexity(net, tokenizer, dataset, split, seqlen, max_windows, batch_size, data_dir_path)
    result["parameters"] = parameter_counts(net)
    return measurement.finish(result, output)
