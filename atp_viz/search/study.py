"""Searches over per-block rates on a Workbench, and ATP's grid against them at equal budgets.

``space.py`` is the algorithm library (samplers, journal storage, resume, monotonicity); this
module ties it to real models. A trial's objective is the validation perplexity of the schedule the
sampler proposes, evaluated as a normal point,

    f(r) = ppl_validation( prune(W, ScheduleSpec("custom", rates=r)) ),

so every trial is a stored ``point`` with its ``metric`` rows (a repeated schedule is read back, not
recomputed), and one ``trial`` row per finished trial (key = fingerprint(study, trial number);
record: trial number, point key, validation and evaluation perplexity, search seconds) is committed
right after it ends, so a dashboard and a resumed search see it. Winners are chosen on validation and
reported on evaluation.

Optuna's journal lives beside the results store: ``<store>.optuna/<study>.log`` (a temporary folder
without a store). The study name is a fingerprint of what decides a trial's value: the Workbench's
prune identity (model, calibration text and settings, pruner, mode, dtype), the objective's split
text and windows, S, the sampler, its seed and ``max_delta``.

Budget-matched comparison (``versus_atp``): ATP's grid (beta = step, 2 step, ... <= beta_max) and
the uniform schedule (beta = 0) cost ``B = len(sweep_specs)`` points; each sampler gets B trials by
default. ATP's winner is the grid beta with the best validation perplexity (uniform is the baseline,
as in ``atp-viz sweep``); a search's winner is its trial with the best validation perplexity.
DSA's evolutionary search over allocation graphs (``GraphSearch``, name ``DSA``) is one more search there:
each trial a stored ``dsa`` point, resumed by replaying its seeded generations (no journal).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from atp_viz.config import check_sparsity
from atp_viz.experiment.executors import Executor, ExecutorConfig, LocalExecutor, PointJob
from atp_viz.experiment.workbench import Workbench, labelled, scaled, sweep_specs
from atp_viz.measure.metrics import EVALUATION, VALIDATION, metric_key
from atp_viz.measure.points import PointResult, spread
from atp_viz.progress import Progress
from atp_viz.schedules import published
from atp_viz.schedules.dsa import NonFiniteImportanceWarning
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.search import dsa_search, space
from atp_viz.store import ResultStore, fingerprint

TRIAL_KIND = "trial"
SEARCH_KIND = "search"
JOURNAL_SUFFIX = ".optuna"  # <store path>.optuna/ holds one journal file per study
JOURNAL_EXT = ".log"
METRIC = "perplexity"  # the objective: this metric on the validation split (lower is better)
ATP, UNIFORM = "atp", "uniform"
DSA = "dsa"  # DSA's evolutionary search over allocation graphs: a search beside the samplers (``GraphSearch``)
DSA_LABEL = "DSA graphs (evolutionary)"
SEARCHES = (*space.SAMPLERS, DSA)  # what ``versus_atp`` may run against ATP's grid

# (method name, the trial that just finished) -> None: live curves, progress lines
OnTrial = Callable[[str, "TrialRecord"], None]


@dataclass(frozen=True)
class SearchConfig:
    """One search: sampler, budget and the space it searches (validated here, before any I/O)."""

    sampler: str  # key of search.SAMPLERS
    trials: int  # COMPLETE trials wanted in the study (those stored earlier count)
    sparsity: float  # S: the parameter-weighted mean of every trial's rates
    seed: int = 0  # the sampler's seed (part of the study name)
    timeout_s: float | None = None  # this call's wall clock, checked between trials
    max_delta: float | None = None  # |r_i - S| <= max_delta (None: only 0 <= r_i <= 1)

    def __post_init__(self) -> None:
        space.check_sampler(self.sampler)
        space.check_budget(self.trials, self.timeout_s)
        check_sparsity(self.sparsity)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"search seed must be an integer >= 0, got {self.seed!r}")
        if self.max_delta is not None and not (math.isfinite(self.max_delta) and 0.0 < self.max_delta <= 1.0):
            raise ValueError(f"max_delta must be None or a number in (0, 1], got {self.max_delta:g}")


@dataclass(frozen=True)
class TrialRecord:
    """One evaluated schedule of a method (a search trial, or a point of ATP's sweep)."""

    number: int  # trial number (Optuna's; ATP: index in the sweep)
    point_key: str  # the stored point
    validation: float  # validation perplexity: what selects
    evaluation: float  # evaluation perplexity: what is reported
    seconds: float  # the method's wall clock when this trial finished (cumulated over resumed runs)
    rates: np.ndarray = field(repr=False, compare=False)  # (L,) the schedule
    spec: ScheduleSpec | None = field(default=None, repr=False, compare=False)  # None: the custom rates above

    def schedule(self) -> ScheduleSpec:
        """The trial's schedule: its own spec (a DSA graph), else its custom rates."""
        return self.spec if self.spec is not None else _custom(self.rates)

    def to_record(self) -> dict[str, Any]:
        return {"number": self.number, "point": self.point_key, "validation_perplexity": self.validation,
                "evaluation_perplexity": self.evaluation, "seconds": self.seconds}  # fmt: skip


@dataclass(frozen=True)
class MethodResult:
    """Every trial of one method, in order, and what the comparison reports about it."""

    method: str  # "atp" or a sampler name
    label: str
    trials: tuple[TrialRecord, ...]  # in the order they were run
    candidates: tuple[int, ...] = ()  # indices of ``trials`` the winner is chosen from (empty: all)
    study: str = ""  # the Optuna study (searches)

    def winner(self) -> TrialRecord | None:
        """The candidate with the lowest validation perplexity (ties: the earliest); None without trials."""
        pool = [self.trials[i] for i in self.candidates] if self.candidates else list(self.trials)
        finite = [t for t in pool if math.isfinite(t.validation)]
        return min(finite or pool, key=lambda t: t.validation) if pool else None

    def best_so_far(self) -> np.ndarray:
        """b_k = min_{j <= k} validation_j over the trials in order."""
        return np.minimum.accumulate(np.array([t.validation for t in self.trials], dtype=np.float64))

    @property
    def seconds(self) -> float:
        """Wall time of the method: the clock when its last trial finished."""
        return self.trials[-1].seconds if self.trials else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-able: winner's validation / evaluation perplexity, wall time, monotonicity, rates, curves."""
        best = self.winner()
        mono = space.monotonicity(best.rates) if best is not None else None
        return {
            "method": self.method,
            "label": self.label,
            "study": self.study,
            "trials": len(self.trials),
            "validation_perplexity": best.validation if best else math.nan,
            "evaluation_perplexity": best.evaluation if best else math.nan,
            "seconds": self.seconds,
            "winner_trial": best.number if best else None,
            "spearman": mono["spearman"] if mono else math.nan,
            "inversions": mono["inversions"] if mono else 0,
            "inversion_fraction": mono["inversion_fraction"] if mono else 0.0,
            "rates": best.rates.tolist() if best else [],
            "best_so_far": {
                "trial": list(range(1, len(self.trials) + 1)),
                "seconds": [t.seconds for t in self.trials],
                "validation_perplexity": self.best_so_far().tolist(),
            },
        }


# ------------------------------------------------------------------------------ where things live


@functools.cache
def _temporary_journals() -> Path:
    """One temporary folder per process for searches without a store (nothing to resume from)."""
    return Path(tempfile.mkdtemp(prefix="atp-viz-search-"))


def journal_dir(store: ResultStore | None) -> Path:
    """``<store path>.optuna/`` beside the results store; this process's temporary folder without one."""
    return _temporary_journals() if store is None else store.path.with_name(store.path.name + JOURNAL_SUFFIX)


def study_name(wb: Workbench, config: SearchConfig) -> str:
    """Fingerprint of what decides the trials' values and draws (module docstring)."""
    objective = wb.values_key(METRIC, VALIDATION)
    return fingerprint(kind=SEARCH_KIND, **wb.identity(), objective=objective, metric=METRIC,
                       sparsity=config.sparsity, sampler=config.sampler, seed=config.seed,
                       max_delta=config.max_delta)  # fmt: skip


def trial_key(study: str, number: int) -> str:
    return fingerprint(kind=TRIAL_KIND, study=study, number=number)


def check_searches(searches: Sequence[str]) -> list[str]:
    """``searches`` without repeats, if each is a sampler or ``DSA`` and there is one at least; else ValueError."""
    if not searches:
        raise ValueError(f"choose at least one search; allowed: {', '.join(SEARCHES)}")
    for name in searches:
        if name not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}; got {name!r}")
    return list(dict.fromkeys(searches))


