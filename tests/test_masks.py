"""The plain maths: exact mask counts, N:M validity, SparseGPT's solver."""
import pytest
import torch

from pruning.methods.sparsify import (inverse_hessian, is_valid_nm, lower_rank_update, nm_mask, select_mask, sparsegpt_prune,
                           sparsegpt_solve, sparsegpt_solve_shared, symmetric_from_lower, wanda_scores)
from pruning.core.ratios import NMPattern, RatioError, Sparsity, mask_target, parse_nm


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77])
def test_row_and_matrix_masks_remove_exact_counts(sparsity):
    scores = torch.rand(13, 37, generator=torch.Generator().manual_seed(1))
    row = select_mask(scores, Sparsity(sparsity), per="row")
    assert (row.sum(dim=1) == int(37 * sparsity)).all()
    matrix = select_mask(scores, Sparsity(sparsity), per="matrix")
    assert int(matrix.sum()) == int(13 * 37 * sparsity)
    # the removed entries are the lowest ones
    if 0 < sparsity:
        assert scores[matrix].max() <= scores[~matrix].min()


def test_ties_are_broken_deterministically():
    scores = torch.ones(4, 8)
    first = select_mask(scores, Sparsity(0.5), per="row")
    assert torch.equal(first, select_mask(scores.clone(), Sparsity(0.5), per="row"))
    assert (first.sum(dim=1) == 4).all()


@pytest.mark.parametrize("n,m,cols", [(2, 4, 16), (4, 8, 64), (1, 4, 12), (4, 8, 172), (3, 8, 13)])
def test_nm_mask_keeps_n_of_every_m(n, m, cols):
    scores = torch.rand(7, cols, generator=torch.Generator().manual_seed(2))
    pattern = NMPattern(n, m)
    mask = nm_mask(scores, pattern)
    weight = torch.where(mask, torch.zeros_like(scores), scores + 1)
    assert is_valid_nm(weight, pattern)
    full = cols // m * m
    kept_full = (~mask[:, :full]).reshape(7, -1, m).sum(dim=2)
    assert (kept_full == n).all()
    tail = cols - full
    assert ((~mask[:, full:]).sum(dim=1) == min(tail, n)).all()


def test_is_valid_nm_detects_violations():
    weight = torch.ones(2, 8)
    assert not is_valid_nm(weight, NMPattern(2, 4))
    weight[:, [0, 1, 4, 5]] = 0
    assert is_valid_nm(weight, NMPattern(2, 4))


@pytest.mark.parametrize("bad", ["5:4", "4:4", "0:4", "2-4", "a:b", "2:4:8", ""])
def test_bad_nm_patterns_rejected(bad):
    with pytest.raises(RatioError):
        parse_nm(bad)


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, "x", float("nan")])
def test_bad_sparsities_rejected(bad):
    with pytest.raises(RatioError):
        mask_target(sparsity=bad)


def test_exactly_one_ratio_kind():
    with pytest.raises(RatioError):
        mask_target()
    with pytest.raises(RatioError):
        mask_target(sparsity=0.5, nm="2:4")


def test_wanda_scores_weight_by_input_norm():
    weight = torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    scores = wanda_scores(weight, torch.tensor([4.0, 1.0]))
    assert torch.allclose(scores, torch.tensor([[2.0, 1.0], [4.0, 0.5]]))


def _reconstruction_error(weight, pruned, x):
    return float(((x @ weight.t() - x @ pruned.t()) ** 2).sum())


@pytest.mark.parametrize("target", [Sparsity(0.5), NMPattern(2, 4)])
def test_sparsegpt_beats_magnitude_on_correlated_inputs(target):
    gen = torch.Generator().manual_seed(3)
    mixing = torch.randn(48, 48, generator=gen)
    x = torch.randn(2048, 48, generator=gen) @ mixing  # correlated features: where SparseGPT's update helps
    weight = torch.randn(24, 48, generator=gen)
    hessian = 2 * x.t() @ x / x.shape[0]
    pruned, mask, info = sparsegpt_prune(weight, hessian, target, block_size=16)
    assert torch.equal(pruned == 0, mask)
    if isinstance(target, Sparsity):
        assert abs(float(mask.float().mean()) - 0.5) < 1e-9
    else:
        assert is_valid_nm(pruned, target)
    magnitude = weight.clone()
    magnitude[select_mask(weight.abs(), target, per="row")] = 0
    assert _reconstruction_error(weight, pruned, x) < 0.7 * _reconstruction_error(weight, magnitude, x)
    assert info["dead_inputs"] == 0


