"""Check a GGUF file in llama.cpp against the Hugging Face model it came from, under one protocol.

Perplexity uses the very token windows of `pruning.evaluation.perplexity` (the model directory's
tokenizer, non-overlapping windows, tail dropped) and the same NLL: every shifted target of each window,
ppl = exp(total NLL / scored tokens). llama.cpp's own `llama-perplexity` scores only the second half of
each window, so its number is not comparable and is not used. Greedy generation is compared token by
token from the same prompt ids, and llama.cpp's tokenizer is compared with the Hugging Face one on a
slice of the evaluation text (a wrong pre-tokenizer shows up there, not in perplexity).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..core.zoo import GGUF_MAGIC
from ..export.gguf import ExportError, require_llama_cpp


def check_gguf_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, if it is a file that starts with the GGUF magic; checked before any work."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"GGUF file {path} does not exist")
    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ExportError(f"{path} is not a GGUF file (bad magic)")
    return path


def gguf_summary(path: str | os.PathLike) -> dict:
    """Architecture, file type, block count and per-layer lists from the file's metadata (header only: the
    token list and merges are stepped over, see zoo.read_gguf_header)."""
    import gguf

    from ..core.zoo import read_gguf_header

    fields, tensors = read_gguf_header(path, tensors=True)
    arch = fields["general.architecture"]
    file_type = fields.get("general.file_type")
    return {
        "arch": arch,
        "file_type": gguf.LlamaFileType(file_type).name if file_type is not None else None,
        "block_count": fields.get(f"{arch}.block_count"),
        "head_count": fields.get(f"{arch}.attention.head_count"),
        "head_count_kv": fields.get(f"{arch}.attention.head_count_kv"),
        "feed_forward_length": fields.get(f"{arch}.feed_forward_length"),
        "tensors": len(tensors),
        "tensor_types": _count(gguf.GGMLQuantizationType(kind).name for _, kind in tensors),
    }


def _count(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return dict(sorted(counts.items()))


def load_llama(path: str | os.PathLike, n_ctx: int, threads: int | None = None):
    """(llama_cpp.Llama with logits for every position, seconds it took to load)."""
    require_llama_cpp("loading a GGUF file")
    import llama_cpp

    threads = threads or torch.get_num_threads()
    started = time.perf_counter()
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    return llm, time.perf_counter() - started


def llama_window_nlls(llm, windows: torch.Tensor) -> list[float]:
    """Summed NLL of each of `windows` [n, seqlen] in llama.cpp, as `window_nlls` does in PyTorch: llama.cpp's
    logits are read in place and scored a few rows at a time (`window_next_token_nll`), not copied and
    log-softmaxed whole (seqlen x vocabulary floats each, 0.5 GiB for 512 tokens of a 256k vocabulary)."""
    from ..core.token_windows import window_next_token_nll

    nlls = []
    seqlen = windows.shape[1]
    for window in windows:
        llm.reset()
        llm.eval(window.tolist())
        logits = torch.from_numpy(np.asarray(llm.scores[:seqlen - 1], dtype=np.float32))
        nlls.append(window_next_token_nll(logits[None], window[None]).item())
    return nlls


def llama_windows_nll(llm, windows: torch.Tensor) -> tuple[float, int]:
    """Summed NLL and scored tokens of `windows` [n, seqlen] in llama.cpp, as `windows_nll` does in PyTorch."""
    return math.fsum(llama_window_nlls(llm, windows)), windows.shape[0] * (windows.shape[1] - 1)


def llama_greedy(llm, prompt: list[int], new_tokens: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out


@torch.no_grad()
def hf_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation by full forwards (no cache), so any model `load_model` returns works."""
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    out = []
    for _ in range(new_tokens):
        token = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
        out.append(token)
        ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
    return out


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b):
        if x != y:
            break
        count += 1
    return count


def tokenizer_agreement(llm, tokenizer, text: str, chars: int = 2000) -> dict:
    """Token ids of llama.cpp's tokenizer against the Hugging Face one on the start of `text` (leading
    whitespace dropped: llama.cpp's SentencePiece mode prefixes a space there, a known convention gap)."""
    sample = text.lstrip()[:chars]
    expected = tokenizer(sample, add_special_tokens=False)["input_ids"]
    got = llm.tokenize(sample.encode("utf-8"), add_bos=False, special=False)
    return {"chars": len(sample), "hf_tokens": len(expected), "gguf_tokens": len(got), "identical": got == expected,
            "agreeing_prefix": agreeing_prefix(expected, got)}


