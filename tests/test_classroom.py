"""The dashboard as a shared classroom server: the job manager, sessions that follow or queue, and a load test.

1. ``atp_viz.dashboard.jobs.JobManager`` alone (no model, no Streamlit): one running job per model, a second
   submission of the same key follows it, another key queues and starts by itself, cancel, a closed
   session's queued job dropped while a running one finishes, invalid settings refused at queue time.
2. AppTest, two sessions on one server process: a queued job shows its position and a Cancel button;
   a session opening the same sweep follows it (no second job) and both end with every point.
3. Headless Chromium sessions on one ``streamlit run app.py`` (two on one sweep; six: four on one sweep, two
   at another sparsity), pressing Run while the queue is on hold, then released: one job per model at a
   time, every session shows every point of its sweep and the best beta without a reload, no duplicate or
   lost point, one model load, peak RSS.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, NO_CHROMIUM, ROOT, dashboard_process
from reliability import integrity, record
from streamlit.testing.v1 import AppTest

from atp_viz.dashboard import jobs
from atp_viz.store import ResultStore

pytestmark = pytest.mark.slow  # AppTest pages and browsers on one server

TIMEOUT = 120


# ------------------------------------------------------------------------------------ 1. the manager


class Gate:
    """A job's work that blocks until released, counting how often it ran."""

    def __init__(self) -> None:
        self.open, self.started, self.runs = threading.Event(), threading.Event(), 0

    def __call__(self, job: jobs.Job) -> str:
        self.runs += 1
        self.started.set()
        assert self.open.wait(30), "gate never opened"
        job.point_stored()
        return "done"


def overlapping(history) -> list:
    """Pairs of jobs on the same model whose run times overlap."""
    runs = sorted(history, key=lambda h: h[2])
    return [(a, b) for i, a in enumerate(runs) for b in runs[i + 1 :] if a[0] == b[0] and b[2] < a[3]]


def test_same_key_follows_the_running_job_and_runs_once() -> None:
    manager, gate = jobs.JobManager(), Gate()
    first = manager.submit("A", "m", ("sweep", 0.7), "sweep", gate)
    assert gate.started.wait(10) and first.state == jobs.RUNNING
    again = manager.submit("B", "m", ("sweep", 0.7), "sweep", gate)
    assert again is first and first.owners == {"A", "B"} and manager.position(again) == 0
    gate.open.set()
    assert manager.wait_idle(10)
    assert gate.runs == 1 and first.state == jobs.DONE and first.result == "done" and first.stored == 1
    assert manager.last(("sweep", 0.7)) is first and manager.find(("sweep", 0.7)) is None


def test_other_job_on_a_busy_model_queues_and_starts_by_itself() -> None:
    manager, gate, second, other_model = jobs.JobManager(), Gate(), Gate(), Gate()
    running = manager.submit("A", "m", "a", "first", gate)
    assert gate.started.wait(10)
    queued = manager.submit("B", "m", "b", "second", second)
    elsewhere = manager.submit("C", "n", "c", "other model", other_model)
    assert queued.state == jobs.QUEUED and manager.position(queued) == 1 and manager.queue("m") == [queued]
    assert other_model.started.wait(10) and elsewhere.state == jobs.RUNNING  # another model is not held up
    seen = manager.version("m")
    gate.open.set()
    assert second.started.wait(10) and queued.state == jobs.RUNNING and running.state == jobs.DONE
    assert manager.version("m") > seen  # viewers of the model rerun
    second.open.set()
    other_model.open.set()
    assert manager.wait_idle(10)
    assert not overlapping(manager.history) and len(manager.history) == 3


