"""What a pruned model is measured by, on which split, and which direction is better.

A measurement is a ``Metric`` (perplexity today) taken on a ``Split`` of the corpus; a point carries
its values as a flat ``dict[str, float]`` keyed ``"<split>/<metric>"`` (``metric_key``). Selecting
(the best beta, a search) reads the ``validation`` split; every reported number reads ``evaluation``.
Adding a metric is one ``METRICS`` entry plus the function that measures it (``experiment.MEASURES``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from atp_viz.config import check_choice

VALIDATION = "validation"  # selects: best beta, search winners
EVALUATION = "evaluation"  # reports: every number shown next to a method
SPLITS = (VALIDATION, EVALUATION)
LEGACY_PERPLEXITY = "perplexity"  # records written before metrics were a mapping held this field


@dataclass(frozen=True)
class Metric:
    """One measurement of a pruned model."""

    name: str
    label: str  # axis and column title
    lower_is_better: bool
    digits: int = 4  # significant digits when printed

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` beats ``b`` (NaN never beats anything)."""
        if math.isnan(a):
            return False
        if math.isnan(b):
            return True
        return a < b if self.lower_is_better else a > b

    def best(self, values: Mapping[str, float]) -> str:
        """The key of the best value (ties: the first one)."""
        if not values:
            raise ValueError(f"no {self.name} values to choose from")
        best = next(iter(values))
        for key, value in values.items():
            if self.better(value, values[best]):
                best = key
        return best


METRICS: dict[str, Metric] = {
    "perplexity": Metric("perplexity", "perplexity (exp of mean token NLL; lower is better)", lower_is_better=True),
    "zeroshot": Metric("zeroshot", "mean zero-shot accuracy over the tasks (higher is better)", lower_is_better=False),
}


def check_metric(name: str) -> Metric:
    check_choice("metric", name, tuple(METRICS))
    return METRICS[name]


def check_split(name: str) -> str:
    check_choice("split", name, SPLITS)
    return name


def metric_key(metric: str, split: str = EVALUATION) -> str:
    """``"evaluation/perplexity"``: where a value lives in a point's ``metrics`` mapping."""
    return f"{check_split(split)}/{check_metric(metric).name}"


def upgrade_metrics(record: Mapping[str, object]) -> dict[str, float]:
    """The ``metrics`` mapping of a stored record, from either shape.

    Records written before metrics were a mapping hold the evaluation perplexity as a top-level
    ``perplexity`` field; they read back as ``{"evaluation/perplexity": value}``.
    """
    metrics = record.get("metrics")
    if isinstance(metrics, Mapping):
        return {str(k): float(v) for k, v in metrics.items()}
    legacy = record.get(LEGACY_PERPLEXITY)
    return {} if legacy is None else {f"{EVALUATION}/perplexity": float(legacy)}  # type: ignore[arg-type]
