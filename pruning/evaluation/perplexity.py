"""Token-level perplexity as in the SparseGPT/Wanda papers: the text tokenized once, cut into
non-overlapping windows of `seqlen` tokens (tail dropped), NLL summed over the shifted targets,
ppl = exp(total NLL / scored tokens)."""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..checks import MIN_SEQLEN, positive
from ..data import evaluation_text


def token_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: count * seqlen].reshape(count, seqlen)


@torch.no_grad()
def windows_nll(model, windows: torch.Tensor, batch_size: int = 4, device=None) -> tuple[float, int]:
    """Summed NLL (float64) and scored token count over `windows` [n, seqlen]."""
    device = device or next(model.parameters()).device
    total, scored = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1, :].float()
        targets = batch[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        scored += targets.numel()
    return total, scored


def perplexity(model, tokenizer, dataset: str = "wikitext2", split: str = "test", seqlen: int = 512,
               max_windows: int | None = None, batch_size: int = 4, data_dir=None) -> dict:
    """Perplexity with the protocol that produced it."""
    positive({"seqlen": seqlen}, MIN_SEQLEN)
    positive({"max_windows": max_windows, "batch_size": batch_size})
    started = time.perf_counter()
    windows = token_windows(tokenizer, evaluation_text(dataset, split, data_dir), seqlen, max_windows)
    device = next(model.parameters()).device
    nll, scored = windows_nll(model, windows, batch_size, device)
    return {
        "ppl": math.exp(nll / scored),
        "nll_per_token": nll / scored,
        "dataset": dataset,
        "split": split if dataset == "wikitext2" else None,
        "seqlen": seqlen,
        "windows": int(windows.shape[0]),
        "max_windows": max_windows,
        "scored_tokens": scored,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(device),
        "batch_size": batch_size,
        "seconds": round(time.perf_counter() - started, 3),
    }
