"""Shared dashboard plumbing: sidebar settings in session state, cached workbench and store, job lock.

Pages call ``sidebar()`` first; it returns a ``Context`` with the current ``Setup``, the target
sparsity and (when the page needs the model) a cached ``Workbench``. Heavy jobs run inside
``job(model)``, which admits one job per model across all sessions; stored results are read from the
store on every rerun, so a point another session stored shows up on the next rerun.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict, TypeVar

import numpy as np
import streamlit as st

from atp_viz import methods
from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.data import DEFAULT_CORPUS
from atp_viz.executors import EXECUTORS, ExecutorConfig, Job, WorkerError, make_executor
from atp_viz.experiment import Progress, Setup, Workbench
from atp_viz.figures import PLOTLY_CONFIG
from atp_viz.methods import ScheduleSpec
from atp_viz.models import DEFAULT_MODEL, EMBEDDED_MODELS
from atp_viz.pruners import PRUNERS, PruneConfig
from atp_viz.results import PointResult
from atp_viz.shipped import REGENERATE, ShippedResults
from atp_viz.store import ResultStore, default_store_path
from atp_viz.zeroshot import ZeroShotConfig

ENV_MODEL = "ATP_VIZ_DEFAULT_MODEL"  # default model name or path (tests use a tiny model)
ENV_CORPUS = "ATP_VIZ_DEFAULT_CORPUS"  # default corpus
ENV_WINDOWS = "ATP_VIZ_DEFAULT_WINDOWS"  # 'COUNTxTOKENS' for calibration and evaluation, e.g. '4x32'
SPARSITY_RANGE = (0.05, 0.95)
DEVICES = ("cpu", "auto", "cuda")
MAX_SEEDS = 5  # seeds per point the sidebar offers (each one is a full run of the point)
MAX_ITEMS = 500  # zero-shot items per task the sidebar offers
EVAL_BATCH = 4  # evaluation windows per forward pass (memory only)
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
    workbench: Workbench | None = None  # loaded only for pages that need the model

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


@st.cache_resource(show_spinner=False, max_entries=2)
def _workbench(setup: Setup, path: str) -> Workbench:
    bench = Workbench(setup, get_store(path))
    bench.rows.shipped = shipped_results()  # read under the user's store; variants share it
    _loaded().add(setup)
    return bench


@st.cache_resource(show_spinner=False)
def shipped_results() -> ShippedResults:
    """The results shipped inside the package (``atp_viz/shipped/``); used where fingerprints match."""
    return ShippedResults()


@st.cache_resource(show_spinner=False)
def _loaded() -> set[Setup]:
    return set()


@st.cache_resource(show_spinner=False)
def _jobs() -> dict[str, tuple[threading.Lock, list[str]]]:
    return {}


_JOBS_GUARD = threading.Lock()


@contextlib.contextmanager
def job(model: str, what: str) -> Iterator[bool]:
    """Admit one heavy job per model (across sessions); yields False when another one is running."""
    with _JOBS_GUARD:
        lock, running = _jobs().setdefault(model, (threading.Lock(), []))
    acquired = lock.acquire(blocking=False)
    if acquired:
        running[:] = [what]
    try:
        yield acquired
    finally:
        if acquired:
            running.clear()
            lock.release()


def busy(model: str) -> str:
    """A message naming the job that holds ``model`` ('' when none does)."""
    entry = _jobs().get(model)
    if entry is None or not entry[0].locked():
        return ""
    what = entry[1][0] if entry[1] else "a job"
    return f"Busy: {what} is running on {model}. Wait for it to finish (its results appear here), then try again."


def base_setup(setup: Setup) -> Setup:
    """The setting whose Workbench loads the model: metrics and calibration mode are variants of it."""
    return replace(setup, metrics=Setup.metrics, zeroshot=ZeroShotConfig(), calibration=Setup.calibration)


def load_workbench(setup: Setup) -> Workbench | None:
    """The cached workbench for ``setup``: one loaded model per model setting, which other metrics and
    the other calibration mode share as variants; shows st.error (and returns None) when it cannot be built."""
    try:
        with st.spinner(f"Loading {setup.model} and tokenizing {setup.corpus} (first time only)..."):
            return _workbench(base_setup(setup), store_path()).variant(setup)
    except Exception as exc:  # a bad name, path, corpus or window setting: show it, keep the page usable
        st.error(f"Cannot load the model with these settings: {exc}")
        return None


# ------------------------------------------------------------------ stored results
def stored_count(path: str, model: str) -> int:
    return get_store(path).count(model=model)


def stored_points(bench: Workbench, specs: Sequence[ScheduleSpec]) -> list[PointResult | None]:
    """The stored result of each spec (None where not computed yet), without computing anything."""
    return [bench.stored(spec) for spec in specs]


# ------------------------------------------------------------------ long jobs
def progress_callback(label: str) -> Progress:
    bar = st.progress(0.0, text=label)

    def report(fraction: float, message: str) -> None:
        bar.progress(min(max(float(fraction), 0.0), 1.0), text=f"{label}: {message}")

    return report


def stored_groups(
    bench: Workbench, specs: Sequence[ScheduleSpec], seeds: Sequence[int]
) -> tuple[dict[ScheduleSpec, list[PointResult]], list[tuple[int, ScheduleSpec]]]:
    """Each spec's stored points under ``seeds`` (in seed order), and the (seed, spec) not stored yet."""
    groups: dict[ScheduleSpec, list[PointResult]] = {spec: [] for spec in specs}
    missing = []
    for seed in seeds:
        seeded = bench.reseeded(seed)
        for spec in specs:
            point = seeded.stored(spec)
            if point is None:
                missing.append((seed, spec))
            else:
                groups[spec].append(point)
    return groups, missing