def evaluate_gguf(gguf_path: str | os.PathLike, model_dir: str | os.PathLike, *, dataset: str = "wikitext2",
                  split: str = "test", seqlen: int = 512, max_windows: int | None = None, data_dir=None,
                  compare_hf: bool = True, generate_tokens: int = 16, prompt_tokens: int = 32,
                  threads: int | None = None, hf_dtype: str = "float32", output=None, overwrite: bool = False) -> dict:
    """llama.cpp perplexity of `gguf_path` on the HF evaluator's windows, plus file size and load time;
    with `compare_hf`, the HF model's perplexity on the same windows and greedy-generation agreement.
    Written atomically to `output` (replacing only an earlier result of ours unless `overwrite`); every
    argument and the output are checked before anything is loaded."""
    from ..core import model_checks
    from ..core.arguments import MIN_SEQLEN, positive
    from ..core.data import check_evaluation_dataset, data_dir as resolve_data_dir, evaluation_text
    from ..core.inputs import read_paths
    from ..core.token_windows import token_windows, windows_nll
    from ..core.modeling import load_model, parameter_counts, torch_dtype
    from ..core.io import versions
    from .perplexity import windows_result
    from .provenance import Measurement

    measurement = Measurement(model_dir)
    gguf_path = check_gguf_file(gguf_path)
    positive({"seqlen": seqlen}, MIN_SEQLEN, ExportError)
    positive({"max_windows": max_windows, "prompt_tokens": prompt_tokens, "threads": threads}, error=ExportError)
    positive({"generate_tokens": generate_tokens}, minimum=0, error=ExportError)
    check_evaluation_dataset(dataset)
    resolve_data_dir(data_dir)
    torch_dtype(hf_dtype)
    path, config = model_checks.model_and_outputs(str(model_dir), [(output, "output")], overwrite=overwrite,
                                                  inputs=read_paths(files=[gguf_path], evaluation=[(dataset, split)],
                                                                    data_dir=data_dir))
    model_checks.check_lengths(path, config, {"--seqlen": seqlen})
    require_llama_cpp("gguf-eval")
    model_path = measurement.resolve(path)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    text = evaluation_text(dataset, split, data_dir)
    windows = token_windows(tokenizer, text, seqlen, max_windows)
    llm, load_seconds = load_llama(gguf_path, seqlen, threads)
    try:
        if int(windows.max()) >= llm.n_vocab():
            raise ExportError(f"tokenizer of {model_path} produces ids beyond the GGUF vocabulary ({llm.n_vocab()})")
        started = time.perf_counter()
        window_nll = llama_window_nlls(llm, windows)
        eval_seconds = time.perf_counter() - started
        prompt = windows[0, :min(prompt_tokens, seqlen - generate_tokens)].tolist() if generate_tokens else []
        gguf_generation = llama_greedy(llm, prompt, generate_tokens) if generate_tokens else []
        tokenizer_check = tokenizer_agreement(llm, tokenizer, text)
        n_threads = llm.n_threads
    finally:
        llm.close()

    result = {
        **windows_result(window_nll, windows, dataset=dataset, split=split, max_windows=max_windows),
        "gguf": {"path": str(gguf_path), "bytes": gguf_path.stat().st_size, **gguf_summary(gguf_path)},
        "load_seconds": round(load_seconds, 4),
        "eval_seconds": round(eval_seconds, 3),
        "tokenizer": str(model_path),
        "tokenizer_agreement": tokenizer_check,
        "backend": {"name": "llama.cpp", "llama_cpp_python": versions("llama_cpp_python")["llama_cpp_python"], "threads": n_threads,
                    "n_ctx": seqlen, "kv_cache_type": "f16 (llama.cpp default)"},
    }
    if compare_hf:
        model, _ = load_model(model_path, dtype=hf_dtype, device="cpu")
        hf_nll, hf_scored = windows_nll(model, windows, batch_size=1, device=torch.device("cpu"))
        hf_generation = hf_greedy(model, prompt, generate_tokens) if generate_tokens else []
        hf_ppl = math.exp(hf_nll / hf_scored)
        result["reference"] = {
            "backend": "transformers", "dtype": hf_dtype, "ppl": hf_ppl, "nll_per_token": hf_nll / hf_scored,
            "parameters": parameter_counts(model),
        }
        result["relative_difference"] = (result["ppl"] - hf_ppl) / hf_ppl
        result["generation"] = {"prompt_tokens": len(prompt), "new_tokens": generate_tokens, "hf": hf_generation,
                                "gguf": gguf_generation,
                                "agreeing_prefix": agreeing_prefix(hf_generation, gguf_generation)}
    else:
        result["generation"] = {"prompt_tokens": len(prompt), "new_tokens": generate_tokens, "gguf": gguf_generation}
    return measurement.finish(result, output)
