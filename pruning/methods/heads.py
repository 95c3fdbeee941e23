"""Attention head pruning (PersLM `--head-reduction`): rank query heads, remove the fraction asked by
slicing q/k/v rows and o columns, so the saved model really is smaller.

Every adapter family: separate q/k/v, or a fused q/k/v projection sliced in its layout (Phi-3, GPT-2's
Conv1D, GPT-NeoX's per-head interleaving).

Grouped-query attention stays valid: with `gqa="query"` one removal unit takes, from every key-value group
of a layer, its least important remaining query head (each group keeps at least one); with
`gqa="group"` (always used for plain multi-head attention) a unit is a whole key-value group with its
query heads (each layer keeps at least one group). Units are ranked over all layers together, so the
layers lose different numbers of heads and the model is saved with the heterogeneous record.

Importance of a query head:
- `magnitude` (PersLM): sqrt(‖W_q rows‖² + ‖W_o columns‖²) of the head, divided by the layer's mean,
  since raw weight norms differ between layers for reasons unrelated to importance;
- `activation`: mean over calibration tokens of ‖W_o,h · attn_h‖, the norm of what the head adds to
  the residual stream (comparable across layers), measured layer by layer with the shared engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MethodError, PruneContext, PruningMethod, no_grad, register
from ..core.options import Option

if TYPE_CHECKING:
    import torch

IMPORTANCE = ("magnitude", "activation")
GQA_MODES = ("query", "group")


def query_weight(layer, adapter, heads: int) -> torch.Tensor:
    """The query rows [heads x head_dim, hidden] of one layer's attention, out of a fused q/k/v where needed."""
    from ..core.adapters import weight_matrix

    head_dim = getattr(adapter.layer_part(layer, adapter.attention), adapter.head_dim_attribute)
    first = weight_matrix(adapter.layer_part(layer, adapter.attention_projections[0]))
    if adapter.qkv_layout == "per_head":  # [q_h k_h v_h] per head
        return first.reshape(heads, 3, head_dim, -1)[:, 0].reshape(heads * head_dim, -1)
    return first[:heads * head_dim]  # q alone, or the q block of [q | k | v]


