"""Searched layer sparsities (`allocation=search`, after EvoPress, Sieberling et al. 2024).

A database holds every decoder layer pruned by the method itself at a few sparsity levels around the target
(target + step·k, k = −levels … levels), each layer pruned on the dense model's inputs (layers independent, as
EvoPress). A (1 + λ) evolutionary search then walks over one level per layer: each offspring moves one layer up a
level and another of the same size down one, one to three times, so the total stays exactly the target; the
offspring are ranked by the KL divergence of the model's next-token distribution from the dense model's on the
first held-out calibration window, the best few scored again on all of them, and the best replaces the parent
when it is better. The held-out windows are the last `search_windows` calibration windows, left out of the
database's statistics; the evaluation split is never read. A seeded generator makes it deterministic.

The maths (`mutate`, `evolutionary_search`, `kl_divergence`) are plain functions; `search_layer_sparsities`
orchestrates them on a model.
"""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Callable, Sequence

from ..core.options import Option
from .allocation import AllocationError, split_zeros, target_zeros

if TYPE_CHECKING:
    import torch

    from .base import PruneContext, PruningMethod

SEARCH_OPTIONS = (
    Option("search_step", float, "allocation=search: sparsity between two neighbouring levels of a layer",
           default=0.05, low=0, high=0.5, low_open=True),
    Option("search_levels", int, "allocation=search: levels on each side of the target (2·n + 1 per layer)",
           default=3, low=1),
    Option("search_generations", int, "allocation=search: generations of the evolutionary search", default=50,
           low=1),
    Option("search_offspring", int, "allocation=search: offspring per generation", default=8, low=1),
    Option("search_windows", int, "allocation=search: the last n calibration windows, held out of the database, "
           "on which a candidate's KL divergence from the dense model is measured", default=2, low=1),
)
SEARCH_NAMES = tuple(option.name for option in SEARCH_OPTIONS)
MAX_MOVES = 3  # level moves per offspring at most (EvoPress mutates a few units per offspring)
SURVIVORS = 2  # offspring scored on every held-out window


def level_sparsities(target: float, step: float, levels: int) -> list[float]:
    """The 2·levels + 1 sparsities of the database, the target in the middle; refused outside [0, 1)."""
    values = [target + step * k for k in range(-levels, levels + 1)]
    if values[0] < 0 or values[-1] >= 1:
        raise AllocationError(f"search levels {values[0]:g} … {values[-1]:g} leave [0, 1); lower search_step or "
                              f"search_levels")
    return values


def mutate(parent: Sequence[int], groups: Sequence[Sequence[int]], top: int, rng: random.Random) -> tuple[int, ...]:
    """`parent` (a level index per layer, 0 … top) with one to MAX_MOVES moves, each raising one layer a level and
    lowering another of the same group (equal size) one level, so the total sparsity is unchanged."""
    child = list(parent)
    movable = [group for group in groups if len(group) > 1]
    for _ in range(rng.randint(1, MAX_MOVES)):
        group = movable[rng.randrange(len(movable))]
        up = [i for i in group if child[i] < top]
        down = [i for i in group if child[i] > 0]
        if not up or not down:
            continue
        raise_layer = up[rng.randrange(len(up))]
        lower = [i for i in down if i != raise_layer]
        if not lower:
            continue
        child[raise_layer] += 1
        child[lower[rng.randrange(len(lower))]] -= 1
    return tuple(child)


def evolutionary_search(start: Sequence[int], groups: Sequence[Sequence[int]], top: int,
                        fitness: Callable[[tuple[int, ...], bool], float], *, generations: int, offspring: int,
                        seed: int) -> tuple[tuple[int, ...], list[float]]:
    """(1 + λ) search from `start`; `fitness(candidate, full)` is lower for better candidates (full=False: the
    cheap first stage). Returns the best candidate and its full fitness after each generation (the first entry
    is the start's)."""
    rng = random.Random(seed)
    parent = tuple(start)
    parent_fitness = fitness(parent, True)
    history = [parent_fitness]
    if not any(len(group) > 1 for group in groups):
        return parent, history  # no two layers of equal size: nothing can move
    for _ in range(generations):
        children = {child for child in (mutate(parent, groups, top, rng) for _ in range(offspring))
                    if child != parent}
        if children:
            ranked = sorted(children, key=lambda child: (fitness(child, False), child))[:SURVIVORS]
            scored = sorted((fitness(child, True), child) for child in ranked)
            if scored[0][0] < parent_fitness:
                parent_fitness, parent = scored[0]
        history.append(parent_fitness)
    return parent, history


