"""Search over per-block rates: feasibility, samplers, resume (clean and after SIGKILL), measures."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution

from atp_viz.search import space as search
from atp_viz.search.space import SAMPLERS, RateSpace, Trial, best_so_far, monotonicity, run_search

REPO = Path(__file__).resolve().parents[1]
MEAN_TOL = 1e-12  # weighted mean of every trial equals S to this
DRAWS = 2000  # random parameter draws per feasibility case
BLOCKS = 6  # blocks of the synthetic search problems
TARGET_SLOPE = 0.04  # the synthetic optimum rises by this per block
SEARCH_TRIALS = 30  # budget in which each sampler must beat uniform clearly
IMPROVEMENT = 0.6  # ... reaching at most this fraction of the uniform schedule's objective
KILL_TIMEOUT_S = 60.0  # the child must reach its third trial within this


def _weights(n: int = BLOCKS, seed: int = 0) -> np.ndarray:
    """Unequal block sizes, a factor of up to ~50 apart."""
    return np.random.default_rng(seed).lognormal(0.0, 1.0, n) + 0.1


def _target(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """An increasing schedule with weighted mean S: S + slope * (i - weighted mean of i)."""
    depth = np.arange(weights.size, dtype=np.float64)
    return sparsity + TARGET_SLOPE * (depth - np.sum(weights * depth) / np.sum(weights))


def _quadratic(weights: np.ndarray, target: np.ndarray):
    """Convex synthetic objective sum w (r - target)^2 / sum w, minimised at the increasing target."""

    def objective(rates: np.ndarray) -> float:
        return float(np.sum(weights * (rates - target) ** 2) / np.sum(weights))

    return objective


def _assert_feasible(rates: np.ndarray, weights: np.ndarray, sparsity: float, max_delta: float | None = None) -> None:
    low, high = (0.0, 1.0) if max_delta is None else (max(0.0, sparsity - max_delta), min(1.0, sparsity + max_delta))
    assert rates.shape == weights.shape
    assert abs(np.sum(weights * rates) / np.sum(weights) - sparsity) <= MEAN_TOL
    assert np.all(rates >= low) and np.all(rates <= high)


# ------------------------------------------------------------------------------ parametrisation


@pytest.mark.parametrize("sparsity", [0.05, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("max_delta", [None, 0.1])
def test_every_draw_is_feasible(sparsity: float, max_delta: float | None) -> None:
    rng = np.random.default_rng(1)
    for n in (2, 7, 32):
        weights = _weights(n, seed=n)
        for k in range(DRAWS // 3):
            z = rng.uniform(-1, 1, n) if k % 4 else rng.choice([-1.0, 1.0], n)  # corners too
            amplitude = float(rng.uniform()) if k % 5 else float(k % 2)  # a = 0 and a = 1 too
            rates = search.rates_from_params(z, amplitude, weights, sparsity, max_delta)
            _assert_feasible(rates, weights, sparsity, max_delta)


def test_full_amplitude_touches_a_bound_and_zero_direction_is_uniform() -> None:
    weights = _weights()
    rates = search.rates_from_params(np.linspace(-1, 1, BLOCKS), 1.0, weights, 0.95)
    assert math.isclose(rates.max(), 1.0) or math.isclose(rates.min(), 0.0)
    flat = search.rates_from_params(np.full(BLOCKS, 0.3), 0.8, weights, 0.7)
    np.testing.assert_array_equal(flat, np.full(BLOCKS, 0.7))


@pytest.mark.parametrize("max_delta", [None, 0.2])
def test_encode_inverts_decode(max_delta: float | None) -> None:
    space = RateSpace.create(_weights(), 0.6, max_delta)
    rng = np.random.default_rng(2)
    box = {name: (d.low, d.high) for name, d in space.distributions().items() if isinstance(d, FloatDistribution)}
    assert len(box) == BLOCKS + 1
    for _ in range(200):
        params = {name: float(rng.uniform(low, high)) for name, (low, high) in box.items()}
        rates = space.decode(params)
        np.testing.assert_allclose(space.decode(space.encode(rates)), rates, atol=1e-12)
    np.testing.assert_array_equal(space.decode(space.encode(space.uniform())), space.uniform())


def test_level_switch_keeps_mean_and_bounds() -> None:
    weights = _weights(9)
    rng = np.random.default_rng(3)
    for sparsity in (0.05, 0.95):
        rates = np.full(9, sparsity)
        for _ in range(500):
            rates = search.level_switch(rates, weights, 0.05, (0.0, 1.0), 3, rng)
            _assert_feasible(rates, weights, sparsity)
        assert np.ptp(rates) > 0  # it does move


# ------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_each_sampler_beats_uniform_and_stays_feasible(sampler: str, tmp_path: Path) -> None:
    weights, sparsity = _weights(), 0.7
    objective = _quadratic(weights, _target(weights, sparsity))
    trials = run_search(
        objective, weights, sparsity, sampler, SEARCH_TRIALS, storage_path=tmp_path / "s.log", study_name="q"
    )
    assert [t.number for t in trials] == list(range(SEARCH_TRIALS))
    for t in trials:
        _assert_feasible(t.rates, weights, sparsity)
        assert t.value == objective(t.rates)
    best = min(trials, key=lambda t: t.value)
    assert best.value <= IMPROVEMENT * objective(np.full(BLOCKS, sparsity))
    curve = best_so_far(trials)
    assert np.all(np.diff(curve) <= 0) and curve[-1] == best.value
    seconds = [t.seconds for t in trials]
    assert seconds == sorted(seconds) and seconds[0] >= 0


def test_tpe_and_cmaes_with_one_seed_start_from_different_draws(tmp_path: Path) -> None:
    """Both samplers' first trial is random; a shared derived seed made it the same schedule."""
    weights, sparsity = _weights(), 0.5
    first = {
        name: run_search(lambda r: 0.0, weights, sparsity, name, 1, storage_path=tmp_path / "j.log", study_name=name)
        for name in ("tpe", "cmaes")
    }
    assert not np.allclose(first["tpe"][0].rates, first["cmaes"][0].rates)