def test_cancel_drops_a_queued_job_never_a_running_one() -> None:
    manager, gate, never = jobs.JobManager(), Gate(), Gate()
    running = manager.submit("A", "m", "a", "first", gate)
    assert gate.started.wait(10)
    queued = manager.submit("B", "m", "b", "second", never)
    manager.submit("C", "m", "b", "second", never)  # C follows B's queued job
    assert not manager.cancel(queued, "B") and queued.state == jobs.QUEUED  # C still waits for it
    assert manager.cancel(queued, "C") and queued.state == jobs.CANCELLED and manager.queue("m") == []
    assert not manager.cancel(running, "A") and running.state == jobs.RUNNING
    gate.open.set()
    assert manager.wait_idle(10)
    assert running.state == jobs.DONE and never.runs == 0


def test_a_closed_session_loses_its_queued_job_but_its_running_job_finishes() -> None:
    closed: set[str] = set()
    manager, gate, queued_work = jobs.JobManager(alive=lambda owner: owner not in closed), Gate(), Gate()
    running = manager.submit("A", "m", "a", "A's sweep", gate)
    assert gate.started.wait(10)
    queued = manager.submit("B", "m", "b", "B's sweep", queued_work)
    warmup = manager.submit(jobs.SERVER, "m", "w", "dense perplexity", Gate(), priority=jobs.BACKGROUND)
    closed.update({"A", "B"})  # both tabs closed
    assert manager.queue("m") == [warmup] and queued.state == jobs.CANCELLED  # the server's own job stays
    gate.open.set()
    assert manager.wait_idle(0.5) is False  # the warm-up job now runs (its gate is never opened: detach)
    assert running.state == jobs.DONE and running.stored == 1 and queued_work.runs == 0


def test_user_jobs_go_before_background_jobs() -> None:
    manager, gate, order = jobs.JobManager(), Gate(), []
    manager.submit("A", "m", "a", "first", gate)
    assert gate.started.wait(10)
    manager.submit(jobs.SERVER, "m", "w", "warm-up", lambda job: order.append("warm-up"), priority=jobs.BACKGROUND)
    manager.submit("B", "m", "b", "student", lambda job: order.append("student"))
    gate.open.set()
    assert manager.wait_idle(10) and order == ["student", "warm-up"]


def test_a_background_job_steps_aside_for_a_waiting_user_job() -> None:
    manager, order = jobs.JobManager(), []
    unit, student_queued = threading.Event(), threading.Event()

    def warmup(job: jobs.Job) -> None:  # two units; checks between them, as the dense measurement does
        order.append("warm-up unit 1")
        unit.set()
        assert student_queued.wait(10)
        if job.outranked():
            return
        order.append("warm-up unit 2")

    manager.submit(jobs.SERVER, "m", "w", "warm-up", warmup, priority=jobs.BACKGROUND)
    assert unit.wait(10)
    manager.submit("A", "m", "s", "student", lambda job: order.append("student"))
    student_queued.set()
    assert manager.wait_idle(10) and order == ["warm-up unit 1", "student"]


def test_invalid_settings_are_refused_at_queue_time_and_failures_are_one_line() -> None:
    manager = jobs.JobManager()

    def invalid() -> None:
        raise ValueError("grid step must be in (0, 0.2], got 0.5")

    with pytest.raises(ValueError, match="allowed|must be in"):
        manager.submit("A", "m", "bad", "sweep", lambda job: None, validate=invalid)
    assert manager.find("bad") is None and manager.last("bad") is None and not manager.busy("m")

    def broken(job: jobs.Job) -> None:
        raise ValueError("corpus too short\nsecond line")

    failed = manager.submit("A", "m", "broken", "sweep", broken)
    after = manager.submit("B", "m", "next", "next", lambda job: "ran")
    assert manager.wait_idle(10)
    assert failed.state == jobs.FAILED and failed.error == "corpus too short" and after.result == "ran"


