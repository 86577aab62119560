"""What the dense model tells about itself, and the dense weights every point starts from.

``DenseStatistics`` computes, from the dense weights whatever point the model holds, the block inputs of
the calibration batch, the per-linear statistics (one dense pass, cached per machine as a file) and the
per-block statistics schedule methods need (``STATISTICS``: OWL's outlier ratios, AlphaPruning's alphas,
DLP's block scores, LSA's errors, DSA's graph values). ``DenseWeights`` keeps a copy of every prunable
linear's dense weight (``offload.FileWeights`` re-reads them from the files instead).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atp_viz.experiment.setup import Setup
from atp_viz.models.loading import LoadedModel, cache_dir
from atp_viz.progress import Progress, counted
from atp_viz.pruning.cached import (
    DenseStats,
    block_scores_from_stats,
    collect_dense_stats,
    dsa_values_from_stats,
    load_stats,
    outlier_ratios_from_stats,
    save_stats,
    stat_kinds,
)
from atp_viz.pruning.calibration import BlockCalls, capture_block_calls
from atp_viz.pruning.layer_stats import block_alphas, prunable_linears
from atp_viz.pruning.lsa_stats import ERROR_KIND, block_errors, cached_errors
from atp_viz.pruning.offload import FileWeights
from atp_viz.pruning.pruners import get_pruner
from atp_viz.schedules import published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import fingerprint

STATS_KIND = "calib-stats"
STATS_FOLDER = "stats"  # under the cache dir: <fingerprint>.safetensors


class DenseWeights:
    """A copy of every prunable linear's dense weight; each point starts from these."""

    def __init__(self, blocks: torch.nn.ModuleList) -> None:
        self.blocks = blocks
        self.weights = {
            (i, n): lin.weight.detach().clone() for i, b in enumerate(blocks) for n, lin in prunable_linears(b).items()
        }

    def restore(self, block: int | None = None) -> None:
        """Copy the dense weights back into every block, or into block ``block`` alone."""
        with torch.no_grad():
            for i, module in enumerate(self.blocks):
                if block is None or i == block:
                    for name, lin in prunable_linears(module).items():
                        lin.weight.copy_(self.weights[(i, name)])


# statistic a schedule method needs -> its computation on the dense model, called as
# f(statistics, progress, **params) with the method's ``stat_params`` (OWL passes m, AlphaPruning its estimator)
STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "outlier_ratios": lambda stats, progress, m=published.OWL_M, **_: stats.outlier_ratios(float(m), progress),
    "alphas": lambda stats, progress, estimator="official", precision=published.SPECTRA_PRECISION, **_: stats.alphas(
        str(estimator), str(precision)
    ),
    "block_scores": lambda stats, progress, **_: stats.block_scores(progress),
    "lsa_errors": lambda stats, progress, **_: stats.lsa_errors(progress),
    "linear_sizes": lambda stats, progress, **_: stats.linear_sizes(),
    "dsa_values": lambda stats, progress, graph, nonfinite, **_: stats.dsa_values(str(graph), str(nonfinite), progress),
}


