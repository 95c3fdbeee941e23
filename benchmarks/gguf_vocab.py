"""Benchmark of the GGUF export on large vocabularies, against llama.cpp's own converter.

For each vocabulary size, a byte-level BPE tokenizer (Llama-3 pre-tokenizer) of that many tokens, a few
thousand of them added tokens (most special, like Llama 3's reserved tokens, some plain user-defined ones),
is built here with the `tokenizers` library (random merges, no download) and attached to a tiny random
Llama (hidden 64, 2 layers). Each tool converts the same directory to f16 in a fresh process, timed by wall
clock from process start to exit, the three taking turns, median of --repeats:

- project: `export_gguf(DIR, X.gguf, "f16")` (`python -c`), the export itself;
- project CLI: `python -m pruning convert --model DIR --outtype f16 --output X.gguf`, which first checks the
  model directory as every command does (config, safetensors headers against a weightless model);
- converter: llama.cpp's `convert_hf_to_gguf.py DIR --outtype f16 --outfile Y.gguf`, with its own gguf-py
  first on PYTHONPATH, from the llama-cpp-python sdist given by --converter (nothing of it is committed).

The converter names a byte-level BPE pre-tokenizer by hashing the ids of a test text and refuses hashes it
does not list, which a synthetic vocabulary never has; a four-line launcher lets its `get_vocab_base_pre`
run as is and, only on that refusal, answers the name the project finds in tokenizer.json ("llama-bpe").
Everything else is the converter's own code.

The tokenizer fields both files hold are then compared with gguf's GGUFReader: tokenizer.ggml.tokens,
token_type, scores (neither writes scores for a byte-level BPE) and merges.

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpp
    tar xzf /tmp/lcpp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcpp
    .venv/bin/python benchmarks/gguf_vocab.py --converter /tmp/lcpp/llama_cpp_python-0.3.36 \\
        --out results/published/benchmarks/gguf-vocab/table.md
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pruning.core.io import atomic_write_json, atomic_write_text, versions  # noqa: E402

# Llama 3's pre-tokenizer split (llama.cpp's "llama-bpe"), followed by byte-level mapping without regex.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
FIELDS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores", "tokenizer.ggml.merges")
USER_DEFINED_SHARE = 8  # one added token in 8 is a plain (not special) user-defined token

LAUNCHER = """\
import importlib, sys
script, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, script.rsplit("/", 1)[0])
sys.argv = [script, *sys.argv[3:]]
converter = importlib.import_module("convert_hf_to_gguf")
text_model = getattr(converter, "TextModel", None) or importlib.import_module("conversion.base").TextModel
recognise = text_model.get_vocab_base_pre
def named(self, tokenizer):
    try:
        return recognise(self, tokenizer)
    except NotImplementedError:  # a hash it does not list: the synthetic vocabulary's
        return pre
