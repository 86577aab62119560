"""Per-block statistics that OWL and AlphaPruning map to sparsity rates.

- OWL: the outlier ratio of a block's Wanda scores (share of scores above M times their mean).
- AlphaPruning: PL_Alpha_Hill, the power-law exponent of the tail of a weight's eigenvalue
  spectrum (eigenvalues of W^T W); a smaller alpha marks a better-trained, more important layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from atp_viz.config import check_choice
from atp_viz.schedules import published
from atp_viz.schedules.published import OWL_M

PERCENT = 100.0
HIST_BINS = 100  # AlphaPruning / WeightWatcher "xmin_peak": peak of a 100-bin log10 histogram
XMIN_LOW = 0.95  # xmin candidates lie in [XMIN_LOW, XMIN_HIGH] * peak (AlphaPruning window)
XMIN_HIGH = 1.5
EIG_REL_FLOOR = 1e-10  # eigenvalues below this fraction of the largest are numerical zeros
# FARMS's released run configurations (LLM_Pruning/scripts/llm_pruning_main.txt, Wanda at 70 % on LLaMA-7B/13B):
# --num_row_samples 2000 --Q_ratio 1 --sampling_ops_per_dim 15 --use_sliding_window True
FARMS_ROWS = 2000
FARMS_RATIO = 1.0
FARMS_OPS = 15


def outlier_ratio(scores: torch.Tensor, m: float = OWL_M) -> float:
    """OWL's layerwise outlier distribution D = 100 * mean(score > m * mean(score)).

    Taken over every entry of ``scores``; for a block, pass the flattened Wanda scores
    |W| * ||X_col||_2 of all its linears concatenated.
    """
    if scores.numel() == 0:
        raise ValueError("outlier_ratio needs at least one score, got an empty tensor")
    if not (math.isfinite(m) and m >= 0):
        raise ValueError(f"outlier multiple m must be a finite number >= 0, got {m}")
    values = scores.detach().float()
    outliers = torch.count_nonzero(values > m * values.mean()).item()
    return PERCENT * outliers / values.numel()


def _eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """Ascending non-zero eigenvalues of W^T W = svdvals(W)^2, float64, on the weight's device."""
    if weight.ndim != 2:
        raise ValueError(f"alpha_hill needs a 2-D weight, got shape {tuple(weight.shape)}")
    matrix = weight.detach().to(torch.float64 if weight.dtype == torch.float64 else torch.float32)
    eigs = torch.linalg.svdvals(matrix).to(torch.float64).square().sort().values
    eigs = eigs[eigs > EIG_REL_FLOOR * eigs[-1]]  # log(0) would poison the fit
    if eigs.numel() < 2 or eigs[-1] == 0:
        raise ValueError("alpha_hill needs a weight with at least 2 non-zero singular values")
    return eigs


def _xmin_candidates(eigs: torch.Tensor) -> torch.Tensor:
    """Indices k (never the largest) with e_k within [0.95, 1.5] x the peak of the log10 ESD.

    The peak is the left edge of the fullest of 100 equal bins of log10(e). When no eigenvalue
    falls in the window every index is a candidate.
    """
    logs = torch.log10(eigs)
    low, high = logs[0].item(), logs[-1].item()
    counts = torch.histc(logs, bins=HIST_BINS, min=low, max=high)
    peak = 10 ** (low + counts.argmax().item() * (high - low) / HIST_BINS)
    body = eigs[:-1]
    inside = torch.nonzero((body >= XMIN_LOW * peak) & (body <= XMIN_HIGH * peak)).flatten()
    return inside if inside.numel() else torch.arange(body.numel(), device=eigs.device)


def _hill_fit(tail: torch.Tensor, log_tail: torch.Tensor) -> tuple[float, float]:
    """Hill estimate alpha = 1 + n / (sum_j ln e_j - n ln xmin) over the n eigenvalues e_j >= xmin
    = tail[0], and the KS distance max_j |1 - (e_j / xmin)^(1 - alpha) - j / n| between the fitted
    power-law CDF and the empirical one. A flat tail has no fit: (nan, inf)."""
    n = tail.numel()
    spread = (log_tail.sum() - n * log_tail[0]).item()
    if spread <= 0:
        return math.nan, math.inf
    alpha = 1 + n / spread
    empirical = torch.arange(n, dtype=tail.dtype, device=tail.device) / n
    fitted = 1 - (tail / tail[0]) ** (1 - alpha)
    return alpha, (fitted - empirical).abs().max().item()


