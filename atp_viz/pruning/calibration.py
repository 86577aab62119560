"""The sequential calibration loop (paper-faithful) and per-block reconstruction errors.

Block i is calibrated on the outputs of the already-pruned blocks 0..i-1, then pruned, then re-run so
that block i+1 sees the pruned block's output (Wanda's ``lib/prune.py`` loop, ATP appendix H).
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from atp_viz.models.hooks import StopForward, input_hooks, recording_blocks
from atp_viz.models.loading import base_model
from atp_viz.progress import Counter
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import Pruner, recorder
from atp_viz.schedules.published import RateMap, as_rate_map


@dataclass
class BlockCalls:
    """What the decoder blocks receive: block 0's hidden input and each block's other arguments."""

    hidden: torch.Tensor  # (N, T, H) block-0 input for the whole calibration batch
    args: list[tuple[tuple, dict]]  # per block: positional args after the hidden state, keyword args


@dataclass
class PruneReport:
    """Per-block measurements of one sequential prune (all arrays have one entry per block)."""

    layer_sparsity: np.ndarray  # achieved fraction of zeros in the block's prunable linears
    cumulative_error: np.ndarray  # ||h_i(dense) - h_i(pruned)||_F^2 / ||h_i(dense)||_F^2
    local_error: np.ndarray  # ||f_i(x) - fhat_i(x)||_F^2 / ||f_i(x)||_F^2 with x the pruned input
    cumulative_error_abs: np.ndarray
    local_error_abs: np.ndarray

    @classmethod
    def unmeasured(cls, layer_sparsity: np.ndarray) -> "PruneReport":
        """A prune whose reconstruction errors were not measured (cached mode): NaN error arrays."""
        nan = np.full(len(layer_sparsity), np.nan)
        return cls(layer_sparsity, nan, nan.copy(), nan.copy(), nan.copy())


@dataclass
class DenseTrajectory:
    """The dense model's block outputs h_i(dense) on the calibration batch.

    They are the same for every point of a sweep, so a ``Workbench`` keeps one and
    ``prune_sequential`` fills it on its first run and reads it afterwards: the cumulative-error
    reference then costs no forward. Memory: one (N, T, H) tensor per block (``offload`` keeps them
    off the device).
    """

    outputs: MutableSequence[torch.Tensor | None]

    @classmethod
    def empty(cls, num_blocks: int) -> "DenseTrajectory":
        return cls([None] * num_blocks)

    @property
    def complete(self) -> bool:
        return all(out is not None for out in self.outputs)

    def nbytes(self) -> int:
        return sum(out.numel() * out.element_size() for out in self.outputs if out is not None)


def drop_cache(value: object) -> object:
    """Cache objects captured from a forward must not be replayed: each block call stands alone."""
    from transformers.cache_utils import Cache

    return None if isinstance(value, Cache) else value


@torch.inference_mode()
def capture_block_calls(
    model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor, batch_size: int
) -> BlockCalls:
    """Block-0 inputs for all windows, and each block's own call arguments captured on one window.

    Arguments are captured with a batch of one window: every window has the same length and no
    padding, so masks and rotary tables are identical across windows and broadcast over any batch.
    """
    device = next(model.parameters()).device
    args: list[tuple[tuple, dict]] = [((), {})] * len(blocks)
    hidden_parts: list[torch.Tensor] = []

    def record_args(index: int, _hidden: torch.Tensor, pos: tuple, kwargs: dict) -> None:
        kw = {
            k: drop_cache(v) for k, v in kwargs.items() if k not in ("use_cache", "past_key_value", "past_key_values")
        }
        args[index] = (tuple(drop_cache(a) for a in pos), kw)

    def record_hidden(index: int, hidden: torch.Tensor, _pos: tuple, _kwargs: dict) -> None:
        hidden_parts.append(hidden.detach())

    body = base_model(model)
    with recording_blocks(blocks, record_args):
        body(input_ids=input_ids[:1].to(device), use_cache=False)
    with recording_blocks(blocks, record_hidden, stop_after=0):
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                body(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
            except StopForward:
                pass
    return BlockCalls(hidden=torch.cat(hidden_parts), args=args)


def run_block(block: nn.Module, hidden: torch.Tensor, call: tuple[tuple, dict], batch_size: int) -> torch.Tensor:
    """Run one block over all windows in micro-batches; returns the block output (N, T, H)."""
    pos, kwargs = call
    outputs = []
    for start in range(0, hidden.shape[0], batch_size):
        out = block(hidden[start : start + batch_size], *pos, use_cache=False, **kwargs)
        # transformers 5.x blocks return a tensor; older or custom ones may return a tuple.
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outputs)


def squared_norm(x: torch.Tensor) -> float:
    """||x||_F^2: one float32 norm per hidden vector, their squares summed in float64.

    A float32 sum over millions of entries drifts by ~1e-4; per-vector norms (H entries each) stay
    exact to ~1e-7 and need no float64 copy of the whole (N, T, H) tensor (7x faster than one).
    """
    return float(torch.linalg.vector_norm(x.reshape(-1, x.shape[-1]).float(), dim=1).double().square().sum())


def relative(abs_err: float, ref: float) -> float:
    return abs_err / ref if ref > 0 else 0.0


def block_sparsity(block: nn.Module) -> float:
    linears = prunable_linears(block).values()
    zeros = sum(int((lin.weight == 0).sum()) for lin in linears)
    total = sum(lin.weight.numel() for lin in linears)
    return zeros / total if total else 0.0


StatsSource = Callable[[int, str], Any]  # (block, linear name) -> the pruner's statistics to prune it with


@dataclass
class BlockStep:
    """One block of the sequential loop: its outputs on the pruned and dense paths and its errors."""

    pruned_out: torch.Tensor  # block i's output along the pruned model (block i+1's input)
    dense_out: torch.Tensor  # block i's output along the dense model
    local_error: float
    cumulative_error: float
    local_error_abs: float
    cumulative_error_abs: float
    sparsity: float  # achieved fraction of zeros in the block's prunable linears


@torch.inference_mode()
def prune_block(
    block: nn.Module,
    index: int,
    pruned_in: torch.Tensor,
    dense_in: torch.Tensor,
    call: tuple[tuple, dict],
    rates: RateMap,
    pruner: Pruner,
    nm: tuple[int, int] | None = None,
    batch_size: int = 8,
    dense_out: torch.Tensor | None = None,
    fixed_stats: StatsSource | None = None,
) -> BlockStep:
    """Prune block ``index`` in place at its rate, calibrated on ``pruned_in`` (the outputs of the pruned
    blocks before it), and measure its local and cumulative errors.

    ``dense_out``: the block's dense output when known (else computed from ``dense_in``).
    ``fixed_stats``: calibrate on these statistics instead (the dense model's own inputs: Wanda's
    loop without the "masked forward" of the pruned model); the errors are measured the same way.
    """
    linears = prunable_linears(block)
    if fixed_stats is None:
        stats = {name: pruner.new_stats(lin.in_features, lin.weight.device) for name, lin in linears.items()}
        # 1. dense weights on the pruned input: calibration statistics and the local-error reference
        with input_hooks(linears, recorder(stats)):
            reference = run_block(block, pruned_in, call, batch_size)
    else:
        stats = {name: fixed_stats(index, name) for name in linears}
        reference = run_block(block, pruned_in, call, batch_size)
    # 2. dense weights on the dense input: the cumulative-error reference
    if dense_out is None:
        dense_out = run_block(block, dense_in, call, batch_size)
    # 3. prune every linear at its rate (the block's, by default), then re-run on the pruned input
    for name, linear in linears.items():
        pruner.prune_(linear, stats[name], rates.rate(index, name), nm)
    pruned_out = run_block(block, pruned_in, call, batch_size)
    loc_abs = squared_norm(reference - pruned_out)
    cum_abs = squared_norm(dense_out - pruned_out)
    return BlockStep(
        pruned_out,
        dense_out,
        relative(loc_abs, squared_norm(reference)),
        relative(cum_abs, squared_norm(dense_out)),
        loc_abs,
        cum_abs,
        block_sparsity(block),
    )


@torch.inference_mode()
def prune_sequential(
    blocks: nn.ModuleList,
    calls: BlockCalls,
    rates: RateMap | ArrayLike,
    pruner: Pruner,
    nm: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: Counter | None = None,
    dense: DenseTrajectory | None = None,
    fixed_stats: StatsSource | None = None,
) -> PruneReport:
    """Prune every block in place at its rate, each calibrated on the pruned blocks before it.

    ``dense``: the dense trajectory, read where filled and filled where empty (same results as
    without it; two block forwards per block instead of three once it is complete).
    ``fixed_stats``: calibrate every block on these statistics instead (see ``prune_block``).
    """
    rates = as_rate_map(rates)
    if rates.num_blocks != len(blocks):
        raise ValueError(f"schedule has {rates.num_blocks} rates but the model has {len(blocks)} blocks")
    n = len(blocks)
    cum, loc, cum_abs, loc_abs, achieved = (np.zeros(n) for _ in range(5))
    pruned_in = calls.hidden  # input of block i along the pruned model
    dense_in = calls.hidden  # input of block i along the dense model
    for i, block in enumerate(blocks):
        stored = dense.outputs[i] if dense is not None else None
        step = prune_block(block, i, pruned_in, dense_in, calls.args[i], rates, pruner, nm, batch_size, stored,
                           fixed_stats)  # fmt: skip
        if dense is not None:
            dense.outputs[i] = step.dense_out
        loc[i], cum[i], loc_abs[i], cum_abs[i] = (
            step.local_error, step.cumulative_error, step.local_error_abs, step.cumulative_error_abs
        )  # fmt: skip
        achieved[i] = step.sparsity
        pruned_in, dense_in = step.pruned_out, step.dense_out
        if progress:
            progress(i + 1, n)
    return PruneReport(achieved, cum, loc, cum_abs, loc_abs)


@dataclass(frozen=True)
class ModeInputs:
    """What a calibration mode (``SequentialMode``, ``cached.CachedMode``) gets from its Workbench."""

    blocks: nn.ModuleList
    calls: Callable[[], BlockCalls]  # block inputs and call arguments on the calibration batch (computed once)
    pruner: Pruner
    nm: tuple[int, int] | None
    batch_size: int
    dense_stats: Callable[[], Any]  # the dense per-linear statistics (``cached.DenseStats``), computed once
    restore: Callable[[], None]  # puts the dense weights back


class CalibrationMode(Protocol):
    """How a Workbench prunes its dense weights at a rate map (``modes.CALIBRATION_MODES`` builds one)."""

    measures_errors: bool  # whether ``prune`` measures the reconstruction errors (else NaN arrays)

    def prepare(self) -> None:
        """Whatever needs a pass over the blocks of its own, done before the prune pass (computed once)."""

    def prune(self, rates: RateMap, progress: Counter | None = None) -> PruneReport:
        """Restore the dense weights, prune them in place at ``rates``; what was measured on the way."""
        ...


class SequentialMode:
    """Paper-faithful calibration: each point re-calibrates block i on the pruned blocks before it.

    The dense trajectory (cumulative-error reference) is the same for every point and is kept
    here, so a point costs two block forwards per block once it is filled (``trajectory``: where it
    is kept; by default on the device).
    """

    measures_errors = True

    def __init__(self, inputs: ModeInputs, trajectory: DenseTrajectory | None = None) -> None:
        self.inputs = inputs
        self.trajectory = trajectory or DenseTrajectory.empty(len(inputs.blocks))

    def prepare(self) -> None:
        self.inputs.calls()  # the block inputs: a forward of their own

    def prune(self, rates: RateMap, progress: Counter | None = None) -> PruneReport:
        i = self.inputs
        i.restore()
        return prune_sequential(i.blocks, i.calls(), rates, i.pruner, i.nm, i.batch_size, progress, self.trajectory)