@pytest.mark.parametrize("target, zeros", [(Sparsity(0.5), None), (Sparsity(0.5), [300, 101, 77]),
                                            (NMPattern(2, 4), None)])
def test_sparsegpt_solves_weights_sharing_a_hessian_together_as_each_alone(target, zeros):
    """q/k/v (or gate/up) solved in one column loop: bit-identical weights and masks, each weight's own
    mask choice and exact zero count, as three separate solves."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1024, 40, generator=gen) @ torch.randn(40, 40, generator=gen)
    x[:, 7] = 0  # a dead input
    inverse = inverse_hessian(2 * x.t() @ x / x.shape[0])
    weights = [torch.randn(rows, 40, generator=gen) * scale for rows, scale in ((24, 1.0), (8, 5.0), (8, 0.1))]
    together = sparsegpt_solve_shared(weights, inverse, target, block_size=16, zeros=zeros)
    for index, (weight, (pruned, mask, _)) in enumerate(zip(weights, together)):
        alone, alone_mask, _ = sparsegpt_solve(weight, inverse, target, 16, None if zeros is None else zeros[index])
        assert torch.equal(pruned, alone) and torch.equal(mask, alone_mask)
        if zeros is not None:
            assert int(mask.sum()) == zeros[index]


def test_sparsegpt_prunes_dead_inputs_and_survives_singular_hessian():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 16, generator=gen)
    x[:, 3] = 0  # a dead input
    x[:, 5] = x[:, 4]  # a rank-deficient Hessian
    weight = torch.randn(8, 16, generator=gen)
    pruned, mask, info = sparsegpt_prune(weight, 2 * x.t() @ x / 64, Sparsity(0.25), block_size=8)
    assert info["dead_inputs"] == 1
    assert (pruned[:, 3] == 0).all()
    assert torch.isfinite(pruned).all()


def test_selection_equals_first_k_of_a_stable_sort():
    """The linear-time selection removes exactly what a stable sort's first k would, ties included."""
    from pruning.methods.sparsify import _lowest

    gen = torch.Generator().manual_seed(5)
    for trial in range(60):
        rows, cols = torch.randint(1, 16, (2,), generator=gen).tolist()
        scores = torch.randint(0, 3, (rows, cols), generator=gen).float() if trial % 2 else torch.randn(rows, cols, generator=gen)
        for dim in (0, 1):
            for k in range(scores.shape[dim] + 1):
                order = torch.sort(scores, dim=dim, stable=True).indices.narrow(dim, 0, k)
                expected = torch.zeros_like(scores, dtype=torch.bool).scatter(dim, order, True)
                assert torch.equal(_lowest(scores, k, dim), expected)


@pytest.mark.parametrize("features", [40, 300, 1000])
def test_lower_rank_update_is_the_lower_triangle_of_the_full_product(features):
    """Blocks on and below the diagonal only (several blocks from 256 features on), each scaled and added as
    the full product would be: the lower triangle is bit-identical to the full running sum's, so SparseGPT's
    masks do not depend on the blocking."""
    gen = torch.Generator().manual_seed(1)
    first, second = torch.randn(200, features, generator=gen), torch.randn(100, features, generator=gen)
    full, lower = torch.zeros(features, features), torch.zeros(features, features)
    for x, kept in ((first, 0.0), (second, 0.4)):
        full *= kept
        full += x.t() @ x
        lower_rank_update(lower, x, kept)
    assert torch.equal(torch.tril(lower), torch.tril(full))
    result = symmetric_from_lower(lower)
    assert torch.equal(result, result.t()) and torch.equal(torch.tril(result), torch.tril(full))
