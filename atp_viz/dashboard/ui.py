"""Shared dashboard plumbing: sidebar settings in session state, the server's workbenches, store and jobs.

Pages call ``sidebar()`` first; it returns a ``Context`` with the current ``Setup``, the target
sparsity and (when the page needs the model, once it is loaded) the server's ``Workbench`` for that
setting, one per model setting for all sessions. The sidebar starts loading the model, then the
dense perplexity, in the background as the app opens. Heavy jobs go to the server's ``JobManager``
(``atp_viz/dashboard/jobs.py``): one running job per model, a session asking for a running job follows it, a
different one is queued. While a job runs or waits on the model, ``follow`` reruns the page each
time a result is stored, so every session draws every point as it lands.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import streamlit as st
from streamlit.runtime import Runtime
from streamlit.runtime.scriptrunner import get_script_run_ctx

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.dashboard import jobs
from atp_viz.dashboard.figures import PLOTLY_CONFIG
from atp_viz.display import full_text, perplexity_columns, perplexity_table, perplexity_text
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

ENV_MODEL = "ATP_VIZ_DEFAULT_MODEL"  # default model name or path (tests use a tiny model)
ENV_CORPUS = "ATP_VIZ_DEFAULT_CORPUS"  # default corpus
ENV_WINDOWS = "ATP_VIZ_DEFAULT_WINDOWS"  # 'COUNTxTOKENS' for calibration and evaluation, e.g. '4x32'
ENV_JOB_LOG = "ATP_VIZ_JOB_LOG"  # optional file: one JSON line per job the server ran (who waited, when)
SPARSITY_RANGE = (0.05, 0.95)
DEVICES = ("cpu", "auto", "cuda")
MAX_SEEDS = 5  # seeds per point the sidebar offers (each one is a full run of the point)
MAX_ITEMS = 500  # zero-shot items per task the sidebar offers
EVAL_BATCH = 4  # evaluation windows per forward pass (memory only)
MAX_BENCHES = 2  # model settings kept loaded at once by the server (each holds the model and its dense copy)
POLL_S = 1.0  # seconds between looks for a newly stored result while a job runs or waits on the model
RUN_EPOCH = "_jobs_epoch_at_run_start"  # session key: the job manager's epoch when the page run began
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
    """The server's workbenches: one per model setting (not per session), the last MAX_BENCHES kept."""

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
def benches() -> Benches:
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
    """The server's one job registry (see atp_viz/dashboard/jobs.py): every session submits to and reads from it."""
    audit = os.environ.get(ENV_JOB_LOG)
    return jobs.JobManager(alive=session_alive, audit=Path(audit) if audit else None)


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


def start_loading(setup: Setup) -> jobs.Job | None:
    """Load ``setup``'s workbench in the background (a job on the model, owned by the server); None when
    it is loaded already. The sidebar calls this on every page that uses the model, Home included, so
    the model loads as the app opens."""
    base = base_setup(setup)
    if benches().get(base) is not None:
        return None
    key = ("load", base)
    last = job_manager().last(key)
    if last is not None and last.state == jobs.FAILED:
        return last  # shown with a retry button, never retried by itself

    manager, registry, store, shipped = job_manager(), benches(), get_store(store_path()), shipped_results()

    def load(job: jobs.Job) -> None:
        bench = Workbench(base, store, progress=job.report)
        bench.rows.shipped = shipped  # read under the user's store; variants share it
        registry.put(base, bench)
        job.point_stored()
        submit_dense(manager, bench)  # next, unless a session queued a job meanwhile

    return manager.submit(jobs.SERVER, setup.model, key, f"loading {setup.model}", load)


def load_workbench(setup: Setup) -> Workbench | None:
    """The server's workbench for ``setup`` once it is loaded (other metrics share the loaded model);
    until then says that it is loading (the page fills in by itself) and returns None; shows st.error
    (and returns None) when it cannot be built."""
    if (bench := benches().get(base_setup(setup))) is None:
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
        return job_manager().submit(session_id(), bench.setup.model, key, label, work, total=total, validate=validate)
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


def last_job(key: Hashable) -> jobs.Job | None:
    """The job with ``key`` (started by this session or another one): queued or running, else the last
    one that ended (pages show its error when it failed)."""
    return job_manager().last(key)


def idle(job: jobs.Job | None) -> bool:
    """No job to wait for: a page offers its Run button."""
    return job is None or not job.active


