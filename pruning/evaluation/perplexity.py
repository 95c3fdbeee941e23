"""Token-level perplexity as in the SparseGPT/Wanda papers: the text tokenized once, cut into
non-overlapping windows of `seqlen` tokens (tail dropped), NLL summed over the shifted targets,
ppl = exp(total NLL / scored tokens).

Scoring costs one model forward per batch of windows and little else: the next-token NLL is taken from the
logits a few rows at a time (`window_next_token_nll`), so no full-vocabulary log-probability tensor, float copy of
the logits or shifted copy is ever written; sums are kept in float64. `forward_throughput` times the bare
forward over the same windows, the yardstick the scoring throughput is compared with."""
from __future__ import annotations

import math
import time

import torch

from ..core.arguments import MIN_SEQLEN, positive
from ..core.data import evaluation_text
from ..core.token_windows import token_windows, window_nlls
from .per_item import WINDOWS, window_record

@torch.no_grad()
def forward_throughput(model, windows: torch.Tensor, batch_size: int = 4, device=None) -> float:
    """Tokens per second of the bare forward `model(input_ids)` over `windows` in batches of `batch_size`:
    what scoring costs at least."""
    device = device or next(model.parameters()).device
    started = time.perf_counter()
    for start in range(0, windows.shape[0], batch_size):
        model(input_ids=windows[start:start + batch_size].to(device), use_cache=False)
    return windows.numel() / (time.perf_counter() - started)


def windows_result(window_nll, windows, *, dataset: str, split: str, max_windows: int | None) -> dict:
    """Perplexity from the summed NLL of each token window, with the protocol that produced it and the
    per-window record (`pruning.evaluation.per_item`) its confidence interval and paired comparisons are
    computed from: the part every perplexity record shares, whichever runtime scored the windows
    (transformers here, llama.cpp in gguf-eval)."""
    window_nll = [float(v) for v in window_nll]
    per_window = [int(windows.shape[1]) - 1] * len(window_nll)
    nll, scored = math.fsum(window_nll), sum(per_window)
    return {"ppl": math.exp(nll / scored), "nll_per_token": nll / scored, "dataset": dataset,
            "split": split if dataset == "wikitext2" else None, "seqlen": int(windows.shape[1]),
            "windows": int(windows.shape[0]), "max_windows": max_windows, "scored_tokens": scored,
            WINDOWS: window_record(window_nll, per_window, windows.numpy())}


def perplexity(model, tokenizer, dataset: str = "wikitext2", split: str = "test", seqlen: int = 512,
               max_windows: int | None = None, batch_size: int = 4, data_dir=None) -> dict:
    """Perplexity with the protocol that produced it, and its throughput: `tokens_per_s` is windows x seqlen
    over `scoring_seconds` (forwards and NLL; reading and tokenizing the text are in `seconds` only)."""
    positive({"seqlen": seqlen}, MIN_SEQLEN)
    positive({"max_windows": max_windows, "batch_size": batch_size})
    started = time.perf_counter()
    windows = token_windows(tokenizer, evaluation_text(dataset, split, data_dir), seqlen, max_windows)
    device = next(model.parameters()).device
    scoring_started = time.perf_counter()
    nll = window_nlls(model, windows, batch_size, device)
    scoring_seconds = time.perf_counter() - scoring_started
    return {
        **windows_result(nll.tolist(), windows, dataset=dataset, split=split, max_windows=max_windows),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 3),
        "scoring_seconds": round(scoring_seconds, 3),
        "tokens_per_s": round(windows.numel() / scoring_seconds, 1),
    }
