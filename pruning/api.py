"""The whole job in a few calls: validate, load, prune, evaluate, save — all from Python.

Every argument is validated before a model is loaded, and outputs appear only when complete.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import torch

from .core import checks
from .core.adapters import get_adapter
from .core.sparse_formats import DENSE, check_request as check_save_request
from .core.data import CalibrationCache, check_calibration_source, check_evaluation_dataset, data_dir
from .evaluation.perplexity import perplexity
from .methods import PruneContext, PruningMethod, build_method
from .training.recovery_options import RECOVERY, RecoverySettings
from .core.io import PRUNE_REPORT, RUN_ID, atomic_directory
from .core.modeling import load_model, parameter_counts, resolve_device, save_model, torch_dtype
from .evaluation.provenance import Measurement
from .training.recovery import load_recovery_data, recover, recovery_documents
from .core.streaming import STAGING, STREAMED, MemoryPlan, open_streamed, plan_memory, save_streamed


def _evaluation_seqlen(eval_seqlen: int | None, seqlen: int) -> int:
    """The evaluation window: `eval_seqlen` where given (0 too, which the length check then refuses), else the
    calibration `seqlen`."""
    return seqlen if eval_seqlen is None else eval_seqlen


def prune(model: str, method: str | PruningMethod, output_dir: str | os.PathLike, *, calib: str = "c4",
          nsamples: int = 128, seqlen: int = 2048, seed: int = 0, device: str = "auto", dtype: str = "float32",
          data_dir_path: str | None = None, batch_size: int = 8, ignore: tuple[str, ...] = (),
          evaluate: bool = False, eval_dataset: str = "wikitext2", eval_seqlen: int | None = None,
          eval_max_windows: int | None = None, progress: bool = True, overwrite: bool = False,
          recovery: dict | None = None, save_format: str = DENSE, max_memory: str | int | None = None,
          stream: bool | None = None, **method_arguments) -> dict:
    """Prune `model` (any zoo spec) with `method` and save the result plus prune.json in `output_dir`.

    `recovery` ({steps, rank, alpha, lr, batch_size, seqlen, data, heldout_windows}; pruning/training/recovery.py) adds
    LoRA recovery fine-tuning after the method when its steps are > 0. `save_format` (dense, sparse-bitmask,
    sparse-24-bitmask, auto; pruning/core/sparse_formats.py) is how the weights are stored. `max_memory` ('64GiB', or
    bytes) caps the estimated peak memory: over it the decoder layers are streamed from disk one at a time
    (pruning/core/streaming.py), and a cap even streaming exceeds is refused; `stream` True forces streaming, False
    forbids it."""
    measurement = Measurement(model)
    check_save_request(save_format, method_arguments.get("nm"))
    checks.positive({"batch_size": batch_size})
    recovery_settings = RecoverySettings.parse(recovery)
    instance = method if isinstance(method, PruningMethod) else build_method(method, **method_arguments)
    if instance.needs_calibration:
        check_calibration_source(calib)
        checks.positive({"nsamples": nsamples})
        instance.check_calibration(nsamples)
    if evaluate:
        check_evaluation_dataset(eval_dataset)
    data_dir(data_dir_path)
    compute = resolve_device(device)
    torch_dtype(dtype)
    output_dir = Path(output_dir)
    path = checks.before_prune(
        model, output_dir, overwrite=overwrite, seqlen=seqlen if instance.needs_calibration else None,
        eval_seqlen=_evaluation_seqlen(eval_seqlen, seqlen) if evaluate else None, eval_max_windows=eval_max_windows,
        inputs=[calib, eval_dataset, recovery_settings.data if recovery_settings.steps else None,
                *(method_arguments.get(k) for k in ("teacher_model", "training_data"))])
    config = checks.model_config(path)
    instance.check_config(config)
    memory = plan_memory(path, instance, max_memory=max_memory, stream=stream, dtype=dtype,
                         nsamples=nsamples if instance.needs_calibration else 0, seqlen=seqlen, batch_size=batch_size,
                         evaluate=evaluate, recovery_steps=recovery_settings.steps, save_format=save_format,
                         model_config=config)
    if memory.mode == STREAMED:
        return _prune_streamed(measurement, instance, path, output_dir, memory, calib=calib, nsamples=nsamples,
                               seqlen=seqlen, seed=seed, compute=compute, dtype=dtype, data_dir_path=data_dir_path,
                               batch_size=batch_size, ignore=tuple(ignore), progress=progress, overwrite=overwrite)
    recovery_text = None  # read now, so that a missing split is refused before the model loads
    if recovery_settings.steps:
        checks.check_lengths(path, config, {"--recover-seqlen": recovery_settings.seqlen})
        recovery_text = recovery_documents(recovery_settings, data_dir_path)

    net, tokenizer = load_model(measurement.resolve(path), dtype=dtype, device="cpu")
    adapter = get_adapter(net)
    ctx, calibration = _context(instance, net, tokenizer, adapter, path, calib=calib, nsamples=nsamples,
                                seqlen=seqlen, seed=seed, compute=compute, data_dir_path=data_dir_path,
                                batch_size=batch_size, progress=progress, ignore=tuple(ignore))
    eval_settings = dict(dataset=eval_dataset, seqlen=_evaluation_seqlen(eval_seqlen, seqlen),
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
                     recovered, memory)
    report = measurement.finish(report, peak_rss=True)
    save_model(net, tokenizer, output_dir, report, overwrite=overwrite, save_format=save_format)
    return report


def _context(instance: PruningMethod, net, tokenizer, adapter, path: Path, *, calib: str, nsamples: int, seqlen: int,
             seed: int, compute: torch.device, data_dir_path: str | None, batch_size: int, progress: bool,
             ignore: tuple[str, ...]) -> tuple[PruneContext, CalibrationCache]:
    """The method's context on a loaded (or streamed) model, checked by the method before any work."""
    torch.manual_seed(seed)
    calibration = CalibrationCache(tokenizer, calib, nsamples, seqlen, seed, data_dir_path)
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
            memory: MemoryPlan) -> dict:
    """prune.json's fields before `Measurement.finish` adds the model, time, peak memory and versions."""
    return {
        "method": instance.name,
        "options": instance.options(),
        "calibration": calibration.protocol,
        "seed": seed,
        RUN_ID: uuid.uuid4().hex,  # tells two prunes with identical settings apart
        "device": str(compute),
        "dtype": dtype,
        "ignore": list(ignore),
        "parameters": parameters,
        "result": method_report,
        "evaluation": evaluation or None,
        "prune_seconds": round(prune_seconds, 3),
        RECOVERY: recovered,
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(compute) / 2**20, 1) if compute.type == "cuda" else None,
        "memory": memory.record(),
    }


