"""What a model directory must hold before its weights are loaded: a readable config.json, safetensors whose
headers fit it (no pickled tensors: they can run code), no code of its own unless the user opted in (an
`auto_map` naming Python files in the folder, as deepseek-moe's), usable tokenizer files, and token lengths within
its positions. They read at most config.json, tokenizer_config.json, the headers and the tokenizer's file names
(the shapes come from the model built without weights), so a bad model is refused in a second instead of after
hours of work, in one line naming the file."""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import pickle
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from .arguments import MIN_SEQLEN, count_problem
from .dtypes import SAFETENSORS_BYTES
from .io import OutputError
from .inputs import read_paths
from .outputs import output_file

TOKENIZER_JSON = "tokenizer.json"  # the tokenizers library's serialization: a tokenizer needs nothing else
GENERIC_VOCABULARY = "tokenizer.model"  # what transformers' generic tokenizer class converts without tokenizer.json
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_MAX_SAFETENSORS_HEADER = 100 * 2**20


class ModelLoadError(ValueError):
    """A model directory that cannot be read as it is (config, weights, structure)."""


def read_json_file(path: Path, what: str = "JSON file", error: type[Exception] = ModelLoadError):
    """Parsed JSON; a read or syntax error (raised as `error`) names the file and the line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from None


def read_json_object(path: Path, what: str = "JSON file", error: type[Exception] = ModelLoadError) -> dict:
    """`read_json_file` of a file that must hold one JSON object."""
    data = read_json_file(path, what, error)
    if not isinstance(data, dict):
        raise error(f"{path}: not a JSON object")
    return data


def model_config(path: str | os.PathLike) -> dict:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model directory")
    return read_json_object(config_file, "config")


REMOTE_CODE_OPT_IN = "--trust-remote-code (API: trust_remote_code=True; workflow: trust_remote_code: true)"


def remote_code(path: str | os.PathLike | None, config: dict) -> tuple[str, str] | None:
    """(file, class) of the first code a model maps to outside transformers: config.json's `auto_map`, else
    tokenizer_config.json's (read when `path` is given); None for a model transformers runs itself."""
    maps = [("config.json", config.get("auto_map"))]
    tokenizer_config = Path(path) / "tokenizer_config.json" if path is not None else None
    if tokenizer_config is not None and tokenizer_config.is_file():
        maps.append(("tokenizer_config.json", read_json_object(tokenizer_config, "tokenizer config").get("auto_map")))
    for name, auto_map in maps:
        if isinstance(auto_map, dict) and auto_map:
            first = next(iter(auto_map.values()))
            return name, " / ".join(map(str, first)) if isinstance(first, (list, tuple)) else str(first)
        if auto_map:
            return name, str(auto_map)
    return None


def remote_code_problem(label, path: str | os.PathLike | None, config: dict, trust_remote_code: bool,
                        opt_in: str = REMOTE_CODE_OPT_IN) -> str | None:
    """Why a model whose files name code of its own may not load without the opt-in (the code would run in
    this process; `opt_in` says how to give it), or None."""
    found = None if trust_remote_code else remote_code(path, config)
    if found is None:
        return None
    name, target = found
    return (f"{label}: {name} maps to code in the model folder (auto_map: {target}), which runs only with "
            f"{opt_in}; read that code first")


def model_positions(config: dict) -> tuple[str, int] | None:
    """(key, value) of the largest sequence the model's position encoding was built for, if it declares one."""
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def length_problems(model: str | os.PathLike, config: dict, lengths: dict[str, int | None]) -> list[str]:
    """What is wrong with each token length ({"--seqlen": 2048, ...}; None: not used): fewer than MIN_SEQLEN
    tokens, or more than the positions `config` declares for `model` (a path, or the name the message gives)."""
    positions = model_positions(config)
    problems = []
    for label, value in lengths.items():
        if value is None:
            continue
        problem = count_problem(label, value, MIN_SEQLEN)
        if problem is None and positions is not None and value > positions[1]:
            problem = (f"{label} {value} exceeds the {positions[1]} positions of the model {model} "
                       f"({positions[0]} in config.json)")
        if problem:
            problems.append(problem)
    return problems


def check_lengths(path: str | os.PathLike, config: dict, lengths: dict[str, int | None]) -> None:
    """Refuse the first of `length_problems`, before any model is loaded."""
    problems = length_problems(path, config, lengths)
    if problems:
        raise ValueError(problems[0])


