"""The one layer-wise calibration engine shared by every calibration-based method.

It captures the inputs of the first decoder layer for all calibration samples, with every positional
and keyword argument the model passes to it (attention mask, which may be None, position ids,
`position_embeddings`, cache disabled), then walks the decoder layers one at a time: the method
inspects or changes the layer, and the engine re-runs the (changed) layer to produce the next layer's
inputs. Only the current layer and the activations live on the compute device, so a model kept on
the CPU can be pruned on a GPU (offload mode).

A model may keep its decoder layers on disk (pruning/core/streaming.py): it then carries a `LayerSource` under
LAYER_SOURCE, and the engine asks it to `load(index)` each layer right before visiting it and to
`release(index)` it right after, so only one layer is in memory at a time (out-of-core pruning). Code that only
reads a layer (a search running the layers after a candidate) borrows it with `layer_borrowed`, which frees it
without writing it back; `layers_on_demand` lets the model's own forward run through such a model.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import ArchitectureAdapter, ExpertLinear, feed_expert_inputs
from .protocols import Calibration


LAYER_SOURCE = "pruning_layer_source"  # attribute of a model whose decoder layers live on disk


class LayerSource(Protocol):
    """Where the weights of a model's decoder layers live when they are not in memory."""

    def load(self, index: int) -> None:
        """Materialise decoder layer `index` (its current weights) in the model."""

    def release(self, index: int) -> None:
        """Keep decoder layer `index` as it is now (write it out) and free its memory."""

    def discard(self, index: int) -> None:
        """Free decoder layer `index` without writing it out (it was only read)."""

    def is_loaded(self, index: int) -> bool:
        """Whether decoder layer `index` is materialised now."""


def layer_source(model: nn.Module) -> LayerSource | None:
    """The model's layer source, or None for a model held entirely in memory."""
    return getattr(model, LAYER_SOURCE, None)


@contextmanager
def layer_loaded(model: nn.Module, index: int):
    """Decoder layer `index` materialised while the context is open, then kept as it is and freed (a
    no-op for a model held in memory). A failure inside skips the release: the run's output is discarded."""
    source = layer_source(model)
    if source is not None:
        source.load(index)
    yield
    if source is not None:
        source.release(index)


@contextmanager
def layer_borrowed(model: nn.Module, index: int):
    """Decoder layer `index` materialised while the context is open, to be read only, then freed unchanged on
    disk (a no-op for a model held in memory; a layer already loaded by an enclosing visit stays loaded)."""
    source = layer_source(model)
    borrow = source is not None and not source.is_loaded(index)
    if borrow:
        source.load(index)
    try:
        yield
    finally:
        if borrow:
            source.discard(index)


@contextmanager
def layers_on_demand(model: nn.Module):
    """Let the model's own forward run when its decoder layers live on disk: each layer is borrowed right
    before it runs and freed right after, so one layer is in memory at a time (a no-op for a model in memory)."""
    source = layer_source(model)
    if source is None:
        yield
        return
    from .adapters import get_adapter

    handles, borrowed = [], set()
    for index, layer in enumerate(get_adapter(model).decoder_layers(model)):
        def borrow(_module, _args, _index=index):
            if not source.is_loaded(_index):
                source.load(_index)
                borrowed.add(_index)

        def free(_module, _args, _output, _index=index):
            if _index in borrowed:
                borrowed.discard(_index)
                source.discard(_index)
        handles += [layer.register_forward_pre_hook(borrow), layer.register_forward_hook(free)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for index in sorted(borrowed):  # a forward that failed inside a layer
            source.discard(index)


class _InputsCaptured(Exception):
    """Raised by the capture hook to stop the model's forward right before layer 0."""


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to_device(v, device) for v in value)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _share_equal(value, previous):
    """Reuse the previous batch's tensor when equal, so identical masks and rotary tables are stored once."""
    if isinstance(value, torch.Tensor) and isinstance(previous, torch.Tensor):
        if value.shape == previous.shape and value.dtype == previous.dtype and torch.equal(value, previous):
            return previous
        return value
    if isinstance(value, tuple) and isinstance(previous, tuple) and len(value) == len(previous):
        return tuple(_share_equal(v, p) for v, p in zip(value, previous))
    return value


