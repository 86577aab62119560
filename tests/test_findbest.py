"""Find-best: the guarded Fibonacci search on synthetic curves, its points in the store, CLI and pages."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench, compare_cells, compare_rows, sweep_specs
from atp_viz.measure.metrics import METRICS
from atp_viz.store import ResultStore
from atp_viz.tuning.findbest import atp_grid, fast_compare, fast_setup, find_best, find_min, max_evaluations, walk_down

ROOT = Path(__file__).resolve().parents[1]


# -- the search on synthetic curves --------------------------------------------------------------
def u_curve(n: int, minimum: int, left: float, right: float, power: float) -> np.ndarray:
    x = np.arange(n, dtype=float)
    return np.where(x < minimum, left * np.abs(x - minimum) ** power, right * np.abs(x - minimum) ** power)


def counting(values: np.ndarray) -> tuple[list[int], object]:
    calls: list[int] = []

    def objective(index: int) -> float:
        calls.append(index)
        return float(values[index])

    return calls, objective


def test_finds_the_minimum_of_u_curves_within_the_evaluation_bound() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 41):
        for minimum in range(n):
            values = u_curve(n, minimum, *rng.uniform(0.1, 5.0, 2), rng.uniform(0.5, 3.0))
            calls, objective = counting(values)
            trace = find_min(n, objective)
            assert trace.best == int(np.argmin(values)), (n, minimum)
            assert len(calls) == len(set(calls)) == len(trace.values)  # each index evaluated at most once
            assert len(calls) <= max_evaluations(n) and not trace.scanned
    assert max_evaluations(17) == 8 and max_evaluations(10) == 7  # the embedded model's grids at S = 0.5 and 0.7
    assert max_evaluations(100) == 12  # logarithmic: the whole grid would be 100


def test_noise_guard_scans_between_minima_of_a_non_unimodal_curve() -> None:
    n = 21
    values = np.array([min(abs(i - 12.0), abs(i - 6.0) - 0.5) for i in range(n)])  # valleys at 12 and 6 (deeper)
    calls, objective = counting(values)
    trace = find_min(n, objective)
    assert trace.scanned and trace.best == 6 == int(np.argmin(values))
    assert len(calls) < n  # the scan covers the span between the probes' minima, not the whole grid


def test_winner_is_a_local_minimum_and_nan_ranks_last() -> None:
    values = np.array([5.0, 4.0, 3.0, 2.5, 2.0, 9.0])
    assert walk_down(len(values), lambda i: float(values[i]), 0) == 4
    values = np.array([3.0, 2.0, 1.5, 2.5, 4.0, math.nan, math.nan, math.nan])  # steep betas collapse: NaN
    assert find_min(len(values), lambda i: float(values[i])).best == 2
    with pytest.raises(ValueError, match="at least one point"):
        find_min(0, lambda i: 0.0)


# -- on a tiny model: every probe is a normal stored point that a full sweep reuses ---------------
def tiny_setup(**kw) -> Setup:
    return Setup(
        model=str(shared_tiny_model("llama")),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(samples=4, seqlen=32, seed=0),
        evaluation=EvalConfig(windows=4, seqlen=32),
        calibration="cached",
        **kw,
    )


@pytest.mark.slow  # many pruned models
def test_probes_are_stored_and_reused_by_a_full_sweep(tmp_path, monkeypatch) -> None:
    measured: list[str] = []
    original = METRICS["perplexity"]
    counted = replace(
        original, measure=lambda wb, split, progress: measured.append(split) or original.measure(wb, split, progress)
    )
    monkeypatch.setitem(METRICS, "perplexity", counted)
    store = ResultStore(tmp_path / "r.sqlite")
    wb = Workbench(tiny_setup(), store)
    grid = atp_grid(wb.num_blocks, 0.5, 0.02)  # 16 betas
    assert find_best(wb, grid, compute=False) is None  # nothing stored yet
    steps: list[float] = []
    search = find_best(wb, grid, progress=lambda fraction, _m: steps.append(fraction))
    assert search is not None and steps and steps[-1] == 1.0 and all(0 <= f <= 1 for f in steps)
    probes = len(search.trace.values)
    assert probes <= max_evaluations(len(grid)) < len(grid)
    assert measured.count("validation") == probes and measured.count("evaluation") == 1  # the chosen one only
    chosen = search.points[search.best][0]
    assert search.reported() == chosen.perplexity and math.isfinite(chosen.perplexity)
    assert min(search.trace.values.values()) == pytest.approx(chosen.value("perplexity", "validation"))
    assert store.count(kind="point") == probes
    # a replay reads the same answer back without computing; a fresh Workbench resumes the same way
    measured.clear()
    again = find_best(Workbench(tiny_setup(), store), grid, compute=False)
    assert again is not None and again.best == search.best and again.trace.values == search.trace.values
    assert not measured
    # the full sweep: the probes' point rows and validation rows are reused, only what is missing runs
    points = list(wb.run_many(sweep_specs(wb.num_blocks, 0.5, 0.02)))
    specs = sweep_specs(wb.num_blocks, 0.5, 0.02)
    assert [p.params for p in points] == [s.params() for s in specs]
    assert measured.count("validation") == len(specs) - probes  # never twice for a probe
    assert measured.count("evaluation") == len(specs) - 1  # all but the chosen one, measured already
    assert store.count(kind="point") == len(specs)
    by_beta = {p.beta: p for p in points}
    for index, value in search.trace.values.items():
        assert by_beta[grid[index].get("beta")].value("perplexity", "validation") == pytest.approx(value)


@pytest.mark.slow  # many pruned models
def test_probes_measure_the_selection_metric_alone(tmp_path, monkeypatch) -> None:
    """With zero-shot in the setup, a perplexity search scores no probe's items: only the chosen point gets
    every metric (the comparison's zero-shot pass spent most of its time on probes' validation items)."""
    from atp_viz.measure.zeroshot import ZeroShotConfig

    scored: list[str] = []
    original = METRICS["zeroshot"]
    counted = replace(
        original, measure=lambda wb, split, progress: scored.append(split) or original.measure(wb, split, progress)
    )
    monkeypatch.setitem(METRICS, "zeroshot", counted)
    setup = tiny_setup(metrics=("perplexity", "zeroshot"), zeroshot=ZeroShotConfig(tasks=("boolq",), items=2))
    wb = Workbench(setup, ResultStore(tmp_path / "r.sqlite"))
    search = find_best(wb, atp_grid(wb.num_blocks, 0.5, 0.05))
    assert search is not None and len(search.trace.values) > 1
    assert sorted(scored) == sorted(setup.splits)  # the chosen point, once per split
    chosen = search.points[search.best][0]
    assert 0.0 <= chosen.value("zeroshot", "evaluation") <= 1.0
    again = find_best(Workbench(setup, ResultStore(tmp_path / "r.sqlite")), atp_grid(wb.num_blocks, 0.5, 0.05),
                      compute=False)  # fmt: skip
    assert again is not None and again.best == search.best  # the replay needs no probe's zero-shot either


@pytest.mark.slow  # many pruned models
def test_fast_compare_runs_cells_and_builds_the_library_table(tmp_path) -> None:
    wb = Workbench(fast_setup(replace_calibration(tiny_setup(), "sequential")), ResultStore(tmp_path / "r.sqlite"))
    assert wb.setup.calibration == "cached"
    cells = compare_cells(wb.num_blocks, ["uniform", "atp", "owl"], [0.5], step=0.05)
    assert fast_compare(wb, cells, compute=False).pending == cells
    result = fast_compare(wb, cells)
    assert not result.pending and set(result.searches) == {("atp", 0.5)}
    rows = {row["method"]: row for row in compare_rows(cells, result.found)}
    assert set(rows) == {"uniform", "atp", "owl"} and all(math.isfinite(r["perplexity"]) for r in rows.values())
    search = result.searches[("atp", 0.5)]
    assert rows["atp"]["params"]["beta"] == search.best.get("beta")
    assert rows["atp"]["points"] == f"{len(search.trace.values)}/{len(cells[1].specs)}"
    uniform = result.found[cells[0].specs[0]][0]
    assert math.isnan(uniform.value("perplexity", "validation"))  # nothing to select: evaluation only
    assert not fast_compare(wb, cells, compute=False).pending


def replace_calibration(setup: Setup, mode: str) -> Setup:
    from dataclasses import replace

    return replace(setup, calibration=mode)


# -- CLI ------------------------------------------------------------------------------------------
def tiny_args(store: Path) -> list[str]:
    model, corpus = str(shared_tiny_model("llama")), str(shared_corpus_file())
    return ["--model", model, "--corpus", corpus, "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4",
            "--calibration", "cached", "--store", str(store)]  # fmt: skip


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


@pytest.mark.slow
def test_cli_sweep_find_best_says_what_it_evaluated(capsys, tmp_path) -> None:
    store = tmp_path / "r.sqlite"
    argv = ("sweep", *tiny_args(store), "--sparsity", "0.5", "--step", "0.02", "--find-best", "--json")
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and out["mode"] == "find-best"
    assert len(out["grid"]) == 16 and out["evaluations"] == len(out["evaluated"]) < 16
    assert out["best_beta"] in out["evaluated"]
    values = out["validation_perplexity"]
    assert min(values, key=values.get) == str(out["best_beta"])
    assert out["best_validation_perplexity"] == pytest.approx(values[str(out["best_beta"])])
    assert math.isfinite(out["best_perplexity"])
    code, again, err = run_cli(capsys, *argv)  # resumes from the store: nothing recomputed
    assert code == 0 and again["best_beta"] == out["best_beta"] and err.count("(stored)") == out["evaluations"] + 1


@pytest.mark.slow
def test_cli_compare_find_best(capsys, tmp_path) -> None:
    argv = ["compare", *tiny_args(tmp_path / "r.sqlite"), "--sparsities", "0.5", "--methods", "uniform,atp"]
    code, out, _ = run_cli(capsys, *argv, "--step", "0.05", "--find-best", "--json")
    assert code == 0 and [r["method"] for r in out["rows"]] == ["uniform", "atp"]
    (search,) = out["find_best"]
    assert search["method"] == "atp" and out["rows"][1]["params"]["beta"] == search["chosen"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--step", "0.5"], "no ATP grid point fits"),  # beta_max at S = 0.5 on 4 blocks is 1/3
        (["--step", "0"], "--step must be in (0, 1)"),
        (["--sparsity", "1.5"], "sparsity"),
    ],
)
@pytest.mark.slow
def test_cli_find_best_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, extra, needle) -> None:
    store = tmp_path / "r.sqlite"
    code, _, err = run_cli(capsys, "sweep", *tiny_args(store), "--sparsity", "0.5", *extra, "--find-best")
    errors = [line for line in err.splitlines() if "error" in line]  # stderr also shows the loading progress
    assert code == 2 and len(errors) == 1 and needle in errors[0] and errors[0].startswith("atp-viz: error:")
    assert not store.exists()


# -- pages ----------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_dashboard(dashboard_env: dict[str, str], tmp_path, monkeypatch, settle_jobs: None) -> None:
    for name, value in dashboard_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ATP_VIZ_STORE", str(tmp_path / "results.sqlite"))


def page(name: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / name), default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


@pytest.mark.slow
def test_beta_tuning_find_best_button(tiny_dashboard) -> None:
    at = page("pages/3_Beta_tuning.py", _sparsity=0.5, _tune_step=0.02)
    assert not at.exception
    at.button(key="tune_find").click().run()
    assert not at.exception, [e.value for e in at.exception]
    found = [s.value for s in at.success if s.value.startswith("Find best: beta =")]
    assert found and "of 16 grid points" in found[0]
    table = next(frame.value for frame in at.dataframe if "probe" in frame.value.columns)
    assert table["chosen"].sum() == 1 and len(table) < 16
    assert "(16 missing)" in at.button(key="tune_run").label  # the chosen point is complete (17 = uniform + 16)


@pytest.mark.slow
def test_compare_page_fast_default(tiny_dashboard) -> None:
    at = page("pages/4_Compare_strategies.py", _cmp_sparsities=[0.5], _tune_step=0.05)
    assert not at.exception
    assert at.toggle(key="cmp_fast").value and any("Fast default" in c.value for c in at.caption)
    at.button(key="cmp_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table.columns) == ["S = 0.5"] and {"ATP", "uniform", "dense"} <= set(table.index)
    assert not any(b.key == "cmp_run" for b in at.button)  # every cell finished


@pytest.mark.slow
def test_compare_page_searches_beta_at_the_parameters_chosen(tiny_dashboard) -> None:
    """The power profile's curvature set on the page: its beta grid is searched at that p (after a run at
    p = 0.5, p = 2 still has its cell to run); a value outside the registry's range is refused and nothing runs."""
    at = page("pages/4_Compare_strategies.py", _cmp_methods=["power"], _cmp_sparsities=[0.5], _tune_step=0.05,
              _cmp_power_power=0.5)  # fmt: skip
    assert not at.exception, [e.value for e in at.exception]
    assert [w.key for w in at.number_input if w.key.startswith("cmp_power")] == ["cmp_power_power"]  # no beta widget
    at.button(key="cmp_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any(b.key == "cmp_run" for b in at.button)  # p = 0.5: every cell finished
    at.number_input(key="cmp_power_power").set_value(2.0).run()
    assert any(b.key == "cmp_run" for b in at.button)  # the default p = 2 was not what ran
    at.number_input(key="cmp_power_power").set_value(50.0).run()
    assert any("must be in [0.1, 10]" in e.value for e in at.error), [e.value for e in at.error]
    assert not any(b.key == "cmp_run" for b in at.button)
