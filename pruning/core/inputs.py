"""Inputs are what is read, not what is typed: the real paths a command will read, resolved before any work, so
that the output rule (`pruning.core.outputs`) is checked against them and not against the words on the
command line. A calibration source "c4" is the C4 file in the data directory, "wikitext2" the WikiText-2 split
there (`pruning.core.data.calibration_file` / `evaluation_file`, the same functions the loaders read through);
a model spec is its directory, a GGUF file and the folder the zoo dequantizes it into. Every command and the
pre-flight (`pruning.preflight.RunRequest.inputs`) collect their inputs here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .data import DataError, calibration_file, data_dir as resolve_data_dir, evaluation_file
from .zoo import cached_model_dir


def _data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory the loaders would read (argument, else $PRUNING_DATA_DIR); None where there is none
    or it does not exist (the pre-flight refuses that on its own)."""
    try:
        return resolve_data_dir(data_dir)
    except DataError:
        return None


def _model_paths(spec: str | os.PathLike) -> list[Path]:
    """A model spec's local paths: the directory or GGUF file it names, and the folder the zoo materializes a
    GGUF-based model in (embedded names, pypi: specs, .gguf files). A hub id's download is checked once the
    pre-flight has resolved it (`pruning.core.model_checks.model_and_outputs`)."""
    spec = str(spec)
    paths = [Path(spec).expanduser()]
    cached = cached_model_dir(spec)
    return paths + ([cached] if cached is not None else [])


def read_paths(*, models: Iterable = (), calibration: Iterable = (), evaluation: Iterable = (),
               files: Iterable = (), data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every local path a command reads, resolved, each once; paths that do not exist drop out (nothing there
    can be lost), and so do None entries (an option not given).

    `models`: model specs (directories, .gguf files, embedded names, pypi: specs, hub ids); `calibration`:
    calibration sources and the text a recovery or distillation trains on (read as calibration sources are);
    `evaluation`: evaluation datasets, each a name or file or a (dataset, split) pair (split default test);
    `files`: files and folders read as they are (a job file, a GGUF file, a folder of metric files, a task's
    documents); `data_dir`: the data directory names resolve through (default $PRUNING_DATA_DIR)."""
    root = _data_root(data_dir)
    found: list[Path | None] = []
    for spec in models:
        if spec is not None:
            found += _model_paths(spec)
    for source in calibration:
        if source is not None:
            found.append(calibration_file(str(source), root))
    for dataset in evaluation:
        if dataset is not None:
            name, split = (dataset, "test") if isinstance(dataset, (str, os.PathLike)) else dataset
            found.append(evaluation_file(str(name), split, root))
    found += [Path(path).expanduser() for path in files if path is not None]
    resolved = [path.resolve() for path in found if path is not None and path.exists()]
    return list(dict.fromkeys(resolved))
