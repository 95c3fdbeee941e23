"""Plain maths for depth pruning: how much a layer (or a block of layers) changes the hidden states, and
which layers to remove given such scores.

- angular distance (Gromov et al.): arccos(cos(h_in, h_out)) / π, in [0, 1];
- cosine distance / Block Influence (ShortGPT, PP-LLMs): 1 − cos(h_in, h_out), in [0, 2];
both per token, on the last token of each sample or on all tokens, averaged. Small means the layer
hardly changes the residual stream, so removing it costs little.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where tensors are scored, so the names and plans below import cheaply
    import torch

CRITERIA = ("angular", "cosine")
TOKENS = ("last", "all")


def token_cosines(h_in: torch.Tensor, h_out: torch.Tensor, tokens: str = "all") -> torch.Tensor:
    """Cosine between input and output hidden states of every scored token ([batch, seq, hidden] in), in fp64."""
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, got {tokens!r}")
    if tokens == "last":
        h_in, h_out = h_in[:, -1, :], h_out[:, -1, :]
    a = h_in.reshape(-1, h_in.shape[-1]).double()
    b = h_out.reshape(-1, h_out.shape[-1]).double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-30)
    return cos.clamp(-1.0, 1.0)


def distances(cosines: torch.Tensor, criterion: str) -> torch.Tensor:
    if criterion == "angular":
        return cosines.arccos() / math.pi
    if criterion == "cosine":
        return 1.0 - cosines
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


class MeanDistance:
    """Running mean of the per-token distance over calibration batches."""

    def __init__(self, criterion: str, tokens: str):
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        self.criterion, self.tokens = criterion, tokens
        self.total, self.count = 0.0, 0

    def add(self, h_in: torch.Tensor, h_out: torch.Tensor) -> None:
        d = distances(token_cosines(h_in, h_out, self.tokens), self.criterion)
        self.total += float(d.sum())
        self.count += d.numel()

    @property
    def value(self) -> float:
        if not self.count:
            raise ValueError("no hidden states were scored")
        return self.total / self.count


def select_blocks(scores: dict[int, float], num_layers: int, block_size: int, count: int) -> list[int]:
    """Start layers of `count` non-overlapping blocks of `block_size` consecutive layers with the
    smallest total score. `scores` maps each allowed block start to its score (blocks touching a layer
    that must stay are simply absent). Exact (dynamic programming); ties go to earlier layers."""
    if count < 1 or block_size < 1:
        raise ValueError("count and block_size must be >= 1")
    inf = float("inf")
    # best[i][c]: (total score, starts) using layers i.. with c blocks still to place
    best: list[list[tuple[float, tuple[int, ...]]]] = [[(inf, ())] * (count + 1) for _ in range(num_layers + 2)]
    for i in range(num_layers + 1):
        best[i][0] = (0.0, ())
    for i in range(num_layers - 1, -1, -1):
        for c in range(1, count + 1):
            skip = best[i + 1][c]
            take = (inf, ())
            if i in scores and i + block_size <= num_layers:
                rest = best[i + block_size][c - 1]
                if rest[0] < inf:
                    take = (scores[i] + rest[0], (i,) + rest[1])
            best[i][c] = take if take[0] <= skip[0] else skip
    total, starts = best[0][count]
    if total == inf:
        raise ValueError(f"cannot place {count} blocks of {block_size} layers among {num_layers} layers "
                         f"with the allowed starts {sorted(scores)}")
    return list(starts)


def max_blocks(allowed_starts, num_layers: int, block_size: int) -> int:
    """How many non-overlapping blocks fit at most (greedy from the left is optimal for intervals of one length)."""
    placed, free_from = 0, 0
    for start in sorted(allowed_starts):
        if start >= free_from and start + block_size <= num_layers:
            placed += 1
            free_from = start + block_size
    return placed


def allowed_block_starts(num_layers: int, block_size: int, keep_layers) -> list[int]:
    """Block starts whose block contains none of `keep_layers` (non-negative indices)."""
    keep = set(keep_layers)
    return [s for s in range(num_layers - block_size + 1) if not keep.intersection(range(s, s + block_size))]


def evenly_spread(num_layers: int, count: int) -> list[int]:
    """`count` layers spread evenly over the interior 1..num_layers-2 (first and last kept)."""
    interior = num_layers - 2
    if count < 0 or count > interior:
        raise ValueError(f"can remove at most {max(0, interior)} of {num_layers} layers keeping the first and last")
    return [1 + int((i + 0.5) * interior / count) for i in range(count)]
