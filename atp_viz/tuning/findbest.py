"""Find the best beta without running the whole grid: a golden-section search over grid indices.

The paper's beta/perplexity curve is U-shaped, so a golden-section search over the grid's indices
finds its minimum in about log_phi(n) evaluations instead of n. Real curves carry noise, so two guards
follow the search:

1. neighbours: both grid neighbours of the winner are evaluated, and the search walks downhill
   while a neighbour is better (a winner is always a local minimum of the grid);
2. unimodality: the evaluated values, read in grid order, must fall and then rise. When they do
   not, every grid point between the leftmost and the rightmost local minimum of the probes (and
   one beyond each) is evaluated, then guard 1 runs again.

The search chooses on the validation split; the chosen point alone is then measured on the
evaluation split, which is what a report shows. Every probe is a normal stored point (the same
point and metric keys as a full sweep's), so a later full sweep reuses it; a probe lacks only its
evaluation row, which the sweep adds without changing the point. The search is deterministic, so an
interrupted run resumes by replaying it: stored probes cost nothing.

``find_min`` is the pure search (any objective over indices); ``find_best`` runs it on a Workbench;
``fast_compare`` runs a comparison with it (the Compare page's default and ``compare --find-best``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from atp_viz.display import metric_text
from atp_viz.experiment.workbench import Cell, Setup, Workbench, scaled
from atp_viz.measure import zeroshot
from atp_viz.measure.metrics import EVALUATION, VALIDATION, check_metric
from atp_viz.measure.points import PointResult, spread
from atp_viz.progress import Progress
from atp_viz.schedules import methods, published
from atp_viz.schedules.methods import ScheduleSpec

SCAN_BELOW = 5  # grids this small are scanned: the search would evaluate most of them anyway


@dataclass(frozen=True)
class Trace:
    """What the search evaluated: index -> value (lower is better), in evaluation order."""

    values: dict[int, float]
    best: int
    scanned: bool  # the unimodality guard found the probes not unimodal and scanned between minima

    @property
    def order(self) -> list[int]:
        return list(self.values)


def fibonacci_order(n: int) -> int:
    """The smallest k with F_k >= n + 1 (F_1 = F_2 = 1): the Fibonacci search over n points takes k - 2 probes."""
    k, (previous, current) = 2, (1, 1)
    while current < n + 1:
        k, (previous, current) = k + 1, (current, previous + current)
    return k


def max_evaluations(n: int) -> int:
    """Evaluations ``find_min`` needs at most on a unimodal curve of ``n`` grid points: the k - 2
    Fibonacci probes plus the winner's two neighbours (k = ``fibonacci_order(n)``, about
    log_phi(n) + 1.3), and never more than the grid."""
    return n if n < SCAN_BELOW else min(n, fibonacci_order(n))


def _clean(value: float) -> float:
    """NaN (a collapsed model) ranks last."""
    return math.inf if math.isnan(value) else float(value)


def local_minima(values: Mapping[int, float]) -> list[int]:
    """Indices whose value is at most both evaluated neighbours' (in grid order); plateaus count once."""
    order = sorted(values)
    found = []
    for k, index in enumerate(order):
        left = values[order[k - 1]] if k > 0 else math.inf
        right = values[order[k + 1]] if k + 1 < len(order) else math.inf
        if values[index] < left and values[index] <= right:
            found.append(index)
    return found