def _check_setup(wb: Workbench) -> None:
    if VALIDATION not in wb.setup.splits:
        raise ValueError(
            f"a search selects on the {VALIDATION} split: measure it (splits allowed: validation, evaluation)"
        )


def _record(point: PointResult, number: int, seconds: float) -> TrialRecord:
    return TrialRecord(number, point.key, point.value(METRIC, VALIDATION), point.value(METRIC, EVALUATION), seconds,
                       np.asarray(point.rates, dtype=np.float64))  # fmt: skip


def _custom(rates: np.ndarray) -> ScheduleSpec:
    return ScheduleSpec("custom", rates=tuple(float(r) for r in rates))


def measured_splits(every_split: bool) -> tuple[str, ...] | None:
    """What ``Workbench.run`` measures for a trial: every split, or only what selection reads (the
    point row and its validation rows; ``complete_winner`` adds the winner's evaluation rows later)."""
    return None if every_split else (VALIDATION,)


def complete_winner(
    wb: Workbench, result: MethodResult, spec_of: Callable[[TrialRecord], ScheduleSpec]
) -> MethodResult:
    """``result`` with its winner's evaluation perplexity measured (and stored) if it is missing."""
    best = result.winner()
    if best is None or not math.isnan(best.evaluation):
        return result
    point = wb.run(spec_of(best))
    done = dataclasses.replace(best, evaluation=point.value(METRIC, EVALUATION))
    return dataclasses.replace(result, trials=tuple(done if t is best else t for t in result.trials))