def alpha_hill(weight: torch.Tensor) -> float:
    """PL_Alpha_Hill of a weight ("xmin_peak" variant of AlphaPruning / WeightWatcher).

    Eigenvalues e = svdvals(W)^2 (SVD in float32, or float64 for float64 weights, on the weight's
    device); for every candidate xmin = e_k near the peak of the log10 histogram, the Hill
    estimate alpha_k = 1 + n / (sum_{j>=k} ln e_j - n ln e_k) with n = #(e >= e_k); returns the
    alpha_k whose power-law fit has the smallest Kolmogorov-Smirnov distance. Scale-invariant.
    This is the *corrected window* (estimator ``"window"``): eigenvalues under ``EIG_REL_FLOOR`` x
    the largest are dropped and both window bounds are applied to eigenvalues. The AlphaPruning code
    (``alpha_hill_official``, the default) compares xmin with log10(0.95 * peak), a mixed-scale test
    that makes its lower bound inert when the peak is small, and keeps every eigenvalue.
    """
    eigs = _eigenvalues(weight)
    logs = eigs.log()
    best_alpha, best_distance = math.nan, math.inf
    for k in _xmin_candidates(eigs).tolist():
        alpha, distance = _hill_fit(eigs[k:], logs[k:])
        if distance < best_distance:
            best_alpha, best_distance = alpha, distance
    if math.isnan(best_alpha):
        raise ValueError("alpha_hill found no power-law tail: the spectrum is flat")
    return best_alpha


def alpha_hill_official(weight: torch.Tensor) -> float:
    """PL_Alpha_Hill exactly as AlphaPruning's ``net_esd_estimator(fix_fingers="xmin_peak")`` computes it.

    Float32 throughout; e = sorted svdvals(W)^2 with no eigenvalue dropped, fitted by ``official_fit``.
    """
    if weight.ndim != 2:
        raise ValueError(f"alpha_hill needs a 2-D weight, got shape {tuple(weight.shape)}")
    return official_fit(torch.linalg.svdvals(weight.detach().cpu().to(torch.float32)).square().sort().values)


def official_fit(eigs: torch.Tensor) -> float:
    """The "xmin_peak" fit of AlphaPruning's ``net_esd_estimator`` (and FARMS's ``analysis_esd``) on ascending
    float32 eigenvalues ``eigs``.

    peak = 10^(left edge of the fullest of 100 bins of log10 e); candidates k (never the largest) are visited in
    ascending order, skipped while e_k < log10(0.95 * peak) (the official mixed-scale lower bound) and stopped
    once e_k > 1.5 * peak. Each visited k gets alpha_k = 1 + n / (sum_{j>=k} ln e_j - n ln e_k) and, when
    alpha_k > 1, its KS distance D_k; unvisited or alpha <= 1 candidates keep D = 1 and alpha = 0. The result is
    alpha at the first minimum of D, as ``torch.argmin`` picks it.
    """
    logs = eigs.log()
    count = eigs.numel()
    if count < 2:
        raise ValueError("alpha_hill needs a weight with at least 2 singular values")
    alphas, distances = torch.zeros(count - 1), torch.ones(count - 1)
    log10 = torch.log10(eigs)
    counts = torch.histc(log10, bins=HIST_BINS, min=float(log10.min()), max=float(log10.max()))
    edges = torch.linspace(float(log10.min()), float(log10.max()), HIST_BINS + 1)
    peak = 10 ** edges[torch.argmax(counts)]
    low, high = torch.log10(XMIN_LOW * peak), XMIN_HIGH * peak  # the lower bound as the official code has it
    for k, xmin in enumerate(eigs[:-1]):
        if xmin < low:
            continue
        if xmin > high:
            break
        n = float(count - k)
        alpha = 1 + n / (torch.sum(logs[k:]) - n * logs[k])
        alphas[k] = alpha
        if alpha > 1:
            seq = torch.arange(n)
            distances[k] = torch.max(torch.abs(1 - (eigs[k:] / xmin) ** (-alpha + 1) - seq / n))
    return float(alphas[torch.argmin(distances)])


