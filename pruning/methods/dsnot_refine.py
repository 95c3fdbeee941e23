"""Training-free mask refinement: DSnoT (Zhang et al. 2024, "Dynamic Sparse No Training").

Plain functions on one linear's weights and its input statistics; the method that runs them layer by
layer is pruning/methods/dsnot.py. A mask is True where a weight is removed, as in pruning/methods/sparsify.py.

DSnoT looks at each output row's expected reconstruction error ε = E[(W_dense − W) x] = Σ_j (W_dense −
W)_j · E[x_j] and swaps weights to shrink |ε| without any training: each cycle it regrows one removed
weight (back to its dense value) whose contribution W_j·E[x_j] has the sign of ε, the largest first after
dividing by Var[x_j]^power (inputs that vary less give a more reliable reduction), and removes one kept
weight whose contribution has the opposite sign, the one with the lowest Wanda score |W_j|·sqrt(E[x_j²])
first. Under N:M the removed weight is instead the lowest-scored kept one in the regrown weight's group of
M, so every group keeps exactly its N. A row stops at its first refused swap: when |ε| is within the
threshold, when no candidate is left, or (with `same_sign`, always under N:M) when the swap would flip the
sign of ε. Every swap removes one weight and restores one, so each row keeps its count of zeros.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.ratios import NMPattern


@dataclass(frozen=True)
class RefineSettings:
    """DSnoT's hyper-parameters; the defaults are the reference implementation's."""

    max_cycles: int = 50
    update_threshold: float = 0.1
    variance_power: float = 1.0
    same_sign: bool = False


def _signed_order(key: torch.Tensor, candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns of each row sorted by `key` (stable), non-candidates in the middle; returns (order, how many
    negative-key candidates lead it, how many positive-key candidates close it)."""
    key = torch.where(candidate, key, torch.zeros_like(key))
    order = torch.sort(key, dim=1, stable=True).indices
    return order, (key < 0).sum(dim=1), (key > 0).sum(dim=1)


