"""Beyond one straight line: rates per linear type and curved monotone profiles (pure numpy).

Rates per linear type. ATP (and the paper's appendix H) gives every linear of block i the block's
rate s_i. Here each block's linears are split into two types, attention projections and the MLP
(``linear_group``), and an attention-MLP offset d = s_mlp - s_attention moves rate between them
while the block's parameter-weighted mean stays s_i (``split_rates``). d = 0 is the paper.

Curved monotone profiles with the same mean S (Theorem 3.5 of the ATP paper proves only that an
increasing profile beats a non-increasing one, not that the straight line is the best increasing
one):
- ``power_profile``: s_i = S + beta (L-1) (f(x_i) - mean f), x_i = i/(L-1), f(x) = x^p. beta is the
  mean slope per block (the rise from block 0 to block L-1 is beta (L-1) for every p); p = 1 is
  ATP's line with slope beta, p > 1 keeps the early blocks flatter (protects them longer), p < 1
  rises early and flattens late.
- ``prefix_profile``: the first k blocks at one flat (lower) rate, then a line rising by beta per
  block.

``methods.py`` registers both as schedule methods and gives ATP the offset parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from atp_viz.config import check_sparsity
from atp_viz.schedules import published

LINEAR_GROUPS = ("attention", "mlp")  # column order of every (blocks x groups) array here
ATTENTION_MARKERS = ("attn", "attention")  # a linear whose qualified name has a part containing one
OFFSET_MAX = 0.5  # |s_mlp - s_attention| allowed by the registry
POWER_MIN, POWER_MAX = 0.1, 10.0  # curvature range of the power profile
POWER_DEFAULT = 2.0
PREFIX_DEFAULT = 4  # protected blocks of the prefix profile


def linear_group(name: str) -> str:
    """``"attention"`` when a dotted part of the linear's name (within its block) contains ``attn``
    or ``attention`` (LLaMA/Gemma ``self_attn.q_proj``, GPT-2 ``attn.c_attn``, NeoX
    ``attention.dense``); ``"mlp"`` otherwise (``mlp.up_proj``, OPT ``fc1``)."""
    parts = name.lower().split(".")
    return LINEAR_GROUPS[0] if any(m in part for part in parts for m in ATTENTION_MARKERS) else LINEAR_GROUPS[1]


def group_counts(linear_sizes: Sequence[Mapping[str, int]]) -> np.ndarray:
    """(blocks, 2) weights per type: column 0 attention, column 1 MLP, from each block's
    ``{linear name: number of weights}``."""
    counts = np.zeros((len(linear_sizes), len(LINEAR_GROUPS)))
    for i, sizes in enumerate(linear_sizes):
        for name, size in sizes.items():
            counts[i, LINEAR_GROUPS.index(linear_group(name))] += size
    return counts


def offset_bounds(rates: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block, the offsets d that keep both type rates in [0, 1] at the block's mean:
    s_att = s - d m/T in [0, 1] and s_mlp = s + d a/T in [0, 1] (a, m: attention / MLP weights,
    T = a + m). A block with a single type admits every d (it has nothing to move)."""
    frac_att, frac_mlp = counts[:, 0] / counts.sum(axis=1), counts[:, 1] / counts.sum(axis=1)
    with np.errstate(divide="ignore"):
        high = np.minimum(rates / frac_mlp, (1 - rates) / frac_att)
        low = np.maximum(-(1 - rates) / frac_mlp, -rates / frac_att)
    return low, high


def split_rates(block_rates: ArrayLike, offset: float, counts: ArrayLike) -> np.ndarray:
    """Per-type rates (blocks x 2: attention, MLP) with s_mlp - s_att = d and each block's
    parameter-weighted mean unchanged:

        s_att,i = s_i - d_i m_i / T_i,   s_mlp,i = s_i + d_i a_i / T_i,   d_i = clip(d, low_i, high_i)

    (a_i, m_i: attention / MLP weights of block i, T_i = a_i + m_i). Where d would push a type
    outside [0, 1], d_i is reduced to the bound (``offset_bounds``): the clipped type sits at 0 or 1
    and the excess moves to the other type, so the block mean s_i always holds; what is lost is
    part of the offset in that block. A block with only one type keeps s_i for it. d = 0 gives
    every type the block's rate exactly (bit for bit).
    """
    rates = published.custom(block_rates)
    weights = np.asarray(counts, dtype=np.float64)
    if weights.shape != (rates.size, len(LINEAR_GROUPS)) or np.any(weights < 0) or np.any(weights.sum(axis=1) <= 0):
        raise ValueError(
            f"counts must be {rates.size} rows of (attention, MLP) weights >= 0 with a positive sum, got shape "
            f"{weights.shape}"
        )
    offset = _check_finite("attention-MLP offset", offset, -OFFSET_MAX, OFFSET_MAX)
    low, high = offset_bounds(rates, weights)
    d = np.clip(offset, low, high)
    total = weights.sum(axis=1)
    attention = np.where(weights[:, 0] > 0, rates - d * (weights[:, 1] / total), rates)
    mlp = np.where(weights[:, 1] > 0, rates + d * (weights[:, 0] / total), rates)
    return np.clip(np.stack([attention, mlp], axis=1), 0.0, 1.0)  # clip: rounding at the bounds only


def linear_table(group_rates: np.ndarray, names: Sequence[Sequence[str]]) -> dict[tuple[int, str], float]:
    """``{(block, linear name): rate}`` for ``schedules.LinearRates`` from (blocks x 2) type rates."""
    return {
        (i, name): float(group_rates[i, LINEAR_GROUPS.index(linear_group(name))])
        for i, block in enumerate(names)
        for name in block
    }