def _prune_streamed(measurement: Measurement, instance: PruningMethod, path: Path, output_dir: Path,
                    memory: MemoryPlan, *, calib: str, nsamples: int, seqlen: int, seed: int, compute: torch.device,
                    dtype: str, data_dir_path: str | None, batch_size: int, ignore: tuple[str, ...], progress: bool,
                    overwrite: bool) -> dict:
    """`prune` with the decoder layers streamed from disk: the shards are written into the output's scratch
    folder while the engine walks the layers, and the folder replaces `output_dir` only once complete."""
    with atomic_directory(output_dir, overwrite=overwrite) as scratch:
        net, tokenizer, source = open_streamed(measurement.resolve(path), dtype, scratch / STAGING)
        ctx, calibration = _context(instance, net, tokenizer, source.adapter, path, calib=calib, nsamples=nsamples,
                                    seqlen=seqlen, seed=seed, compute=compute, data_dir_path=data_dir_path,
                                    batch_size=batch_size, progress=progress, ignore=ignore)
        method_report, prune_seconds = _timed_prune(instance, ctx, compute)
        parameters = source.finish(scratch)
        report = _report(instance, calibration, seed, compute, dtype, ignore, parameters, method_report, {},
                         prune_seconds, None, memory)
        report = measurement.finish(report, peak_rss=True)
        save_streamed(ctx.model, tokenizer, scratch, report, PRUNE_REPORT)
    return report


def evaluate_perplexity(model: str, *, dataset: str = "wikitext2", split: str = "test", seqlen: int = 512,
                        max_windows: int | None = None, batch_size: int = 4, device: str = "auto",
                        dtype: str = "float32", data_dir_path: str | None = None, output: str | None = None,
                        overwrite: bool = False) -> dict:
    """Perplexity of a model directory or spec; written atomically to `output` when given (replacing only
    an earlier result of ours unless `overwrite`)."""
    measurement = Measurement(model)
    check_evaluation_dataset(dataset)
    data_dir(data_dir_path)
    compute = resolve_device(device)
    torch_dtype(dtype)
    path = checks.before_evaluate(model, output, overwrite=overwrite, seqlen=seqlen, batch_size=batch_size,
                                  max_windows=max_windows, inputs=[dataset])
    net, tokenizer = load_model(measurement.resolve(path), dtype=dtype, device=str(compute))
    result = perplexity(net, tokenizer, dataset, split, seqlen, max_windows, batch_size, data_dir_path)
    result["parameters"] = parameter_counts(net)
    return measurement.finish(result, output)
