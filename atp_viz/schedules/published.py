"""Per-block sparsity schedules: uniform, ATP, OWL, AlphaPruning, DLP, custom (pure numpy), and rate maps.

A schedule is a 1-D ``float64`` array with one rate per decoder block (block 0 is the one next to
the embeddings), each in [0, 1]; every ``nn.Linear`` of block i is pruned at rate s_i. Every
builder returns a schedule whose (parameter-weighted) mean is the target sparsity S to 1e-9,
except where OWL / AlphaPruning had to clip at extreme S, which they announce with a
``ScheduleClipWarning`` stating the mean they reached. Bad input raises ``ValueError`` naming the
allowed range. ``methods.py`` registers each builder as a schedule method.

A ``RateMap`` answers the pruning loop's question "at what rate is linear ``name`` of block ``i``
pruned?". ``BlockRates`` (the paper: every linear of a block at the block's rate) is the default;
``LinearRates`` gives each linear its own rate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from atp_viz.config import check_int, check_sparsity

GRID_STEP = 0.002  # ATP paper: finer beta steps add little, coarser ones are worse
GRID_DECIMALS = 12  # beta grid values are rounded to this many decimals (well inside BETA_TOL)
BETA_TOL = 1e-12  # float slack so that a grid point equal to beta_max (up to rounding) is valid
CLIP_TOL = 1e-12  # rates this close outside [0, 1] are rounding, clipped without a warning
OWL_LAMBDA = 0.08  # OWL default: the sparsity band is 2*lambda wide
OWL_M = 5.0  # OWL paper's outlier threshold M for its 70% runs (the OWL code defaults to 3)
OWL_FLOOR = 0.01  # OWL code: a block whose rate comes out <= 0 is still pruned at 1%
OWL_MAX_LAMBDA = 1.0
ALPHA_EPS = 0.3  # AlphaPruning default: ratios span [1 - eps, 1 + eps]
ALPHA_MAX_EPS = 1.0  # beyond this the lowest ratio turns negative
ALPHA_ESTIMATORS = ("official", "window", "farms")  # layer_stats.ALPHA_ESTIMATORS: AlphaPruning's, corrected, FARMS
# the weights' precision before AlphaPruning's spectra: both official codes load the model in float16
SPECTRA_PRECISIONS = ("float16", "float32")
SPECTRA_PRECISION = "float16"
DLP_ALPHA = 0.15  # DLP default: the density band is 2*alpha wide (its scripts use 0.15 at 70 %)
DLP_MAX_ALPHA = 1.0


class ScheduleClipWarning(UserWarning):
    """A schedule left [0, 1] and was clipped, so its mean is no longer the target sparsity."""


def _check_layers(num_layers: int) -> int:
    if isinstance(num_layers, np.integer):
        num_layers = int(num_layers)
    check_int("num_layers", num_layers, 1)
    return num_layers


def _check_range(name: str, value: Any, low: float, high: float, context: str = "", slack: float = 0.0) -> float:
    """``value`` as a float in [low, high + slack]; the message shows [low, high]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [{low:.4g}, {high:.4g}]{context}, got {value!r}") from None
    if not (math.isfinite(value) and low <= value <= high + slack):  # NaN fails every comparison
        raise ValueError(f"{name} must be in [{low:.4g}, {high:.4g}]{context}, got {value:g}")
    return value


def _vector(name: str, values: ArrayLike) -> np.ndarray:
    """A fresh non-empty 1-D float64 array of finite numbers."""
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a 1-D sequence of finite numbers, got {values!r}") from None
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a non-empty 1-D sequence of finite numbers, got {arr.tolist()!r}")
    return arr


def _weights(weights: ArrayLike | None, size: int) -> np.ndarray:
    """Per-block weights (e.g. parameter counts), all > 0; ones when not given."""
    if weights is None:
        return np.ones(size)
    w = _vector("weights", weights)
    if w.size != size or np.any(w <= 0):
        raise ValueError(f"weights must be {size} numbers > 0 (one per block), got {w.tolist()!r}")
    return w


def _clip(
    rates: np.ndarray,
    floor: float,
    method: str,
    sparsity: float,
    weights: np.ndarray | None = None,
    stacklevel: int = 3,
) -> np.ndarray:
    """Rates <= 0 become ``floor`` and rates > 1 become 1, with a warning if that moved the mean."""
    clipped = np.minimum(np.where(rates <= 0.0, floor, rates), 1.0)
    if np.max(np.abs(clipped - rates)) > CLIP_TOL:
        mean = weighted_mean(clipped, weights)
        warnings.warn(
            f"{method} rates left [0, 1] at sparsity {sparsity:g} and were clipped; their mean is now {mean:.6f}",
            ScheduleClipWarning,
            stacklevel=stacklevel,
        )
    return clipped


