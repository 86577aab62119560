"""Two-dimensional sweeps around ATP's line: beta x attention-MLP offset, beta x curvature p.

An axis (``AXES``, one entry each) names the registry method and parameter it varies and the value
at which the schedule is ATP's own line (offset 0, p = 1). A cell at that value is the ATP spec
itself (beta = 0: the uniform spec), so it shares its stored point with the beta sweep; every other
cell is a spec of the axis's method. Cells whose schedule cannot be built (a slope beyond the
curved profile's bound) are left out. Points are run with ``Workbench.run_many`` / ``run_seeds``:
each is stored as it finishes, and a rerun reads finished points back.

``summarize`` gives the table the CLI prints and the dashboard draws: per cell the mean and
standard deviation over seeds on both splits, the best cell chosen on validation (mean over its
seeds) and reported on evaluation, the best cell on the paper's line, and whether the two are
within the seed noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atp_viz.experiment.executors import Executor, run_seeds
from atp_viz.experiment.workbench import Workbench
from atp_viz.measure.metrics import EVALUATION, VALIDATION
from atp_viz.measure.points import PointResult, Spread, best_group, seed_spread, within_noise
from atp_viz.progress import Progress
from atp_viz.schedules import methods, published
from atp_viz.schedules.methods import ScheduleSpec


@dataclass(frozen=True)
class Axis:
    """The second axis of a 2-D sweep (the first is always ATP's slope beta)."""

    name: str  # CLI value
    label: str
    method: str  # registry method of the cells off the line
    param: str  # its parameter this axis varies
    neutral: float  # the value at which the schedule is ATP's line
    values: tuple[float, ...]  # the default grid
    flat_at_zero: bool  # beta = 0 makes the value irrelevant (the cell is uniform)

    @property
    def entry(self) -> methods.Param:
        return methods.get_method(self.method).param(self.param)


AXES: dict[str, Axis] = {
    "offset": Axis("offset", "attention-MLP offset", "atp", "offset", 0.0, (-0.1, -0.05, 0.0, 0.05, 0.1), False),
    "power": Axis("power", "curvature p", "power", "power", 1.0, (0.5, 1.0, 2.0, 3.0), True),
}


def axis_pair(text: str) -> Axis:
    """``"beta,offset"`` -> the offset axis; ValueError naming the allowed pairs."""
    allowed = ", ".join(f"beta,{name}" for name in AXES)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or parts[0] != "beta" or parts[1] not in AXES:
        raise ValueError(f"axes must be one of {allowed}, got {text!r}")
    return AXES[parts[1]]


def check_values(axis: Axis, values: Sequence[float]) -> tuple[float, ...]:
    """The axis values, each checked against the registry range, sorted and unique."""
    if not values:
        raise ValueError(f"give at least one {axis.label} value ({axis.entry.allowed()})")
    checked = {float(axis.entry.check(v, methods.label(axis.method))) for v in values}
    return tuple(sorted(checked))


def check_betas(betas: Sequence[float], num_blocks: int, sparsity: float) -> tuple[float, ...]:
    """The slopes, each in [0, beta_max(L, S)], sorted and unique."""
    bound = published.beta_max(num_blocks, sparsity)
    if not betas:
        raise ValueError(f"give at least one beta in [0, {bound:.5g}]")
    bad = [b for b in betas if not (math.isfinite(b) and 0 <= b <= bound + published.BETA_TOL)]
    if bad:
        raise ValueError(
            f"beta must be in [0, {bound:.5g}] for {num_blocks} blocks at S = {sparsity:g}, got {bad[0]:g}"
        )
    return tuple(sorted(set(float(b) for b in betas)))


@dataclass(frozen=True)
class Grid2D:
    """The cells of one 2-D sweep: (beta index, value index) -> spec; cells that cannot be built are absent."""

    axis: Axis
    sparsity: float
    num_blocks: int
    betas: tuple[float, ...]
    values: tuple[float, ...]
    cells: dict[tuple[int, int], ScheduleSpec] = field(default_factory=dict)

    def specs(self) -> list[ScheduleSpec]:
        """Each distinct spec once: the paper's line first (shared with the beta sweep), then the rest."""
        ordered = sorted(self.cells.items(), key=lambda item: (not self.on_line(item[0]), item[0]))
        return list(dict.fromkeys(spec for _, spec in ordered))

    def on_line(self, cell: tuple[int, int]) -> bool:
        return self.values[cell[1]] == self.axis.neutral or (self.axis.flat_at_zero and self.betas[cell[0]] == 0)


def cell_spec(axis: Axis, sparsity: float, beta: float, value: float) -> ScheduleSpec:
    """The spec of one cell: ATP's own spec on its line (uniform at beta = 0), else the axis's method."""
    if beta == 0 and (value == axis.neutral or axis.flat_at_zero):
        return ScheduleSpec("uniform", sparsity)
    if value == axis.neutral:
        return ScheduleSpec("atp", sparsity, beta=beta)
    params: dict[str, Any] = {"beta": beta, axis.param: value}
    return ScheduleSpec(axis.method, sparsity, **params)


def build_grid(
    axis: Axis,
    num_blocks: int,
    sparsity: float,
    betas: Sequence[float] | None = None,
    values: Sequence[float] | None = None,
    step: float = published.GRID_STEP,
) -> Grid2D:
    """The grid: ``betas`` (default 0 and ATP's grid with ``step``) x ``values`` (default the axis's)."""
    beta_list = check_betas([0.0, *published.beta_grid(num_blocks, sparsity, step)] if betas is None else betas,
                            num_blocks, sparsity)  # fmt: skip
    value_list = check_values(axis, axis.values if values is None else values)
    cells = {}
    for i, beta in enumerate(beta_list):
        for j, value in enumerate(value_list):
            spec = cell_spec(axis, sparsity, beta, value)
            try:
                methods.build_schedule(spec, num_blocks)
            except ValueError:  # beyond this profile's slope bound
                continue
            cells[(i, j)] = spec
    if not cells:
        raise ValueError(f"no cell of the {axis.label} grid can be built for {num_blocks} blocks at S = {sparsity:g}")
    return Grid2D(axis, sparsity, num_blocks, beta_list, value_list, cells)


@dataclass(frozen=True)
class Summary2D:
    """A 2-D sweep's results: (betas x values) arrays of means and stds over seeds (NaN: not stored),
    the best cell (chosen on ``select``, reported on evaluation), the best on the paper's line and the
    best off it; ``within_noise``: whether the best off the line and the best on it are within the seed
    noise of each other (their mean +- std bands on ``select`` overlap; None with one seed or without
    both)."""

    grid: Grid2D
    metric: str
    select: str
    mean: dict[str, np.ndarray]  # split -> (betas, values)
    std: dict[str, np.ndarray]
    seeds: np.ndarray  # (betas, values) number of seeds measured on ``select``
    best: tuple[int, int] | None
    line_best: tuple[int, int] | None
    off_best: tuple[int, int] | None
    within_noise: bool | None
    points: dict[tuple[int, int], list[PointResult]]

    def table(self) -> list[dict[str, Any]]:
        """One row per cell with stored points, in grid order."""
        axis = self.grid.axis
        rows = []
        for (i, j), points in sorted(self.points.items()):
            row: dict[str, Any] = {"beta": self.grid.betas[i], axis.param: self.grid.values[j]}
            row["method"] = points[0].method
            for split in (VALIDATION, EVALUATION):
                row[f"{self.metric} ({split})"] = float(self.mean[split][i, j])
                row[f"std ({split})"] = float(self.std[split][i, j])
            row |= {"seeds": int(self.seeds[i, j]), "paper line": self.grid.on_line((i, j))}
            rows.append(row | {"best": (i, j) == self.best, "best on line": (i, j) == self.line_best,
                               "best off line": (i, j) == self.off_best})  # fmt: skip
        return rows

    def cell(self, which: tuple[int, int] | None) -> dict[str, Any] | None:
        """A cell's coordinates, spec and numbers (for reports), or None."""
        if which is None:
            return None
        i, j = which
        reported = {split: Spread(float(self.mean[split][i, j]), float(self.std[split][i, j]), int(self.seeds[i, j]))
                    for split in (VALIDATION, EVALUATION)}  # fmt: skip
        spec = self.grid.cells[which]
        return {
            "beta": self.grid.betas[i],
            self.grid.axis.param: self.grid.values[j],
            "schedule": spec.describe(),
            **{f"{self.metric} ({s})": v.mean for s, v in reported.items()},
            **{f"std ({s})": v.std for s, v in reported.items()},
            "seeds": reported[self.select].n,
        }

    def report(self) -> dict[str, Any]:
        """The JSON view the CLI and bench/profiles.py print: the grid, the three chosen cells, the table."""
        return {
            "betas": list(self.grid.betas),
            "values": list(self.grid.values),
            "best": self.cell(self.best),
            "best_on_paper_line": self.cell(self.line_best),
            "best_off_paper_line": self.cell(self.off_best),
            "within_noise": self.within_noise,
            "table": self.table(),
        }


def summarize(
    grid: Grid2D,
    groups: Mapping[ScheduleSpec, Sequence[PointResult]],
    metric: str = "perplexity",
    select: str = VALIDATION,
) -> Summary2D:
    """Summary of whatever is stored so far: ``groups`` maps a spec to its points under each seed run."""
    shape = (len(grid.betas), len(grid.values))
    mean = {s: np.full(shape, np.nan) for s in (VALIDATION, EVALUATION)}
    std = {s: np.full(shape, np.nan) for s in (VALIDATION, EVALUATION)}
    seeds = np.zeros(shape, dtype=np.int64)
    points: dict[tuple[int, int], list[PointResult]] = {}
    for cell, spec in grid.cells.items():
        found = list(groups.get(spec, ()))
        if not found:
            continue
        points[cell] = found
        for split in (VALIDATION, EVALUATION):
            value = seed_spread(found, metric, split)
            mean[split][cell], std[split][cell] = value.mean, value.std
        seeds[cell] = seed_spread(found, metric, select).n
    chosen = [cell for cell in points if seeds[cell] > 0]

    def best_of(cells: list[tuple[int, int]]) -> tuple[int, int] | None:
        return cells[best_group([points[c] for c in cells], metric, select)[0]] if cells else None

    best = best_of(chosen)
    line_best = best_of([c for c in chosen if grid.on_line(c)])
    off_best = best_of([c for c in chosen if not grid.on_line(c)])
    noise = None
    if line_best is not None and off_best is not None:
        noise = within_noise([points[off_best], points[line_best]], 0, 1, metric, select)
    return Summary2D(grid, metric, select, mean, std, seeds, best, line_best, off_best, noise, points)


def run_grid(
    wb: Workbench,
    grid: Grid2D,
    seeds: Sequence[int],
    progress: Progress | None = None,
    splits: Sequence[str] | None = None,
    on_point: Callable[[int, ScheduleSpec, PointResult], None] | None = None,
    executor: Executor | None = None,
) -> dict[ScheduleSpec, list[PointResult]]:
    """Every distinct spec of ``grid`` under every seed on ``executor`` (default: this process), each
    point stored as it finishes (finished ones read back); ``splits``: measure only these (validation
    alone to choose, evaluation later)."""
    return run_seeds(wb, seeds, grid.specs(), executor, progress, on_point, splits)
