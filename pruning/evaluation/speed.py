"""Size and speed of a model: parameters (total, non-zero), bytes on disk, and measured prefill / decode
throughput with the Hugging Face model and, for a GGUF file, with llama.cpp (llama-cpp-python).

Timing protocol (both back ends): batch 1, a prompt of `prompt_tokens` seeded random token ids, then
`new_tokens` greedy decode steps reusing the KV cache. `warmup` untimed runs, then `repeats` timed runs;
the medians are the headline numbers, every run is kept. Prefill tokens/s = prompt_tokens / prefill time;
decode tokens/s = new_tokens / time of the decode steps.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from ..core.arguments import positive
from ..methods.sparsify import is_valid_nm
from ..core.ratios import NMPattern
from ..core.dtypes import DEFAULT_DTYPE

SEMI_STRUCTURED = NMPattern(2, 4)  # the pattern of torch's semi-structured sparse kernels
CPU_SPARSITY_NOTE = ("CPU: zeros in the weights are still multiplied by dense kernels, so unstructured and N:M "
                     "(2:4) sparsity give no speed-up here; only smaller shapes (structured pruning: heads, layers, "
                     "depth) or a smaller number format (GGUF quantization) change CPU speed.")
CUDA_DENSE_NOTE = ("CUDA: dense kernels; unstructured sparsity gives no speed-up. 2:4 models are measured again "
                   "with torch.sparse.to_sparse_semi_structured (see semi_structured_24).")


def directory_bytes(path: str | os.PathLike, pattern: str = "*.safetensors") -> dict:
    files = sorted(Path(path).glob(pattern))
    return {"total": sum(f.stat().st_size for f in files), "files": {f.name: f.stat().st_size for f in files}}


def model_size(path: str | os.PathLike, model: nn.Module | None = None, gguf: str | os.PathLike | None = None) -> dict:
    """Parameters (tied weights once) and bytes on disk: safetensors of the directory, and the GGUF file."""
    from ..core.modeling import parameter_counts

    size = {"safetensors_bytes": directory_bytes(path)}
    if model is not None:
        counts = parameter_counts(model)
        size["parameters"] = {**counts, "nonzero_fraction": counts["nonzero"] / counts["total"]}
    if gguf is not None:
        size["gguf"] = {"path": str(gguf), "bytes": Path(gguf).stat().st_size}
    return size


def prompt_ids(vocab_size: int, prompt_tokens: int, seed: int = 0) -> torch.Tensor:
    """Seeded random token ids [1, prompt_tokens]: throughput does not depend on which tokens they are."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (1, prompt_tokens), generator=generator)


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 3) for v in values]}


