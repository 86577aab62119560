"""The prunable linears of a model's blocks, and the rate of each linear a schedule gives.

A schedule gives each block one rate (the paper: ``BlockRates``); a method may also give linear types (the
attention-MLP offset: ``methods.linear_split``) or each linear (LSA's projections: ``Method.per_linear``)
rates of their own, pruned through ``LinearRates`` and stored with the point.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

from atp_viz.pruning.layer_stats import block_param_counts, prunable_linears
from atp_viz.schedules import methods, profiles, published
from atp_viz.schedules.methods import ScheduleSpec

Statistics = Callable[[], dict[str, np.ndarray]]  # the per-block statistics of a spec, computed when asked


class LinearLayout:
    """Names and sizes of every block's prunable linears: each block's weight count (``param_counts``), the
    linear names of each block (``linear_names``) and the attention / MLP weights of each (``group_counts``)."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        self.param_counts = block_param_counts(blocks)
        linears = [prunable_linears(block) for block in blocks]
        self.linear_names = [list(named) for named in linears]
        sizes = [{name: lin.weight.numel() for name, lin in named.items()} for named in linears]
        self.group_counts = profiles.group_counts(sizes)  # (blocks, 2): attention and MLP weights

    def per_linear(self, spec: ScheduleSpec, statistics: Statistics) -> np.ndarray | None:
        """(blocks x linears) rates when ``spec`` gives each linear its own rate (LSA's projections), else None."""
        if spec.entry.per_linear is None:
            return None
        return methods.per_linear_rates(spec, statistics())

    def rate_map(self, spec: ScheduleSpec, rates: np.ndarray, statistics: Statistics) -> published.RateMap:
        """``BlockRates`` (the paper), or ``LinearRates`` when ``spec`` gives linear types (or linears) their own
        rates."""
        table = self.per_linear(spec, statistics)
        if table is not None:
            return published.LinearRates(
                rates,
                {(i, n): float(table[i, j]) for i, names in enumerate(self.linear_names) for j, n in enumerate(names)},
            )
        split = methods.linear_split(spec, rates, self.group_counts)
        if split is None:
            return published.BlockRates(rates)
        return published.LinearRates(rates, profiles.linear_table(split, self.linear_names))

    def linear_rates(self, spec: ScheduleSpec, rates: np.ndarray, statistics: Statistics) -> dict[str, list[float]]:
        """Rates per linear type (``profiles.LINEAR_GROUPS``), or per linear name when each linear has its own
        (LSA's projections), or {} when each block has one rate."""
        table = self.per_linear(spec, statistics)
        if table is not None:
            return {name: table[:, j].tolist() for j, name in enumerate(self.linear_names[0])}
        split = methods.linear_split(spec, rates, self.group_counts)
        return {} if split is None else {g: split[:, j].tolist() for j, g in enumerate(profiles.LINEAR_GROUPS)}
