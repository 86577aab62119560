"""What one pruned model measured, how it is stored, and choosing the best of several.

A ``PointResult`` holds the schedule that was applied, per-block arrays (rates, achieved sparsity,
reconstruction errors) and ``metrics``: a flat ``dict[str, float]`` keyed ``"<split>/<metric>"``
(``metrics.metric_key``). Stored records of either shape read back (``from_record``): records
written before metrics were a mapping hold ``perplexity`` as a field.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atp_viz.measure.metrics import EVALUATION, VALIDATION, check_metric, metric_key, upgrade_metrics

ARRAYS = ("rates", "layer_sparsity", "cumulative_error", "local_error", "cumulative_error_abs", "local_error_abs")


@dataclass
class PointResult:
    """One pruned model's measurements; arrays have one entry per decoder block."""

    method: str
    sparsity: float
    rates: np.ndarray
    layer_sparsity: np.ndarray
    cumulative_error: np.ndarray
    local_error: np.ndarray
    cumulative_error_abs: np.ndarray
    local_error_abs: np.ndarray
    achieved_sparsity: float  # parameter-weighted fraction of zeros over all prunable linears
    wall_time: float  # seconds to prune and measure (or to prune, for a point whose metrics came later)
    params: dict[str, Any] = field(default_factory=dict)  # the schedule's parameters (ScheduleSpec.params)
    metrics: dict[str, float] = field(default_factory=dict)
    # rates per linear type when they differ within a block ({"attention": [...], "mlp": [...]}, one
    # rate per block each; ``profiles.LINEAR_GROUPS``); empty when every linear took its block's rate
    linear_rates: dict[str, list[float]] = field(default_factory=dict)
    key: str = ""
    cached: bool = False  # read from the store rather than computed now

    @property
    def beta(self) -> float:
        """ATP's slope (0 for every other method)."""
        return float(self.params.get("beta", 0.0))

    def value(self, metric: str = "perplexity", split: str = EVALUATION) -> float:
        """The metric on ``split`` (NaN when it was not measured)."""
        return self.metrics.get(metric_key(metric, split), math.nan)

    @property
    def perplexity(self) -> float:
        """Perplexity on the evaluation split: the number a report shows."""
        return self.value("perplexity", EVALUATION)

    def to_record(self) -> dict[str, Any]:
        """JSON-able fields (everything but ``key`` and ``cached``)."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in ("key", "cached")]
        return {
            n: (getattr(self, n).tolist() if isinstance(getattr(self, n), np.ndarray) else getattr(self, n))
            for n in names
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], key: str = "", cached: bool = True) -> PointResult:
        """A stored record of either shape (``metrics`` mapping, or the earlier ``perplexity`` field)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"key", "cached", "metrics"}
        values: dict[str, Any] = {
            k: (np.asarray(v, dtype=float) if k in ARRAYS else v) for k, v in record.items() if k in names
        }
        params = dict(values.pop("params", None) or {})
        return cls(**values, params=params, metrics=upgrade_metrics(record), key=key, cached=cached)


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one value over calibration seeds."""

    mean: float
    std: float  # 0 with a single seed
    n: int

    def overlaps(self, other: Spread) -> bool:
        """Whether the two mean +- std bands overlap: the difference is within the seed noise."""
        return abs(self.mean - other.mean) <= self.std + other.std


def spread(values: Sequence[float]) -> Spread:
    """Spread of ``values`` (NaN values ignored; NaN mean when none is left)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return Spread(math.nan, math.nan, 0)
    return Spread(float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0, int(finite.size))


def seed_spread(points: Sequence[PointResult], metric: str = "perplexity", split: str = EVALUATION) -> Spread:
    """The spread of ``metric`` on ``split`` over the same schedule run under several seeds."""
    return spread([p.value(metric, split) for p in points])


def refuse_empty_zeroshot(values: Mapping[str, float], metric: str, split: str) -> None:
    """Zero-shot accuracy selects only where some candidate has a value on ``split``: with every item in the
    evaluation part (items = 0) the validation part is empty and choosing by it is refused in one line."""
    if metric == "zeroshot" and values and all(math.isnan(v) for v in values.values()):
        raise ValueError(
            f"no point has a {split} zero-shot accuracy to select by (items = 0 puts every item in the evaluation "
            "part); select by perplexity, or score fewer items per task than the smallest task has"
        )


def best_group(
    groups: Sequence[Sequence[PointResult]], metric: str = "perplexity", split: str = VALIDATION
) -> tuple[int, int | None]:
    """Index of the best group (one schedule under several seeds) by its mean ``metric`` on ``split``,
    and of the runner-up (None with fewer than two groups)."""
    entry = check_metric(metric)
    means = {str(i): seed_spread(g, metric, split).mean for i, g in enumerate(groups)}
    refuse_empty_zeroshot(means, metric, split)
    best = int(entry.best(means))
    rest = {k: v for k, v in means.items() if k != str(best)}
    return best, (int(entry.best(rest)) if rest else None)


def within_noise(
    groups: Sequence[Sequence[PointResult]],
    best: int,
    runner: int | None,
    metric: str = "perplexity",
    split: str = VALIDATION,
) -> bool | None:
    """Whether the runner-up's mean +- std band over seeds overlaps the best's (None without a runner-up
    or with a single seed: no band to compare)."""
    chosen = seed_spread(groups[best], metric, split)
    if runner is None or chosen.n < 2:
        return None
    return chosen.overlaps(seed_spread(groups[runner], metric, split))


def best_point(points: Sequence[PointResult], metric: str = "perplexity", split: str = VALIDATION) -> PointResult:
    """The point with the best ``metric`` on ``split`` (validation by default: select there, report on
    evaluation). Points without that value are never chosen unless no point has it."""
    if not points:
        raise ValueError("best_point needs at least one point")
    entry = check_metric(metric)
    values = {str(i): p.value(metric, split) for i, p in enumerate(points)}
    refuse_empty_zeroshot(values, metric, split)
    return points[int(entry.best(values))]


def runner_up(points: Sequence[PointResult], metric: str = "perplexity", split: str = VALIDATION) -> PointResult | None:
    """The second best point (None with fewer than two points)."""
    if len(points) < 2:
        return None
    best = best_point(points, metric, split)
    return best_point([p for p in points if p is not best], metric, split)