def kl_divergence(dense_log_probs: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over tokens of KL(dense ‖ candidate) between next-token distributions (float64 sums)."""
    import torch

    log_probs = torch.log_softmax(logits.double(), dim=-1)
    dense = dense_log_probs.double()
    return float((dense.exp() * (dense - log_probs)).sum(-1).mean())


def search_layer_sparsities(method: PruningMethod, ctx: PruneContext,
                            sizes: dict[int, dict[str, int]]) -> tuple[list[float], dict]:
    """Each layer's sparsity found by the search, and its record for prune.json. The model's weights are as they
    were when it returns."""
    import torch

    from ..core.adapters import weight_matrix

    started = time.perf_counter()
    layers = sorted(sizes)
    totals = [sum(sizes[index].values()) for index in layers]
    try:
        levels = level_sparsities(method.target.value, method.search_step, method.search_levels)
    except AllocationError as exc:
        from .base import MethodError
        raise MethodError(f"{method.name}: {exc}") from None
    input_ids, _ = ctx.calibration()
    held_out = input_ids[-method.search_windows:]
    database = build_database(method, ctx, input_ids[:-method.search_windows], levels, sizes)
    targets = method.targets(ctx)
    dense = {index: {name: weight_matrix(module).detach().clone() for name, module in targets[index].items()}
             for index in layers}
    loaded = {index: None for index in layers}  # the database level each layer holds now (None: dense)

    def load(candidate: tuple[int, ...]) -> None:
        for position, index in enumerate(layers):
            if loaded[index] != candidate[position]:
                for name, weight in database[index][candidate[position]].items():
                    weight_matrix(targets[index][name]).copy_(weight)
                loaded[index] = candidate[position]

    device_ids = held_out.to(next(ctx.model.parameters()).device)
    with torch.no_grad():
        dense_log_probs = [torch.log_softmax(ctx.model(input_ids=window[None]).logits[0].double(), -1)
                           for window in device_ids]
    cache: dict[tuple[tuple[int, ...], bool], float] = {}

    @torch.no_grad()
    def fitness(candidate: tuple[int, ...], full: bool) -> float:
        key = (candidate, full)
        if key not in cache:
            load(candidate)
            windows = range(len(device_ids)) if full else range(1)
            cache[key] = sum(kl_divergence(dense_log_probs[w], ctx.model(input_ids=device_ids[w][None]).logits[0])
                             for w in windows) / len(windows)
        return cache[key]

    groups: dict[int, list[int]] = {}
    for position, total in enumerate(totals):
        if total:
            groups.setdefault(total, []).append(position)
    start = tuple([method.search_levels] * len(layers))
    try:
        best, history = evolutionary_search(start, list(groups.values()), len(levels) - 1, fitness,
                                            generations=method.search_generations,
                                            offspring=method.search_offspring, seed=ctx.seed)
    finally:
        with torch.no_grad():
            for index in layers:
                for name, weight in dense[index].items():
                    weight_matrix(targets[index][name]).copy_(weight)
    record = {"levels": [round(level, 6) for level in levels], "chosen_levels": list(best),
              "fitness": f"KL(dense ‖ pruned) per token on the last {method.search_windows} calibration windows "
                         f"(held out of the database)",
              "kl_uniform": round(history[0], 6), "kl_chosen": round(history[-1], 6),
              "kl_per_generation": [round(value, 6) for value in history],
              "candidates_scored": len(cache), "seconds": round(time.perf_counter() - started, 3)}
    return [levels[level] for level in best], record


def build_database(method: PruningMethod, ctx: PruneContext, input_ids: torch.Tensor, levels: list[float],
                   sizes: dict[int, dict[str, int]]) -> dict[int, list[dict[str, torch.Tensor]]]:
    """{layer: [{linear: its weight pruned at that level (float16)} per level]}: the method's own pruning of each
    layer on the dense model's inputs (read from `input_ids`), the model left dense."""
    import torch

    from ..core.adapters import weight_matrix
    from ..core.engine import LayerStep, LayerwiseEngine, input_statistics

    database: dict[int, list[dict[str, torch.Tensor]]] = {}
    calibrated = hasattr(method, "statistics")

    def prune_levels(index: int, targets: dict, statistics) -> None:
        dense = {name: weight_matrix(module).detach().clone() for name, module in targets.items()}
        names = list(sizes[index])
        database[index] = []
        for level in levels:
            zeros = target_zeros(level, sum(sizes[index].values()))
            method.set_planned(dict(zip(names, split_zeros(zeros, [sizes[index][name] for name in names]))))
            method.prune_layer_from(targets, statistics)
            database[index].append({name: weight_matrix(module).detach().to(torch.float16).clone()
                                    for name, module in targets.items()})
            for name, module in targets.items():
                weight_matrix(module).copy_(dense[name])
        method.set_planned({})

    with torch.no_grad():
        if not calibrated:
            for index in sorted(sizes):
                prune_levels(index, ctx.adapter.linear_targets(ctx.model, index, ctx.ignore), None)
            return database
        engine = LayerwiseEngine(ctx.model, ctx.adapter, ctx.device, ctx.batch_size, ctx.progress)
        engine.capture(input_ids)

        def visit(step: LayerStep):
            targets = ctx.adapter.linear_targets(ctx.model, step.index, ctx.ignore)
            with input_statistics(targets, lambda name: method.statistics(weight_matrix(targets[name]),
                                                                          ctx.device)) as statistics:
                outputs = step.forward()  # the dense layer's outputs: the next layer's dense inputs
            prune_levels(step.index, targets, statistics)
            return outputs

        engine.run(visit, description=f"{method.name} search database", read_only=True)
    return database
