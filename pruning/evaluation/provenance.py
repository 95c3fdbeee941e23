"""The provenance every result file ends with (prune.json, perplexity, zero-shot, speed, gguf-eval): which model
was measured, how long the whole call took, with which software at which commit; written atomically.

    measurement = Measurement(spec)        # first: the clock starts
    ...check every argument...
    path = measurement.resolve()           # the model directory, fetched if needed (so only after the checks),
                                           # and its record (zoo.json, prune.json) read
    ...load and measure...
    return measurement.finish(result, output)
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from ..core import zoo
from ..core.model_checks import model_config, read_json_object
from ..core.io import PRUNE_REPORT, RUN_ID, atomic_write_json, git_commit, peak_rss_mb, versions
from ..training.recovery_options import RECOVERY

# prune.json's keys, named once: `prune_report` writes them, the tables and the provenance below read them
METHOD, OPTIONS, CALIBRATION, SEED, PARAMETERS, RESULT, EVALUATION = (
    "method", "options", "calibration", "seed", "parameters", "result", "evaluation")
PRUNING_KEYS = (METHOD, OPTIONS, CALIBRATION, SEED, RECOVERY, RUN_ID)  # what a measured model's prune.json contributes
SELECTION_SPLIT = "selection_split"  # "test" where the documents' compat path chose on the evaluation split


def prune_report(*, method: str, options: dict, calibration: dict | None, seed: int, device, dtype: str, ignore,
                 parameters: dict, result: dict, evaluation: dict | None, prune_seconds: float,
                 recovery: dict | None = None, **more) -> dict:
    """prune.json's fields before `Measurement.finish` adds the model, time, peak memory and versions; `more`
    adds what only some runs have (memory, peak CUDA memory, a Pruner's evaluations)."""
    return {
        METHOD: method,
        OPTIONS: options,
        CALIBRATION: calibration,  # the CalibrationProtocol, None when no step calibrated
        SEED: seed,
        RUN_ID: uuid.uuid4().hex,  # tells two prunes with identical settings apart
        "device": str(device),
        "dtype": dtype,
        "ignore": list(ignore),
        PARAMETERS: parameters,
        RESULT: result,
        EVALUATION: evaluation or None,
        "prune_seconds": round(prune_seconds, 3),
        RECOVERY: recovery,
        **more,
    }


def model_record(path: Path, spec: str) -> dict:
    """The spec asked for, the directory it resolved to, its model_type, and where the directory has them its zoo
    entry (zoo.json: e.g. weights dequantized from 4 bits) and how it was pruned (its prune.json). A file that
    cannot be read is refused in one line naming it (ModelLoadError)."""
    info = {"spec": spec, "path": str(path), "model_type": model_config(path).get("model_type")}
    zoo_file = path / zoo.ZOO_RECORD
    if zoo_file.is_file():
        info["zoo"] = read_json_object(zoo_file, "zoo entry")
    prune_report = path / PRUNE_REPORT
    if prune_report.is_file():
        pruned = read_json_object(prune_report, "pruning report")
        info["pruning"] = {key: pruned.get(key) for key in PRUNING_KEYS}
    return info


class Measurement:
    """One measuring call on one model: created first, resolved once the arguments are checked, finished last."""

    def __init__(self, spec: str | os.PathLike):
        self.spec = str(spec)
        self.started = time.perf_counter()
        self.path: Path | None = None
        self.model: dict | None = None

    def resolve(self, path: str | os.PathLike | None = None) -> Path:
        """The model directory: `path` where the early checks already resolved the spec, else resolved
        (fetched if needed) now. Its record is read now too, so an unreadable zoo.json or prune.json is refused
        before the work, not after it."""
        self.path = Path(path) if path is not None else zoo.resolve(self.spec)
        self.model = model_record(self.path, self.spec)
        return self.path

    def finish(self, result: dict, output: str | os.PathLike | None = None, *, peak_rss: bool = False) -> dict:
        """`result` plus `model`, `wall_seconds` (since creation), `peak_rss_mb` if asked, `torch_threads`,
        `versions` and `git_commit`; written atomically to `output` when given. The thread count belongs to the
        protocol: float sums in another order can flip near-tie mask decisions (SparseGPT 70 % on smollm2-135m:
        PPL 590.34 on 1 thread, 633.96 on 2)."""
        import torch

        result["model"] = self.model
        result["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        if peak_rss:
            result["peak_rss_mb"] = peak_rss_mb()
        result.update(torch_threads=torch.get_num_threads(), versions=versions(), git_commit=git_commit())
        if output:
            atomic_write_json(output, result)
        return result
