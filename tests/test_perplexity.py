"""Perplexity: the chunked scorer gives the numbers of a plain full-vocabulary computation, and the record
carries its throughput."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pruning.core import token_windows as token_windows_module
from pruning.core.token_windows import next_token_nll, token_windows, windows_nll
from pruning.evaluation.perplexity import forward_throughput, perplexity
from pruning.core.data import evaluation_text



@pytest.fixture(scope="module")
def stories(stories_dir):
    from pruning.core.modeling import load_model

    return load_model(stories_dir, dtype="float32", device="cpu")


def reference_nll(model, windows: torch.Tensor) -> float:
    """One window at a time, full log-softmax in float64, targets gathered: the textbook computation."""
    total = 0.0
    with torch.no_grad():
        for window in windows:
            logits = model(input_ids=window[None], use_cache=False).logits[0, :-1].double()
            total += -logits.log_softmax(-1).gather(-1, window[1:, None]).sum().item()
    return total


@pytest.mark.parametrize("chunk_bytes", [token_windows_module.CPU_CHUNK_BYTES, 4 * 512 * 5])  # 5 rows of 512 logits
def test_chunked_nll_equals_full_cross_entropy(chunk_bytes, monkeypatch):
    monkeypatch.setattr(token_windows_module, "CPU_CHUNK_BYTES", chunk_bytes)
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 17, 512) * 4, torch.randint(0, 512, (3, 17))
    full = F.cross_entropy(logits[:, :-1].reshape(-1, 512).double(), ids[:, 1:].reshape(-1), reduction="sum")
    assert next_token_nll(logits, ids).item() == pytest.approx(full.item(), rel=1e-6)
    half = next_token_nll(logits.bfloat16(), ids).item()  # scored in float32, not in bfloat16
    assert half == pytest.approx(F.cross_entropy(logits[:, :-1].bfloat16().float().reshape(-1, 512),
                                                 ids[:, 1:].reshape(-1), reduction="sum").item(), rel=1e-6)


def test_perplexity_equals_the_reference_and_records_throughput(stories):
    model, tokenizer = stories
    result = perplexity(model, tokenizer, "wikitext2", "test", seqlen=128, max_windows=6, batch_size=4)
    windows = token_windows(tokenizer, evaluation_text("wikitext2", "test"), 128, 6)
    assert result["ppl"] == pytest.approx(math.exp(reference_nll(model, windows) / (6 * 127)), rel=1e-6)
    assert (result["windows"], result["scored_tokens"], result["batch_size"]) == (6, 6 * 127, 4)
    assert 0 < result["scoring_seconds"] <= result["seconds"]
    rounded = result["scoring_seconds"]  # to the millisecond: on this tiny model a few per cent of itself
    assert 6 * 128 / (rounded + 5e-4) - 0.1 <= result["tokens_per_s"] <= 6 * 128 / max(rounded - 5e-4, 1e-6) + 0.1
    assert windows_nll(model, windows, batch_size=1)[0] == pytest.approx(result["nll_per_token"] * 6 * 127, rel=1e-6)
    assert forward_throughput(model, windows, batch_size=4) > 0
