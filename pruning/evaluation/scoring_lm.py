"""lm-eval's `HFLM` with cheaper loglikelihood scoring and a throughput count (imported only with lm-eval).

lm-eval feeds every (context, continuation) request of a multiple-choice document as its own padded row, so
the shared context is computed once per option, and it log-softmaxes the full vocabulary at every position.
`ScoringLM` answers the same requests with the same log-likelihoods and greedy flags, in one of three ways
(`SCORING`):

- "packed" (the default for the families whose adapter sets `custom_attention_masks`, structured-pruned
  models of them included): one row per document, its requests' common token prefix (the context, or
  Winogrande's shots) once, then each request's remaining tokens side by side, kept apart by a 4D attention
  mask and position ids that restart after the prefix; the output layer is applied to the hidden states
  that predict a continuation token only. A forward holds whole documents, up to `batch_size` requests.
- "continuations" (the default for other families): lm-eval's rows, batches and order, logits of the
  continuation positions only.
- "lm-eval": lm-eval's own scoring, the reference a benchmark or test compares with (also taken for batch
  size 'auto', whose search probes lm-eval's own batches, and for seq2seq models).

Everything else (prompts, generation, rolling loglikelihood, metrics) is lm-eval's own.
"""
from __future__ import annotations

import inspect
import os
import time
from itertools import groupby

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat
from tqdm import tqdm

from ..core.adapters import takes_custom_attention_masks
from ..core.heterogeneous import base_model_type

SCORING = ("packed", "continuations", "lm-eval")
_TRUNK = -1  # segment id of a row's shared prefix; requests are 0, 1, ...; padding is _PADDING
_PADDING = -2


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """Length of the token prefix common to every sequence."""
    return len(os.path.commonprefix(sequences))


def prefix_tree_size(sequences: list[list[int]]) -> int:
    """Distinct prefixes among the sequences (nodes of their token trie): the tokens a causal model must compute
    at least once to score them all, the floor any sharing scheme can reach."""
    root, nodes = {}, 0
    for sequence in sequences:
        node = root
        for token in sequence:
            if token not in node:
                node[token] = {}
                nodes += 1
            node = node[token]
    return nodes


class PackedDocument:
    """One document's requests as one row: the shared input prefix (trunk) once, then each request's remaining
    input tokens; `targets[i]` lists (row position, token) pairs whose log-probabilities make request i's
    log-likelihood."""

    def __init__(self, sequences: list[list[int]], continuation_lengths: list[int]):
        # each request feeds its sequence minus the last token; the trunk leaves every request >= 0 own tokens
        trunk = min(shared_prefix_length(sequences), min(len(s) for s in sequences) - 1)
        self.tokens, self.positions, self.segments = list(sequences[0][:trunk]), list(range(trunk)), [_TRUNK] * trunk
        self.targets = []
        for request, (sequence, continuation) in enumerate(zip(sequences, continuation_lengths)):
            start = len(self.tokens)
            own = sequence[trunk:-1]
            self.tokens += own
            self.positions += range(trunk, trunk + len(own))
            self.segments += [request] * len(own)
            # the token at sequence index j is predicted by input index j - 1: in the trunk or in this request's part
            self.targets.append([(j - 1 if j - 1 < trunk else start + j - 1 - trunk, sequence[j])
                                 for j in range(len(sequence) - continuation, len(sequence))])
        self.floor = prefix_tree_size([sequence[:-1] for sequence in sequences])

    def __len__(self) -> int:
        return len(self.tokens)


