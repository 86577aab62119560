"""Theory sandbox: a toy deep network that shows error propagation (ATP Thm 3.2 / 3.5) instantly.

The network is ``depth`` random square layers y_i = W_i h_{i-1}, h_i = tanh(y_i), with weights
drawn N(0, gain^2 / width) (gain >= 1 is the regime where a perturbation grows with depth, like the
error explosion the paper measures in LLMs). Pruning zeroes the ``s_i * width`` smallest-magnitude
weights of each row of W_i. Errors follow the paper's Eq. 1 on a fixed batch of random inputs:

- cumulative error of layer i: ||W_i h_{i-1} - What_i hhat_{i-1}||_F^2, with hhat the pruned
  network's own activations (what every later layer sees);
- local error of layer i: ||(W_i - What_i) hhat_{i-1}||_F^2, the part layer i adds by itself;
- total error: the sum of the cumulative errors over all layers (the objective of Thm 3.5).

Everything is numpy; a 64-layer, 64-wide network with 128 inputs takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from atp_viz.config import check_int, check_sparsity

WIDTH = 64  # neurons per layer
SAMPLES = 128  # random inputs propagated through both networks
GAIN = 1.0  # weight scale; at >= 1 (edge of chaos for tanh) perturbations grow with depth
MAX_DEPTH = 96  # keeps every answer well under a second


@dataclass(frozen=True)
class ToyResult:
    """Per-layer errors of one pruned toy network; arrays have one entry per layer."""

    rates: np.ndarray
    cumulative: np.ndarray  # ||y_i - yhat_i||_F^2
    local: np.ndarray  # ||(W_i - What_i) hhat_{i-1}||_F^2
    relative: np.ndarray  # cumulative / ||y_i||_F^2

    @property
    def total(self) -> float:
        """Sum over layers of the cumulative squared error (the quantity of Thm 3.5)."""
        return float(self.cumulative.sum())

    @property
    def total_relative(self) -> float:
        """Sum over layers of the relative error."""
        return float(self.relative.sum())


def make_network(depth: int, width: int = WIDTH, gain: float = GAIN, seed: int = 0) -> list[np.ndarray]:
    """``depth`` weight matrices (width, width) drawn N(0, gain^2 / width) with ``seed``."""
    check_int("depth", depth, 1, MAX_DEPTH)
    check_int("width", width, 2)
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, gain / np.sqrt(width), size=(width, width)) for _ in range(depth)]


def make_inputs(width: int = WIDTH, samples: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """A batch of unit-variance inputs, shape (width, samples)."""
    return np.random.default_rng(seed + 1).normal(size=(width, samples))


def prune_magnitude(weight: np.ndarray, rate: float) -> np.ndarray:
    """A copy of ``weight`` with the floor(cols * rate) smallest |w| of every row set to 0."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate:g}")
    k = int(np.floor(weight.shape[1] * rate))
    pruned = weight.copy()
    if k:
        order = np.argsort(np.abs(weight), axis=1)[:, :k]  # (rows, k) smallest per row
        np.put_along_axis(pruned, order, 0.0, axis=1)
    return pruned


def propagate(weights: list[np.ndarray], rates: ArrayLike, inputs: np.ndarray) -> ToyResult:
    """Run the dense and the pruned network side by side and measure every layer's error."""
    rates = np.asarray(rates, dtype=np.float64)
    if rates.shape != (len(weights),):
        raise ValueError(f"need one rate per layer ({len(weights)}), got {rates.size}")
    h, h_hat = inputs, inputs
    cumulative, local, relative = [], [], []
    for weight, rate in zip(weights, rates):
        w_hat = prune_magnitude(weight, float(rate))
        y, y_hat = weight @ h, w_hat @ h_hat  # (width, samples)
        cumulative.append(np.sum((y - y_hat) ** 2))
        local.append(np.sum(((weight - w_hat) @ h_hat) ** 2))
        relative.append(cumulative[-1] / np.sum(y**2))
        h, h_hat = np.tanh(y), np.tanh(y_hat)
    return ToyResult(rates, np.array(cumulative), np.array(local), np.array(relative))


def orderings(rates: ArrayLike, seed: int = 0) -> dict[str, np.ndarray]:
    """The same multiset of rates in increasing, random and decreasing order (Thm 3.5)."""
    values = np.sort(np.asarray(rates, dtype=np.float64))
    shuffled = np.random.default_rng(seed).permutation(values)
    return {"increasing": values, "random order": shuffled, "decreasing": values[::-1].copy()}


def sandbox(depth: int, sparsity: float, beta: float, seed: int = 0) -> dict[str, ToyResult]:
    """Uniform, ATP (increasing), and the same ATP rates in random and decreasing order, on one network."""
    from atp_viz.schedules.published import atp, uniform

    sparsity = check_sparsity(sparsity)
    weights, inputs = make_network(depth, seed=seed), make_inputs(seed=seed)
    rates = atp(depth, sparsity, beta)
    orders = orderings(rates, seed)
    schedules = {
        "uniform": uniform(depth, sparsity),
        "increasing (ATP)": orders["increasing"],
        "random order": orders["random order"],
        "decreasing": orders["decreasing"],
    }
    return {name: propagate(weights, r, inputs) for name, r in schedules.items()}