def weighted_mean(rates: ArrayLike, weights: ArrayLike | None = None) -> float:
    """sum_i w_i s_i / sum_i w_i (the plain mean without weights).

    With w_i = number of prunable weights of block i this is the model's overall sparsity.
    """
    r = _vector("rates", rates)
    w = _weights(weights, r.size)
    return float(np.sum(w * r) / np.sum(w))


def uniform(num_layers: int, sparsity: float) -> np.ndarray:
    """s_i = S for every block i."""
    num_layers = _check_layers(num_layers)
    return np.full(num_layers, check_sparsity(sparsity), dtype=np.float64)


def beta_max(num_layers: int, sparsity: float) -> float:
    """beta_max = min(2S, 2(1 - S)) / (L - 1): the steepest slope keeping s_0 >= 0, s_{L-1} <= 1.

    A single block admits only beta = 0, so beta_max is 0 for L = 1.
    """
    num_layers = _check_layers(num_layers)
    sparsity = check_sparsity(sparsity)
    if num_layers == 1:
        return 0.0
    return min(2 * sparsity, 2 * (1 - sparsity)) / (num_layers - 1)


def atp(num_layers: int, sparsity: float, beta: float) -> np.ndarray:
    """ATP (arXiv 2502.14770, Eq. 10): s_i = S - beta*(L-1)/2 + beta*i for i = 0..L-1.

    The mean is exactly S and the rates increase with depth for beta > 0; beta = 0 is uniform.
    Valid range: 0 <= beta <= beta_max(L, S).
    """
    num_layers = _check_layers(num_layers)
    bound = beta_max(num_layers, sparsity)
    beta = _check_range(
        "beta",
        beta,
        0.0,
        bound,
        slack=BETA_TOL,
        context=f" for {num_layers} block{'s' * (num_layers != 1)} at sparsity {float(sparsity):g}",
    )
    # offsets i - (L-1)/2 are exact half-integers, symmetric around 0, so the mean stays S
    offsets = np.arange(num_layers, dtype=np.float64) - (num_layers - 1) / 2
    # only the BETA_TOL slack at beta_max can push an end a hair outside [0, 1]
    return np.clip(float(sparsity) + beta * offsets, 0.0, 1.0)


def beta_grid(num_layers: int, sparsity: float, step: float = GRID_STEP) -> np.ndarray:
    """The ATP search grid beta = step, 2*step, ... <= beta_max (empty when beta_max < step).

    A grid point equal to beta_max up to rounding is kept (and accepted by ``atp``).
    Example: 32 blocks at S = 0.7 -> beta_max = 0.01935 -> 9 points; 30 blocks -> 0.02069 -> 10.
    """
    step = float(step)
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a finite number > 0, got {step:g}")
    count = math.floor((beta_max(num_layers, sparsity) + BETA_TOL) / step)
    # rounded so that 9 * 0.002 is stored and shown as 0.018, not 0.018000000000000002
    return np.round(step * np.arange(1, count + 1, dtype=np.float64), GRID_DECIMALS)


def no_grid_point(num_layers: int, sparsity: float, step: float, method: str = "ATP") -> ValueError:
    """The one error for a beta grid that ``step`` leaves empty (step > beta_max): what is wrong, what is allowed."""
    bound = beta_max(num_layers, sparsity)
    return ValueError(
        f"no {method} grid point fits: step {step:g} > beta_max = {bound:.5g} for {num_layers} blocks at "
        f"S = {sparsity:g}; allowed: 0 < step <= {bound:.5g}"
    )


def _density_band(values: np.ndarray, sparsity: float, half_width: float, method: str) -> np.ndarray:
    """The band OWL's and DLP's code map a per-block value to: density d = (v - min v)/(max v - min v)
    * 2*half_width; d = d - mean(d) + (1 - S); s = 1 - d, rates <= 0 set to 0.01 and > 1 to 1 (with a
    warning stating the mean reached). Constant values give the uniform schedule."""
    span = values.max() - values.min()
    if span == 0:  # no contrast between blocks: nothing to redistribute
        return uniform(values.size, sparsity)
    density = (values - values.min()) / span * 2 * half_width
    density = density - density.mean() + (1 - sparsity)
    return _clip(1 - density, OWL_FLOOR, method, sparsity, stacklevel=4)  # the warning names the caller of owl/dlp


