"""Unit tests of the pruning math, the statistics accumulators and the pruner strategies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from atp_viz.pruning.pruners import (
    ColumnNorms,
    Hessian,
    MagnitudePruner,
    SparseGPTPruner,
    WandaPruner,
    get_pruner,
    magnitude,
    mask_from_order,
    order_by_score,
    prune_count,
    row_prune_mask,
    sparsegpt,
    wanda,
)

RATES = [0.0, 0.1, 0.29, 0.5, 0.7, 0.9, 1.0]


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def correlated_inputs(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose features share a few latent factors and differ in scale, like LLM activations."""
    latent = randn(tokens, 8, seed=seed) @ randn(8, features, seed=seed + 1)
    scales = torch.linspace(0.2, 3.0, features)
    return (latent + 0.3 * randn(tokens, features, seed=seed + 2)) * scales  # (tokens, in)


def output_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    """||W X - W' X||_F^2 with X laid out as (tokens, in)."""
    return ((x @ (weight - pruned).T) ** 2).sum().item()


# --- masks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", RATES)
def test_magnitude_prunes_exact_count_per_row(sparsity: float) -> None:
    weight = randn(7, 100)
    mask = magnitude(weight, sparsity)
    assert mask.dtype == torch.bool and mask.shape == weight.shape
    assert mask.sum(dim=1).tolist() == [math.floor(100 * sparsity + 1e-9)] * 7
    # every pruned weight is no larger than every kept weight of its row
    kept_min = weight.abs().masked_fill(mask, math.inf).min(dim=1).values
    pruned_max = weight.abs().masked_fill(~mask, -math.inf).max(dim=1).values
    assert torch.all(pruned_max <= kept_min)


def test_prune_count_is_float_safe() -> None:
    assert 0.29 * 100 < 29  # the product rounds down in floating point...
    assert prune_count(100, 0.29) == 29  # ...but the count does not


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (4, 8)])
def test_nm_pattern_exact(nm: tuple[int, int]) -> None:
    weight = randn(6, 32)
    for mask in (magnitude(weight, 0.5, nm), wanda(weight, randn(32, seed=1).abs(), 0.5, nm)):
        assert torch.all(mask.reshape(6, -1, nm[1]).sum(dim=2) == nm[0])
    groups = weight.abs().reshape(6, -1, nm[1])
    expected = groups <= groups.sort(dim=2).values[..., nm[0] - 1 : nm[0]]
    assert torch.equal(magnitude(weight, 0.5, nm), expected.reshape(6, 32))


def test_nm_needs_divisible_columns_and_valid_pattern() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        magnitude(randn(2, 10), 0.5, (2, 4))
    with pytest.raises(ValueError, match="0 < N < M"):
        magnitude(randn(2, 8), 0.5, (4, 4))


def test_rate_zero_prunes_nothing_even_with_nm() -> None:
    assert not magnitude(randn(3, 8), 0.0, (2, 4)).any()


@pytest.mark.parametrize("sparsity", [-0.1, 1.1, math.nan, "half"])
def test_bad_rate_rejected(sparsity: object) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be .*\[0, 1\]"):
        magnitude(randn(2, 4), sparsity)  # type: ignore[arg-type]


def brute_force_wanda(weight: torch.Tensor, norms: torch.Tensor, sparsity: float) -> torch.Tensor:
    mask = torch.zeros(weight.shape, dtype=torch.bool)
    rows, cols = weight.shape
    for j in range(rows):
        scores = [(abs(weight[j, k].item()) * norms[k].item(), k) for k in range(cols)]
        for _, k in sorted(scores)[: int(cols * sparsity + 1e-9)]:
            mask[j, k] = True
    return mask


@pytest.mark.parametrize(("rows", "cols", "sparsity"), [(5, 12, 0.5), (3, 20, 0.7), (4, 9, 0.34)])
def test_wanda_matches_brute_force(rows: int, cols: int, sparsity: float) -> None:
    weight, norms = randn(rows, cols, seed=rows), randn(cols, seed=cols).abs()
    assert torch.equal(wanda(weight, norms, sparsity), brute_force_wanda(weight, norms, sparsity))


