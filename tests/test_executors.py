"""Executors: a Ray sweep gives the local floats, survives a killed worker, and rejects bad input early.

One local Ray instance (2 CPUs) is started for the whole file; each test starts its own actors.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.executors import EXECUTORS, ExecutorConfig, PointJob, RayExecutor, make_executor
from atp_viz.experiment.ledger import METRIC_KIND, POINT_KIND
from atp_viz.experiment.workbench import Setup, Workbench, sweep_specs
from atp_viz.store import ResultStore

pytestmark = pytest.mark.slow  # Ray actors, SIGKILL of workers

ray = pytest.importorskip("ray")
ARRAYS = ("rates", "layer_sparsity", "cumulative_error", "local_error", "cumulative_error_abs", "local_error_abs")


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    """One local Ray instance for the file (its start-up is the slow part); executors reuse it. Ray's
    memory monitor is off: on a shared CI machine other jobs' memory would make it kill our workers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_memory_monitor_refresh_ms", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        yield
        ray.shutdown()


def tiny_args(store: Path, windows: int = 4) -> list[str]:
    model, corpus = str(shared_tiny_model("llama")), str(shared_corpus_file())
    return ["--model", model, "--corpus", corpus, "--calib-samples", "4", "--seqlen", "32",
            "--eval-windows", str(windows), "--store", str(store)]  # fmt: skip


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


def rows_of(path: Path, kind: str) -> list[dict]:
    return ResultStore(path).query(kind=kind)


def test_registry_feeds_the_cli_choices() -> None:
    from atp_viz.cli.main import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["sweep"].format_help()  # type: ignore[union-attr]
    for name in EXECUTORS:
        assert name in help_text


def test_ray_sweep_equals_local_sweep_and_stores_each_point_once(capsys, tmp_path, monkeypatch) -> None:
    local, remote = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    sweep = ("sweep", "--sparsity", "0.5", "--step", "0.1", "--json")
    code, expected, err = run_cli(capsys, *sweep, *tiny_args(local))
    assert code == 0, err
    puts: list[str] = []
    original = ResultStore.put

    def counted(self: ResultStore, key: str, *args: object, **kwargs: object) -> bool:
        puts.append(key)
        return original(self, key, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ResultStore, "put", counted)
    code, got, err = run_cli(capsys, *sweep, *tiny_args(remote), "--executor", "ray", "--workers", "2")
    assert code == 0, err
    assert expected is not None and got is not None
    assert len(got["points"]) == len(expected["points"]) == 4
    for mine, theirs in zip(got["points"], expected["points"]):  # same specs in the same order, same floats
        assert mine["metrics"] == theirs["metrics"] and mine["params"] == theirs["params"]
        for name in ARRAYS:
            assert mine[name] == theirs[name], name
    assert (
        got["best_beta"] == expected["best_beta"]
        and got["table"][0]["perplexity (evaluation)"] == (expected["table"][0]["perplexity (evaluation)"])
    )
    assert len(puts) == len(set(puts))  # the driver wrote each row once
    assert len(rows_of(remote, POINT_KIND)) == 4
    assert len(rows_of(remote, METRIC_KIND)) == 4 * 2 + 2  # validation + evaluation per point, and the dense model
    # rerun: everything is read back on the driver, no worker is started
    code, again, err = run_cli(capsys, *sweep, *tiny_args(remote), "--executor", "ray", "--workers", "2")
    assert code == 0, err
    assert again is not None and all(p["cached"] for p in again["points"])
    assert len(puts) == len(set(puts))


def test_ray_2d_sweep_measuring_validation_first_equals_local(capsys, tmp_path) -> None:
    """sweep2d --evaluate best: the grid on validation only, then the evaluation split of the chosen cells;
    the splits travel with each job, so Ray stores the same rows as a local run."""
    grid = ("sweep2d", "--axes", "beta,offset", "--sparsity", "0.5", "--betas", "0,0.1", "--values=-0.1,0",
            "--evaluate", "best", "--json")  # fmt: skip
    local, remote = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    code, expected, err = run_cli(capsys, *grid, *tiny_args(local))
    assert code == 0, err
    code, got, err = run_cli(capsys, *grid, *tiny_args(remote), "--executor", "ray", "--workers", "2")
    assert code == 0, err
    assert got == expected

    def configs(path: Path, kind: str) -> list[str]:  # the rows, in whatever order they finished
        return sorted(json.dumps(row["config"], sort_keys=True) for row in rows_of(path, kind))

    for kind in (POINT_KIND, METRIC_KIND):
        assert configs(remote, kind) == configs(local, kind)
    splits = [row["config"]["split"] for row in rows_of(remote, METRIC_KIND)]
    assert 0 < splits.count("evaluation") < splits.count("validation")  # evaluation for the chosen cells only


