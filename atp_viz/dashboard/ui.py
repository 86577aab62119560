"""Shared dashboard plumbing: sidebar settings in session state, the server's workbenches, store and jobs.

Pages call ``sidebar()`` first; it returns a ``Context`` with the current ``Setup``, the target
sparsity and (when the page needs the model, once it is loaded) the server's ``Workbench`` for that
setting, one per model setting for all sessions. The sidebar starts loading the model, then the
dense perplexity, in the background as the app opens. Heavy jobs go to the server's ``JobManager``
(``atp_viz/dashboard/jobs.py``): one running job per model, a session asking for a running job follows it, a
different one is queued.

A page never shows a stale view: ``sidebar()`` records ``signal()`` (the store's commit counter and the
job manager's epoch, both only moving forward) before the page reads anything, and the server's
``Watcher`` compares it every ``POLL_S`` seconds with the current signal for every open tab, idle or not,
asking each stale tab to run its page again. No page reasons about which events it may have missed.
``follow`` only draws what runs (progress, a queued job's place and its Cancel button).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import streamlit as st
from streamlit.proto.ClientState_pb2 import ClientState
from streamlit.runtime import Runtime
from streamlit.runtime.app_session import AppSessionState
from streamlit.runtime.scriptrunner import get_script_run_ctx

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.dashboard import jobs
from atp_viz.dashboard.figures import PLOTLY_CONFIG
from atp_viz.display import full_text, perplexity_columns, perplexity_table, perplexity_text
from atp_viz.errors import plain_traceback
from atp_viz.experiment import classroom
from atp_viz.experiment.executors import EXECUTORS, ExecutorConfig, PointJob, make_executor
from atp_viz.experiment.lesson import Steppers
from atp_viz.experiment.shipped import REGENERATE, ShippedResults
from atp_viz.experiment.workbench import Setup, Workbench, scaled
from atp_viz.experiment.workbench import stored_groups as stored_groups  # the pages read stored points through it
from atp_viz.measure.metrics import EVALUATION
from atp_viz.measure.points import PointResult
from atp_viz.measure.zeroshot import ZeroShotConfig
from atp_viz.models.data import DEFAULT_CORPUS
from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS, block_count
from atp_viz.pruning.pruners import PRUNERS, PruneConfig
from atp_viz.schedules import methods
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore, default_store_path

log = logging.getLogger(__name__)
ENV_MODEL = "ATP_VIZ_DEFAULT_MODEL"  # default model name or path (tests use a tiny model)
ENV_CORPUS = "ATP_VIZ_DEFAULT_CORPUS"  # default corpus
ENV_WINDOWS = "ATP_VIZ_DEFAULT_WINDOWS"  # 'COUNTxTOKENS' for calibration and evaluation, e.g. '4x32'
ENV_JOB_LOG = "ATP_VIZ_JOB_LOG"  # optional file: one JSON line per job the server ran (who waited, when)
ENV_HOLD = "ATP_VIZ_HOLD_JOBS"  # optional file: while it exists no student's job starts (queued, followed, cancelled)
HOLD_POLL_S = 0.2  # seconds between two looks at that file
SPARSITY_RANGE = (0.05, 0.95)
DEVICES = ("cpu", "auto", "cuda")
MAX_SEEDS = 5  # seeds per point the sidebar offers (each one is a full run of the point)
MAX_ITEMS = 500  # zero-shot items per task the sidebar offers
EVAL_BATCH = 4  # evaluation windows per forward pass (memory only)
MAX_BENCHES = 2  # model settings kept loaded at once by the server (each holds the model and its dense copy)
POLL_S = 1.0  # seconds between two looks at ``signal()`` by an open page (and between progress redraws)
RUN_SIGNAL = "_signal_at_run_start"  # session key: ``signal()`` when the page run began, before it read anything
# Small dashboard defaults: the first sweep point on smollm2-135m takes ~20 s on 2 CPU cores.
DEFAULTS = {
    "sparsity": 0.7,
    "pruner": "wanda",
    "calib_samples": 8,
    "calib_seqlen": 256,
    "eval_windows": 8,
    "eval_seqlen": 256,
    "seed": 0,
    "device": "cpu",
}


@dataclass(frozen=True)
class Context:
    """What every page gets from the sidebar."""

    setup: Setup | None  # None when the settings are invalid (an error is already shown)
    sparsity: float
    seeds: tuple[int, ...] = (0,)  # calibration seeds every point runs under (mean and spread shown)
    workbench: Workbench | None = None  # the server's, for pages that need the model, once loaded
    num_blocks: int | None = None  # the model's decoder blocks (from its config before it is loaded)
    loading: bool = False  # the model is being loaded in the background (no error so far)

    @property
    def ready(self) -> bool:
        return self.setup is not None and self.workbench is not None


def require(ctx: Context) -> tuple[Setup, Workbench]:
    """The settings and loaded workbench of a page that needs the model; stops the page without them
    (the sidebar has already said why)."""
    if ctx.setup is None or ctx.workbench is None:
        st.stop()
    return ctx.setup, ctx.workbench


def defaults() -> dict[str, object]:
    """Sidebar defaults; the environment can point them at another model, corpus and window size."""
    values: dict[str, object] = {
        "model": os.environ.get(ENV_MODEL, DEFAULT_MODEL),
        "corpus": os.environ.get(ENV_CORPUS, DEFAULT_CORPUS),
        **DEFAULTS,
    }
    if windows := os.environ.get(ENV_WINDOWS):
        count, _, tokens = windows.partition("x")
        values.update(
            calib_samples=int(count), eval_windows=int(count), calib_seqlen=int(tokens), eval_seqlen=int(tokens)
        )
    return values


# ------------------------------------------------------------------ session state that survives pages
# Streamlit drops (or resets) a widget's state when another page runs, even for the same key. So
# each widget's value is mirrored under '_' + key by its on_change callback and restored from that
# mirror before the widget is drawn on any page.
def _mirror(key: str) -> None:
    st.session_state["_" + key] = st.session_state[key]


class WidgetState(TypedDict):
    """Keyword arguments that tie a widget to a mirrored session-state key."""

    key: str
    on_change: Callable[[str], None]
    args: tuple[str]


def state(key: str, default: object) -> WidgetState:
    """Keyword arguments for a widget whose value survives page switches: ``st.slider(..., **state(k, v))``."""
    st.session_state[key] = st.session_state.get("_" + key, default)
    return {"key": key, "on_change": _mirror, "args": (key,)}


def set_state(key: str, value: object) -> None:
    """Change a ``state`` widget's value from code (before the widget is drawn)."""
    st.session_state[key] = st.session_state["_" + key] = value


