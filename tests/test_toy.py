"""Theory sandbox: error propagation (Thm 3.2) and the increasing-order optimum (Thm 3.5) on a toy net."""

from __future__ import annotations

import numpy as np
import pytest

from atp_viz.schedules import published, toy


def test_prune_magnitude_zeroes_the_smallest_of_each_row() -> None:
    weight = np.array([[1.0, -4.0, 2.0, 3.0], [0.5, 0.1, -0.2, 9.0]])
    pruned = toy.prune_magnitude(weight, 0.5)
    assert pruned.tolist() == [[0.0, -4.0, 0.0, 3.0], [0.5, 0.0, 0.0, 9.0]]
    assert toy.prune_magnitude(weight, 0.0).tolist() == weight.tolist()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        toy.prune_magnitude(weight, 1.5)


def test_dense_network_has_no_error_and_errors_grow_with_depth() -> None:
    weights, inputs = toy.make_network(12, seed=1), toy.make_inputs(seed=1)
    assert toy.propagate(weights, np.zeros(12), inputs).total == 0.0
    result = toy.propagate(weights, published.uniform(12, 0.6), inputs)
    assert result.relative[-1] > 3 * result.relative[0]  # Thm 3.2: errors propagate and grow
    assert np.all(result.local <= result.cumulative * 10)  # local part is a piece of the whole


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("depth", "sparsity"), [(8, 0.5), (24, 0.7)])
def test_increasing_order_has_the_lowest_total_error(seed: int, depth: int, sparsity: float) -> None:
    results = toy.sandbox(depth, sparsity, published.beta_max(depth, sparsity) / 2, seed)
    totals = {name: r.total for name, r in results.items()}
    assert totals["increasing (ATP)"] < totals["random order"] < totals["decreasing"]
    assert totals["increasing (ATP)"] < totals["uniform"]
    relative = {name: r.total_relative for name, r in results.items()}
    assert relative["increasing (ATP)"] < relative["random order"] < relative["decreasing"]
    rates = [r.rates for r in results.values()][1:]
    assert all(np.allclose(np.sort(r), np.sort(rates[0])) for r in rates)  # same rates, different order


def test_bad_settings_raise_with_the_allowed_range() -> None:
    with pytest.raises(ValueError, match="<= 96"):
        toy.sandbox(500, 0.5, 0.0)
    with pytest.raises(ValueError, match="beta must be in"):
        toy.sandbox(8, 0.5, 1.0)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        toy.sandbox(8, 1.5, 0.0)
