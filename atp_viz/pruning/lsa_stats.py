"""LSA's statistic: each linear's minimal linear reconstruction error, from one dense pass (torch).

As ``BlockWanda.blk_s`` of github.com/BeiYazi0/LSA (``layersp/blk.py``) computes it: H = 2/n sum x x^T over the
calibration inputs of the linear (n = calibration sequences there; any constant scale cancels in LSA's
normalisation E / sum E), S_k = H * (W_k^T W_k) for output row k. The input columns are taken in groups of
``group``; in each group, int(group * fraction) times, every row greedily removes the column whose added error
e_kj is smallest (initially W_kj^2 H_jj), adds it to the total, and updates e_k,: += 2 W_kj (W_k,: * H_j,:)
inside the group; after the group, the later columns' e get the cross terms 2 W (err @ H[group, later]). The
total over all rows is the linear's error. Nothing is pruned.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from atp_viz.models.hooks import input_hooks
from atp_viz.pruning.cached import DenseStats, load_stats, save_stats
from atp_viz.pruning.calibration import BlockCalls, run_block
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import Hessian
from atp_viz.schedules.lsa import FRACTION, GROUP

ERROR_KIND = "lsa_error"  # LSA's errors in a dense-statistics cache file: one float64 scalar per (block, linear)


@torch.inference_mode()
def reconstruction_error(
    weight: torch.Tensor, hessian: torch.Tensor, group: int = GROUP, fraction: float = FRACTION
) -> float:
    """The greedy minimal reconstruction error of pruning ``fraction`` of each group of input columns.

    A last group narrower than int(group * fraction) columns prunes all of its columns (the code would pick
    an already-pruned column there and add an infinite error)."""
    if weight.ndim != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"LSA needs W (out x in) and H (in x in), got {tuple(weight.shape)}, {tuple(hessian.shape)}")
    if group < 1 or not 0 < fraction <= 1:
        raise ValueError(f"LSA needs group >= 1 and fraction in (0, 1], got {group}, {fraction:g}")
    w = weight.detach().to(torch.float32)
    h = hessian.detach().to(torch.float32)
    cols = w.shape[1]
    score = w.square() * torch.diagonal(h)
    total = 0.0
    count = int(group * fraction)
    for start in range(0, cols, group):
        stop = min(start + group, cols)
        w1, score1, h1 = w[:, start:stop], score[:, start:stop], h[start:stop, start:stop]
        err = torch.zeros_like(w1)
        for _ in range(min(count, stop - start)):
            idx = torch.argmin(score1, dim=1, keepdim=True)
            total += float(score1.gather(1, idx).sum())
            chosen = w1.gather(1, idx)
            score1 += 2 * w1 * chosen * h1[idx.squeeze(1)]
            score1.scatter_(1, idx, torch.inf)
            err.scatter_(1, idx, chosen)
        if stop < cols:
            score[:, stop:] += 2 * w[:, stop:] * (err @ h[start:stop, stop:])
    return total


@torch.inference_mode()
def block_errors(
    blocks: nn.ModuleList,
    calls: BlockCalls,
    batch_size: int = 8,
    group: int = GROUP,
    fraction: float = FRACTION,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(blocks x linears) reconstruction errors on the dense model, one block at a time (its H then dropped)."""
    hidden = calls.hidden
    rows = []
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        live = {name: Hessian(lin.in_features, lin.weight.device) for name, lin in linears.items()}
        with input_hooks(linears, lambda name, x: live[name].add(x)):
            hidden = run_block(block, hidden, calls.args[i], batch_size)
        rows.append(
            [reconstruction_error(lin.weight, live[name].result(), group, fraction) for name, lin in linears.items()]
        )
        if progress:
            progress(i + 1, len(blocks))
    if len({len(row) for row in rows}) != 1:
        raise ValueError("LSA needs the same linears in every block")
    return np.array(rows, dtype=np.float64)


def cached_errors(
    path: Path, blocks: nn.ModuleList, compute: Callable[[], np.ndarray], meta: dict[str, str]
) -> tuple[np.ndarray, bool]:
    """(``compute()``'s blocks x linears errors, whether they were read back): read from the dense-statistics cache
    file ``path`` when it holds every linear's error, else computed and saved there with ``cached.save_stats`` (the
    cache of the other dense statistics: same folder, format, atomic write, damaged files recomputed)."""
    names = [list(prunable_linears(block)) for block in blocks]
    keys = [(i, name) for i, row in enumerate(names) for name in row]
    found = load_stats(path, kinds=(ERROR_KIND,))
    table = found.states.get(ERROR_KIND, {}) if found is not None else {}
    if table and set(table) == set(keys):
        return np.array([[float(table[(i, n)]) for n in row] for i, row in enumerate(names)], dtype=np.float64), True
    errors = compute()
    states = {(i, n): torch.tensor(float(errors[i, row.index(n)]), dtype=torch.float64) for i, row in enumerate(names)
              for n in row}  # fmt: skip
    save_stats(DenseStats({ERROR_KIND: states}, 0), path, meta)
    return errors, False