# ------------------------------------------------------------------ cached resources
@st.cache_resource(show_spinner=False)
def get_store(path: str) -> ResultStore:
    return ResultStore(path)


def store_path() -> str:
    return str(default_store_path())


class Benches:
    """The server's workbenches on one results store: one per model setting (not per session), the last
    MAX_BENCHES kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._benches: OrderedDict[Setup, Workbench] = OrderedDict()

    def get(self, setup: Setup) -> Workbench | None:
        with self._lock:
            if (bench := self._benches.get(setup)) is not None:
                self._benches.move_to_end(setup)
            return bench

    def put(self, setup: Setup, bench: Workbench) -> None:
        with self._lock:
            self._benches[setup] = bench
            while len(self._benches) > MAX_BENCHES:  # a job still running on an evicted one keeps its own reference
                self._benches.popitem(last=False)


@st.cache_resource(show_spinner=False)
def benches(store: str) -> Benches:
    """The workbenches that read and write the store at ``store``: a server has one store, but a process whose
    ``ATP_VIZ_STORE`` changes (AppTests, one per test) must not find a bench built on the previous one."""
    return Benches()


@st.cache_resource(show_spinner=False)
def shipped_results() -> ShippedResults:
    """The results shipped inside the package (``atp_viz/experiment/shipped/``); used where fingerprints match."""
    return ShippedResults()


@st.cache_resource(show_spinner=False)
def lesson_steppers() -> Steppers:
    """The server's Lesson steppers (``atp_viz.experiment.lesson``): the next block's inputs stay in memory."""
    return Steppers()


@st.cache_resource(show_spinner=False)
def job_manager() -> jobs.JobManager:
    """The server's one job registry (see atp_viz/dashboard/jobs.py): every session submits to and reads from it;
    in classroom mode it caps what sessions may queue (atp_viz/experiment/classroom.py)."""
    audit, caps = os.environ.get(ENV_JOB_LOG), classroom.policy().job_caps
    manager = jobs.JobManager(
        alive=session_alive, audit=Path(audit) if audit else None, caps=jobs.Caps(*caps) if caps else None
    )
    if hold := os.environ.get(ENV_HOLD):
        hold_while_exists(manager, Path(hold))
    return manager


def hold_while_exists(manager: jobs.JobManager, path: Path) -> threading.Thread:
    """Keep ``manager``'s queue on hold while ``path`` exists (an operator lines up a class's requests, or a test
    holds every job until all its sessions have pressed Run); a daemon thread looks every ``HOLD_POLL_S``."""
    if path.exists():
        manager.pause()

    def loop() -> None:
        while True:
            if path.exists():
                manager.pause()
            else:
                manager.resume()
            time.sleep(HOLD_POLL_S)

    thread = threading.Thread(target=loop, name="atp-viz job hold", daemon=True)
    thread.start()
    return thread


def session_id() -> str:
    """This browser tab's Streamlit session (the owner of the jobs it queues)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else jobs.SERVER


def session_alive(owner: str) -> bool:
    """Whether ``owner``'s tab is still open, from Streamlit's own session registry: the server removes a
    session from its active sessions as soon as the tab's websocket closes. Without a server (AppTest
    between runs, a bare script) no tab can close, so every owner counts as alive."""
    if owner == jobs.SERVER or not Runtime.exists():
        return True
    return bool(Runtime.instance().is_active_session(owner))


def base_setup(setup: Setup) -> Setup:
    """The setting whose Workbench loads the model: metrics and calibration mode are variants of it."""
    return replace(setup, metrics=Setup.metrics, zeroshot=ZeroShotConfig(), calibration=Setup.calibration)


def loaded_bench(setup: Setup) -> Workbench | None:
    """The server's workbench for ``setup`` on this process's results store; None until it is loaded."""
    return benches(store_path()).get(base_setup(setup))


def start_loading(setup: Setup) -> jobs.Job | None:
    """Load ``setup``'s workbench in the background (a job on the model, owned by the server); None when
    it is loaded already. The sidebar calls this on every page that uses the model, Home included, so
    the model loads as the app opens."""
    if loaded_bench(setup) is not None:
        return None
    base, path = base_setup(setup), store_path()
    key = ("load", base)
    last = job_manager().last(key)
    if last is not None and last.state == jobs.FAILED:
        return last  # shown with a retry button, never retried by itself

    manager, registry, store, shipped = job_manager(), benches(path), get_store(path), shipped_results()

    def load(job: jobs.Job) -> None:
        bench = Workbench(base, store, progress=job.report, shipped=shipped)  # read under the user's store
        registry.put(base, bench)
        job.point_stored()
        submit_dense(manager, bench)  # next, unless a session queued a job meanwhile

    return manager.submit(jobs.SERVER, setup.model, key, f"loading {setup.model}", load)


