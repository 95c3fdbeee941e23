"""Plain functions for mask-based pruning: scores in, boolean prune masks out, and SparseGPT's solver.

A mask here is True where a weight is *removed*. Selection is exact: ties are broken by position
(stable sort), so the same scores always give the same mask and the count of removed weights is
exactly what the target asks.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch

from .allocation import split_zeros
from ..core.ratios import MaskTarget, NMPattern, Sparsity


def _lowest(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Mask of the k lowest entries along `dim`; among equal scores, earlier positions go first.

    Equivalent to taking the first k of a stable sort, in linear time: the k-th smallest value is the
    threshold, everything below it is removed, and ties at the threshold fill the rest in position order.
    """
    size = scores.shape[dim]
    if k <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if k >= size:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k, dim=dim, keepdim=True).values
    below = scores < threshold
    tied = scores == threshold
    candidate = below | tied
    if bool((candidate.sum(dim=dim) == k).all()):  # the usual case: no surplus ties at the threshold
        return candidate
    still_needed = k - below.sum(dim=dim, keepdim=True)
    return below | (tied & (torch.cumsum(tied, dim=dim) <= still_needed))


def nm_mask(scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Remove the M−N lowest scores in every aligned group of M input columns of each row.

    A trailing partial group of r columns keeps min(r, N) weights.
    """
    rows, cols = scores.shape
    full = (cols // pattern.m) * pattern.m
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if full:
        groups = scores[:, :full].reshape(rows, full // pattern.m, pattern.m)
        mask[:, :full] = _lowest(groups, pattern.m - pattern.n, dim=2).reshape(rows, full)
    tail = cols - full
    if tail > pattern.n:
        mask[:, full:] = _lowest(scores[:, full:], tail - pattern.n, dim=1)
    return mask


def select_mask(scores: torch.Tensor, target: MaskTarget, per: str = "row", zeros: int | None = None) -> torch.Tensor:
    """Prune mask for a [out, in] score matrix.

    per='row' removes int(in·s) weights in every output row (Wanda's comparison group);
    per='matrix' removes int(numel·s) weights across the whole matrix (magnitude's default).
    `zeros` (unstructured only) removes exactly that many instead: per row, the first `zeros mod rows`
    rows one more than the others (a non-uniform allocation's exact count).
    N:M patterns are always per group of M inputs in each row.
    """
    if isinstance(target, NMPattern):
        if zeros is not None:
            raise ValueError("an exact count of zeros applies to a sparsity, not to an N:M pattern")
        return nm_mask(scores, target)
    if not isinstance(target, Sparsity):
        raise TypeError(f"unknown mask target {target!r}")
    if per == "row":
        if zeros is None:
            return _lowest(scores, int(scores.shape[1] * target.value), dim=1)
        each, extra = divmod(zeros, scores.shape[0])
        mask = _lowest(scores, each, dim=1)
        if extra:
            mask[:extra] = _lowest(scores[:extra], each + 1, dim=1)
        return mask
    if per == "matrix":
        count = int(scores.numel() * target.value) if zeros is None else zeros
        return _lowest(scores.reshape(1, -1), count, dim=1).reshape(scores.shape)
    raise ValueError(f"per must be 'row' or 'matrix', got {per!r}")


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.abs().float()


def wanda_scores(weight: torch.Tensor, input_sq_mean: torch.Tensor) -> torch.Tensor:
    """|W_ij| · sqrt(mean over calibration tokens of x_j²)."""
    return weight.abs().float() * input_sq_mean.float().sqrt().unsqueeze(0)


@dataclass(frozen=True)
class InverseHessian:
    """What SparseGPT's solver needs from H: the upper Cholesky factor of the damped H⁻¹, the dead
    inputs (H_jj = 0, their diagonal set to 1 first) and the damping that made Cholesky succeed.
    Linears that read the same input share one."""

    upper: torch.Tensor
    dead: torch.Tensor
    damping_fraction: float


def lower_rank_update(lower: torch.Tensor, x: torch.Tensor, kept: float) -> None:
    """lower <- kept * lower + xᵀx on the lower triangle and diagonal only, in place (the strict upper
    triangle is left stale: read the result through `symmetric_from_lower`). The product is symmetric, so
    only the column blocks on and below the diagonal are multiplied: 10 of 16 for four blocks. Each block
    is the same scale-then-add as the full product (bit-identical on CPU: the BLAS sums every entry over
    the rows in the same order), so SparseGPT's masks do not change."""
    features = x.shape[1]
    width = max(128, -(-features // 4))
    edges = [(start, min(start + width, features)) for start in range(0, features, width)]
    for row, (r1, r2) in enumerate(edges):
        for c1, c2 in edges[:row + 1]:
            block = lower[r1:r2, c1:c2]
            block *= kept
            block += x[:, r1:r2].t() @ x[:, c1:c2]


def symmetric_from_lower(lower: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose lower triangle and diagonal are `lower`'s."""
    return torch.tril(lower) + torch.tril(lower, -1).t()


def inverse_hessian(hessian: torch.Tensor, damp_fraction: float = 0.01) -> InverseHessian:
    """Damp H by damp_fraction · mean(diag H), raised tenfold with a warning until Cholesky succeeds."""
    H = hessian.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    mean_diag = torch.mean(torch.diag(H)).item()
    fraction = damp_fraction
    for _ in range(6):
        damped = H.clone()
        damped.diagonal().add_(fraction * mean_diag)
        try:
            lower = torch.linalg.cholesky(damped)
            upper = torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
            return InverseHessian(upper, dead, fraction)
        except torch.linalg.LinAlgError:
            warnings.warn(f"SparseGPT: Cholesky failed with damping {fraction:g}·mean(diag H); retrying with {fraction * 10:g}")
            fraction *= 10
    raise RuntimeError("SparseGPT: Hessian is not positive definite even with heavy damping")


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, target: MaskTarget, block_size: int = 128,
                    damp_fraction: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """SparseGPT (Frantar & Alistarh 2023): prune [out, in] `weight` given H = 2/n Σ x xᵀ.

    Returns (new weight, prune mask, info); see `sparsegpt_solve`.
    """
    return sparsegpt_solve(weight, inverse_hessian(hessian, damp_fraction), target, block_size)


def sparsegpt_solve(weight: torch.Tensor, inverse: InverseHessian, target: MaskTarget,
                    block_size: int = 128, zeros: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """SparseGPT's solver for one [out, in] weight on a prepared `inverse_hessian`; see `sparsegpt_solve_shared`."""
    return sparsegpt_solve_shared([weight], inverse, target, block_size, [zeros])[0]


def sparsegpt_solve_shared(weights: list[torch.Tensor], inverse: InverseHessian, target: MaskTarget,
                           block_size: int = 128, zeros: list[int | None] | None = None
                           ) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """SparseGPT's solver on a prepared `inverse_hessian`, for weights that read the same input (q/k/v,
    gate/up) solved together. Work is in fp32. Dead inputs are pruned first. Returns (new weight, prune
    mask, info) per weight, the same as solving each alone: every step is per row except the unstructured
    mask choice, which is still made per weight.

    Unstructured masks are chosen once per block of columns by w²/[H⁻¹]_jj² over the whole
    rows×block of each weight (adaptive mask selection); N:M masks inside the column loop every M columns
    from the already-updated weights. Errors propagate within the block column by column and to later
    blocks by the lazy batch update. `zeros[k]` (unstructured only) removes exactly that many weights of
    weight k, split over the blocks in proportion to their widths.
    """
    zeros = zeros or [None] * len(weights)
    rows = [weight.shape[0] for weight in weights]
    W = torch.cat([weight.detach().float() for weight in weights])  # a fresh copy, solved in place
    cols = W.shape[1]
    dead, Hinv = inverse.dead, inverse.upper
    W[:, dead] = 0.0
    if isinstance(target, NMPattern):
        block_size = target.m * max(1, block_size // target.m)  # groups never straddle blocks
    mask = torch.zeros_like(W, dtype=torch.bool)
    nm = target if isinstance(target, NMPattern) else None
    starts = range(0, cols, block_size)
    widths = [min(block_size, cols - i) for i in starts]
    block_zeros = [None if count is None else split_zeros(count, [n * width for width in widths])
                   for n, count in zip(rows, zeros)]
    row_ranges = [(sum(rows[:k]), sum(rows[:k + 1])) for k in range(len(rows))]
    for number, i1 in enumerate(starts):
        i2 = i1 + widths[number]
        # The block is held transposed (columns as contiguous rows) so the per-column updates are fast.
        block = W[:, i1:i2].t().contiguous()  # becomes the pruned block, column by column
        errors = torch.zeros_like(block)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d = torch.diag(Hinv1)
        if nm is None:
            removed_t = torch.cat([
                select_mask(block[:, r1:r2].t() ** 2 / d.unsqueeze(0) ** 2, target, per="matrix",
                            zeros=None if counts is None else counts[number]).t()
                for (r1, r2), counts in zip(row_ranges, block_zeros)], dim=1).contiguous()
        else:
            removed_t = torch.zeros_like(block, dtype=torch.bool)
        diagonal = d.tolist()
        zero = torch.zeros((), dtype=W.dtype, device=W.device)
        for i in range(i2 - i1):
            if nm is not None and i % nm.m == 0:
                group = slice(i, min(i + nm.m, i2 - i1))
                removed_t[group] = nm_mask(block[group].t() ** 2 / d[group].unsqueeze(0) ** 2, nm).t()
            column, removed, err = block[i], removed_t[i], errors[i]
            torch.where(removed, column, zero, out=err).div_(diagonal[i])
            column.masked_fill_(removed, 0.0)
            block[i + 1:] -= torch.outer(Hinv1[i, i + 1:], err)
        W[:, i1:i2] = block.t()
        mask[:, i1:i2] = removed_t.t()
        W[:, i2:] -= errors.t() @ Hinv[i1:i2, i2:]
    mask |= dead.unsqueeze(0).expand_as(mask) & (W == 0)
    W[mask] = 0.0
    info = {"damping_fraction": inverse.damping_fraction, "dead_inputs": int(dead.sum())}
    return [(W[r1:r2].to(weight.dtype), mask[r1:r2], info) for (r1, r2), weight in zip(row_ranges, weights)]


def sparsity_of(tensor: torch.Tensor) -> float:
    return float((tensor == 0).sum()) / max(1, tensor.numel())


def is_valid_nm(weight: torch.Tensor, pattern: NMPattern) -> bool:
    """True when every aligned group of M input weights in every row has at most N non-zeros."""
    rows, cols = weight.shape
    groups = math.ceil(cols / pattern.m)
    padded = torch.zeros(rows, groups * pattern.m, dtype=torch.bool, device=weight.device)
    padded[:, :cols] = weight != 0
    return bool((padded.reshape(rows, groups, pattern.m).sum(dim=2) <= pattern.n).all())


# ---- ALPS: the layer problem solved by ADMM ---------------------------------------------------------

def reconstruction_error(weight: torch.Tensor, dense: torch.Tensor, hessian: torch.Tensor) -> float:
    """The layer's output error on the calibration inputs relative to its dense output:
    tr((W − W₀) H (W − W₀)ᵀ) / tr(W₀ H W₀ᵀ), with H ∝ Σ x xᵀ."""
    difference = (weight.float() - dense.float())
    dense = dense.float()
    return float(((difference @ hessian) * difference).sum() / ((dense @ hessian) * dense).sum().clamp_min(1e-30))


def _support_projection(weight: torch.Tensor, target: MaskTarget, zeros: int | None) -> torch.Tensor:
    """The prune mask of the best approximation of `weight` with the target's sparsity: the smallest
    magnitudes across the whole matrix (exactly `zeros`, else int(numel · s)), or per N:M group."""
    return select_mask(weight.abs(), target, per="matrix", zeros=zeros)


def _masked_conjugate_gradient(W: torch.Tensor, dense_gradient: torch.Tensor, hessian: torch.Tensor,
                               kept: torch.Tensor, iterations: int) -> torch.Tensor:
    """Minimise ½ (w − w₀) H (w − w₀)ᵀ for every row w of W over its kept entries only (zeros stay zero),
    by conjugate gradients run per row; `dense_gradient` = W₀ H. Returns the improved W."""
    keep = kept.to(W.dtype)
    residual = (dense_gradient - W @ hessian) * keep
    direction = residual.clone()
    norm = (residual * residual).sum(dim=1, keepdim=True)
    for _ in range(iterations):
        curvature_direction = (direction @ hessian) * keep
        denominator = (direction * curvature_direction).sum(dim=1, keepdim=True)
        step = torch.where(denominator > 0, norm / denominator.clamp_min(1e-30), torch.zeros_like(norm))
        W = W + step * direction
        residual = residual - step * curvature_direction
        new_norm = (residual * residual).sum(dim=1, keepdim=True)
        direction = residual + torch.where(norm > 0, new_norm / norm.clamp_min(1e-30), torch.zeros_like(norm)) * direction
        norm = new_norm
    return W * keep


@dataclass(frozen=True)
class ALPSSettings:
    """ADMM penalty ρ to start from, iteration cap and the conjugate-gradient steps on the final support."""
    rho: float = 0.1
    max_iterations: int = 300
    refine_iterations: int = 20


@dataclass(frozen=True)
class NormalisedHessian:
    """H damped and scaled to unit diagonal (H̃ = H / (d dᵀ)), its eigendecomposition and the column scale d:
    what ALPS needs of one input, computed once for every ρ and every linear reading that input."""
    matrix: torch.Tensor
    values: torch.Tensor
    vectors: torch.Tensor
    scale: torch.Tensor


def alps_solve(weight: torch.Tensor, normalised: NormalisedHessian, target: MaskTarget,
               settings: ALPSSettings = ALPSSettings(), zeros: int | None = None) -> tuple[torch.Tensor, dict]:
    """ALPS (Meng et al. 2024): the ℓ0-constrained layer problem min ‖X Wᵀ − X W₀ᵀ‖² s.t. the target's
    sparsity, by ADMM on the split W = D (D carries the support), then conjugate gradients on the kept
    weights, on the input's `normalised_hessian`.

    ρ grows as the support settles (support changes checked every 3 iterations: ×1.3 while more than 10 %
    of the kept weights move, ×1.2 above 0.5 %, ×1.1 below; before any growth a ρ that moves nothing is cut
    fivefold); it stops once the support is stable. Returns (new [out, in] weight, info)."""
    values, vectors, hessian = normalised.values, normalised.vectors, normalised.matrix
    dense = weight.detach().float() * normalised.scale  # normalised coordinates: W̃ = W d
    dense_gradient = dense @ hessian
    rho = settings.rho

    def solve(rhs: torch.Tensor, penalty: float) -> torch.Tensor:  # rhs (H̃ + ρ I)⁻¹
        return ((rhs @ vectors) / (values + penalty)) @ vectors.t()

    removed = _support_projection(dense, target, zeros)
    start_removed = removed.clone()
    kept_count = dense.numel() - int(removed.sum())
    D = dense.masked_fill(removed, 0.0)
    V = torch.zeros_like(dense)
    W = dense
    grown, iterations = False, 0
    checked = removed.clone()
    for iterations in range(1, settings.max_iterations + 1):
        W = solve(dense_gradient - V + rho * D, rho)
        removed = _support_projection(W + V / rho, target, zeros)
        D = (W + V / rho).masked_fill(removed, 0.0)
        V = V + rho * (W - D)
        if iterations % 3:
            continue
        changed = int((removed != checked).sum())
        checked = removed.clone()
        if changed > 0.1 * kept_count:
            rho, grown = rho * 1.3, True
        elif changed > 0.005 * kept_count:
            rho, grown = rho * 1.2, True
        elif changed > 0:
            if grown:
                rho *= 1.1
            else:  # too stiff from the start: soften and begin again from the dense weights
                rho /= 5
                D, V = dense.masked_fill(start_removed, 0.0), torch.zeros_like(dense)
        elif grown:
            break
        else:
            rho /= 5
        rho = min(rho, 1e6)
    removed = _support_projection(W, target, zeros)
    admm = W.masked_fill(removed, 0.0)
    # ADMM on this non-convex problem can leave a support worse than the one it started from (the largest
    # |w|·sqrt(H_jj), Wanda's score): both are refined and the better kept, so ALPS is never worse than it
    candidates = {"admm": (admm, removed), "start": (dense.masked_fill(start_removed, 0.0), start_removed)}
    refined = {key: _masked_conjugate_gradient(W0, dense_gradient, hessian, ~mask, settings.refine_iterations)
               for key, (W0, mask) in candidates.items()}
    errors = {key: reconstruction_error(value, dense, hessian) for key, value in refined.items()}
    chosen = min(errors, key=errors.get)  # ties: "admm", listed first
    info = {"iterations": iterations, "final_rho": rho, "support": chosen,
            "error_after_admm": reconstruction_error(admm, dense, hessian), "error": errors[chosen]}
    return (refined[chosen] / normalised.scale).to(weight.dtype), info


def normalised_hessian(hessian: torch.Tensor, damp_fraction: float) -> NormalisedHessian:
    """H damped by damp_fraction · mean(diag H) and normalised to unit diagonal (d = sqrt(diag)), with its
    eigendecomposition (in float64)."""
    H = hessian.detach().double().clone()
    H.diagonal().add_(damp_fraction * float(H.diagonal().mean()))
    scale = H.diagonal().sqrt().clamp_min(1e-12)
    normalised = H / scale.unsqueeze(0) / scale.unsqueeze(1)
    values, vectors = torch.linalg.eigh(normalised)
    return NormalisedHessian(normalised.float(), values.float(), vectors.float(), scale.float())
