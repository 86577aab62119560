"""FARMS (HUST-AI-HYZ/FARMS) as an AlphaPruning estimator, and the spectra's weight precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from atp_viz.pruning import layer_stats
from atp_viz.pruning.layer_stats import (
    alpha_hill_farms,
    alpha_hill_official,
    block_alphas,
    farms_eigenvalues,
    official_fit,
    spectral_weight,
)
from atp_viz.schedules.methods import ScheduleSpec


def weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) / math.sqrt(cols)


def windows(matrix: torch.Tensor, rows: int, ratio: float, per_dim: int) -> list[tuple[int, int, int, int]]:
    """fixed_sampling's windows, transcribed from LLM_Pruning/lib/sampling.py."""
    R, C = matrix.shape
    num_row_samples = min(rows, min(R, C))
    num_col_samples = int(num_row_samples * ratio)
    row_step = max(1, (R - num_row_samples) // (per_dim - 1))
    col_step = max(1, (C - num_col_samples) // (per_dim - 1))
    num_row_windows = min(per_dim, max(1, (R - num_row_samples) // row_step + 1))
    num_col_windows = min(per_dim, max(1, (C - num_col_samples) // col_step + 1))
    out = []
    for i in range(num_row_windows):
        for j in range(num_col_windows):
            row_start = min(i * row_step, R - num_row_samples)
            col_start = min(j * col_step, C - num_col_samples)
            out.append((row_start, num_row_samples, col_start, num_col_samples))
    return out


@pytest.mark.parametrize(("shape", "count"), [((48, 48), 1), ((144, 48), 15), ((48, 144), 15), ((16, 48), 15)])
def test_farms_pools_the_spectra_of_square_windows(shape: tuple[int, int], count: int) -> None:
    w = weight(*shape)
    spans = windows(w, 2000, 1.0, 15)
    assert len(spans) == count  # the released configuration: min(R, C) rows, ratio 1, 15 windows per side
    expected = (
        torch.cat([torch.linalg.svdvals(w[r : r + nr, c : c + nc]).square() for r, nr, c, nc in spans]).sort().values
    )
    got = farms_eigenvalues(w)
    assert got.shape == (count * min(shape),)
    torch.testing.assert_close(got, expected)
    np.testing.assert_allclose(
        np.sort(np.linalg.svd(w[: min(shape), : min(shape)].numpy().astype(np.float64), compute_uv=False) ** 2),
        np.sort(torch.linalg.svdvals(w[: min(shape), : min(shape)]).square().numpy()),
        rtol=1e-4,
    )


def test_farms_windows_follow_rows_ratio_and_steps() -> None:
    w = weight(100, 60)
    for rows, ratio, per_dim in ((20, 2.0, 4), (30, 1.0, 3), (60, 0.5, 5)):
        spans = windows(w, rows, ratio, per_dim)
        got = farms_eigenvalues(w, rows, ratio, per_dim)
        assert got.numel() == sum(min(nr, nc) for _, nr, _, nc in spans)
        expected = torch.cat([torch.linalg.svdvals(w[r : r + nr, c : c + nc]).square() for r, nr, c, nc in spans])
        torch.testing.assert_close(got, expected.sort().values)


def test_farms_equals_alphapruning_on_a_square_matrix() -> None:
    square = weight(64, 64, seed=3)  # one window: the whole matrix, so the same spectrum and fit
    assert alpha_hill_farms(square) == alpha_hill_official(square)
    tall = weight(192, 64, seed=4)
    assert alpha_hill_farms(tall) == official_fit(farms_eigenvalues(tall))
    assert alpha_hill_farms(tall) != alpha_hill_official(tall)  # the aspect ratio no longer enters the fit


def test_official_fit_by_hand_on_a_small_spectrum() -> None:
    """The xmin_peak fit, transcribed: visited candidates, Hill alpha, KS distance, first argmin."""
    eigs = torch.tensor([0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0, 9.0, 20.0])
    log10 = torch.log10(eigs)
    counts = torch.histc(log10, bins=100, min=float(log10.min()), max=float(log10.max()))
    peak = 10 ** torch.linspace(float(log10.min()), float(log10.max()), 101)[torch.argmax(counts)]
    best, best_d = 0.0, 1.0
    for k in range(eigs.numel() - 1):
        xmin = eigs[k]
        if xmin < math.log10(0.95 * float(peak)):
            continue
        if xmin > 1.5 * peak:
            break
        tail = eigs[k:].double()
        n = tail.numel()
        alpha = 1 + n / float(tail.log().sum() - n * math.log(float(xmin)))
        if alpha > 1:
            d = float(torch.max(torch.abs(1 - (tail / float(xmin)) ** (1 - alpha) - torch.arange(n) / n)))
            if d < best_d:
                best, best_d = alpha, d
    assert official_fit(eigs) == pytest.approx(best, rel=1e-5)


def test_spectra_precision_rounds_to_float16_first() -> None:
    w = weight(64, 32, seed=5)
    assert spectral_weight(w, "float16").dtype == torch.float16
    torch.testing.assert_close(spectral_weight(w, "float32"), w)
    block = nn.ModuleDict({"a": nn.Linear(32, 64, bias=False)})
    with torch.no_grad():
        block["a"].weight.copy_(w)
    assert block_alphas([block], "official", "float16")[0] == alpha_hill_official(w.half())
    assert block_alphas([block], "official", "float32")[0] == alpha_hill_official(w)
    assert block_alphas([block], "farms", "float32")[0] == alpha_hill_farms(w)
    with pytest.raises(ValueError, match="allowed: float16, float32"):
        block_alphas([block], "official", "bfloat8")
    with pytest.raises(ValueError, match="overflows float16"):
        spectral_weight(torch.full((4, 4), 1e6), "float16")


def test_registry_offers_farms_and_the_precision_defaults_to_the_official_codes() -> None:
    spec = ScheduleSpec("alphapruning", 0.7)
    assert spec.get("estimator") == "official" and spec.get("precision") == "float16"
    assert ScheduleSpec("alphapruning", 0.7, estimator="farms", precision="float32").params()["precision"] == "float32"
    assert set(layer_stats.ALPHA_ESTIMATORS) == {"official", "window", "farms"}
    with pytest.raises(ValueError, match="allowed: float16, float32"):
        ScheduleSpec("alphapruning", 0.7, precision="int8")
