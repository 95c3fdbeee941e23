"""Perplexity: the chunked scorer gives the numbers of a plain full-vocabulary computation, window by window,
and the record carries its throughput and the per-window NLLs its confidence interval is computed from."""
from __future__ import annotations

import hashlib
import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from pruning.core.token_windows import token_windows, window_next_token_nll, window_nlls, windows_nll
from pruning.evaluation.perplexity import forward_throughput, perplexity
from pruning.core.data import evaluation_text

token_windows_module = importlib.import_module("pruning.core.token_windows")


@pytest.fixture(scope="module")
def stories(stories_dir):
    from pruning.core.modeling import load_model

    return load_model(stories_dir, dtype="float32", device="cpu")


def reference_nlls(model, windows: torch.Tensor) -> list[float]:
    """One window at a time, full log-softmax in float64, targets gathered: the textbook computation."""
    nlls = []
    with torch.no_grad():
        for window in windows:
            logits = model(input_ids=window[None], use_cache=False).logits[0, :-1].double()
            nlls.append(-logits.log_softmax(-1).gather(-1, window[1:, None]).sum().item())
    return nlls


@pytest.mark.parametrize("chunk_bytes", [token_windows_module.CPU_CHUNK_BYTES, 4 * 512 * 5])  # 5 rows of 512 logits
def test_chunked_nll_equals_full_cross_entropy(chunk_bytes, monkeypatch):
    monkeypatch.setattr(token_windows_module, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 17, 512) * 4, torch.randint(0, 512, (3, 17))
    full = [F.cross_entropy(window[:-1].double(), target[1:], reduction="sum").item() for window, target in zip(logits, ids)]
    per_window = window_next_token_nll(logits, ids)
    assert per_window.dtype == torch.float64 and per_window.tolist() == pytest.approx(full, rel=1e-6)
    half = window_next_token_nll(logits.bfloat16(), ids)  # scored in float32, not in bfloat16
    assert half.tolist() == pytest.approx([F.cross_entropy(window[:-1].bfloat16().float(), target[1:], reduction="sum").item()
                                           for window, target in zip(logits, ids)], rel=1e-6)


def test_perplexity_equals_the_reference_and_records_throughput(stories):
    model, tokenizer = stories
    result = perplexity(model, tokenizer, "wikitext2", "test", seqlen=128, max_windows=6, batch_size=4)
    windows = token_windows(tokenizer, evaluation_text("wikitext2", "test"), 128, 6)
    reference = reference_nlls(model, windows)
    assert result["ppl"] == pytest.approx(math.exp(sum(reference) / (6 * 127)), rel=1e-6)
    per_window = result["per_window"]  # the per-item record (pruning.evaluation.per_item)
    assert per_window["nll"] == pytest.approx(reference, rel=1e-6) and per_window["scored_tokens"] == [127] * 6
    assert per_window["token_ids_sha256"] == hashlib.sha256(windows.numpy().astype("<i8").tobytes()).hexdigest()
    assert window_nlls(model, windows, batch_size=4).tolist() == per_window["nll"]  # batches do not change it
    assert (result["windows"], result["scored_tokens"], result["batch_size"]) == (6, 6 * 127, 4)
    assert 0 < result["scoring_seconds"] <= result["seconds"]
    rounded = result["scoring_seconds"]  # to the millisecond: on this tiny model a few per cent of itself
    assert 6 * 128 / (rounded + 5e-4) - 0.1 <= result["tokens_per_s"] <= 6 * 128 / max(rounded - 5e-4, 1e-6) + 0.1
    assert windows_nll(model, windows, batch_size=1)[0] == pytest.approx(result["nll_per_token"] * 6 * 127, rel=1e-6)
    assert forward_throughput(model, windows, batch_size=4) > 0
