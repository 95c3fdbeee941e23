"""FLAP (An et al. 2024): width pruning by input fluctuation, with an adaptive per-layer structure and bias
compensation, so that no retraining is needed.

The shared layer-wise engine runs the dense model over the calibration windows and records, for every layer,
the per-channel mean and variance of the inputs of the attention output projection (o_proj) and of the FFN
output projection (down_proj) (pruning/methods/flap_fluctuation.py has the maths). Removal units are ranked:
- attention: a whole key-value group (its query heads, its k/v head, its o_proj columns), so grouped-query
  attention stays valid and the k/v projections shrink too; its score is the mean standardised score of its
  o_proj input channels (FLAP scores a head the same way; its code covers plain multi-head attention only);
- FFN: one channel (a gate/up row and a down_proj column).
`structure="al-am"` (the paper's default) ranks every unit of every layer together and removes the lowest
ones until the parameters removed come closest to `fraction` of all attention + FFN parameters, each unit
weighted by its real parameter count; each layer keeps at least one key-value group and one FFN channel
(FLAP may empty a sub-block; this format has no biased stand-in for a removed one). `"ul-um"` removes the
same fraction of key-value groups and of FFN channels from every layer.

With `compensation` (default) the removed channels' mean contribution, W[:, removed] · mean(x[removed]),
becomes a bias of o_proj / down_proj (created where the base model has none and recorded in the heterogeneous
format, pruning/core/heterogeneous.py). The slicing is pruning/core/surgery.py's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MethodError, PruneContext, PruningMethod, no_grad, register
from ..core.options import Option

if TYPE_CHECKING:
    from torch import nn

STRUCTURES = ("al-am", "ul-um")
METRICS = ("wifv", "ifv", "wifn")  # pruning.methods.flap_fluctuation.METRICS, restated here to keep this module torch-free


def unit_parameters(layer: nn.Module, adapter) -> tuple[int, int]:
    """(parameters of one key-value group of the attention, parameters of one FFN channel) of a layer."""
    from ..core.heterogeneous import head_counts

    def row(linear) -> int:
        return linear.in_features + (linear.bias is not None)

    q, k, v, o = (adapter.layer_part(layer, path) for path in adapter.attention_projections)
    heads, kv_heads = head_counts(layer, adapter)
    head_dim = getattr(adapter.layer_part(layer, adapter.attention), adapter.head_dim_attribute)
    group = heads // kv_heads
    attention = head_dim * (group * (row(q) + o.out_features) + row(k) + row(v))
    *inputs, down = (adapter.layer_part(layer, path) for path in adapter.mlp_projections)
    return attention, sum(row(linear) for linear in inputs) + down.out_features


@register
class Flap(PruningMethod):
    name = "flap"
    FAMILY = "width pruning (FLAP)"
    RETRAINS = REMOVES_LAYERS = COMPOSITE = False
    SUPPORTS_MOE = False
    STREAMS = True
    needs_calibration = True
    description = ("FLAP width pruning: fluctuation-ranked key-value groups and FFN channels removed with an "
                   "adaptive per-layer structure and bias compensation (no retraining)")

    OPTIONS = (
        Option("fraction", float, "fraction of the attention + FFN parameters to remove, e.g. 0.2", required=True,
               low=0, high=1, low_open=True, high_open=True, ratio=True),
        Option("metric", str, "channel score: weighted input fluctuation (wifv, the paper's), input fluctuation "
                              "(ifv) or weighted input norm (wifn)", default="wifv", choices=METRICS),
        Option("structure", str, "al-am: one global ranking sets every layer's width (the paper's); ul-um: the same "
                                 "fraction in every layer", default="al-am", choices=STRUCTURES),
        Option("compensation", bool, "add the removed channels' mean contribution as an output bias",
               default=True),
    )

    def check_model(self, ctx: PruneContext) -> None:
        self.plan(ctx)

    def plan(self, ctx: PruneContext) -> dict:
        """Per-layer sizes and unit costs, and the parameter target, or a clear error before any change."""
        from ..core.heterogeneous import attention_removed, feed_forward_removed, ffn_width, head_counts
        from ..core.surgery import StructureError, require_sliceable

        try:
            require_sliceable(ctx.model, ctx.adapter, "flap")
        except StructureError as exc:
            raise MethodError(str(exc)) from None
        layers = ctx.adapter.decoder_layers(ctx.model)
        if any(attention_removed(layer, ctx.adapter) or feed_forward_removed(layer, ctx.adapter) for layer in layers):
            raise MethodError("flap: the model has removed attention or FFN sub-blocks; run it on intact layers")
        sizes = [(*head_counts(layer, ctx.adapter), ffn_width(layer, ctx.adapter)) for layer in layers]
        costs = [unit_parameters(layer, ctx.adapter) for layer in layers]
        total = sum(kv * a + ffn * f for (_, kv, ffn), (a, f) in zip(sizes, costs))
        removable = sum((kv - 1) * a + (ffn - 1) * f for (_, kv, ffn), (a, f) in zip(sizes, costs))
        target = round(self.fraction * total)
        if target > removable:
            raise MethodError(f"flap: fraction {self.fraction} asks for {target} of {total} attention + FFN "
                              f"parameters; at most {removable} can go (each layer keeps one key-value group and one FFN channel)")
        if self.structure == "ul-um" and all(int(self.fraction * kv + 0.5) == 0 and int(self.fraction * ffn + 0.5) == 0
                                             for _, kv, ffn in sizes):
            raise MethodError(f"flap: fraction {self.fraction} removes no key-value group and no FFN channel per layer")
        if self.structure == "al-am" and 2 * target < min(min(c) for c in costs):
            raise MethodError(f"flap: fraction {self.fraction} is {target} parameters, less than half the smallest "
                              "removable unit")
        return {"sizes": sizes, "costs": costs, "total": total, "target": target}

    @no_grad
    def prune(self, ctx: PruneContext) -> dict:
        from ..core.heterogeneous import layer_structure
        from ..core.surgery import numel, removal_report

        plan = self.plan(ctx)
        statistics, scores = self._statistics(ctx, plan)
        removed = self._select(plan, scores)
        before = numel(ctx.model)
        added = self._apply(ctx, plan, statistics, removed)
        removed_parameters = sum(len(r["attention"]) * attention + len(r["ffn"]) * ffn
                                 for r, (attention, ffn) in zip(removed, plan["costs"]))
        return {"structure": self.structure, "metric": self.metric, "compensation": self.compensation,
                "target_parameters": plan["target"], "attention_ffn_parameters": plan["total"],
                "attention_ffn_removed_percent": round(100.0 * removed_parameters / plan["total"], 4),
                "removed_kv_groups": {str(i): r["attention"] for i, r in enumerate(removed) if r["attention"]},
                "removed_ffn_channels": {str(i): len(r["ffn"]) for i, r in enumerate(removed)},
                "layer_shapes": [shape.to_record() for shape in layer_structure(ctx.model, ctx.adapter)],
                "bias_parameters_added": added, **removal_report(before, ctx.model)}

    def _statistics(self, ctx: PruneContext, plan: dict) -> tuple[list[dict], list[dict]]:
        """Per layer, the input fluctuation of o_proj ("attention") and down_proj ("ffn") on the dense model, and
        the standardised score of every key-value group and FFN channel (computed while the layer is loaded)."""
        from ..core.engine import InputMoments, LayerStep, LayerwiseEngine, input_hooks

        input_ids, _ = ctx.calibration()
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(input_ids)
        paths = {"attention": ctx.adapter.attention_projections[-1], "ffn": ctx.adapter.mlp_projections[-1]}
        statistics, scores = [], []

        def visit(step: LayerStep):
            meters = {kind: InputMoments(device="cpu") for kind in paths}
            modules = {kind: ctx.adapter.layer_part(step.layer, path) for kind, path in paths.items()}
            with input_hooks(modules, lambda kind, x: meters[kind].add(x)):
                outputs = step.forward()
            statistics.append(meters)
            scores.append(self._unit_scores(meters, modules, plan["sizes"][step.index][1]))
            return outputs

        engine.run(visit, description="input fluctuation", read_only=True)
        return statistics, scores

    def _unit_scores(self, meters: dict, modules: dict, kv_heads: int) -> dict:
        """One layer's standardised score of every key-value group and every FFN channel."""
        from .flap_fluctuation import channel_scores, standardized, unit_scores

        o, down = (modules[kind].weight.cpu() for kind in ("attention", "ffn"))  # beside the statistics (on the CPU)
        attention = standardized(channel_scores(self.metric, meters["attention"], o) ** 2)
        return {"attention": unit_scores(attention, o.shape[1] // kv_heads),
                "ffn": standardized(channel_scores(self.metric, meters["ffn"], down))}

    def _select(self, plan: dict, scores: list[dict]) -> list[dict]:
        """Per layer, the sorted key-value groups and FFN channels to remove."""
        from .flap_fluctuation import Unit, select_global, select_uniform

        if self.structure == "ul-um":
            return [{kind: select_uniform(layer[kind], self.fraction) for kind in ("attention", "ffn")}
                    for layer in scores]
        units = [Unit(kind, index, unit, float(score), plan["costs"][index][kind == "ffn"])
                 for index, layer in enumerate(scores) for kind in ("attention", "ffn")
                 for unit, score in enumerate(layer[kind])]
        removed = [{"attention": [], "ffn": []} for _ in scores]
        for unit in select_global(units, plan["target"]):
            removed[unit.layer][unit.kind].append(unit.index)
        return [{kind: sorted(indices) for kind, indices in layer.items()} for layer in removed]

    def _apply(self, ctx: PruneContext, plan: dict, statistics: list[dict], removed: list[dict]) -> int:
        """Slice every layer as selected and add the compensation biases; returns the bias parameters added."""
        from ..core.engine import layer_loaded

        added = 0
        for index, layer in enumerate(ctx.adapter.decoder_layers(ctx.model)):
            with layer_loaded(ctx.model, index):  # streamed from disk when the model's layers live there
                added += self._apply_layer(ctx, plan, statistics, removed, index, layer)
        return added

    def _apply_layer(self, ctx: PruneContext, plan: dict, statistics: list[dict], removed: list[dict], index: int,
                     layer: nn.Module) -> int:
        """Slice one layer and add its compensation biases; returns the bias parameters added."""
        import torch

        from .flap_fluctuation import compensation_bias
        from ..core.heterogeneous import add_output_bias
        from ..core.surgery import slice_feed_forward, slice_heads

        adapter, added = ctx.adapter, 0
        heads, kv_heads, ffn = plan["sizes"][index]
        group = heads // kv_heads
        o, down = (adapter.layer_part(layer, path) for path in (adapter.attention_projections[-1],
                                                                 adapter.mlp_projections[-1]))
        head_dim = o.in_features // heads
        gone_heads = [h for g in removed[index]["attention"] for h in range(g * group, (g + 1) * group)]
        columns = {"attention": torch.tensor([h * head_dim + d for h in gone_heads for d in range(head_dim)],
                                             dtype=torch.long),
                   "ffn": torch.tensor(removed[index]["ffn"], dtype=torch.long)}
        biases = {kind: compensation_bias(linear.weight, statistics[index][kind].mean, columns[kind])
                  for kind, linear in (("attention", o), ("ffn", down))
                  if self.compensation and columns[kind].numel()}
        if gone_heads:
            slice_heads(ctx.model, adapter, index, [h for h in range(heads) if h not in set(gone_heads)])
        if removed[index]["ffn"]:
            slice_feed_forward(ctx.model, adapter, index,
                               [c for c in range(ffn) if c not in set(removed[index]["ffn"])])
        for kind, path in (("attention", adapter.attention_projections[-1]), ("ffn", adapter.mlp_projections[-1])):
            if kind in biases:
                linear = adapter.layer_part(layer, path)
                added += 0 if linear.bias is not None else linear.out_features
                add_output_bias(linear, biases[kind])
        return added
