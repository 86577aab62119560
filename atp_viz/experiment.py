"""One experiment = schedule -> prune -> measure -> store; beta sweeps and strategy comparisons.

A ``Workbench`` holds one loaded model, its corpus windows and a copy of the dense weights, so that
many schedules can be tried without reloading: each point restores the dense weights, prunes,
measures, and commits its result to the store before the next point starts.

Two calibration modes (``Setup.calibration``):
- ``sequential`` (paper-faithful): block i is calibrated on the outputs of the pruned blocks before
  it, so each point runs two block forwards over the calibration batch (statistics + local-error
  reference, then the pruned re-run); the dense trajectory (cumulative-error reference) is the same
  for every point and is computed once per Workbench.
- ``cached``: statistics of every linear from one dense pass, stored in the cache as safetensors,
  with each row's score order computed once; a point is a prefix of those orders plus the
  evaluation. Reconstruction errors are not measured in this mode (NaN arrays in the result).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from . import schedules
from .calibration import BlockCalls, DenseTrajectory, PruneReport, capture_block_calls, outlier_ratios, prune_sequential
from .config import CALIBRATION_MODES, CalibConfig, EvalConfig, PruneConfig, ScheduleSpec, check_choice, check_int
from .data import DEFAULT_CORPUS, Corpus, calibration_windows, evaluation_windows, load_corpus, token_ids
from .evaluate import perplexity
from .layer_stats import block_alphas, block_param_counts, prunable_linears
from .models import DEFAULT_MODEL, LoadedModel, cache_dir, load_model
from .pruners import get_pruner
from .stats_cache import DenseStats, LinearKey, collect_dense_stats, load_stats, outlier_ratios_from_stats, prune_cached, save_stats, score_orders
from .store import ResultStore, fingerprint

# (fraction of the whole job done in [0, 1], what is happening now)
Progress = Callable[[float, str], None]
POINT_KIND = "point"
DENSE_KIND = "dense"
STATS_KIND = "calib-stats"
STATS_FOLDER = "stats"  # under the cache dir: <fingerprint>.safetensors


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
    trust_remote_code: bool = False  # load options: they decide what may run, not the results
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        check_choice("calibration mode", self.calibration, CALIBRATION_MODES)
        check_int("batch size", self.batch_size, 1)

    def describe(self) -> dict[str, Any]:
        """Flat, JSON-friendly settings: store rows are filtered on these fields."""
        return {
            "model": self.model,
            "corpus": self.corpus,
            "pruner": self.prune.pruner,
            "nm": list(self.prune.nm) if self.prune.nm else None,
            "calib_samples": self.calib.samples,
            "calib_seqlen": self.calib.seqlen,
            "seed": self.calib.seed,
            "eval_windows": self.evaluation.windows,
            "eval_seqlen": self.evaluation.seqlen,
            "calibration": self.calibration,
            "dtype": self.dtype,
        }


@dataclass
class PointResult:
    """One pruned model's measurements; arrays have one entry per decoder block."""

    method: str
    sparsity: float
    beta: float
    rates: np.ndarray
    perplexity: float
    layer_sparsity: np.ndarray
    cumulative_error: np.ndarray
    local_error: np.ndarray
    cumulative_error_abs: np.ndarray
    local_error_abs: np.ndarray
    achieved_sparsity: float  # parameter-weighted fraction of zeros over all prunable linears
    wall_time: float
    params: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    cached: bool = False  # read from the store rather than computed now

    ARRAYS = ("rates", "layer_sparsity", "cumulative_error", "local_error", "cumulative_error_abs", "local_error_abs")

    def to_record(self) -> dict[str, Any]:
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("key", "cached")}
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in record.items()}

    @classmethod
    def from_record(cls, record: dict[str, Any], key: str = "", cached: bool = True) -> "PointResult":
        values = {k: (np.asarray(v, dtype=float) if k in cls.ARRAYS else v) for k, v in record.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names}, key=key, cached=cached)


def ids_digest(ids: torch.Tensor) -> str:
    return hashlib.sha256(ids.cpu().numpy().tobytes()).hexdigest()[:20] + f":{tuple(ids.shape)}"


