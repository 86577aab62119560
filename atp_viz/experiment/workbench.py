"""One experiment = schedule -> prune -> measure -> store; beta sweeps and strategy comparisons.

A ``Workbench`` holds one loaded model, its corpus windows and a copy of the dense weights, so that
many schedules can be tried without reloading: each point restores the dense weights, prunes,
measures, and commits its result to the store before the next point starts.

It composes small parts instead of branching on names:
- a calibration mode (``CALIBRATION_MODES``): ``sequential`` (paper-faithful, block i calibrated on
  the pruned blocks before it, reconstruction errors measured) or ``cached`` (statistics from one
  dense pass, no per-point calibration forward, no reconstruction errors);
- the statistics schedule methods need (``STATISTICS``: OWL's outlier ratios, AlphaPruning's alphas,
  DLP's block scores);
- the metrics a point is measured by (``metrics.METRICS``: perplexity, zero-shot accuracy), each on the
  validation and evaluation splits.

Stored rows: a ``point`` row per pruned model (rates, achieved sparsity, errors) and a ``metric`` row
per (point, metric, split), so a metric added later is measured without losing what is stored.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from atp_viz.config import CalibConfig, EvalConfig, check_choice, check_int
from atp_viz.experiment import classroom
from atp_viz.experiment.shipped import ShippedResults
from atp_viz.measure.metrics import EVALUATION, METRICS, SPLITS, VALIDATION, metric_key
from atp_viz.measure.points import PointResult, Spread, best_group, seed_spread, spread, within_noise
from atp_viz.measure.zeroshot import ZeroShotConfig
from atp_viz.models.data import DEFAULT_CORPUS, Corpus, calibration_windows, evaluation_windows, load_corpus, token_ids
from atp_viz.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    cache_dir,
    load_model,
    memory_shortfall,
    resolve_device,
    resolve_source,
    torch_dtype,
)
from atp_viz.progress import Progress, counted, labelled, scaled
from atp_viz.pruning.cached import (
    CachedMode,
    DenseStats,
    block_scores_from_stats,
    collect_dense_stats,
    dsa_values_from_stats,
    load_stats,
    outlier_ratios_from_stats,
    save_stats,
    stat_kinds,
)
from atp_viz.pruning.calibration import BlockCalls, ModeInputs, PruneReport, SequentialMode, capture_block_calls
from atp_viz.pruning.layer_stats import block_alphas, block_param_counts, prunable_linears
from atp_viz.pruning.lsa_stats import ERROR_KIND, block_errors, cached_errors
from atp_viz.pruning.offload import (
    CALIBRATION_COPIES,
    EVALUATION_COPIES,
    STREAMED_MODES,
    FileWeights,
    OffloadedModel,
    StreamedPerplexity,
    load_offloaded,
)
from atp_viz.pruning.pruners import PruneConfig, get_pruner
from atp_viz.schedules import methods, profiles, published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore, fingerprint

POINT_KIND, METRIC_KIND, DENSE_KIND, STATS_KIND = "point", "metric", "dense", "calib-stats"
STATS_FOLDER = "stats"  # under the cache dir: <fingerprint>.safetensors
CALIBRATION_MODES: dict[str, type[SequentialMode] | type[CachedMode]] = {
    m.name: m for m in (SequentialMode, CachedMode)
}


@dataclass(frozen=True)
class Setup:
    """Everything except the schedule that decides a result (plus where to run it)."""

    model: str = DEFAULT_MODEL
    corpus: str = DEFAULT_CORPUS
    calib: CalibConfig = field(default_factory=CalibConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    calibration: str = "sequential"
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8  # calibration windows per block call (memory, not results)
    metrics: tuple[str, ...] = ("perplexity",)  # keys of metrics.METRICS
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # used when "zeroshot" is a metric
    splits: tuple[str, ...] = SPLITS  # measured on; without validation, selection reads evaluation (benchmarks)
    trust_remote_code: bool = False  # load options: they decide what may run, not the results
    allow_pickle: bool = False
    offload: bool = False  # blocks stream from their files through the device one at a time (same results)
    auto_offload: bool = True  # offload when the whole model does not fit the device (and offload can run)
    # set by code only (the teacher's unlocked dashboard session): the classroom policy lets it through
    unrestricted: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("calibration mode", self.calibration, tuple(CALIBRATION_MODES))
        check_int("batch size", self.batch_size, 1)
        if not self.metrics:
            raise ValueError(f"choose at least one metric; allowed: {', '.join(METRICS)}")
        for name in self.metrics:
            check_choice("metric", name, tuple(METRICS))
        if EVALUATION not in self.splits:
            raise ValueError(f"the evaluation split is always measured; splits allowed: {', '.join(SPLITS)}")
        for split in self.splits:
            check_choice("split", split, SPLITS)
        if self.offload and set(self.metrics) - set(OFFLOAD_METRICS):
            raise ValueError(
                f"--offload measures {', '.join(OFFLOAD_METRICS)} only (zero-shot scoring runs whole-model forwards); "
                f"drop --offload or use --metrics {','.join(OFFLOAD_METRICS)}"
            )
        if self.offload and self.allow_pickle:
            raise ValueError("--offload reads safetensors files only; drop --allow-pickle or --offload")
        classroom.policy().check_setup(self)  # classroom mode: allowed names and bounds (local mode: nothing)

    @property
    def select_split(self) -> str:
        """Where the best of several points is chosen: validation when it is measured."""
        return VALIDATION if VALIDATION in self.splits else EVALUATION

    def describe(self) -> dict[str, Any]:
        """Flat, JSON-friendly settings: store rows are filtered on these fields."""
        zeroshot = (
            {"tasks": list(self.zeroshot.tasks), "items": self.zeroshot.items} if "zeroshot" in self.metrics else {}
        )
        return zeroshot | {
            "model": self.model,
            "corpus": self.corpus,
            "pruner": self.prune.pruner,
            "nm": list(self.prune.nm) if self.prune.nm else None,
            "calib_samples": self.calib.samples,
            "calib_seqlen": self.calib.seqlen,
            "seed": self.calib.seed,
            "eval_windows": self.evaluation.windows,
            "val_windows": self.evaluation.validation_windows,
            "eval_seqlen": self.evaluation.seqlen,
            "calibration": self.calibration,
            "dtype": self.dtype,
        }


OFFLOAD_METRICS = tuple(name for name, m in METRICS.items() if m.streams)  # measurable block by block
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


class DenseWeights:
    """A copy of every prunable linear's dense weight; each point starts from these."""

    def __init__(self, blocks: torch.nn.ModuleList) -> None:
        self.blocks = blocks
        self.weights = {
            (i, n): lin.weight.detach().clone() for i, b in enumerate(blocks) for n, lin in prunable_linears(b).items()
        }

    def restore(self) -> None:
        with torch.no_grad():
            for i, block in enumerate(self.blocks):
                for name, lin in prunable_linears(block).items():
                    lin.weight.copy_(self.weights[(i, name)])


