"""One experiment = schedule -> prune -> measure -> store; beta sweeps and strategy comparisons.

A ``Workbench`` holds one loaded model, its corpus windows and a copy of the dense weights, so that
many schedules can be tried without reloading: each point restores the dense weights, prunes,
measures, and commits its result to the store before the next point starts.

Its parts (``parts.assemble``) are private; callers use its verbs. The parts compose instead of
branching on names:
- a calibration mode (``pruning.modes.CALIBRATION_MODES``): ``sequential`` (paper-faithful, block i
  calibrated on the pruned blocks before it, reconstruction errors measured) or ``cached`` (statistics
  from one dense pass, no per-point calibration forward, no reconstruction errors);
- the statistics schedule methods need (``statistics.STATISTICS``: OWL's outlier ratios, AlphaPruning's
  alphas, DLP's block scores);
- the metrics a point is measured by (``metrics.METRICS``: perplexity, zero-shot accuracy), each on the
  validation and evaluation splits, stored by the ``ledger.Ledger``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from atp_viz.experiment.ledger import POINT_KIND, StoredRow, point_record
from atp_viz.experiment.model import PrunableModel
from atp_viz.experiment.parts import Given, assemble, variant_setup
from atp_viz.experiment.setup import Setup
from atp_viz.experiment.shipped import ShippedResults
from atp_viz.experiment.statistics import DenseWeights
from atp_viz.measure.metrics import EVALUATION, METRICS, VALIDATION, metric_key
from atp_viz.measure.points import PointResult, Spread, best_group, seed_spread, spread, within_noise
from atp_viz.models.loading import LoadedModel
from atp_viz.progress import Progress, labelled, scaled
from atp_viz.pruning.offload import FileWeights
from atp_viz.schedules import methods, published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.schedules.published import GRID_STEP
from atp_viz.store import ResultStore

Specs = Sequence[ScheduleSpec]
Splits = Sequence[str]
Pairs = Sequence[tuple[str, str]]  # (metric, split)
Points = Iterator[PointResult]


class Workbench(PrunableModel):
    """A ``PrunableModel`` whose points are run, measured and stored (or read back), one at a time."""

    def __init__(
        self,
        setup: Setup,
        store: ResultStore | None = None,
        loaded: LoadedModel | None = None,
        progress: Progress | None = None,
        windows: Sequence[torch.Tensor] | None = None,
        dense: DenseWeights | FileWeights | None = None,
        shipped: ShippedResults | None = None,
    ) -> None:
        """``windows``: instead of the corpus' (``setup.given_windows``); ``dense``, ``shipped``: another bench's."""
        parts = assemble(setup, store, progress, Given(loaded, windows, dense, shipped))
        super().__init__(parts)
        self._ledger, self._variants_lock = parts.ledger, threading.Lock()
        self._variants: dict[Setup, Workbench] = {}

    @property
    def store(self) -> ResultStore | None:
        return self._ledger.store

    @store.setter
    def store(self, store: ResultStore | None) -> None:
        self._ledger.store = store

    def point_key(self, spec: ScheduleSpec) -> str:
        return self._ledger.point_key(spec)

    def identity(self) -> dict[str, Any]:
        """What decides a pruned model here: key parts of what is stored about it beside its points."""
        return self._ledger.prune_identity()

    def get(self, key: str) -> dict[str, Any] | None:
        """A stored row (the user's store first, then the shipped results); never computes."""
        return self._ledger.get(key)

    def put(self, key: str, kind: str, config: dict[str, Any], record: dict[str, Any]) -> None:
        """Store one finished result at once (in memory without a store)."""
        self._ledger.put(key, kind, config, record)

    def metrics_of(self, point_key: str | None = None) -> tuple[dict[str, float], list[tuple[str, str]]]:
        """Stored metric values of a point (None: the dense model) and the (metric, split) still missing."""
        return self._ledger.metrics_of(self._ledger.dense_key() if point_key is None else point_key)

    def shipped_in_use(self, keys: Sequence[str]) -> list[str]:  # those read from the shipped results
        return self._ledger.shipped_in_use(keys)

    def collecting(self) -> list[StoredRow]:
        """From now on rows go to memory and to the list returned (a worker hands them to its driver)."""
        self._ledger = self._ledger.collecting()
        assert self._ledger.written is not None  # the live list (an empty one is falsy: never ``or []``)
        return self._ledger.written

    def reseeded(self, seed: int) -> Workbench:
        """The same model and dense weights, calibrated on windows drawn with ``seed`` (kept for reuse)."""
        return self.variant(replace(self.setup, calib=replace(self.setup.calib, seed=seed)))

    def variant(self, setup: Setup) -> Workbench:
        """A Workbench for ``setup`` sharing this one's model and dense weights (``parts.SHARED``; kept for reuse)."""
        setup = variant_setup(self.setup, setup)
        if setup == self.setup:
            return self
        with self._variants_lock:  # a page and a background job may ask for the same variant at once
            if setup not in self._variants:
                variant = Workbench(setup, self.store, self._loaded, dense=self._dense, shipped=self._ledger.shipped)
                self._variants[setup] = variant
            return self._variants[setup]

    def dense_metrics(self, progress: Progress | None = None, only: Pairs | None = None) -> dict[str, float]:
        """Every metric of the unpruned model on both splits (or ``only`` these), measured once and stored."""
        key = self._ledger.dense_key()
        found, missing = self._ledger.metrics_of(key)
        missing = [item for item in missing if only is None or item in only]
        if missing:
            self.restore()
            self._ledger.measure(key, missing, {"method": "dense"}, self.measure, progress)
            found, _ = self._ledger.metrics_of(key)
        return found

    def dense_perplexity(self, progress: Progress | None = None) -> float:
        return self.dense_metrics(progress)[metric_key("perplexity", EVALUATION)]

    def stored_dense_perplexity(self) -> float | None:  # never computes
        return self.metrics_of()[0].get(metric_key("perplexity", EVALUATION))

    def stored(self, spec: ScheduleSpec, need: Sequence[str] | None = None) -> PointResult | None:
        """The stored point if complete on the splits of ``need`` (default: the setup's; ``()``: its row alone)."""
        found = self._ledger.point(spec)
        return found.result() if found.complete(self.setup.splits if need is None else need) else None

    def run(self, spec: ScheduleSpec, progress: Progress | None = None, splits: Splits | None = None) -> PointResult:
        """Prune with ``spec``, measure on ``splits`` (default: the setup's), commit each result; or read them back."""
        stored = self._ledger.point(spec)
        if stored.complete(self.setup.splits if splits is None else splits):
            return stored.result()
        missing = [(name, split) for name, split in stored.missing if splits is None or split in splits]
        started = time.perf_counter()
        rates, report = self.apply(spec, scaled(progress, 0.0, 0.6), [split for _, split in missing])
        about = {k: v for k, v in spec.params().items() if k != "rates"}
        self._ledger.measure(stored.key, missing, about, self.measure, scaled(progress, 0.6, 0.4))
        if (record := stored.record) is None:
            seconds = time.perf_counter() - started
            record = point_record(spec, rates, report, self.param_counts, seconds, self.linear_rates(spec, rates))
            self._ledger.put(stored.key, POINT_KIND, about, record)
        return stored._replace(record=record, found=self._ledger.metrics_of(stored.key)[0]).result(cached=False)

    def run_many(self, specs: Specs, progress: Progress | None = None, splits: Splits | None = None) -> Points:
        """Run specs in order, yielding each result once stored (finished ones are read back; ``splits`` as ``run``)."""
        for index, spec in enumerate(specs):
            label = f"[{index + 1}/{len(specs)}] {spec.describe()}"
            yield self.run(spec, labelled(scaled(progress, index / len(specs), 1 / len(specs)), label), splits)
            if progress:
                progress((index + 1) / len(specs), f"{label}: done")

    def beta_sweep(self, sparsity: float, step: float = GRID_STEP, progress: Progress | None = None) -> Points:
        """beta = 0 (uniform) and then every beta of the grid, each point stored as it finishes."""
        return self.run_many(sweep_specs(self.num_blocks, sparsity, step), progress)


def stored_groups(
    wb: Workbench, specs: Sequence[ScheduleSpec], seeds: Sequence[int], need: Sequence[str] | None = None
) -> tuple[dict[ScheduleSpec, list[PointResult]], list[tuple[int, ScheduleSpec]]]:
    """Each spec's stored points under ``seeds`` (in seed order; complete on ``need`` as ``Workbench.stored``
    reads it), and the (seed, spec) not stored yet; never computes."""
    groups: dict[ScheduleSpec, list[PointResult]] = {spec: [] for spec in specs}
    missing = []
    for seed in seeds:
        seeded = wb.reseeded(seed)
        for spec in specs:
            point = seeded.stored(spec, need)
            if point is None:
                missing.append((seed, spec))
            else:
                groups[spec].append(point)
    return groups, missing


def sweep_specs(num_blocks: int, sparsity: float, step: float = published.GRID_STEP) -> list[ScheduleSpec]:
    """Uniform (beta = 0, stored as a uniform point so other jobs share it) plus the ATP grid."""
    return [ScheduleSpec("uniform", sparsity), *methods.sweep_grid("atp", num_blocks, sparsity, step)]


@dataclass(frozen=True)
class SweepSummary:
    """A beta sweep over one or more seeds: per grid point the spread of the metric on both splits,
    the best point chosen on ``select`` (by its mean over seeds) and whether the runner-up is within
    the seed noise (mean +- std bands overlap; None with one seed)."""

    betas: list[float]  # the grid points stored so far, by beta
    points: list[list[PointResult]]  # each grid point's results, one per seed
    evaluation: list[Spread]
    validation: list[Spread]
    uniform: list[PointResult]  # the baseline (beta = 0) under each seed stored
    best: int | None
    runner_up: int | None
    within_noise: bool | None

    def table(self) -> list[dict[str, Any]]:
        """One row per grid point (beta, means, stds, seeds, mean seconds); uniform first when stored."""
        rows = [(0.0, self.uniform)] if self.uniform else []
        rows += list(zip(self.betas, self.points))
        measured = [m for m in METRICS if any(metric_key(m, EVALUATION) in p.metrics for _, ps in rows for p in ps)]
        table = []
        for beta, points in rows:
            row: dict[str, Any] = {"beta": beta, "method": points[0].method}
            for name in measured:
                row |= spread_columns(points, name)
            table.append(row | {"seconds": float(np.mean([p.wall_time for p in points]))})
        return table


def spread_columns(points: Sequence[PointResult], metric: str = "perplexity") -> dict[str, float | int]:
    """Mean and std of ``metric`` on both splits over the seeds of one schedule (table columns)."""
    out: dict[str, float | int] = {}
    for split in (EVALUATION, VALIDATION):
        value = seed_spread(points, metric, split)
        suffix = "" if metric == "perplexity" else f" {metric}"  # the first metric keeps the short names
        out |= {f"{metric} ({split})": value.mean, f"std{suffix} ({split})": value.std}
    return out | {"seeds": len(points)}


def summarize_sweep(
    specs: Sequence[ScheduleSpec],
    groups: Mapping[ScheduleSpec, Sequence[PointResult]],
    select: str = VALIDATION,
    metric: str = "perplexity",
) -> SweepSummary:
    """``specs`` as ``sweep_specs`` gives them (uniform first, then the grid); ``groups``: each spec's
    stored points under every seed run so far; ``metric`` draws the curve and chooses the best."""
    grid = sorted(((spec.get("beta", 0.0), list(groups.get(spec, ()))) for spec in specs[1:]), key=lambda item: item[0])
    grid = [(beta, points) for beta, points in grid if points]
    best = runner = noise = None
    if grid:
        candidates = [points for _, points in grid]
        best, runner = best_group(candidates, metric, select)
        noise = within_noise(candidates, best, runner, metric, select)
    return SweepSummary(
        betas=[float(beta) for beta, _ in grid],
        points=[points for _, points in grid],
        evaluation=[seed_spread(points, metric) for _, points in grid],
        validation=[seed_spread(points, metric, select) for _, points in grid],
        uniform=list(groups.get(specs[0], ())),
        best=best,
        runner_up=runner,
        within_noise=noise,
    )


# -- strategy comparison (the CLI's compare and the dashboard's Compare page) -------------------
@dataclass(frozen=True)
class Cell:
    """One (method, sparsity) of a comparison: the specs tried (a grid, or one) and the best reported."""

    method: str
    sparsity: float
    specs: tuple[ScheduleSpec, ...]


def compare_cells(
    num_blocks: int,
    method_names: Sequence[str],
    sparsities: Sequence[float],
    step: float = published.GRID_STEP,
    fixed: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Cell]:
    """Every (method, sparsity) cell: a method with a grid tries all of it at the parameters ``fixed`` gives
    (the power profile's beta grid at a given p) unless ``fixed`` gives the grid's own parameter (ATP's beta);
    the others run once with their defaults (or ``fixed``)."""
    if not method_names or not sparsities:
        raise ValueError(
            "choose at least one method and one sparsity; methods allowed: "
            f"{', '.join(methods.method_names(comparable=True))}"
        )
    cells = []
    for s in sparsities:
        for name in method_names:
            entry = methods.get_method(name)
            if not entry.takes_sparsity:
                raise ValueError(
                    f"{name} cannot be compared at a target sparsity; allowed: "
                    f"{', '.join(methods.method_names(comparable=True))}"
                )
            specs = methods.sweep_grid(name, num_blocks, s, step, (fixed or {}).get(name))
            if not specs:
                raise published.no_grid_point(num_blocks, s, step, entry.label)
            cells.append(Cell(name, s, tuple(specs)))
    return cells


def evaluation_values(points: Sequence[PointResult], prefixes: Sequence[str]) -> dict[str, float]:
    """Mean over seeds of every evaluation value whose name starts with one of ``prefixes``."""
    names = sorted({k.split("/", 1)[1] for p in points for k in p.metrics if k.startswith(f"{EVALUATION}/")})
    chosen = [n for n in names if any(n == prefix or n.startswith((f"{prefix}_", f"{prefix}/")) for prefix in prefixes)]
    return {name: spread([p.metrics.get(f"{EVALUATION}/{name}", math.nan) for p in points]).mean for name in chosen}


def zeroshot_table(
    rows: Sequence[Mapping[str, Any]], dense: Mapping[str, float], tasks: Sequence[str], field: str = "acc"
) -> list[dict[str, Any]]:
    """The paper's Table 1 shape: one row per (method, sparsity) with each task's ``field`` in percent
    and the mean over the tasks with its stderr; the dense model first. ``rows`` come from
    ``compare_rows(..., extra=("zeroshot",))``, ``dense`` from ``Workbench.dense_metrics``."""
    mean_key = "zeroshot" if field == "acc" else "zeroshot_norm"

    def line(name: str, sparsity: float | None, values: Mapping[str, float], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"method": name, "sparsity": sparsity}
        out |= {task: 100 * values.get(f"{prefix}zeroshot/{task}/{field}", math.nan) for task in tasks}
        return out | {"mean": 100 * values.get(f"{prefix}{mean_key}", math.nan),
                      "stderr": 100 * values.get(f"{prefix}{mean_key}_stderr", math.nan)}  # fmt: skip

    table = [line("dense", None, dense, f"{EVALUATION}/")]
    return table + [line(str(r["label"]), float(r["sparsity"]), r) for r in rows]


def compare_rows(
    cells: Sequence[Cell],
    found: Mapping[ScheduleSpec, Sequence[PointResult]],
    metric: str = "perplexity",
    select: str = VALIDATION,
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per cell with stored points: the best spec chosen on ``select`` (mean over the seeds
    each spec was run with), its evaluation mean and standard deviation over those seeds. ``extra``:
    metric-name prefixes (``"zeroshot"``) whose evaluation values are added as their mean over seeds.

    Row: method, label, sparsity, ``metric`` (evaluation mean), ``<metric>_std``, seeds,
    ``<select>_<metric>``, params of the chosen schedule, points (specs stored / tried), rates, and
    ``within_noise``: whether the runner-up's seed band overlaps the winner's (None with one seed).
    """
    rows = []
    for cell in cells:
        groups = [(spec, list(found.get(spec, ()))) for spec in cell.specs]
        groups = [(spec, points) for spec, points in groups if points]
        if not groups:
            continue
        candidates = [points for _, points in groups]
        best, runner = best_group(candidates, metric, select)
        points = candidates[best]
        chosen, reported = seed_spread(points, metric, select), seed_spread(points, metric, EVALUATION)
        noise = within_noise(candidates, best, runner, metric, select)
        rows.append({
            "method": cell.method, "label": methods.label(cell.method), "sparsity": cell.sparsity,
            metric: reported.mean, f"{metric}_std": reported.std, "seeds": reported.n,
            f"{select}_{metric}": chosen.mean,
            "params": {k: v for k, v in points[0].params.items() if k not in ("method", "sparsity")},
            "points": f"{len(groups)}/{len(cell.specs)}", "rates": points[0].rates.tolist(), "within_noise": noise,
        } | evaluation_values(points, extra))  # fmt: skip
    return rows