def find_min(n: int, objective: Callable[[int], float]) -> Trace:
    """The index in 0..n-1 with the lowest ``objective`` on a U-shaped (unimodal) curve, with the
    neighbour and unimodality guards above. ``objective`` is called at most once per index."""
    if n < 1:
        raise ValueError(f"the grid needs at least one point, got {n}")
    values: dict[int, float] = {}

    def value(index: int) -> float:
        if index not in values:
            values[index] = _clean(objective(index))
        return values[index]

    def winner() -> int:
        return min(values, key=lambda i: (values[i], i))

    if n < SCAN_BELOW:
        for index in range(n):
            value(index)
        return Trace(values, winner(), scanned=False)
    # 1. Fibonacci search (golden section on integers): the minimum lies strictly inside (lo, lo + F_k);
    # indices past the grid are +inf and never evaluated, so the bracket may overhang the grid.
    fib = [0, 1, 1]
    while fib[-1] < n + 1:
        fib.append(fib[-1] + fib[-2])
    k, lo = len(fib) - 1, -1
    while k > 3:
        a, b = lo + fib[k - 2], lo + fib[k - 1]
        if (value(a) if a < n else math.inf) > (value(b) if b < n else math.inf):
            lo = a  # else the minimum is in (lo, b): lo stays
        k -= 1
    scanned = False
    while True:
        best = walk_down(n, value, winner())  # 2. guard: the winner is a local minimum of the grid
        minima = local_minima(values)
        if len(minima) <= 1 or scanned:
            return Trace(values, best, scanned)
        scanned = True  # 3. guard: not unimodal -> scan between the outermost minima (one beyond each)
        for index in range(max(minima[0] - 1, 0), min(minima[-1] + 1, n - 1) + 1):
            value(index)


def walk_down(n: int, value: Callable[[int], float], start: int) -> int:
    """From ``start``, step to the better grid neighbour while there is one; returns a local minimum."""
    here = start
    while True:
        neighbours = [i for i in (here - 1, here + 1) if 0 <= i < n]
        step = min(neighbours, key=lambda i: (value(i), i), default=here)
        if value(step) >= value(here):
            return here
        here = step


# -- on a Workbench -----------------------------------------------------------------------------
class NotStored(Exception):
    """Raised inside a stored-only replay when the search needs a point that is not stored."""