def _throughput(run, prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> dict:
    """The timing protocol of the module docstring around `run() -> (prefill s, decode s, greedy tokens)`."""
    for _ in range(warmup):
        run()
    prefill, decode, tokens = [], [], None
    for _ in range(repeats):
        p, d, tokens = run()
        prefill.append(p)
        decode.append(d)
    return {
        "prefill_tokens_per_s": prompt_tokens / statistics.median(prefill),
        "decode_tokens_per_s": new_tokens / statistics.median(decode),
        "prefill_seconds": _summary(prefill),
        "decode_seconds": _summary(decode),
        "greedy_tokens": tokens,
    }


def _check_settings(prompt_tokens: int, new_tokens: int, repeats: int, warmup: int) -> None:
    positive({"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats})
    positive({"warmup": warmup}, minimum=0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _hf_run(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, the greedy tokens fed to the decode steps) of one run."""
    device = ids.device
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    prefill = time.perf_counter() - start
    cache = out.past_key_values
    if cache is None:
        raise ValueError(f"{type(model).__name__} returned no KV cache: decode speed cannot be measured")
    token = out.logits[:, -1:].argmax(-1)
    tokens = []
    start = time.perf_counter()
    for _ in range(new_tokens):
        tokens.append(token)
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    _sync(device)
    decode = time.perf_counter() - start
    return prefill, decode, [int(t) for t in torch.cat(tokens, dim=1)[0]]


def measure_hf(model: nn.Module, vocab_size: int, prompt_tokens: int = 128, new_tokens: int = 32,
               repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict:
    """Prefill and decode throughput of a Hugging Face model on the device its parameters are on."""
    _check_settings(prompt_tokens, new_tokens, repeats, warmup)
    device = next(model.parameters()).device
    ids = prompt_ids(vocab_size, prompt_tokens, seed).to(device)
    return {
        "backend": "transformers",
        "device": str(device),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        **_throughput(lambda: _hf_run(model, ids, new_tokens), prompt_tokens, new_tokens, repeats, warmup),
    }


def measure_gguf(gguf: str | os.PathLike, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                 warmup: int = 1, seed: int = 0, threads: int | None = None) -> dict:
    """Prefill and decode throughput of a GGUF file in llama.cpp (CPU build of llama-cpp-python)."""
    _check_settings(prompt_tokens, new_tokens, repeats, warmup)
    try:
        import llama_cpp
    except ImportError as exc:
        return {"backend": "llama.cpp", "skipped": f"llama-cpp-python is not installed ({exc}); "
                                                   "install the 'llamacpp' extra to measure GGUF speed"}
    threads = threads or torch.get_num_threads()
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=prompt_tokens + new_tokens + 1, n_batch=prompt_tokens,
                          n_ubatch=prompt_tokens, n_threads=threads, n_threads_batch=threads, seed=seed,
                          verbose=False)
    load_seconds = time.perf_counter() - started
    ids = prompt_ids(llm.n_vocab(), prompt_tokens, seed)[0].tolist()

    def run() -> tuple[float, float, list[int]]:
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        prefill = time.perf_counter() - start
        tokens = []
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = llm.sample(top_k=1, temp=0.0)
            llm.eval([token])
            tokens.append(int(token))
        return prefill, time.perf_counter() - start, tokens

    return {
        "backend": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "device": "cpu",
        "threads": threads,
        "load_seconds": round(load_seconds, 3),
        **_throughput(run, prompt_tokens, new_tokens, repeats, warmup),
    }


def semi_structured_24(model: nn.Module) -> dict:
    """Swap the 2:4-sparse weights of the decoder layers' nn.Linear modules for
    `torch.sparse.to_sparse_semi_structured` tensors (CUDA, float16/bfloat16, compute capability >= 8.0).

    Modules that are not 2:4 sparse, or whose shapes the sparse kernels reject, stay dense and are counted.
    """
    from torch.sparse import to_sparse_semi_structured

    from ..core.adapters import get_adapter

    adapter = get_adapter(model)
    converted, dense, rejected, kernels = [], [], {}, set()
    for index in range(adapter.num_layers(model)):
        for name, module in adapter.linear_targets(model, index).items():
            if not isinstance(module, nn.Linear) or not is_valid_nm(module.weight, SEMI_STRUCTURED):
                dense.append(name)
                continue
            try:
                module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            except (RuntimeError, ValueError) as exc:  # shape/dtype/device the kernels do not take
                rejected[name] = f"{type(exc).__name__}: {exc}"
                continue
            converted.append(name)
            kernels.add(type(module.weight).__name__)
    return {"converted": len(converted), "dense": len(dense), "rejected": rejected, "kernels": sorted(kernels)}


def measure_semi_structured(model: nn.Module, vocab_size: int, dtype: torch.dtype = torch.float16,
                            **settings) -> dict:
    """Dense vs 2:4 semi-structured kernels for the same weights on CUDA, in `dtype`, measured in one process.

    The model is changed in place (cast to `dtype`, 2:4 weights swapped); the greedy tokens of both runs and the
    largest logit difference on the prompt are recorded so a wrong kernel cannot pass as a fast one.
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        raise ValueError("2:4 semi-structured kernels need a CUDA device")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return {"skipped": f"compute capability {major}.{minor} < 8.0: no 2:4 sparse tensor cores"}
    model.to(dtype)
    ids = prompt_ids(vocab_size, settings.get("prompt_tokens", 128), settings.get("seed", 0)).to(device)
    with torch.inference_mode():
        dense_logits = model(input_ids=ids, use_cache=False).logits.float()
    dense = measure_hf(model, vocab_size, **settings)
    conversion = semi_structured_24(model)
    if not conversion["converted"]:
        return {"skipped": "no decoder linear layer is 2:4 sparse", "conversion": conversion, "dense": dense}
    with torch.inference_mode():
        sparse_logits = model(input_ids=ids, use_cache=False).logits.float()
    sparse = measure_hf(model, vocab_size, **settings)
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "conversion": conversion,
        "dense": dense,
        "semi_structured": sparse,
        "prefill_speedup": sparse["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
        "decode_speedup": sparse["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
        "max_abs_logit_difference": float((sparse_logits - dense_logits).abs().max()),
        "greedy_tokens_agree": dense["greedy_tokens"] == sparse["greedy_tokens"],
    }


def count_24_linears(model: nn.Module) -> dict:
    """How many of the decoder layers' linear modules hold 2:4-sparse weights."""
    from ..core.adapters import get_adapter, weight_matrix

    adapter = get_adapter(model)
    modules = [module for index in range(adapter.num_layers(model))
               for module in adapter.linear_targets(model, index).values()]
    return {"sparse_2_4": sum(is_valid_nm(weight_matrix(m), SEMI_STRUCTURED) for m in modules), "total": len(modules)}


def speed(model: str, *, gguf: str | None = None, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
          warmup: int = 1, seed: int = 0, device: str = "auto", dtype: str = DEFAULT_DTYPE, threads: int | None = None,
          output: str | None = None, overwrite: bool = False) -> dict:
    """Size and measured speed of a model directory (and its GGUF file); written atomically to `output`
    (replacing only an earlier result of ours unless `overwrite`).

    Every argument, the output and prompt + decode length against the model's positions are checked before
    the model is loaded.
    """
    from ..core import model_checks
    from ..core.inputs import read_paths
    from .llamacpp import check_gguf_file
    from ..core.modeling import load_model, resolve_device, torch_dtype
    from .provenance import Measurement

    measurement = Measurement(model)
    _check_settings(prompt_tokens, new_tokens, repeats, warmup)
    positive({"threads": threads})
    compute = resolve_device(device)
    torch_dtype(dtype)
    gguf_path = check_gguf_file(gguf) if gguf is not None else None
    path, config = model_checks.model_and_outputs(model, [(output, "output")], overwrite=overwrite,
                                                  inputs=read_paths(files=[gguf_path]),
                                                  tokenizer=False)  # timed on random token ids
    model_checks.check_lengths(path, config, {f"--prompt-tokens {prompt_tokens} + --new-tokens {new_tokens} =":
                                        prompt_tokens + new_tokens})

    path = measurement.resolve(path)
    net, _ = load_model(path, dtype=dtype, device=str(compute), tokenizer=False)
    vocab_size = net.get_output_embeddings().weight.shape[0]
    settings = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats, warmup=warmup, seed=seed)
    size = model_size(path, net, gguf_path)
    linears_24 = count_24_linears(net)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    load_average = os.getloadavg()[0]
    try:
        hf = measure_hf(net, vocab_size, **settings)
        semi_structured = None
        if compute.type == "cuda" and linears_24["sparse_2_4"]:
            semi_structured = measure_semi_structured(net, vocab_size, **settings)
        measured_gguf = measure_gguf(gguf_path, threads=threads, **settings) if gguf_path else None
    finally:
        torch.set_num_threads(previous_threads)
    record = {
        "settings": {**settings, "batch_size": 1, "prompt": "seeded random token ids", "device": str(compute),
                     "dtype": dtype, "threads": threads},
        "load_average_1m_before": round(load_average, 2),
        "size": size,
        "decoder_linears_2_4": linears_24,
        "hf": hf,
        "semi_structured_24": semi_structured,
        "gguf": measured_gguf,
        "sparse_speedup_note": CPU_SPARSITY_NOTE if compute.type == "cpu" else CUDA_DENSE_NOTE,
    }
    return measurement.finish(record, output)
