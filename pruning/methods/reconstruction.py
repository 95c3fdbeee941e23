"""Block-wise reconstruction (`reconstruct=blocks`, after EBFT, Guo et al. 2024), calibration data only: once a
decoder layer is pruned, its kept weights are tuned with Adam so that the block's outputs match the dense model's
outputs for the same calibration windows, the masks fixed (zeros stay zeros).

The target is the dense model's own stream (each dense layer run on the dense previous layer's outputs), so the
tuning also corrects the error that the earlier pruned layers pass on; the input is the pruned model's stream, as
at inference. One step is one engine batch (`batch_size` calibration windows), the batches taken in order, so a
run is deterministic. A tuned layer whose error on the calibration windows is not lower than before is put back
as it was pruned (never worse), and the report says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..core.options import Option

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..core.engine import LayerStep, LayerwiseEngine

NONE, BLOCKS = "none", "blocks"
RECONSTRUCTIONS = (NONE, BLOCKS)

RECONSTRUCTION_OPTIONS = (
    Option("reconstruct", str, "blocks: after each decoder layer is pruned, tune its kept weights (masks fixed) so "
           "its outputs match the dense model's on the calibration windows (EBFT-style block reconstruction; "
           "calibration data only)", default=NONE, choices=RECONSTRUCTIONS),
    Option("reconstruct_steps", int, "reconstruct=blocks: Adam steps per decoder layer, one calibration batch each",
           default=64, low=1),
    Option("reconstruct_lr", float, "reconstruct=blocks: Adam's learning rate", default=1e-4, low=0, low_open=True),
)
RECONSTRUCTION_NAMES = tuple(option.name for option in RECONSTRUCTION_OPTIONS)


def relative_error(outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    """‖outputs − targets‖² / ‖targets‖² over every batch (float64 sums): the block's reconstruction error."""
    import torch

    error = sum(float(((o.double() - t.double()) ** 2).sum()) for o, t in zip(outputs, targets))
    scale = sum(float((t.double() ** 2).sum()) for t in targets)
    return error / scale if scale else (0.0 if error == 0 else float(torch.inf))


def tune_kept_weights(run_batch: Callable[[int], torch.Tensor], weights: list[nn.Parameter],
                      targets: list[torch.Tensor], steps: int, learning_rate: float) -> None:
    """Adam on `weights` for `steps` steps, step i fitting `run_batch(i mod batches)` to `targets[i mod batches]`
    (mean squared error relative to the target's mean square); a weight that is zero now keeps a zero gradient
    and is zeroed again after every step, so the sparsity pattern is exactly the one pruning chose."""
    import torch

    kept = [weight != 0 for weight in weights]
    optimizer = torch.optim.Adam(weights, lr=learning_rate)
    for step in range(steps):
        index = step % len(targets)
        optimizer.zero_grad(set_to_none=True)
        target = targets[index]
        loss = ((run_batch(index) - target) ** 2).mean() / (target ** 2).mean().clamp_min(1e-12)
        loss.backward()
        for weight, mask in zip(weights, kept):
            weight.grad.mul_(mask)
        optimizer.step()
        with torch.no_grad():
            for weight, mask in zip(weights, kept):
                weight.mul_(mask)


def _as_float32(value):
    """Floating tensors (inside tuples, lists and dicts too) as float32; anything else unchanged."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_as_float32(v) for v in value)
    if isinstance(value, dict):
        return {k: _as_float32(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ReconstructionSettings:
    steps: int
    learning_rate: float


class BlockReconstruction:
    """The dense stream beside the engine's pruned one, and the tuning of each pruned layer to it. Call
    `dense_outputs(step)` while the layer is still dense, then `tune(step, targets, dense)` once it is pruned:
    it returns the tuned layer's outputs (the next layer's inputs)."""

    def __init__(self, engine: LayerwiseEngine, settings: ReconstructionSettings):
        self.engine = engine
        self.settings = settings
        self.dense_hidden: list[torch.Tensor] | None = None
        self.layers: list[dict] = []
        self.seconds = 0.0

    def dense_outputs(self, step: LayerStep) -> list[torch.Tensor]:
        """The still-dense layer run on the dense model's inputs to it (at layer 0 the engine's captured ones)."""
        if self.dense_hidden is None:
            self.dense_hidden = list(self.engine.hidden)
        self.dense_hidden = self.engine.forward_layer(step.layer, self.dense_hidden)
        return self.dense_hidden

    def tune(self, step: LayerStep, targets: dict[str, nn.Module], dense: list[torch.Tensor]) -> list[torch.Tensor]:
        import torch

        from ..core.engine import hidden_of

        started = time.perf_counter()
        layer, engine = step.layer, self.engine
        pruned_state = [module.weight.detach().clone() for module in targets.values()]
        before = relative_error(step.forward(), dense)
        dtypes = {name: p.dtype for name, p in layer.named_parameters()}  # a layer may mix them (fp32 norms)
        requires = {name: p.requires_grad for name, p in layer.named_parameters()}
        layer.float()
        inputs = [_as_float32((h, a, k)) for h, a, k in zip(engine.hidden, engine.layer_args, engine.layer_kwargs)]
        dense32 = [t.float() for t in dense]
        trained = [module.weight for module in targets.values()]  # the float32 parameters (plain linears only)
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
        for weight in trained:
            weight.requires_grad_(True)

        def run_batch(index: int) -> torch.Tensor:
            hidden, args, kwargs = inputs[index]
            return hidden_of(layer(hidden, *args, **kwargs))

        try:
            with torch.enable_grad():
                tune_kept_weights(run_batch, trained, dense32, self.settings.steps, self.settings.learning_rate)
        finally:
            for name, parameter in layer.named_parameters():
                parameter.requires_grad_(requires[name])
                parameter.data = parameter.data.to(dtypes[name])
        outputs = step.forward()
        after = relative_error(outputs, dense)
        record = {"layer": step.index, "error_pruned": round(before, 6), "error_tuned": round(after, 6)}
        if not after < before:
            with torch.no_grad():
                for module, state in zip(targets.values(), pruned_state):
                    module.weight.copy_(state)
            outputs = step.forward()
            record["kept"] = "pruned (tuning did not lower the error)"
        self.layers.append(record)
        self.seconds += time.perf_counter() - started
        return outputs

    def report(self) -> dict:
        """The settings, each layer's relative output error against the dense stream before and after tuning, and
        the time spent tuning (seconds)."""
        return {"kind": BLOCKS, "steps": self.settings.steps, "learning_rate": self.settings.learning_rate,
                "target": "dense model's block outputs on the same calibration windows",
                "per_layer": self.layers, "seconds": round(self.seconds, 3)}