# ------------------------------------------------------------------------------ the trial loop


@dataclass
class Trials:
    """What every search's trial loop does the same way (the rate searches' Optuna loop, DSA's evolution): a
    trial is one stored point, run on the splits selection reads (or read back: a resumed search recomputes
    nothing), reported as trial k of the budget; the loop asks ``stop()`` between trials."""

    wb: Workbench
    name: str  # what the progress lines call the search
    budget: int
    progress: Progress | None = None
    splits: tuple[str, ...] | None = (VALIDATION,)  # ``measured_splits``
    should_stop: Callable[[], bool] | None = None
    done: int = 0  # finished trials, those stored by an earlier run included

    def run(self, spec: ScheduleSpec) -> PointResult:
        """The next trial's point: run (each row stored at once) or read back."""
        start = min(self.done, self.budget - 1) / self.budget
        report = labelled(scaled(self.progress, start, 1 / self.budget), f"{self.name} trial {self.done + 1}")
        return self.wb.run(spec, report, self.splits)

    def finished(self, line: str | None = None) -> None:
        """One more trial done (``line``: reported with the search's progress)."""
        self.done += 1
        if self.progress is not None and line is not None:
            self.progress(self.done / self.budget, line)

    def stop(self) -> bool:
        return self.should_stop is not None and self.should_stop()


# ------------------------------------------------------------------------------ one search


