"""Predicted beta: the pure model on synthetic profiles, a tiny-model prediction, CLI and page."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.schedules import published
from atp_viz.store import ResultStore
from atp_viz.tuning.predict import (
    PredictConfig,
    Profile,
    anchored_amplification,
    best_beta,
    chain_amplification,
    interpolate_errors,
    measured_rates,
    predict_for,
    predict_from_profile,
    predicted_error,
    stored_prediction,
)

ROOT = Path(__file__).resolve().parents[1]


# -- pure math ---------------------------------------------------------------------------------------
def test_log_interpolation_is_exact_for_exponential_errors() -> None:
    rates = np.array([0.2, 0.5, 0.8])
    errors = np.exp(4.0 * rates)[None, :].repeat(3, axis=0) * np.array([[1.0], [2.0], [3.0]])
    at = np.array([0.1, 0.6, 0.95])  # below, inside and beyond the measured rates
    assert interpolate_errors(rates, errors, at) == pytest.approx(np.exp(4.0 * at) * [1, 2, 3])
    with pytest.raises(ValueError, match="increasing rates"):
        interpolate_errors(rates[::-1], errors, at)


def test_amplification_models() -> None:
    assert chain_amplification([1.0, 2.0, 3.0, 0.5]) == pytest.approx([3.0, 1.5, 0.5, 1.0])
    assert anchored_amplification([0, 2], [4.0, 1.0], 4) == pytest.approx([4.0, 2.0, 1.0, 1.0])


def profile_of(errors: np.ndarray, rates: np.ndarray, gains: np.ndarray) -> Profile:
    return Profile(rates, errors, gains, np.zeros(0, np.int64), np.zeros(0), forwards=0)


@pytest.mark.parametrize("a, k, expected", [(0.3, 10.0, 0.03), (0.5, 10.0, 0.05), (0.0, 10.0, 0.01)])
def test_predicted_error_is_lowest_where_the_model_says(a: float, k: float, expected: float) -> None:
    """e_i(s) = exp(k s), A_i = exp(-a i) (one-block gains e^a): E(beta) = sum_i exp((k beta - a) i) up to a
    factor, which is lowest at beta = a / k (beta = 0 when nothing amplifies: the first grid point)."""
    layers, sparsity, step = 10, 0.5, 0.01
    rates = measured_rates(layers, sparsity, step)
    errors = np.exp(k * rates)[None, :].repeat(layers, axis=0)
    profile = profile_of(errors, rates, np.full(layers, np.exp(a)))
    prediction = predict_from_profile(profile, sparsity, step, "chain")
    assert prediction.beta == pytest.approx(expected)
    assert prediction.betas == pytest.approx(published.beta_grid(layers, sparsity, step))
    # the same curve by brute force from the formula
    amp = np.exp(-a * np.arange(layers))
    brute = [amp @ np.exp(k * published.atp(layers, sparsity, b)) for b in prediction.betas]
    assert prediction.predicted_error / prediction.predicted_error[0] == pytest.approx(np.array(brute) / brute[0])
    # without amplification the flattest schedule wins
    assert predict_from_profile(profile, sparsity, step, "residual").index == 0


def test_best_beta_and_bad_models() -> None:
    assert best_beta([0.1, 0.2, 0.3], [3.0, 1.0, 1.0]) == (0.2, 1)
    profile = profile_of(np.ones((4, 2)), np.array([0.4, 0.6]), np.ones(4))
    assert predicted_error(np.ones(4), profile.rates, profile.local, 0.5, [0.0, 0.1]) == pytest.approx([4.0, 4.0])
    with pytest.raises(ValueError, match="unknown amplification model 'x'; allowed: chain, direct, residual"):
        predict_from_profile(profile, 0.5, 0.01, "x")
    with pytest.raises(ValueError, match="anchors = 0"):
        predict_from_profile(profile, 0.5, 0.01, "direct")
    with pytest.raises(ValueError, match="prediction windows must be >= 1"):
        PredictConfig(windows=0)


# -- a tiny model end to end ---------------------------------------------------------------------
def tiny_bench(store: ResultStore) -> Workbench:
    setup = Setup(
        model=str(shared_tiny_model("llama")),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(4, 32),
        evaluation=EvalConfig(4, 32),
        calibration="cached",
    )
    return Workbench(setup, store)


def test_tiny_model_prediction_is_stored_and_leaves_the_model_dense(tmp_path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    wb = tiny_bench(store)
    dense = {k: v.clone() for k, v in wb._dense.weights.items()}
    config = PredictConfig(windows=2, anchors=2)
    assert stored_prediction(wb, 0.7, 0.02, config) is None
    prediction = predict_for(wb, 0.7, 0.02, config)
    grid = published.beta_grid(4, 0.7, 0.02)
    assert prediction.betas == pytest.approx(grid) and prediction.beta == pytest.approx(grid[prediction.index])
    assert np.all(np.isfinite(prediction.predicted_error)) and np.all(prediction.profile.local > 0)
    rates = prediction.profile.rates.size
    assert prediction.forwards == 4 * (1 + rates) + 3 + (3 + 0)  # dense+rates per block, gains, anchors 0 and 3
    assert np.all(np.diff(prediction.profile.local, axis=1) >= 0)  # more pruning, more local error
    for (i, name), lin in ((k, wb.blocks[k[0]].get_submodule(k[1])) for k in dense):
        assert torch.equal(lin.weight, dense[(i, name)])
    again = predict_for(tiny_bench(store), 0.7, 0.02, config)
    assert again.cached and again.beta == prediction.beta and store.count(kind="beta-prediction") == 1


# -- CLI ------------------------------------------------------------------------------------------
def cli_args(store: Path) -> list[str]:
    return ["predict-beta", "--model", str(shared_tiny_model("llama")), "--corpus", str(shared_corpus_file()),
            "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4", "--calibration", "cached",
            "--predict-windows", "2", "--anchors", "2", "--store", str(store)]  # fmt: skip


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--sparsity", "1.2"], "sparsity must be in (0, 1)"),
        (["--step", "0"], "--step must be in (0, 1)"),
        (["--step", "0.5"], "no ATP grid point fits: step 0.5 > beta_max = 0.2"),
        (["--predict-windows", "0"], "prediction windows must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, extra, needle) -> None:
    store = tmp_path / "r.sqlite"
    assert main([*cli_args(store), *extra]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("atp-viz: error:")]
    assert len(errors) == 1 and needle in errors[0]  # (loading messages come before it)
    assert not store.exists()


def test_cli_prints_the_prediction_and_its_curve(capsys, tmp_path) -> None:
    assert main([*cli_args(tmp_path / "r.sqlite"), "--sparsity", "0.7", "--step", "0.02", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["beta"] == pytest.approx(out["curve"][out["index"]]["beta"])
    assert len(out["curve"]) == out["grid_points"] == 10 and out["seconds"] >= 0 and not out["cached"]


# -- the Beta tuning page -------------------------------------------------------------------------------
@pytest.fixture()
def dashboard(dashboard_env: dict[str, str], settle_jobs: None):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in dashboard_env.items():
            mp.setenv(name, value)
        yield


@pytest.mark.slow
def test_beta_tuning_predict_button_draws_the_prediction(dashboard) -> None:
    at = AppTest.from_file(str(ROOT / "pages/3_Beta_tuning.py"), default_timeout=120)
    at.session_state["_sparsity"] = 0.7
    at.session_state["_tune_step"] = 0.04  # not test_pages' 0.05: its figure count stays its own
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="tune_predict").click().run()
    assert not at.exception, [e.value for e in at.exception]
    charts = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    # the U-curve before any sweep point: the predicted beta is the one thing drawn on it
    curve = next(c for c in charts if any(t.get("name", "").startswith("predicted (no sweep)") for t in c["data"]))
    assert any(shape["x0"] == shape["x1"] for shape in curve["layout"]["shapes"])  # the vertical line
    assert any("Predicted beta = " in c.value for c in at.caption)