def follow(model: str, job: jobs.Job | None = None, compact: bool = False) -> None:
    """While a job runs or waits on ``model``: what runs (progress), ``job``'s place in the queue with a
    Cancel button for its owner, and a fragment that reruns the whole page (charts, captions, tables,
    sidebar) each time a result is stored or a job starts or ends. Nothing polls while the model is idle, except
    once when something changed after this page run began (its drawing may be stale)."""
    manager = job_manager()
    if job is not None and job.state == jobs.FAILED:
        st.error(f"{job.label} stopped: {job.error}")
    # a result stored or a job ended after this run began reading: what it drew may be stale, so look again
    # once even if the model is idle now (the last point of a sweep can land between the read and this call)
    stale = manager.epoch() != st.session_state.get(RUN_EPOCH, manager.epoch())
    if not manager.busy(model) and idle(job) and not stale:
        return
    seen = -1 if stale else manager.version(model)

    @st.fragment(run_every=POLL_S)
    def live() -> None:
        if manager.version(model) != seen:
            st.rerun()  # the whole page: every stored point and count is read again
        running = manager.running(model)
        if running is not None and compact:
            waiting = len(manager.queue(model))
            st.caption(f"Running: {running.label} ({running.fraction:.0%}); {waiting} job(s) queued on this model")
        elif running is not None:
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
    used = bench.rows.shipped_in_use(keys)
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
    found, missing = bench.rows.metrics_of(bench.rows.dense_key())
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
    if not bench.rows.metrics_of(bench.rows.dense_key())[1]:
        return

    def measure(job: jobs.Job) -> None:
        key = bench.rows.dense_key()
        missing = sorted(bench.rows.metrics_of(key)[1], key=lambda item: item[1] != EVALUATION)  # shown first
        for name, split in missing:  # one (metric, split) at a time, each stored at once
            if job.outranked():
                return  # a session's job waits: it goes first, a later rerun queues the rest again
            bench.dense.restore()
            bench.measure(key, [(name, split)], {"method": "dense"}, job.report)
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
                found.rates[spec] = methods.build_schedule(
                    spec, num_blocks, None, bench.param_counts if bench else None
                )
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
    """Where the dashboard's jobs run (the sidebar's executor choice)."""
    name = str(st.session_state.get("executor", "local"))
    if name == "local":
        return ExecutorConfig()
    address = str(st.session_state.get("ray_address", "")).strip() or None
    return ExecutorConfig(name, int(st.session_state.get("workers", 1)), address)


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
    st.session_state[RUN_EPOCH] = job_manager().epoch()  # before this run reads any result (see ``follow``)
    initial = defaults()
    bar = st.sidebar
    bar.header("Settings")
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
    left.number_input("Calibration windows", min_value=1, step=1, **state("calib_samples", initial["calib_samples"]))
    right.number_input("Calibration tokens", min_value=2, step=64, **state("calib_seqlen", initial["calib_seqlen"]))
    left.number_input("Evaluation windows", min_value=1, step=1, **state("eval_windows", initial["eval_windows"]))
    right.number_input("Evaluation tokens", min_value=2, step=64, **state("eval_seqlen", initial["eval_seqlen"]))
    left.number_input("Seed", min_value=0, step=1, **state("seed", initial["seed"]))
    right.number_input(
        "Seeds per point",
        min_value=1,
        max_value=MAX_SEEDS,
        step=1,
        help="Run every point under this many calibration seeds (Seed, Seed + 1, ...): curves and tables show "
        "the mean with a +-1 std band, and the best beta says when it is within that noise.",
        **state("seed_count", 1),
    )
    left.selectbox("Device", DEVICES, **state("device", initial["device"]))
    right.selectbox(
        "Run points on",
        tuple(EXECUTORS),
        format_func=lambda name: EXECUTORS[name].label,
        help="; ".join(f"{e.label}: {e.help}" for e in EXECUTORS.values()),
        **state("executor", "local"),
    )
    if st.session_state.get("executor", "local") != "local":
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
            **state("zs_items", ZeroShotConfig.items),
        )

    values = st.session_state
    setup: Setup | None = None
    try:
        setup = setup_of(values.to_dict())
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


def setup_of(values: Mapping[str, Any]) -> Setup:
    """The ``Setup`` that sidebar values describe (``scripts/ship_results.py`` applies it to ``defaults()``)."""
    return Setup(
        model=str(values["model"]).strip(),
        corpus=str(values["corpus"]).strip(),
        calib=CalibConfig(int(values["calib_samples"]), int(values["calib_seqlen"]), int(values["seed"])),
        evaluation=EvalConfig(int(values["eval_windows"]), int(values["eval_seqlen"]), EVAL_BATCH),
        prune=PruneConfig(str(values["pruner"])),
        device=str(values["device"]),
        metrics=("perplexity", "zeroshot") if values.get("zeroshot", False) else ("perplexity",),
        zeroshot=ZeroShotConfig(items=int(values.get("zs_items", ZeroShotConfig.items))),
    )


def status_box(setup: Setup | None) -> None:
    """Model, dense perplexity and stored results of the sidebar's setting; refreshed while a job runs."""
    box = st.sidebar.container(border=True)
    box.markdown("**Status**")
    if setup is None:
        box.caption("Fix the settings above.")
        return
    loaded = benches().get(base_setup(setup))
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
        follow(setup.model, compact=True)


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
    return json.dumps({**meta, "schedules": {k: [float(x) for x in v] for k, v in named.items()}}, indent=2)


# ------------------------------------------------------------------ schedule methods (from the registry)
def param_widgets(name: str, num_blocks: int, sparsity: float, prefix: str, container: Any = st) -> dict[str, Any]:
    """One widget per parameter of method ``name`` (ranges and defaults from ``methods.METHODS``)."""
    values: dict[str, Any] = {}
    for param in methods.get_method(name).params:
        key = f"{prefix}_{name}_{param.name}"
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


def method_specs(
    names: Sequence[str], num_blocks: int, sparsity: float, prefix: str, custom_rates: Sequence[float] | None = None
) -> dict[str, ScheduleSpec]:
    """Parameter widgets (one column per method) and the resulting specs; a bad value shows an error."""
    specs: dict[str, ScheduleSpec] = {}
    with_params = [n for n in names if methods.get_method(n).params]
    columns = st.columns(max(len(with_params), 1))
    for column, name in zip(columns, with_params):
        column.markdown(f"**{methods.label(name)}**")
    widgets = {
        name: param_widgets(name, num_blocks, sparsity, prefix, columns[with_params.index(name)])
        if name in with_params
        else {}
        for name in names
    }
    for name in names:
        try:
            entry = methods.get_method(name)
            spec = (
                ScheduleSpec(name, sparsity, **widgets[name])
                if entry.takes_sparsity
                else ScheduleSpec(name, rates=tuple(custom_rates or ()))
            )
        except ValueError as exc:
            st.error(f"{methods.label(name)}: {exc}")
            continue
        specs[name] = spec
    return specs
