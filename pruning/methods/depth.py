"""Depth pruning: remove whole decoder layers chosen on calibration data (never the test split).

criterion `angular` / `cosine` (Gromov et al., ShortGPT, PruneGPT): how much a block of `block_size`
consecutive layers changes the hidden states, measured between the block's input and output taken from
the layers themselves (not `hidden_states[-1]`, which is after the final norm), on the last token or on
all tokens; the `num_blocks` non-overlapping blocks that change them least are removed (block_size 1:
the num_blocks least influential layers, not necessarily adjacent; num_blocks 1 and block_size n:
Gromov's contiguous block).

criterion `perplexity` (Quark): for every window of `num_blocks` consecutive layers, the calibration
perplexity of the model without it; the window with the lowest perplexity is removed and every
window's perplexity is reported.

criteria of Shortened LLaMA (Kim et al. 2024), one-shot: every block is scored alone, then the `num_blocks`
lowest-scoring non-overlapping blocks are removed together (block_size 1, the paper's setting: single layers;
block_size n scores each window of n consecutive layers alone).
`block_ppl`: the calibration perplexity of the model with only that block removed. `taylor`: first-order
Taylor importance Σ |w · ∂L/∂w| over the block's weights, L the calibration loss (plain Taylor; the paper's
Taylor+ is this with skip_blocks [0,1,2,3,-2,-1], its first four and last two layers kept).

`skip_blocks` lists layers that must stay (negative indices count from the end, e.g. [0,1,2,3,-1,-2]).
`search_windows` (perplexity, block_ppl) scores the candidates on the first N calibration windows only, a
faster search that may choose differently (pruning/methods/search.py).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from typing import TYPE_CHECKING

from .base import MethodError, PruneContext, PruningMethod, config_layer_count, no_grad, register
from .depth_similarity import CRITERIA, TOKENS
from ..core.options import Option, parse_options
from .search import (EXACT, RACE, check_race_z, check_search_windows, choice_margin, race, race_options,
                     race_rounds, runner_up_margin, search_record, search_windows_option)

if TYPE_CHECKING:
    from ..core.engine import LayerStep, LayerwiseEngine

log = logging.getLogger(__name__)

# hidden-state change, Quark's perplexity windows, Shortened LLaMA's one-block-removed perplexity and Taylor
DEPTH_CRITERIA = CRITERIA + ("perplexity", "block_ppl", "taylor")
REMOVAL_LOSS_CRITERIA = ("perplexity", "block_ppl")  # score every candidate by the calibration loss without it
GRADIENT_CRITERIA = ("taylor",)  # a gradient sum for every weight of the model: cannot stream its layers from disk
STREAMING_CRITERIA = tuple(c for c in DEPTH_CRITERIA if c not in GRADIENT_CRITERIA)
CRITERION_LABELS = {"angular": "Angular", "cosine": "Cosine", "perplexity": "Perplexity", "block_ppl": "Block PPL",
                    "taylor": "Taylor"}  # the column names of the PruneGPT table
BNB_PACKAGE = "bitsandbytes"  # scores on a quantized copy (QuantizedScoring)


def _window_name(start: int, size: int) -> str:
    return str(start) if size == 1 else f"{start}-{start + size - 1}"


@register
class Depth(PruningMethod):
    name = "depth"
    FAMILY = "layer/depth pruning"
    REMOVES_LAYERS = SUPPORTS_MOE = True
    RETRAINS = COMPOSITE = False
    STREAMS = True
    needs_calibration = True
    description = ("remove the layers (or blocks) that change hidden states least (angular/cosine), the window of "
                   "layers whose removal costs the least calibration perplexity (perplexity), or the layers each "
                   "least important alone by one-block-removed perplexity or first-order Taylor (block_ppl, taylor)")

    OPTIONS = (
        Option("num_blocks", int, "number of layers, or blocks of block_size layers, to remove", required=True,
               low=1, ratio=True),
        Option("criterion", str, "block score: hidden-state change (angular, cosine); calibration perplexity "
                                 "without the window of num_blocks layers (perplexity, Quark); Shortened LLaMA, "
                                 "each block scored alone and the lowest removed: calibration perplexity with "
                                 "only that block removed (block_ppl) or plain first-order Taylor sum of "
                                 "|weight x gradient of the calibration loss| over the block's weights (taylor; "
                                 "the paper's Taylor+ adds skip_blocks=[0,1,2,3,-2,-1])",
               default="angular", choices=DEPTH_CRITERIA),
        Option("skip_blocks", list, "layers that must stay (negative indices count from the end)", default=()),
        Option("tokens", str, "hidden states compared on the last token or on all tokens (angular, cosine)",
               default="last", choices=TOKENS),
        Option("block_size", int, "consecutive layers per removed block (all criteria but perplexity)", default=1,
               low=1),
        search_windows_option("the candidate blocks (criteria perplexity and block_ppl)"),
        *race_options("the candidate windows of layers (criterion perplexity)"),
    )

    def __init__(self, **values):
        super().__init__(**values)
        if self.criterion == "perplexity" and self.block_size != 1:
            raise MethodError("depth: criterion perplexity removes one window of num_blocks consecutive layers; "
                              "block_size does not apply (leave it at 1)")
        if self.search_windows is not None and self.criterion not in REMOVAL_LOSS_CRITERIA:
            raise MethodError(f"depth: search_windows applies to the criteria that score candidates by calibration "
                              f"loss ({', '.join(REMOVAL_LOSS_CRITERIA)}), not to {self.criterion}")
        if (self.search != EXACT or self.race_z != self.option("race_z").default) and self.criterion != "perplexity":
            raise MethodError(f"depth: search={self.search} and race_z apply to criterion perplexity (one window of "
                              f"layers chosen), not to {self.criterion}")
        check_race_z(self.name, self.search, self.race_z)

    def options(self) -> dict:
        options = super().options()
        if self.criterion not in CRITERIA:
            del options["tokens"]
        if self.criterion == "perplexity":
            del options["block_size"]
        if self.search_windows is None:
            del options["search_windows"]
        if self.search == EXACT:
            del options["search"], options["race_z"]
        return options

    def check_calibration(self, nsamples: int) -> None:
        check_search_windows(self.name, self.search_windows, nsamples)

    def searches_by_loss(self) -> bool:
        return self.criterion in REMOVAL_LOSS_CRITERIA

    def streaming_refusal(self) -> str | None:
        if self.criterion in GRADIENT_CRITERIA:
            return (f"method depth with criterion {self.criterion} holds a gradient sum for every weight of the model "
                    f"and cannot stream; streaming supports criterion {', '.join(STREAMING_CRITERIA)}")
        return None

    def check_config(self, config: dict) -> None:
        super().check_config(config)
        if (layers := config_layer_count(config)) is not None:
            self.plan(layers)

    def check_model(self, ctx: PruneContext) -> None:
        self.plan(ctx.adapter.num_layers(ctx.model))

    def plan(self, num_layers: int) -> tuple[int, list[int]]:
        """(window size, allowed window starts) for a model of `num_layers` layers, or a clear error."""
        from .depth_similarity import allowed_block_starts, max_blocks

        bad = [i for i in self.skip_blocks if not -num_layers <= i < num_layers]
        if bad:
            raise MethodError(f"depth: skip_blocks {bad} out of range for a model with {num_layers} layers")
        keep = {i % num_layers for i in self.skip_blocks}
        if self.criterion == "perplexity":
            size, count = self.num_blocks, 1
        else:
            size, count = self.block_size, self.num_blocks
        if size * count >= num_layers:
            raise MethodError(f"depth: removing {size * count} of {num_layers} layers would leave none")
        starts = allowed_block_starts(num_layers, size, keep)
        if max_blocks(starts, num_layers, size) < count:
            raise MethodError(f"depth: cannot remove {count} block(s) of {size} layer(s) from {num_layers} layers "
                              f"while keeping skip_blocks {self.skip_blocks}; lower num_blocks or skip fewer layers")
        return size, starts

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..core.engine import LayerwiseEngine
        from .depth_similarity import select_blocks
        from ..core.surgery import numel, removal_report, remove_layers

        num_layers = ctx.adapter.num_layers(ctx.model)
        size, starts = self.plan(num_layers)
        input_ids, _ = ctx.calibration()
        self.check_calibration(len(input_ids))
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        before = numel(ctx.model)
        if self.criterion == "perplexity":
            report = self._perplexity_windows(ctx, engine, input_ids, size, starts)
            drop_starts = [report.pop("best_start")]
        else:
            if self.criterion == "block_ppl":
                scores, report = self._block_perplexities(ctx, engine, input_ids, size, starts)
            elif self.criterion == "taylor":
                scores, report = self._taylor_scores(ctx, engine, input_ids, size, starts)
            else:
                engine.capture(input_ids)
                scores, report = self._similarity_scores(engine, size, starts), {}
            drop_starts = select_blocks(scores, num_layers, size, self.num_blocks)
            report = {"scores": {_window_name(s, size): v for s, v in scores.items()}, **report}
        drop = sorted(i for s in drop_starts for i in range(s, s + size))
        log.info("depth %s scores per block: %s", self.criterion,
                 ", ".join(f"{name}: {value:.6f}" for name, value in report["scores"].items()))
        log.info("depth: removing layers %s of %d", drop, num_layers)
        remove_layers(ctx.model, ctx.adapter, drop)
        return {"removed_layers": drop, "layers_before": num_layers, "layers_after": num_layers - len(drop),
                **report, **removal_report(before, ctx.model)}

    def _similarity_scores(self, engine: LayerwiseEngine, size: int, starts: list[int]) -> dict[int, float]:
        """Mean distance between the input of layer s and the output of layer s+size-1, for each start s."""
        from .depth_similarity import MeanDistance

        meters = {s: MeanDistance(self.criterion, self.tokens) for s in starts}
        recent: deque = deque(maxlen=size)  # inputs of the last `size` layers

        def visit(step: LayerStep):
            inputs = step.inputs
            recent.append([h[:, -1:, :] for h in inputs] if self.tokens == "last" else inputs)
            outputs = step.forward()
            start = step.index - size + 1
            if start in meters:
                for h_in, h_out in zip(recent[0], outputs):
                    meters[start].add(h_in, h_out)
            return outputs

        engine.run(visit, description=f"depth {self.criterion}", read_only=True)
        return {s: meter.value for s, meter in meters.items()}

    def _suffix_loss(self, ctx: PruneContext, engine: LayerwiseEngine, input_ids):
        from .suffix_loss import SuffixLoss, SuffixLossError

        suffix = SuffixLoss(ctx.model, ctx.adapter, engine, input_ids)
        try:
            suffix.verify()
        except SuffixLossError as exc:
            raise MethodError(f"depth: {exc}") from None
        return suffix

    def _removal_nll(self, ctx: PruneContext, engine: LayerwiseEngine, input_ids, size: int,
                     starts: list[int]) -> tuple[dict[int, float], dict[int, list[list[float]]], float, dict]:
        """Mean calibration NLL of the model without layers s..s+size-1, for each start s (and each window's summed
        NLL, batch by batch), and of the whole model, on the first search_windows windows (all by default), and what
        they were computed on, for the report.

        One walk of the model holds only the current layer inputs; at each start the layers after the window,
        the norm and the head run on them. That is the criterion's floor: no two windows share the inputs of
        their suffix, and the loss needs the full-vocabulary head (2 of 30 layers: about 18 forwards of work,
        benchmarks/structured_search.py)."""
        scored = input_ids[:self.search_windows]
        windows, dense, suffix = self._removal_walk(ctx, engine, scored, size, starts)
        nll = {s: suffix.mean_of(windows[s]) for s in starts}
        data = ({"ppl_data": CALIBRATION_ONLY} if self.search_windows is None else
                search_record(self.search_windows, len(input_ids), suffix.scored_tokens, "ppl_data"))
        return nll, windows, suffix.mean_of(dense), data

    def _removal_walk(self, ctx: PruneContext, engine: LayerwiseEngine, scored, size: int, starts: list[int]):
        """One walk over `scored` windows: each window's summed NLL (batch by batch) without layers s..s+size-1 for
        each start s, and with every layer (dense), and the SuffixLoss that scored them."""
        suffix = self._suffix_loss(ctx, engine, scored)
        layers = ctx.adapter.decoder_layers(ctx.model)
        last = len(layers) - 1
        windows: dict[int, list[list[float]]] = {}
        dense = {}

        def visit(step: LayerStep):
            if step.index in starts:
                windows[step.index] = suffix.window_nlls(step.inputs, list(layers[step.index + size:]))
            outputs = step.forward()
            if step.index == last:
                dense["windows"] = suffix.window_nlls(outputs)
            return outputs

        engine.capture(scored)
        engine.run(visit, description=f"depth {self.criterion}", read_only=True)
        return windows, dense["windows"], suffix

    def _perplexity_windows(self, ctx: PruneContext, engine: LayerwiseEngine, input_ids, size: int,
                            starts: list[int]) -> dict:
        """Quark: calibration perplexity with each allowed window of `size` layers removed."""
        if self.search == RACE:
            return self._raced_perplexity_windows(ctx, engine, input_ids, size, starts)
        nll, windows, dense, data = self._removal_nll(ctx, engine, input_ids, size, starts)
        window_ppl = [{"layers": [s, s + size - 1], "ppl": math.exp(nll[s])} for s in starts]
        best, *others = sorted(starts, key=lambda s: (nll[s], s))
        margin = ({"choice_margin": {"runner_up": [others[0], others[0] + size - 1],
                                     **choice_margin(windows[best], windows[others[0]])}} if others else {})
        return {"best_start": best, "window_ppl": window_ppl, **margin,
                "scores": {_window_name(s, size): math.exp(nll[s]) for s in starts},
                "ppl_dense_calibration": math.exp(dense),
                "ppl_after_calibration": math.exp(nll[best]), **data}

    def _raced_perplexity_windows(self, ctx: PruneContext, engine: LayerwiseEngine, input_ids, size: int,
                                  starts: list[int]) -> dict:
        """Quark's search raced (`race`): more windows each round (`race_rounds`), the candidate windows still close
        to the leader scored on them. Each candidate's perplexity is over the windows it was scored on."""
        scored = input_ids[:self.search_windows]
        batches = [scored[r.start:r.stop] for r in race_rounds(len(scored), ctx.batch_size)]
        dense = {"nll": 0.0, "tokens": 0}

        def score(survivors: list[int], round_index: int) -> dict[int, list[float]]:
            windows, dense_windows, suffix = self._removal_walk(ctx, engine, batches[round_index], size, survivors)
            dense["nll"] += sum(map(sum, dense_windows))
            dense["tokens"] += suffix.scored_tokens
            return {s: [nll for batch in windows[s] for nll in batch] for s in survivors}

        best, losses, rounds = race(score, starts, len(batches), self.race_z)
        per_window = dense["tokens"] / rounds[-1]["windows"]  # every window scores as many tokens
        nll = {s: sum(losses[s]) / (len(losses[s]) * per_window) for s in starts}
        margin = {}
        runner_up = runner_up_margin(best, losses, nll)
        if runner_up:
            other, facts = runner_up
            margin = {"choice_margin": {"runner_up": [other, other + size - 1], **facts}}
        return {"best_start": best,
                "window_ppl": [{"layers": [s, s + size - 1], "ppl": math.exp(nll[s]), "windows": len(losses[s])}
                               for s in starts], **margin,
                "scores": {_window_name(s, size): math.exp(nll[s]) for s in starts},
                "ppl_dense_calibration": math.exp(dense["nll"] / dense["tokens"]),
                "ppl_after_calibration": math.exp(nll[best]),
                "race": {"z": self.race_z, "rounds": rounds,
                         "candidate_windows": sum(len(v) for v in losses.values()),
                         "exact_candidate_windows": len(starts) * len(scored)},
                **({"ppl_data": CALIBRATION_ONLY} if self.search_windows is None else
                   search_record(self.search_windows, len(input_ids), dense["tokens"], "ppl_data"))}

    def _block_perplexities(self, ctx: PruneContext, engine: LayerwiseEngine, input_ids, size: int,
                            starts: list[int]) -> tuple[dict[int, float], dict]:
        """Shortened LLaMA's PPL criterion: calibration perplexity with only the block at s removed, for each s."""
        nll, _, dense, data = self._removal_nll(ctx, engine, input_ids, size, starts)
        return {s: math.exp(nll[s]) for s in starts}, {"ppl_dense_calibration": math.exp(dense), **data}

    def _taylor_scores(self, ctx: PruneContext, engine: LayerwiseEngine, input_ids, size: int,
                       starts: list[int]) -> tuple[dict[int, float], dict]:
        """Shortened LLaMA's Taylor criterion: Σ |w · ∂L/∂w| over the weights of the block at s, for each s."""
        from .suffix_loss import taylor_layer_scores

        layer_scores, dense = taylor_layer_scores(self._suffix_loss(ctx, engine, input_ids))
        return {s: sum(layer_scores[s:s + size]) for s in starts}, {"ppl_dense_calibration": math.exp(dense),
                                                                     "ppl_data": CALIBRATION_ONLY}


