"""Cached calibration: statistics of every linear from one dense pass, reused by every point.

Sequential calibration (the paper's loop) measures block i's statistics on the outputs of the
already-pruned blocks 0..i-1, so every schedule needs its own calibration forward. Cached mode
instead measures every linear's statistics once, on the dense model's own inputs:

- Wanda / OWL: the running sum of squares of each input feature (``ColumnNorms``),
- SparseGPT: the Hessian H = 2 X X^T / n (``Hessian``),

stores them as a safetensors file in the cache (keyed like the results store), and derives each
row's ascending score order once. A rate's mask is then a prefix of that order, so pruning a new
schedule needs no forward at all. The statistics differ from the sequential ones (dense inputs
instead of pruned ones): the README reports by how much on the embedded model.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .calibration import BlockCalls, block_sparsity, run_block
from .hooks import input_hooks
from .layer_stats import outlier_ratio, prunable_linears
from .pruners import ColumnNorms, Hessian, Pruner, magnitude_scores, order_by_score, prune_count, sparsegpt, wanda_scores

BlockProgress = Callable[[int, int], None]  # (blocks done, total blocks)
LinearKey = tuple[int, str]  # (block index, linear name inside the block)
SUM_SQ, HESSIAN = "sum_sq", "hessian"
FORMAT = "1"  # bumped when the file layout changes


@dataclass
class DenseStats:
    """Per-linear input statistics of the dense model on the calibration batch."""

    sum_sq: dict[LinearKey, torch.Tensor]  # (in,) float32 sum of squares per input feature
    hessians: dict[LinearKey, torch.Tensor]  # (in, in) float32 H = 2 X X^T / n; empty unless SparseGPT
    tokens: int  # calibration tokens seen by each linear

    def norms(self, key: LinearKey) -> ColumnNorms:
        """The Wanda accumulator rebuilt exactly (``result()`` = sqrt of the stored sums)."""
        stats = ColumnNorms(self.sum_sq[key].numel(), self.sum_sq[key].device)
        stats.sum_sq, stats.tokens = self.sum_sq[key], self.tokens
        return stats

    def hessian(self, key: LinearKey) -> Hessian:
        stats = Hessian(self.hessians[key].shape[0], self.hessians[key].device)
        stats.h, stats.tokens = self.hessians[key], self.tokens
        return stats

    def to(self, device: torch.device) -> "DenseStats":
        return DenseStats({k: v.to(device) for k, v in self.sum_sq.items()}, {k: v.to(device) for k, v in self.hessians.items()}, self.tokens)


def tensor_name(kind: str, key: LinearKey) -> str:
    return f"{key[0]}/{key[1]}/{kind}"


def save_stats(stats: DenseStats, path: Path, meta: dict[str, str]) -> None:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    from safetensors.torch import save_file

    tensors = {tensor_name(SUM_SQ, k): v.contiguous().cpu() for k, v in stats.sum_sq.items()}
    tensors.update({tensor_name(HESSIAN, k): v.contiguous().cpu() for k, v in stats.hessians.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        save_file(tensors, temp, metadata={**meta, "format": FORMAT, "tokens": str(stats.tokens)})
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def load_stats(path: Path, device: torch.device | str = "cpu") -> DenseStats | None:
    """The statistics stored at ``path``, or None when the file is missing, damaged or stale."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        sum_sq: dict[LinearKey, torch.Tensor] = {}
        hessians: dict[LinearKey, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return None
            for name in f.keys():
                block, linear, kind = name.split("/")
                target = sum_sq if kind == SUM_SQ else hessians
                target[(int(block), linear)] = f.get_tensor(name)
        return DenseStats(sum_sq, hessians, int(meta["tokens"]))
    except Exception:  # a damaged cache file is recomputed, never trusted
        return None


@torch.inference_mode()
def collect_dense_stats(
    blocks: nn.ModuleList, calls: BlockCalls, hessians: bool, batch_size: int = 8, progress: BlockProgress | None = None
) -> DenseStats:
    """One dense block-by-block pass over the calibration batch recording every linear's inputs."""
    hidden = calls.hidden
    sum_sq: dict[LinearKey, torch.Tensor] = {}
    hess: dict[LinearKey, torch.Tensor] = {}
    tokens = 0
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        norms = {name: ColumnNorms(lin.in_features, lin.weight.device) for name, lin in linears.items()}
        squares = {name: Hessian(lin.in_features, lin.weight.device) for name, lin in linears.items()} if hessians else {}

        def record(name: str, x: torch.Tensor) -> None:
            norms[name].add(x)
            if hessians:
                squares[name].add(x)

        with input_hooks(linears, record):
            hidden = run_block(block, hidden, calls.args[i], batch_size)
        for name in linears:
            sum_sq[(i, name)] = norms[name].sum_sq
            tokens = norms[name].tokens
            if hessians:
                hess[(i, name)] = squares[name].h
        if progress:
            progress(i + 1, len(blocks))
    return DenseStats(sum_sq, hess, tokens)


def outlier_ratios_from_stats(blocks: nn.ModuleList, stats: DenseStats, m: float) -> np.ndarray:
    """OWL's D_i from stored dense statistics (same numbers as ``calibration.outlier_ratios``)."""
    ratios = np.zeros(len(blocks))
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        scores = torch.cat([(lin.weight.abs().float() * stats.norms((i, name)).result()).flatten() for name, lin in linears.items()])
        ratios[i] = outlier_ratio(scores, m)
    return ratios


def compact_index(order: torch.Tensor) -> torch.Tensor:
    """Column indices in the smallest integer type that holds them (int16 for <= 32767 columns)."""
    return order.to(torch.int16) if order.shape[1] <= torch.iinfo(torch.int16).max + 1 else order.to(torch.int32)


@torch.inference_mode()
def score_orders(blocks: nn.ModuleList, stats: DenseStats | None, pruner: Pruner) -> dict[LinearKey, torch.Tensor]:
    """Each row's ascending score order (magnitude: |W|; Wanda: |W| * ||X_k||) of every dense linear."""
    orders: dict[LinearKey, torch.Tensor] = {}
    for i, block in enumerate(blocks):
        for name, lin in prunable_linears(block).items():
            if pruner.name == "wanda":
                assert stats is not None
                scores = wanda_scores(lin.weight, stats.norms((i, name)).result())
            else:
                scores = magnitude_scores(lin.weight)
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
    rates: Sequence[float],
    pruner: Pruner,
    stats: DenseStats | None,
    orders: dict[LinearKey, torch.Tensor] | None,
    nm: tuple[int, int] | None = None,
    progress: BlockProgress | None = None,
) -> np.ndarray:
    """Prune dense blocks in place from stored statistics (no forward); returns per-block sparsity.

    Magnitude and Wanda without N:M take a prefix of the precomputed orders; SparseGPT runs its OBS
    update on the stored Hessian; N:M patterns are chosen from the stored statistics.
    """
    if len(rates) != len(blocks):
        raise ValueError(f"schedule has {len(rates)} rates but the model has {len(blocks)} blocks")
    achieved = np.zeros(len(blocks))
    for i, block in enumerate(blocks):
        rate = float(rates[i])
        for name, lin in prunable_linears(block).items():
            key = (i, name)
            if rate == 0.0:
                continue
            if orders is not None and nm is None and pruner.name in ("magnitude", "wanda"):
                zero_prefix_(lin.weight, orders[key], rate)
            elif pruner.name == "sparsegpt":
                assert stats is not None
                lin.weight.copy_(sparsegpt(lin.weight, stats.hessians[key], rate, nm, pruner.blocksize, pruner.percdamp))  # type: ignore[attr-defined]
            else:
                pruner.prune_(lin, stats.norms(key) if pruner.needs_inputs and stats is not None else None, rate, nm)
        achieved[i] = block_sparsity(block)
        if progress:
            progress(i + 1, len(blocks))
    return achieved