def offload_needed(setup: Setup, report: Callable[[str], None] | None = None) -> bool:
    """Whether ``auto_offload`` streams this model: it is a local safetensors folder that does not fit the device
    whole, and the setup can run offloaded (perplexity only, no pickle). Otherwise the in-memory load decides
    (and refuses a model that does not fit with its own line)."""
    if setup.offload or not setup.auto_offload or setup.allow_pickle or set(setup.metrics) - set(OFFLOAD_METRICS):
        return False
    source = resolve_source(setup.model, report)
    if not isinstance(source, Path):
        return False
    shortfall = memory_shortfall(source, torch_dtype(setup.dtype), resolve_device(setup.device))
    if shortfall is not None and report:
        report(f"{shortfall}: its blocks stream from the weight files instead (as --offload; --no-offload refuses)")
    return shortfall is not None


def load_for(setup: Setup, progress: Progress | None = None) -> LoadedModel:
    """The model of ``setup`` on its device and dtype, with its load options; offloaded when the setup asks for
    it or when it does not fit whole (``offload_needed``)."""
    report = (lambda message: progress(0.0, message)) if progress else None
    if setup.offload or offload_needed(setup, report):  # its budget counts the calibration and evaluation tokens
        ev = setup.evaluation
        tokens = setup.calib.samples * setup.calib.seqlen * CALIBRATION_COPIES
        tokens += sum(ev.windows_of(split) for split in setup.splits) * ev.seqlen * EVALUATION_COPIES
        return load_offloaded(setup.model, setup.device, setup.dtype, tokens,
                              trust_remote_code=setup.trust_remote_code, progress=report)  # fmt: skip
    return load_model(setup.model, setup.device, setup.dtype, trust_remote_code=setup.trust_remote_code,
                      allow_pickle=setup.allow_pickle, progress=report)  # fmt: skip