def hidden_of(output):
    """A decoder layer's hidden states from whatever it returns (a tensor, or a tuple led by them)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _move_outside_layers(model: nn.Module, layers: nn.ModuleList, device) -> None:
    """Move every parameter and buffer that is not inside a decoder layer (embeddings, rotary tables,
    final norm, head) to `device`, leaving the layers where they are."""
    inside = {id(t) for t in layers.parameters()} | {id(t) for t in layers.buffers()}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None and id(tensor) not in inside and tensor.device != torch.device(device):
                    tensor.data = tensor.data.to(device)


@dataclass
class LayerStep:
    """What a method sees for one decoder layer."""

    index: int
    name: str
    layer: nn.Module
    engine: "LayerwiseEngine"

    def forward(self) -> list[torch.Tensor]:
        """Run this layer on its current inputs (with whatever hooks are registered)."""
        return self.engine.forward_layer(self.layer)

    @property
    def inputs(self) -> list[torch.Tensor]:
        return self.engine.hidden


class LayerwiseEngine:
    def __init__(self, model: nn.Module, adapter: ArchitectureAdapter, device="cpu",
                 batch_size: int = Calibration.batch_size, progress: bool = True):
        self.model = model
        self.adapter = adapter
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.layers = adapter.decoder_layers(model)
        self.hidden: list[torch.Tensor] = []
        self.layer_args: list[tuple] = []
        self.layer_kwargs: list[dict] = []

    @torch.no_grad()
    def capture(self, input_ids: torch.Tensor) -> None:
        """Record layer 0's inputs for every batch of calibration windows."""
        first = self.layers[0]
        captured = {}

        def hook(_module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            raise _InputsCaptured

        home = next(self.model.parameters()).device
        _move_outside_layers(self.model, self.layers, self.device)
        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        self.hidden, self.layer_args, self.layer_kwargs = [], [], []
        try:
            for start in range(0, input_ids.shape[0], self.batch_size):
                batch = input_ids[start:start + self.batch_size].to(self.device)
                try:
                    self.model(input_ids=batch, use_cache=False)
                except _InputsCaptured:
                    pass
                else:
                    raise RuntimeError("the first decoder layer was never called; is the adapter right?")
                args, kwargs = captured["args"], dict(captured["kwargs"])
                kwargs.pop("past_key_values", None)
                kwargs.pop("past_key_value", None)
                kwargs["use_cache"] = False
                if self.layer_kwargs:
                    previous = self.layer_kwargs[-1]
                    kwargs = {k: _share_equal(v, previous.get(k)) for k, v in kwargs.items()}
                    args = _share_equal(tuple(args[1:]), self.layer_args[-1])
                else:
                    args = tuple(args[1:])
                self.hidden.append(captured["args"][0].detach() if captured["args"] else kwargs.pop("hidden_states"))
                self.layer_args.append(args)
                self.layer_kwargs.append(kwargs)
        finally:
            handle.remove()
            _move_outside_layers(self.model, self.layers, home)

    @torch.no_grad()
    def forward_layer(self, layer: nn.Module, hidden: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """`layer`'s outputs for every batch of its current inputs, or of `hidden` (another stream of the same
        windows, e.g. the dense model's, with the same keyword arguments)."""
        return [
            hidden_of(layer(states, *args, **kwargs))
            for states, args, kwargs in zip(self.hidden if hidden is None else hidden, self.layer_args,
                                            self.layer_kwargs)
        ]

    @torch.no_grad()
    def forward_in_lockstep(self, layer: nn.Module, stops: dict[str, nn.Module],
                            on_stop: Callable[[str, list[torch.Tensor]], None]) -> list[torch.Tensor]:
        """Run `layer` on every batch, all batches pausing before each module in `stops`: once every batch
        has reached `name`, `on_stop(name, [its input in each batch])` runs (it may prune the module) and
        the batches go on. So each module can be changed from all windows' statistics within one forward,
        while the layer still runs in batches small enough for the caches (each batch is a greenlet:
        cooperative, in one thread, in a fixed order, so the result is deterministic)."""
        from greenlet import getcurrent, greenlet

        class Arrival:
            def __init__(self, name, x):
                self.name, self.x = name, x

        def pause(_module, args, _name):
            getcurrent().parent.switch(Arrival(_name, args[0].detach()))

        def batch_forward(hidden, args, kwargs):
            return hidden_of(layer(hidden, *args, **kwargs))

        handles = [module.register_forward_pre_hook(lambda m, a, _name=name: pause(m, a, _name))
                   for name, module in stops.items()]
        try:
            batches = [greenlet(batch_forward) for _ in self.hidden]
            states = [g.switch(h, a, k) for g, h, a, k in zip(batches, self.hidden, self.layer_args, self.layer_kwargs)]
            while isinstance(states[0], Arrival):
                names = {state.name if isinstance(state, Arrival) else None for state in states}
                if len(names) != 1:
                    raise RuntimeError(f"the batches of one layer reached different modules ({sorted(map(str, names))}); "
                                       "lockstep needs every batch to run the same modules in the same order")
                on_stop(states[0].name, [state.x for state in states])
                states = [g.switch() for g in batches]
            if any(isinstance(state, Arrival) for state in states):
                raise RuntimeError("the batches of one layer ran different modules; lockstep cannot pair them")
            return states
        finally:
            for handle in handles:
                handle.remove()

    def run(self, visit: Callable[[LayerStep], list[torch.Tensor] | None], description: str = "layers", *,
            read_only: bool = False) -> None:
        """Call `visit` on every decoder layer in order, then propagate the layer's new outputs.

        `visit` may return the layer's outputs when it already computed them on the final layer, which
        saves one forward pass; otherwise the engine re-runs the layer (but not the last one, whose outputs
        feed nothing). `read_only` promises that `visit` changes no weight (a scoring pass): a layer that lives
        on disk is then freed without being written back.
        """
        if not self.hidden:
            raise RuntimeError("capture() must run before run()")
        iterator: Iterator[int] = range(len(self.layers))
        if self.progress:
            iterator = tqdm(iterator, desc=description, unit="layer")
        visiting = layer_borrowed if read_only else layer_loaded
        for index in iterator:
            with visiting(self.model, index):
                layer = self.layers[index]
                home = next(layer.parameters(), torch.empty(0)).device  # a layer may have no parameters left
                layer.to(self.device)
                step = LayerStep(index, f"{self.adapter.layers}.{index}", layer, self)
                outputs = visit(step)
                if outputs is None and index < len(self.layers) - 1:  # the last layer's outputs feed nothing
                    outputs = self.forward_layer(layer)
                self.hidden = outputs or []
                layer.to(home)
        self.hidden = []


class SharedInputStatistics:
    """One accumulator per distinct input tensor: modules that read the very same activation (q/k/v
    after the attention norm, gate/up after the MLP norm) share the accumulator of the first of them,
    so the statistics (for SparseGPT a d×d Hessian) are computed once instead of two or three times.

    `add(name, inputs)` takes one input per batch: a single one from a hook as the layer runs batch by
    batch, or all of them at once from `LayerwiseEngine.forward_in_lockstep`. With `on_ready`, each
    module may be fed exactly once (one-pass mode) and `on_ready(name, accumulator)` runs right after,
    before the module runs.
    """

    def __init__(self, make: Callable[[str], object], on_ready: Callable[[str, object], None] | None = None):
        self.make = make
        self.on_ready = on_ready
        self.stats: dict[str, object] = {}
        self.source: dict[str, str] = {}  # module -> module whose accumulator it shares
        self.previous: tuple[str, list[torch.Tensor]] | None = None  # held, so its memory cannot be reused
        self.ready: set[str] = set()

    def add(self, name: str, inputs: list[torch.Tensor]) -> None:
        if self.on_ready is not None and name in self.ready:
            raise RuntimeError(f"{name} ran twice in one forward; one-pass pruning needs one call per module")
        previous = self.previous
        same = previous is not None and len(inputs) == len(previous[1]) and all(
            x.data_ptr() == p.data_ptr() and x.shape == p.shape and x.stride() == p.stride()
            for x, p in zip(inputs, previous[1]))
        if name not in self.stats:
            if same:
                self.source[name] = self.source.get(previous[0], previous[0])
                self.stats[name] = self.stats[previous[0]]
            else:
                self.stats[name] = self.make(name)
        if name in self.source:
            if not same:
                raise RuntimeError(f"{name} no longer reads the same input as {self.source[name]}")
        else:
            for x in inputs:
                self.stats[name].add(x)
            self.previous = (name, inputs)
        if self.on_ready is not None:
            self.ready.add(name)
            self.on_ready(name, self.stats[name])

    def close(self, modules: dict[str, nn.Module]) -> None:
        """Release the held inputs; in one-pass mode, refuse a module that never ran (an expert no token
        was routed to legitimately never runs)."""
        self.previous = None
        if self.on_ready is not None:
            missing = [name for name in modules if name not in self.ready and not isinstance(modules[name], ExpertLinear)]
            if missing:
                raise RuntimeError(f"one-pass pruning: {sorted(missing)} never ran in the layer's forward")


class InputMoments:
    """Running per-feature sums of x and x² over calibration tokens (float64), for E[x], E[x²], the variance
    (DSnoT) and the sample variance (FLAP's fluctuation). Kept on `device`, or where the first input is."""

    def __init__(self, device=None):
        self.device = device
        self.tokens = 0
        self.total: torch.Tensor | None = None
        self.total_square: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(self.device or x.device, torch.float64)
        if self.total is None:
            self.total, self.total_square = torch.zeros_like(x[0]), torch.zeros_like(x[0])
        self.total += x.sum(0)
        self.total_square += (x * x).sum(0)
        self.tokens += x.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.tokens

    @property
    def square_mean(self) -> torch.Tensor:
        return self.total_square / self.tokens

    @property
    def variance(self) -> torch.Tensor:
        """Population variance E[x²] − E[x]², clamped at 0 against rounding."""
        return (self.square_mean - self.mean ** 2).clamp_min(0)

    @property
    def sample_variance(self) -> torch.Tensor:
        """Sample variance (n − 1 in the denominator), clamped at 0 against rounding."""
        if self.tokens < 2:
            raise ValueError("the fluctuation of a channel needs at least 2 calibration tokens")
        return ((self.total_square - self.total * self.mean) / (self.tokens - 1)).clamp_min(0)


@contextmanager
def input_statistics(modules: dict[str, nn.Module], make: Callable[[str], object],
                     on_ready: Callable[[str, object], None] | None = None):
    """Feed every module's input activations to an accumulator `make(name)` (with an `add(x)` method)
    while the context is open; yields the dict name -> accumulator, shared where inputs are identical.
    `on_ready` switches to one-pass mode (see `SharedInputStatistics`)."""
    shared = SharedInputStatistics(make, on_ready)
    with input_hooks(modules, lambda name, x: shared.add(name, [x])):
        yield shared.stats
    shared.close(modules)


@contextmanager
def input_hooks(modules: dict[str, nn.Module], on_input: Callable[[str, torch.Tensor], None]):
    """Call `on_input(name, x)` with the input activations of each module while the context is open. An
    expert's linear (`ExpertLinear`) gets the tokens routed to it, from one hook on its experts module."""
    handles = []
    routed: dict[int, tuple[nn.Module, dict[str, ExpertLinear]]] = {}
    for name, module in modules.items():
        if isinstance(module, ExpertLinear):
            routed.setdefault(id(module.experts), (module.experts, {}))[1][name] = module
            continue

        def hook(_module, args, _name=name):
            on_input(_name, args[0].detach())
        handles.append(module.register_forward_pre_hook(hook))
    for experts, targets in routed.values():
        def experts_hook(module, args, kwargs, _targets=targets):
            hidden = args[0] if args else kwargs["hidden_states"]
            top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            feed_expert_inputs(module, hidden.detach(), top_k_index, _targets, on_input)
        handles.append(experts.register_forward_pre_hook(experts_hook, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
