"""A loaded model ready to be pruned at any schedule and measured as it is now.

``PrunableModel`` keeps its parts (``parts.Parts``) private: the loaded model, its windows, the dense
weights every point starts from, the dense model's statistics, the layout of its linears and the
calibration mode that prunes it. A ``Workbench`` is a ``PrunableModel`` whose results are stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atp_viz.experiment.parts import Parts
from atp_viz.experiment.setup import Setup
from atp_viz.measure.metrics import METRICS
from atp_viz.measure.perplexity import perplexity
from atp_viz.models.loading import LoadedModel
from atp_viz.progress import Counter, Progress, counted, scaled
from atp_viz.pruning.cached import DenseStats
from atp_viz.pruning.calibration import BlockCalls, CalibrationMode, PruneReport
from atp_viz.pruning.pruners import Pruner
from atp_viz.schedules import methods, published
from atp_viz.schedules.methods import ScheduleSpec


class PrunableModel:
    """A loaded model, its calibration, validation and evaluation windows and its dense weights; ``apply``
    prunes it in place at a schedule, ``restore`` puts the dense weights back."""

    def __init__(self, parts: Parts) -> None:
        self.setup: Setup = parts.setup
        self._loaded, self._corpus, self._windows = parts.loaded, parts.corpus, parts.windows
        self._dense, self._stats, self._layout = parts.dense, parts.stats, parts.layout
        self._mode, self._evaluation = parts.mode, parts.evaluation
        # facts of the model, read by callers: blocks, each block's weight count, each block's linear names, pruner
        self.num_blocks: int = parts.loaded.num_blocks
        self.param_counts, self.linear_names = self._layout.param_counts, self._layout.linear_names
        self.pruner: Pruner = parts.stats.pruner

    @property
    def loaded_model(self) -> LoadedModel:
        """The loaded model (module, tokenizer, device, where its weights are): what exports and timings read."""
        return self._loaded

    @property
    def blocks(self) -> torch.nn.ModuleList:
        """The decoder blocks as a pass sees them (offloaded: iterating streams each block's weights in)."""
        return self._dense.blocks

    @property
    def calibration(self) -> CalibrationMode:
        """The calibration mode that prunes this model (``pruning.modes``)."""
        return self._mode

    def windows(self, split: str) -> torch.Tensor:
        """The token windows of ``split`` (``calibration`` or a split of the setup)."""
        return self._windows[split]

    def values_key(self, metric: str, split: str) -> dict[str, Any]:
        """What ``metric``'s values on ``split`` depend on: a key part of anything stored about them."""
        return METRICS[metric].values_key(self.setup, self._corpus, self._windows, split)

    def measure(self, metric: str, split: str, progress: Progress | None = None) -> dict[str, float]:
        """The values of ``metric`` on ``split`` of the model as it is now (``metrics.METRICS``)."""
        return METRICS[metric].measure(self, split, progress)

    def block_calls(self) -> BlockCalls:
        """The block inputs and call arguments on the calibration batch (computed once)."""
        return self._stats.calls()

    def dense_stats(self, progress: Progress | None = None) -> DenseStats:
        """The dense statistics of every linear (read from the cache file, or one dense pass)."""
        return self._stats.linears(progress)

    def stats_file(self) -> Path:
        """Where the dense statistics of this model and calibration setting are cached (one file per machine)."""
        return self._stats.path()

    @property
    def stats_source(self) -> str:
        """``"file"`` or ``"computed"`` once the dense statistics are there (``""`` before)."""
        return self._stats.source

    def statistics(self, spec: ScheduleSpec, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """The per-block statistics ``spec``'s method needs, with its ``stat_params`` (computed once, then cached)."""
        return self._stats.of(spec, progress)

    def schedule(self, spec: ScheduleSpec, progress: Progress | None = None) -> np.ndarray:
        """Per-block rates for ``spec`` on this model (statistics computed once, when a method needs them)."""
        return methods.build_schedule(spec, self.num_blocks, self.statistics(spec, progress), self.param_counts)

    def rate_map(self, spec: ScheduleSpec, rates: np.ndarray) -> published.RateMap:
        """What each linear is pruned at (``rates.LinearLayout.rate_map``)."""
        return self._layout.rate_map(spec, rates, lambda: self.statistics(spec))

    def linear_rates(self, spec: ScheduleSpec, rates: np.ndarray) -> dict[str, list[float]]:
        """Rates per linear type or name when they differ within a block, else {} (``LinearLayout.linear_rates``)."""
        return self._layout.linear_rates(spec, rates, lambda: self.statistics(spec))

    def perplexity(self, split: str, progress: Counter | None = None) -> float:
        """Perplexity of the model as it is now on ``split`` (offloaded: from the last prune pass)."""
        if self._evaluation is not None:  # offloaded: measured block by block over all windows
            return self._evaluation.perplexity(split, progress)
        return perplexity(self._loaded.model, self._windows[split], self.setup.evaluation.batch_size, progress)

    def dense_weight(self, block: int, linear: str) -> torch.Tensor:
        """The dense weight of ``linear`` in ``block`` (the copy every point starts from; in memory only)."""
        weights = getattr(self._dense, "weights", None)
        if weights is None:
            raise ValueError(f"{self.setup.model} is streamed from its files (offloaded): no dense copy in memory")
        return weights[(block, linear)]

    def restore(self, block: int | None = None) -> None:
        """Put the dense weights back (after a caller pruned them with ``apply``), of one block or all."""
        self._dense.restore(block)

    def apply(
        self, spec: ScheduleSpec, progress: Progress | None = None, measured: Sequence[str] | None = None
    ) -> tuple[np.ndarray, PruneReport]:
        """Prune the dense weights in place with ``spec`` (no evaluation, nothing stored); ``measured``: the
        splits an offloaded model's prune pass also carries the windows of (to be measured next)."""
        if self._evaluation is not None and measured is not None:
            self._evaluation.pending = tuple(dict.fromkeys(measured))
        rates = self.schedule(spec, scaled(progress, 0.0, 0.1))
        return rates, self._mode.prune(self.rate_map(spec, rates), counted(progress, "pruning block", 0.1, 0.9))
