"""Token windows and their summed next-token NLL: the one loss primitive shared by perplexity, distillation,
recovery and the suffix-loss searches. The next-token NLL is taken from the logits a few rows at a time
(`window_next_token_nll`), so no full-vocabulary log-probability tensor, float copy of the logits or shifted copy
is ever written; sums are kept in float64."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# On a CPU, rows of logits are scored in chunks whose log-probabilities fit in cache (4 MiB), instead of a
# [batch, seqlen, vocab] tensor written to memory and read back; an accelerator scores a window at once.
CPU_CHUNK_BYTES = 4 << 20


def token_windows(tokenizer, text: str, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    # verbose=False: a text longer than the model's positions is cut into windows, no warning needed
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False)["input_ids"][0]
    count = ids.numel() // seqlen
    if max_windows is not None:
        count = min(count, max_windows)
    if count < 1:
        raise ValueError(f"text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    return ids[: count * seqlen].reshape(count, seqlen)


def window_next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Summed NLL (float64, one per window [b]) of each window's tokens 1.. given the logits [b, t, vocab] at
    positions ..t-1; log-softmax in float32 whatever the logits' dtype."""
    length, vocab = input_ids.shape[1], logits.shape[-1]
    rows = max(1, CPU_CHUNK_BYTES // (4 * vocab)) if logits.device.type == "cpu" else length
    totals = torch.zeros(input_ids.shape[0], dtype=torch.float64, device=logits.device)
    for index, (window_logits, ids) in enumerate(zip(logits, input_ids)):
        for start in range(0, length - 1, rows):
            stop = min(start + rows, length - 1)
            chunk = window_logits[start:stop].float()
            totals[index] += F.cross_entropy(chunk, ids[start + 1:stop + 1], reduction="sum").double()
    return totals


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, batch_size: int = 4, device=None) -> torch.Tensor:
    """Summed NLL of each of `windows` [n, seqlen] (float64 [n], on the CPU); each scores seqlen - 1 tokens."""
    device = device or next(model.parameters()).device
    parts = []
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        parts.append(window_next_token_nll(logits, batch).cpu())
        del logits  # freed before the next forward allocates its own
    return torch.cat(parts)


def windows_nll(model, windows: torch.Tensor, batch_size: int = 4, device=None) -> tuple[float, int]:
    """Summed NLL (float64) and scored token count over `windows` [n, seqlen]."""
    return window_nlls(model, windows, batch_size, device).sum().item(), windows.shape[0] * (windows.shape[1] - 1)