def load_workbench(setup: Setup) -> Workbench | None:
    """The server's workbench for ``setup`` once it is loaded (other metrics share the loaded model);
    until then says that it is loading (the page fills in by itself) and returns None; shows st.error
    (and returns None) when it cannot be built."""
    if (bench := loaded_bench(setup)) is None:
        job = start_loading(setup)
        if job is not None and job.state == jobs.FAILED:
            st.error(f"Cannot load the model with these settings: {job.error}")
            if st.button("Try loading again", key="load_retry"):
                job_manager().forget(job)
                st.rerun()
            return None
        st.info(
            f"Loading {setup.model} and tokenizing {setup.corpus} (first time only, a few seconds): this page "
            "fills in by itself when the model is ready."
        )
        return None
    try:
        return bench.variant(setup)
    except ValueError as exc:  # a window setting this corpus or model cannot hold
        st.error(f"Cannot load the model with these settings: {exc}")
        return None


# ------------------------------------------------------------------ stored results
def stored_count(path: str, model: str) -> int:
    return get_store(path).count(model=model)


def stored_points(bench: Workbench, specs: Sequence[ScheduleSpec]) -> list[PointResult | None]:
    """The stored result of each spec (None where not computed yet), without computing anything."""
    return [bench.stored(spec) for spec in specs]


# ------------------------------------------------------------------ long jobs (atp_viz/dashboard/jobs.py runs them)
def submit(
    bench: Workbench,
    key: Hashable,
    label: str,
    work: Callable[[jobs.Job], object],
    total: int = 0,
    validate: Callable[[], object] | None = None,
) -> jobs.Job | None:
    """Run ``work`` on the bench's model in the background for this session: follow the job with ``key``
    if one is queued or running, else start it (model free) or queue it. Invalid settings are refused
    here with one st.error line (``validate`` raises ValueError); returns None then."""
    try:
        return job_manager().submit(
            session_id(), bench.setup.model, key, label, work, total=total, validate=validate, capped=not unlocked()
        )
    except ValueError as exc:
        st.error(str(exc))
        return None


def points_key(bench: Workbench, todo: Sequence[tuple[int, ScheduleSpec]]) -> tuple[object, ...]:
    """A points job's identity: the model setting and the (seed, schedule) pairs it runs."""
    return ("points", bench.setup, tuple(todo))


def submit_points(bench: Workbench, todo: Sequence[tuple[int, ScheduleSpec]], label: str) -> jobs.Job | None:
    """Run each (seed, spec) in the background, storing each point as it ends (points another job
    stored meanwhile are read back, not redone). Every spec's rates are checked first (pure math for
    the methods that need no statistics), so a bad one is refused before anything is queued."""
    todo = list(todo)

    def validate() -> None:
        for _seed, spec in todo:
            if not spec.entry.needs:
                bench.schedule(spec)  # raises ValueError with what is allowed

    config = executor_config()  # the sidebar's choice, read in the session: the job runs in a thread

    def work(job: jobs.Job) -> int:
        with contextlib.closing(make_executor(config, bench.setup)) as executor:
            for _ in executor.points(bench, [PointJob(seed, spec) for seed, spec in todo], job.report):
                job.point_stored()
        return len(todo)

    return submit(bench, points_key(bench, todo), label, work, total=len(todo), validate=validate)


def job_button(
    label: str,
    job_key: Hashable,
    start: Callable[[], jobs.Job | None],
    *,
    key: str,
    container: Any = st,
    disabled: bool = False,
    **options: Any,
) -> jobs.Job | None:
    """The one way a page offers a background job: a button (``options``: type, help) disabled while the job named
    ``job_key`` is queued or running in any session, that calls ``start()`` (``submit`` or ``submit_points``) when
    pressed. Returns the job with that key: the one just started, else the last one (``follow`` shows its progress,
    its place in the queue or its error)."""
    job = last_job(job_key)
    if container.button(label, key=key, disabled=disabled or not idle(job), **options):
        job = start()
    return job


def points_button(
    label: str, bench: Workbench, todo: Sequence[tuple[int, ScheduleSpec]], job_label: str, **button: Any
) -> jobs.Job | None:
    """``job_button`` for a points job (``submit_points``): each (seed, spec) of ``todo`` run and stored."""
    return job_button(label, points_key(bench, todo), lambda: submit_points(bench, todo, job_label), **button)


def last_job(key: Hashable) -> jobs.Job | None:
    """The job with ``key`` (started by this session or another one): queued or running, else the last
    one that ended (pages show its error when it failed)."""
    return job_manager().last(key)


def idle(job: jobs.Job | None) -> bool:
    """No job to wait for: a page offers its Run button."""
    return job is None or not job.active


def signal() -> tuple[int, int]:
    """What a page shows of stored results and jobs can only change when this does: the store's commit counter
    (any writer, in this process or another: ``ResultStore.changes``) and the job manager's epoch (a job queued,
    started, ended or dropped, or a result it stored). Reading both costs microseconds."""
    return signal_of(get_store(store_path()), job_manager())


def signal_of(store: ResultStore, manager: jobs.JobManager) -> tuple[int, int]:
    """``signal()`` of a given store and job manager (the watcher's thread holds both: it runs outside any page)."""
    return store.changes(), manager.epoch()