@dataclass(frozen=True)
class FindBest:
    """A find-best run over one grid (ordered by its parameter) under one or more seeds."""

    specs: tuple[ScheduleSpec, ...]  # the whole grid, in order
    trace: Trace  # indices evaluated, their selection values (mean over seeds, lower is better)
    points: dict[ScheduleSpec, list[PointResult]]  # every evaluated spec's points, one per seed
    metric: str
    select: str  # the split the search read

    @property
    def best(self) -> ScheduleSpec:
        return self.specs[self.trace.best]

    @property
    def evaluated(self) -> list[ScheduleSpec]:
        return [self.specs[i] for i in self.trace.order]

    def reported(self) -> float:
        """The chosen point's ``metric`` on the evaluation split (mean over seeds)."""
        return spread([p.value(self.metric, EVALUATION) for p in self.points[self.best]]).mean

    def selected(self) -> float:
        return spread([p.value(self.metric, self.select) for p in self.points[self.best]]).mean

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: the grid, what was evaluated (in order) with its selection value, the choice."""
        direction = 1.0 if check_metric(self.metric).lower_is_better else -1.0

        def param(spec: ScheduleSpec) -> Any:
            grid_params = [k for k, _ in spec.args]
            return spec.get(grid_params[0]) if grid_params else None

        return {
            "grid": [param(s) for s in self.specs],
            "evaluated": [param(s) for s in self.evaluated],
            f"{self.select}_{self.metric}": {
                str(param(self.specs[i])): direction * v for i, v in self.trace.values.items()
            },
            "evaluations": len(self.trace.values),
            "grid_points": len(self.specs),
            "scanned": self.trace.scanned,
            "chosen": param(self.best),
            "chosen_params": self.best.params(),
            f"chosen_{self.select}_{self.metric}": self.selected(),
            f"chosen_{self.metric}": self.reported(),
        }


def _partial(wb: Workbench, spec: ScheduleSpec) -> PointResult | None:
    """A point with whatever metrics are stored (None without its point row); never computes."""
    return wb.stored(spec, need=())


def find_best(
    wb: Workbench,
    specs: Sequence[ScheduleSpec],
    seeds: Sequence[int] = (),
    metric: str = "perplexity",
    progress: Progress | None = None,
    on_point: Callable[[int, ScheduleSpec, PointResult], None] | None = None,
    compute: bool = True,
) -> FindBest | None:
    """The best of ``specs`` (a grid ordered by its parameter, e.g. ``methods.sweep_grid``) by ``metric``
    on the selection split (mean over ``seeds``; default: the Workbench's own seed), then the chosen
    spec measured on every split. Each evaluated point is stored as it finishes.

    ``compute=False`` replays the search on stored points only and returns None if it needs one more."""
    if not specs:
        raise ValueError("find-best needs at least one grid point")
    entry = check_metric(metric)
    if metric not in wb.setup.metrics:
        raise ValueError(f"metric {metric} is not measured by this setup; measured: {', '.join(wb.setup.metrics)}")
    seeds = tuple(seeds) or (wb.setup.calib.seed,)
    select = wb.setup.select_split
    if metric == "zeroshot" and select == VALIDATION:  # refused before any point is computed
        zeroshot.check_selectable(wb.setup.zeroshot.tasks, wb.setup.zeroshot.items)
    points: dict[ScheduleSpec, list[PointResult]] = {}
    bound = max_evaluations(len(specs)) + 1
    sign = 1.0 if entry.lower_is_better else -1.0
    # a probe is measured on the selection metric alone (with zero-shot in the setup, a perplexity search
    # would otherwise score every probe's validation items too); the chosen spec gets every metric
    probing = wb.variant(replace(wb.setup, metrics=(metric,)))

    def measured(
        base: Workbench, spec: ScheduleSpec, splits: Sequence[str] | None, label: str, fraction: float
    ) -> list[PointResult]:
        out = []
        for k, seed in enumerate(seeds):
            bench = base.reseeded(seed)
            if not compute:
                point = _partial(bench, spec)
                if point is None or any(math.isnan(point.value(metric, s)) for s in (splits or bench.setup.splits)):
                    raise NotStored(spec.describe())
            else:
                sub = scaled(progress, fraction + k / len(seeds) / bound, 1 / len(seeds) / bound)
                report = (lambda f, m, s=sub: s(f, f"{label} seed {seed}: {m}")) if sub else None
                point = bench.run(spec, report, splits=splits)
                if on_point:
                    on_point(seed, spec, point)
            out.append(point)
        points[spec] = out
        return out

    def objective(index: int) -> float:
        spec = specs[index]
        label = f"probe {len(points) + 1} ({spec.describe()})"
        found = measured(probing, spec, [select], label, len(points) / bound)
        return sign * spread([p.value(metric, select) for p in found]).mean

    try:
        trace = find_min(len(specs), objective)
        best = specs[trace.best]
        points[best] = measured(wb, best, None, f"chosen {best.describe()}", (bound - 1) / bound)
    except NotStored:
        return None
    if progress:
        progress(1.0, f"best {best.describe()} after {len(trace.values)} of {len(specs)} grid points")
    return FindBest(tuple(specs), trace, points, metric, select)


def atp_grid(num_blocks: int, sparsity: float, step: float = published.GRID_STEP) -> list[ScheduleSpec]:
    """ATP's beta grid (without uniform), as a sweep tries it; an error when no grid point fits."""
    specs = methods.sweep_grid("atp", num_blocks, sparsity, step)
    if not specs:
        raise published.no_grid_point(num_blocks, sparsity, step)
    return specs


# -- a comparison with find-best (the Compare page's default, ``atp-viz compare --find-best``) ----
FAST_CALIBRATION = "cached"  # the fast comparison's calibration mode: statistics from one dense pass


def fast_setup(setup: Setup) -> Setup:
    """``setup`` as the fast comparison runs it: cached calibration (no calibration forward per point)."""
    return replace(setup, calibration=FAST_CALIBRATION)


@dataclass
class FastCompare:
    """Each cell's points: a grid cell holds its find-best probes (the chosen one measured on every
    split), a one-schedule cell its point measured on the evaluation split only (nothing to select)."""

    found: dict[ScheduleSpec, list[PointResult]] = field(default_factory=dict)
    searches: dict[tuple[str, float], FindBest] = field(default_factory=dict)
    pending: list[Cell] = field(default_factory=list)  # cells not finished (stored-only view)


def fast_compare(
    wb: Workbench,
    cells: Sequence[Cell],
    seeds: Sequence[int] = (),
    progress: Progress | None = None,
    on_point: Callable[[int, ScheduleSpec, PointResult], None] | None = None,
    compute: bool = True,
) -> FastCompare:
    """Run (or, with ``compute=False``, read back) every cell; ``compare_rows(cells, result.found)``
    builds the table. Cells run one after another, each stored as it finishes."""
    seeds = tuple(seeds) or (wb.setup.calib.seed,)
    metric = wb.setup.metrics[0]
    out = FastCompare()
    for index, cell in enumerate(cells):
        sub = scaled(progress, index / len(cells), 1 / len(cells))
        label = f"[{index + 1}/{len(cells)}] {methods.label(cell.method)} S = {cell.sparsity:g}"
        report = (lambda f, m, s=sub, t=label: s(f, f"{t}: {m}")) if sub else None
        if len(cell.specs) > 1:
            search = find_best(wb, cell.specs, seeds, progress=report, on_point=on_point, compute=compute)
            if search is None:  # its row appears when the search has finished (probes are stored meanwhile)
                out.pending.append(cell)
                continue
            out.searches[(cell.method, cell.sparsity)] = search
            out.found.update(search.points)
            continue
        spec = cell.specs[0]
        points = []
        for seed in seeds:
            bench = wb.reseeded(seed)
            point = bench.run(spec, report, splits=[EVALUATION]) if compute else _partial(bench, spec)
            if point is None or math.isnan(point.value(metric, EVALUATION)):
                break
            points.append(point)
            if on_point and compute:
                on_point(seed, spec, point)
        if len(points) < len(seeds):
            out.pending.append(cell)
        if points:
            out.found[spec] = points
    return out


# -- what the dashboard shows of a search --------------------------------------------------------
BUTTON_HELP = (
    "Search the grid for the best beta instead of running all of it: a Fibonacci (golden-section) search on "
    "the validation split, which uses the U-shape of the curve (about log_phi(n) + 1 of the n grid points), with a "
    "guard that checks the winner's neighbours and scans between minima when the probes are not U-shaped. Only "
    "the chosen beta is measured on the evaluation split. Probes are stored: Run sweep reuses them."
)
FAST_COMPARE_NOTE = (
    "**Fast default** (turn off for the paper's protocol): ATP's beta is found by a Fibonacci (golden-section) "
    "search over the grid on the validation split (about log_phi(n) + 1 of its n points; guarded against a "
    "non-U-shaped curve), and only the chosen beta is measured on the evaluation split; calibration is "
    "**cached** (each linear's dense statistics from one pass, no calibration forward per point, no "
    "reconstruction errors); a method without a grid (one setting) is measured on the evaluation split only, since "
    "nothing is selected for it. Off: every grid point, both splits, the sidebar's "
    "calibration (sequential: the paper's)."
)


def found_text(search: FindBest) -> str:
    """One line for the dashboard: the chosen value, how many grid points it took, its two numbers."""
    summary = search.summary()
    return (
        f"Find best: beta = {summary['chosen']:.4g} after {summary['evaluations']} of {summary['grid_points']} grid "
        f"points{' (the probes were not U-shaped: scanned between their minima)' if search.trace.scanned else ''}; "
        f"chosen on {search.select} {search.metric} {metric_text(search.metric, search.selected())}, evaluation "
        f"{search.metric} {metric_text(search.metric, search.reported())}."
    )


def probe_table(search: FindBest) -> list[dict[str, Any]]:
    """The probes in the order they were evaluated, with their selection value (mean over seeds)."""
    summary = search.summary()
    values = summary[f"{search.select}_{search.metric}"]
    return [
        {
            "probe": k + 1,
            "beta": beta,
            f"{search.metric} ({search.select})": values[str(beta)],
            "chosen": beta == summary["chosen"],
        }  # fmt: skip
        for k, beta in enumerate(summary["evaluated"])
    ]