def farms_eigenvalues(
    weight: torch.Tensor, rows: int = FARMS_ROWS, ratio: float = FARMS_RATIO, per_dim: int = FARMS_OPS
) -> torch.Tensor:
    """FARMS's pooled spectrum (``sampling.fixed_sampling`` of HUST-AI-HYZ/FARMS, LLM_Pruning/lib): ascending
    float32 eigenvalues of fixed-aspect-ratio sub-matrices of W.

    r = min(rows, min(R, C)) rows and c = int(r * ratio) columns per window; steps max(1, (R - r) // (per_dim - 1))
    and max(1, (C - c) // (per_dim - 1)); min(per_dim, max(1, (R - r) // step + 1)) windows per dimension, each
    starting at min(i * step, R - r) (columns alike); every window's svdvals^2, concatenated and sorted.
    """
    if weight.ndim != 2:
        raise ValueError(f"alpha_hill needs a 2-D weight, got shape {tuple(weight.shape)}")
    if rows < 1 or ratio <= 0 or per_dim < 2:
        raise ValueError(f"FARMS needs rows >= 1, ratio > 0 and per_dim >= 2, got {rows}, {ratio:g}, {per_dim}")
    matrix = weight.detach().cpu().to(torch.float32)
    total_rows, total_cols = matrix.shape
    rows = min(rows, min(total_rows, total_cols))
    cols = int(rows * ratio)
    row_step = max(1, (total_rows - rows) // (per_dim - 1))
    col_step = max(1, (total_cols - cols) // (per_dim - 1))
    row_windows = min(per_dim, max(1, (total_rows - rows) // row_step + 1))
    col_windows = min(per_dim, max(1, (total_cols - cols) // col_step + 1))
    eigs = []
    for i in range(row_windows):
        for j in range(col_windows):
            top = min(i * row_step, total_rows - rows)
            left = min(j * col_step, total_cols - cols)
            eigs.append(torch.linalg.svdvals(matrix[top : top + rows, left : left + cols]).square())
    return torch.cat(eigs).sort().values


def alpha_hill_farms(weight: torch.Tensor) -> float:
    """FARMS (ICML 2025): AlphaPruning's fit (``official_fit``) on the pooled spectrum of fixed-aspect-ratio
    sub-matrices (``farms_eigenvalues`` at the released configuration: 2000 rows, ratio 1, 15 windows per side)."""
    return official_fit(farms_eigenvalues(weight))


# official = AlphaPruning's code; farms = FARMS's sub-sampled spectra (its released run configurations)
ALPHA_ESTIMATORS = dict(zip(published.ALPHA_ESTIMATORS, (alpha_hill_official, alpha_hill, alpha_hill_farms)))
# the weights' precision before the spectra: both official codes load the model in float16 (get_llm), then .float()
SPECTRA_DTYPES = {name: getattr(torch, name) for name in published.SPECTRA_PRECISIONS}


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside a decoder block, by qualified name within the block.

    GPT-2's ``Conv1D`` projections are converted to ``nn.Linear`` when the model is loaded
    (``models.swap_conv1d``), so they are found here too.
    """
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def _linears_of(block: nn.Module, index: int) -> list[nn.Linear]:
    linears = list(prunable_linears(block).values())
    if not linears:
        raise ValueError(f"block {index} has no nn.Linear to measure or prune")
    return linears


def spectral_weight(weight: torch.Tensor, precision: str = published.SPECTRA_PRECISION) -> torch.Tensor:
    """The weight the spectra are taken of: rounded to float16 as both official codes load it, or float32."""
    check_choice("spectra precision", precision, tuple(SPECTRA_DTYPES))
    rounded = weight.detach().to(SPECTRA_DTYPES[precision])
    if not bool(torch.isfinite(rounded).all()):
        raise ValueError(f"a weight overflows {precision}; allowed precisions: {', '.join(SPECTRA_DTYPES)}")
    return rounded


def block_alphas(
    blocks: Iterable[nn.Module], estimator: str = "official", precision: str = published.SPECTRA_PRECISION
) -> np.ndarray:
    """AlphaPruning's block metric: the mean alpha_hill of each block's linears (float64).

    ``estimator``: ``"official"`` (AlphaPruning's code, default), ``"window"`` (corrected window) or ``"farms"``
    (FARMS's sub-sampled spectra). ``precision``: the weights rounded to ``"float16"`` first (both official codes
    load the model in float16; default) or taken in ``"float32"``.
    """
    check_choice("alpha estimator", estimator, tuple(ALPHA_ESTIMATORS))
    check_choice("spectra precision", precision, tuple(SPECTRA_DTYPES))
    fit = ALPHA_ESTIMATORS[estimator]
    return np.array(
        [
            np.mean([fit(spectral_weight(linear.weight, precision)) for linear in _linears_of(block, i)])
            for i, block in enumerate(blocks)
        ],
        dtype=np.float64,
    )


def block_param_counts(blocks: Iterable[nn.Module]) -> np.ndarray:
    """Number of weights in each block's prunable linears (biases excluded): the weights of a
    parameter-weighted mean sparsity."""
    return np.array(
        [sum(linear.weight.numel() for linear in _linears_of(block, i)) for i, block in enumerate(blocks)],
        dtype=np.int64,
    )