class Search:
    """A resumable search of one ``SearchConfig`` on a Workbench (study, journal and trial rows)."""

    def __init__(self, wb: Workbench, config: SearchConfig, journal: Path | None = None) -> None:
        _check_setup(wb)
        self.wb, self.config = wb, config
        self.study = study_name(wb, config)
        self.journal = (journal or journal_dir(wb.store)) / f"{self.study}{JOURNAL_EXT}"

    @property
    def label(self) -> str:
        return space.SAMPLERS[self.config.sampler].label

    def _put(self, record: TrialRecord) -> None:
        about = {"study": self.study, "sampler": self.config.sampler, "sparsity": self.config.sparsity,
                 "search_seed": self.config.seed, "number": record.number}  # fmt: skip
        self.wb.put(trial_key(self.study, record.number), TRIAL_KIND, about, record.to_record())

    def _from_trial(self, trial: space.Trial) -> TrialRecord | None:
        """A finished trial's row, or rebuilt from its stored point (a process killed between the
        journal's commit and the row's); None when neither is stored (the store was emptied)."""
        row = self.wb.get(trial_key(self.study, trial.number))
        if row is not None:
            evaluation = float(row["evaluation_perplexity"])
            if math.isnan(evaluation):  # measured later, for a winner
                found = self.wb.metrics_of(str(row["point"]))[0]
                evaluation = found.get(metric_key(METRIC, EVALUATION), math.nan)
            return TrialRecord(int(row["number"]), str(row["point"]), float(row["validation_perplexity"]),
                               evaluation, float(row["seconds"]), trial.rates)  # fmt: skip
        point = self.wb.stored(_custom(trial.rates), need=(VALIDATION,))  # evaluation may be missing: NaN
        if point is None:
            return None
        record = _record(point, trial.number, trial.seconds)
        self._put(record)
        return record

    def stored(self) -> MethodResult:
        """The finished trials (from the journal and the store); never computes. Safe while another
        process searches this study."""
        found = [self._from_trial(t) for t in space.load_trials(self.journal, self.study)]
        trials = tuple(t for t in found if t is not None)
        return MethodResult(self.config.sampler, self.label, trials, study=self.study)

    def run(
        self,
        progress: Progress | None = None,
        on_trial: OnTrial | None = None,
        should_stop: Callable[[], bool] | None = None,
        every_split: bool = True,
        executor: Executor | None = None,
        batch: int = 1,
    ) -> MethodResult:
        """Run trials until the study has ``config.trials`` COMPLETE ones (finished ones are kept and
        never recomputed), each stored as a point and a trial row as soon as it ends.

        ``every_split=False``: trials are measured on validation only and the winner's evaluation
        perplexity is measured at the end (``complete_winner``). ``executor``: trials are asked
        ``batch`` at a time and their points run together on it (``search.run_search``'s batches)."""
        budget, splits = self.config.trials, measured_splits(every_split)
        latest: dict[str, PointResult] = {}
        done = len(self.stored().trials)  # also writes rows a killed process finished but did not record
        trials = Trials(self.wb, self.config.sampler, budget, progress, splits, should_stop, done)

        def objective(rates: np.ndarray) -> float:
            latest["point"] = point = trials.run(_custom(rates))
            return point.value(METRIC, VALIDATION)

        def finished(trial: space.Trial) -> None:
            record = _record(latest.pop("point"), trial.number, trial.seconds)
            self._put(record)
            trials.finished()
            if on_trial is not None:
                on_trial(self.config.sampler, record)

        points: dict[bytes, PointResult] = {}  # a batch's finished points by their rates

        def evaluate(batch_rates: Sequence[np.ndarray]) -> Iterator[tuple[int, float]]:
            assert executor is not None
            jobs = [PointJob(self.wb.setup.calib.seed, _custom(rates), splits) for rates in batch_rates]
            where: dict[PointJob, list[int]] = {}
            for index, job in enumerate(jobs):
                where.setdefault(job, []).append(index)
            for job, point in executor.points(self.wb, jobs, labelled(progress, f"{self.config.sampler} batch")):
                index = where[job].pop(0)
                points[batch_rates[index].tobytes()] = point
                yield index, point.value(METRIC, VALIDATION)

        def told(trial: space.Trial) -> None:
            latest["point"] = points[trial.rates.tobytes()]
            finished(trial)

        space.run_search(
            objective,
            self.wb.param_counts,
            self.config.sparsity,
            self.config.sampler,
            budget,
            storage_path=self.journal,
            study_name=self.study,
            seed=self.config.seed,
            timeout_s=self.config.timeout_s,
            max_delta=self.config.max_delta,
            on_trial=finished if executor is None else told,
            should_stop=trials.stop,
            batch=batch,
            evaluate=None if executor is None else evaluate,
        )
        result = self.stored()
        return result if every_split else complete_winner(self.wb, result, lambda trial: _custom(trial.rates))


# ------------------------------------------------------------------------------ ATP vs searches


