"""LSA (Yang et al., ICLR 2026, "Layer-wise Sparsity Allocation for LLM Pruning Based on Minimal Linear
Reconstruction Error") as its code computes the rates (pure numpy).

Official code: github.com/BeiYazi0/LSA, ``layersp/blk.py``. Per linear, ``BlockWanda.blk_s`` greedily prunes
half of every group of 128 input columns and sums the reconstruction error it adds (``lsa_stats.py``); E is a
(blocks x linears) array of those errors, measured on the dense model.

- ``--layer lsa`` (``blk_score``): E_l = |mean over the block's linears of E|; importance I = 1 - E / sum(E);
  d = (I - min I) / (max I - min I) * 2*alpha; s_l = S + mean(d) - d. alpha comes from the code's table
  ``[Lamda, 0.06, 0.02, 0.04, 0.02, 0.04, 0.1, 0.15, 0.12][int(S * 10)]`` (0.15 at S = 0.7; --Lamda only
  below S = 0.1).
- ``--layer lsac`` (``blk_score_global``, projection-wise): I = 1 - E / sum(E) over every (block, linear);
  d = (I - min I) / (max I - min I) * 2*Lamda; pruned weights n_p * S + (mean(d) - d) * mean(n) for a linear
  of n_p weights, so rate_p = S + (mean(d) - d_p) * mean(n) / n_p and the parameter-weighted mean is S.
  ``--layer lsab`` (block-wise in the README) runs the same function: its attention/MLP averaging branch tests
  ``args.layer == "blkb"``, so it never runs, and lsab equals lsac.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from atp_viz.config import check_choice, check_sparsity
from atp_viz.schedules import published

LAYER_ALPHAS = (None, 0.06, 0.02, 0.04, 0.02, 0.04, 0.1, 0.15, 0.12)  # BLK.alpha; index 0 is --Lamda
LAMBDA = 0.08  # main.py's --Lamda default (the README runs projection-wise at 0.07)
MAX_LAMBDA = 0.5
GRANULARITIES = ("layer", "projection")
GROUP = 128  # --block 128 in every README command
FRACTION = 0.5  # --resp: the share of each group's columns the error assumes pruned


def _errors(errors: ArrayLike) -> np.ndarray:
    values = np.array(errors, dtype=np.float64)
    if values.ndim != 2 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(
            f"LSA needs a finite (blocks x linears) array of reconstruction errors, got shape {values.shape}"
        )
    return values


def layer_alpha(sparsity: float, lam: float = LAMBDA) -> float:
    """The spread of layer-wise LSA: the code's table indexed by int(10 S) (--Lamda at index 0)."""
    index = int(check_sparsity(sparsity) * 10)
    if index >= len(LAYER_ALPHAS):
        raise ValueError(f"layer-wise LSA's code has spreads for sparsity below 0.9 only, got {sparsity:g}")
    table = LAYER_ALPHAS[index]
    return float(lam) if table is None else table


def _spread(importance: np.ndarray, half_width: float) -> np.ndarray:
    span = importance.max() - importance.min()
    if span == 0:
        return np.zeros_like(importance)
    return (importance - importance.min()) / span * 2 * half_width


def layer_rates(errors: ArrayLike, sparsity: float, lam: float = LAMBDA) -> np.ndarray:
    """``blk_score``: E_l = |mean_p E_lp|; I = 1 - E/sum E; d = minmax(I) * 2 alpha; s = S + mean(d) - d."""
    per_block = np.abs(_errors(errors).mean(axis=1))
    if per_block.sum() <= 0:
        raise ValueError("LSA needs reconstruction errors with a positive sum")
    d = _spread(1 - per_block / per_block.sum(), layer_alpha(sparsity, lam))
    return check_rates(sparsity + d.mean() - d, sparsity)


def projection_rates(errors: ArrayLike, sizes: ArrayLike, sparsity: float, lam: float = LAMBDA) -> np.ndarray:
    """``blk_score_global``: one rate per (block, linear); I = 1 - E/sum E; d = minmax(I) * 2 lam;
    rate = S + (mean(d) - d) * mean(n) / n, n the linear's weight count. Parameter-weighted mean: S."""
    values = _errors(errors)
    n = np.array(sizes, dtype=np.float64)
    if n.shape != values.shape or np.any(n <= 0):
        raise ValueError(f"LSA needs one weight count > 0 per (block, linear), {values.shape}, got {n.shape}")
    sparsity = check_sparsity(sparsity)
    lam = published._check_range("lam", lam, 0.0, MAX_LAMBDA)
    if values.sum() <= 0:
        raise ValueError("LSA needs reconstruction errors with a positive sum")
    d = _spread(1 - values / values.sum(), lam)
    return check_rates(sparsity + (d.mean() - d) * n.mean() / n, sparsity, n)


def block_means(rates: ArrayLike, sizes: ArrayLike) -> np.ndarray:
    """Each block's parameter-weighted mean rate (what the block's linears prune together)."""
    r, n = np.asarray(rates, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    return (r * n).sum(axis=1) / n.sum(axis=1)


def check_rates(rates: np.ndarray, sparsity: float, sizes: ArrayLike | None = None) -> np.ndarray:
    """Rates in [0, 1]. The code does not clip (a linear's small weight count can push its rate past 1 or
    below 0); here such rates are clipped with a ``ScheduleClipWarning`` stating the parameter-weighted mean
    reached, as the project's other allocators do."""
    clipped = np.clip(rates, 0.0, 1.0)
    if np.max(np.abs(clipped - rates)) > published.CLIP_TOL:
        n = np.ones_like(rates) if sizes is None else np.asarray(sizes, dtype=np.float64)
        mean = float((clipped * n).sum() / n.sum())
        warnings.warn(
            f"LSA rates left [0, 1] at sparsity {sparsity:g} (min {rates.min():.4g}, max {rates.max():.4g}) and were "
            f"clipped; their mean is now {mean:.6f}",
            published.ScheduleClipWarning,
            stacklevel=3,
        )
    return clipped


def rates(
    errors: ArrayLike, sizes: ArrayLike, sparsity: float, lam: float = LAMBDA, granularity: str = "layer"
) -> np.ndarray:
    """(blocks x linears) rates of either granularity (layer-wise: each block's rate on all its linears)."""
    check_choice("LSA granularity", granularity, GRANULARITIES)
    n = np.asarray(sizes, dtype=np.float64)
    if granularity == "projection":
        return projection_rates(errors, n, sparsity, lam)
    per_block = layer_rates(errors, sparsity, lam)
    return np.repeat(per_block[:, None], n.shape[1], axis=1) if n.ndim == 2 else per_block
