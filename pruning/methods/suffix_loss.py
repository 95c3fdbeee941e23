"""Calibration loss of a changed model, continued from a decoder layer's inputs, and its gradient.

Perplexity-influence depth pruning (Quark, and Shortened LLaMA's one-block-removed PPL) and the greedy
attention removal of two-stage pruning ask many times "what is the calibration loss if this part were
gone?". The prefix of the model before the changed layer is unchanged, so the loss is computed from the
inputs of that layer, which the shared `LayerwiseEngine` provides while it walks the layers: only the
remaining layers, the final norm and the head are run (`run_layers` runs a stretch of layers from stored
inputs, so two-stage's rounds walk on from the inputs of their first candidate). `SuffixLoss.verify` checks
once, on one window, that norm + head reproduce the model's own loss, so an architecture with extra steps
after the last layer fails loudly instead of scoring wrongly.

Shortened LLaMA's Taylor criterion estimates the same loss change to first order instead:
`taylor_layer_scores` back-propagates the calibration loss one layer at a time (each layer re-run with
gradients from its stored input), so only one layer's graph and one batch's layer inputs are held at once.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.adapters import ArchitectureAdapter
from ..core.engine import LayerwiseEngine, hidden_of, layer_borrowed, layers_on_demand


class SuffixLossError(ValueError):
    pass


class SuffixLoss:
    """Mean next-token NLL on the calibration windows, from hidden states before some layer."""

    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, engine: LayerwiseEngine,
                 input_ids: torch.Tensor):
        self.model, self.adapter, self.engine = model, adapter, engine
        self.norm = adapter.module(model, adapter.final_norm)
        self.head = adapter.module(model, adapter.lm_head)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        size = engine.batch_size
        self.targets = [input_ids[s:s + size] for s in range(0, input_ids.shape[0], size)]

    def _window_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed next-token NLL of one window ([1, seq, hidden] in); differentiable when grad is enabled."""
        logits = self.head(self.norm(hidden[:, :-1])).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[0, 1:], reduction="sum")

    @torch.no_grad()
    def _batch_nlls(self, hidden: torch.Tensor, targets: torch.Tensor) -> list[float]:
        targets = targets.to(hidden.device)
        # one window at a time keeps the logits small
        return [self._window_nll(hidden[row:row + 1], targets[row:row + 1]).item() for row in range(hidden.shape[0])]

    def nll_gradient(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Summed NLL of a batch from the last layer's output, and its gradient with respect to that output
        (norm and head on the compute device meanwhile; their own gradients are not computed)."""
        targets = targets.to(hidden.device)
        total, grads = 0.0, []
        with self._head_on_device(), torch.enable_grad():
            for row in range(hidden.shape[0]):
                h = hidden[row:row + 1].detach().requires_grad_(True)
                nll = self._window_nll(h, targets[row:row + 1])
                grads.append(torch.autograd.grad(nll, h)[0])
                total += nll.item()
        return total, torch.cat(grads)

    @contextmanager
    def _head_on_device(self):
        modules = (self.norm, self.head)
        homes = [next(m.parameters(), torch.empty(0)).device for m in modules]
        for module in modules:
            module.to(self.engine.device)
        try:
            yield
        finally:
            for module, home in zip(modules, homes):
                module.to(home)

    @torch.no_grad()
    def verify(self) -> None:
        """Norm + head on the last layer's output must give the model's own loss (one window)."""
        window = self.targets[0][:1]
        device = next(self.model.parameters()).device
        captured = {}
        last = self.adapter.decoder_layers(self.model)[-1]
        def keep(_module, _inputs, output) -> None:  # returns None: a forward hook's value would replace the output
            captured.setdefault("h", hidden_of(output))

        handle = last.register_forward_hook(keep)
        try:
            with layers_on_demand(self.model):
                logits = self.model(input_ids=window.to(device), use_cache=False).logits[:, :-1].float()
        finally:
            handle.remove()
        own = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[0, 1:].to(device), reduction="sum").item()
        ours = sum(self._batch_nlls(captured["h"], window))
        if not math.isclose(own, ours, rel_tol=1e-4, abs_tol=1e-3):
            raise SuffixLossError(
                f"this architecture ({self.model.config.model_type}) does more than final norm + head after its last "
                f"layer (loss {own:.6f} vs {ours:.6f}); calibration-loss criteria are not supported for it")

    @torch.no_grad()
    def run_layers(self, hidden: list[torch.Tensor], layers: Sequence[nn.Module]) -> list[torch.Tensor]:
        """Run `layers` in order on `hidden` (one tensor per calibration batch), each on the compute device
        meanwhile, with the engine's layer arguments; the engine's own walk state is left as it was. Layers
        that live on disk are borrowed one at a time (read, run, freed unchanged)."""
        engine = self.engine
        saved = engine.hidden
        position = {id(layer): index for index, layer in enumerate(self.adapter.decoder_layers(self.model))}
        try:
            for layer in layers:
                with layer_borrowed(self.model, position[id(layer)]):
                    home = next(layer.parameters(), torch.empty(0)).device
                    layer.to(engine.device)
                    engine.hidden = hidden
                    hidden = engine.forward_layer(layer)
                    layer.to(home)
        finally:
            engine.hidden = saved
        return hidden

    @torch.no_grad()
    def window_nlls(self, hidden: list[torch.Tensor], layers: Sequence[nn.Module] = ()) -> list[list[float]]:
        """Run `layers` in order on `hidden` (one tensor per calibration batch), then norm and head: the summed
        next-token NLL of every window, batch by batch (a search compares candidates window by window)."""
        hidden = self.run_layers(hidden, layers)
        with self._head_on_device():
            return [self._batch_nlls(h, t) for h, t in zip(hidden, self.targets)]

    def mean_of(self, nlls: list[list[float]]) -> float:
        """Mean next-token NLL per scored token from `window_nlls`' result."""
        return sum(sum(batch) for batch in nlls) / self.scored_tokens

    def mean_nll(self, hidden: list[torch.Tensor], layers: Sequence[nn.Module] = ()) -> float:
        """Run `layers` in order on `hidden` (one tensor per calibration batch), then norm and head."""
        return self.mean_of(self.window_nlls(hidden, layers))

    @property
    def scored_tokens(self) -> int:
        return sum(t.shape[0] * (t.shape[1] - 1) for t in self.targets)


@contextmanager
def _gradients_on(parameters: Sequence[nn.Parameter]):
    """Let autograd differentiate with respect to `parameters` for a while, whatever their requires_grad."""
    before = [p.requires_grad for p in parameters]
    for p in parameters:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p, flag in zip(parameters, before):
            p.requires_grad_(flag)


def block_weights(layer: nn.Module) -> list[nn.Parameter]:
    """The weights a block's Taylor score sums over: every parameter named `*weight` (projection matrices and
    norm scales; biases are not counted, as in the Shortened LLaMA authors' code)."""
    return [p for name, p in layer.named_parameters() if name.endswith("weight")]


def taylor_layer_scores(suffix: SuffixLoss) -> tuple[list[float], float]:
    """First-order Taylor importance of every decoder layer (Kim et al. 2024, "Shortened LLaMA"):
    Σ |w · ∂L/∂w| over the layer's weights (`block_weights`), with L the mean next-token NLL over all the
    calibration windows of `suffix`; the gradient is summed over batches before the absolute value is
    taken. Returns the scores (one per layer, in order) and L itself.

    One batch at a time: a forward walk stores every layer's input, then the layers are re-run in reverse
    with gradients, each passing the gradient of its input down to the layer before. Exact (the same
    gradient as back-propagating through the whole model), without holding the whole graph."""
    model, adapter, engine = suffix.model, suffix.adapter, suffix.engine
    layers = adapter.decoder_layers(model)
    weights = [block_weights(layer) for layer in layers]
    sums = [[torch.zeros_like(w, dtype=torch.float32) for w in ws] for ws in weights]  # Σ_batches ∂L/∂w
    scored, total_nll = suffix.scored_tokens, 0.0
    batches = suffix.targets
    if engine.progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="depth taylor", unit="batch")
    for batch in batches:
        walk = LayerwiseEngine(model, adapter, engine.device, engine.batch_size, progress=False)
        walk.capture(batch)
        args, kwargs = walk.layer_args[0], walk.layer_kwargs[0]
        inputs: list[torch.Tensor] = []
        last = []

        def keep_input(step):
            inputs.append(step.inputs[0])
            outputs = step.forward()
            if step.index == len(layers) - 1:
                last.append(outputs[0])
            return outputs

        walk.run(keep_input, description="depth taylor forward", read_only=True)
        nll, grad = suffix.nll_gradient(last[0], batch)
        total_nll += nll
        grad = grad / scored
        for index in range(len(layers) - 1, -1, -1):
            layer = layers[index]
            home = next(layer.parameters(), torch.empty(0)).device
            layer.to(engine.device)
            x = inputs.pop().detach().requires_grad_(True)
            with torch.enable_grad(), _gradients_on(weights[index]):
                out = hidden_of(layer(x, *args, **kwargs))
                grad, *weight_grads = torch.autograd.grad(out, [x, *weights[index]], grad, allow_unused=True)
            for total, g in zip(sums[index], weight_grads):
                if g is not None:  # a weight the forward never used has no influence
                    total += g.float().to(total.device)
            layer.to(home)
    scores = [sum(float((w.detach().float() * g.to(w.device)).abs().sum()) for w, g in zip(ws, gs))
              for ws, gs in zip(weights, sums)]
    return scores, total_nll / scored
