"""Unit tests of the OWL and AlphaPruning block statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from atp_viz.pruning.layer_stats import (
    alpha_hill,
    alpha_hill_official,
    block_alphas,
    block_param_counts,
    outlier_ratio,
    prunable_linears,
)


class TinyBlock(nn.Module):
    """A decoder-block shape: attention and MLP linears plus modules that are not prunable."""

    def __init__(self, hidden: int = 32, inner: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.attn = nn.ModuleDict(
            {"q_proj": nn.Linear(hidden, hidden, bias=False), "o_proj": nn.Linear(hidden, hidden)}
        )
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))
        self.conv = nn.Conv1d(hidden, hidden, 1)


def test_outlier_ratio_exact() -> None:
    scores = torch.tensor([1.0] * 9 + [100.0])  # mean 10.9: only 100 exceeds 5 x mean
    assert outlier_ratio(scores) == 10.0
    assert outlier_ratio(scores, m=0.5) == 10.0
    assert outlier_ratio(scores, m=0.05) == 100.0


def test_outlier_ratio_counts_every_entry_of_any_shape_and_dtype() -> None:
    scores = torch.ones(4, 5, dtype=torch.bfloat16)
    scores[0, 0] = scores[3, 4] = 50.0  # mean 5.9 -> threshold 17.7 at m = 3
    assert outlier_ratio(scores, m=3.0) == 10.0
    assert outlier_ratio(torch.full((7,), 2.0)) == 0.0  # nothing exceeds a multiple >= 1 of itself


@pytest.mark.parametrize(
    ("scores", "m", "match"),
    [
        (torch.empty(0), 5.0, "empty"),
        (torch.ones(3), -1.0, "m must be a finite number >= 0"),
        (torch.ones(3), float("nan"), "m must be a finite number >= 0"),
    ],
)
def test_outlier_ratio_bad_input(scores: torch.Tensor, m: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        outlier_ratio(scores, m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heavy_tailed_weight_has_smaller_alpha(seed: int) -> None:
    torch.manual_seed(seed)
    gaussian = torch.randn(512, 128)
    # Student-t entries with 1.5 degrees of freedom give a power-law eigenvalue tail
    heavy = torch.distributions.StudentT(1.5).sample((512, 128))
    assert alpha_hill(heavy) + 1.0 < alpha_hill(gaussian)


def test_alpha_hill_scale_invariant_and_dtype_tolerant() -> None:
    weight = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
    alpha = alpha_hill(weight)
    assert alpha > 1.0
    assert alpha_hill(10.0 * weight) == pytest.approx(alpha, rel=1e-4)
    assert alpha_hill(weight.double()) == pytest.approx(alpha, rel=1e-4)
    assert alpha_hill(weight.t()) == pytest.approx(alpha, rel=1e-4)  # same nonzero spectrum
    assert alpha_hill(weight.bfloat16()) == pytest.approx(alpha, rel=0.1)


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (torch.zeros(8, 8), "non-zero singular values"),
        (torch.ones(8, 8), "non-zero singular values"),  # rank 1
        (torch.eye(8), "flat"),
        (torch.ones(8), "2-D"),
    ],
)
def test_alpha_hill_degenerate_weights(weight: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        alpha_hill(weight)


def test_prunable_linears_finds_nested_linears_only() -> None:
    block = TinyBlock()
    linears = prunable_linears(block)
    assert list(linears) == ["attn.q_proj", "attn.o_proj", "mlp.0", "mlp.2"]
    assert linears["mlp.2"] is block.mlp[2]


def test_block_param_counts_exclude_biases_and_other_modules() -> None:
    counts = block_param_counts([TinyBlock(), TinyBlock(hidden=16, inner=32)])
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [2 * 32 * 32 + 2 * 32 * 64, 2 * 16 * 16 + 2 * 16 * 32])


def test_block_alphas_is_mean_over_linears() -> None:
    torch.manual_seed(0)
    blocks = [TinyBlock(), TinyBlock()]
    alphas = block_alphas(blocks)  # weights rounded to float16 first, as both official codes load them
    assert alphas.shape == (2,) and alphas.dtype == np.float64
    for block, alpha in zip(blocks, alphas):
        expected = np.mean([alpha_hill_official(lin.weight.half()) for lin in prunable_linears(block).values()])
        assert alpha == pytest.approx(expected)
    window = block_alphas(blocks, "window", "float32")
    for block, alpha in zip(blocks, window):
        assert alpha == pytest.approx(
            np.mean([alpha_hill(linear.weight) for linear in prunable_linears(block).values()])
        )
    with pytest.raises(ValueError, match="allowed: official, window"):
        block_alphas(blocks, "best")


def test_official_estimator_keeps_zero_eigenvalues() -> None:
    """AlphaPruning's code fits the whole spectrum, near-zero eigenvalues included (no floor)."""
    torch.manual_seed(0)
    low_rank = torch.randn(64, 8) @ torch.randn(8, 64)  # 56 eigenvalues ~ 0
    alpha = alpha_hill_official(low_rank)
    assert math.isfinite(alpha) and alpha != pytest.approx(alpha_hill(low_rank))
    scaled = alpha_hill_official(3.0 * torch.randn(64, 64, generator=torch.Generator().manual_seed(1)))
    assert math.isfinite(scaled) and scaled > 1


def test_block_without_linears_rejected() -> None:
    with pytest.raises(ValueError, match="block 1 has no nn.Linear"):
        block_param_counts([TinyBlock(), nn.LayerNorm(4)])