def test_wanda_differs_from_magnitude_when_norms_differ() -> None:
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norms = torch.tensor([10.0, 1.0, 1.0, 1.0])
    assert magnitude(weight, 0.5).tolist() == [[True, True, False, False]]
    assert wanda(weight, norms, 0.5).tolist() == [[False, True, True, False]]


def test_wanda_rejects_wrong_norm_shape() -> None:
    with pytest.raises(ValueError, match=r"col_norms must have shape \(4,\)"):
        wanda(randn(2, 4), torch.ones(3), 0.5)


@pytest.mark.parametrize("sparsity", RATES)
def test_mask_from_order_equals_row_prune_mask(sparsity: float) -> None:
    scores = randn(9, 33).abs()
    scores[:, 5] = scores[:, 6]  # ties must resolve the same way in both paths
    assert torch.equal(mask_from_order(order_by_score(scores), sparsity), row_prune_mask(scores, sparsity))


def test_masks_nest_as_the_rate_grows() -> None:
    order = order_by_score(randn(4, 50).abs())
    masks = [mask_from_order(order, rate) for rate in RATES]
    for low, high in zip(masks, masks[1:]):
        assert torch.all(high[low])


# --- SparseGPT ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_beats_magnitude_and_wanda_on_output_error(sparsity: float) -> None:
    x = correlated_inputs(512, 256)
    weight = randn(32, 256, seed=5)
    hessian, norms = Hessian(256), ColumnNorms(256)
    hessian.add(x)
    norms.add(x)
    errors = {
        "sparsegpt": output_error(weight, sparsegpt(weight, hessian.result(), sparsity), x),
        "wanda": output_error(weight, weight.masked_fill(wanda(weight, norms.result(), sparsity), 0), x),
        "magnitude": output_error(weight, weight.masked_fill(magnitude(weight, sparsity), 0), x),
    }
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


@pytest.mark.parametrize(
    ("rows", "cols", "blocksize", "sparsity"),
    [(16, 256, 128, 0.5), (7, 100, 32, 0.7), (3, 50, 128, 0.33), (4, 64, 16, 1.0)],
)
def test_sparsegpt_total_zeros_exact(rows: int, cols: int, blocksize: int, sparsity: float) -> None:
    x = correlated_inputs(300, cols)
    hessian = Hessian(cols)
    hessian.add(x)
    pruned = sparsegpt(randn(rows, cols), hessian.result(), sparsity, blocksize=blocksize)
    # the documented guarantee: exactly floor(numel * rate) zeros over the whole weight
    assert (pruned == 0).sum().item() == prune_count(rows * cols, sparsity)


def test_sparsegpt_nm_pattern_and_dtype() -> None:
    x = correlated_inputs(300, 64)
    hessian = Hessian(64)
    hessian.add(x)
    weight = randn(8, 64).to(torch.bfloat16)
    pruned = sparsegpt(weight, hessian.result(), 0.5, nm=(2, 4), blocksize=32)
    assert pruned.dtype == torch.bfloat16 and pruned.shape == weight.shape
    assert torch.all((pruned.reshape(8, -1, 4) == 0).sum(dim=2) == 2)


def test_sparsegpt_dead_inputs_are_zeroed_and_rate_zero_is_identity() -> None:
    x = correlated_inputs(200, 32)
    x[:, 3] = 0.0  # a feature that never fires
    hessian = Hessian(32)
    hessian.add(x)
    weight = randn(4, 32)
    assert torch.equal(sparsegpt(weight, hessian.result(), 0.0), weight)
    pruned = sparsegpt(weight, hessian.result(), 0.25)
    assert torch.all(pruned[:, 3] == 0)
    assert (pruned == 0).sum().item() == prune_count(4 * 32, 0.25)