def run_points(
    bench: Workbench, specs: Sequence[ScheduleSpec], label: str, on_point: Callable[[PointResult], None] | None = None
) -> list[PointResult] | None:
    """Run ``specs`` (the bench's own seed) under the model's job lock with a progress bar; each point is
    stored as it ends. Returns None (after showing why) when the model is busy or a point fails."""
    jobs = [(bench.setup.calib.seed, spec) for spec in specs]
    return run_jobs(bench, jobs, label, (lambda _seed, point: on_point(point)) if on_point else None)


def run_jobs(
    bench: Workbench,
    jobs: Sequence[tuple[int, ScheduleSpec]],
    label: str,
    on_point: Callable[[int, PointResult], None] | None = None,
) -> list[PointResult] | None:
    """Run each (seed, spec) under the model's job lock with a progress bar; each point is stored as it
    ends. Returns None (after showing why) when the model is busy or a point fails."""
    model = bench.setup.model
    with job(model, label) as admitted:
        if not admitted:
            st.warning(busy(model) or f"Busy: another job is running on {model}.")
            return None
        report = progress_callback(label)
        done: list[PointResult] = []
        try:
            with contextlib.closing(make_executor(executor_config(), bench.setup)) as executor:
                for finished, result in executor.points(bench, [Job(seed, spec) for seed, spec in jobs], report):
                    done.append(result)
                    if on_point:
                        on_point(finished.seed, result)
        except (ValueError, WorkerError) as exc:
            st.error(str(exc))
            return None
        report(1.0, f"done ({len(done)} point{'s' * (len(done) != 1)})")
        return done


def shipped_note(bench: Workbench, specs: Sequence[ScheduleSpec], seeds: Sequence[int] = ()) -> None:
    """Say how many of the points a page shows come from the shipped results (not the user's store)."""
    keys = [bench.reseeded(seed).point_key(spec) for seed in (seeds or (bench.setup.calib.seed,)) for spec in specs]
    used = bench.rows.shipped_in_use(keys)
    if used:
        st.caption(
            f"{len(used)} of these {len(keys)} points are shipped results (regenerate with `{REGENERATE}`), "
            "computed at the default settings on the embedded model; anything you change computes as usual."
        )


def run_speed(bench: Workbench, rows: Sequence[dict[str, Any]], label: str) -> bool:
    """Measure the speedup of each row's chosen schedule on this machine under the model's job lock,
    with a progress bar; each result is stored at once. False (after saying why) when busy or refused."""
    from atp_viz import speedup

    model = bench.setup.model
    with job(model, label) as admitted:
        if not admitted:
            st.warning(busy(model) or f"Busy: another job is running on {model}.")
            return False
        try:
            speedup.measure_rows(bench, rows, progress=progress_callback(label))
        except ValueError as exc:
            st.error(str(exc))
            return False
        return True


T = TypeVar("T")


