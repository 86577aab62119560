"""What a pruned model is measured by, on which split, and which direction is better.

A measurement is a ``Metric`` (perplexity, zero-shot accuracy) taken on a split of the corpus; a point
carries its values as a flat ``dict[str, float]`` keyed ``"<split>/<metric>"`` (``metric_key``). Selecting
(the best beta, a search) reads the ``validation`` split; every reported number reads ``evaluation``.
Adding a metric is one ``METRICS`` entry (label, direction, how it is measured, what keys its values,
whether it can stream) plus the function that measures it; the Workbench, the Compare chart, the
searches and the tables read the entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atp_viz.config import check_choice
from atp_viz.progress import Progress, counted

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
    # (workbench holding the weights to measure, split, progress) -> {metric: value, metric/detail: value}
    measure: Callable[[Any, str, Progress | None], dict[str, float]]
    # what decides the values besides the weights, part of their store key: (setup, corpus, windows, split)
    values_key: Callable[[Any, Any, Mapping[str, Any], str], dict[str, Any]]
    streams: bool = False  # measurable on an offloaded model, block by block during the prune pass
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


def _perplexity(wb: Any, split: str, progress: Progress | None) -> dict[str, float]:
    report = counted(progress, f"{split} perplexity: window")
    return {"perplexity": wb.perplexity(split, report)}  # offloaded: measured block by block over all windows


def _perplexity_key(setup: Any, corpus: Any, windows: Mapping[str, Any], split: str) -> dict[str, Any]:
    return {"text": corpus.split_fingerprint(split), "windows": list(windows[split].shape)}


# zero-shot items: the evaluation split scores part 0 of each task's seeded permutation, validation part 1
ZEROSHOT_PART = {EVALUATION: 0, VALIDATION: 1}
TASK_FIELDS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "items")


def _zeroshot(wb: Any, split: str, progress: Progress | None) -> dict[str, float]:
    """Mean accuracy over the tasks (``zeroshot``), its stderr, acc_norm, and every task's numbers."""
    from atp_viz.measure.zeroshot import mean_accuracy, score_tasks

    config = wb.setup.zeroshot
    report = counted(progress, f"{split} zero-shot: request")
    scores = score_tasks(wb.loaded_model.model, wb.loaded_model.tokenizer, config.tasks, config.items, config.seed,
                         config.batch_size, report, part=ZEROSHOT_PART[split])  # fmt: skip
    if not scores:
        return {"zeroshot": math.nan}
    mean, stderr = mean_accuracy(scores, "acc")
    mean_norm, stderr_norm = mean_accuracy(scores, "acc_norm")
    values = {
        "zeroshot": mean,
        "zeroshot_stderr": stderr,
        "zeroshot_norm": mean_norm,
        "zeroshot_norm_stderr": stderr_norm,
    }
    for name, score in scores.items():
        values |= {f"zeroshot/{name}/{field}": float(getattr(score, field)) for field in TASK_FIELDS}
    return values


def _zeroshot_key(setup: Any, corpus: Any, windows: Mapping[str, Any], split: str) -> dict[str, Any]:
    from atp_viz.measure.zeroshot import data_fingerprint

    config = setup.zeroshot
    return {"data": data_fingerprint(config.tasks, config.items, config.seed, ZEROSHOT_PART[split])}


METRICS: dict[str, Metric] = {
    "perplexity": Metric(
        "perplexity",
        "perplexity (exp of mean token NLL; lower is better)",
        lower_is_better=True,
        measure=_perplexity,
        values_key=_perplexity_key,
        streams=True,
    ),
    "zeroshot": Metric(
        "zeroshot",
        "mean zero-shot accuracy over the tasks (higher is better)",
        lower_is_better=False,
        measure=_zeroshot,
        values_key=_zeroshot_key,
    ),
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
