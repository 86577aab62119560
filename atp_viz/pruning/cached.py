"""Cached calibration: statistics of every linear from one dense pass, reused by every point.

Sequential calibration (the paper's loop) measures block i's statistics on the outputs of the
already-pruned blocks 0..i-1, so every schedule needs its own calibration forward. Cached mode
instead measures every linear's statistics once, on the dense model's own inputs:

- the running sum of squares of each input feature (``ColumnNorms``: Wanda's norms, OWL's scores),
- the pruner's own kind when it differs (SparseGPT: the Hessian H = 2 X X^T / n),

stores them as a safetensors file in the cache (keyed like the results store), and derives each
row's ascending score order once (for pruners whose mask is a prefix of a score order). A rate's
mask is then a prefix of that order, so pruning a new schedule needs no forward at all. The
statistics differ from the sequential ones (dense inputs instead of pruned ones).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from atp_viz.models.hooks import input_hooks
from atp_viz.progress import Counter
from atp_viz.pruning.calibration import BlockCalls, ModeInputs, PruneReport, block_sparsity, run_block
from atp_viz.pruning.layer_stats import outlier_ratio, prunable_linears
from atp_viz.pruning.pruners import (
    STAT_KINDS,
    Pruner,
    Stats,
    order_by_score,
    prune_count,
    stats_from_state,
    stats_state,
    wanda_scores,
)
from atp_viz.schedules import dsa
from atp_viz.schedules.published import RateMap, as_rate_map

LinearKey = tuple[int, str]  # (block index, linear name inside the block)
OWL_KIND = "sum_sq"  # OWL's outlier ratios need the Wanda column norms, whatever the pruner
FORMAT = "2"  # bumped when the file layout changes


@dataclass
class DenseStats:
    """Per-linear input statistics of the dense model on the calibration batch, by kind.

    ``states[kind][(block, linear)]`` is the state tensor of a ``pruners.STAT_KINDS`` accumulator:
    the (in,) sum of squares per input feature (``sum_sq``), or the (in, in) H = 2 X X^T / n
    (``hessian``), all float32; ``tokens`` calibration tokens were seen by each linear.
    """

    states: dict[str, dict[LinearKey, torch.Tensor]]
    tokens: int

    def accumulator(self, kind: str, key: LinearKey) -> Stats:
        """The accumulator rebuilt exactly (its ``result()`` equals the live one's)."""
        return stats_from_state(kind, self.states[kind][key], self.tokens)


def stat_kinds(pruner: Pruner) -> tuple[str, ...]:
    """What one dense pass records: OWL's column norms, plus the pruner's own kind."""
    return tuple(sorted({OWL_KIND, *((pruner.stats_kind,) if pruner.stats_kind else ())}))


def tensor_name(kind: str, key: LinearKey) -> str:
    return f"{key[0]}/{key[1]}/{kind}"


def save_stats(stats: DenseStats, path: Path, meta: dict[str, str]) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    from safetensors.torch import save_file

    tensors = {
        tensor_name(kind, k): v.contiguous().cpu() for kind, table in stats.states.items() for k, v in table.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temp, metadata={**meta, "format": FORMAT, "tokens": str(stats.tokens)})
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def load_stats(
    path: Path, device: torch.device | str = "cpu", kinds: Collection[str] = tuple(STAT_KINDS)
) -> DenseStats | None:
    """The statistics stored at ``path``, or None when the file is missing, damaged or stale (or holds a kind not
    in ``kinds``: the accumulators' by default; LSA's errors are one more kind, ``lsa_stats.ERROR_KIND``)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        states: dict[str, dict[LinearKey, torch.Tensor]] = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return None
            for name in f.keys():
                block, linear, kind = name.split("/")
                if kind not in kinds:
                    return None
                states.setdefault(kind, {})[(int(block), linear)] = f.get_tensor(name)
        return DenseStats(states, int(meta["tokens"]))
    except Exception:  # a damaged cache file is recomputed, never trusted
        return None


@torch.inference_mode()
def collect_dense_stats(
    blocks: nn.ModuleList,
    calls: BlockCalls,
    kinds: Sequence[str],
    batch_size: int = 8,
    progress: Counter | None = None,
) -> DenseStats:
    """One dense block-by-block pass over the calibration batch recording every linear's inputs."""
    hidden = calls.hidden
    states: dict[str, dict[LinearKey, torch.Tensor]] = {kind: {} for kind in kinds}
    tokens = 0
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        live = {
            kind: {name: STAT_KINDS[kind](lin.in_features, lin.weight.device) for name, lin in linears.items()}
            for kind in kinds
        }

        def record(name: str, x: torch.Tensor) -> None:
            for table in live.values():
                table[name].add(x)

        with input_hooks(linears, record):
            hidden = run_block(block, hidden, calls.args[i], batch_size)
        for kind, table in live.items():
            for name, stats in table.items():
                states[kind][(i, name)] = stats_state(stats)
                tokens = stats.tokens
        if progress:
            progress(i + 1, len(blocks))
    return DenseStats(states, tokens)


def block_wanda_scores(blocks: nn.ModuleList, stats: DenseStats) -> Iterator[torch.Tensor]:
    """Each block's Wanda scores |W| * ||X_k|| of all its linears, flattened into one tensor."""
    for i, block in enumerate(blocks):
        yield torch.cat(
            [
                wanda_scores(lin.weight, stats.accumulator(OWL_KIND, (i, name)).result()).flatten()
                for name, lin in prunable_linears(block).items()
            ]
        )


def outlier_ratios_from_stats(blocks: nn.ModuleList, stats: DenseStats, m: float) -> np.ndarray:
    """OWL's D_i: the outlier ratio of block i's Wanda scores over all its linears."""
    return np.array([outlier_ratio(scores, m) for scores in block_wanda_scores(blocks, stats)], dtype=np.float64)


def dsa_values_from_stats(
    blocks: nn.ModuleList, stats: DenseStats, graph: str, nonfinite: str, sequences: int
) -> np.ndarray:
    """DSA's graph value of each block's Wanda scores (``dsa.graph_value``; NaN / inf kept).

    As DSA's code: |W_jk| * sqrt(scaler_row_k) with scaler_row = sum of x_k^2 / number of calibration
    sequences, i.e. our ||X_k|| / sqrt(sequences) (the scale matters to graphs that are not scale-free)."""
    parsed = dsa.parse_graph(graph)
    scale = 1.0 / math.sqrt(sequences)
    return np.array(
        [dsa.graph_value(parsed, (scores * scale).numpy(), nonfinite) for scores in block_wanda_scores(blocks, stats)],
        dtype=np.float64,
    )


def block_scores_from_stats(blocks: nn.ModuleList, stats: DenseStats) -> np.ndarray:
    """DLP's per-block score: the mean of the block's Wanda scores over all its linears.

    DLP's code uses ||X_k|| / sqrt(number of calibration sequences); that factor is the same for every
    block and cancels in its normalisation c_i / sum_j c_j.
    """
    return np.array([float(scores.double().mean()) for scores in block_wanda_scores(blocks, stats)], dtype=np.float64)


def compact_index(order: torch.Tensor) -> torch.Tensor:
    """Column indices in the smallest integer type that holds them (int16 for <= 32767 columns)."""
    return order.to(torch.int16) if order.shape[1] <= torch.iinfo(torch.int16).max + 1 else order.to(torch.int32)


def linear_stats(stats: DenseStats | None, pruner: Pruner, key: LinearKey) -> Stats | None:
    """The pruner's accumulator for one linear, from the dense statistics (None: it needs none)."""
    if pruner.stats_kind is None or stats is None:
        return None
    return stats.accumulator(pruner.stats_kind, key)


@torch.inference_mode()
def score_orders(
    blocks: nn.ModuleList, stats: DenseStats | None, pruner: Pruner
) -> dict[LinearKey, torch.Tensor] | None:
    """Each dense row's ascending score order, or None when the pruner's mask is not a prefix of one."""
    orders: dict[LinearKey, torch.Tensor] = {}
    for i, block in enumerate(blocks):
        for name, lin in prunable_linears(block).items():
            scores = pruner.scores(lin.weight, linear_stats(stats, pruner, (i, name)))
            if scores is None:
                return None
            orders[(i, name)] = compact_index(order_by_score(scores))
    return orders


def zero_prefix_(weight: torch.Tensor, order: torch.Tensor, sparsity: float) -> None:
    """Zero the first floor(in * sparsity) entries of each row's order (= ``mask_from_order``)."""
    count = prune_count(order.shape[1], sparsity)
    if count:
        weight.scatter_(1, order[:, :count].long(), 0.0)


@torch.inference_mode()
def prune_cached(
    blocks: nn.ModuleList,
    rates: RateMap | ArrayLike,
    pruner: Pruner,
    stats: DenseStats | None,
    orders: dict[LinearKey, torch.Tensor] | None,
    nm: tuple[int, int] | None = None,
    progress: Counter | None = None,
) -> np.ndarray:
    """Prune dense blocks in place from stored statistics (no forward); returns per-block sparsity.

    Without N:M, a pruner with a fixed score order takes a prefix of the precomputed orders; every
    other case (SparseGPT's OBS update, N:M patterns) runs the pruner on the stored statistics.
    """
    rates = as_rate_map(rates)
    if rates.num_blocks != len(blocks):
        raise ValueError(f"schedule has {rates.num_blocks} rates but the model has {len(blocks)} blocks")
    achieved = np.zeros(len(blocks))
    for i, block in enumerate(blocks):
        for name, lin in prunable_linears(block).items():
            rate = rates.rate(i, name)
            if rate == 0.0:
                continue
            if orders is not None and nm is None:
                zero_prefix_(lin.weight, orders[(i, name)], rate)
            else:
                pruner.prune_(lin, linear_stats(stats, pruner, (i, name)), rate, nm)
        achieved[i] = block_sparsity(block)
        if progress:
            progress(i + 1, len(blocks))
    return achieved


class CachedMode:
    """Cached calibration: every point prunes from the dense statistics (no calibration forward).

    Reconstruction errors are not measured in this mode (NaN arrays in the report). ``keep_orders``:
    each dense row's score order is computed once and kept (off for streamed blocks: the orders of
    every linear would hold half the model in memory; each block's masks then come from the pruner).
    """

    measures_errors = False

    def __init__(self, inputs: ModeInputs, keep_orders: bool = True) -> None:
        self.blocks, self.pruner, self.nm = inputs.blocks, inputs.pruner, inputs.nm
        self.dense_stats: Callable[[], DenseStats] = inputs.dense_stats
        self.restore = inputs.restore
        self.keep_orders = keep_orders
        self._orders: dict[LinearKey, torch.Tensor] | None = None
        self._ordered = False

    def orders(self) -> dict[LinearKey, torch.Tensor] | None:
        """Each dense row's score order, computed once (None when the pruner has no fixed order, or when the
        orders are not kept)."""
        if not self.keep_orders:
            return None
        if not self._ordered:
            stats = self.dense_stats() if self.pruner.needs_inputs else None
            self.restore()
            self._orders, self._ordered = score_orders(self.blocks, stats, self.pruner), True
        return self._orders

    def prepare(self) -> None:
        if self.pruner.needs_inputs:
            self.dense_stats()  # its own dense pass

    def prune(self, rates: RateMap, progress: Counter | None = None) -> PruneReport:
        stats = self.dense_stats() if self.pruner.needs_inputs else None
        orders = self.orders() if self.nm is None else None
        self.restore()
        return PruneReport.unmeasured(prune_cached(self.blocks, rates, self.pruner, stats, orders, self.nm, progress))