def run_task(model: str, label: str, work: Callable[[Progress], T]) -> T | None:
    """Run ``work`` (it gets a progress callback) under the model's job lock with a progress bar.
    Returns None (after showing why) when the model is busy or the work rejects its input."""
    with job(model, label) as admitted:
        if not admitted:
            st.warning(busy(model) or f"Busy: another job is running on {model}.")
            return None
        report = progress_callback(label)
        try:
            result = work(report)
        except ValueError as exc:
            st.error(str(exc))
            return None
        report(1.0, "done")
        return result


def dense_perplexity(bench: Workbench) -> float | None:
    """Stored or computed now (a few seconds, once per evaluation setting); None when busy."""
    if (known := bench.stored_dense_perplexity()) is not None:
        return known  # no lock needed to read it: another session's job does not make this page wait
    model = bench.setup.model
    with job(model, "dense perplexity") as admitted:
        if not admitted:
            return None
        with st.spinner("Measuring the dense model's perplexity (once)..."):
            return bench.dense_perplexity()


def dense_metrics(bench: Workbench) -> dict[str, float] | None:
    """Every metric of the dense model (stored, or measured now under the job lock); None when busy."""
    found, missing = bench.rows.metrics_of(bench.rows.dense_key())
    if not missing:
        return found
    model = bench.setup.model
    with job(model, "dense metrics") as admitted:
        if not admitted:
            st.warning(busy(model) or f"Busy: another job is running on {model}.")
            return None
        with st.spinner("Measuring the dense model (once per setting)..."):
            return bench.dense_metrics()


def schedule_or_error(bench: Workbench, spec: ScheduleSpec) -> np.ndarray | None:
    """Per-block rates of ``spec`` (statistics such as OWL's dense pass run under the job lock)."""
    model = bench.setup.model
    needs_model = bool(spec.entry.needs)
    with contextlib.ExitStack() as stack:
        if needs_model:
            admitted = stack.enter_context(job(model, f"{spec.method} statistics"))
            if not admitted:
                st.warning(busy(model) or f"Busy: another job is running on {model}.")
                return None
            stack.enter_context(st.spinner(f"Computing {spec.method} layer statistics (once per model)..."))
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rates = bench.schedule(spec)
            for warning in caught:
                st.warning(str(warning.message))
            return rates
        except ValueError as exc:
            st.error(str(exc))
            return None


def executor_config() -> ExecutorConfig:
    """Where the dashboard's jobs run (the sidebar's executor choice)."""
    name = str(st.session_state.get("executor", "local"))
    if name == "local":
        return ExecutorConfig()
    address = str(st.session_state.get("ray_address", "")).strip() or None
    return ExecutorConfig(name, int(st.session_state.get("workers", 1)), address)


# ------------------------------------------------------------------ sidebar
def sidebar(load_model: bool = True) -> Context:
    """Global settings (shared by all pages), a status box, and the workbench when asked for."""
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
    bench = load_workbench(setup) if (setup is not None and load_model) else None
    status_box(setup, bench)
    first, count = int(values["seed"]), min(max(int(values["seed_count"]), 1), MAX_SEEDS)
    return Context(setup, sparsity, tuple(range(first, first + count)), bench)


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


def status_box(setup: Setup | None, bench: Workbench | None) -> None:
    box = st.sidebar.container(border=True)
    box.markdown("**Status**")
    if setup is None:
        box.caption("Fix the settings above.")
        return
    if bench is None:
        loaded = base_setup(setup) in _loaded()
        box.caption(f"Model: {'loaded' if loaded else 'not loaded'} ({setup.model})")
    else:
        total = int(sum(bench.param_counts))
        box.caption(f"Model: loaded, {bench.num_blocks} blocks, {total / 1e6:.1f} M prunable weights")
        ppl = dense_perplexity(bench)
        box.caption(
            f"Dense perplexity: {ppl:.4f}" if ppl is not None else f"Dense perplexity: {busy(setup.model) or 'busy'}"
        )
    box.caption(f"Stored results for this model: {stored_count(store_path(), setup.model)}")
    if shipped := shipped_results().count(setup.model):
        box.caption(f"Shipped results: {shipped} rows, used where the settings match ({REGENERATE})")


# ------------------------------------------------------------------ drawing helpers
def chart(fig: object, key: str | None = None) -> None:
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=key)


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
