"""Calibration and evaluation text: from the Hugging Face hub when online, from a local data directory
(with the layout of the project's `shared/data`) when one is configured.

The local directory is taken from the `data_dir` argument or the `PRUNING_DATA_DIR` environment
variable. Calibration never reads an evaluation split: asking for it is an error, with one exception the
caller must ask for by name: `selection_on_test`, for the documents that choose their layers on WikiText-2
test (PruneGPT's example config, Quark's tutorial), which then calibrates on SELECTION_ON_TEST.
"""
from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .arguments import MIN_SEQLEN, positive

if TYPE_CHECKING:
    import torch

DATA_DIR_ENV = "PRUNING_DATA_DIR"
C4_HUB = ("allenai/c4", "en/c4-train.00000-of-01024.json.gz")
C4_LOCAL = "c4/c4-train.00000-of-01024.first1000.jsonl"
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
WIKITEXT_LOCAL = {"test": "wikitext-2-raw-v1/wiki.test.raw", "validation": "wikitext-2-raw-v1/wiki.valid.raw"}
CALIBRATION_SOURCES = ("c4", "wikitext2-train", "wikitext2-validation")
SELECTION_ON_TEST = "wikitext2-test"  # the evaluation split, as a calibration source only with selection_on_test
EVALUATION_DATASETS = ("wikitext2",)