class Watcher:
    """The server's one look at ``signal()``, for every open tab: a daemon thread compares it every ``POLL_S`` seconds
    with the signal each tab's page run recorded when it began (``RUN_SIGNAL``, before it read anything) and asks each
    tab whose page is stale, and not running, to run its page again, the way Streamlit's own rerun-on-save does.
    No page reasons about which events it may have missed, and no page depends on a browser timer: a fragment's
    ``run_every`` timer lives in the browser, and Streamlit 1.67 drops it when a finished run's messages are still
    queued as the next request creates a new script runner (the browser then cleared every timer at the run's
    start and never heard them again; seen as a frozen tab with an idle server, 2 six-tab runs in 8 under load).
    An idle open tab costs the server nothing; the thread costs one store and one job-manager read a second.
    It reads Streamlit's session internals (``Runtime._session_mgr``, ``AppSession._client_state``), which is why
    ``streamlit`` is pinned; the browser tests in tests/test_classroom.py fail if a release changes them."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self.read = read
        self.failed = False
        self.thread = threading.Thread(target=self._loop, name="atp-viz watcher", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            time.sleep(POLL_S)
            try:
                rerun_stale_sessions(self.read())
            except Exception as exc:  # a closing session or server: look again next time (said once, in the log)
                if not self.failed:
                    log.warning("watcher: a look at the open tabs failed\n%s", plain_traceback(exc))
                self.failed = True


def rerun_stale_sessions(now: tuple[int, int]) -> None:
    """Ask every open tab whose page run began before ``now`` to run its page again, unless a run is under way.
    Without a Streamlit server (AppTest, scripts) there is none."""
    manager = getattr(Runtime.instance(), "_session_mgr", None) if Runtime.exists() else None
    if manager is None:  # AppTest's runtime is a stand-in without sessions
        return
    for info in manager.list_active_sessions():
        if _signal_seen(info.session) not in (None, now):
            # decided on the session's own event loop, where its browser's requests are handled too: a request
            # handled before this look started a run (so nothing is asked), one handled after it comes later
            info.session._event_loop.call_soon_threadsafe(_rerun_if_stale, info.session, now)


def _signal_seen(session: Any) -> tuple[int, int] | None:
    """The ``signal()`` the session's last page run recorded when it began (None before its first run)."""
    try:
        return tuple(session._session_state[RUN_SIGNAL])
    except KeyError:
        return None


def _rerun_if_stale(session: Any, now: tuple[int, int]) -> None:
    """On the session's event loop: rerun its page with the page, query and widget values its last run ended with
    (as Streamlit's rerun-on-save does), if no run is under way or asked for and its view is still older than
    ``now``. A run under way (a click, a typed value) is never replaced by this one."""
    if session._scriptrunner is not None or session._state != AppSessionState.APP_NOT_RUNNING:
        return
    if _signal_seen(session) in (None, now):
        return
    state = ClientState()
    state.CopyFrom(session._client_state)
    state.ClearField("fragment_id")
    state.is_auto_rerun = False
    session.request_rerun(state)


@st.cache_resource(show_spinner=False)
def watcher() -> Watcher:
    """The server's one ``Watcher`` (started by the first page run)."""
    store, manager = get_store(store_path()), job_manager()
    return Watcher(lambda: signal_of(store, manager))


def running_caption(model: str | None) -> None:
    """What runs on ``model`` and whether the queue is on hold (the status box; redrawn with every page run)."""
    manager = job_manager()
    if manager.paused:
        st.caption("Jobs on hold: queued jobs start when the operator releases the queue.")
    running = manager.running(model) if model else None
    if running is not None and model:
        waiting = len(manager.queue(model))
        st.caption(f"Running: {running.label} ({running.fraction:.0%}); {waiting} job(s) queued on this model")


def follow(model: str, *candidates: jobs.Job | None) -> None:
    """What runs on ``model`` while it is busy: progress, the page's job's place in the queue with a Cancel button
    for its owner, and its error once it failed. The page's job is the first of ``candidates`` (the jobs its
    buttons returned) that is queued or running, else the first. Drawing only: the server's ``Watcher`` reruns the
    page whenever a result is stored or a job starts or ends; the progress bar moves on its own between those."""
    manager = job_manager()
    job = next((j for j in candidates if not idle(j)), candidates[0] if candidates else None)
    if job is not None and job.state == jobs.FAILED:
        st.error(f"{job.label} stopped: {job.error}")
    if not manager.busy(model) and idle(job):
        return

    @st.fragment(run_every=POLL_S)
    def live() -> None:  # the progress of a running job moves without a stored result: redrawn on its own
        running = manager.running(model)
        if running is not None:
            done = f" ({running.stored} of {running.total} stored)" if running.total else ""
            whose = "" if job is None or running is job else " (another job; yours waits, see below)"
            st.progress(running.fraction, text=f"Running: {running.label}{done}{whose}: {running.message}")
        if job is not None and job.state == jobs.QUEUED:
            place = manager.position(job)
            ahead = f"after {running.label}" if running is not None else "next"
            left, right = st.columns([4, 1])
            left.info(
                f"Queued (position {place} for {model}): {job.label} starts by itself {ahead}. Closing this tab "
                "drops it from the queue."
            )
            if session_id() in job.owners and right.button("Cancel", key=f"job_cancel_{job.id}"):
                manager.cancel(job, session_id())
                st.rerun()

    live()


def shipped_note(bench: Workbench, specs: Sequence[ScheduleSpec], seeds: Sequence[int] = ()) -> None:
    """Say how many of the points a page shows come from the shipped results (not the user's store)."""
    keys = [bench.reseeded(seed).point_key(spec) for seed in (seeds or (bench.setup.calib.seed,)) for spec in specs]
    used = bench.shipped_in_use(keys)
    if used:
        st.caption(
            f"{len(used)} of these {len(keys)} points are shipped results (regenerate with `{REGENERATE}`), "
            "computed at the default settings on the embedded model; anything you change computes as usual."
        )


def speed_key(bench: Workbench, rows: Sequence[Mapping[str, Any]]) -> tuple[object, ...]:
    """A speed job's identity: the model setting and the chosen schedule of each ``compare_rows`` row."""
    from atp_viz.speed import speedup

    return ("speed", bench.setup, tuple(dict.fromkeys(speedup.chosen_spec(row) for row in rows)))