def test_a_held_queue_accepts_and_follows_but_starts_no_user_job() -> None:
    manager, order = jobs.JobManager(), []
    manager.pause()
    first = manager.submit("A", "m", "sweep", "sweep", lambda job: order.append("sweep"))
    again = manager.submit("B", "m", "sweep", "sweep", lambda job: order.append("twice"))
    warmup = manager.submit(jobs.SERVER, "m", "w", "warm-up", lambda job: order.append("warm-up"))
    assert again is first and first.owners == {"A", "B"} and manager.paused
    assert manager.wait_idle(0.3) is False and first.state == jobs.QUEUED and warmup.state == jobs.DONE
    seen = manager.version("m")
    manager.resume()
    assert manager.version("m") > seen and manager.wait_idle(10) and order == ["warm-up", "sweep"]


def test_the_store_signal_moves_on_every_commit_by_anyone_and_never_on_reads(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = ResultStore(tmp_path / "results.sqlite")
    before = store.changes()
    store.get("nothing"), store.query(kind="point"), store.count()
    assert store.changes() == before  # reads leave it
    store.put("k1", "point", "m", {}, {})
    after_own = store.changes()
    assert after_own != before  # a commit by this process (each operation has its own connection)
    code = (
        f"from atp_viz.store import ResultStore; ResultStore({str(store.path)!r}).put('k2', 'point', 'm', {{}}, {{}})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert store.changes() != after_own  # a commit by another process


# ------------------------------------------------------------------------------------ 2. AppTest sessions


@pytest.fixture(scope="module")
def classroom(dashboard_env: dict[str, str]):
    """The dashboard defaults pointed at the tiny model; the model loaded once (the server's workbench)."""
    from atp_viz.dashboard import ui

    with pytest.MonkeyPatch.context() as mp:
        for name, value in dashboard_env.items():
            mp.setenv(name, value)
        AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
        assert ui.job_manager().wait_idle(TIMEOUT)
        yield ui.job_manager()


def session(page: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def texts(at: AppTest) -> str:
    return " | ".join(e.value for e in [*at.info, *at.caption, *at.error, *at.success, *at.sidebar.caption])


def hold(manager: jobs.JobManager, model: str) -> Gate:
    """Occupy ``model`` with a job of another session until the gate opens."""
    gate = Gate()
    manager.submit("another session", model, ("hold", time.monotonic()), "a colleague's job", gate)
    assert gate.started.wait(30)
    return gate


def test_a_queued_job_shows_its_place_and_can_be_cancelled(classroom: jobs.JobManager, tiny_assets) -> None:
    model = str(tiny_assets["model"])
    gate = hold(classroom, model)
    try:
        at = session("pages/2_Error_explosion.py", _sparsity=0.45)
        at.button(key="err_run").click().run()
        assert not at.exception
        assert "Queued (position 1" in texts(at) and "after a colleague's job" in texts(at)
        assert "Running: a colleague's job" in " ".join(p.proto.text for p in at.get("progress"))
        (queued,) = classroom.queue(model)
        cancel = [b for b in at.button if b.key and b.key.startswith("job_cancel_")]
        assert len(cancel) == 1
        cancel[0].click().run()
        assert queued.state == jobs.CANCELLED and classroom.queue(model) == []
        assert at.button(key="err_run")  # offered again
    finally:
        gate.open.set()
    assert classroom.wait_idle(TIMEOUT)


def test_a_second_session_follows_the_same_sweep(classroom: jobs.JobManager, tiny_assets, tmp_path: Path) -> None:
    model = str(tiny_assets["model"])
    settings = {"_sparsity": 0.55, "_tune_step": 0.1}  # 4 blocks: beta_max = 0.3 -> 3 betas + uniform
    gate = hold(classroom, model)
    try:
        a = session("pages/3_Beta_tuning.py", **settings)
        a.button(key="tune_run").click().run()
        b = session("pages/3_Beta_tuning.py", **settings)  # opened while A's sweep waits
        assert "Queued (position 1" in texts(a)
        assert b.button(key="tune_run").disabled and "0 of 4 points stored" in texts(b)
        assert not b.get("plotly_chart") and "appears here as soon as the first ATP point" in texts(b)
        (sweep,) = classroom.queue(model)
    finally:
        gate.open.set()
    assert classroom.wait_idle(TIMEOUT)
    for at in (a.run(), b.run()):  # what the polling fragment does when the job ends
        assert not at.exception and "4 of 4 points stored" in texts(at) and "Best beta =" in texts(at)
    ran = [h for h in classroom.history if h[1] == sweep.id]
    assert len(ran) == 1 and sweep.stored == 4 and not overlapping(classroom.history)


# ------------------------------------------------------------------------------------ 3. real browsers


SWEEPS = {0.7: 5, 0.6: 6}  # sparsity -> points (4 blocks, grid step 0.05: beta_max 0.2 / 0.267, + uniform)
CLASSES = {"two": (0.7, 0.7), "six": (0.7, 0.7, 0.7, 0.7, 0.6, 0.6)}  # sessions of one test: their sparsities
STEP = "0.0500"
WAIT_MS = 120_000  # the longest any one wait may take: a tiny-model sweep takes seconds, a page rerun less


def open_session(browser, base: str, sparsity: float):
    from test_browser import set_number, wait_idle

    tab = browser.new_context(viewport={"width": 1300, "height": 1300}).new_page()
    tab.console_lines = []  # kept for the evidence of a failed wait
    tab.on(
        "console", lambda message: tab.console_lines.append(f"{time.monotonic():.1f} {message.type}: {message.text}")
    )
    tab.set_default_timeout(WAIT_MS)
    tab.goto(f"{base}/Beta_tuning", wait_until="domcontentloaded")
    tab.locator('input[aria-label="Grid step (> 0)"]').wait_for()
    wait_idle(tab)
    slider = tab.locator('[data-testid="stSidebar"] input[type="range"]').first  # target sparsity S
    for _ in range(3 * round((0.7 - sparsity) * 100)):  # one step at a time: a press during a rerun can be lost
        if float(slider.input_value()) <= sparsity + 1e-9:
            break
        slider.focus()
        slider.press("ArrowLeft")
        wait_idle(tab)
    tab.wait_for_function(
        "v => document.querySelector('[data-testid=stSidebar] input[type=range]').value == v", arg=str(sparsity)
    )
    wait_idle(tab)
    set_number(tab, "Grid step (> 0)", STEP)
    tab.get_by_text(re.compile(rf"0 of {SWEEPS[sparsity]} points stored")).first.wait_for()
    tab.get_by_role("button", name=re.compile("^Run sweep")).first.wait_for()
    return tab


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def evidence(tabs, folder: Path, server=None) -> str:
    """Each tab's screenshot, text and browser console saved to ``folder`` (for a failed wait), with the server's
    thread stacks when py-spy is installed; returns where they are."""
    import shutil
    import subprocess

    folder.mkdir(exist_ok=True)
    for i, tab in enumerate(tabs):
        with contextlib.suppress(Exception):  # a tab that died still lets the others be saved
            tab.screenshot(path=str(folder / f"tab{i}.png"), full_page=True)
            (folder / f"tab{i}.txt").write_text(tab.inner_text("body"))
            state = tab.evaluate("() => [document.visibilityState, document.hasFocus(), performance.now()]")
            (folder / f"tab{i}.console.txt").write_text("\n".join([str(state), *getattr(tab, "console_lines", [])]))
    if server is not None and (spy := shutil.which("py-spy")):
        dump = subprocess.run([spy, "dump", "--pid", str(server.pid)], capture_output=True, text=True, timeout=60)
        (folder / "server_threads.txt").write_text(dump.stdout + dump.stderr)
    return str(folder)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(CLASSES))
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
def test_browsers_share_one_server(size: str, tiny_assets, tmp_path: Path) -> None:
    """Sessions on one server (six: four on one sweep, two at another sparsity; two: both on one sweep) press Run
    while the queue is on hold (a page whose sweep is already queued offers a disabled button and follows it); once
    every tab shows its sweep queued, the hold is lifted and each session must reach "N of N
    points stored" and the best beta without a reload. One job per sweep, one model load, no overlap, no point lost
    or stored twice. On a failed wait every tab's screenshot and text are saved and the stale tab is named."""
    pytest.importorskip("playwright")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    sessions = CLASSES[size]
    store_path, job_log, hold = tmp_path / "results.sqlite", tmp_path / "jobs.jsonl", tmp_path / "hold"
    hold.touch()  # no sweep starts until every session has pressed Run
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "ATP_VIZ_DEFAULT_MODEL": str(tiny_assets["model"]),
        "ATP_VIZ_DEFAULT_CORPUS": str(tiny_assets["corpus"]), "ATP_VIZ_DEFAULT_WINDOWS": "4x32",
        "ATP_VIZ_STORE": str(store_path), "ATP_VIZ_CACHE": str(tmp_path / "cache"), "ATP_VIZ_JOB_LOG": str(job_log),
        "ATP_VIZ_HOLD_JOBS": str(hold),
    }  # fmt: skip
    started = time.monotonic()
    with dashboard_process(env, tmp_path / "streamlit.log") as (base, server), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        tabs = [open_session(browser, base, s) for s in sessions]
        for tab in tabs:  # a page whose sweep another session queued meanwhile offers a disabled button: it follows
            with contextlib.suppress(PlaywrightError):
                tab.get_by_role("button", name=re.compile("^Run sweep")).click(timeout=10_000)
        for i, tab in enumerate(tabs):  # every press is in: each tab waits in the queue, as owner or follower
            try:
                tab.get_by_text(re.compile(r"Queued \(position \d")).first.wait_for()
            except PlaywrightError:
                pytest.fail(
                    f"tab {i} never showed its queued sweep; evidence in {evidence(tabs, tmp_path / 'tabs', server)}"
                )
        hold.unlink()
        for i, (tab, sparsity) in enumerate(zip(tabs, sessions)):  # no reload: each page must get there by itself
            total = SWEEPS[sparsity]
            try:
                # .first: while a rerun moves an element, Streamlit shows its stale copy next to the new one
                tab.get_by_text(re.compile(rf"\b{total} of {total} points stored")).first.wait_for()
                tab.get_by_text(re.compile("^Best beta =")).first.wait_for()
                tab.locator(".js-plotly-plot .main-svg").first.wait_for(state="visible")
            except PlaywrightError:
                shown = tab.get_by_text(re.compile(r"\d+ of \d+ points stored")).first.text_content(timeout=5000)
                pytest.fail(
                    f"tab {i} (S = {sparsity}) stayed stale: it shows {shown!r}, not {total} of {total}; jobs: "
                    f"{job_log.read_text() if job_log.exists() else 'none'}; evidence in "
                    f"{evidence(tabs, tmp_path / 'tabs', server)}"
                )
        shown = [tab.get_by_text(re.compile(r"\d+ of \d+ points stored")).first.text_content() for tab in tabs]
        peak = rss_peak_mib(server.pid)
        browser.close()
    wall = time.monotonic() - started
    log = [json.loads(line) for line in job_log.read_text().splitlines()]
    sweeps = [job for job in log if job["label"].startswith("beta sweep")]
    loads = [job for job in log if job["label"].startswith("loading")]
    by_time = sorted(log, key=lambda job: job["started"])
    overlaps = [(a["id"], b["id"]) for a, b in zip(by_time, by_time[1:]) if b["started"] < a["ended"] - 1e-6]
    store = ResultStore(store_path)
    keys = [row["key"] for row in store.query(kind="point")]
    metrics = [row["config"]["point"] for row in store.query(kind="metric")]
    expected = sorted(f"beta sweep at S = {s:g}" for s in set(sessions))
    # one job per sweep: the sessions that pressed Run on the same sweep all follow it
    assert sorted(job["label"] for job in sweeps) == expected, sweeps
    assert all(1 <= job["owners"] <= sessions.count(float(job["label"].split()[-1])) for job in sweeps), sweeps
    assert len(loads) == 1 and not overlaps, (loads, overlaps)
    points = sum(SWEEPS[s] for s in set(sessions))
    assert len(keys) == len(set(keys)) == points and integrity(store_path) == "ok"
    assert all(metrics.count(key) == 2 for key in keys)  # validation and evaluation perplexity of every point
    groups = ", ".join(f"{sessions.count(s)} at S = {s:g}" for s in sorted(set(sessions), reverse=True))
    record(
        "concurrency",
        f"dashboard: {len(sessions)} Chromium sessions on one server ({groups}), Run pressed while the queue is held",
        1,
        0,
        f"{len(sweeps)} sweep jobs (owners {sorted(job['owners'] for job in sweeps)}), one model load, no two jobs "
        f"overlapped; every session showed all its points without a reload ({'; '.join(sorted(set(shown)))}); "
        f"{len(keys)} point rows, no duplicate, none lost; tiny test model; server peak RSS {peak:.0f} MiB",
    )
    print(f"{size}: peak RSS {peak:.0f} MiB, wall {wall:.0f} s, jobs {[(j['label'], j['owners']) for j in log]}")


def test_perplexities_print_short_and_keep_the_full_value() -> None:
    import pandas as pd

    from atp_viz.display import metric_text, perplexity_table, perplexity_text

    assert [perplexity_text(v) for v in (3.14159, 26.93, 99.96, 257.34, 12345.67)] == [
        "3.14", "26.9", "100.0", "257.3", "12345.7",
    ]  # fmt: skip
    assert perplexity_text(None) == perplexity_text(float("nan")) == "-" and perplexity_text(float("inf")) == "inf"
    assert metric_text("zeroshot", 0.456789) == "0.4568" and metric_text("perplexity", 31.8967) == "31.9"
    frame = pd.DataFrame({"schedule": ["uniform"], "perplexity": [257.3456]})
    styled = perplexity_table(frame, ["perplexity"])
    assert "257.3" in styled.to_html() and "257.3456" not in styled.to_html()
    assert styled.data["perplexity"].iloc[0] == 257.3456 and frame.to_csv().count("257.3456") == 1  # downloads


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)
def test_an_idle_page_shows_points_another_process_stores(tiny_assets, tmp_path: Path) -> None:
    """A page with nothing running on the server (no job, no queue) still sees what another process commits to
    the store (a CLI sweep, a second server): the status box's fragment watches the store's commit counter."""
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    from atp_viz.dashboard import ui
    from atp_viz.experiment.workbench import Workbench, sweep_specs

    store_path = tmp_path / "results.sqlite"
    env = {
        "ATP_VIZ_DEFAULT_MODEL": str(tiny_assets["model"]), "ATP_VIZ_DEFAULT_CORPUS": str(tiny_assets["corpus"]),
        "ATP_VIZ_DEFAULT_WINDOWS": "4x32", "ATP_VIZ_STORE": str(store_path), "ATP_VIZ_CACHE": str(tmp_path / "cache"),
    }  # fmt: skip
    with (
        dashboard_process({**os.environ, **env, "PYTHONPATH": str(ROOT)}, tmp_path / "streamlit.log") as (base, _),
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        tab = open_session(browser, base, 0.7)  # "0 of 5 points stored", the model loaded, nothing running
        with pytest.MonkeyPatch.context() as mp:  # the same settings, in this process: another writer
            for name, value in env.items():
                mp.setenv(name, value)
            bench = Workbench(ui.setup_of({**ui.defaults(), "seed_count": 1}), ResultStore(store_path))
            for spec in sweep_specs(bench.num_blocks, 0.7, float(STEP)):
                bench.run(spec)
        tab.get_by_text(re.compile(r"\b5 of 5 points stored")).first.wait_for()  # no reload
        tab.get_by_text(re.compile("^Best beta =")).first.wait_for()
        browser.close()
