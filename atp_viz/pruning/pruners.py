"""Pruning math (magnitude, Wanda, SparseGPT, N:M) as free functions, the running statistics they
need, and one small ``Pruner`` strategy per method.

A mask is a ``torch.bool`` tensor shaped like the weight (out_features, in_features), ``True`` =
set to zero. Rates are per-layer fractions in [0, 1]; rate 0 leaves a weight untouched. With an
N:M pattern the pattern replaces the rate: in each group of M consecutive input columns of a row
the N lowest-scoring weights are zeroed.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from atp_viz.config import check_choice, check_nm

COUNT_TOL = 1e-9  # floor(cols * rate) must not come out one short when the product is integral
SPARSEGPT_BLOCKSIZE = 128  # SparseGPT: columns pruned together, lazy OBS update between blocks
SPARSEGPT_PERCDAMP = 0.01  # SparseGPT: H += 0.01 * mean(diag H) * I
HESSIAN_SCALE = 2.0  # H = 2 X X^T / n: Hessian of the layer's squared output error


def check_rate(sparsity: float, name: str = "sparsity") -> float:
    """A per-layer pruning rate is a fraction in [0, 1] (0: untouched, 1: all zero)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {sparsity!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def prune_count(size: int, sparsity: float) -> int:
    """floor(size * sparsity): how many of ``size`` weights a rate prunes (float-safe)."""
    return math.floor(size * check_rate(sparsity) + COUNT_TOL)


def _check_matrix(name: str, tensor: torch.Tensor) -> None:
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D (out_features, in_features), got {tuple(tensor.shape)}")


def _check_groups(nm: tuple[int, int], cols: int) -> None:
    check_nm(nm)
    if cols % nm[1]:
        raise ValueError(f"N:M {nm[0]}:{nm[1]} needs in_features divisible by {nm[1]}, got {cols}")


# --- masks --------------------------------------------------------------------------------------


def order_by_score(scores: torch.Tensor) -> torch.Tensor:
    """Per-row ascending argsort of (out, in) scores; stable, so ties keep column order.

    Any rate's mask is a prefix of this order (``mask_from_order``), so it can be cached.
    """
    _check_matrix("scores", scores)
    return torch.argsort(scores, dim=1, stable=True)


def mask_from_order(order: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the first floor(in * sparsity) columns of each row's ascending score order."""
    _check_matrix("order", order)
    count = prune_count(order.shape[1], sparsity)
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    return mask.scatter_(1, order[:, :count], True)


def nm_mask(scores: torch.Tensor, nm: tuple[int, int]) -> torch.Tensor:
    """In each group of M consecutive input columns of every row, prune the N lowest scores."""
    _check_matrix("scores", scores)
    _check_groups(nm, scores.shape[1])
    n, m = nm
    groups = scores.reshape(scores.shape[0], -1, m)  # (out, in / M, M)
    lowest = torch.argsort(groups, dim=2, stable=True)[..., :n]
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=scores.device)
    return mask.scatter_(2, lowest, True).reshape(scores.shape)


def row_prune_mask(scores: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask pruning exactly floor(in * sparsity) lowest scores of every row, or N:M groups.

    Rate 0 prunes nothing, with or without N:M.
    """
    _check_matrix("scores", scores)
    if check_rate(sparsity) == 0.0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if nm is not None:
        return nm_mask(scores, nm)
    return lowest_mask(scores, prune_count(scores.shape[1], sparsity))


def lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` lowest scores of every row, ties broken left to right.

    Equal to the first ``count`` entries of the stable ascending order (``mask_from_order``) but
    without a full sort: an unsorted top-k gives each row's count-th value (3x faster on a CPU,
    and a sequential point prunes every linear), then the ties at that value are taken in column
    order, which matters on quantized weights where equal scores are common.
    """
    if count == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    threshold = torch.topk(scores, count, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    below, ties = scores < threshold, scores == threshold
    needed = count - below.sum(dim=1, keepdim=True)  # how many of each row's ties are pruned
    if bool((ties.sum(dim=1, keepdim=True) == needed).all()):  # no row has surplus ties: all go
        return below | ties
    return below | (ties & (ties.cumsum(dim=1) <= needed))


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|W| in float32."""
    return weight.detach().float().abs()


def wanda_scores(weight: torch.Tensor, col_norms: torch.Tensor) -> torch.Tensor:
    """Wanda: |W_jk| * ||X_k||_2 in float32, X_k = input feature k over all calibration tokens."""
    _check_matrix("weight", weight)
    if col_norms.shape != (weight.shape[1],):
        raise ValueError(f"col_norms must have shape ({weight.shape[1]},), got {tuple(col_norms.shape)}")
    return magnitude_scores(weight) * col_norms.detach().float().to(weight.device).reshape(1, -1)


def magnitude(weight: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None) -> torch.Tensor:
    """Mask of the lowest |W| per output row (not per layer as the Wanda repo's baseline)."""
    return row_prune_mask(magnitude_scores(weight), sparsity, nm)


def wanda(
    weight: torch.Tensor, col_norms: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """Mask of the lowest |W_jk| * ||X_k||_2 per output row (Wanda's comparison group)."""
    return row_prune_mask(wanda_scores(weight, col_norms), sparsity, nm)


# --- SparseGPT -----------------------------------------------------------------------------------


def _inverse_hessian_factor(hessian: torch.Tensor, W: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1; zeroes the columns of W whose input never fired."""
    H = hessian.detach().to(device=W.device, dtype=W.dtype).clone()
    diag = H.diagonal()
    dead = diag == 0
    diag[dead] = 1.0  # a silent feature carries no information; keep H invertible
    W[:, dead] = 0.0
    diag += percdamp * diag.mean()
    try:
        H_inv = torch.cholesky_inverse(torch.linalg.cholesky(H))
        return torch.linalg.cholesky(H_inv, upper=True)
    except torch.linalg.LinAlgError:
        raise ValueError(
            f"the Hessian is not positive definite with percdamp={percdamp}; "
            "collect more calibration tokens or raise percdamp"
        ) from None


def _block_mask(W1: torch.Tensor, Hinv1: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` lowest OBS saliencies w^2 / [H^-1]_cc^2 over the whole column block."""
    saliency = W1.square() / Hinv1.diagonal().reshape(1, -1).square()  # (out, block)
    lowest = torch.argsort(saliency.flatten(), stable=True)[:count]
    mask = torch.zeros(saliency.numel(), dtype=torch.bool, device=W1.device)
    return mask.index_fill_(0, lowest, True).reshape(saliency.shape)


def _obs_block(
    W1: torch.Tensor, Hinv1: torch.Tensor, mask1: torch.Tensor, nm: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a column block one column at a time, moving each column's error onto the later
    columns of the block (OBS). Returns the pruned block and the scaled errors."""
    errors = torch.zeros_like(W1)
    for c in range(W1.shape[1]):
        if nm is not None and c % nm[1] == 0:  # N:M groups are chosen on the updated weights
            group = slice(c, c + nm[1])
            saliency = W1[:, group].square() / Hinv1.diagonal()[group].reshape(1, -1).square()
            mask1[:, group] = nm_mask(saliency, nm)
        w = W1[:, c]
        error = w.masked_fill(~mask1[:, c], 0.0) / Hinv1[c, c]  # (w - q) / d
        W1[:, c:] -= error.unsqueeze(1) @ Hinv1[c, c:].unsqueeze(0)  # sets pruned entries to 0
        W1[:, c].masked_fill_(mask1[:, c], 0.0)  # exact zeros despite rounding
        errors[:, c] = error
    return W1, errors


def _check_sparsegpt_args(
    weight: torch.Tensor, hessian: torch.Tensor, nm: tuple[int, int] | None, blocksize: int, percdamp: float
) -> None:
    _check_matrix("weight", weight)
    cols = weight.shape[1]
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian must have shape ({cols}, {cols}), got {tuple(hessian.shape)}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be an integer >= 1, got {blocksize!r}")
    if not (math.isfinite(percdamp) and percdamp >= 0):
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp}")
    if nm is not None:
        _check_groups(nm, cols)
        if blocksize % nm[1]:
            raise ValueError(f"blocksize must be a multiple of M={nm[1]}, got {blocksize}")


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = SPARSEGPT_BLOCKSIZE,
    percdamp: float = SPARSEGPT_PERCDAMP,
) -> torch.Tensor:
    """SparseGPT: the pruned and OBS-updated weight (same dtype and shape; math in >= float32).

    H is damped by percdamp * mean(diag H); Hinv = upper Cholesky factor of H^-1. Per block of
    ``blocksize`` columns the mask takes the lowest w^2 / [Hinv]_cc^2 over the whole block
    (unstructured) or per M-group (N:M); each pruned column's error (w - q) / [Hinv]_cc is spread
    over the later columns with row c of Hinv. Unstructured guarantee: the weight as a whole gets
    exactly floor(numel * sparsity) zeros (block quotas are rounded cumulatively), so the achieved
    rate is within 1/numel of the target - tighter than one weight per row. Per-row counts are NOT
    controlled: as in the reference, the mask is chosen over the whole block. Columns whose input
    never fired are zeroed; they have zero saliency, so they fill the block's quota first and only
    add zeros beyond floor(numel * sparsity) where they outnumber it.
    """
    _check_sparsegpt_args(weight, hessian, nm, blocksize, percdamp)
    sparsity = check_rate(sparsity)
    rows, cols = weight.shape
    if sparsity == 0.0:
        return weight.detach().clone()
    W = weight.detach().to(torch.promote_types(weight.dtype, torch.float32)).clone()  # (out, in)
    Hinv = _inverse_hessian_factor(hessian, W, percdamp)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        Hinv1 = Hinv[start:end, start:end]
        W1 = W[:, start:end].clone()
        if nm is None:
            count = prune_count(rows * end, sparsity) - prune_count(rows * start, sparsity)
            mask1 = _block_mask(W1, Hinv1, count)
        else:
            mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W.device)
        pruned, errors = _obs_block(W1, Hinv1, mask1, nm)
        W[:, start:end] = pruned
        W[:, end:] -= errors @ Hinv[start:end, end:]  # lazy update of the columns still to come
    return W.to(weight.dtype)


# --- statistics ----------------------------------------------------------------------------------


def _as_tokens(x: torch.Tensor, like: torch.Tensor, in_features: int) -> torch.Tensor:
    """(..., in_features) inputs as a float32 (tokens, in_features) matrix on ``like``'s device."""
    if x.shape[-1] != in_features:
        raise ValueError(f"inputs must end with {in_features} features, got shape {tuple(x.shape)}")
    return x.detach().reshape(-1, in_features).to(device=like.device, dtype=torch.float32)


class ColumnNorms:
    """Running sum of squares per input feature; ``result()`` = ||X_k||_2 over all tokens seen."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.sum_sq = torch.zeros(in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate inputs shaped (..., in_features) of any dtype."""
        x = _as_tokens(x, self.sum_sq, self.in_features)  # (tokens, in)
        self.sum_sq += x.square().sum(dim=0)
        self.tokens += x.shape[0]

    def result(self) -> torch.Tensor:
        return self.sum_sq.sqrt()


class Hessian:
    """H = 2 X X^T / n over the n tokens seen (X: in_features x n), a running mean in float32.

    ``result()`` returns the accumulator's own tensor (no copy; SparseGPT copies it).
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.h = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate inputs shaped (..., in_features) of any dtype."""
        x = _as_tokens(x, self.h, self.in_features)  # (tokens, in)
        total = self.tokens + x.shape[0]
        if total == 0:
            return
        self.h *= self.tokens / total  # rescale the old mean to the new token count
        self.h += (HESSIAN_SCALE / total) * (x.T @ x)
        self.tokens = total

    def result(self) -> torch.Tensor:
        return self.h


# --- strategies ----------------------------------------------------------------------------------

Stats = ColumnNorms | Hessian
# statistic kind -> its accumulator; a kind's state tensor is what the cached mode stores
STAT_KINDS: dict[str, type[ColumnNorms] | type[Hessian]] = {"sum_sq": ColumnNorms, "hessian": Hessian}


def stats_state(stats: Stats) -> torch.Tensor:
    """The tensor an accumulator keeps (sum of squares per feature, or H)."""
    return stats.sum_sq if isinstance(stats, ColumnNorms) else stats.h


def stats_from_state(kind: str, state: torch.Tensor, tokens: int) -> Stats:
    """An accumulator of ``kind`` rebuilt exactly from its stored state and token count."""
    check_choice("statistic kind", kind, tuple(STAT_KINDS))
    stats = STAT_KINDS[kind](state.shape[0], state.device)
    if isinstance(stats, ColumnNorms):
        stats.sum_sq = state
    else:
        stats.h = state
    stats.tokens = tokens
    return stats


def recorder(stats: Mapping[str, Stats | None]) -> Callable[[str, torch.Tensor], None]:
    """An ``input_hooks`` callback that adds each linear's inputs to its accumulator (if it has one)."""

    def add(name: str, x: torch.Tensor) -> None:
        accumulator = stats[name]
        if accumulator is not None:
            accumulator.add(x)

    return add


class Pruner(ABC):
    """One pruning method: the input statistics it observes, its scores, and how it compresses a weight.

    ``stats_kind`` names the accumulator it needs (``STAT_KINDS``; None: no inputs). ``scores``
    returns per-row scores whose ascending order gives the mask at any rate (None when the mask is
    not a prefix of a fixed order, as for SparseGPT): the cached mode sorts them once.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    stats_kind: ClassVar[str | None] = None
    recipe_modifier: ClassVar[str]  # the llm-compressor modifier that runs the same method
    recipe_note: ClassVar[str] = ""

    @property
    def needs_inputs(self) -> bool:
        return self.stats_kind is not None

    def new_stats(self, in_features: int, device: torch.device | str | None = None) -> Stats | None:
        """A fresh accumulator to ``add`` a linear's inputs to (None: no inputs needed)."""
        return None if self.stats_kind is None else STAT_KINDS[self.stats_kind](in_features, device)

    def scores(self, weight: torch.Tensor, stats: Stats | None) -> torch.Tensor | None:
        """Per-row scores (low = pruned first) when the mask is a prefix of their order."""
        return None

    @abstractmethod
    def pruned_weight(
        self, weight: torch.Tensor, stats: Stats | None, sparsity: float, nm: tuple[int, int] | None
    ) -> torch.Tensor:
        """The weight after pruning, same shape and dtype."""

    @torch.no_grad()
    def prune_(
        self, linear: nn.Linear, stats: Stats | None, sparsity: float, nm: tuple[int, int] | None = None
    ) -> None:
        """Prune ``linear.weight`` in place at ``sparsity`` (or N:M); rate 0 is a no-op."""
        sparsity = check_rate(sparsity)
        check_nm(nm)
        if sparsity == 0.0:
            return
        linear.weight.copy_(self.pruned_weight(linear.weight, stats, sparsity, nm))

    def _stats(self, stats: Stats | None, kind: type) -> Stats:
        if stats is None or not isinstance(stats, kind):
            raise ValueError(
                f"{self.name} needs {kind.__name__} statistics of the layer inputs, got {type(stats).__name__}"
            )
        return stats


class MagnitudePruner(Pruner):
    name = "magnitude"
    label = "magnitude |W|"
    recipe_modifier = "WandaPruningModifier"
    recipe_note = "llm-compressor has no oneshot magnitude modifier; Wanda is the closest"

    def scores(self, weight: torch.Tensor, stats: Stats | None) -> torch.Tensor:
        return magnitude_scores(weight)

    def pruned_weight(
        self, weight: torch.Tensor, stats: Stats | None, sparsity: float, nm: tuple[int, int] | None
    ) -> torch.Tensor:
        return weight.masked_fill(row_prune_mask(self.scores(weight, stats), sparsity, nm), 0.0)


class WandaPruner(Pruner):
    name = "wanda"
    label = "Wanda |W| x ||X||"
    stats_kind = "sum_sq"
    recipe_modifier = "WandaPruningModifier"

    def scores(self, weight: torch.Tensor, stats: Stats | None) -> torch.Tensor:
        norms = self._stats(stats, ColumnNorms).result()
        return wanda_scores(weight, norms)

    def pruned_weight(
        self, weight: torch.Tensor, stats: Stats | None, sparsity: float, nm: tuple[int, int] | None
    ) -> torch.Tensor:
        return weight.masked_fill(row_prune_mask(self.scores(weight, stats), sparsity, nm), 0.0)


@dataclass(frozen=True)
class SparseGPTPruner(Pruner):
    name: ClassVar[str] = "sparsegpt"
    label: ClassVar[str] = "SparseGPT (OBS update)"
    stats_kind: ClassVar[str | None] = "hessian"
    recipe_modifier: ClassVar[str] = "SparseGPTModifier"
    blocksize: int = SPARSEGPT_BLOCKSIZE
    percdamp: float = SPARSEGPT_PERCDAMP

    def pruned_weight(
        self, weight: torch.Tensor, stats: Stats | None, sparsity: float, nm: tuple[int, int] | None
    ) -> torch.Tensor:
        hessian = self._stats(stats, Hessian).result()
        return sparsegpt(weight, hessian, sparsity, nm, self.blocksize, self.percdamp)


PRUNERS: dict[str, type[Pruner]] = {p.name: p for p in (WandaPruner, SparseGPTPruner, MagnitudePruner)}


def get_pruner(name: str) -> Pruner:
    """The strategy called ``name`` (a key of ``PRUNERS``)."""
    check_choice("pruner", name, tuple(PRUNERS))
    return PRUNERS[name]()


@dataclass(frozen=True)
class PruneConfig:
    """Which pruner scores the weights, and whether it keeps an N:M pattern instead of a rate."""

    pruner: str = "wanda"
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_choice("pruner", self.pruner, tuple(PRUNERS))
        check_nm(self.nm)
