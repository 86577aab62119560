"""Per-block statistics that OWL and AlphaPruning map to sparsity rates.

- OWL: the outlier ratio of a block's Wanda scores (share of scores above M times their mean).
- AlphaPruning: PL_Alpha_Hill, the power-law exponent of the tail of a weight's eigenvalue
  spectrum (eigenvalues of W^T W); a smaller alpha marks a better-trained, more important layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

OUTLIER_MULTIPLE = 5.0  # OWL paper's M for its 70% runs (the OWL code defaults to 3)
PERCENT = 100.0
HIST_BINS = 100  # AlphaPruning / WeightWatcher "xmin_peak": peak of a 100-bin log10 histogram
XMIN_LOW = 0.95  # xmin candidates lie in [XMIN_LOW, XMIN_HIGH] * peak (AlphaPruning window)
XMIN_HIGH = 1.5
EIG_REL_FLOOR = 1e-10  # eigenvalues below this fraction of the largest are numerical zeros


def outlier_ratio(scores: torch.Tensor, m: float = OUTLIER_MULTIPLE) -> float:
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
    (The AlphaPruning code compares xmin with log10(0.95 * peak), a mixed-scale test that makes its
    lower bound inert; here both bounds are applied to eigenvalues.)
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


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside a decoder block, by qualified name within the block.

    Only ``nn.Linear`` counts: GPT-2 style ``transformers`` ``Conv1D`` projections (weight stored
    transposed) are not found here and would stay dense.
    """
    return {name: module for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def _linears_of(block: nn.Module, index: int) -> list[nn.Linear]:
    linears = list(prunable_linears(block).values())
    if not linears:
        raise ValueError(f"block {index} has no nn.Linear to measure or prune")
    return linears


def block_alphas(blocks: Sequence[nn.Module]) -> np.ndarray:
    """AlphaPruning's block metric: the mean alpha_hill of each block's linears (float64)."""
    return np.array([np.mean([alpha_hill(linear.weight) for linear in _linears_of(block, i)])
                     for i, block in enumerate(blocks)], dtype=np.float64)


def block_param_counts(blocks: Sequence[nn.Module]) -> np.ndarray:
    """Number of weights in each block's prunable linears (biases excluded): the weights of a
    parameter-weighted mean sparsity."""
    return np.array([sum(linear.weight.numel() for linear in _linears_of(block, i))
                     for i, block in enumerate(blocks)], dtype=np.int64)