def submit_speed(bench: Workbench, rows: Sequence[Mapping[str, Any]], label: str) -> jobs.Job | None:
    """Measure the speedup of each row's chosen schedule on this machine in the background; each result
    is stored at once (``speedup.measure_rows``)."""
    from atp_viz.speed import speedup

    rows = list(rows)

    def work(job: jobs.Job) -> None:
        speedup.measure_rows(bench, rows, progress=job.report)
        job.point_stored()

    return submit(bench, speed_key(bench, rows), label, work, total=len(rows))


def dense_perplexity(bench: Workbench) -> float | None:
    """The stored dense perplexity, or None while it is being measured: a background job (owned by the
    server, after any job a session is waiting for) measures it once per evaluation setting."""
    if (known := bench.stored_dense_perplexity()) is not None:
        return known
    dense_metrics(bench)
    return None


def dense_metrics(bench: Workbench) -> dict[str, float] | None:
    """Every metric of the dense model once stored; None meanwhile (measuring in the background)."""
    found, missing = bench.metrics_of()
    if not missing:
        return found
    submit_dense(job_manager(), bench)
    return None


def submit_dense(manager: jobs.JobManager, bench: Workbench) -> None:
    """Measure the dense model's metrics in the background (owned by the server, after every job a session
    waits for); once per setting: a failed measurement is not retried by itself."""
    key = ("dense", bench.setup)
    if (last := manager.last(key)) is not None and last.state == jobs.FAILED:
        return
    if not bench.metrics_of()[1]:
        return

    def measure(job: jobs.Job) -> None:
        missing = sorted(bench.metrics_of()[1], key=lambda item: item[1] != EVALUATION)  # shown first
        for name, split in missing:  # one (metric, split) at a time, each stored at once
            if job.outranked():
                return  # a session's job waits: it goes first, a later rerun queues the rest again
            bench.dense_metrics(job.report, only=[(name, split)])
            job.point_stored()

    manager.submit(jobs.SERVER, bench.setup.model, key, "dense model metrics", measure, priority=jobs.BACKGROUND)


def schedules(bench: Workbench | None, num_blocks: int, specs: Sequence[ScheduleSpec]) -> Schedules:
    """Per-block rates of ``specs``: pure-math methods at once (no model needed), methods that need layer
    statistics once a background job has computed them (this session owns that job)."""
    found = Schedules({}, {}, [], None)
    pending = []
    for spec in specs:
        if not spec.entry.needs:
            try:
                with warnings.catch_warnings(record=True) as caught:  # a block pruned whole, a clipped schedule
                    warnings.simplefilter("always")
                    found.rates[spec] = methods.build_schedule(
                        spec, num_blocks, None, bench.param_counts if bench else None
                    )
                found.warnings.extend(str(w.message) for w in caught)
            except ValueError as exc:
                found.errors[spec] = str(exc)
        elif bench is not None and (known := _statistics_rates().get((bench.setup, spec))) is not None:
            if isinstance(known, str):
                found.errors[spec] = known
            else:
                found.rates[spec], warned = known
                found.warnings.extend(warned)
        else:
            pending.append(spec)
    if pending and bench is not None:
        memo = _statistics_rates()

        def compute(job: jobs.Job) -> None:
            for index, spec in enumerate(pending):
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        rates = bench.schedule(spec, scaled(job.report, index / len(pending), 1 / len(pending)))
                    memo[(bench.setup, spec)] = (rates, [str(w.message) for w in caught])
                except ValueError as exc:
                    memo[(bench.setup, spec)] = str(exc)
                job.point_stored()

        labels = ", ".join(spec.entry.label for spec in pending)
        found.job = submit(bench, ("statistics", bench.setup, tuple(pending)), f"{labels} statistics", compute)
    found.pending = pending
    return found


@dataclass
class Schedules:
    """What ``schedules`` found: rates and errors by spec, warnings, and the job computing the rest."""

    rates: dict[ScheduleSpec, np.ndarray]
    errors: dict[ScheduleSpec, str]
    warnings: list[str]
    job: jobs.Job | None
    pending: list[ScheduleSpec] = field(default_factory=list)


@st.cache_resource(show_spinner=False)
def _statistics_rates() -> dict[tuple[Setup, ScheduleSpec], tuple[np.ndarray, list[str]] | str]:
    """Rates of statistics-driven schedules computed by background jobs (per model setting and spec)."""
    return {}


def executor_config() -> ExecutorConfig:
    """Where the dashboard's jobs run (the sidebar's executor choice; in classroom mode, this process unless
    the teacher unlocked this session)."""
    name = str(st.session_state.get("executor", "local"))
    if name == "local" or not unlocked():
        return ExecutorConfig()
    address = str(st.session_state.get("ray_address", "")).strip() or None
    return ExecutorConfig(name, int(st.session_state.get("workers", 1)), address, unrestricted=True)