def test_registry_entries_build_samplers() -> None:
    space = RateSpace.create(_weights(), 0.5)
    for name, entry in SAMPLERS.items():
        assert entry.name == name and entry.label and entry.color.startswith("#")
        assert isinstance(entry.factory(space, 0, 0), optuna.samplers.BaseSampler)


def test_max_delta_bounds_every_trial(tmp_path: Path) -> None:
    weights, sparsity, max_delta = _weights(), 0.7, 0.05
    objective = _quadratic(weights, _target(weights, sparsity))
    for sampler in SAMPLERS:
        trials = run_search(
            objective,
            weights,
            sparsity,
            sampler,
            12,
            storage_path=tmp_path / "s.log",
            study_name=sampler,
            max_delta=max_delta,
        )
        for t in trials:
            _assert_feasible(t.rates, weights, sparsity, max_delta)


# ------------------------------------------------------------------------------ resume


class _Counting:
    """The synthetic objective, counting and recording its calls."""

    def __init__(self, weights: np.ndarray, sparsity: float) -> None:
        self._f = _quadratic(weights, _target(weights, sparsity))
        self.calls: list[np.ndarray] = []

    def __call__(self, rates: np.ndarray) -> float:
        self.calls.append(rates.copy())
        return self._f(rates)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_resume_after_clean_stop_keeps_trials(sampler: str, tmp_path: Path) -> None:
    weights, sparsity = _weights(), 0.7
    path = tmp_path / "s.log"
    first = run_search(_Counting(weights, sparsity), weights, sparsity, sampler, 5, storage_path=path, study_name="r")
    again = _Counting(weights, sparsity)
    trials = run_search(again, weights, sparsity, sampler, 8, storage_path=path, study_name="r")
    assert len(trials) == 8 and len(again.calls) == 3
    for old, new in zip(first, trials[:5]):
        assert (old.number, old.value, old.seconds) == (new.number, new.value, new.seconds)
        np.testing.assert_array_equal(old.rates, new.rates)
    assert trials[5].seconds >= trials[4].seconds  # the clock continues over runs
    old_rates = [t.rates for t in first]
    assert not any(np.allclose(r, o) for r in again.calls[1:] for o in old_rates[1:])  # no replayed draws
    loaded = search.load_trials(path, "r")  # what a dashboard polling the file sees
    assert [(t.number, t.value) for t in loaded] == [(t.number, t.value) for t in trials]
    assert search.load_trials(path, "nope") == [] and search.load_trials(tmp_path / "none.log", "r") == []


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from atp_viz.search.space import run_search

    log = Path(sys.argv[1])
    weights = np.array([1.0, 2.0, 3.0, 1.5, 0.5])

    def objective(rates):
        calls = log.read_text().count("begin") if log.exists() else 0
        with log.open("a") as f:
            f.write("begin\\n")
        time.sleep(0.05 if calls < 2 else 120)  # the third trial hangs until killed
        return float(np.sum((rates - np.linspace(0.6, 0.8, 5)) ** 2))

    def on_trial(trial):
        with log.open("a") as f:
            f.write(f"end {trial.number}\\n")

    run_search(objective, weights, 0.7, sys.argv[2], 6, storage_path=Path(sys.argv[3]), study_name="k",
               on_trial=on_trial)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sigkill_mid_trial_resumes_without_loss(sampler: str, tmp_path: Path) -> None:
    log, path = tmp_path / "calls.txt", tmp_path / "s.log"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, str(script), str(log), sampler, str(path)], env=env)
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while time.monotonic() < deadline and child.poll() is None:
            text = log.read_text() if log.exists() else ""
            if text.count("end") >= 2 and text.count("begin") == 3:
                break
            time.sleep(0.05)
        assert child.poll() is None, "the child exited before it could be killed mid-trial"
        text = log.read_text()
        assert text.count("end") == 2 and text.count("begin") == 3  # two finished, third running
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    before = search.load_trials(path, "k")
    assert [t.number for t in before] == [0, 1]

    weights = np.array([1.0, 2.0, 3.0, 1.5, 0.5])
    calls: list[np.ndarray] = []

    def objective(rates: np.ndarray) -> float:
        calls.append(rates)
        return float(np.sum((rates - np.linspace(0.6, 0.8, 5)) ** 2))

    after = run_search(objective, weights, 0.7, sampler, 6, storage_path=path, study_name="k")
    assert len(after) == 6 and len(calls) == 4  # 2 kept, the killed slot and 3 more run here
    for old, new in zip(before, after):
        assert (old.number, old.value, old.seconds) == (new.number, new.value, new.seconds)
        np.testing.assert_array_equal(old.rates, new.rates)
    study = optuna.load_study(study_name="k", storage=search._storage(path))
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [t.number for t in failed] == [2] and failed[0].user_attrs[search.ATTR_STALE]
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert [t.number for t in after] == [0, 1, 3, 4, 5, 6]