def _take(order: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return order.gather(1, index.clamp(0, order.shape[1] - 1).unsqueeze(1)).squeeze(1)


def dsnot_mask(dense: torch.Tensor, current: torch.Tensor, mean: torch.Tensor, variance: torch.Tensor,
               square_mean: torch.Tensor, pattern: NMPattern | None = None,
               settings: RefineSettings = RefineSettings()) -> tuple[torch.Tensor, dict]:
    """DSnoT's refined prune mask for an [out, in] linear.

    `dense` are the weights before pruning, `current` the base method's pruned weights (zero where
    removed; SparseGPT's are also updated elsewhere); `mean`, `variance` and `square_mean` are E[x],
    Var[x] and E[x²] of each input feature over the calibration tokens. The base mask is `current == 0`.
    Only weights whose swap changes ε are candidates (dense ≠ 0 to regrow, current ≠ 0 to remove, E[x] ≠ 0),
    so the count of zeros of every row is unchanged. Returns (mask, {"swaps", "rows_changed", "cycles"}).
    """
    rows, cols = current.shape
    dense, current = dense.float(), current.float()
    mean = mean.float().unsqueeze(0)
    mask = current == 0
    grow_gain = dense * mean  # ε decreases by this when the weight comes back
    prune_gain = current * mean  # ε increases by this when the weight goes
    error = ((dense - current).double() * mean.double()).sum(dim=1)
    initial_sign = torch.sign(error)
    row = torch.arange(rows, device=current.device)

    grow_key = grow_gain / variance.float().clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(0) ** settings.variance_power
    grow_order, grow_negative, grow_positive = _signed_order(grow_key, mask & (grow_gain != 0))
    grow_low = torch.zeros(rows, dtype=torch.long, device=current.device)  # next negative candidate
    grow_high = torch.full_like(grow_low, cols - 1)  # next positive candidate

    scores = current.abs() * square_mean.float().sqrt().unsqueeze(0)  # Wanda's score of the kept weights
    if pattern is None:
        # Rank by score; negative contributions lead (lowest score first), positive ones close the order
        # (lowest score last), so both pointers start at the least important weight of their sign.
        rank = torch.empty((rows, cols), dtype=torch.long, device=current.device)
        rank.scatter_(1, torch.sort(scores, dim=1, stable=True).indices,
                      torch.arange(cols, device=current.device).expand(rows, cols).contiguous())
        prune_key = torch.sign(prune_gain) * (cols - rank).float()
        prune_order, prune_negative, prune_positive = _signed_order(prune_key, ~mask & (prune_gain != 0))
        prune_low = torch.zeros_like(grow_low)
        prune_high = torch.full_like(grow_low, cols - 1)
    else:
        groups = -(-cols // pattern.m)
        # Scores of the weights a swap may remove, padded to whole groups; removed (and regrown) ones are inf.
        removable = torch.full((rows, groups * pattern.m), float("inf"), device=current.device)
        removable[:, :cols] = torch.where(mask | (prune_gain == 0), float("inf"), scores)
        offsets = torch.arange(pattern.m, device=current.device)

    active = torch.ones(rows, dtype=torch.bool, device=current.device)
    swaps = torch.zeros(rows, dtype=torch.long, device=current.device)
    cycles = 0
    for _ in range(settings.max_cycles):
        positive = error > 0
        grow_index = torch.where(positive, grow_high, grow_low)
        available = torch.where(positive, cols - 1 - grow_high < grow_positive, grow_low < grow_negative)
        grow_column = _take(grow_order, grow_index)
        if pattern is None:
            prune_index = torch.where(positive, prune_low, prune_high)
            available &= torch.where(positive, prune_low < prune_negative, cols - 1 - prune_high < prune_positive)
            prune_column = _take(prune_order, prune_index)
            keeps_sign = torch.sign(error + prune_gain[row, prune_column] - grow_gain[row, grow_column]) == initial_sign
            if not settings.same_sign:
                keeps_sign = torch.ones_like(keeps_sign)
        else:
            group = (grow_column // pattern.m * pattern.m).unsqueeze(1) + offsets
            best = removable.gather(1, group).min(dim=1)
            available &= torch.isfinite(best.values)
            prune_column = (group.gather(1, best.indices.unsqueeze(1)).squeeze(1)).clamp(max=cols - 1)
            keeps_sign = torch.sign(error + prune_gain[row, prune_column] - grow_gain[row, grow_column]) == initial_sign
        active &= available & keeps_sign & (error.abs() > settings.update_threshold)
        if not bool(active.any()):
            break
        cycles += 1
        chosen = row[active]
        mask[chosen, prune_column[active]] = True
        mask[chosen, grow_column[active]] = False
        error = torch.where(active, error + prune_gain[row, prune_column] - grow_gain[row, grow_column], error)
        swaps += active
        grow_high -= (active & positive).long()
        grow_low += (active & ~positive).long()
        if pattern is None:
            prune_low += (active & positive).long()
            prune_high -= (active & ~positive).long()
        else:
            removable[chosen, prune_column[active]] = float("inf")
    return mask, {"swaps": int(swaps.sum()), "rows_changed": int((swaps > 0).sum()), "cycles": cycles}


def refined_weights(dense: torch.Tensor, current: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The weights of a refined mask: removed ones zero, regrown ones back to dense, the others as the base
    method left them (SparseGPT's updates kept)."""
    regrown = (current == 0) & ~mask
    return torch.where(mask, torch.zeros_like(current), torch.where(regrown, dense.to(current.dtype), current))


def row_reconstruction_errors(dense: torch.Tensor, weight: torch.Tensor, second_moment: torch.Tensor) -> torch.Tensor:
    """Σ over calibration tokens of ((W_dense − W) x)² per output row, up to one common factor:
    δᵀ G δ for each row δ, with G ∝ Σ x xᵀ (SparseGPT's Hessian)."""
    delta = (dense.double() - weight.double())
    return ((delta @ second_moment.double()) * delta).sum(dim=1)


def keep_better_rows(dense: torch.Tensor, base: torch.Tensor, refined: torch.Tensor,
                     second_moment: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The refined weights, with every row whose reconstruction error on the calibration inputs did not
    strictly fall put back to the base method's row; returns (weights, {"rows_restored", "error_base",
    "error_refined"}) with the errors summed over rows (δᵀGδ units)."""
    error_base = row_reconstruction_errors(dense, base, second_moment)
    error_refined = row_reconstruction_errors(dense, refined, second_moment)
    changed = (base != refined).any(dim=1)
    restore = changed & ~(error_refined < error_base)
    weights = torch.where(restore.unsqueeze(1), base, refined)
    final = torch.where(restore, error_base, error_refined)
    return weights, {"rows_restored": int(restore.sum()), "error_base": float(error_base.sum()),
                     "error_refined": float(final.sum())}
