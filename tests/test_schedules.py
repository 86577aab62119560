"""Unit and property tests of the per-block sparsity schedules."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_viz.schedules.methods import ScheduleSpec, build_schedule
from atp_viz.schedules.published import (
    ScheduleClipWarning,
    alphapruning,
    atp,
    beta_grid,
    beta_max,
    custom,
    owl,
    uniform,
    weighted_mean,
)

MEAN_TOL = 1e-9
layers = st.integers(min_value=1, max_value=200)
targets = st.floats(min_value=0.01, max_value=0.99)
stats = st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=64)


def assert_schedule(rates: np.ndarray, num_layers: int) -> None:
    assert isinstance(rates, np.ndarray) and rates.dtype == np.float64
    assert rates.shape == (num_layers,)
    assert np.all((rates >= 0) & (rates <= 1))


# --- uniform / ATP -----------------------------------------------------------------------------


def test_uniform() -> None:
    rates = uniform(5, 0.7)
    assert_schedule(rates, 5)
    assert np.all(rates == 0.7)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.1, 1.5, math.nan, "high"])
def test_sparsity_outside_open_interval_rejected(sparsity: object) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        uniform(4, sparsity)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        atp(4, sparsity, 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_layers", [0, -3, 2.5, True])
def test_num_layers_rejected(num_layers: object) -> None:
    with pytest.raises(ValueError, match="num_layers"):
        atp(num_layers, 0.5, 0.0)  # type: ignore[arg-type]


def test_numpy_integer_layers_accepted() -> None:
    assert atp(np.int64(3), 0.5, 0.0).shape == (3,)


def test_atp_example() -> None:
    np.testing.assert_allclose(atp(4, 0.5, 0.1), [0.35, 0.45, 0.55, 0.65], atol=1e-15)


def test_atp_beta_zero_is_uniform() -> None:
    np.testing.assert_array_equal(atp(12, 0.6, 0.0), uniform(12, 0.6))


def test_beta_error_message_states_range() -> None:
    expected = "beta must be in [0, 0.02069] for 30 blocks at sparsity 0.7, got 0.05"
    with pytest.raises(ValueError, match=re.escape(expected)):
        atp(30, 0.7, 0.05)


@pytest.mark.parametrize("beta", [-0.001, math.nan, math.inf, "steep", None])
def test_bad_beta_rejected(beta: object) -> None:
    with pytest.raises(ValueError, match=r"beta must be .*\[0, 0.02069\]"):
        atp(30, 0.7, beta)  # type: ignore[arg-type]


def test_single_block() -> None:
    assert beta_max(1, 0.7) == 0.0
    np.testing.assert_array_equal(atp(1, 0.7, 0.0), [0.7])
    with pytest.raises(ValueError, match=re.escape("beta must be in [0, 0] for 1 block at")):
        atp(1, 0.7, 0.001)
    assert beta_grid(1, 0.7).size == 0


def test_two_blocks_reach_both_ends() -> None:
    assert beta_max(2, 0.5) == 1.0
    np.testing.assert_array_equal(atp(2, 0.5, 1.0), [0.0, 1.0])
    np.testing.assert_allclose(atp(2, 0.8, beta_max(2, 0.8)), [0.6, 1.0])


@given(layers, targets, st.floats(min_value=0.0, max_value=1.0))
def test_atp_properties(num_layers: int, sparsity: float, fraction: float) -> None:
    beta = fraction * beta_max(num_layers, sparsity)
    rates = atp(num_layers, sparsity, beta)
    assert_schedule(rates, num_layers)
    assert abs(rates.mean() - sparsity) <= MEAN_TOL
    assert np.all(np.diff(rates) >= 0)


@given(st.integers(min_value=2, max_value=200), targets, st.floats(min_value=1e-3, max_value=1.0))
def test_atp_strictly_increasing_for_positive_beta(num_layers: int, sparsity: float, fraction: float) -> None:
    rates = atp(num_layers, sparsity, fraction * beta_max(num_layers, sparsity))
    assert np.all(np.diff(rates) > 0)


@given(layers, targets)
def test_beta_just_above_max_rejected(num_layers: int, sparsity: float) -> None:
    bound = beta_max(num_layers, sparsity)
    with pytest.raises(ValueError, match="beta must be in"):
        atp(num_layers, sparsity, bound + 1e-6)


# --- beta grid ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_layers", "bound", "points"), [(32, 0.01935, 9), (30, 0.02069, 10)])
def test_beta_grid_paper_examples(num_layers: int, bound: float, points: int) -> None:
    assert beta_max(num_layers, 0.7) == pytest.approx(bound, abs=5e-6)
    grid = beta_grid(num_layers, 0.7)
    assert grid.size == points
    np.testing.assert_allclose(grid, 0.002 * np.arange(1, points + 1))


def test_beta_grid_keeps_point_equal_to_beta_max() -> None:
    # 31 blocks at 0.7: beta_max = 0.6 / 30 = 0.02 up to rounding
    grid = beta_grid(31, 0.7)
    assert grid.size == 10 and grid[-1] == pytest.approx(0.02)
    rates = atp(31, 0.7, grid[-1])
    assert rates[0] == pytest.approx(0.4) and rates[-1] == pytest.approx(1.0)


def test_beta_grid_empty_when_beta_max_below_step() -> None:
    assert beta_max(1000, 0.7) < 0.002
    grid = beta_grid(1000, 0.7)
    assert grid.size == 0 and grid.dtype == np.float64


@pytest.mark.parametrize("step", [0.0, -0.002, math.nan, math.inf])
def test_beta_grid_bad_step(step: float) -> None:
    with pytest.raises(ValueError, match="step must be a finite number > 0"):
        beta_grid(32, 0.7, step)


@given(layers, targets, st.sampled_from([0.001, 0.002, 0.005]))
def test_every_grid_point_is_a_valid_beta(num_layers: int, sparsity: float, step: float) -> None:
    grid = beta_grid(num_layers, sparsity, step)
    bound = beta_max(num_layers, sparsity)
    assert grid.size == math.floor(bound / step + 1e-9)
    for beta in grid:
        assert abs(atp(num_layers, sparsity, beta).mean() - sparsity) <= MEAN_TOL


# --- OWL ----------------------------------------------------------------------------------------


def test_owl_more_outliers_less_sparsity() -> None:
    rates = owl([1.0, 4.0, 2.0, 3.0], 0.7, lam=0.08)
    assert_schedule(rates, 4)
    assert list(np.argsort(rates)) == [1, 3, 2, 0]
    assert rates.max() - rates.min() == pytest.approx(0.16)
    assert rates.mean() == pytest.approx(0.7, abs=MEAN_TOL)


@given(stats, st.floats(min_value=0.2, max_value=0.8), st.floats(min_value=0.0, max_value=0.08))
def test_owl_properties(ratios: list[float], sparsity: float, lam: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the band [S - 2 lam, S + 2 lam] needs no clipping here
        rates = owl(ratios, sparsity, lam)
    assert_schedule(rates, len(ratios))
    assert abs(rates.mean() - sparsity) <= MEAN_TOL
    assert rates.max() - rates.min() <= 2 * lam + 1e-12


def test_owl_constant_ratios_is_uniform() -> None:
    np.testing.assert_array_equal(owl([3.0, 3.0, 3.0], 0.6), uniform(3, 0.6))
    np.testing.assert_array_equal(owl([5.0], 0.6), [0.6])


def test_owl_clips_high_sparsity_with_warning() -> None:
    with pytest.warns(ScheduleClipWarning, match=r"OWL .*mean is now 0\.9491"):
        rates = owl([1.0, 2.0, 3.0, 10.0], 0.95)
    assert rates[0] == 1.0 and rates.max() == 1.0


def test_owl_floor_at_low_sparsity_with_warning() -> None:
    with pytest.warns(ScheduleClipWarning, match=r"mean is now 0\.0516"):
        rates = owl([1.0, 2.0, 3.0, 10.0], 0.03)
    assert rates[-1] == 0.01


@pytest.mark.parametrize(
    ("ratios", "lam", "match"),
    [
        ([1.0, math.nan], 0.08, "outlier ratios"),
        ([], 0.08, "outlier ratios"),
        ([[1.0, 2.0]], 0.08, "outlier ratios"),
        ([1.0, 2.0], -0.1, r"lam must be in \[0, 1\]"),
        ([1.0, 2.0], math.nan, r"lam must be in \[0, 1\]"),
    ],
)
def test_owl_bad_input(ratios: list, lam: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        owl(ratios, 0.7, lam)


# --- AlphaPruning -------------------------------------------------------------------------------


def test_alphapruning_example() -> None:
    # ratios 0.7, 1.0, 1.3 -> mean 1.0 -> c = 1
    np.testing.assert_allclose(alphapruning([2.0, 3.0, 4.0], 0.5), [0.35, 0.5, 0.65])


@given(
    st.lists(st.floats(min_value=1.5, max_value=8.0), min_size=2, max_size=64),
    st.floats(min_value=0.05, max_value=0.5),
    st.floats(min_value=0.0, max_value=0.3),
    st.data(),
)
def test_alphapruning_properties(alphas: list[float], sparsity: float, eps: float, data: st.DataObject) -> None:
    counts = data.draw(st.lists(st.integers(1, 10**8), min_size=len(alphas), max_size=len(alphas)))
    for weights in (None, counts):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # S * (1 + eps) / (1 - eps) < 1 here: no clipping
            rates = alphapruning(alphas, sparsity, eps, weights)
        assert_schedule(rates, len(alphas))
        assert abs(weighted_mean(rates, weights) - sparsity) <= MEAN_TOL
        order = np.argsort(alphas, kind="stable")
        assert np.all(np.diff(rates[order]) >= -1e-15)  # larger alpha -> sparser


def test_alphapruning_parameter_weighted_mean() -> None:
    weights = [10.0, 1.0, 1.0]
    rates = alphapruning([2.0, 3.0, 4.0], 0.5, weights=weights)
    assert weighted_mean(rates, weights) == pytest.approx(0.5, abs=MEAN_TOL)
    assert rates.mean() != pytest.approx(0.5)
    assert rates[2] / rates[0] == pytest.approx(1.3 / 0.7)


def test_alphapruning_constant_alphas_is_uniform() -> None:
    np.testing.assert_array_equal(alphapruning([3.0, 3.0], 0.7, weights=[1, 5]), uniform(2, 0.7))


def test_alphapruning_clips_with_warning() -> None:
    with pytest.warns(ScheduleClipWarning, match=r"AlphaPruning .*mean is now 0\.8745"):
        rates = alphapruning([2.0, 3.0, 4.0, 5.0], 0.9, weights=[1, 2, 3, 4])
    assert rates[-1] == 1.0


@pytest.mark.parametrize(
    ("alphas", "eps", "weights", "match"),
    [
        ([2.0, 3.0], 1.5, None, r"eps must be in \[0, 1\]"),
        ([2.0, 3.0], -0.1, None, r"eps must be in \[0, 1\]"),
        ([2.0, math.inf], 0.3, None, "alphas"),
        ([2.0, 3.0], 0.3, [1.0], "weights must be 2 numbers > 0"),
        ([2.0, 3.0], 0.3, [1.0, 0.0], "weights must be 2 numbers > 0"),
    ],
)
def test_alphapruning_bad_input(alphas: list, eps: float, weights: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        alphapruning(alphas, 0.7, eps, weights)


# --- custom / weighted mean ---------------------------------------------------------------------


def test_custom_returns_float64_copy() -> None:
    given_rates = [0.0, 0.5, 1.0]
    rates = custom(given_rates)
    assert_schedule(rates, 3)
    rates[0] = 0.3
    assert given_rates[0] == 0.0


@pytest.mark.parametrize(
    ("rates", "match"),
    [
        ([0.5, 1.2], r"each be in \[0, 1\], got \[1.2\]"),
        ([-0.1, 0.5], r"each be in \[0, 1\]"),
        ([0.5, math.nan], "finite"),
        ([], "non-empty"),
        ([[0.5, 0.5]], "1-D"),
        (["a", "b"], "finite numbers"),
    ],
)
def test_custom_bad_rates(rates: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        custom(rates)


def test_weighted_mean() -> None:
    assert weighted_mean([0.2, 0.8]) == pytest.approx(0.5)
    assert weighted_mean([0.2, 0.8], [3, 1]) == pytest.approx(0.35)


# --- the method registry (build_schedule, ScheduleSpec) ------------------------------------------


def test_build_schedule_dispatches() -> None:
    np.testing.assert_array_equal(build_schedule(ScheduleSpec("uniform", 0.6), 4), uniform(4, 0.6))
    np.testing.assert_array_equal(build_schedule(ScheduleSpec("atp", 0.7, beta=0.01), 32), atp(32, 0.7, 0.01))
    ratios = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(
        build_schedule(ScheduleSpec("owl", 0.7, lam=0.05), 3, {"outlier_ratios": np.array(ratios)}),
        owl(ratios, 0.7, 0.05),
    )
    np.testing.assert_array_equal(
        build_schedule(ScheduleSpec("alphapruning", 0.7, eps=0.2), 3, {"alphas": np.array(ratios)}, weights=[1, 2, 3]),
        alphapruning(ratios, 0.7, 0.2, [1, 2, 3]),
    )
    np.testing.assert_array_equal(build_schedule(ScheduleSpec("custom", rates=(0.1, 0.9)), 2), [0.1, 0.9])


@pytest.mark.parametrize(
    ("spec", "stats", "weights", "match"),
    [
        (ScheduleSpec("owl", 0.7), {}, None, "OWL needs outlier ratios, one per block"),
        (ScheduleSpec("owl", 0.7), {"outlier_ratios": np.array([1.0, 2.0])}, None, "OWL needs 3 outlier ratios"),
        (ScheduleSpec("alphapruning", 0.7), {}, None, "AlphaPruning needs alphas"),
        (ScheduleSpec("alphapruning", 0.7), {"alphas": np.array([2.0, 3.0, 4.0])}, [1, 2], "weights must be 3 numbers"),
        (ScheduleSpec("custom", rates=(0.1, 0.9)), {}, None, "custom schedule needs 3 rates"),
        (ScheduleSpec("atp", 0.7, beta=0.5), {}, None, "beta must be in"),
    ],
)
def test_build_schedule_errors(spec: ScheduleSpec, stats: dict, weights: list | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_schedule(spec, 3, stats, weights)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ScheduleSpec("owl", 0.7, lam=3), r"owl lam must be in \[0, 1\], got 3"),
        (lambda: ScheduleSpec("owl", 0.7, m=-1), r"owl m must be a finite number >= 0"),
        (lambda: ScheduleSpec("alphapruning", 0.7, eps=1.5), r"alphapruning eps must be in \[0, 1\]"),
        (lambda: ScheduleSpec("alphapruning", 0.7, estimator="best"), "allowed: official, window"),
        (lambda: ScheduleSpec("atp", 0.7, lam=0.1), "atp takes no parameter lam; allowed: beta"),
        (lambda: ScheduleSpec("uniform", 1.0), r"sparsity must be in \(0, 1\)"),
        (
            lambda: ScheduleSpec("nope", 0.5),
            "unknown method 'nope'; allowed: uniform, atp, owl, alphapruning, dlp, dsa, lsa, power, prefix, custom",
        ),
        (lambda: ScheduleSpec("custom"), "needs rates"),
    ],
)
def test_spec_refuses_bad_parameters(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_spec_defaults_equality_and_fingerprint_parts() -> None:
    spec = ScheduleSpec("owl", 0.7)
    assert spec == ScheduleSpec("owl", 0.7, lam=0.08, m=5.0) and hash(spec) == hash(ScheduleSpec("owl", 0.7, lam=0.08))
    assert spec.params() == {"method": "owl", "sparsity": 0.7, "lam": 0.08, "m": 5.0}
    assert ScheduleSpec("custom", rates=(0.1, 0.2)).params() == {"method": "custom", "rates": (0.1, 0.2)}
    assert spec.replace(lam=0.1).get("lam") == 0.1 and spec.describe() == "owl S=0.7 lam=0.08 m=5"


def test_a_registered_method_is_everywhere() -> None:
    """Adding a method is one registry entry plus its pure function: the CLI offers it, builds it and
    checks its parameter; the figures colour it."""
    from atp_viz.cli.main import build_parser, main
    from atp_viz.dashboard import figures
    from atp_viz.schedules.methods import Method, Param, method_names, registered

    def reverse_atp(n: int, s: float, p: dict, stats: dict, w: object) -> np.ndarray:
        return atp(n, s, float(p["slope"]))[::-1].copy()

    method = Method("throwaway", "Throwaway", "#123456", reverse_atp, params=(Param("slope", "slope", 0.0, 0.0, 0.1),))
    with registered(method):
        assert "throwaway" in method_names(comparable=True)
        schedule_parser = build_parser()._subparsers._group_actions[0].choices["prune"]  # type: ignore[union-attr]
        choices = next(a.choices for a in schedule_parser._actions if a.dest == "method")
        assert "throwaway" in choices and any(a.dest == "slope" for a in schedule_parser._actions)
        assert figures.color_for("Throwaway (slope = 0.01)") == "#123456"
        np.testing.assert_allclose(
            build_schedule(ScheduleSpec("throwaway", 0.5, slope=0.05), 4), atp(4, 0.5, 0.05)[::-1]
        )
        assert main(["schedule", "--method", "throwaway", "--layers", "4", "--sparsity", "0.5", "--slope", "0.2"]) == 2
    assert "throwaway" not in method_names()


# --- rate maps ------------------------------------------------------------------------------------


def test_rate_maps() -> None:
    from atp_viz.schedules.published import BlockRates, LinearRates, as_rate_map

    block = as_rate_map([0.1, 0.2])
    assert isinstance(block, BlockRates) and block.num_blocks == 2 and block.rate(1, "mlp.up_proj") == 0.2
    linear = LinearRates(np.array([0.1, 0.2]), {(1, "mlp.up_proj"): 0.5})
    assert linear.rate(1, "mlp.up_proj") == 0.5 and linear.rate(1, "self_attn.q_proj") == 0.2
    assert as_rate_map(linear) is linear


def test_seed_spread_and_best_group() -> None:
    from atp_viz.config import parse_seeds
    from atp_viz.measure.points import PointResult, best_group, spread

    assert parse_seeds("0, 1,2") == (0, 1, 2)
    for bad in ("", "1,1", "-1", "a"):
        with pytest.raises(ValueError, match="seeds must be"):
            parse_seeds(bad)
    s = spread([1.0, 3.0, float("nan")])
    assert (s.mean, s.n) == (2.0, 2) and s.std == pytest.approx(2**0.5)
    assert spread([5.0]).std == 0.0 and spread([]).n == 0
    assert s.overlaps(spread([3.0, 3.0])) and not s.overlaps(spread([4.0, 4.0]))

    def point(validation: float) -> PointResult:
        empty = np.zeros(1)
        metrics = {"validation/perplexity": validation, "evaluation/perplexity": validation + 1}
        return PointResult("atp", 0.5, empty, empty, empty, empty, empty, empty, 0.5, 0.0, metrics=metrics)

    groups = [[point(10), point(12)], [point(9), point(14)], [point(8), point(9)]]
    assert best_group(groups) == (2, 0)  # means 11, 11.5, 8.5
    assert best_group(groups[:1]) == (0, None)


# --- DLP ------------------------------------------------------------------------------------------


def dlp_reference(scores: list[float], sparsity: float, alpha: float) -> list[float]:
    """DLP's get_dlp_ratios + prune_wanda_dlp, step by step with torch as its code does."""
    import torch

    layer_score = [abs(torch.tensor(s)) for s in scores]
    total = sum(layer_score)
    imp = torch.tensor([1 - s / total for s in layer_score])
    scaled = (imp - imp.min()) * (1 / (imp.max() - imp.min()) * alpha * 2)
    density = (scaled - torch.mean(scaled) + (1 - sparsity)).tolist()
    # its pruning code floors a rate <= 0 at 0.01; a rate above 1 prunes the whole row, i.e. acts as 1
    return [min(1 - d, 1.0) if 1 - d > 0 else 0.01 for d in density]


