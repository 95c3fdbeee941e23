"""lm-eval's `HFLM` with cheaper loglikelihood scoring and a throughput count (imported only with lm-eval).

lm-eval computes logits and a full-vocabulary log-softmax for every position of every padded batch, then
reads the few positions that predict the continuation. `ScoringLM` asks the model for the logits of those
positions only (`logits_to_keep`), without a KV cache, and log-softmaxes just the rows it reads: the same
requests, batches, order, one-token-continuation cache, log-probabilities and greedy check as lm-eval, at a
fraction of the work and memory, so larger batches fit. Everything else (prompts, generation, rolling
loglikelihood, metrics) is lm-eval's own.
"""
from __future__ import annotations

import inspect
import time

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm


class ScoringLM(HFLM):
    """`HFLM` over an already loaded model; `all_positions=True` keeps lm-eval's own scoring (the reference a
    benchmark or test compares with), as do batch size 'auto' (lm-eval's search probes its own full-logit
    batches) and seq2seq models. `throughput()` reports what the model calls processed."""

    def __init__(self, *args, all_positions: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.all_positions = all_positions
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.counts = {"loglikelihood_requests": 0, "loglikelihood_tokens": 0, "loglikelihood_seconds": 0.0,
                       "generate_requests": 0, "generate_seconds": 0.0}

    def _input_tokens(self, context: list[int], continuation: list[int]) -> list[int]:
        """The tokens lm-eval feeds for one request: context + continuation, left-truncated, last one dropped."""
        return (context + continuation)[-(self.max_length + 1):][:-1]

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        started = time.perf_counter()
        if self.all_positions or self.backend != "causal" or self.batch_size == "auto" or override_bs:
            result = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        else:
            result = self._score_continuations(requests, disable_tqdm)
        self.counts["loglikelihood_requests"] += len(requests)
        self.counts["loglikelihood_tokens"] += sum(len(self._input_tokens(ctx, cont)) for _, ctx, cont in requests)
        self.counts["loglikelihood_seconds"] += time.perf_counter() - started
        return result

    def generate_until(self, requests, disable_tqdm: bool = False):
        started = time.perf_counter()
        result = super().generate_until(requests, disable_tqdm=disable_tqdm)
        self.counts["generate_requests"] += len(requests)
        self.counts["generate_seconds"] += time.perf_counter() - started
        return result

    def _continuation_logits(self, batch: torch.Tensor, first: int) -> torch.Tensor:
        """Logits [b, width - first, vocab] of positions first.. of the right-padded `batch`."""
        keep = torch.arange(first, batch.shape[1], device=batch.device)
        autocast = torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                  enabled=self.mixed_precision_dtype is not None)
        with torch.no_grad(), autocast:
            if self.keeps_logits:
                return self.model(input_ids=batch, use_cache=False, logits_to_keep=keep).logits
            return self.model(input_ids=batch, use_cache=False).logits[:, first:]

    def _score_continuations(self, requests, disable_tqdm: bool) -> list[tuple[float, bool]]:
        """lm-eval's causal `_loglikelihood_tokens` (same sort, batches, cache and answers) on the logits of
        the continuation positions only."""
        order = Collator(requests, sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
                         group_by="contexts" if self.logits_cache else None,
                         group_fn=lambda req: req[-2] + req[-1][:-1])
        answers = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        for chunk in order.get_batched(n=self.batch_size):
            inputs = [torch.tensor(self._input_tokens(ctx, cont), dtype=torch.long, device=self.device)
                      for _, ctx, cont in chunk]
            lengths = [len(tokens) for tokens in inputs]  # pad_and_concat reshapes the list's tensors
            first = min(length - len(cont) for length, (_, _, cont) in zip(lengths, chunk))
            logits = self._continuation_logits(pad_and_concat(max(lengths), inputs, padding_side="right"), first)
            for (request, context, continuation), length, row_logits in zip(chunk, lengths, logits):
                stop = length - first
                scored = F.log_softmax(row_logits[stop - len(continuation):stop], dim=-1,
                                       dtype=self.softmax_dtype).unsqueeze(0)  # [1, len(continuation), vocab]
                greedy = scored.argmax(dim=-1)
                for request_str, cont_tokens, cont_logits in order.get_cache(
                        req_str=request, cxt_toks=context, cont_toks=continuation, logits=scored):
                    target = torch.tensor(cont_tokens, dtype=torch.long, device=self.device).unsqueeze(0)
                    exact = bool((greedy[:, -target.shape[1]:] == target).all())
                    answer = (float(torch.gather(cont_logits, 2, target.unsqueeze(-1)).squeeze(-1).sum()), exact)
                    answers.append(answer)
                    if request_str is not None:
                        self.cache_hook.add_partial("loglikelihood", request_str, answer)
                    bar.update(1)
        bar.close()
        return order.get_original(answers)

    def throughput(self) -> dict:
        """Loglikelihood requests and input tokens (context + continuation as fed, padding not counted) per
        second of scoring; generation requests per second."""
        c = self.counts
        loglikelihood = {"requests": c["loglikelihood_requests"], "tokens": c["loglikelihood_tokens"],
                         "seconds": round(c["loglikelihood_seconds"], 3)}
        if c["loglikelihood_seconds"] > 0:
            loglikelihood.update(requests_per_s=round(c["loglikelihood_requests"] / c["loglikelihood_seconds"], 2),
                                 tokens_per_s=round(c["loglikelihood_tokens"] / c["loglikelihood_seconds"], 1))
        generation = {"requests": c["generate_requests"], "seconds": round(c["generate_seconds"], 3)}
        if c["generate_seconds"] > 0:
            generation["requests_per_s"] = round(c["generate_requests"] / c["generate_seconds"], 3)
        return {"loglikelihood": loglikelihood, "generate_until": generation}