def packed_batch(documents: list[PackedDocument], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, position_ids [b, width] and the boolean attention mask [b, 1, width, width] (True: may attend)
    of right-padded packed rows: the trunk is causal, a request sees the trunk and its own earlier tokens, a
    padding position sees the first token and itself (no empty rows for softmax)."""
    width = max(len(document) for document in documents)
    ids = torch.zeros(len(documents), width, dtype=torch.long)
    positions = torch.zeros(len(documents), width, dtype=torch.long)
    segments = torch.full((len(documents), width), _PADDING, dtype=torch.long)
    for row, document in enumerate(documents):
        ids[row, :len(document)] = torch.tensor(document.tokens)
        positions[row, :len(document)] = torch.tensor(document.positions)
        segments[row, :len(document)] = torch.tensor(document.segments)
    query_segment, key_segment = segments[:, :, None], segments[:, None, :]
    earlier = positions[:, None, :] <= positions[:, :, None]
    same_part = (key_segment == query_segment) | ((key_segment == _TRUNK) & (query_segment != _PADDING))
    padding_start = (query_segment == _PADDING) & (torch.arange(width)[None, None, :] == 0)
    mask = (earlier & same_part) | padding_start
    return ids.to(device), positions.to(device), mask[:, None].to(device)


class ScoringLM(HFLM):
    """`HFLM` over an already loaded model, scoring loglikelihood requests as `scoring` says (one of `SCORING`;
    None: "packed" where the model's family takes custom attention masks, else "continuations").
    `throughput()` reports what the model calls processed."""

    def __init__(self, *args, scoring: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if scoring is None:
            packs = takes_custom_attention_masks(base_model_type(self.model.config))  # structured-pruned ones too
            scoring = "packed" if packs else "continuations"
        if scoring not in SCORING:
            raise ValueError(f"scoring must be one of {', '.join(SCORING)}, not {scoring!r}")
        self.scoring = scoring
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.document_keys: list | None = None  # (task, document) of each request being scored, when known
        self.counts = {"loglikelihood_requests": 0, "loglikelihood_tokens": 0, "loglikelihood_computed_tokens": 0,
                       "loglikelihood_floor_tokens": 0,
                       "loglikelihood_seconds": 0.0, "generate_requests": 0, "generate_seconds": 0.0}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        """lm-eval's, noting which document each request belongs to (the packed scorer's unit)."""
        self.document_keys = [(request.task_name, request.doc_id) for request in requests]
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self.document_keys = None

    def _sequence(self, context: list[int], continuation: list[int]) -> list[int]:
        """Context + continuation, left-truncated as lm-eval does; it feeds all but the last token."""
        return (context + continuation)[-(self.max_length + 1):]

    def _input_tokens(self, context: list[int], continuation: list[int]) -> list[int]:
        """The tokens lm-eval feeds for one request."""
        return self._sequence(context, continuation)[:-1]

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                              enabled=self.mixed_precision_dtype is not None)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        started = time.perf_counter()
        fed = sum(len(self._input_tokens(ctx, cont)) for _, ctx, cont in requests)
        if self.scoring == "lm-eval" or self.backend != "causal" or self.batch_size == "auto" or override_bs:
            result, computed = super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm,
                                                             override_bs=override_bs), fed
        elif self.scoring == "continuations":
            result, computed = self._score_continuations(requests, disable_tqdm), fed
        else:
            result, computed = self._score_packed(requests, disable_tqdm)
        self.counts["loglikelihood_requests"] += len(requests)
        self.counts["loglikelihood_tokens"] += fed
        self.counts["loglikelihood_computed_tokens"] += computed
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
        with torch.no_grad(), self._autocast():
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

    def _score_packed(self, requests, disable_tqdm: bool) -> tuple[list[tuple[float, bool]], int]:
        """Each document's requests in one packed row (`PackedDocument`), rows of similar length batched up to
        `batch_size` requests; the answers in request order and the number of tokens the rows hold."""
        keys = self.document_keys if self.document_keys and len(self.document_keys) == len(requests) \
            else list(range(len(requests)))  # unknown documents: every request on its own
        sequences = [self._sequence(ctx, cont) for _, ctx, cont in requests]
        documents = []  # (request indices, packed row), a document's requests being consecutive in lm-eval's order
        for _, members in groupby(range(len(requests)), key=keys.__getitem__):
            indices = list(members)
            documents.append((indices, PackedDocument([sequences[i] for i in indices],
                                                      [len(requests[i][2]) for i in indices])))
        documents.sort(key=lambda document: -len(document[1]))
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running loglikelihood requests")
        start = 0
        while start < len(documents):
            stop, held = start + 1, len(documents[start][0])
            while stop < len(documents) and held + len(documents[stop][0]) <= self.batch_size:
                held += len(documents[stop][0])
                stop += 1
            chunk = documents[start:stop]
            for indices, scored in zip((indices for indices, _ in chunk), self._packed_answers([d for _, d in chunk])):
                for index, answer in zip(indices, scored):
                    answers[index] = answer
                    (context, continuation), _, _ = requests[index]
                    self.cache_hook.add_partial("loglikelihood", (context, continuation), answer)
                bar.update(len(indices))
            start = stop
        bar.close()
        self.counts["loglikelihood_floor_tokens"] += sum(document.floor for _, document in documents)
        return answers, sum(len(document) for _, document in documents)

    def _packed_answers(self, documents: list[PackedDocument]) -> list[list[tuple[float, bool]]]:
        """(log-likelihood, greedy) of every request of every document, from one forward over their rows; the
        output layer is applied to the positions that predict a continuation token only."""
        ids, positions, mask = packed_batch(documents, self.device)
        rows = [row for row, document in enumerate(documents) for target in document.targets for _ in target]
        columns = [position for document in documents for target in document.targets for position, _ in target]
        tokens = torch.tensor([token for document in documents for target in document.targets for _, token in target],
                              dtype=torch.long, device=self.device)
        with torch.no_grad(), self._autocast():
            hidden = self.model.get_decoder()(input_ids=ids, position_ids=positions, attention_mask=mask,
                                              use_cache=False).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[rows, columns])
        log_probs = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        picked = log_probs.gather(1, tokens[:, None]).squeeze(1).tolist()
        greedy = (log_probs.argmax(dim=-1) == tokens).tolist()
        results, start = [], 0
        for document in documents:
            scored = []
            for target in document.targets:
                stop = start + len(target)
                scored.append((float(sum(picked[start:stop])), all(greedy[start:stop])))
                start = stop
            results.append(scored)
        return results

    def throughput(self) -> dict:
        """Loglikelihood requests and input tokens (context + continuation as lm-eval feeds them, padding not
        counted) per second of scoring, and the tokens the model computed (fewer when packed); generation
        requests per second. floor_tokens (packed only): the distinct input prefixes of each document, the least
        any scheme must compute."""
        c = self.counts
        loglikelihood = {"requests": c["loglikelihood_requests"], "tokens": c["loglikelihood_tokens"],
                         "computed_tokens": c["loglikelihood_computed_tokens"], "scoring": self.scoring,
                         "floor_tokens": c["loglikelihood_floor_tokens"] or None,
                         "seconds": round(c["loglikelihood_seconds"], 3)}
        if c["loglikelihood_seconds"] > 0:
            loglikelihood.update(requests_per_s=round(c["loglikelihood_requests"] / c["loglikelihood_seconds"], 2),
                                 tokens_per_s=round(c["loglikelihood_tokens"] / c["loglikelihood_seconds"], 1))
        generation = {"requests": c["generate_requests"], "seconds": round(c["generate_seconds"], 3)}
        if c["generate_seconds"] > 0:
            generation["requests_per_s"] = round(c["generate_requests"] / c["generate_seconds"], 3)
        return {"loglikelihood": loglikelihood, "generate_until": generation}