@given(st.lists(st.floats(0.01, 10.0), min_size=3, max_size=40), st.floats(0.3, 0.8), st.floats(0.0, 0.3))
@settings(max_examples=60, deadline=None)
def test_dlp_matches_its_code_and_keeps_the_mean(scores: list[float], sparsity: float, alpha: float) -> None:
    from atp_viz.schedules.published import dlp

    if max(scores) - min(scores) < 1e-6:
        return
    reference = dlp_reference(scores, sparsity, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScheduleClipWarning)
        rates = dlp(scores, sparsity, alpha)
    # torch float32 vs float64; a rate within float error of 0 may land on either side of the code's "<= 0 -> 0.01"
    tie = np.isclose(rates, 0.0, atol=1e-6) & np.isclose(reference, 0.01)
    np.testing.assert_allclose(rates[~tie], np.asarray(reference)[~tie], atol=1e-6)
    if 0.01 < rates.min() and rates.max() < 1:  # not clipped: the mean is exactly S
        assert rates.mean() == pytest.approx(sparsity, abs=1e-9)
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(rates[order]) >= -1e-12)  # a larger mean score -> a higher rate


def test_dlp_edges_and_registry() -> None:
    from atp_viz.schedules.published import dlp

    np.testing.assert_array_equal(dlp([2.0, 2.0, 2.0], 0.7), uniform(3, 0.7))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        dlp([1.0, 2.0], 0.7, alpha=1.5)
    with pytest.raises(ValueError, match="positive sum"):
        dlp([0.0, 0.0], 0.7)
    spec = ScheduleSpec("dlp", 0.7)
    assert spec.get("alpha") == 0.15 and spec.entry.needs == ("block_scores",)
    np.testing.assert_array_equal(
        build_schedule(spec, 3, {"block_scores": np.array([1.0, 2.0, 3.0])}), dlp([1, 2, 3], 0.7)
    )