def magnitude_importance(q_weight: torch.Tensor, o_weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Per query head: sqrt(‖q rows‖² + ‖o columns‖²), divided by the layer mean."""
    q = q_weight.double().reshape(heads, -1).pow(2).sum(1)
    o = o_weight.double().reshape(o_weight.shape[0], heads, -1).pow(2).sum((0, 2))
    score = (q + o).sqrt()
    return score / score.mean()


class HeadContribution:
    """Running mean over tokens of the norm of each head's contribution W_o[:, h] · x_h."""

    def __init__(self, o_weight: torch.Tensor, heads: int):
        import torch

        self.weight = o_weight.float().reshape(o_weight.shape[0], heads, -1)  # [hidden, heads, head_dim]
        self.heads = heads
        self.total = torch.zeros(heads, dtype=torch.float64)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float().reshape(-1, self.heads, self.weight.shape[-1])  # [tokens, heads, head_dim]
        for h in range(self.heads):
            self.total[h] += (x[:, h, :] @ self.weight[:, h, :].T).norm(dim=-1).sum().double().cpu()
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / max(1, self.tokens)


def removal_units(scores: torch.Tensor, kv_heads: int, mode: str) -> list[tuple[float, list[int]]]:
    """The ordered removal units of one layer: (score, query heads removed by this unit).

    Unit scores never decrease along the list, so taking the globally lowest units always takes a
    layer's units in order."""
    heads = scores.numel()
    group = heads // kv_heads
    members = [list(range(g * group, (g + 1) * group)) for g in range(kv_heads)]
    if mode == "query" and group > 1:
        ranked = [sorted(m, key=lambda h: (float(scores[h]), h)) for m in members]
        return [(sum(float(scores[r[j]]) for r in ranked), sorted(r[j] for r in ranked)) for j in range(group - 1)]
    by_group = sorted(members, key=lambda m: (sum(float(scores[h]) for h in m), m[0]))
    return [(sum(float(scores[h]) for h in m), m) for m in by_group[:-1]]


@register
class Heads(PruningMethod):
    name = "heads"
    FAMILY = "head pruning"
    RETRAINS = REMOVES_LAYERS = COMPOSITE = False
    SUPPORTS_MOE = False
    STREAMS = True
    description = "remove the least important attention query heads (GQA-consistent), slicing q/k/v/o"

    OPTIONS = (
        Option("fraction", float, "fraction of attention heads to remove, e.g. 0.25", required=True,
               low=0, high=1, low_open=True, high_open=True, ratio=True),
        Option("importance", str, "head score: weight norms (magnitude) or mean contribution on calibration data "
                                  "(activation)", default="magnitude", choices=IMPORTANCE),
        Option("gqa", str, "removal unit: one query head per key-value group, or whole groups", default="query",
               choices=GQA_MODES),
    )

    def __init__(self, **values):
        super().__init__(**values)
        self.needs_calibration = self.importance == "activation"

    def check_config(self, config) -> None:
        from ..core.surgery import structure_problem

        super().check_config(config)
        problem = structure_problem(config, "head pruning", sub_blocks=False)
        if problem:
            raise MethodError(problem)

    def check_model(self, ctx: PruneContext) -> None:
        self.plan(ctx)

    def plan(self, ctx: PruneContext) -> tuple[list[tuple[int, int]], int]:
        """(query and key-value heads per layer, heads to remove), or a clear error before any change."""
        import torch

        from ..core.heterogeneous import head_counts
        from ..core.surgery import rounded_count

        self.check_config(ctx.model.config)
        counts = [head_counts(layer, ctx.adapter) for layer in ctx.adapter.decoder_layers(ctx.model)]
        total_heads = sum(q for q, _ in counts)
        target = rounded_count(self.fraction, total_heads)
        removable = sum(len(removal_units(torch.zeros(q), kv, self.gqa)) * self._unit_size(q, kv)
                        for q, kv in counts if q)
        if target == 0 or target > removable:
            raise MethodError(f"heads: fraction {self.fraction} of {total_heads} heads is {target} heads; between 1 and "
                              f"{removable} can be removed with gqa={self.gqa} (each layer keeps some attention)")
        return counts, target

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..core.engine import layer_loaded
        from ..core.surgery import numel, removal_report, slice_heads

        counts, target = self.plan(ctx)
        total_heads = sum(q for q, _ in counts)
        scores = self._scores(ctx, counts)
        units = []
        for index, (q, kv) in enumerate(counts):
            if q:
                units += [(score, index, rank, heads) for rank, (score, heads) in
                          enumerate(removal_units(scores[index], kv, self.gqa))]
        removed: dict[int, list[int]] = {}
        taken = 0
        for score, index, rank, heads in sorted(units, key=lambda u: (u[0], u[1], u[2])):
            if abs(taken + len(heads) - target) < abs(taken - target):
                removed.setdefault(index, []).extend(heads)
                taken += len(heads)
        before = numel(ctx.model)
        for index, heads in sorted(removed.items()):
            with layer_loaded(ctx.model, index):  # streamed from disk when the model's layers live there
                slice_heads(ctx.model, ctx.adapter, index, [h for h in range(counts[index][0]) if h not in heads])
        return {"removed_heads": {str(i): sorted(h) for i, h in sorted(removed.items())},
                "heads_before": total_heads, "heads_after": total_heads - taken,
                "heads_removed_percent": round(100.0 * taken / total_heads, 4),
                "scores": {str(i): [round(float(s), 6) for s in scores[i]] for i in sorted(scores)},
                **removal_report(before, ctx.model)}

    def _unit_size(self, query_heads: int, kv_heads: int) -> int:
        group = query_heads // kv_heads
        return kv_heads if self.gqa == "query" and group > 1 else group

    def _scores(self, ctx: PruneContext, counts) -> dict[int, torch.Tensor]:
        from ..core.adapters import weight_matrix
        from ..core.engine import LayerStep, LayerwiseEngine, input_hooks, layer_borrowed

        layers = ctx.adapter.decoder_layers(ctx.model)
        o_path = ctx.adapter.attention_projections[-1]
        if self.importance == "magnitude":
            scores = {}
            for i, layer in enumerate(layers):
                if counts[i][0]:
                    with layer_borrowed(ctx.model, i):
                        scores[i] = magnitude_importance(query_weight(layer, ctx.adapter, counts[i][0]),
                                                         weight_matrix(ctx.adapter.layer_part(layer, o_path)),
                                                         counts[i][0])
            return scores
        input_ids, _ = ctx.calibration()
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(input_ids)
        scores = {}

        def visit(step: LayerStep):
            heads = counts[step.index][0]
            if not heads:
                return None
            o_proj = ctx.adapter.layer_part(step.layer, o_path)
            meter = HeadContribution(weight_matrix(o_proj), heads)
            with input_hooks({"o": o_proj}, lambda _name, x: meter.add(x)):
                outputs = step.forward()
            scores[step.index] = meter.mean
            return outputs

        engine.run(visit, description="head activations", read_only=True)
        return scores
