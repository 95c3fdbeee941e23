"""`Pruner`: PersLM's ModelPruner workflow. One model in memory; each method applies one registered pruning
step (or a distillation) to it and returns it, so steps chain without saving in between; `evaluate()` measures
the model as it is now and `save()` writes it with a prune.json that lists every step.

    pruner = Pruner("smollm2-135m", output_dir="out/custom")
    pruner.prune_heads(head_reduction=0.15, save_model=False)
    pruner.prune_layers(layer_reduction=0.2, save_model=False)
    print(pruner.evaluate_pruned_model())
    pruner.magnitude_pruning(sparsity=0.3, save_model=True)

The steps are the registry's methods (`apply(name, **arguments)` runs any of them); the same steps in the
same order give the same model as `python -m pruning prune --method all` with the same ratios.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from . import preflight
from .core import model_checks, outputs
from .core.inputs import read_paths
from .core.adapters import get_adapter
from .core.data import CalibrationCache, DataError, check_evaluation_dataset, data_dir, evaluation_file
from .core.modeling import load_model, parameter_counts, resolve_device, save_model
from .core.protocols import Calibration, Evaluation
from .core.surgery import numel, removal_report
from .evaluation.perplexity import perplexity
from .evaluation.provenance import Measurement, prune_report
from .methods import PruneContext, PruningMethod
from .methods.combined import HEAD_REDUCTION, LAYER_REDUCTION, SPARSITY
from .methods.distill import PERSLM_DISTILLATION
from .preflight import RunRequest
from .training.distillation import DistillSettings, distill_model, load_teacher, training_windows
from .core.dtypes import DEFAULT_DTYPE

CALIBRATION, EVALUATION = Calibration(), Evaluation()  # the defaults
PRUNER_METHOD = "pruner"  # prune.json's method for a Pruner chain; its options list the steps
FIRST_MODEL = "the model as loaded"  # the distillation teacher when none is named


def check_not_evaluation_text(training_data: str, eval_dataset: str = EVALUATION.dataset, data_dir_path=None) -> None:
    """Refuse training text that is the evaluation text: the evaluation file itself, or WikiText-2's test split
    in the local data directory (the names wikitext2 / wikitext2-test are refused by check_calibration_source)."""
    training = Path(training_data).expanduser()
    if not training.is_file():
        return
    root = data_dir(data_dir_path)
    for path in (evaluation_file(eval_dataset, "test", root), evaluation_file("wikitext2", "test", root)):
        if path is not None and path.is_file() and path.resolve() == training.resolve():
            raise DataError(f"training data {training_data} is the evaluation text; train on other text")


class Pruner:
    """A model loaded once and pruned step by step in memory (PersLM's ModelPruner).

    Every argument is checked before the model loads; each step checks its own arguments and the model before
    it changes anything. Calibration (for the methods that need it) uses `calib`, never the evaluation split.
    A model with code of its own (auto_map) loads only with `trust_remote_code=True`.
    """

    def __init__(self, model_path: str | os.PathLike, output_dir: str | os.PathLike | None = None, *,
                 device: str = "auto", dtype: str = DEFAULT_DTYPE, calib: str = CALIBRATION.source,
                 nsamples: int = CALIBRATION.nsamples, seqlen: int = CALIBRATION.seqlen, seed: int = CALIBRATION.seed,
                 batch_size: int = CALIBRATION.batch_size, data_dir_path: str | None = None,
                 eval_dataset: str = EVALUATION.dataset, eval_seqlen: int | None = None,
                 eval_max_windows: int | None = None, progress: bool = True, trust_remote_code: bool = False):
        self.measurement = Measurement(model_path)
        self.protocol = Calibration(calib, nsamples, seqlen, seed, batch_size)
        self.request = RunRequest(
            str(model_path), calibration=self.protocol,
            evaluation=Evaluation(eval_dataset, seqlen=eval_seqlen, max_windows=eval_max_windows),
            output_dir=output_dir, device=device, dtype=dtype, data_dir=data_dir_path,
            names={"evaluation.max_windows": "eval_max_windows"}, trust_remote_code=trust_remote_code)
        checked = preflight.check(self.request)
        self.device = resolve_device(device)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.path, self.config = checked.path, checked.config
        self.eval_seqlen = seqlen if eval_seqlen is None else eval_seqlen
        self.dtype, self.calib, self.nsamples, self.seqlen, self.seed = dtype, calib, nsamples, seqlen, seed
        self.batch_size, self.data_dir, self.progress = batch_size, data_dir_path, progress
        self.eval_dataset, self.eval_max_windows = eval_dataset, eval_max_windows
        self.trust_remote_code = trust_remote_code  # the model's own code (auto_map) may run: the user opted in
        self.model, self.tokenizer = load_model(self.measurement.resolve(self.path), dtype=dtype, device="cpu",
                                                trust_remote_code=trust_remote_code)
        self.adapter = get_adapter(self.model)
        self.parameters_before = parameter_counts(self.model)
        self.numel_before = numel(self.model)
        self.steps: list[dict] = []
        self.evaluations: list[dict] = []
        self.calibration = CalibrationCache(self.tokenizer, calib, nsamples, seqlen, seed, data_dir_path)
        torch.manual_seed(seed)

    # ------------------------------------------------------------------------------------------- steps

    def apply(self, method: str | PruningMethod, **arguments) -> nn.Module:
        """Run one registered method (name and its ratio/options, as `pruning.build_method` takes them) on the
        model in memory; returns the model."""
        instance = preflight.check(  # against the model as it is now (a step before may have removed layers)
            RunRequest(str(self.path), method, arguments, calibration=self.protocol, device=None, dtype=None,
                       names={"model": str(self.path)}, trust_remote_code=self.trust_remote_code),
            model_config=self.model.config.to_dict()).method
        ctx = PruneContext(model=self.model, tokenizer=self.tokenizer, adapter=self.adapter, device=self.device,
                           calibration=self.calibration, seed=self.seed, batch_size=self.batch_size,
                           progress=self.progress, extras={"data_dir": self.data_dir, "model_path": str(self.path)})
        instance.check_model(ctx)
        before, started = numel(self.model), time.perf_counter()
        result = instance.prune(ctx)
        self.model = ctx.model  # structured methods may rebuild the model
        self._record(instance.name, instance.options(), result, before, started)
        return self.model

    def prune_heads(self, head_reduction: float = HEAD_REDUCTION, save_model: bool = False, **options) -> nn.Module:
        """Remove `head_reduction` of the attention heads (method heads; options importance, gqa)."""
        return self._step("heads", save_model, fraction=head_reduction, **options)

    def prune_layers(self, layer_reduction: float = LAYER_REDUCTION, save_model: bool = False, **options) -> nn.Module:
        """Remove `layer_reduction` of the decoder layers, evenly spread (method layers)."""
        return self._step("layers", save_model, fraction=layer_reduction, **options)

    def magnitude_pruning(self, sparsity: float = SPARSITY, save_model: bool = False, **options) -> nn.Module:
        """Zero the smallest `sparsity` of each targeted matrix (method magnitude; options per, allocation, ...)."""
        return self._step("magnitude", save_model, sparsity=sparsity, **options)

    def distill(self, training_data: str, teacher_model: str | None = None, epochs: int = 3,
                learning_rate: float = 5e-5, save_model: bool = False, **options) -> nn.Module:
        """Knowledge distillation of the model as it is now from `teacher_model` (default: the model as loaded)
        on `training_data`, `epochs` passes (a step cap only with max_steps=N); masks and structure stay."""
        settings, windows = self._distill_settings(training_data, teacher_model, epochs, learning_rate, options)
        self._distill(settings, windows)
        return self._saved(save_model)

    def distillation(self, sparsity: float = SPARSITY, training_data: str | None = None, teacher_model: str | None = None,
                     epochs: int = 3, learning_rate: float = 5e-5, save_model: bool = False, **options) -> nn.Module:
        """PersLM's distillation-guided pruning: magnitude pruning to `sparsity`, then `distill`."""
        if training_data is None:
            raise ValueError(f"{PERSLM_DISTILLATION[0]} needs training_data (text to distill on)")
        settings, windows = self._distill_settings(training_data, teacher_model, epochs, learning_rate, options)
        self.apply(PERSLM_DISTILLATION[1]["base_method"], sparsity=sparsity)
        self._distill(settings, windows)
        return self._saved(save_model)

    # --------------------------------------------------------------------------- evaluation and saving

    def evaluate(self, dataset: str | None = None, seqlen: int | None = None, max_windows: int | None = None,
                 batch_size: int = 4) -> dict:
        """Perplexity of the model as it is now (WikiText-2 test by default, with its protocol), its parameter
        counts, and the steps applied so far."""
        dataset = dataset or self.eval_dataset
        seqlen = seqlen or self.eval_seqlen
        max_windows = max_windows or self.eval_max_windows
        check_evaluation_dataset(dataset)
        model_checks.check_lengths(self.path, self.config, {"--eval-seqlen": seqlen})
        result = perplexity(self.model.to(self.device), self.tokenizer, dataset, "test", seqlen, max_windows,
                            batch_size, self.data_dir)
        self.model.to("cpu")
        result.update(parameters=parameter_counts(self.model), after_steps=[step["method"] for step in self.steps])
        self.evaluations.append(result)
        return result

    evaluate_pruned_model = evaluate  # PersLM's name

    def save(self, output_dir: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
        """Write the model as it is now, with prune.json (every step, its options and report), atomically."""
        dest = Path(output_dir) if output_dir is not None else self.output_dir
        if dest is None:
            raise ValueError("no output directory: give Pruner(..., output_dir=DIR) or save(DIR)")
        outputs.output_directory(dest, overwrite=overwrite, inputs=self.inputs())
        latest = self.evaluations[-1] if self.evaluations and self.evaluations[-1]["after_steps"] == [
            step["method"] for step in self.steps] else None
        stages = [{"stage": step["method"], "options": step["options"], "result": step["result"],
                   "parameters_removed": step["parameters_removed"]} for step in self.steps]
        result = {"stages": stages, **removal_report(self.numel_before, self.model)}
        for step in self.steps:
            if "total_sparsity" in step["result"]:
                result["total_sparsity"] = step["result"]["total_sparsity"]
        report = prune_report(
            method=PRUNER_METHOD, options={"steps": [{"method": step["method"], **step["options"]} for step in self.steps]},
            calibration=self.calibration.protocol, seed=self.seed, device=self.device, dtype=self.dtype, ignore=[],
            parameters={"before": self.parameters_before, "after": parameter_counts(self.model)}, result=result,
            evaluation={"after": latest} if latest else None, evaluations=self.evaluations,
            prune_seconds=sum(step["seconds"] for step in self.steps),
            **({"trust_remote_code": True} if self.trust_remote_code else {}))
        report = self.measurement.finish(report, peak_rss=True)
        return save_model(self.model, self.tokenizer, dest, report, overwrite=overwrite)

    # ----------------------------------------------------------------------------------------- helpers

    def inputs(self) -> list[Path]:
        """Every path this chain has read (the model, calibration and evaluation files, each step's training text
        and teacher), which no output may be, contain or lie inside."""
        steps = [RunRequest(str(self.path), options=step["options"], calibration=None, data_dir=self.data_dir)
                 for step in self.steps]
        return [*self.request.inputs(), *read_paths(models=[self.path]),
                *(path for request in steps for path in request.inputs())]

    def _step(self, method: str, save_model: bool, **arguments) -> nn.Module:
        self.apply(method, **arguments)
        return self._saved(save_model)

    def _saved(self, save_model: bool) -> nn.Module:
        if save_model:
            self.save()
        return self.model

    def _record(self, method: str, options: dict, result: dict, before: int, started: float) -> None:
        self.steps.append({"method": method, "options": options, "result": result,
                           "parameters_removed": before - numel(self.model),
                           "seconds": round(time.perf_counter() - started, 3)})

    def _distill_settings(self, training_data, teacher_model, epochs, learning_rate, options):
        """Checked settings and the training windows, before any step changes the model."""
        settings = DistillSettings(training_data=training_data, teacher_model=teacher_model, epochs=epochs,
                                   learning_rate=learning_rate, **options)
        check_not_evaluation_text(training_data, self.eval_dataset, self.data_dir)
        return settings, training_windows(self.tokenizer, training_data, settings.train_seqlen, self.data_dir)

    def _distill(self, settings: DistillSettings, windows: torch.Tensor) -> None:
        if settings.teacher_model:
            teacher = load_teacher(settings, self.model)
        else:
            teacher, _ = load_model(self.path, dtype=self.dtype, device="cpu", tokenizer=False,
                                    trust_remote_code=self.trust_remote_code)
        started = time.perf_counter()
        result = distill_model(self.model, teacher, self.adapter, windows, settings, self.device, self.seed,
                               self.progress)
        self._record("distill", vars(settings), {**result, "teacher": settings.teacher_model or FIRST_MODEL},
                     numel(self.model), started)