def scaled(progress: Progress | None, start: float, width: float) -> Progress | None:
    """A progress callback for a sub-task occupying [start, start + width] of the whole job."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + width * min(max(fraction, 0.0), 1.0), message)


def counted(progress: Progress | None, what: str, start: float = 0.0, width: float = 1.0) -> Callable[[int, int], None] | None:
    """Adapt a (done, total) counter of blocks or windows to ``progress`` over [start, start + width]."""
    sub = scaled(progress, start, width)
    return (lambda done, total: sub(done / total, f"{what} {done}/{total}")) if sub else None


class Workbench:
    """A loaded model with its calibration and evaluation windows, ready to try schedules."""

    def __init__(
        self,
        setup: Setup,
        store: ResultStore | None = None,
        loaded: LoadedModel | None = None,
        progress: Progress | None = None,
        windows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """``windows``: (calibration ids (N, T), evaluation ids (M, T')) to use instead of the corpus."""
        self.setup = setup
        self.store = store
        report = (lambda message: progress(0.0, message)) if progress else None
        self.loaded = loaded or load_model(
            setup.model, setup.device, setup.dtype, trust_remote_code=setup.trust_remote_code, allow_pickle=setup.allow_pickle, progress=report
        )
        self._check_lengths()
        if windows is None:
            self.corpus: Corpus = load_corpus(setup.corpus)
            tokenizer = self.loaded.tokenizer
            self.calib_ids = calibration_windows(token_ids(tokenizer, self.corpus.calibration_text), setup.calib.samples, setup.calib.seqlen, setup.calib.seed)
            self.eval_ids = evaluation_windows(token_ids(tokenizer, self.corpus.evaluation_text), setup.evaluation.windows, setup.evaluation.seqlen)
        else:  # pre-cut token windows (benchmarks on random-weight models have no tokenizer)
            self.calib_ids, self.eval_ids = windows
            self.corpus = Corpus(setup.corpus, f"token ids {ids_digest(self.calib_ids)}", f"token ids {ids_digest(self.eval_ids)}")
        self.pruner = get_pruner(setup.prune.pruner)
        # Dense weights of every prunable linear; each point starts from these (SparseGPT edits weights).
        self.dense_weights = {
            (i, name): lin.weight.detach().clone() for i, block in enumerate(self.loaded.blocks) for name, lin in prunable_linears(block).items()
        }
        self.param_counts = block_param_counts(self.loaded.blocks)
        self._calls: BlockCalls | None = None
        self._alphas: np.ndarray | None = None
        self._outliers: dict[float, np.ndarray] = {}
        self._dense_ppl: float | None = None
        # sequential mode: dense block outputs on the calibration batch, shared by all points
        self.trajectory = DenseTrajectory.empty(self.num_blocks)
        # cached mode: dense statistics (from the cache file or one dense pass) and score orders
        self._stats: DenseStats | None = None
        self._orders: dict[LinearKey, torch.Tensor] | None = None
        self.stats_source = ""  # "file" or "computed" once the statistics are there

    def _check_lengths(self) -> None:
        limit = self.loaded.max_length
        for what, seqlen in (("calibration", self.setup.calib.seqlen), ("evaluation", self.setup.evaluation.seqlen)):
            if seqlen > limit:
                raise ValueError(f"{what} seqlen {seqlen} exceeds the model's context of {limit} tokens (allowed: 2..{limit})")

    @property
    def num_blocks(self) -> int:
        return self.loaded.num_blocks

    def base_fingerprint(self) -> dict[str, Any]:
        return {"model": self.loaded.fingerprint, "corpus": self.corpus.fingerprint, **self.setup.describe()}

    def point_key(self, spec: ScheduleSpec) -> str:
        return fingerprint(kind=POINT_KIND, **self.base_fingerprint(), schedule=spec.params())

    def calls(self) -> BlockCalls:
        if self._calls is None:
            self._calls = capture_block_calls(self.loaded.model, self.loaded.blocks, self.calib_ids, self.setup.batch_size)
        return self._calls

    # -- cached calibration ---------------------------------------------------------------------
    def stats_path(self) -> Path:
        """Where this model + corpus + calibration setting keeps its dense statistics."""
        key = fingerprint(
            kind=STATS_KIND,
            model=self.loaded.fingerprint,
            corpus=self.corpus.fingerprint,
            calib=asdict(self.setup.calib),
            hessians=self.pruner.name == "sparsegpt",
            dtype=self.setup.dtype,
        )
        return cache_dir() / STATS_FOLDER / f"{key}.safetensors"

    def dense_stats(self, progress: Progress | None = None) -> DenseStats:
        """Dense statistics of every linear: read from the cache file, or one dense pass (then saved)."""
        if self._stats is None:
            path = self.stats_path()
            stats = load_stats(path, self.loaded.device)
            if stats is None:
                self.restore_dense()
                report = counted(progress, "dense statistics: block")
                stats = collect_dense_stats(self.loaded.blocks, self.calls(), self.pruner.name == "sparsegpt", self.setup.batch_size, report)
                save_stats(stats, path, {"model": self.setup.model, "corpus": self.setup.corpus})
                self.stats_source = "computed"
            else:
                self.stats_source = "file"
            self._stats = stats
        return self._stats

    def score_orders(self) -> dict[LinearKey, torch.Tensor]:
        """Each dense row's ascending score order (magnitude and Wanda): any rate is a prefix."""
        if self._orders is None:
            stats = self.dense_stats() if self.pruner.name == "wanda" else None
            self.restore_dense()
            self._orders = score_orders(self.loaded.blocks, stats, self.pruner)
        return self._orders

    def restore_dense(self) -> None:
        with torch.no_grad():
            for i, block in enumerate(self.loaded.blocks):
                for name, lin in prunable_linears(block).items():
                    lin.weight.copy_(self.dense_weights[(i, name)])

    # -- layer statistics used by OWL and AlphaPruning ---------------------------------------
    def alphas(self) -> np.ndarray:
        """AlphaPruning's block metric from the dense weights (the model may hold a pruned point)."""
        if self._alphas is None:
            self.restore_dense()
            self._alphas = block_alphas(self.loaded.blocks)
        return self._alphas

    def outlier_ratios(self, m: float, progress: Progress | None = None) -> np.ndarray:
        if m in self._outliers:
            return self._outliers[m]
        if self.setup.calibration == "cached":
            stats = self.dense_stats(progress)
            self.restore_dense()
            self._outliers[m] = outlier_ratios_from_stats(self.loaded.blocks, stats, m)
        else:
            self.restore_dense()
            report = counted(progress, "OWL outliers: block")
            self._outliers[m] = outlier_ratios(self.loaded.blocks, self.calls(), m, self.setup.batch_size, report)
        return self._outliers[m]

    def schedule(self, spec: ScheduleSpec, progress: Progress | None = None) -> np.ndarray:
        """Per-block rates for ``spec`` on this model (OWL runs a dense calibration pass once)."""
        return schedules.make_schedule(
            spec,
            self.num_blocks,
            outlier_ratios=self.outlier_ratios(spec.m, progress) if spec.method == "owl" else None,
            alphas=self.alphas() if spec.method == "alphapruning" else None,
            weights=self.param_counts,
        )

    # -- measurements --------------------------------------------------------------------------
    def dense_key(self) -> str:
        return fingerprint(kind=DENSE_KIND, model=self.loaded.fingerprint, corpus=self.corpus.fingerprint, evaluation=asdict(self.setup.evaluation), dtype=self.setup.dtype)

    def stored_dense_perplexity(self) -> float | None:
        """The dense perplexity if this Workbench or the store already has it; never computes."""
        if self._dense_ppl is None and self.store is not None and (record := self.store.get(self.dense_key())) is not None:
            self._dense_ppl = float(record["perplexity"])
        return self._dense_ppl

    def dense_perplexity(self, progress: Progress | None = None) -> float:
        """Perplexity of the unpruned model, computed once per model + corpus + evaluation setting."""
        if (known := self.stored_dense_perplexity()) is not None:
            return known
        self.restore_dense()
        value = perplexity(self.loaded.model, self.eval_ids, self.setup.evaluation.batch_size, counted(progress, "dense perplexity: window"))
        if self.store is not None:
            self.store.put(self.dense_key(), DENSE_KIND, self.setup.model, {**self.setup.describe(), "method": "dense"}, {"perplexity": value})
        self._dense_ppl = value
        return value

    def stored(self, spec: ScheduleSpec) -> PointResult | None:
        return self._stored_at(self.point_key(spec))

    def _stored_at(self, key: str) -> PointResult | None:
        record = self.store.get(key) if self.store is not None else None
        return PointResult.from_record(record, key) if record is not None else None

    def apply(self, spec: ScheduleSpec, progress: Progress | None = None) -> tuple[np.ndarray, PruneReport]:
        """Prune the dense weights in place with ``spec`` (no evaluation, nothing stored)."""
        rates = self.schedule(spec, scaled(progress, 0.0, 0.1))
        report = counted(progress, "pruning block", 0.1, 0.9)
        if self.setup.calibration == "cached":
            stats = self.dense_stats(scaled(progress, 0.1, 0.6)) if self.pruner.needs_inputs else None
            orders = self.score_orders() if self.pruner.name in ("magnitude", "wanda") else None
            self.restore_dense()
            achieved = prune_cached(self.loaded.blocks, rates, self.pruner, stats, orders, self.setup.prune.nm, report)
            return rates, PruneReport.unmeasured(achieved)
        self.restore_dense()
        return rates, prune_sequential(
            self.loaded.blocks, self.calls(), rates, self.pruner, self.setup.prune.nm, self.setup.batch_size, report, dense=self.trajectory
        )

    def run(self, spec: ScheduleSpec, progress: Progress | None = None) -> PointResult:
        """Prune the dense model with ``spec``, measure it and commit the result (or read it back)."""
        key = self.point_key(spec)
        if (done := self._stored_at(key)) is not None:
            return done
        started = time.perf_counter()
        rates, report = self.apply(spec, scaled(progress, 0.0, 0.7))
        ppl = perplexity(self.loaded.model, self.eval_ids, self.setup.evaluation.batch_size, counted(progress, "perplexity: window", 0.7, 0.3))
        result = PointResult(
            method=spec.method,
            sparsity=float(schedules.weighted_mean(rates, self.param_counts)) if spec.method == "custom" else spec.sparsity,
            beta=float(spec.beta) if spec.method == "atp" else 0.0,
            rates=rates,
            perplexity=ppl,
            layer_sparsity=report.layer_sparsity,
            cumulative_error=report.cumulative_error,
            local_error=report.local_error,
            cumulative_error_abs=report.cumulative_error_abs,
            local_error_abs=report.local_error_abs,
            achieved_sparsity=float(schedules.weighted_mean(report.layer_sparsity, self.param_counts)),
            wall_time=time.perf_counter() - started,
            params=spec.params(),
            key=key,
        )
        if self.store is not None:
            config = {**self.setup.describe(), **{k: v for k, v in spec.params().items() if k != "rates"}}
            self.store.put(result.key, POINT_KIND, self.setup.model, config, result.to_record())
        return result

    def run_many(self, specs: Sequence[ScheduleSpec], progress: Progress | None = None) -> Iterator[PointResult]:
        """Run specs in order, yielding each result as soon as it is stored (finished ones are read back)."""
        total = len(specs)
        for index, spec in enumerate(specs):
            label = f"[{index + 1}/{total}] {describe_spec(spec)}"
            sub = scaled(progress, index / total, 1 / total)
            yield self.run(spec, (lambda f, m, sub=sub, label=label: sub(f, f"{label}: {m}")) if sub else None)
            if progress:
                progress((index + 1) / total, f"{label}: done")

    def beta_sweep(self, sparsity: float, step: float = schedules.GRID_STEP, progress: Progress | None = None) -> Iterator[PointResult]:
        """beta = 0 (uniform) and then every beta of the grid, each point stored as it finishes."""
        return self.run_many(sweep_specs(self.num_blocks, sparsity, step), progress)


def sweep_specs(num_blocks: int, sparsity: float, step: float = schedules.GRID_STEP) -> list[ScheduleSpec]:
    """Uniform (beta = 0, stored as a uniform point so other jobs share it) plus the ATP grid."""
    grid = schedules.beta_grid(num_blocks, sparsity, step).tolist()
    return [ScheduleSpec(method="uniform", sparsity=sparsity), *(ScheduleSpec(method="atp", sparsity=sparsity, beta=float(b)) for b in grid)]


def best_point(points: Sequence[PointResult]) -> PointResult:
    """The ATP point (beta > 0) with the lowest perplexity; the uniform point when it is alone."""
    grid = [p for p in points if p.method == "atp" and p.beta > 0] or list(points)
    return min(grid, key=lambda p: p.perplexity)


def describe_spec(spec: ScheduleSpec) -> str:
    params = spec.params()
    if spec.method == "custom":
        return "custom"
    extra = ", ".join(f"{k}={v:g}" for k, v in params.items() if k not in ("method", "sparsity"))
    return f"{spec.method} S={spec.sparsity:g}" + (f" {extra}" if extra else "")