# ------------------------------------------------------------------ sidebar
def one_navigation() -> None:
    """Run every page through app.py's ``st.navigation``. Until some session has run app.py, Streamlit runs a
    page file by itself in its legacy ``pages/`` directory mode (the page list then says "app", not "Home"):
    that happens to a server's first visitor who opens a page's own URL. Leave that mode and rerun; the page
    keeps its URL path (the same in both modes), so the visitor stays on it."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def sidebar(load_model: bool = True) -> Context:
    """Global settings (shared by all pages), a status box, and the workbench when asked for."""
    one_navigation()
    st.session_state[RUN_SIGNAL] = signal()  # before this run reads any result or job (see ``Watcher``)
    watcher()
    initial = defaults()
    bar = st.sidebar
    bar.header("Settings")
    policy, full = classroom.policy(), unlocked()  # full: local mode, or the teacher's unlocked tab
    limits = None if full else policy.limits
    if full:
        bar.text_input(
            "Model",
            help=f"Embedded: {', '.join(EMBEDDED_MODELS)}; or a local Hugging Face folder, a .gguf file, or a hub id.",
            **state("model", initial["model"]),
        )
        bar.text_input(
            "Corpus",
            help=f"{DEFAULT_CORPUS} (embedded), wikitext2, c4, or a local .txt/.json/.jsonl/.parquet file.",
            **state("corpus", initial["corpus"]),
        )
    else:  # classroom mode: the embedded names and the teacher's list, nothing typed
        bar.selectbox("Model", policy.models, help="The models this classroom server offers.",
                      **choice("model", policy.models, initial["model"], "model"))  # fmt: skip
        bar.selectbox("Corpus", policy.corpora, help="The corpora this classroom server offers.",
                      **choice("corpus", policy.corpora, initial["corpus"], "corpus"))  # fmt: skip
    bar.slider(
        "Target sparsity S",
        *SPARSITY_RANGE,
        step=0.01,
        help="Average fraction of the prunable weights set to zero.",
        **state("sparsity", initial["sparsity"]),
    )
    bar.selectbox(
        "Pruner", tuple(PRUNERS), format_func=lambda name: PRUNERS[name].label, **state("pruner", initial["pruner"])
    )
    left, right = bar.columns(2)
    left.number_input(
        "Calibration windows",
        min_value=1,
        step=1,
        **state("calib_samples", initial["calib_samples"]),
        help=limit_help(limits.calib_windows if limits else None),
    )
    right.number_input(
        "Calibration tokens",
        min_value=2,
        step=64,
        **state("calib_seqlen", initial["calib_seqlen"]),
        help=limit_help(limits.calib_tokens if limits else None),
    )
    left.number_input(
        "Evaluation windows",
        min_value=1,
        step=1,
        **state("eval_windows", initial["eval_windows"]),
        help=limit_help(limits.eval_windows if limits else None),
    )
    right.number_input("Evaluation tokens", min_value=2, step=64, **state("eval_seqlen", initial["eval_seqlen"]),
                       help=limit_help(limits.eval_tokens if limits else None))  # fmt: skip
    left.number_input("Seed", min_value=0, step=1, **state("seed", initial["seed"]))
    right.number_input(
        "Seeds per point",
        min_value=1,
        max_value=MAX_SEEDS,
        step=1,
        help=limit_help(
            limits.seeds if limits else None,
            "Run every point under this many calibration seeds (Seed, Seed + 1, ...): curves and tables show "
            "the mean with a +-1 std band, and the best beta says when it is within that noise.",
        ),
        **state("seed_count", 1),
    )
    if full:  # classroom mode: the CPU, points in this process (no device, executor or Ray address)
        left.selectbox("Device", DEVICES, **state("device", initial["device"]))
        right.selectbox(
            "Run points on",
            tuple(EXECUTORS),
            format_func=lambda name: EXECUTORS[name].label,
            help="; ".join(f"{e.label}: {e.help}" for e in EXECUTORS.values()),
            **state("executor", "local"),
        )
    if full and st.session_state.get("executor", "local") != "local":
        left.number_input("Workers", min_value=1, step=1, help="One model copy each", **state("workers", 1))
        right.text_input("Ray address", help="host:port of a Ray head node; empty starts a local Ray",
                         **state("ray_address", ""))  # fmt: skip
    zeroshot = bar.toggle(
        "Zero-shot accuracy too",
        help=f"Also score every point on {', '.join(ZeroShotConfig.tasks)} (lm-eval prompts; items per task below, "
        "disjoint items for validation and evaluation). Each point takes longer.",
        **state("zeroshot", False),
    )
    if zeroshot:
        bar.number_input(
            "Zero-shot items per task",
            min_value=1,
            max_value=MAX_ITEMS,
            step=1,
            help=limit_help(limits.zeroshot_items if limits else None),
            **state("zs_items", ZeroShotConfig.items),
        )
    teacher_panel(bar)

    values = st.session_state
    setup: Setup | None = None
    try:
        if full:
            setup = setup_of(values.to_dict(), unrestricted=policy.classroom)
        else:  # any value a forged request carries meets Setup's own classroom check (atp_viz/experiment/classroom.py)
            policy.check_seeds(int(values["seed_count"]))
            setup = setup_of({**values.to_dict(), "device": "cpu"})
        if not setup.model or not setup.corpus:
            raise ValueError("model and corpus must not be empty")
    except ValueError as exc:
        bar.error(f"Invalid settings: {exc}")
        setup = None
    sparsity = float(values["sparsity"])
    if not SPARSITY_RANGE[0] <= sparsity <= SPARSITY_RANGE[1]:
        bar.error(f"Target sparsity must be in [{SPARSITY_RANGE[0]}, {SPARSITY_RANGE[1]}], got {sparsity:g}")
        sparsity = float(DEFAULTS["sparsity"])  # type: ignore[arg-type]
    # Pages that use the model start loading it (Home does, so it loads as the app opens); the
    # Theory sandbox does not: it never needs the model.
    load = start_loading(setup) if (setup is not None and load_model) else None
    loading = load is not None and load.active
    bench = load_workbench(setup) if (setup is not None and load_model) else None
    status_box(setup)
    first, count = int(values["seed"]), min(max(int(values["seed_count"]), 1), MAX_SEEDS)
    blocks = bench.num_blocks if bench is not None else (block_count(setup.model) if setup is not None else None)
    return Context(setup, sparsity, tuple(range(first, first + count)), bench, blocks, loading)


def setup_of(values: Mapping[str, Any], unrestricted: bool = False) -> Setup:
    """The ``Setup`` that sidebar values describe (``scripts/ship_results.py`` applies it to ``defaults()``);
    ``unrestricted``: the teacher's unlocked session in classroom mode (the policy lets it through)."""
    return Setup(
        model=str(values["model"]).strip(),
        corpus=str(values["corpus"]).strip(),
        calib=CalibConfig(int(values["calib_samples"]), int(values["calib_seqlen"]), int(values["seed"])),
        evaluation=EvalConfig(int(values["eval_windows"]), int(values["eval_seqlen"]), EVAL_BATCH),
        prune=PruneConfig(str(values["pruner"])),
        device=str(values.get("device", "cpu")),
        metrics=("perplexity", "zeroshot") if values.get("zeroshot", False) else ("perplexity",),
        zeroshot=ZeroShotConfig(items=int(values.get("zs_items", ZeroShotConfig.items))),
        unrestricted=unrestricted,
    )