class DenseStatistics:
    """What the dense model tells about itself: block inputs, per-linear statistics, per-block metrics.

    Computed once per Workbench (the per-linear statistics also once per machine: a cache file) and
    always from the dense weights, whatever point the model holds.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        setup: Setup,
        calibration_ids: torch.Tensor,
        identity: dict[str, Any],
        dense: DenseWeights | FileWeights,
    ) -> None:
        self.loaded, self.setup, self.calibration_ids, self.dense = loaded, setup, calibration_ids, dense
        self.pruner = get_pruner(setup.prune.pruner)
        self.identity = {k: v for k, v in identity.items() if k not in ("pruner", "nm", "mode")}
        self._calls: BlockCalls | None = None
        self._stats: DenseStats | None = None
        self._per_block: dict[tuple[str, Any], np.ndarray] = {}
        self.source = ""  # "file" or "computed" once the per-linear statistics are there
        self.lsa_source = ""  # the same for LSA's errors

    def calls(self) -> BlockCalls:
        if self._calls is None:
            self._calls = capture_block_calls(
                self.loaded.model, self.loaded.blocks, self.calibration_ids, self.setup.batch_size
            )
        return self._calls

    def path(self, kinds: tuple[str, ...] | None = None) -> Path:
        """Where this model + calibration setting keeps its dense statistics (``kinds``: default the pruner's)."""
        key = fingerprint(kind=STATS_KIND, **self.identity, kinds=kinds or stat_kinds(self.pruner))
        return cache_dir() / STATS_FOLDER / f"{key}.safetensors"

    def linears(self, progress: Progress | None = None) -> DenseStats:
        """Dense statistics of every linear: read from the cache file, or one dense pass (then saved)."""
        if self._stats is None:
            stats = load_stats(self.path(), self.loaded.device)
            self.source = "file" if stats is not None else "computed"
            if stats is None:
                self.dense.restore()
                stats = collect_dense_stats(
                    self.dense.blocks,
                    self.calls(),
                    stat_kinds(self.pruner),
                    self.setup.batch_size,
                    counted(progress, "dense statistics: block"),
                )
                save_stats(stats, self.path(), {"model": self.setup.model, "corpus": self.setup.corpus})
            self._stats = stats
        return self._stats

    def alphas(self, estimator: str = "official", precision: str = published.SPECTRA_PRECISION) -> np.ndarray:
        """AlphaPruning's block metric from the dense weights (``layer_stats.block_alphas``)."""
        if ("alphas", (estimator, precision)) not in self._per_block:
            self.dense.restore()
            self._per_block[("alphas", (estimator, precision))] = block_alphas(self.dense.blocks, estimator, precision)
        return self._per_block[("alphas", (estimator, precision))]

    def block_scores(self, progress: Progress | None = None) -> np.ndarray:
        """DLP's mean Wanda score per block, from the dense statistics."""
        if ("scores", 0) not in self._per_block:
            stats = self.linears(progress)
            self.dense.restore()
            self._per_block[("scores", 0)] = block_scores_from_stats(self.dense.blocks, stats)
        return self._per_block[("scores", 0)]

    def dsa_values(self, graph: str, nonfinite: str, progress: Progress | None = None) -> np.ndarray:
        """DSA's raw graph value per block from the dense statistics (NaN / inf kept for the rate mapping)."""
        if ("dsa", (graph, nonfinite)) not in self._per_block:
            stats = self.linears(progress)
            self.dense.restore()
            sequences = int(self.calibration_ids.shape[0])
            self._per_block[("dsa", (graph, nonfinite))] = dsa_values_from_stats(
                self.dense.blocks, stats, graph, nonfinite, sequences
            )
        return self._per_block[("dsa", (graph, nonfinite))]

    def lsa_errors(self, progress: Progress | None = None) -> np.ndarray:
        """LSA's minimal linear reconstruction error of every (block, linear), from one dense pass (then a cache file
        beside the per-linear statistics': ``lsa_stats.cached_errors``)."""
        if ("lsa", 0) not in self._per_block:

            def compute() -> np.ndarray:
                self.dense.restore()
                calls, report = self.calls(), counted(progress, "LSA errors: block")
                return block_errors(self.dense.blocks, calls, self.setup.batch_size, progress=report)

            meta = {"model": self.setup.model, "corpus": self.setup.corpus}
            errors, read = cached_errors(self.path((ERROR_KIND,)), self.dense.blocks, compute, meta)
            self._per_block[("lsa", 0)], self.lsa_source = errors, "file" if read else "computed"
        return self._per_block[("lsa", 0)]

    def linear_sizes(self) -> np.ndarray:
        """(blocks x linears) weight counts, each block's linears in their order."""
        sizes = [[lin.weight.numel() for lin in prunable_linears(block).values()] for block in self.dense.blocks]
        if len({len(row) for row in sizes}) != 1:
            raise ValueError("rates per linear need the same linears in every block")
        return np.array(sizes, dtype=np.float64)

    def outlier_ratios(self, m: float, progress: Progress | None = None) -> np.ndarray:
        """OWL's D_i from the dense statistics (one dense pass, shared with the cached mode)."""
        if ("outliers", m) not in self._per_block:
            stats = self.linears(progress)
            self.dense.restore()
            self._per_block[("outliers", m)] = outlier_ratios_from_stats(self.dense.blocks, stats, m)
        return self._per_block[("outliers", m)]

    def of(self, spec: ScheduleSpec, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """The per-block statistics ``spec``'s method needs, with its ``stat_params`` (computed once, then cached)."""
        params = {name: spec.get(name) for name in spec.entry.stat_params}
        return {need: STATISTICS[need](self, progress, **params) for need in spec.entry.needs}