def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, checked against the file's size (truncated or foreign files)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelLoadError(f"{path}: {size} bytes, too short for a safetensors header (truncated?)")
        length = int.from_bytes(prefix, "little")
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise ModelLoadError(f"{path}: not a valid safetensors file (header length {length} does not fit "
                                 f"its {size} bytes; truncated or another format)")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        raise ModelLoadError(f"{path}: not a valid safetensors file (its header is not JSON)") from None
    data = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= dim
            expected = count * SAFETENSORS_BYTES.get(info["dtype"], 0)
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{path}: not a valid safetensors file (bad entry for {name})") from None
        if end > data:
            raise ModelLoadError(f"{path}: truncated: tensor {name} ends at byte {end} of {data} data bytes")
        if info["dtype"] in SAFETENSORS_BYTES and end - begin != expected:
            raise ModelLoadError(f"{path}: corrupt: tensor {name} has {end - begin} bytes for shape {info['shape']}")
    return header


def _unpickle_refused(files: str, exc: pickle.UnpicklingError) -> ModelLoadError:
    """torch.load(weights_only=True) refused a pickle: the global it would have had to import, in one line."""
    reason = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "not plain tensors")
    return ModelLoadError(f"{files}: refused to unpickle ({reason}); only safetensors or plain-tensor checkpoints "
                          "are loaded")