class DataError(ValueError):
    """Data that cannot be found or read; the message says what was looked for."""


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    chosen = explicit or os.environ.get(DATA_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist (from {'argument' if explicit else DATA_DIR_ENV})")
    return path


def calibration_file(source: str, root: Path | None) -> Path | None:
    """The local file calibration `source` is read from: its place in the data directory `root` (c4,
    wikitext2-SPLIT), or the file it names; None where it comes from the hub (or the layout has no such file).
    The loaders read through it, and so does the output rule's list of inputs (pruning.core.inputs)."""
    if source == "c4":
        return root / C4_LOCAL if root else None
    if source.startswith("wikitext2-"):
        relative = WIKITEXT_LOCAL.get(source.split("-", 1)[1])
        return root / relative if root and relative else None
    return Path(source).expanduser()


def evaluation_file(dataset: str, split: str, root: Path | None) -> Path | None:
    """The local file evaluation `dataset` is read from: WikiText-2's `split` in the data directory `root`, or
    the file it names; None where it comes from the hub (or the split is unknown)."""
    if dataset == "wikitext2":
        return root / WIKITEXT_LOCAL[split] if root and split in WIKITEXT_LOCAL else None
    return Path(dataset).expanduser()


def _in_layout(path: Path, root: Path) -> Path:
    """`path`, a file of the data directory `root`'s layout, which must be there."""
    if not path.is_file():
        raise DataError(f"{path} not found: the data directory must have the layout of shared/data "
                        f"({path.relative_to(root)})")
    return path


def _hub_error(what: str, exc: Exception) -> DataError:
    return DataError(
        f"could not load {what} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
        f"Offline, point {DATA_DIR_ENV} (or --data-dir) at a directory with the layout of shared/data."
    )


def jsonl_records(path: Path, handle, fields: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, object) of every non-blank line, each holding `fields`; an error names the file and its
    real line number."""
    records = []
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        missing = [name for name in fields if not isinstance(record, dict) or name not in record]
        if missing:
            raise DataError(f"{path}:{number}: no {', '.join(map(repr, missing))} field (each line must be a JSON "
                            f"object with {', '.join(map(repr, fields))})")
        records.append((number, record))
    return records


def _jsonl_documents(path: Path, handle) -> list[str]:
    """The 'text' string of every non-blank line."""
    docs = []
    for number, record in jsonl_records(path, handle, ("text",)):
        if not isinstance(record["text"], str):
            raise DataError(f"{path}:{number}: 'text' is {type(record['text']).__name__}, not a string")
        docs.append(record["text"])
    return docs


def _read_documents(path: Path) -> list[str]:
    """Text of a local .txt (blank-line separated documents), .jsonl or .json.gz (field 'text') file."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        if path.suffix in (".jsonl", ".gz"):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as handle:
                docs = _jsonl_documents(path, handle)
        else:
            text = path.read_text(encoding="utf-8")
            docs = [d for d in text.split("\n\n") if d.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {type(exc).__name__}: {exc}") from None
    if not docs:
        raise DataError(f"data file {path} holds no text")
    return docs


def check_calibration_source(source: str, selection_on_test: bool = False) -> None:
    """Reject an unknown or forbidden calibration source before any model is loaded. `selection_on_test` is the
    documents' compatibility path: the source must then be SELECTION_ON_TEST, which is refused otherwise."""
    if selection_on_test:
        if source != SELECTION_ON_TEST:
            raise DataError(f"selection on the test split calibrates on {SELECTION_ON_TEST}, not {source!r}")
        return
    if source in CALIBRATION_SOURCES:
        return
    if source in ("wikitext2", SELECTION_ON_TEST):
        raise DataError("calibration must not use the evaluation split; use wikitext2-train or wikitext2-validation")
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"unknown calibration source {source!r}: use one of {', '.join(CALIBRATION_SOURCES)} "
            "or a readable .txt/.jsonl file"
        )
    _read_documents(path)  # a local text file is small: read it all now rather than fail after loading the model


def calibration_is_local(source: str, data_root: str | os.PathLike | None = None) -> bool:
    """Whether `calibration_documents` reads local files (a file source, or a named one with a data directory)
    rather than the hub."""
    return source not in CALIBRATION_SOURCES or data_dir(data_root) is not None


def calibration_documents(source: str, data_root: str | os.PathLike | None = None,
                          selection_on_test: bool = False) -> list[str]:
    check_calibration_source(source, selection_on_test)
    root = data_dir(data_root)
    if root and source == "wikitext2-train":
        raise DataError(f"no WikiText-2 train split in the local data directory {root}; use wikitext2-validation or c4")
    path = calibration_file(source, root)
    if source == "c4":
        if path:
            return _read_documents(_in_layout(path, root))
        try:
            from datasets import load_dataset

            ds = load_dataset("json", data_files=f"hf://datasets/{C4_HUB[0]}/{C4_HUB[1]}", split="train")
            return list(ds["text"])
        except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
            raise _hub_error("C4 calibration data", exc) from None
    if source.startswith("wikitext2-"):
        text = _wikitext_rows(_in_layout(path, root)) if path else _wikitext_hub(source.split("-", 1)[1])
        return [d for d in text.split("\n\n") if d.strip()]
    return _read_documents(path)


@dataclass(frozen=True)
class CalibrationProtocol:
    source: str
    nsamples: int
    seqlen: int
    seed: int
    windows_from_concatenation: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def calibration_windows(tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 0,
                        data_root=None, selection_on_test: bool = False) -> tuple[torch.Tensor, CalibrationProtocol]:
    """`nsamples` windows of `seqlen` tokens, seeded, as in the Wanda/SparseGPT loaders.

    Documents are visited in a seeded random order and a random window is cut from each one longer
    than `seqlen`. If too few documents are that long, the remaining windows are cut from all
    documents concatenated, so the loop always ends.
    """
    import torch  # here, not at the top: the workflow's config check imports this module

    positive({"nsamples": nsamples}, error=DataError)
    positive({"seqlen": seqlen}, MIN_SEQLEN, DataError)
    docs = calibration_documents(source, data_root, selection_on_test)
    rng = random.Random(seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    windows: list[list[int]] = []
    for index in order:
        if len(windows) == nsamples:
            break
        # verbose=False: a document longer than the model's positions is cut into windows, no warning needed
        ids = tokenizer(docs[index], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > seqlen:
            start = rng.randint(0, len(ids) - seqlen - 1)
            windows.append(ids[start:start + seqlen])
    from_stream = nsamples - len(windows)
    if from_stream:
        stream = _token_stream(tokenizer, docs)
        if len(stream) <= seqlen:
            raise _too_short(source, len(stream), seqlen)
        for _ in range(from_stream):
            start = rng.randint(0, len(stream) - seqlen - 1)
            windows.append(stream[start:start + seqlen])
    protocol = CalibrationProtocol(source, nsamples, seqlen, seed, from_stream)
    return torch.tensor(windows, dtype=torch.long), protocol


def _token_stream(tokenizer, documents: list[str]) -> list[int]:
    """The documents as one token stream, as windows are cut from it when too few documents are long enough."""
    separator = tokenizer.eos_token or "\n\n"
    return tokenizer(separator.join(documents), add_special_tokens=False, verbose=False)["input_ids"]


def _too_short(source: str, tokens: int, seqlen: int) -> DataError:
    return DataError(f"calibration source {source!r} has only {tokens} tokens, fewer than seqlen={seqlen}")


def check_calibration_length(tokenizer, documents: list[str], source: str, seqlen: int) -> None:
    """Refuse calibration documents too short for one window of `seqlen` tokens: `calibration_windows`' own
    refusal, made before any model is loaded. The stream is tokenized in growing prefixes (1, 2, 4, ...
    documents) until one holds more than `seqlen` tokens, so a long source costs a few documents' worth."""
    end = 1
    while True:
        tokens = len(_token_stream(tokenizer, documents[:end]))
        if tokens > seqlen:
            return
        if end >= len(documents):
            raise _too_short(source, tokens, seqlen)
        end *= 2


class CalibrationCache:
    """The calibration windows of one prune, cut at the first method that asks and shared after (a chain of
    steps, a composite's stages); `protocol` is None until then, so a run without calibration records none."""

    def __init__(self, tokenizer, source: str, nsamples: int, seqlen: int, seed: int = 0, data_root=None,
                 selection_on_test: bool = False):
        self._arguments = (tokenizer, source, nsamples, seqlen, seed, data_root, selection_on_test)
        self._windows = None
        self.protocol: dict | None = None

    def __call__(self):
        """(windows, protocol) as `calibration_windows` gives them, the protocol as a dict."""
        if self._windows is None:
            self._windows, protocol = calibration_windows(*self._arguments)
            self.protocol = protocol.as_dict()
        return self._windows, self.protocol


def _wikitext_rows(path: Path) -> str:
    raw = path.read_text(encoding="utf-8")
    rows = [line if line.strip() else "" for line in raw.splitlines(True)]
    return "\n\n".join(rows)


def _wikitext_hub(split: str) -> str:
    try:
        from datasets import load_dataset

        return "\n\n".join(load_dataset(*WIKITEXT_HUB, split=split)["text"])
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(f"WikiText-2 {split}", exc) from None


def evaluation_text(dataset: str, split: str = "test", data_root=None) -> str:
    """The evaluation text as the papers build it: WikiText-2 rows joined with blank lines.

    `dataset` is 'wikitext2' or a path to a local .txt/.jsonl file (documents joined with blank lines).
    """
    if dataset == "wikitext2":
        if split not in WIKITEXT_LOCAL:
            raise DataError(f"WikiText-2 evaluation split must be one of {sorted(WIKITEXT_LOCAL)}, got {split!r}")
        root = data_dir(data_root)
        return _wikitext_rows(_in_layout(evaluation_file(dataset, split, root), root)) if root else _wikitext_hub(split)
    path = evaluation_file(dataset, split, None)
    if not path.is_file():
        raise DataError(f"unknown evaluation dataset {dataset!r}: use one of {EVALUATION_DATASETS} or a local text file")
    return "\n\n".join(_read_documents(path))


def check_evaluation_dataset(dataset: str) -> None:
    if dataset in EVALUATION_DATASETS:
        return
    if not Path(dataset).is_file():
        raise DataError(f"unknown evaluation dataset {dataset!r}: use one of {EVALUATION_DATASETS} or a local text file")
    _read_documents(Path(dataset))
