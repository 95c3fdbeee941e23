"""Calibration loss of a changed model, continued from a decoder layer's inputs.

Perplexity-influence depth pruning (Quark) and the greedy attention removal of two-stage pruning ask
many times "what is the calibration loss if this part were gone?". The prefix of the model before the
changed layer is unchanged, so the loss is computed from the inputs of that layer, which the shared
`LayerwiseEngine` provides while it walks the layers: only the remaining layers, the final norm and the
head are run. `SuffixLoss.verify` checks once, on one window, that norm + head reproduce the model's own
loss, so an architecture with extra steps after the last layer fails loudly instead of scoring wrongly.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import ArchitectureAdapter
from .engine import LayerwiseEngine


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

    @torch.no_grad()
    def _batch_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> float:
        total = 0.0
        targets = targets.to(hidden.device)
        for row in range(hidden.shape[0]):  # one window at a time keeps the logits small
            logits = self.head(self.norm(hidden[row:row + 1, :-1])).float()
            if self.softcap:
                logits = torch.tanh(logits / self.softcap) * self.softcap
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[row, 1:], reduction="sum").item()
        return total

    @torch.no_grad()
    def verify(self) -> None:
        """Norm + head on the last layer's output must give the model's own loss (one window)."""
        window = self.targets[0][:1]
        device = next(self.model.parameters()).device
        captured = {}
        last = self.adapter.decoder_layers(self.model)[-1]
        handle = last.register_forward_hook(
            lambda _m, _a, out: captured.setdefault("h", out[0] if isinstance(out, (tuple, list)) else out))
        try:
            logits = self.model(input_ids=window.to(device), use_cache=False).logits[:, :-1].float()
        finally:
            handle.remove()
        own = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[0, 1:].to(device), reduction="sum").item()
        ours = self._batch_nll(captured["h"], window)
        if not math.isclose(own, ours, rel_tol=1e-4, abs_tol=1e-3):
            raise SuffixLossError(
                f"this architecture ({self.model.config.model_type}) does more than final norm + head after its last "
                f"layer (loss {own:.6f} vs {ours:.6f}); calibration-loss criteria are not supported for it")

    @torch.no_grad()
    def mean_nll(self, hidden: list[torch.Tensor], layers: Sequence[nn.Module] = ()) -> float:
        """Run `layers` in order on `hidden` (one tensor per calibration batch), then norm and head."""
        engine = self.engine
        saved = engine.hidden
        try:
            for layer in layers:
                home = next(layer.parameters(), torch.empty(0)).device
                layer.to(engine.device)
                engine.hidden = hidden
                hidden = engine.forward_layer(layer)
                layer.to(home)
        finally:
            engine.hidden = saved
        homes = [next(m.parameters(), torch.empty(0)).device for m in (self.norm, self.head)]
        self.norm.to(engine.device), self.head.to(engine.device)
        try:
            total = sum(self._batch_nll(h, t) for h, t in zip(hidden, self.targets))
        finally:
            for module, home in zip((self.norm, self.head), homes):
                module.to(home)
        scored = sum(t.shape[0] * (t.shape[1] - 1) for t in self.targets)
        return total / scored