def pickled_tensors(path: Path) -> None:
    """A pickled checkpoint holds only what torch.load(weights_only=True) accepts; tensors are memory-mapped,
    not read."""
    import torch

    try:
        torch.load(path, weights_only=True, mmap=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise _unpickle_refused(str(path), exc) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint ({' '.join(str(exc).split())})") from None


def weightless_model(config: dict):
    """The model config.json describes, built on the meta device (shapes, no weights: a fraction of a second
    and no memory), or None where this transformers cannot build it (unknown or remote-code architecture,
    quantized checkpoints whose packed tensors keep the names with other shapes). Built once per config in a
    process; callers only read it."""
    if config.get("quantization_config"):
        return None
    return _weightless_model(json.dumps(config, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _weightless_model(config_json: str):
    from . import heterogeneous  # noqa: F401  (registers the format, so its layer shapes are built too)

    try:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        config = json.loads(config_json)
        loaded = CONFIG_MAPPING[config["model_type"]].from_dict(config)
        with init_empty_weights(include_buffers=False):
            return AutoModelForCausalLM.from_config(loaded[0] if isinstance(loaded, tuple) else loaded)
    except Exception:  # noqa: BLE001 - an unknown architecture is reported by the real load
        return None


def _expected_shapes(config: dict) -> dict[str, list[int]] | None:
    """Parameter shapes the config implies, from the weightless model; None where we cannot tell."""
    model = weightless_model(config)
    return None if model is None else {name: list(tensor.shape) for name, tensor in model.state_dict().items()}


def tokenizer_files(path: Path, config: dict) -> None:
    """Refuse a model directory transformers cannot build a tokenizer from: it needs tokenizer.json (the
    tokenizers library's file, enough alone) or the vocabulary files its tokenizer class reads
    (tokenizer_config.json's tokenizer_class, else the model type's; tokenizer.model for the generic class)
    and the packages that read those (a tokenizer.model: sentencepiece and protobuf, or tiktoken). Without
    them transformers builds an empty tokenizer (every text 0 tokens) or fails after the weights loaded, with
    its own message."""
    if (path / TOKENIZER_JSON).is_file():
        return
    settings = path / "tokenizer_config.json"
    named = read_json_object(settings, "tokenizer config").get("tokenizer_class") if settings.is_file() else None
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    from .heterogeneous import base_model_type

    named = named or TOKENIZER_MAPPING_NAMES.get(base_model_type(config))
    try:
        reads = dict(getattr(tokenizer_class_from_name(named), "vocab_files_names", None) or {}) if named else {}
    except Exception:  # noqa: BLE001 - a class this transformers cannot import: the generic one's files
        reads = {}
    files = [name for key, name in reads.items() if key != "tokenizer_file"] or [GENERIC_VOCABULARY]
    who = f"what {named} reads" if named else "what transformers' generic tokenizer reads"
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        partly = f"; {' and '.join(missing)} missing" if missing != files else ""
        raise ModelLoadError(f"{path}: no usable tokenizer: neither {TOKENIZER_JSON} nor {' + '.join(files)} "
                             f"({who} without {TOKENIZER_JSON}{partly}); copy the tokenizer files of the model it "
                             "was made from")
    for name in files:
        missing = [package for module, package in _reader_packages(path / name) if not _importable(module)]
        if missing:
            raise ModelLoadError(f"{path}: its tokenizer is {name} without {TOKENIZER_JSON}, which transformers reads "
                                 f"only with {' and '.join(missing)} installed (pip install {' '.join(missing)}); "
                                 f"or copy in the {TOKENIZER_JSON} of the model it was made from")


def _reader_packages(vocabulary: Path) -> tuple[tuple[str, str], ...]:
    """(module, pip name) of the packages transformers needs to read a vocabulary file: a `.model` is tiktoken's
    text ("<base64 token> <rank>" lines) or else a sentencepiece protobuf; other files need none."""
    if vocabulary.suffix != ".model":
        return ()
    with open(vocabulary, "rb") as handle:
        if re.match(rb"[A-Za-z0-9+/=]+ \d+\r?\n", handle.read(256)):
            return (("tiktoken", "tiktoken"),)
    return ("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def model_files(path: str | os.PathLike, tokenizer: bool = True, trust_remote_code: bool = False) -> dict:
    """config.json readable, no code of the model's own without `trust_remote_code`, every safetensors header
    sound and its shapes those the config implies, and (`tokenizer`, for every command but those that only time
    or size the model) usable tokenizer files.

    Returns the config. Weights are not read, only headers (kilobytes)."""
    path = Path(path)
    config = model_config(path)
    problem = remote_code_problem(path, path, config, trust_remote_code)
    if problem:
        raise ModelLoadError(problem)
    headers = {file: safetensors_header(file) for file in sorted(path.glob("*.safetensors"))}
    if not headers:
        for file in sorted(path.glob("*.bin")):
            pickled_tensors(file)
    expected = _expected_shapes(config) if headers else None
    if expected:
        for file, header in headers.items():
            wrong = [(name, info["shape"], expected[name]) for name, info in header.items()
                     if name in expected and list(info["shape"]) != expected[name]]
            if wrong:
                name, found, wanted = wrong[0]
                more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
                raise ModelLoadError(f"{file}: tensor {name} has shape {found} but {path / 'config.json'} implies "
                                     f"{wanted}{more}: the config and the weights disagree")
    if tokenizer:
        tokenizer_files(path, config)
    return config


@contextmanager
def model_read_errors(path: str | os.PathLike):
    """Turn what the loaders raise for unreadable weights into one line naming the file (the checks in
    `model_files` catch most of it earlier; this covers pickles and what headers cannot show)."""
    from safetensors import SafetensorError

    path = Path(path)
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise _unpickle_refused(", ".join(str(f) for f in sorted(path.glob("*.bin"))) or str(path), exc) from None
    except SafetensorError as exc:
        raise ModelLoadError(f"{path}: unreadable safetensors weights ({exc})") from None
    except RuntimeError as exc:
        if "mismatch" not in str(exc):
            raise
        raise ModelLoadError(f"{path}: the weights do not fit config.json (shape mismatch)") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the model ({exc})") from None


def local_model(spec: str) -> Path:
    """The local directory of a model spec, resolved through the zoo (a fetch for hub ids and embedded models)."""
    from . import zoo

    zoo.check_spec(spec)
    return zoo.resolve(spec)


def model_and_outputs(model: str, outputs=(), *, overwrite: bool = False, inputs=(), tokenizer: bool = True,
                      trust_remote_code: bool = False) -> tuple[Path, dict]:
    """Output files [(path or None, what), ...] checked against the model's paths and every other input (`inputs`:
    what `pruning.core.inputs.read_paths` resolved), then the model resolved and its files checked (`model_files`);
    (model directory, config). Outputs are checked before a hub or embedded model is fetched, and once more
    against the resolved directory."""
    outputs = [(path, what) for path, what in outputs if path is not None]
    if len({Path(path).expanduser().resolve() for path, _ in outputs}) < len(outputs):
        raise OutputError(f"{' and '.join(what for _, what in outputs)} name the same file")
    for path, what in outputs:
        output_file(path, overwrite=overwrite, inputs=[*read_paths(models=[model]), *inputs], what=what)
    directory = local_model(model)
    for path, what in outputs:
        output_file(path, overwrite=overwrite, inputs=read_paths(models=[directory]), what=what)
    return directory, model_files(directory, tokenizer, trust_remote_code)