# ------------------------------------------------------------------ classroom mode (atp_viz/experiment/classroom.py)
TEACHER = "_classroom_teacher"  # session key: the teacher key was entered in this tab (never the key itself)
TEACHER_NOTE = "_classroom_teacher_note"  # session key: the last key check's one-line outcome
KEY_INPUT = "teacher_key_input"


def unlocked() -> bool:
    """Full controls and no job caps: local mode, or a classroom session where the teacher key was entered."""
    return not classroom.policy().classroom or bool(st.session_state.get(TEACHER, False))


def check_search(grid: int, trials: int, seeds: int) -> None:
    """A student's search job in classroom mode (its size is not known as points in advance): ATP's grid and each
    search's trials within the points a job may hold, search seeds within the seeds per point. Raises ValueError
    (one line); the teacher's tab and local mode have no limit."""
    if unlocked():
        return
    policy = classroom.policy()
    policy.check_points(grid, "ATP grid points")
    policy.check_points(trials, "points per search")
    policy.check_seeds(seeds)


def choice(key: str, options: Sequence[str], default: object, what: str) -> WidgetState:
    """``state`` for a select box of ``options``. A kept value not among them (a forged request, or the teacher's
    choice before the tab was locked) is refused in one line and replaced by the default (or the first option)."""
    kept = st.session_state.get("_" + key, default)
    if kept not in options:
        if kept != default:
            try:
                classroom.check_name(what, str(kept), tuple(options))
            except ValueError as exc:
                st.sidebar.error(f"Refused: {exc}")
        set_state(key, default if default in options else options[0])
    return state(key, default)


def limit_help(high: int | None, text: str = "") -> str | None:
    """A widget's help with its classroom limit (``high``; None: no limit). The limit is checked by ``Setup``
    itself, so a larger value that reaches the server is refused in one line."""
    return " ".join(part for part in (text, f"Classroom limit: 1..{high}." if high else "") if part) or None


@st.cache_resource(show_spinner=False)
def key_guard() -> classroom.KeyGuard:
    """The server's teacher-key check: ``ATP_VIZ_TEACHER_KEY``, else ``teacher_key`` in Streamlit's secrets file."""
    from streamlit.runtime.secrets import secrets_singleton

    key = classroom.policy().teacher_key
    if key is None and secrets_singleton.load_if_toml_exists():
        key = secrets_singleton.get(classroom.SECRETS_KEY)
    return classroom.KeyGuard(str(key) if key else None)


def _try_key() -> None:
    """The key field's callback: check what was typed, then clear the field (the key is not kept anywhere)."""
    given = str(st.session_state.get(KEY_INPUT) or "")
    st.session_state[KEY_INPUT] = ""
    if not given:
        return
    guard = key_guard()
    try:
        right = guard.check(session_id(), given)
    except ValueError as exc:
        st.session_state[TEACHER_NOTE] = str(exc)
        return
    st.session_state[TEACHER] = right
    left = guard.tries_left(session_id())
    wrong = f"Wrong teacher key ({left} tries left in this tab)" if left > 0 else classroom.LOCKED_OUT
    st.session_state[TEACHER_NOTE] = None if right else wrong


def teacher_panel(bar: Any) -> None:
    """Classroom mode only: the teacher key field, or (once entered) a Lock button and every session's jobs."""
    if not classroom.policy().classroom:
        return
    teacher = bool(st.session_state.get(TEACHER, False))
    box = bar.expander("Teacher", expanded=teacher)
    if not teacher:
        if note := st.session_state.get(TEACHER_NOTE):
            box.error(note)
        guard = key_guard()
        box.text_input(
            "Teacher key",
            type="password",
            key=KEY_INPUT,
            on_change=_try_key,
            disabled=not guard.configured or guard.tries_left(session_id()) <= 0,
            help="Unlocks every control and every session's queue for this tab only"
            if guard.configured
            else f"No key set on this server ({classroom.ENV_TEACHER_KEY} or '{classroom.SECRETS_KEY}' in secrets).",
        )
        return
    box.caption("Teacher controls unlocked in this tab: any model, size, device and executor; no job limit.")
    if box.button("Lock", key="teacher_lock"):
        st.session_state[TEACHER] = False
        st.rerun()
    manager = job_manager()
    active = manager.active()
    box.caption(
        f"{len(active)} job(s) on the server. Queued ones can be cancelled; a running job cannot be stopped today "
        "(it finishes and stores its points)."
        if active
        else "No job runs or waits on the server."
    )
    for job in active:
        left, right = box.columns([3, 1])
        left.caption(f"{job.state}: {job.label} ({len(job.owners)} session(s))")
        if job.state == jobs.QUEUED and right.button("Cancel", key=f"teacher_cancel_{job.id}"):
            manager.drop(job)
            st.rerun()


