"""Two-stage MHA/FFN pruning (PP-LLMs): some layers lose their FFN, some their attention.

Stage 1: Block Influence of every layer, BI = mean over calibration tokens of 1 − cos(h_in, h_out)
(hidden states from the layers' own inputs and outputs); the `ffn_layers` lowest-BI layers are the
candidates and all of them lose their FFN sub-block.
Stage 2: `attention_layers` rounds; each round removes, among the candidates that still have
attention, the attention sub-block whose removal gives the lowest calibration loss. The layers before
the first candidate run once for all rounds; a round walks from its first remaining candidate to its
last, and per candidate runs the suffix from that layer to the head (`attention_round`).

Counts are given, or derived from `prune_rate` (a fraction of all the model's parameters): the pair
with the most FFN blocks whose total, counted with this model's real FFN and attention sub-block sizes
(grouped-query k/v included), lands within half an attention block of the target — or the closest
pair when none does. With `ffn_attention_ratio` (PP-LLMs' `mha_ffn_ratio`) the pair is PP-LLMs' instead:
among pairs whose FFN/attention count ratio lies within 20 % of it, the one whose total (real sizes) is
closest to the target. A removed sub-block takes its input norm with it; the residual passes through.
`search_windows` scores the attention rounds on the first N calibration windows only, a faster search that
may choose differently (pruning/methods/search.py); stage 1 always uses every window. `search=race` races
each round's candidates instead: on more calibration windows each race round (`search.race_rounds`: 4, 8, then
one batch more), a candidate dropped once it is `race_z` paired standard errors behind the leader (`search.race`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .base import MethodError, PruneContext, PruningMethod, no_grad, register
from ..core.options import Option
from .search import (EXACT, RACE, check_race_z, check_search_windows, race, race_options, race_rounds, runner_up_margin,
                     search_record, search_windows_option)

if TYPE_CHECKING:
    from ..core.engine import LayerStep

log = logging.getLogger(__name__)
RATIO_TOLERANCE = 0.2  # PP-LLMs: the FFN/attention count ratio may miss mha_ffn_ratio by 20 %


def sub_block_sizes(layer, adapter) -> tuple[int, int]:
    """(FFN parameters incl. its norms, attention parameters incl. its norms) of one intact layer."""
    from ..core.heterogeneous import attention_paths, feed_forward_paths
    from ..core.surgery import numel

    return tuple(sum(numel(adapter.layer_part(layer, path)) for path in paths)
                 for paths in (feed_forward_paths(adapter), attention_paths(adapter)))


def counts_for_rate(target: float, ffn_size: int, attention_size: int, num_layers: int,
                    ffn_attention_ratio: float | None = None) -> tuple[int, int]:
    """(FFN blocks, attention blocks) to remove, attention only from FFN-removed candidates (m <= n < L)."""
    pairs = [(n, m) for n in range(1, num_layers) for m in range(n + 1)]
    if not pairs:
        raise ValueError("two_stage needs a model with at least 2 layers")
    error = {p: abs(p[0] * ffn_size + p[1] * attention_size - target) for p in pairs}
    if ffn_attention_ratio is not None:
        near = [(n, m) for n, m in pairs if m and abs(n / m - ffn_attention_ratio) <= RATIO_TOLERANCE * ffn_attention_ratio]
        if not near:
            raise ValueError(f"two_stage: no FFN/attention count pair within {RATIO_TOLERANCE:.0%} of "
                             f"ffn_attention_ratio {ffn_attention_ratio} fits a model of {num_layers} layers")
        return min(near, key=lambda p: (error[p], p[1], p[0]))
    tolerance = max(min(error.values()), attention_size / 2)
    return max((p for p in pairs if error[p] <= tolerance), key=lambda p: (p[0], -error[p], -p[1]))


def attention_round(suffix, adapter, layers, start: int, state: list, remaining: list[int],
                    description: str | None = None) -> tuple[dict[int, list[list[float]]], tuple[int, list]]:
    """Calibration loss (`suffix`, an influence.SuffixLoss) without each remaining candidate's attention, as
    `SuffixLoss.window_nlls` gives it (each window's summed NLL, batch by batch).

    `state` holds the inputs of layer `start` (at or before the first remaining candidate). The walk runs
    the current model from there; at each candidate the suffix from that layer on, with its attention
    swapped out, gives the loss; the walk stops at the last candidate, since nothing after it is a branch
    point. Returns the losses and (first remaining candidate, its inputs) for the next round: no later
    round changes anything before it.
    """
    from ..core.surgery import attention_swapped_out

    losses: dict[int, list[list[float]]] = {}
    hidden, last = state, remaining[-1]
    indices = range(start, last + 1)
    if description:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc=description, unit="layer")
    for index in indices:
        if index == remaining[0]:
            state = hidden
        if index in remaining:
            with attention_swapped_out(layers[index], adapter, index):
                losses[index] = suffix.window_nlls(hidden, list(layers[index:]))
        if index < last:
            hidden = suffix.run_layers(hidden, [layers[index]])
    return losses, (remaining[0], state)


@register
class TwoStage(PruningMethod):
    name = "two_stage"
    FAMILY = "two-stage"
    REMOVES_LAYERS = True  # attention and FFN sub-blocks
    RETRAINS = SUPPORTS_MOE = COMPOSITE = False
    STREAMS = True
    needs_calibration = True
    description = "PP-LLMs: FFN removed in the lowest block-influence layers, then attention removed greedily by calibration loss"

    OPTIONS = (
        Option("prune_rate", float, "fraction of all parameters to remove (sets both counts)", ratio=True,
               low=0, high=1, low_open=True, high_open=True),
        Option("ffn_layers", int, "FFN sub-blocks to remove (instead of prune_rate)", low=1),
        Option("attention_layers", int, "attention sub-blocks to remove, among the FFN-removed layers", low=0),
        Option("ffn_attention_ratio", float, "with prune_rate: FFN per attention blocks removed, within 20 % "
                                             "(PP-LLMs' mha_ffn_ratio; default: counts from the real sizes alone)",
               low=0, low_open=True),
        search_windows_option("the attention rounds' candidates (block influence and the dense loss use every window)"),
        *race_options("each attention round's candidates"),
    )

    def __init__(self, **values):
        super().__init__(**values)
        if self.prune_rate is not None:
            if self.ffn_layers is not None or self.attention_layers is not None:
                raise MethodError("two_stage: give either prune_rate or ffn_layers/attention_layers, not both")
        elif self.ffn_attention_ratio is not None:
            raise MethodError("two_stage: ffn_attention_ratio applies to prune_rate, not to given counts")
        elif self.ffn_layers is None:
            raise MethodError("two_stage needs prune_rate= (fraction of parameters to remove) or ffn_layers= "
                              "[and attention_layers=]")
        else:
            self.attention_layers = self.attention_layers or 0
            if self.attention_layers > self.ffn_layers:
                raise MethodError(f"two_stage: attention is removed only from the {self.ffn_layers} FFN-removed "
                                  f"candidate layers, so attention_layers ({self.attention_layers}) must be <= ffn_layers")
        check_race_z(self.name, self.search, self.race_z)

    def options(self) -> dict:
        search = {} if self.search_windows is None else {"search_windows": self.search_windows}
        if self.search != EXACT:
            search.update(search=self.search, race_z=self.race_z)
        if self.prune_rate is not None:
            ratio = {} if self.ffn_attention_ratio is None else {"ffn_attention_ratio": self.ffn_attention_ratio}
            return {"prune_rate": self.prune_rate, **ratio, **search}
        return {"ffn_layers": self.ffn_layers, "attention_layers": self.attention_layers, **search}

    def check_calibration(self, nsamples: int) -> None:
        check_search_windows(self.name, self.search_windows, nsamples)

    def searches_by_loss(self) -> bool:
        return True  # the attention rounds

    def check_config(self, config) -> None:
        from ..core.surgery import structure_problem

        super().check_config(config)
        problem = structure_problem(config, "two_stage", sub_blocks=True)
        if problem:
            raise MethodError(problem)

    def check_model(self, ctx: PruneContext) -> None:
        self.plan(ctx)

    def plan(self, ctx: PruneContext) -> tuple[int, int, dict]:
        """(FFN count, attention count, sizing facts), checked against the model before any change."""
        from ..core.heterogeneous import attention_removed, feed_forward_removed
        from ..core.surgery import numel

        self.check_config(ctx.model.config)
        layers = ctx.adapter.decoder_layers(ctx.model)
        intact = [layer for layer in layers if not attention_removed(layer, ctx.adapter)
                  and not feed_forward_removed(layer, ctx.adapter)]
        if len(intact) != len(layers):
            raise MethodError("two_stage: the model already has removed sub-blocks; run it on a model with intact layers")
        ffn_size, attention_size = sub_block_sizes(layers[0], ctx.adapter)
        total = numel(ctx.model)
        facts = {"ffn_block_parameters": ffn_size, "attention_block_parameters": attention_size}
        if self.prune_rate is not None:
            target = self.prune_rate * total
            if target > (len(layers) - 1) * (ffn_size + attention_size):
                raise MethodError(f"two_stage: prune_rate {self.prune_rate} asks for {target:.0f} of {total} parameters, "
                                  f"more than the sub-blocks of {len(layers) - 1} layers hold")
            try:
                ffn, attention = counts_for_rate(target, ffn_size, attention_size, len(layers), self.ffn_attention_ratio)
            except ValueError as exc:
                raise MethodError(str(exc)) from None
            facts["target_parameters"] = round(target)
        else:
            ffn, attention = self.ffn_layers, self.attention_layers
        if ffn >= len(layers):
            raise MethodError(f"two_stage: {ffn} FFN blocks asked, the model has {len(layers)} layers (one must keep its FFN)")
        return ffn, attention, facts

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..core.engine import LayerwiseEngine
        from .suffix_loss import SuffixLoss, SuffixLossError
        from .depth_similarity import MeanDistance
        from ..core.surgery import numel, removal_report, remove_attention, remove_feed_forward

        ffn_count, attention_count, facts = self.plan(ctx)
        adapter, layers = ctx.adapter, ctx.adapter.decoder_layers(ctx.model)
        input_ids, _ = ctx.calibration()
        self.check_calibration(len(input_ids))
        engine = LayerwiseEngine(ctx.model, adapter, ctx.device, ctx.batch_size, ctx.progress)
        suffix = SuffixLoss(ctx.model, adapter, engine, input_ids)
        try:
            suffix.verify()
        except SuffixLossError as exc:
            raise MethodError(f"two_stage: {exc}") from None
        search_ids = input_ids[:self.search_windows]  # the attention rounds' windows
        search = suffix if self.search_windows is None else SuffixLoss(ctx.model, adapter, engine, search_ids)
        before = numel(ctx.model)
        log.info("two_stage: removing %d FFN and %d attention sub-blocks of %d layers (%s)", ffn_count,
                 attention_count, len(layers), ", ".join(f"{k} {v}" for k, v in facts.items()))

        influence = {i: MeanDistance("cosine", "all") for i in range(len(layers))}
        dense = {}

        def score(step: LayerStep):
            outputs = step.forward()
            for h_in, h_out in zip(step.inputs, outputs):
                influence[step.index].add(h_in, h_out)
            if step.index == len(layers) - 1:
                dense["loss"] = suffix.mean_nll(outputs)
            return outputs

        engine.capture(input_ids)
        engine.run(score, description="block influence", read_only=True)
        block_influence = {i: m.value for i, m in influence.items()}
        candidates = sorted(sorted(block_influence, key=lambda i: (block_influence[i], i))[:ffn_count])
        log.info("two_stage: BI scores of all %d layers: %s", len(layers),
                 ", ".join(f"{i}: {v:.6f}" for i, v in block_influence.items()))
        log.info("two_stage: FFN removed from the %d lowest-BI layers (candidates): %s", ffn_count, candidates)
        ffn_removed = sum(remove_feed_forward(ctx.model, adapter, i) for i in candidates)

        rounds, attention_removed_params, mha_removed = [], 0, []
        # Nothing before the first candidate ever changes: its inputs are computed once, and each round walks
        # on from the inputs of its first remaining candidate, only as far as its last one.
        start, state = candidates[0], []
        if attention_count:
            engine.capture(search_ids)
            state = search.run_layers(engine.hidden, layers[:start])
            engine.hidden = []
        # A raced round scores the windows of one race round at a time (`race_rounds`), each with its own targets.
        race_windows = race_rounds(len(search_ids), engine.batch_size) if self.search == RACE else []
        round_losses = [SuffixLoss(ctx.model, adapter, engine, search_ids[r.start:r.stop]) for r in race_windows]
        candidate_windows = exact_candidate_windows = 0
        for round_index in range(attention_count):
            remaining = [i for i in candidates if i not in mha_removed]
            description = f"attention round {round_index + 1}/{attention_count}" if ctx.progress else None
            if self.search == RACE:
                state = search.run_layers(state, layers[start:remaining[0]])  # on to the first remaining candidate
                start = remaining[0]
                chosen, windows, history = self._raced_round(round_losses, race_windows, adapter, layers, start, state,
                                                              remaining)
                per_window = search.scored_tokens / len(search_ids)  # every window scores as many tokens
                losses = {i: sum(v) / (len(v) * per_window) for i, v in windows.items()}
            else:
                by_batch, (start, state) = attention_round(search, adapter, layers, start, state, remaining, description)
                losses = {i: search.mean_of(nlls) for i, nlls in by_batch.items()}
                windows = {i: [nll for batch in nlls for nll in batch] for i, nlls in by_batch.items()}
                chosen, history = min(remaining, key=lambda i: (losses[i], i)), None
            candidate_windows += sum(map(len, windows.values()))
            exact_candidate_windows += len(remaining) * len(search_ids)
            attention_removed_params += remove_attention(ctx.model, adapter, chosen)
            mha_removed.append(chosen)
            log.info("two_stage: round %d/%d: calibration loss without each candidate's attention %s; removed "
                     "layer %d's (loss %.4f)", round_index + 1, attention_count,
                     ", ".join(f"{i}: {v:.4f}" for i, v in sorted(losses.items())), chosen, losses[chosen])
            runner_up = runner_up_margin(chosen, windows, losses)
            margin = {} if runner_up is None else {"choice_margin": {"runner_up": runner_up[0], **runner_up[1]}}
            raced = {} if history is None else {
                "candidate_windows": {str(i): len(v) for i, v in sorted(windows.items())}, "race_rounds": history}
            rounds.append({"removed": chosen, "loss": losses[chosen],
                           "candidate_losses": {str(i): v for i, v in sorted(losses.items())}, **margin, **raced})

        return {"ffn_removed_layers": candidates, "mha_removed_layers": sorted(mha_removed),
                "layers_before": len(layers),  # as depth and layers record it: the layer-removal table's "total"
                "ffn_parameters_removed": ffn_removed, "attention_parameters_removed": attention_removed_params,
                "scores": {str(i): v for i, v in block_influence.items()}, "score": "block influence 1 - cos, all tokens",
                "calibration_loss_dense": dense["loss"], "attention_rounds": rounds,
                **({} if self.search == EXACT else {"race": {
                    "z": self.race_z, "candidate_windows": candidate_windows,
                    "exact_candidate_windows": exact_candidate_windows}}),
                **({} if self.search_windows is None else
                   search_record(self.search_windows, len(input_ids), search.scored_tokens, "attention_loss_data")),
                **({"prune_rate": self.prune_rate} if self.prune_rate is not None else {}),
                **facts, **removal_report(before, ctx.model)}

    def _raced_round(self, round_losses: list, race_windows: list[range], adapter, layers, start: int, state: list,
                     remaining: list[int]) -> tuple[int, dict[int, list[float]], list[dict]]:
        """One attention round raced over the calibration windows (`state`: the inputs of layer `start`, batch
        by batch; race round r scores the windows `race_windows[r]`, at most one batch, with `round_losses[r]`):
        the chosen layer, each candidate's summed NLL on every window it was scored on, the race's rounds."""
        import torch

        rows = torch.cat(state)

        def score(survivors: list[int], round_index: int) -> dict[int, list[float]]:
            windows = race_windows[round_index]
            by_batch, _ = attention_round(round_losses[round_index], adapter, layers, start,
                                          [rows[windows.start:windows.stop]], sorted(survivors))
            return {i: by_batch[i][0] for i in survivors}

        chosen, windows, history = race(score, remaining, len(race_windows), self.race_z)
        return chosen, {i: v for i, v in windows.items() if v}, history