def test_resumed_evo_search_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """evo's state is a function of the stored trials: 5 + 9 trials give the same 14 as 14 at once."""
    weights, sparsity = _weights(), 0.7
    whole = run_search(
        _Counting(weights, sparsity), weights, sparsity, "evo", 14, storage_path=tmp_path / "a.log", study_name="w"
    )
    run_search(
        _Counting(weights, sparsity), weights, sparsity, "evo", 5, storage_path=tmp_path / "b.log", study_name="w"
    )
    parts = run_search(
        _Counting(weights, sparsity), weights, sparsity, "evo", 14, storage_path=tmp_path / "b.log", study_name="w"
    )
    assert [t.value for t in parts] == [t.value for t in whole]


def test_enqueued_schedules_run_first_once(tmp_path: Path) -> None:
    weights, sparsity = _weights(), 0.7
    seeds = [np.full(BLOCKS, sparsity), _target(weights, sparsity)]
    path = tmp_path / "s.log"
    first = run_search(
        _Counting(weights, sparsity), weights, sparsity, "cmaes", 3, storage_path=path, study_name="e", enqueue=seeds
    )
    np.testing.assert_array_equal(first[0].rates, seeds[0])
    np.testing.assert_array_equal(first[1].rates, seeds[1])
    assert first[1].value == 0.0
    again = _Counting(weights, sparsity)
    run_search(again, weights, sparsity, "cmaes", 5, storage_path=path, study_name="e", enqueue=seeds)
    assert len(again.calls) == 2 and not any(np.array_equal(c, s) for c in again.calls for s in seeds)