def _check_finite(name: str, value: float, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {number:g}")
    return number


# --- curved monotone profiles ------------------------------------------------------------------


def _power_shape(num_layers: int, power: float) -> np.ndarray:
    """f(x_i) = x_i^p on x_i = i/(L-1)."""
    return (np.arange(num_layers, dtype=np.float64) / (num_layers - 1)) ** power


def power_beta_max(num_layers: int, sparsity: float, power: float) -> float:
    """The steepest mean slope keeping s_0 >= 0 and s_{L-1} <= 1:
    min(S / mean f, (1 - S) / (1 - mean f)) / (L - 1); ``schedules.beta_max`` at p = 1; 0 for L = 1."""
    power = _check_finite("power p", power, POWER_MIN, POWER_MAX)
    if power == 1.0 or num_layers == 1:
        return published.beta_max(num_layers, sparsity)
    sparsity = check_sparsity(sparsity)
    mean_f = float(_power_shape(num_layers, power).mean())
    return min(sparsity / mean_f, (1 - sparsity) / (1 - mean_f)) / (num_layers - 1)


def power_profile(num_layers: int, sparsity: float, beta: float, power: float) -> np.ndarray:
    """s_i = S + beta (L-1) (x_i^p - mean_j x_j^p), x_i = i/(L-1): mean exactly S, increasing for
    beta > 0, s_{L-1} - s_0 = beta (L-1) for every p. p = 1 is ATP (computed by ``schedules.atp``,
    so bit for bit). Valid: p in [0.1, 10], 0 <= beta <= ``power_beta_max(L, S, p)``."""
    bound = power_beta_max(num_layers, sparsity, power)
    if float(power) == 1.0:
        return published.atp(num_layers, sparsity, beta)
    beta = _check_slope(beta, bound, f" for {num_layers} blocks at sparsity {float(sparsity):g} and p = {power:g}")
    if num_layers == 1:
        return published.uniform(1, sparsity)
    shape = _power_shape(num_layers, float(power))
    return np.clip(float(sparsity) + beta * (num_layers - 1) * (shape - shape.mean()), 0.0, 1.0)


def _check_slope(beta: float, bound: float, context: str) -> float:
    try:
        value = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a number in [0, {bound:.4g}]{context}, got {beta!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= bound + published.BETA_TOL):
        raise ValueError(f"beta must be in [0, {bound:.4g}]{context}, got {value:g}")
    return value


def _prefix_ramp(num_layers: int, prefix: int) -> np.ndarray:
    """max(0, i - k + 1): 0 on the k protected blocks, then 1, 2, ..."""
    return np.maximum(0.0, np.arange(num_layers, dtype=np.float64) - prefix + 1)


def _check_prefix(num_layers: int, prefix: float) -> int:
    high = max(num_layers - 1, 0)
    if not (isinstance(prefix, (int, float, np.integer, np.floating)) and float(prefix) == int(prefix)):
        raise ValueError(f"prefix must be a whole number of blocks in [0, {high}], got {prefix!r}")
    if not 0 <= int(prefix) <= high:
        raise ValueError(f"prefix must be a whole number of blocks in [0, {high}], got {int(prefix)}")
    return int(prefix)


def prefix_beta_max(num_layers: int, sparsity: float, prefix: float) -> float:
    """The steepest slope keeping the flat rate >= 0 and the last block <= 1:
    min(S / mean r, (1 - S) / (L - k - mean r)) with r the ramp max(0, i - k + 1); 0 for L = 1."""
    sparsity = check_sparsity(sparsity)
    k = _check_prefix(num_layers, prefix)
    if num_layers == 1:
        return 0.0
    mean_r = float(_prefix_ramp(num_layers, k).mean())
    return min(sparsity / mean_r, (1 - sparsity) / (num_layers - k - mean_r))


def prefix_profile(num_layers: int, sparsity: float, beta: float, prefix: float) -> np.ndarray:
    """Protected prefix: s_i = c + beta max(0, i - k + 1), c = S - beta mean_j max(0, j - k + 1).

    Blocks 0..k-1 share the flat rate c (the lowest), block k is at c + beta and every later block
    adds beta; the mean is exactly S. k = 0 and k = 1 are ATP's line. Valid: k a whole number in
    [0, L-1], 0 <= beta <= ``prefix_beta_max(L, S, k)``.
    """
    bound = prefix_beta_max(num_layers, sparsity, prefix)
    k = _check_prefix(num_layers, prefix)
    beta = _check_slope(beta, bound, f" for {num_layers} blocks at sparsity {float(sparsity):g} and prefix {k}")
    ramp = _prefix_ramp(num_layers, k)
    return np.clip(float(sparsity) + beta * (ramp - ramp.mean()), 0.0, 1.0)


def curved_family(
    num_layers: int,
    sparsity: float,
    beta: float,
    powers: Sequence[float] = (0.5, 2.0, 3.0),
    prefix: int = PREFIX_DEFAULT,
) -> dict[str, np.ndarray]:
    """The profiles to overlay on ATP's line at slope ``beta``: each power p and the protected prefix
    (k = min(prefix, L-1)), labelled; a profile whose bound is below ``beta`` is left out."""
    family: dict[str, np.ndarray] = {}
    for p in powers:
        if beta <= power_beta_max(num_layers, sparsity, p) + published.BETA_TOL:
            family[f"p = {p:g}"] = power_profile(num_layers, sparsity, beta, p)
    k = min(prefix, max(num_layers - 1, 0))
    if beta <= prefix_beta_max(num_layers, sparsity, k) + published.BETA_TOL:
        family[f"prefix k = {k}"] = prefix_profile(num_layers, sparsity, beta, k)
    return family
