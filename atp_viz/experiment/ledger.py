"""A Workbench's results: the keys of its points and their rows, in the results store or in memory.

A ``point`` row per pruned model (rates, achieved sparsity, errors) and a ``metric`` row per (point,
metric, split), so a metric added later is measured without losing what is stored; a point is complete
by one rule (``StoredPoint.complete``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
import torch

from atp_viz.experiment.setup import Setup
from atp_viz.experiment.shipped import ShippedResults
from atp_viz.measure.metrics import METRICS, metric_key
from atp_viz.measure.points import PointResult
from atp_viz.models.data import Corpus
from atp_viz.progress import Progress, scaled
from atp_viz.pruning.calibration import PruneReport
from atp_viz.schedules import published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore, fingerprint

POINT_KIND, METRIC_KIND, DENSE_KIND = "point", "metric", "dense"
StoredRow = tuple[str, str, dict[str, Any], dict[str, Any]]  # key, kind, config, record
# (metric, split, progress) -> the metric's values of the model as it is now
Measure = Callable[[str, str, Progress | None], dict[str, float]]


class StoredPoint(NamedTuple):
    """What the store holds of one point: its key, its row (None when not stored), the metric values
    stored (``"split/metric"`` keys) and the (metric, split) of the setup still missing."""

    key: str
    record: dict[str, Any] | None
    found: dict[str, float]
    missing: list[tuple[str, str]]

    def complete(self, need: Sequence[str]) -> bool:
        """The one rule for a complete point: its row and every metric of the setup on each split of ``need``."""
        return self.record is not None and not any(split in need for _, split in self.missing)

    def result(self, cached: bool = True) -> PointResult:
        assert self.record is not None, "a point without its row has no result"
        return PointResult.from_record({**self.record, "metrics": self.found}, self.key, cached=cached)


class Ledger:
    """A Workbench's keys and stored rows: a point row per pruned model and a metric row per
    (point, metric, split), in the results store or in memory when there is none (first writer wins).
    ``written``: every row put, in order, when the ledger collects them (``collecting``)."""

    def __init__(
        self, store: ResultStore | None, setup: Setup, model: str, corpus: Corpus, windows: Mapping[str, torch.Tensor]
    ) -> None:
        self.store, self.setup, self.model, self.corpus, self.windows = store, setup, model, corpus, windows
        self.memory: dict[str, dict[str, Any]] = {}
        self.shipped: ShippedResults | None = None  # read-only rows under the store's (``shipped.py``)
        self.written: list[StoredRow] | None = None

    def collecting(self) -> Ledger:
        """A ledger without a store that lists every row put (a worker hands them to the driver)."""
        ledger = Ledger(None, self.setup, self.model, self.corpus, self.windows)
        ledger.written = []
        return ledger

    def get(self, key: str) -> dict[str, Any] | None:
        found = self.store.get(key) if self.store is not None else self.memory.get(key)
        if found is None and self.shipped is not None:
            return self.shipped.get(key)
        return found

    def shipped_in_use(self, keys: Sequence[str]) -> list[str]:
        """The ``keys`` whose row comes from the shipped results (the store has none of its own)."""
        if self.shipped is None:
            return []
        mine = self.store.keys_done(keys) if self.store is not None else set(self.memory)
        return [key for key in keys if key in self.shipped and key not in mine]

    def put(self, key: str, kind: str, config: dict[str, Any], record: dict[str, Any]) -> None:
        if self.store is None:
            self.memory.setdefault(key, record)
        else:
            self.store.put(key, kind, self.setup.model, {**self.setup.describe(), **config}, record)
        if self.written is not None:
            self.written.append((key, kind, config, record))

    def prune_identity(self) -> dict[str, Any]:
        """What decides a pruned model: weights, calibration text and settings, pruner, mode, dtype."""
        s = self.setup
        calibration_text = self.corpus.split_fingerprint("calibration")
        return {"model": self.model, "calibration_text": calibration_text, "calib": asdict(s.calib),
                "pruner": s.prune.pruner, "nm": s.prune.nm, "mode": s.calibration, "dtype": s.dtype}  # fmt: skip

    def point_key(self, spec: ScheduleSpec) -> str:
        return fingerprint(kind=POINT_KIND, **self.prune_identity(), schedule=spec.params())

    def dense_key(self) -> str:
        return fingerprint(kind=DENSE_KIND, model=self.model, dtype=self.setup.dtype)

    def values_key(self, metric: str, split: str) -> dict[str, Any]:
        """What ``metric``'s values on ``split`` depend on (the split's text and windows, or its items)."""
        return METRICS[metric].values_key(self.setup, self.corpus, self.windows, split)

    def metric_keys(self, point_key: str) -> dict[tuple[str, str], str]:
        """(metric, split) -> key of its row, for every metric and split of the setup."""
        return {
            (m, split): fingerprint(
                kind=METRIC_KIND, point=point_key, metric=m, split=split, **self.values_key(m, split)
            )
            for m in self.setup.metrics
            for split in self.setup.splits
        }

    def metrics_of(self, point_key: str) -> tuple[dict[str, float], list[tuple[str, str]]]:
        """Stored metric values of a point (``"split/metric"`` keys) and the (metric, split) still missing."""
        found: dict[str, float] = {}
        missing = []
        for (name, split), key in self.metric_keys(point_key).items():
            if (row := self.get(key)) is None:
                missing.append((name, split))
                continue
            found[metric_key(name, split)] = float(row["values"][name])
            found.update({f"{split}/{k}": float(v) for k, v in row["values"].items() if k != name})
        return found, missing

    def point(self, spec: ScheduleSpec) -> StoredPoint:
        """What is stored of a point: key, row (or None), metric values and the (metric, split) missing."""
        key = self.point_key(spec)
        return StoredPoint(key, self.get(key), *self.metrics_of(key))

    def measure(
        self,
        point_key: str,
        missing: Sequence[tuple[str, str]],
        about: dict[str, Any],
        measure: Measure,
        progress: Progress | None = None,
    ) -> None:
        """Measure each missing (metric, split) of the model as it is now and commit each row at once.

        ``about``: what was measured (the schedule's parameters, or ``{"method": "dense"}``) for queries."""
        keys = self.metric_keys(point_key)
        for index, (name, split) in enumerate(missing):
            started = time.perf_counter()
            values = measure(name, split, scaled(progress, index / len(missing), 1 / len(missing)))
            config = {**about, "point": point_key, "metric": name, "split": split}
            self.put(
                keys[(name, split)], METRIC_KIND, config, {"values": values, "seconds": time.perf_counter() - started}
            )


def point_record(
    spec: ScheduleSpec,
    rates: np.ndarray,
    report: PruneReport,
    weights: np.ndarray,
    seconds: float,
    linear_rates: Mapping[str, list[float]] | None = None,
) -> dict[str, Any]:
    """The stored record of a pruned model (its metrics live in their own rows); ``linear_rates``:
    the rates per linear type when they differ within a block."""
    target = spec.sparsity if spec.entry.takes_sparsity else published.weighted_mean(rates, weights)
    achieved = published.weighted_mean(report.layer_sparsity, weights)
    arrays = (report.layer_sparsity, report.cumulative_error, report.local_error)
    errors_abs = (report.cumulative_error_abs, report.local_error_abs)
    point = PointResult(spec.method, target, rates, *arrays, *errors_abs, achieved, seconds, spec.params())
    point.linear_rates = dict(linear_rates or {})
    return point.to_record()