@dataclass(frozen=True)
class Comparison:
    """ATP's grid, the uniform baseline and each search at one sparsity."""

    sparsity: float
    budget: int  # points each method may evaluate (ATP: its whole sweep, uniform included)
    methods: dict[str, MethodResult]  # "atp" first, then the samplers in the order asked
    uniform: TrialRecord | None = None  # the baseline (beta = 0), None until stored

    def rows(self) -> list[dict[str, Any]]:
        """The table: method, label, validation / evaluation perplexity of the winner, seconds,
        Spearman and inversions of the winner, trials; the uniform baseline last."""
        rows = []
        for result in self.methods.values():
            s = result.summary()
            rows.append({k: s[k] for k in ("method", "label", "validation_perplexity", "evaluation_perplexity",
                                           "seconds", "spearman", "inversions", "trials")})  # fmt: skip
        if self.uniform is not None:
            u = self.uniform
            rows.append({"method": UNIFORM, "label": "uniform (baseline)", "validation_perplexity": u.validation,
                         "evaluation_perplexity": u.evaluation, "seconds": u.seconds, "spearman": math.nan,
                         "inversions": 0, "trials": 1})  # fmt: skip
        return rows

    def at_budget(self, points: int) -> Comparison:
        """The comparison as it stood when each search had run its first ``points`` trials (ATP's sweep
        is kept whole; ``points`` must be at least its size): a budget-matched view of a longer run.
        Winners of the shortened searches may lack their evaluation value (``completed`` adds it)."""
        atp = self.methods[ATP]
        if points < len(atp.trials):
            raise ValueError(f"a budget below ATP's sweep ({len(atp.trials)} points) is not comparable, got {points}")
        cut = {
            name: r if name == ATP else dataclasses.replace(r, trials=r.trials[:points])
            for name, r in self.methods.items()
        }
        return Comparison(self.sparsity, points, cut, self.uniform)

    def summary(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "budget": self.budget,
            "selected_on": VALIDATION,
            "reported_on": EVALUATION,
            "uniform": self.uniform.to_record() if self.uniform else None,
            "methods": {name: result.summary() for name, result in self.methods.items()},
        }


def completed(wb: Workbench, comparison: Comparison) -> Comparison:
    """``comparison`` with every search winner's evaluation perplexity measured (and stored) if missing."""
    methods = {
        name: r if name == ATP else complete_winner(wb, r, lambda trial: trial.schedule())
        for name, r in comparison.methods.items()
    }
    return dataclasses.replace(comparison, methods=methods)