def check_lengths(loaded: LoadedModel, setup: Setup) -> None:
    limit = loaded.max_length
    for what, seqlen in (("calibration", setup.calib.seqlen), ("evaluation", setup.evaluation.seqlen)):
        if seqlen > limit:
            raise ValueError(
                f"{what} seqlen {seqlen} exceeds the model's context of {limit} tokens (allowed: 2..{limit})"
            )


def cut_windows(corpus: Corpus, tokenizer: object, setup: Setup) -> dict[str, torch.Tensor]:
    """Calibration windows (seeded, random) and validation / evaluation windows (first N, in order)."""
    ev = setup.evaluation
    out = {
        "calibration": calibration_windows(
            token_ids(tokenizer, corpus.calibration_text), setup.calib.samples, setup.calib.seqlen, setup.calib.seed
        )
    }
    for split in setup.splits:
        out[split] = evaluation_windows(
            token_ids(tokenizer, corpus.text(split)), ev.windows_of(split), ev.seqlen, split
        )
    return out


def given_windows(name: str, windows: Sequence[torch.Tensor]) -> tuple[Corpus, dict[str, torch.Tensor]]:
    """Pre-cut windows (calibration, evaluation) or (calibration, validation, evaluation); benchmarks
    on random-weight models have no tokenizer. With two, validation reuses the evaluation windows."""
    parts = dict(zip(("calibration", *SPLITS), windows if len(windows) == 3 else (windows[0], windows[1], windows[1])))
    digests = {
        k: f"token ids {hashlib.sha256(v.cpu().numpy().tobytes()).hexdigest()[:20]}:{tuple(v.shape)}"
        for k, v in parts.items()
    }
    return Corpus(name, digests["calibration"], digests[VALIDATION], digests[EVALUATION]), parts


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
    (point, metric, split), in the results store or in memory when there is none (first writer wins)."""

    def __init__(
        self, store: ResultStore | None, setup: Setup, model: str, corpus: Corpus, windows: Mapping[str, torch.Tensor]
    ) -> None:
        self.store, self.setup, self.model, self.corpus, self.windows = store, setup, model, corpus, windows
        self.memory: dict[str, dict[str, Any]] = {}
        self.shipped: ShippedResults | None = None  # read-only rows under the store's (``shipped.py``)

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

    def metric_keys(self, point_key: str) -> dict[tuple[str, str], str]:
        """(metric, split) -> key of its row, for every metric and split of the setup."""
        return {
            (m, split): fingerprint(
                kind=METRIC_KIND,
                point=point_key,
                metric=m,
                split=split,
                **METRICS[m].values_key(self.setup, self.corpus, self.windows, split),
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


class Workbench:
    """A loaded model with its calibration, validation and evaluation windows, ready to try schedules."""

    def __init__(
        self,
        setup: Setup,
        store: ResultStore | None = None,
        loaded: LoadedModel | None = None,
        progress: Progress | None = None,
        windows: Sequence[torch.Tensor] | None = None,
        dense: DenseWeights | FileWeights | None = None,
    ) -> None:
        """``windows``: pre-cut token windows to use instead of the corpus (see ``given_windows``);
        ``dense``: the dense weights of ``loaded`` when another Workbench holds them already."""
        self.loaded = loaded or load_for(setup, progress)
        if isinstance(self.loaded, OffloadedModel) and not setup.offload:  # offloaded automatically
            setup = replace(setup, offload=True)
        self.setup = setup
        check_lengths(self.loaded, setup)
        if windows is None:
            self.corpus = load_corpus(setup.corpus)
            self.windows = cut_windows(self.corpus, self.loaded.tokenizer, setup)
        else:
            self.corpus, self.windows = given_windows(setup.corpus, windows)
        self.rows = Ledger(store, setup, self.loaded.fingerprint, self.corpus, self.windows)
        self.dense = dense or (FileWeights(self.loaded) if setup.offload else DenseWeights(self.loaded.blocks))
        self._variants: dict[Setup, Workbench] = {}
        self._variants_lock = threading.Lock()
        self.param_counts = block_param_counts(self.loaded.blocks)
        linears = [prunable_linears(block) for block in self.loaded.blocks]
        self.linear_names = [list(named) for named in linears]
        sizes = [{name: lin.weight.numel() for name, lin in named.items()} for named in linears]
        self.group_counts = profiles.group_counts(sizes)  # (blocks, 2): attention and MLP weights
        self.stats = DenseStatistics(
            self.loaded, setup, self.windows["calibration"], self.rows.prune_identity(), self.dense
        )
        inputs = ModeInputs(self.dense.blocks, self.stats.calls, self.stats.pruner, setup.prune.nm, setup.batch_size,
                            self.stats.linears, self.dense.restore)  # fmt: skip
        self.evaluation: StreamedPerplexity | None = None
        self.mode: SequentialMode | CachedMode
        if isinstance(self.dense, FileWeights):  # offloaded: blocks stream through the device
            self.evaluation = StreamedPerplexity(
                self.loaded, self.dense, self.windows, setup.splits, setup.evaluation.batch_size
            )
            self.mode = STREAMED_MODES[setup.calibration](inputs, self.evaluation)
        else:
            self.mode = CALIBRATION_MODES[setup.calibration](inputs)

    @property
    def store(self) -> ResultStore | None:
        return self.rows.store

    @store.setter
    def store(self, store: ResultStore | None) -> None:
        self.rows.store = store

    @property
    def num_blocks(self) -> int:
        return self.loaded.num_blocks

    def point_key(self, spec: ScheduleSpec) -> str:
        return self.rows.point_key(spec)

    def identity(self) -> dict[str, Any]:
        """What decides a pruned model here (weights, calibration text and settings, pruner, mode, dtype):
        the key parts of anything stored about it beside its points (predictions, trials, speed)."""
        return self.rows.prune_identity()

    def get(self, key: str) -> dict[str, Any] | None:
        """A stored row (the user's store first, then the shipped results); never computes."""
        return self.rows.get(key)

    def put(self, key: str, kind: str, config: dict[str, Any], record: dict[str, Any]) -> None:
        """Store one finished result at once (in memory without a store)."""
        self.rows.put(key, kind, config, record)

    def restore(self) -> None:
        """Put the dense weights back (after a caller pruned them with ``apply``)."""
        self.dense.restore()

    def reseeded(self, seed: int) -> Workbench:
        """The same model and dense weights, calibrated on windows drawn with ``seed`` (kept for reuse)."""
        return self.variant(replace(self.setup, calib=replace(self.setup.calib, seed=seed)))

    def variant(self, setup: Setup) -> Workbench:
        """A Workbench for ``setup`` that shares this one's model and dense weights (kept for reuse):
        another seed, other metrics, other windows; the model, device and dtype must be the same."""
        if self.setup.offload and not setup.offload and setup.auto_offload:  # this model was offloaded automatically
            if set(setup.metrics) - set(OFFLOAD_METRICS):
                raise ValueError(
                    f"{setup.model} does not fit {setup.device} whole, so its blocks stream from its files, which "
                    f"measures {', '.join(OFFLOAD_METRICS)} only; drop zero-shot or free memory"
                )
            setup = replace(setup, offload=True)
        if setup == self.setup:
            return self
        same = ("model", "device", "dtype", "trust_remote_code", "allow_pickle", "offload")
        if any(getattr(setup, name) != getattr(self.setup, name) for name in same):
            raise ValueError(f"a variant shares the loaded model: {', '.join(same)} must stay the same")
        with self._variants_lock:  # a page and a background job may ask for the same variant at once
            if setup not in self._variants:
                self._variants[setup] = Workbench(setup, self.store, loaded=self.loaded, dense=self.dense)
            self._variants[setup].rows.shipped = self.rows.shipped
            return self._variants[setup]

    def schedule(self, spec: ScheduleSpec, progress: Progress | None = None) -> np.ndarray:
        """Per-block rates for ``spec`` on this model (statistics computed once, when a method needs them)."""
        return methods.build_schedule(spec, self.num_blocks, self.statistics(spec, progress), self.param_counts)

    def statistics(self, spec: ScheduleSpec, progress: Progress | None = None) -> dict[str, np.ndarray]:
        """The per-block statistics ``spec``'s method needs, with its ``stat_params`` (computed once, then cached)."""
        params = {name: spec.get(name) for name in spec.entry.stat_params}
        return {need: STATISTICS[need](self.stats, progress, **params) for need in spec.entry.needs}

    def measure(
        self,
        point_key: str,
        missing: Sequence[tuple[str, str]],
        about: dict[str, Any],
        progress: Progress | None = None,
    ) -> None:
        """Measure the model as it is now on each missing (metric, split) and commit each row at once.

        ``about``: what was measured (the schedule's parameters, or ``{"method": "dense"}``) for queries."""
        keys = self.rows.metric_keys(point_key)
        for index, (name, split) in enumerate(missing):
            started = time.perf_counter()
            values = METRICS[name].measure(self, split, scaled(progress, index / len(missing), 1 / len(missing)))
            config = {**about, "point": point_key, "metric": name, "split": split}
            self.rows.put(
                keys[(name, split)], METRIC_KIND, config, {"values": values, "seconds": time.perf_counter() - started}
            )

    def dense_metrics(self, progress: Progress | None = None) -> dict[str, float]:
        """Every metric of the unpruned model on both splits, measured once per setting and stored."""
        key = self.rows.dense_key()
        found, missing = self.rows.metrics_of(key)
        if missing:
            self.dense.restore()
            self.measure(key, missing, {"method": "dense"}, progress)
            found, _ = self.rows.metrics_of(key)
        return found

    def stored_dense_perplexity(self) -> float | None:
        """The dense evaluation perplexity if it is stored already; never computes."""
        return self.rows.metrics_of(self.rows.dense_key())[0].get(metric_key("perplexity", EVALUATION))

    def dense_perplexity(self, progress: Progress | None = None) -> float:
        return self.dense_metrics(progress)[metric_key("perplexity", EVALUATION)]

    def stored(self, spec: ScheduleSpec, need: Sequence[str] | None = None) -> PointResult | None:
        """The stored point if it is complete on the splits of ``need`` (default: every split of the setup;
        ``()``: its row alone, with whatever metrics are stored), else None; never computes."""
        found = self.rows.point(spec)
        return found.result() if found.complete(self.setup.splits if need is None else need) else None

    def per_linear(self, spec: ScheduleSpec) -> np.ndarray | None:
        """(blocks x linears) rates when ``spec`` gives each linear its own rate (LSA's projections), else None."""
        if spec.entry.per_linear is None:
            return None
        return methods.per_linear_rates(spec, self.statistics(spec))

    def rate_map(self, spec: ScheduleSpec, rates: np.ndarray) -> published.RateMap:
        """``BlockRates`` (the paper), or ``LinearRates`` when ``spec`` gives linear types (or linears) their own
        rates."""
        table = self.per_linear(spec)
        if table is not None:
            return published.LinearRates(
                rates,
                {(i, n): float(table[i, j]) for i, names in enumerate(self.linear_names) for j, n in enumerate(names)},
            )
        split = methods.linear_split(spec, rates, self.group_counts)
        if split is None:
            return published.BlockRates(rates)
        return published.LinearRates(rates, profiles.linear_table(split, self.linear_names))

    def linear_rates(self, spec: ScheduleSpec, rates: np.ndarray) -> dict[str, list[float]]:
        """Rates per linear type (``profiles.LINEAR_GROUPS``), or per linear name when each linear has its own
        (LSA's projections), or {} when each block has one rate."""
        table = self.per_linear(spec)
        if table is not None:
            return {name: table[:, j].tolist() for j, name in enumerate(self.linear_names[0])}
        split = methods.linear_split(spec, rates, self.group_counts)
        return {} if split is None else {g: split[:, j].tolist() for j, g in enumerate(profiles.LINEAR_GROUPS)}

    def apply(self, spec: ScheduleSpec, progress: Progress | None = None) -> tuple[np.ndarray, PruneReport]:
        """Prune the dense weights in place with ``spec`` (no evaluation, nothing stored)."""
        rates = self.schedule(spec, scaled(progress, 0.0, 0.1))
        return rates, self.mode.prune(self.rate_map(spec, rates), counted(progress, "pruning block", 0.1, 0.9))

    def run(
        self, spec: ScheduleSpec, progress: Progress | None = None, splits: Sequence[str] | None = None
    ) -> PointResult:
        """Prune the dense model with ``spec``, measure it and commit each result (or read them back).

        ``splits``: measure only these of the setup's splits (a search reads validation alone)."""
        stored = self.rows.point(spec)
        key, record = stored.key, stored.record
        if stored.complete(self.setup.splits if splits is None else splits):
            return stored.result()
        missing = [(name, split) for name, split in stored.missing if splits is None or split in splits]
        started = time.perf_counter()
        if self.evaluation is not None:  # offloaded: the prune pass also carries the windows to measure
            self.evaluation.pending = tuple(dict.fromkeys(split for _, split in missing))
        rates, report = self.apply(spec, scaled(progress, 0.0, 0.6))
        about = {k: v for k, v in spec.params().items() if k != "rates"}
        self.measure(key, missing, about, scaled(progress, 0.6, 0.4))
        if record is None:
            seconds = time.perf_counter() - started
            record = point_record(spec, rates, report, self.param_counts, seconds, self.linear_rates(spec, rates))
            self.rows.put(key, POINT_KIND, about, record)
        return PointResult.from_record({**record, "metrics": self.rows.metrics_of(key)[0]}, key, cached=False)

    def run_many(
        self, specs: Sequence[ScheduleSpec], progress: Progress | None = None, splits: Sequence[str] | None = None
    ) -> Iterator[PointResult]:
        """Run specs in order, yielding each result as soon as it is stored (finished ones are read back);
        ``splits`` as in ``run``."""
        for index, spec in enumerate(specs):
            label = f"[{index + 1}/{len(specs)}] {spec.describe()}"
            yield self.run(spec, labelled(scaled(progress, index / len(specs), 1 / len(specs)), label), splits)
            if progress:
                progress((index + 1) / len(specs), f"{label}: done")

    def beta_sweep(
        self, sparsity: float, step: float = published.GRID_STEP, progress: Progress | None = None
    ) -> Iterator[PointResult]:
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
    """Every (method, sparsity) cell: a method with a grid tries all of it unless ``fixed`` gives its
    parameters; the others run once with their defaults (or ``fixed``)."""
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
            given = dict((fixed or {}).get(name, {}))
            specs = (
                [ScheduleSpec(name, s, **given)]
                if entry.grid is None or given
                else methods.sweep_grid(name, num_blocks, s, step)
            )
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