text_model.get_vocab_base_pre = named
converter.main()
"""


def synthetic_tokenizer(vocab_size: int, added: int, seed: int = 0):
    """A byte-level BPE PreTrainedTokenizerFast of `vocab_size` tokens, the last `added` of them added tokens
    (one in USER_DEFINED_SHARE plain, the rest special); merges join random earlier tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = vocab_size - added
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if base < len(alphabet) or added < 2:
        raise ValueError(f"{vocab_size} tokens with {added} added leave too few for the {len(alphabet)}-byte alphabet")
    rng = random.Random(seed)
    tokens = list(alphabet)
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = []
    while len(tokens) < base:
        left, right = tokens[rng.randrange(len(tokens))], tokens[rng.randrange(min(len(tokens), 4096))]
        if len(left) + len(right) > 16 or left + right in vocab:
            continue
        vocab[left + right] = len(tokens)
        tokens.append(left + right)
        merges.append((left, right))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens([AddedToken(f"<extra_{i}>", special=False, normalized=False)
                          if i % USER_DEFINED_SHARE == USER_DEFINED_SHARE - 1 else
                          AddedToken(f"<|reserved_special_token_{i}|>", special=True, normalized=False)
                          for i in range(added)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|reserved_special_token_0|>",
                                   eos_token="<|reserved_special_token_1|>")


def tiny_llama(folder: Path, tokenizer) -> None:
    """The tokenizer and a random 2-layer Llama of hidden size 64 over its vocabulary, saved in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def find_converter(path: str) -> Path:
    """convert_hf_to_gguf.py from the sdist folder, its vendor/llama.cpp, or the script itself."""
    given = Path(path).expanduser()
    for candidate in (given, given / "convert_hf_to_gguf.py", given / "vendor" / "llama.cpp" / "convert_hf_to_gguf.py"):
        if (candidate.is_file() and candidate.name == "convert_hf_to_gguf.py"
                and (candidate.parent / "gguf-py").is_dir()):
            return candidate.resolve()
    raise FileNotFoundError(f"no llama.cpp converter at {given} (want the unpacked llama-cpp-python sdist, its "
                            "vendor/llama.cpp, or convert_hf_to_gguf.py beside gguf-py; get it with: pip download "
                            "--no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcpp)")


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{command[1:4]} failed ({result.returncode}):\n{tail}")
    return seconds


def read_fields(path: Path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {name: reader.fields[name].contents() if name in reader.fields else None for name in FIELDS}


def compare(ours: dict, theirs: dict) -> dict:
    """Per field: identical, or how many entries differ and the first three (index, project, converter)."""
    report = {}
    for name in FIELDS:
        a, b = ours[name], theirs[name]
        if a == b:
            report[name] = {"identical": True, "entries": None if a is None else len(a)}
            continue
        if a is None or b is None or len(a) != len(b):
            report[name] = {"identical": False, "project_entries": None if a is None else len(a),
                            "converter_entries": None if b is None else len(b)}
            continue
        differing = [index for index, (x, y) in enumerate(zip(a, b)) if x != y]
        report[name] = {"identical": False, "differing": len(differing),
                        "first": [(index, a[index], b[index]) for index in differing[:3]]}
    return report


PROJECT_EXPORT = ("import sys; from pruning.export import export_gguf; "
                  "export_gguf(sys.argv[1], sys.argv[2], 'f16', overwrite=True)")


def run_size(vocab_size: int, added: int, converter: Path, work: Path, repeats: int) -> dict:
    from pruning.export.gguf_vocab import describe_vocabulary

    folder = work / f"llama-{vocab_size}"
    tiny_llama(folder, synthetic_tokenizer(vocab_size, added))
    pre = describe_vocabulary(folder)["pre"]
    ours, cli, theirs = (work / f"{name}-{vocab_size}.gguf" for name in ("project", "project-cli", "converter"))
    project_env = dict(os.environ, PYTHONPATH=str(REPO))
    commands = {
        "project": ([sys.executable, "-c", PROJECT_EXPORT, str(folder), str(ours)], project_env),
        "project_cli": ([sys.executable, "-m", "pruning", "convert", "--model", str(folder), "--outtype", "f16",
                         "--output", str(cli), "--overwrite"], project_env),
        "converter": ([sys.executable, "-c", LAUNCHER, str(converter), pre, str(folder), "--outtype", "f16",
                       "--outfile", str(theirs)], dict(os.environ, PYTHONPATH=str(converter.parent / "gguf-py"))),
    }
    runs = {name: [] for name in commands}
    for _ in range(repeats):  # taking turns, so all see the same machine load
        for name, (command, env) in commands.items():
            runs[name].append(timed(command, env))
    if ours.read_bytes() != cli.read_bytes():
        raise RuntimeError("export_gguf and `python -m pruning convert` wrote different files")
    fields = compare(read_fields(ours), read_fields(theirs))
    seconds = {name: statistics.median(times) for name, times in runs.items()}
    return {"vocab_size": vocab_size, "added_tokens": added, "special_added": added - added // USER_DEFINED_SHARE,
            "merges": vocab_size - added - 256, "pre_tokenizer": pre,
            "project_seconds": seconds["project"], "project_cli_seconds": seconds["project_cli"],
            "converter_seconds": seconds["converter"], "ratio": seconds["project"] / seconds["converter"],
            "cli_ratio": seconds["project_cli"] / seconds["converter"], "runs": runs,
            "fields_identical": all(field["identical"] for field in fields.values()), "fields": fields,
            "project_bytes": ours.stat().st_size, "converter_bytes": theirs.stat().st_size}


def spread(values: list[float]) -> str:
    """Median and range of the repeats: `3.90 (3.76–4.05)`."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def paired_ratios(row: dict, name: str) -> list[float]:
    """`name`'s time over the converter's, round by round: the commands take turns, so each round's pair saw
    the same machine load."""
    return [ours / theirs for ours, theirs in zip(row["runs"][name], row["runs"]["converter"])]


def markdown(rows: list[dict], settings: dict) -> str:
    lines = [f"### GGUF export vs llama.cpp's convert_hf_to_gguf.py on large vocabularies "
             f"(f16, tiny Llama, {settings['repeats']} rounds taking turns, {settings['cpus']} CPUs)", "",
             "| vocabulary | added tokens | project s | converter s | ratio | project CLI s | CLI ratio | "
             "fields identical |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        identical = "yes" if row["fields_identical"] else "no: " + ", ".join(
            name.rsplit(".", 1)[1] for name, field in row["fields"].items() if not field["identical"])
        runs = row["runs"]
        lines.append(f"| {row['vocab_size']:,} | {row['added_tokens']:,} | {spread(runs['project'])} | "
                     f"{spread(runs['converter'])} | {spread(paired_ratios(row, 'project'))} | "
                     f"{spread(runs['project_cli'])} | {spread(paired_ratios(row, 'project_cli'))} | {identical} |")
    lines += ["", "Seconds from process start to exit, median of the rounds with their range in brackets (min–max; "
              f"{settings['repeats']} rounds are too few for a standard error). Ratios are paired: each round's time "
              "over the converter's in the same round, median and range. project: `export_gguf` in a fresh "
              "`python -c`; project CLI: `python -m pruning convert` (the same file, after the CLI's model-directory "
              f"checks); converter: llama.cpp `convert_hf_to_gguf.py` from {settings['converter']}. Fields compared: "
              + ", ".join(FIELDS) + " (neither file has scores for a byte-level BPE). How sure: no cell shows ± "
              "because its spread is the bracketed range over the rounds, taken on a machine shared with other jobs; "
              "a ratio whose range stays below (or above) 1.0 held in every round. \"Fields identical\" is an exact "
              "comparison of the two files, not a measurement, so it has no uncertainty."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--converter", required=True,
                        help="unpacked llama-cpp-python sdist (or its vendor/llama.cpp, or convert_hf_to_gguf.py)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32768, 131072, 262144], help="vocabulary sizes")
    parser.add_argument("--added", type=int, nargs="+", default=[2048, 4096, 6384],
                        help="added tokens per size (one value: the same for every size)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None,
                        help="keep the models and GGUF files here (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="also write the Markdown table here (and the rows as .json)")
    args = parser.parse_args()
    try:
        converter = find_converter(args.converter)
    except FileNotFoundError as exc:
        parser.exit(2, f"error: {exc}\n")
    if len(args.added) not in (1, len(args.sizes)):
        parser.error("--added takes one value or one per --sizes value")
    added = args.added * len(args.sizes) if len(args.added) == 1 else args.added

    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-vocab-") as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        for vocab_size, count in zip(args.sizes, added):
            rows.append(run_size(vocab_size, count, converter, work, args.repeats))
            print(f"{vocab_size}: project {rows[-1]['project_seconds']:.2f} s, converter "
                  f"{rows[-1]['converter_seconds']:.2f} s", file=sys.stderr)
    sdist = next((p.name for p in converter.parents if p.name.startswith("llama_cpp_python-")), str(converter))
    settings = {"repeats": args.repeats, "cpus": os.cpu_count(), "converter": sdist,
                "python": platform.python_version(), "load_average_before": load_before,
                "load_average_after": os.getloadavg()}
    table = markdown(rows, settings)
    print(table)
    if args.out:
        atomic_write_text(args.out, table)
        atomic_write_json(Path(args.out).with_suffix(".json"), {
            "settings": settings, "rows": rows, "versions": versions("transformers", "tokenizers", "gguf", "torch")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