def owl(outlier_ratios: ArrayLike, sparsity: float, lam: float = OWL_LAMBDA) -> np.ndarray:
    """OWL: density r = (D - min D)/(max D - min D) * 2*lam; r = r - mean(r) + (1 - S); s = 1 - r.

    D_i is block i's outlier ratio: more outliers -> denser block. Rates <= 0 become 0.01 (as
    in the OWL code) and rates > 1 become 1, with a warning stating the mean reached. Constant D
    gives the uniform schedule.
    """
    ratios = _vector("outlier ratios", outlier_ratios)
    sparsity = check_sparsity(sparsity)
    lam = _check_range("lam", lam, 0.0, OWL_MAX_LAMBDA)
    return _density_band(ratios, sparsity, lam, "OWL")


def alphapruning(
    alphas: ArrayLike, sparsity: float, eps: float = ALPHA_EPS, weights: ArrayLike | None = None
) -> np.ndarray:
    """AlphaPruning: ratio_i = (a_i - min a)/(max a - min a) * 2*eps + (1 - eps); s_i = S*ratio_i*c.

    c = sum(w) / sum(w * ratio) makes the w-weighted mean of s exactly S (w = per-block parameter
    counts; plain mean without weights). Larger alpha (less well trained) -> sparser block. Rates
    above 1 are clipped to 1 with a warning stating the mean reached. Constant alphas give the
    uniform schedule.
    """
    values = _vector("alphas", alphas)
    sparsity = check_sparsity(sparsity)
    eps = _check_range("eps", eps, 0.0, ALPHA_MAX_EPS)
    w = _weights(weights, values.size)
    span = values.max() - values.min()
    if span == 0:  # every block equally trained: nothing to redistribute
        return uniform(values.size, sparsity)
    ratio = (values - values.min()) / span * 2 * eps + (1 - eps)
    rates = sparsity * ratio * (w.sum() / np.sum(w * ratio))
    return _clip(rates, 0.0, "AlphaPruning", sparsity, w)


def dlp(block_scores: ArrayLike, sparsity: float, alpha: float = DLP_ALPHA) -> np.ndarray:
    """DLP (Chen et al., ICML 2025, arXiv 2505.23807), as its code's ``get_dlp_ratios`` computes it.

    c_i = |mean of block i's Wanda scores|; importance I_i = 1 - c_i / sum_j c_j; density
    d = (I - min I) / (max I - min I) * 2*alpha, d = d - mean(d) + (1 - S); s_i = 1 - d_i. A block
    whose scores are larger gets the smaller importance, so the higher rate. Rates <= 0 become 0.01
    (as in its pruning code) and rates > 1 become 1, with a warning stating the mean reached. The
    plain (not parameter-weighted) mean is S; constant scores give the uniform schedule.
    """
    scores = np.abs(_vector("block scores", block_scores))
    sparsity = check_sparsity(sparsity)
    alpha = _check_range("alpha", alpha, 0.0, DLP_MAX_ALPHA)
    if scores.sum() <= 0:
        raise ValueError(f"DLP needs block scores with a positive sum, got {scores.tolist()!r}")
    importance = 1 - scores / scores.sum()
    return _density_band(importance, sparsity, alpha, "DLP")


def custom(rates: ArrayLike) -> np.ndarray:
    """A user-given schedule, validated: 1-D, finite, each rate in [0, 1]."""
    values = _vector("custom rates", rates)
    bad = values[(values < 0) | (values > 1)]
    if bad.size:
        raise ValueError(f"custom rates must each be in [0, 1], got {bad.tolist()!r}")
    return values


# --- rate maps --------------------------------------------------------------------------------


@runtime_checkable
class RateMap(Protocol):
    """The rate of every prunable linear, asked for by (block index, linear name in the block)."""

    @property
    def num_blocks(self) -> int: ...

    def rate(self, block: int, linear: str) -> float: ...


@dataclass(frozen=True)
class BlockRates:
    """Every linear of block i at the block's rate s_i (ATP appendix H): the default rate map."""

    values: np.ndarray

    @property
    def num_blocks(self) -> int:
        return int(self.values.size)

    def rate(self, block: int, linear: str) -> float:
        return float(self.values[block])


@dataclass(frozen=True)
class LinearRates:
    """One rate per (block, linear); ``default`` (one per block) for linears not listed."""

    default: np.ndarray
    table: Mapping[tuple[int, str], float]

    @property
    def num_blocks(self) -> int:
        return int(self.default.size)

    def rate(self, block: int, linear: str) -> float:
        return float(self.table.get((block, linear), self.default[block]))


def as_rate_map(rates: RateMap | ArrayLike) -> RateMap:
    """A rate map as it is, or per-block rates (one float per block) as ``BlockRates``."""
    if isinstance(rates, RateMap):
        return rates
    return BlockRates(_vector("rates", rates))