def test_worker_killed_mid_point_is_replaced_and_every_point_stored_once(tmp_path) -> None:
    setup = Setup(model=str(shared_tiny_model("llama")), corpus=str(shared_corpus_file()),
                  calib=CalibConfig(4, 32, 0), evaluation=EvalConfig(4, 32))  # fmt: skip
    store = tmp_path / "r.sqlite"
    wb = Workbench(setup, ResultStore(store))
    jobs = [PointJob(0, spec) for spec in sweep_specs(wb.num_blocks, 0.5, 0.1)]
    executor = make_executor(ExecutorConfig("ray", 2), setup)
    assert isinstance(executor, RayExecutor)
    killed: list[tuple[int, PointJob]] = []
    finished = []
    try:
        for job, point in executor.points(wb, jobs):
            finished.append((job, point))
            if not killed:
                pid, running = executor.assignments()[-1]  # the point just sent to this worker
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, running))
        assert executor.replaced == 1
        assert killed[0][0] not in executor.pids
    finally:
        executor.close()
    assert sorted(j.spec.describe() for j, _ in finished) == sorted(j.spec.describe() for j in jobs)
    points = rows_of(store, POINT_KIND)
    assert len(points) == len({row["key"] for row in points}) == len(jobs)
    assert len(rows_of(store, METRIC_KIND)) == 2 * len(jobs)
    # the retried point has the floats of a local run
    retried = wb.reseeded(0)
    retried.store = None
    job = killed[0][1]
    again, point = retried.run(job.spec), dict(finished)[job]
    assert again.metrics == point.metrics
    for name in ARRAYS:
        assert np.array_equal(getattr(again, name), getattr(point, name)), name


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--executor", "ray", "--workers", "0"), "--workers must be >= 1, got 0"),
        (("--workers", "2"), "need --executor ray"),
        (("--executor", "ray", "--ray-address", "127.0.0.1:9"), "cannot reach the Ray cluster at 127.0.0.1:9"),
        (("--executor", "ray", "--device", "cuda"), "needs a GPU per worker; the Ray cluster has none"),
        (("--executor", "ray", "--workers", "3"), "needs 3 CPUs; the Ray cluster has 2"),
    ],
)
def test_bad_executor_input_is_one_line_and_writes_nothing(capsys, tmp_path, extra, needle) -> None:
    store = tmp_path / "r.sqlite"
    for command in ("sweep", "compare"):
        code, _, err = run_cli(capsys, command, *tiny_args(store), "--sparsities" if command == "compare" else
                               "--sparsity", "0.5", *extra)  # fmt: skip
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
        assert not store.exists()


def test_missing_ray_names_the_extra(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    store = tmp_path / "r.sqlite"
    code, _, err = run_cli(capsys, "sweep", *tiny_args(store), "--executor", "ray")
    assert code == 2 and "pip install -e '.[ray]'" in err and not store.exists()


def test_ray_search_asks_in_batches_like_a_local_batched_search(tmp_path) -> None:
    from atp_viz.experiment.executors import LocalExecutor
    from atp_viz.search import study

    setup = Setup(model=str(shared_tiny_model("llama")), corpus=str(shared_corpus_file()),
                  calib=CalibConfig(4, 32, 0), evaluation=EvalConfig(4, 32), calibration="cached")  # fmt: skip
    config = study.SearchConfig("tpe", 4, 0.5)
    results = {}
    for name in ("local", "ray"):
        wb = Workbench(setup, ResultStore(tmp_path / f"{name}.sqlite"))
        executor = (
            LocalExecutor(ExecutorConfig()) if name == "local" else make_executor(ExecutorConfig("ray", 2), setup)
        )
        try:
            results[name] = study.run_one(wb, config, executor=executor, batch=2)
        finally:
            executor.close()
        assert len(rows_of(tmp_path / f"{name}.sqlite", "trial")) == 4
        assert len(rows_of(tmp_path / f"{name}.sqlite", POINT_KIND)) == len({t.point_key for t in results[name].trials})
    local, remote = results["local"].trials, results["ray"].trials
    assert [t.number for t in remote] == [t.number for t in local] == [0, 1, 2, 3]
    for mine, theirs in zip(remote, local):  # the same proposals (batch-synchronous asks), the same floats
        assert np.array_equal(mine.rates, theirs.rates)
        assert (mine.validation, mine.evaluation) == (theirs.validation, theirs.evaluation)


def test_dashboard_sidebar_offers_the_executors(dashboard_env, monkeypatch, settle_jobs) -> None:
    from streamlit.testing.v1 import AppTest

    from atp_viz.dashboard import ui

    for name, value in dashboard_env.items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "3_Beta_tuning.py"), default_timeout=240)
    at.session_state["_executor"], at.session_state["_workers"] = "ray", 2
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.sidebar.selectbox(key="executor").options == [EXECUTORS[n].label for n in EXECUTORS]
    assert at.sidebar.number_input(key="workers").value == 2 and at.sidebar.text_input(key="ray_address")
    monkeypatch.setattr(ui.st, "session_state", {"executor": "ray", "workers": 2, "ray_address": " "})
    assert ui.executor_config() == ExecutorConfig("ray", 2, None)