def seed_rows(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """Per method, over the comparisons of several search seeds (same sparsity and budget): mean and
    standard deviation of the winner's validation and evaluation perplexity, and the seeds counted."""
    found: dict[str, list[dict[str, Any]]] = {}
    for comparison in comparisons:
        for row in comparison.rows():
            found.setdefault(row["method"], []).append(row)
    out = []
    for method, rows in found.items():
        val = spread([r["validation_perplexity"] for r in rows])
        ev = spread([r["evaluation_perplexity"] for r in rows])
        out.append({"method": method, "label": rows[0]["label"], "seeds": ev.n,
                    "validation_perplexity": val.mean, "validation_std": val.std,
                    "evaluation_perplexity": ev.mean, "evaluation_std": ev.std})  # fmt: skip
    return out


def atp_specs(num_blocks: int, sparsity: float, step: float = published.GRID_STEP) -> list[ScheduleSpec]:
    """ATP's sweep: uniform (beta = 0) first, then the grid betas (``experiment.sweep_specs``)."""
    specs = sweep_specs(num_blocks, sparsity, step)
    if len(specs) < 2:
        raise published.no_grid_point(num_blocks, sparsity, step)
    return specs


def grid_budget(num_blocks: int, sparsity: float, step: float = published.GRID_STEP) -> int:
    """Points ATP's sweep costs: the grid betas plus uniform."""
    return len(atp_specs(num_blocks, sparsity, step))


def _atp_result(points: Sequence[PointResult | None]) -> tuple[MethodResult, TrialRecord | None]:
    """ATP's trials (the stored prefix of its sweep, seconds = cumulative point wall time) and uniform."""
    trials: list[TrialRecord] = []
    clock = 0.0
    for index, point in enumerate(points):
        if point is None:
            break
        clock += point.wall_time
        trials.append(_record(point, index, clock))
    uniform = trials[0] if trials else None
    result = MethodResult(ATP, "ATP grid (beta)", tuple(trials), candidates=tuple(range(1, len(trials))))
    return result, uniform


def _configs(
    sparsity: float,
    samplers: Sequence[str],
    trials: int,
    seed: int,
    timeout_s: float | None,
    max_delta: float | None,
) -> list[SearchConfig]:
    """The rate searches among ``samplers`` (``DSA``, the graph search, is not one of them)."""
    check_searches(samplers)
    return [
        SearchConfig(name, trials, sparsity, seed, timeout_s, max_delta)
        for name in dict.fromkeys(samplers)
        if name != DSA
    ]


def _searches(
    wb: Workbench,
    sparsity: float,
    samplers: Sequence[str],
    trials: int,
    seed: int,
    timeout_s: float | None,
    max_delta: float | None,
) -> dict[str, Search | GraphSearch]:
    """Each search asked, in the order asked: a rate search per sampler, DSA's graph search for ``DSA``."""
    configs = {c.sampler: c for c in _configs(sparsity, samplers, trials, seed, timeout_s, max_delta)}
    return {
        name: Search(wb, configs[name]) if name != DSA else GraphSearch(wb, sparsity, trials, seed, timeout_s)
        for name in dict.fromkeys(samplers)
    }


def stored_comparison(
    wb: Workbench, sparsity: float, samplers: Sequence[str], trials: int | None = None, **options: Any
) -> Comparison:
    """What is stored of ``versus_atp`` with these arguments (``seed``, ``max_delta``, ``step``); never computes
    (a dashboard revisit)."""
    return versus_atp(wb, sparsity, samplers, trials, stored_only=True, **options)


def versus_atp(
    wb: Workbench,
    sparsity: float,
    samplers: Sequence[str],
    trials: int | None = None,
    *,
    seed: int = 0,
    timeout_s: float | None = None,
    max_delta: float | None = None,
    step: float = published.GRID_STEP,
    progress: Progress | None = None,
    on_trial: OnTrial | None = None,
    should_stop: Callable[[], bool] | None = None,
    every_split: bool = True,
    executor: Executor | None = None,
    batch: int = 1,
    stored_only: bool = False,
) -> Comparison:
    """ATP's sweep, then each search of ``samplers`` (a sampler, or ``DSA``: DSA's graph search, ``GraphSearch``)
    with ``trials`` trials (default: the sweep's size), all stored.

    Stored points and trials are read back, so a rerun computes only what is missing. ``timeout_s``
    bounds each search's wall clock; ``should_stop()`` is checked between points and trials.
    ``every_split=False``: every point is measured on validation only (what selection reads) and
    each winner's evaluation perplexity at the end; seconds then count validation only, for all.
    ``executor`` (default: this process): ATP's grid runs on it in one go, and each search asks ``batch``
    trials at a time (DSA's graphs run in this process, one at a time). ``stored_only``: what is stored, never
    computing (``stored_comparison``).
    """
    _check_setup(wb)
    specs = atp_specs(wb.num_blocks, sparsity, step)
    budget = trials or len(specs)
    runners = _searches(wb, sparsity, samplers, budget, seed, timeout_s, max_delta)
    if stored_only:
        atp, uniform = _atp_result([wb.stored(spec, need=(VALIDATION,)) for spec in specs])
        return Comparison(sparsity, budget, {ATP: atp, **{name: r.stored() for name, r in runners.items()}}, uniform)
    parts = 1 + len(runners)
    points: list[PointResult | None] = []
    started = time.monotonic()
    jobs = [PointJob(wb.setup.calib.seed, spec, measured_splits(every_split)) for spec in specs]
    found: dict[PointJob, PointResult] = {}
    stop = should_stop or (lambda: False)
    pool = executor or LocalExecutor(ExecutorConfig())
    with contextlib.closing(pool.points(wb, jobs, labelled(scaled(progress, 0.0, 1 / parts), "ATP"))) as stream:
        for job, point in () if stop() else stream:
            found[job] = point
            while len(points) < len(jobs) and jobs[len(points)] in found:  # reported in grid order
                points.append(found[jobs[len(points)]])
                if on_trial is not None:
                    on_trial(ATP, _atp_result(points)[0].trials[-1])
            if len(points) < len(jobs) and stop():
                break  # closing the stream stops the executor (a point in flight is not stored)
    atp, uniform = _atp_result(points)
    if not every_split:
        atp = complete_winner(wb, atp, lambda trial: specs[trial.number])
        if uniform is not None and math.isnan(uniform.evaluation):
            uniform = dataclasses.replace(uniform, evaluation=wb.run(specs[0]).value(METRIC, EVALUATION))
    results = {ATP: atp}
    for index, (name, runner) in enumerate(runners.items()):
        if stop():
            results[name] = runner.stored()
            continue
        sub = scaled(progress, (1 + index) / parts, 1 / parts)
        if isinstance(runner, Search):  # a rate search asks ``batch`` trials at a time of the executor
            results[name] = runner.run(sub, on_trial, should_stop, every_split, executor, batch)
        else:
            results[name] = runner.run(sub, on_trial, should_stop, every_split)
    if progress is not None:
        progress(1.0, f"done in {time.monotonic() - started:.0f} s")
    return Comparison(sparsity, budget, results, uniform)


def run_one(
    wb: Workbench,
    config: SearchConfig,
    progress: Progress | None = None,
    on_trial: OnTrial | None = None,
    should_stop: Callable[[], bool] | None = None,
    every_split: bool = True,
    executor: Executor | None = None,
    batch: int = 1,
) -> MethodResult:
    """One search without ATP (``atp-viz search`` without ``--versus-atp``)."""
    return Search(wb, config).run(progress, on_trial, should_stop, every_split, executor, batch)


def sampler_colors() -> dict[str, str]:
    """Figure colours: ATP's from the method registry, each sampler's from ``search.SAMPLERS``."""
    from atp_viz.schedules.methods import colors

    return {ATP: colors()[ATP], UNIFORM: colors()[UNIFORM], **{n: e.color for n, e in space.SAMPLERS.items()},
            DSA: colors()[DSA]}  # fmt: skip


def labels() -> dict[str, str]:
    return {ATP: "ATP grid (beta)", UNIFORM: "uniform", **{n: e.label for n, e in space.SAMPLERS.items()},
            DSA: DSA_LABEL}  # fmt: skip


def curves(comparison: Comparison, x: str = "trial") -> dict[str, tuple[list[float], list[float]]]:
    """method -> (x, best-so-far validation perplexity), x = trial number (1-based) or seconds."""
    if x not in ("trial", "seconds"):
        raise ValueError(f"x must be trial or seconds, got {x!r}")
    out = {}
    for name, result in comparison.methods.items():
        curve = result.summary()["best_so_far"]
        out[name] = ([float(v) for v in curve[x]], curve["validation_perplexity"])
    return out


def winner_notes(comparison: Comparison) -> list[str]:
    """One line per search whose winner is a schedule of its own rather than free rates (DSA: its graph)."""
    return [
        f"{result.label}: winner {best.spec.describe()}"
        for result in comparison.methods.values()
        if (best := result.winner()) is not None and best.spec is not None
    ]


def winners(comparison: Comparison) -> dict[str, np.ndarray]:
    """method -> the winner's rates (methods without a trial left out)."""
    return {name: best.rates for name, result in comparison.methods.items() if (best := result.winner()) is not None}


__all__ = [
    "DSA",
    "SEARCHES",
    "Comparison",
    "GraphSearch",
    "MethodResult",
    "Search",
    "SearchConfig",
    "TrialRecord",
    "atp_specs",
    "check_searches",
    "curves",
    "dsa_graph_search",
    "grid_budget",
    "journal_dir",
    "labels",
    "run_one",
    "sampler_colors",
    "stored_comparison",
    "study_name",
    "trial_key",
    "versus_atp",
    "winner_notes",
    "winners",
]


# ------------------------------------------------------------------------------ DSA's search over graphs


class _Halt(Exception):
    """A graph's point is not stored (a revisit) or the search must stop: the replay ends there."""


class GraphSearch:
    """DSA's evolutionary search over graphs (``dsa_search.evolve``) at one sparsity, budget and seed: every graph
    is a stored ``dsa`` point and its validation perplexity the fitness; ``budget`` defaults to ATP's grid (its betas
    plus uniform), so the two cost the same number of pruned models.

    Resumable without a journal: the graphs of generation g come from ``default_rng([seed, g])`` and the fitnesses
    before them, so a run started again replays the same sequence, reads each finished graph back from the store
    (none is measured twice) and continues with the first one missing; ``stored()`` replays as far as the store
    goes. A trial's seconds: the cumulated wall time of the points so far (as ATP's sweep)."""

    def __init__(
        self,
        wb: Workbench,
        sparsity: float,
        budget: int | None = None,
        seed: int = 0,
        timeout_s: float | None = None,
        step: float = published.GRID_STEP,
    ) -> None:
        _check_setup(wb)
        self.wb, self.sparsity = wb, check_sparsity(sparsity)
        self.budget = grid_budget(wb.num_blocks, self.sparsity, step) if budget is None else budget
        space.check_budget(self.budget, timeout_s)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"search seed must be an integer >= 0, got {seed!r}")
        self.seed, self.timeout_s = seed, timeout_s
        self.evaluated: list[dsa_search.Evaluated] = []  # the last replay's graphs, in evaluation order

    def spec(self, graph: str) -> ScheduleSpec:
        return ScheduleSpec(DSA, self.sparsity, graph=graph)

    def _replay(
        self,
        point: Callable[[ScheduleSpec, int], PointResult | None],
        on_graph: Callable[[dsa_search.Evaluated, PointResult, TrialRecord], None] | None = None,
    ) -> MethodResult:
        """``evolve`` with ``point(spec, index)`` as the source of each graph's point, until the budget is spent or
        ``point`` gives None; ``on_graph(entry, point, trial)`` after each graph."""
        points: dict[str, PointResult] = {}
        trials: list[TrialRecord] = []
        self.evaluated = []

        def fitness(graph: str) -> float:
            with warnings.catch_warnings():  # a graph not finite on some blocks is a normal candidate here
                warnings.simplefilter("ignore", NonFiniteImportanceWarning)
                found = point(self.spec(graph), len(self.evaluated))
            if found is None:
                raise _Halt
            points[graph] = found
            return found.value(METRIC, VALIDATION)

        def finished(done: int, total: int, entry: dsa_search.Evaluated) -> None:
            found = points[entry.graph]
            clock = (trials[-1].seconds if trials else 0.0) + found.wall_time
            trials.append(dataclasses.replace(_record(found, entry.index, clock), spec=self.spec(entry.graph)))
            self.evaluated.append(entry)
            if on_graph is not None:
                on_graph(entry, found, trials[-1])

        with contextlib.suppress(_Halt):
            dsa_search.evolve(fitness, self.budget, self.seed, progress=finished)
        return MethodResult(DSA, DSA_LABEL, tuple(trials), study=f"dsa graphs S={self.sparsity:g} seed={self.seed}")

    def stored(self) -> MethodResult:
        """The graphs finished so far (the replay up to the first one not stored); never computes."""
        return self._replay(lambda spec, _: self.wb.stored(spec, need=(VALIDATION,)))

    def run(
        self,
        progress: Progress | None = None,
        on_trial: OnTrial | None = None,
        should_stop: Callable[[], bool] | None = None,
        every_split: bool = True,
        on_graph: Callable[[dsa_search.Evaluated, PointResult], None] | None = None,
    ) -> MethodResult:
        """Evaluate graphs until ``budget`` are (finished ones read back), each point stored as it ends; stops
        early when ``should_stop()`` or the timeout says so (checked before each graph not stored yet).

        ``every_split=False``: graphs measured on validation only, the winner's evaluation at the end. The graphs
        run in this process one at a time (each generation's graphs depend on the fitnesses before them)."""
        splits = measured_splits(every_split)
        need = self.wb.setup.splits if splits is None else splits
        deadline = math.inf if self.timeout_s is None else time.monotonic() + self.timeout_s
        trials = Trials(self.wb, "DSA graph", self.budget, progress, splits, should_stop)

        def point(spec: ScheduleSpec, index: int) -> PointResult | None:
            trials.done = index
            if self.wb.stored(spec, need=need) is None and (trials.stop() or time.monotonic() > deadline):
                return None
            return trials.run(spec)

        def finished(entry: dsa_search.Evaluated, found: PointResult, trial: TrialRecord) -> None:
            if on_graph is not None:
                on_graph(entry, found)
            if on_trial is not None and not found.cached:  # a new trial, as a rate search reports them
                on_trial(DSA, trial)

        result = self._replay(point, finished)
        if every_split:
            return result
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonFiniteImportanceWarning)
            return complete_winner(self.wb, result, lambda trial: trial.schedule())


def dsa_graph_search(
    wb: Workbench,
    sparsity: float,
    budget: int | None = None,
    seed: int = 0,
    step: float = published.GRID_STEP,
    progress: Progress | None = None,
    on_graph: Callable[[dsa_search.Evaluated, PointResult], None] | None = None,
) -> list[dsa_search.Evaluated]:
    """``GraphSearch(...).run`` on validation alone (``atp-viz search --space dsa``): the graphs in evaluation order;
    ``on_graph(entry, point)`` after each (``point.cached``: read back from the store)."""
    search = GraphSearch(wb, sparsity, budget, seed, step=step)
    search.run(progress, every_split=False, on_graph=on_graph)
    return search.evaluated