def _sleepy(rates: np.ndarray) -> float:
    time.sleep(0.2)
    return 1.0


def test_stop_conditions_and_failing_objective(tmp_path: Path) -> None:
    weights, sparsity = _weights(), 0.5
    path = tmp_path / "s.log"
    objective = _Counting(weights, sparsity)
    assert run_search(
        objective,
        weights,
        sparsity,
        "evo",
        50,
        storage_path=path,
        study_name="a",
        should_stop=lambda: len(objective.calls) >= 2,
    )
    assert len(objective.calls) == 2
    slow = run_search(_sleepy, weights, sparsity, "evo", 50, storage_path=path, study_name="b", timeout_s=0.3)
    assert 1 <= len(slow) <= 3

    def broken(rates: np.ndarray) -> float:
        raise RuntimeError("objective failed")

    with pytest.raises(RuntimeError, match="objective failed"):
        run_search(broken, weights, sparsity, "tpe", 3, storage_path=path, study_name="c")
    trials = run_search(lambda r: float("nan"), weights, sparsity, "tpe", 2, storage_path=path, study_name="c")
    assert [t.number for t in trials] == [1, 2] and all(t.value == math.inf for t in trials)


def test_busy_study_and_changed_settings(tmp_path: Path) -> None:
    weights, sparsity = _weights(), 0.5
    path = tmp_path / "s.log"
    run_search(lambda r: 0.0, weights, sparsity, "tpe", 1, storage_path=path, study_name="x")
    with search._study_lock(path, "x"), pytest.raises(search.SearchBusyError, match="pid"):
        run_search(lambda r: 0.0, weights, sparsity, "tpe", 2, storage_path=path, study_name="x")
    with pytest.raises(ValueError, match="other settings .*sparsity"):
        run_search(lambda r: 0.0, weights, 0.6, "tpe", 2, storage_path=path, study_name="x")


# ------------------------------------------------------------------------------ measures


def test_monotonicity_on_known_inputs() -> None:
    rising = np.linspace(0.5, 0.9, 8)
    assert monotonicity(rising) == {"spearman": pytest.approx(1.0), "inversions": 0, "inversion_fraction": 0.0}
    falling = monotonicity(rising[::-1])
    assert falling == {"spearman": pytest.approx(-1.0), "inversions": 28, "inversion_fraction": 1.0}
    one_swap = monotonicity([0.1, 0.3, 0.2])  # ranks (1, 3, 2) vs (1, 2, 3): rho = 1 - 6*2/(3*8)
    assert one_swap["spearman"] == pytest.approx(0.5) and one_swap["inversions"] == 1
    assert one_swap["inversion_fraction"] == pytest.approx(1 / 3)
    ties = monotonicity([0.1, 0.1, 0.2])  # average ranks (1.5, 1.5, 3): rho = 1.5 / sqrt(1.5 * 2)
    assert ties["spearman"] == pytest.approx(1.5 / math.sqrt(3.0)) and ties["inversions"] == 0
    flat = monotonicity(np.full(5, 0.7) + np.array([0, 1e-15, -1e-15, 0, 1e-16]))  # float noise is no order
    assert math.isnan(flat["spearman"]) and flat["inversions"] == 0


