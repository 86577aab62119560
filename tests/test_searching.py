"""Searches on a Workbench: trials are stored points, resume, ATP vs search, the CLI, the page."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reliability import cli_command, cli_env, record, run_main
from streamlit.testing.v1 import AppTest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.measure.metrics import EVALUATION, VALIDATION
from atp_viz.search import study
from atp_viz.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
SPARSITY = 0.5
STEP = 0.1  # 4 blocks at S = 0.5: beta_max = 1/3 -> 3 grid betas + uniform = a 4-point sweep
PAGE_TIMEOUT = 180
KILL_TIMEOUT_S = 120
TRIAL_LINE = "trial {}: validation ppl"


def tiny_setup() -> Setup:
    return Setup(
        model=str(shared_tiny_model("llama")),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(samples=4, seqlen=32, seed=0),
        evaluation=EvalConfig(windows=4, seqlen=32),
        calibration="cached",
    )


@pytest.fixture(scope="module")
def loaded():
    """One loaded tiny model for the module; each test attaches its own store."""
    return Workbench(tiny_setup()).loaded_model


def bench_with(loaded, store: Path) -> Workbench:
    return Workbench(tiny_setup(), ResultStore(store), loaded=loaded)


def counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, ...]]:
    """Record every schedule a search computes or reads (its ``Workbench.run`` calls)."""
    calls: list[tuple[float, ...]] = []
    real = Workbench.run

    def run(wb, spec, progress=None, splits=None):
        calls.append(spec.rates)
        return real(wb, spec, progress, splits)

    monkeypatch.setattr(Workbench, "run", run)
    return calls


def test_search_stores_trials_and_points_and_resumes(loaded, tmp_path: Path, monkeypatch) -> None:
    wb = bench_with(loaded, tmp_path / "r.sqlite")
    calls = counting(monkeypatch)
    first = study.Search(wb, study.SearchConfig("evo", 3, SPARSITY)).run()
    assert len(first.trials) == 3 and len(calls) == 3
    store = wb.store
    assert store is not None
    rows = store.query(kind=study.TRIAL_KIND, study=first.study)
    assert sorted(r["record"]["number"] for r in rows) == [t.number for t in first.trials]
    for trial in first.trials:
        point = store.get(trial.point_key)
        assert point is not None and np.allclose(point["rates"], trial.rates)
        assert np.isclose(np.sum(wb.param_counts * trial.rates) / np.sum(wb.param_counts), SPARSITY)
        assert math.isfinite(trial.validation) and math.isfinite(trial.evaluation)
    journal = tmp_path / "r.sqlite.optuna" / f"{first.study}.log"
    assert journal.is_file()

    again = study.Search(wb, study.SearchConfig("evo", 5, SPARSITY)).run()
    assert len(again.trials) == 5 and len(calls) == 5  # the 3 finished trials were not evaluated again
    assert again.trials[:3] == first.trials  # kept as they were (dataclass equality skips rates)
    for old, new in zip(first.trials, again.trials):
        np.testing.assert_array_equal(old.rates, new.rates)
    assert len(store.query(kind=study.TRIAL_KIND, study=first.study)) == 5
    # another process (a dashboard) reads the same trials without computing anything
    assert study.Search(wb, study.SearchConfig("evo", 5, SPARSITY)).stored().trials == again.trials
    assert len(calls) == 5


@pytest.mark.slow  # searches and a sweep
def test_versus_atp_returns_both_and_chooses_atp_on_validation(loaded, tmp_path: Path, monkeypatch) -> None:
    wb = bench_with(loaded, tmp_path / "r.sqlite")
    comparison = study.versus_atp(wb, SPARSITY, ["tpe", "evo"], step=STEP)
    assert list(comparison.methods) == ["atp", "tpe", "evo"] and comparison.budget == 4
    atp = comparison.methods["atp"]
    assert len(atp.trials) == 4 and comparison.uniform == atp.trials[0]
    grid = atp.trials[1:]
    best = atp.winner()
    assert best is not None and best.validation == min(t.validation for t in grid)  # uniform is the baseline
    assert best.evaluation == pytest.approx(wb.metrics_of(best.point_key)[0][f"{EVALUATION}/perplexity"])
    for name in ("tpe", "evo"):
        result = comparison.methods[name]
        assert len(result.trials) == 4
        won = result.winner()
        assert won is not None and won.validation == min(t.validation for t in result.trials)
    summary = comparison.summary()
    assert summary["selected_on"] == VALIDATION and summary["reported_on"] == EVALUATION
    row = summary["methods"]["atp"]
    assert row["spearman"] == pytest.approx(1.0) and row["inversions"] == 0
    assert row["best_so_far"]["trial"] == [1, 2, 3, 4] and len(row["best_so_far"]["seconds"]) == 4
    assert all(np.diff(row["best_so_far"]["validation_perplexity"]) <= 0)
    assert {r["method"] for r in comparison.rows()} == {"atp", "tpe", "evo", "uniform"}

    def must_not_prune(*_args, **_kwargs):
        raise AssertionError("a stored point was pruned again")

    monkeypatch.setattr(wb, "apply", must_not_prune)  # a rerun reads every point and trial back
    again = study.versus_atp(wb, SPARSITY, ["tpe", "evo"], step=STEP)
    assert again.summary()["methods"] == summary["methods"]
    assert study.stored_comparison(wb, SPARSITY, ["tpe", "evo"], step=STEP).summary() == again.summary()


def test_stop_between_atp_points_keeps_what_finished(loaded, tmp_path: Path) -> None:
    """``should_stop`` is read between ATP's points (the Compare page's Stop): two finished, two never run."""
    wb = bench_with(loaded, tmp_path / "r.sqlite")
    seen: list[str] = []
    comparison = study.versus_atp(
        wb,
        SPARSITY,
        ["tpe"],
        step=STEP,
        on_trial=lambda name, trial: seen.append(name),
        should_stop=lambda: len(seen) >= 2,
    )
    assert len(comparison.methods["atp"].trials) == 2 and seen == ["atp", "atp"]
    assert not comparison.methods["tpe"].trials  # stopped before the search
    assert len(wb.store.query(kind="point")) == 2  # type: ignore[union-attr]
    assert study.versus_atp(wb, SPARSITY, ["tpe"], step=STEP, should_stop=lambda: True).methods["atp"].trials == ()


@pytest.mark.slow  # a search and its winners
def test_validation_only_trials_measure_the_evaluation_of_winners_only(loaded, tmp_path: Path) -> None:
    wb = bench_with(loaded, tmp_path / "r.sqlite")
    comparison = study.versus_atp(wb, SPARSITY, ["evo"], 3, step=STEP, every_split=False)
    for name, result in comparison.methods.items():
        best = result.winner()
        assert best is not None and math.isfinite(best.evaluation), name
        others = [t for t in result.trials if t is not best and t is not comparison.uniform]
        assert all(math.isnan(t.evaluation) for t in others), name
    assert comparison.uniform is not None and math.isfinite(comparison.uniform.evaluation)


@pytest.mark.slow  # a long search under several seeds
def test_a_long_run_gives_budget_matched_views_and_seed_spread(loaded, tmp_path: Path) -> None:
    wb = bench_with(loaded, tmp_path / "r.sqlite")
    runs = [study.versus_atp(wb, SPARSITY, ["evo"], 6, seed=s, step=STEP, every_split=False) for s in (0, 1)]
    short = study.completed(wb, runs[0].at_budget(4))
    evo_long, evo_short = runs[0].methods["evo"], short.methods["evo"]
    assert short.budget == 4 and short.methods["atp"] == runs[0].methods["atp"]
    assert [t.number for t in evo_short.trials] == [t.number for t in evo_long.trials[:4]]
    best = evo_short.winner()
    assert best is not None and math.isfinite(best.evaluation)  # measured for the shortened run's winner
    assert best.validation == min(t.validation for t in evo_long.trials[:4])
    with pytest.raises(ValueError, match="not comparable"):
        runs[0].at_budget(3)  # below ATP's 4-point sweep
    rows = {r["method"]: r for r in study.seed_rows(runs)}
    evo = [r.methods["evo"].winner() for r in runs]
    assert rows["evo"]["seeds"] == 2
    assert rows["evo"]["evaluation_perplexity"] == pytest.approx(np.mean([t.evaluation for t in evo if t]))
    assert rows["evo"]["evaluation_std"] == pytest.approx(np.std([t.evaluation for t in evo if t], ddof=1))
    assert rows["atp"]["evaluation_std"] == 0.0  # the grid does not depend on the search seed


def test_bad_search_settings_raise_before_anything_is_written(loaded, tmp_path: Path) -> None:
    for kwargs, needle in (
        ({"sampler": "nope"}, "sampler must be one of"),
        ({"trials": 0}, "trials must be an integer >= 1"),
        ({"timeout_s": 0.0}, "timeout_s must be None or a number"),
        ({"sparsity": 1.0}, "sparsity must be in (0, 1)"),
        ({"seed": -1}, "search seed must be an integer >= 0"),
    ):
        settings: dict[str, Any] = {"sampler": "tpe", "trials": 2, "sparsity": SPARSITY, **kwargs}
        with pytest.raises(ValueError) as info:
            study.SearchConfig(**settings)
        assert needle in str(info.value)
    wb = bench_with(loaded, tmp_path / "r.sqlite")
    with pytest.raises(ValueError, match="no ATP grid point fits"):
        study.versus_atp(wb, SPARSITY, ["tpe"], step=0.5)
    assert not (tmp_path / "r.sqlite.optuna").exists()


# ------------------------------------------------------------------------------ the CLI


def search_args(store: Path, *extra: str) -> list[str]:
    return [
        "search", "--model", str(shared_tiny_model("llama")), "--corpus", str(shared_corpus_file()),
        "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4", "--sparsity", str(SPARSITY),
        "--store", str(store), *extra,
    ]  # fmt: skip


@pytest.mark.slow  # a search and ATP's sweep through the CLI
def test_cli_search_json_and_versus_atp(tmp_path: Path) -> None:
    store = tmp_path / "r.sqlite"
    code, out, err = run_main(search_args(store, "--sampler", "evo", "--trials", "2", "--json"))
    assert code == 0, err[-2000:]
    result = json.loads(out)
    assert list(result["methods"]) == ["evo"] and result["methods"]["evo"]["trials"] == 2
    assert result["selected_on"] == VALIDATION and math.isfinite(result["methods"]["evo"]["evaluation_perplexity"])
    code, out, err = run_main(search_args(store, "--sampler", "tpe,evo", "--versus-atp", "--step", str(STEP), "--json"))
    assert code == 0, err[-2000:]
    result = json.loads(out)
    assert list(result["methods"]) == ["atp", "tpe", "evo"] and result["budget"] == 4
    assert [result["methods"][m]["trials"] for m in ("atp", "tpe", "evo")] == [4, 4, 4]
    assert result["uniform"]["validation_perplexity"] > 0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--sampler", "nope", "--trials", "2"], "sampler must be one of"),
        (["--sampler", "tpe", "--trials", "0"], "trials must be an integer >= 1"),
        (["--sampler", "tpe", "--trials", "2", "--timeout", "0"], "timeout_s must be None or a number"),
        (["--sampler", "tpe", "--trials", "2", "--sparsity", "1.5"], "sparsity must be in (0, 1)"),
        (["--sampler", "tpe", "--trials", "2", "--search-seed", "-1"], "search seed must be an integer >= 0"),
        (["--sampler", "tpe"], "give --trials N"),
    ],
)
def test_cli_search_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, extra: list[str], needle: str) -> None:
    store = tmp_path / "sub" / "r.sqlite"
    args = search_args(store)
    if "--sparsity" in extra:  # the later value wins in argparse
        args = args[: args.index("--sparsity")] + args[args.index("--sparsity") + 2 :]
    code, out, err = run_main([*args, *extra])
    assert code == 2 and out == ""
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "sub").exists()


def killed_after(args: list[str], finished: Callable[[str], str | None], count: int) -> list[str]:
    """Run ``atp-viz args`` and SIGKILL it once ``finished`` (a stderr line -> the trial it announces as finished,
    or None) has named ``count`` trials; the trials named, in order."""
    proc = subprocess.Popen(cli_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    named: list[str] = []
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace")
            lines.append(line)
            if (trial := finished(line)) is not None:
                named.append(trial)
                if len(named) >= count:
                    seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        seen.wait(KILL_TIMEOUT_S)
        assert proc.poll() is None, "the search ended before it could be killed: " + "".join(lines)[-1500:]
        assert len(named) >= count
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return named


@pytest.mark.slow
def test_cli_search_killed_mid_run_resumes_with_nothing_lost(tmp_path: Path) -> None:
    """SIGKILL ``atp-viz search`` while it runs (after >= 2 finished trials), rerun: kept trials are
    unchanged and not recomputed, the budget is completed."""
    store, total = tmp_path / "r.sqlite", 8
    args = search_args(store, "--sampler", "evo", "--trials", str(total), "--json")
    finished = killed_after(args, lambda line: line if "evo trial" in line and "validation ppl" in line else None, 2)
    before = {r["record"]["number"]: r["record"] for r in ResultStore(store).query(kind=study.TRIAL_KIND)}
    assert len(before) >= len(finished) >= 2

    rerun = subprocess.run(cli_command(args), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    result = json.loads(rerun.stdout)["methods"]["evo"]
    assert result["trials"] == total
    computed = [line for line in rerun.stderr.splitlines() if "evo trial" in line and "validation ppl" in line]
    assert len(computed) == total - len(before)  # finished trials were read back, not recomputed
    after = {r["record"]["number"]: r["record"] for r in ResultStore(store).query(kind=study.TRIAL_KIND)}
    assert len(after) == total
    lost = sum(after.get(number) != row for number, row in before.items())
    assert lost == 0
    record(
        "interruption",
        "CLI search (evo) SIGKILLed after >= 2 finished trials, then rerun",
        1,
        lost,
        "rerun reads the finished trials back (journal + trial rows), computes only the missing ones",
    )


DSA_LINE = re.compile(r"dsa graph (\d+) \(generation \d+\): (\S+): validation ppl [\d.a-z]+( \(stored\))?")


def dsa_points(store: Path) -> int:
    return len(ResultStore(store).query(kind="point", method="dsa"))


@pytest.mark.slow  # three CLI processes, one of them SIGKILLed
def test_cli_dsa_search_killed_mid_run_resumes_the_same_sequence_with_nothing_measured_twice(tmp_path: Path) -> None:
    """SIGKILL ``atp-viz search --space dsa`` in its second generation, rerun: the rerun reads every finished graph
    back (none is measured again), computes only the rest, and its graphs and fitnesses are those of an uninterrupted
    run (same seeded generations: the population and the random draws continue where the killed run stopped)."""
    total, kill_after = 14, 9  # generation 0 has 8 graphs: the kill lands in generation 1
    reference = run_main(search_args(tmp_path / "reference.sqlite", "--space", "dsa", "--trials", str(total), "--json"))
    assert reference[0] == 0, reference[2][-2000:]
    expected = json.loads(reference[1])["graphs"]
    assert len(expected) == total and max(g["generation"] for g in expected) >= 1

    store = tmp_path / "r.sqlite"
    args = search_args(store, "--space", "dsa", "--trials", str(total), "--json")
    computed = killed_after(args, lambda line: m.group(2) if (m := DSA_LINE.search(line)) and not m.group(3) else None,
                            kill_after)  # fmt: skip
    finished = dsa_points(store)
    assert kill_after <= finished < total  # every announced graph is stored; some are still to come

    rerun = subprocess.run(cli_command(args), capture_output=True, text=True, env=cli_env(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    matches = [m for line in rerun.stderr.splitlines() if (m := DSA_LINE.search(line))]
    read_back = [m.group(2) for m in matches if m.group(3)]
    again = [m.group(2) for m in matches if not m.group(3)]
    assert len(read_back) == finished and len(again) == total - finished
    assert not set(again) & set(computed)  # no graph the killed run finished is measured twice
    got = json.loads(rerun.stdout)["graphs"]
    assert [(g["graph"], g["generation"], g["index"]) for g in got] == [
        (g["graph"], g["generation"], g["index"]) for g in expected
    ]
    assert [g["fitness"] for g in got] == pytest.approx([g["fitness"] for g in expected], rel=1e-9)
    assert dsa_points(store) == total
    record(
        "interruption",
        "CLI DSA graph search SIGKILLed in its second generation, then rerun",
        1,
        0,
        "rerun replays the seeded generations: finished graphs read back, the rest computed; same graphs as an "
        "uninterrupted run",
    )


# ------------------------------------------------------------------------------ the page


@pytest.fixture()
def tiny_dashboard(dashboard_env: dict[str, str], tmp_path: Path, settle_jobs: None):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in dashboard_env.items():
            mp.setenv(name, value)
        mp.setenv("ATP_VIZ_STORE", str(tmp_path / "page.sqlite"))
        yield


def page(searches: tuple[str, ...] = ("evo",)) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "6_ATP_vs_search.py"), default_timeout=PAGE_TIMEOUT)
    for key, value in {"_sparsity": SPARSITY, "_search_step": STEP, "_search_samplers": list(searches)}.items():
        at.session_state[key] = value
    return at.run()


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.mark.slow
def test_page_runs_a_search_and_a_revisit_shows_it(tiny_dashboard) -> None:
    at = page()
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="search_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    figs = charts(at)
    trials, seconds, overlay = figs[-3:]
    assert "trial" in trials["layout"]["xaxis"]["title"]["text"]
    assert "wall time" in seconds["layout"]["xaxis"]["title"]["text"]
    names = {trace["name"] for trace in trials["data"]}
    assert any(n.startswith("ATP grid best") for n in names) and "Evolutionary (1+λ), level switch" in names
    assert {trace["name"] for trace in overlay["data"]} == {"ATP best", "Evolutionary (1+λ), level switch"}
    table = at.dataframe[-1].value
    assert list(table["label"])[:2] == ["ATP grid (beta)", "Evolutionary (1+λ), level switch"]
    assert list(table["trials"])[:2] == [4, 4]

    revisit = page()  # a new session (the tab was closed): everything comes from the store
    assert not revisit.exception
    again = revisit.dataframe[-1].value
    assert list(again["evaluation_perplexity"]) == pytest.approx(list(table["evaluation_perplexity"]))
    assert len(charts(revisit)) == 3


@pytest.mark.slow
def test_page_runs_dsas_graph_search_against_atps_grid_at_its_budget(tiny_dashboard) -> None:
    at = page(("dsa",))
    assert not at.exception, [e.value for e in at.exception]
    assert "DSA graphs (evolutionary)" in at.multiselect(key="search_samplers").options
    at.button(key="search_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    trials, seconds, overlay = charts(at)[-3:]
    names = {trace["name"] for trace in trials["data"]}
    assert any(n.startswith("ATP grid best") for n in names) and "DSA graphs (evolutionary)" in names
    assert {trace["name"] for trace in overlay["data"]} == {"ATP best", "DSA graphs (evolutionary)"}
    table = at.dataframe[-1].value
    assert list(table["label"]) == ["ATP grid (beta)", "DSA graphs (evolutionary)", "uniform (baseline)"]
    assert list(table["trials"])[:2] == [4, 4]  # ATP's sweep (3 betas + uniform) is DSA's budget
    assert all(math.isfinite(v) for v in table["validation_perplexity"][:2])  # selected on validation
    assert all(math.isfinite(v) for v in table["evaluation_perplexity"][:2])  # reported on evaluation
    assert any("DSA graphs (evolutionary): winner dsa" in c.value for c in at.caption)
    revisit = page(("dsa",))  # a new session: the graphs are replayed from the store (each a stored point)
    assert not revisit.exception
    again = revisit.dataframe[-1].value
    assert list(again["evaluation_perplexity"]) == pytest.approx(list(table["evaluation_perplexity"]))


@pytest.mark.slow
def test_page_shares_the_loaded_model_and_spreads_over_search_seeds(tiny_dashboard) -> None:
    at = page()
    at.session_state["_search_seeds"] = [0, 1]
    at.session_state["_search_trials"] = 4
    at.run()
    at.button(key="search_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    spread = at.dataframe[-1].value
    assert list(spread["seeds"]) == [2, 2, 2] and "evaluation_std" in spread
    assert any("not loaded" not in c.value and "Model: loaded" in c.value for c in at.sidebar.caption)


def test_journal_lives_beside_the_store(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "x.sqlite")
    assert study.journal_dir(store) == tmp_path / "x.sqlite.optuna"
    assert study.journal_dir(None) == study.journal_dir(None) and os.path.isdir(study.journal_dir(None))