def test_sparsegpt_argument_checks() -> None:
    with pytest.raises(ValueError, match=r"hessian must have shape \(8, 8\)"):
        sparsegpt(randn(2, 8), torch.eye(4), 0.5)
    with pytest.raises(ValueError, match="blocksize must be a multiple of M=4"):
        sparsegpt(randn(2, 8), torch.eye(8), 0.5, nm=(2, 4), blocksize=6)


# --- accumulators -------------------------------------------------------------------------------


def test_accumulators_equal_batch_formula() -> None:
    batches = [randn(2, 5, 6, seed=1), randn(3, 6, seed=2).to(torch.float16), randn(1, 4, 6, seed=3)]
    x = torch.cat([batch.reshape(-1, 6).float() for batch in batches])  # (tokens, in)
    norms, hessian = ColumnNorms(6), Hessian(6)
    for batch in batches:
        norms.add(batch)
        hessian.add(batch)
    assert norms.tokens == hessian.tokens == x.shape[0] == 17
    torch.testing.assert_close(norms.result(), x.norm(dim=0))
    torch.testing.assert_close(hessian.result(), 2 * x.T @ x / x.shape[0])
    assert hessian.result().dtype == norms.result().dtype == torch.float32


def test_accumulators_reject_wrong_width() -> None:
    for stats in (ColumnNorms(6), Hessian(6)):
        with pytest.raises(ValueError, match="end with 6 features"):
            stats.add(torch.ones(3, 5))


# --- strategies ---------------------------------------------------------------------------------


def test_get_pruner() -> None:
    assert isinstance(get_pruner("magnitude"), MagnitudePruner)
    assert isinstance(get_pruner("wanda"), WandaPruner)
    assert isinstance(get_pruner("sparsegpt"), SparseGPTPruner)
    assert [get_pruner(n).needs_inputs for n in ("magnitude", "wanda", "sparsegpt")] == [False, True, True]
    with pytest.raises(ValueError, match="unknown pruner 'x'; allowed: wanda, sparsegpt, magnitude"):
        get_pruner("x")


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
def test_prune_in_place_through_strategy(name: str) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 16)
    pruner = get_pruner(name)
    stats = pruner.new_stats(64, "cpu")
    assert (stats is None) == (not pruner.needs_inputs)
    if stats is not None:
        stats.add(correlated_inputs(128, 64))
    before = linear.weight.detach().clone()
    pruner.prune_(linear, stats, 0.0, None)
    assert torch.equal(linear.weight, before)  # rate 0 is a no-op
    pruner.prune_(linear, stats, 0.5, None)
    assert (linear.weight == 0).sum().item() == 16 * 32
    assert linear.weight.requires_grad  # still the same parameter
    pruner.prune_(linear, stats, 0.5, (2, 4))
    assert torch.all((linear.weight.reshape(16, -1, 4) == 0).sum(dim=2) >= 2)


def test_strategy_checks_stats_and_rate() -> None:
    linear = nn.Linear(8, 4)
    with pytest.raises(ValueError, match="wanda needs ColumnNorms statistics"):
        WandaPruner().prune_(linear, None, 0.5, None)
    with pytest.raises(ValueError, match="sparsegpt needs Hessian statistics"):
        SparseGPTPruner().prune_(linear, ColumnNorms(8), 0.5, None)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MagnitudePruner().prune_(linear, None, 1.5, None)


@pytest.mark.parametrize("seed", range(5))
def test_lowest_mask_equals_the_stable_order_prefix_with_many_ties(seed: int) -> None:
    """Quantized weights tie often: the top-k shortcut must break ties exactly like the stable sort."""
    from atp_viz.pruning.pruners import lowest_mask

    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        rows, cols = torch.randint(1, 30, (2,), generator=g).tolist()
        scores = torch.randint(0, 4, (rows, cols), generator=g).float()
        for rate in (0.0, 0.1, 0.5, 0.7, 0.99, 1.0):
            expected = mask_from_order(order_by_score(scores), rate)
            assert torch.equal(lowest_mask(scores, prune_count(cols, rate)), expected)