CALIBRATION_ONLY = "the calibration windows (see calibration in prune.json), never the test split"


class QuantizedScoring(Depth):
    """`depth` whose scores come from a bitsandbytes-quantized copy of the model (PruneGPT's quantize +
    bnb_config, there to fit the scoring pass in less memory); the layers they pick are removed from the
    full-precision model, which is the one saved. A configuration of depth (same name, options and facts), run
    from PruneGPT job files (pruning/compat/job_files.py), so not registered."""

    def __init__(self, bnb_config: dict, **values):
        super().__init__(**values)
        self.bnb_config = dict(bnb_config)

    @classmethod
    def build(cls, bnb_config: dict, **arguments) -> "QuantizedScoring":
        return cls(bnb_config, **parse_options(cls.name, cls.OPTIONS, arguments))

    def streaming_refusal(self) -> str | None:
        return ("depth scoring on a bitsandbytes-quantized copy (PruneGPT quantize) loads that whole copy and "
                "cannot stream; set quantize: false to stream")

    def prune(self, ctx: PruneContext) -> dict:
        from importlib.metadata import version

        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from ..core.adapters import get_adapter
        from ..core.surgery import numel, removal_report, remove_layers

        dtype = next(ctx.model.parameters()).dtype
        quantized = AutoModelForCausalLM.from_pretrained(
            ctx.extras["model_path"], quantization_config=BitsAndBytesConfig(**self.bnb_config), dtype=dtype,
            device_map={"": str(ctx.device)}).eval()
        log.info("scoring on the %s model (bitsandbytes %s)", "8-bit" if self.bnb_config.get("load_in_8bit") else "4-bit",
                 version(BNB_PACKAGE))
        report = super().prune(dataclasses.replace(ctx, model=quantized, adapter=get_adapter(quantized)))
        del quantized
        before = numel(ctx.model)
        remove_layers(ctx.model, ctx.adapter, report["removed_layers"])
        report.update(removal_report(before, ctx.model))  # the full-precision model's counts
        report["scored_on"] = {"quantization": self.bnb_config, BNB_PACKAGE: version(BNB_PACKAGE)}
        return report