def test_best_so_far_is_the_running_minimum() -> None:
    values = [3.0, 5.0, 2.0, 2.5, 1.0]
    trials = [Trial(i, np.zeros(2), v, float(i)) for i, v in enumerate(values)]
    np.testing.assert_array_equal(best_so_far(trials), [3.0, 3.0, 2.0, 2.0, 1.0])
    assert best_so_far([]).size == 0


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler": "random"}, "sampler must be one of tpe, cmaes, evo"),
        ({"trials": 0}, "trials must be an integer >= 1"),
        ({"trials": 2.5}, "trials must be an integer >= 1"),
        ({"timeout_s": 0}, "timeout_s must be None or a number of seconds > 0"),
        ({"timeout_s": float("nan")}, "timeout_s must be None"),
        ({"sparsity": 1.0}, r"sparsity must be in \(0, 1\)"),
        ({"sparsity": 0.0}, r"sparsity must be in \(0, 1\)"),
        ({"weights": np.array([1.0, -2.0, 3.0])}, "weights must be >= 2 finite numbers > 0"),
        ({"weights": np.array([1.0])}, "weights must be >= 2 finite numbers > 0"),
        ({"max_delta": 0.0}, r"max_delta must be None or a number in \(0, 1\]"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"study_name": ""}, "study_name must be a non-empty string"),
        ({"enqueue": [np.full(3, 0.9)]}, r"enqueue\[0\] must have rates in \[0, 1\] and weighted mean 0.5"),
        ({"enqueue": [np.full(4, 0.5)]}, r"enqueue\[0\] must be 3 finite numbers"),
    ],
)
def test_bad_input_raises_one_line_and_writes_nothing(change: dict, message: str, tmp_path: Path) -> None:
    args = {"weights": np.array([1.0, 2.0, 3.0]), "sparsity": 0.5, "sampler": "tpe", "trials": 3}
    options = {"storage_path": tmp_path / "sub" / "s.log", "study_name": "bad"}
    for key, value in change.items():
        (args if key in args else options)[key] = value
    with pytest.raises(ValueError, match=message) as info:
        run_search(lambda r: 0.0, **args, **options)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_evo_sampler_rejects_bad_settings() -> None:
    space = RateSpace.create(_weights(), 0.5)
    for bad in ({"offspring": 0}, {"max_switches": 0}, {"step": 0.0}, {"step": 1.5}):
        with pytest.raises(ValueError, match="must be"):
            search.EvoSampler(space, **bad)  # type: ignore[arg-type]


def test_check_helpers() -> None:
    assert search.check_sampler("evo") == "evo"
    assert search.check_budget(np.int64(4), 2) == (4, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trials"):
        search.check_budget(True, None)


def test_half_written_journal_line_is_cut(tmp_path: Path) -> None:
    weights, sparsity = _weights(), 0.6
    path = tmp_path / "s.log"
    first = run_search(_Counting(weights, sparsity), weights, sparsity, "evo", 3, storage_path=path, study_name="t")
    with path.open("ab") as handle:
        handle.write(b'{"op_code":5,"worker_id":"dead","trial_id":3,"sta')  # a writer killed mid-append
    with pytest.warns(search.JournalRepairedWarning, match="half-written line"):
        trials = run_search(
            _Counting(weights, sparsity), weights, sparsity, "evo", 5, storage_path=path, study_name="t"
        )
    assert [t.value for t in trials[:3]] == [t.value for t in first] and len(trials) == 5
    assert len(search.load_trials(path, "t")) == 5