def status_box(setup: Setup | None) -> None:
    """Model, dense perplexity and stored results of the sidebar's setting; refreshed while a job runs."""
    box = st.sidebar.container(border=True)
    box.markdown("**Status**")
    if setup is None:
        box.caption("Fix the settings above.")
        with box:
            running_caption(None)
        return
    loaded = loaded_bench(setup)
    if loaded is None:
        load = job_manager().last(("load", base_setup(setup)))
        if load is not None and load.state == jobs.FAILED:
            state = f"not loaded ({load.error})"
        else:
            state = "loading..." if load is not None and load.active else "not loaded (pages that use it load it)"
        box.caption(f"Model: {state} ({setup.model})")
    else:
        total = int(sum(loaded.param_counts))
        streamed = ", blocks streamed from its files (too large to hold whole)" if loaded.setup.offload else ""
        box.caption(f"Model: loaded, {loaded.num_blocks} blocks, {total / 1e6:.1f} M prunable weights{streamed}")
        try:
            ppl = dense_perplexity(loaded.variant(replace(setup, metrics=Setup.metrics, zeroshot=ZeroShotConfig())))
        except ValueError:
            ppl = None
        box.caption(
            f"Dense perplexity: {perplexity_text(ppl)}" if ppl is not None else "Dense perplexity: measuring...",
            help=f"Full value: {full_text(ppl)}"
            if ppl is not None
            else "Measured once per evaluation setting, in the background, after any job a session is waiting for.",
        )
    box.caption(f"Stored results for this model: {stored_count(store_path(), setup.model)}")
    if shipped := shipped_results().count(setup.model):
        box.caption(f"Shipped results: {shipped} rows, used where the settings match ({REGENERATE})")
    with box:
        running_caption(setup.model)


# ------------------------------------------------------------------ drawing helpers
def chart(fig: object, key: str | None = None) -> None:
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=key)


def perplexity_frame(frame: Any, columns: Sequence[str] | None = None, **kwargs: Any) -> None:
    """``st.dataframe`` with perplexities printed short (``display.perplexity_text``); each such column's
    header tooltip says so, and the CSV downloads keep the full values."""
    chosen = perplexity_columns(frame, columns)
    config = {
        c: st.column_config.Column(help="3 significant digits (1 decimal from 100); full value in the CSV download")
        for c in chosen
    }
    st.dataframe(perplexity_table(frame, chosen), column_config=config, **kwargs)


def schedule_json(named: dict[str, np.ndarray], meta: dict[str, object]) -> str:
    """The Schedules page's JSON download: ``meta``, every schedule's rates and the blocks each prunes whole."""
    return json.dumps(
        {
            **meta,
            "schedules": {k: [float(x) for x in v] for k, v in named.items()},
            "removed_blocks": {k: methods.removed_blocks(v) for k, v in named.items()},
        },
        indent=2,
    )


# ------------------------------------------------------------------ schedule methods (from the registry)
def param_widgets(
    name: str, num_blocks: int, sparsity: float, prefix: str, container: Any = st, skip: Collection[str] = ()
) -> dict[str, Any]:
    """One widget per parameter of method ``name`` but those in ``skip`` (ranges and defaults from
    ``methods.METHODS``)."""
    values: dict[str, Any] = {}
    for param in methods.get_method(name).params:
        if param.name in skip:
            continue
        key = f"{prefix}_{name}_{param.name}"
        if param.text is not None:
            values[param.name] = container.text_input(param.label, help=param.help, **state(key, param.default))
            continue
        if param.choices:
            values[param.name] = container.selectbox(
                param.label, param.choices, help=param.help, **state(key, param.default)
            )
            continue
        high = param.upper(num_blocks, sparsity) if param.upper else param.high
        default = float(param.default) if not param.upper else high / 2
        if param.upper:  # the bound moves with L and S: keep the kept value inside it
            set_state(key, min(float(st.session_state.get("_" + key, default)), high))
        label = f"{param.label} ({param.low:g} .. {high:.5g})" if math.isfinite(high) else param.label
        if param.upper:
            values[param.name] = container.slider(
                label,
                float(param.low),
                max(high, 1e-9),
                step=param.step,
                format="%.4f",
                help=param.help,
                **state(key, default),
            )
        else:
            values[param.name] = container.number_input(label, step=param.step, help=param.help, **state(key, default))
    return values


def spec_label(spec: ScheduleSpec) -> str:
    """Legend text: the method's label and the parameters that differ between its schedules."""
    shown = [
        f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
        for k, v in spec.args
        if methods.get_method(spec.method).param(k).upper
    ]
    return spec.entry.label + (f" ({', '.join(shown)})" if shown else "")


def method_columns(
    names: Sequence[str], num_blocks: int, sparsity: float, prefix: str, skip: Collection[str] = ()
) -> dict[str, dict[str, Any]]:
    """Parameter widgets, one column per method of ``names`` that has a parameter outside ``skip``."""
    with_params = [n for n in names if any(p.name not in skip for p in methods.get_method(n).params)]
    columns = st.columns(max(len(with_params), 1))
    values: dict[str, dict[str, Any]] = {}
    for column, name in zip(columns, with_params):
        column.markdown(f"**{methods.label(name)}**")
        values[name] = param_widgets(name, num_blocks, sparsity, prefix, column, skip)
    return values


def method_specs(
    names: Sequence[str], num_blocks: int, sparsity: float, prefix: str, custom_rates: Sequence[float] | None = None
) -> dict[str, ScheduleSpec]:
    """Parameter widgets (one column per method) and the resulting specs; a bad value shows an error."""
    specs: dict[str, ScheduleSpec] = {}
    widgets = method_columns(names, num_blocks, sparsity, prefix)
    for name in names:
        try:
            entry = methods.get_method(name)
            spec = (
                ScheduleSpec(name, sparsity, **widgets.get(name, {}))
                if entry.takes_sparsity
                else ScheduleSpec(name, rates=tuple(custom_rates or ()))
            )
        except ValueError as exc:
            st.error(f"{methods.label(name)}: {exc}")
            continue
        specs[name] = spec
    return specs
