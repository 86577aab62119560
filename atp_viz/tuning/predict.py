"""Predict ATP's best beta without a sweep, from the paper's error-propagation theory (Thm 3.2).

The model (first order in the reconstruction errors). Pruning block i at rate s adds a local error
delta_i(s) = fhat_i(h) - f_i(h) to its output (h: the dense input). Thm 3.2 says an early error is
carried into every later block; to first order block i's error reaches the last block multiplied
by an amplification A_i, and the errors of different blocks add:

    E(beta) = sum_i A_i * e_i(s_i(beta)),   e_i(s) = ||delta_i(s)||_F^2,
    s_i(beta) = S - beta*(L-1)/2 + beta*i     (ATP's arithmetic progression, mean S)

and the predicted best beta is the grid point (beta = step, 2*step, ... <= beta_max) with the
smallest E. Measured once on a few windows of the calibration batch, dense weights:

- e_i(s) at a handful of rates spanning the rates the grid can give block i (each a block forward
  with block i pruned; with cached statistics a rate is a prefix of each row's score order), read
  in between by interpolating log e_i piecewise-linearly in s (extended linearly at the ends);
- A_i by one of the amplification models (``AMPLIFICATIONS``):
  * ``chain``: A_i = prod_{j > i} g_j with g_j = ||f_j(h + delta) - f_j(h)||^2 / ||delta||^2 the
    one-block gain of the previous block's error at rate S (one extra block forward per block);
  * ``direct``: A_i = ||R(F_{>i}(h_i + delta_i(S))) - R(F_{>i}(h_i))||^2 / ||delta_i(S)||^2, the
    error of block i carried through every dense block after it and read out by R = the final norm
    and LM head with the mean logit removed (a common shift leaves the softmax unchanged), measured
    at a few anchor blocks and interpolated in log A (about L * anchors / 2 block forwards);
  * ``residual`` (default): A_i = 1: a block's error reaches the last block along the residual
    stream's identity path unchanged and any further growth is ignored; no extra forwards.

Measured on the embedded model (docs/predict.md): ``residual`` hits the swept best at S = 0.7 and
0.8 and overshoots by 4 grid steps at S = 0.5 and 0.6; ``chain`` and ``direct`` measure early errors
growing ~150x and overshoot by 2-15 steps towards beta_max, so they are kept for study, not default.

Assumptions: errors are small enough for first-order propagation (cross terms between blocks
ignored); the measured direction of each block's error stands for its direction at every rate;
the final-layer squared error ranks betas as perplexity does. The multiplicative scale of A cancels
in the argmin. The pure math (interpolation, amplification, the predicted-error curve, the argmin)
is numpy; the torch part only measures the profile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from atp_viz.config import check_int, check_sparsity
from atp_viz.experiment.workbench import Workbench
from atp_viz.models.loading import base_model
from atp_viz.progress import Progress, counted, scaled
from atp_viz.pruning.cached import CachedMode, DenseStats, LinearKey, linear_stats, score_orders, zero_prefix_
from atp_viz.pruning.calibration import BlockCalls, run_block, squared_norm
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import Pruner
from atp_viz.schedules import published
from atp_viz.store import fingerprint

PREDICTION_KIND = "beta-prediction"
RATE_OFFSETS = (-1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0)  # measured rates: S + offset * widest grid deviation
TINY = 1e-30  # floor of squared errors before taking logs


# -- pure math -------------------------------------------------------------------------------------
def measured_rates(
    num_blocks: int, sparsity: float, step: float, offsets: Sequence[float] = RATE_OFFSETS
) -> np.ndarray:
    """Rates S + o * m for each offset o, m = beta_last * (L-1)/2 the widest deviation of the grid
    (beta_last its largest beta), clipped into [0, 1]; sorted and distinct."""
    grid = published.beta_grid(num_blocks, sparsity, step)
    if grid.size == 0:
        raise published.no_grid_point(num_blocks, sparsity, step)
    widest = float(grid[-1]) * (num_blocks - 1) / 2
    return np.unique(np.clip(sparsity + widest * np.asarray(offsets, dtype=np.float64), 0.0, 1.0))


def interpolate_errors(rates: ArrayLike, errors: ArrayLike, at: ArrayLike) -> np.ndarray:
    """e_i(at_i) for each block i from errors (L, K) measured at ``rates`` (K,): log e is interpolated
    piecewise-linearly in the rate and extended linearly beyond the first and last rate."""
    r, e, x = np.asarray(rates, np.float64), np.asarray(errors, np.float64), np.asarray(at, np.float64)
    if r.ndim != 1 or r.size < 2 or e.shape != (x.size, r.size) or np.any(np.diff(r) <= 0):
        raise ValueError(
            f"need increasing rates (K >= 2) and errors shaped (L, K); got {r.shape}, {e.shape}, {x.shape}"
        )
    logs = np.log(np.maximum(e, TINY))
    k = np.clip(np.searchsorted(r, x) - 1, 0, r.size - 2)  # the segment [r_k, r_k+1] of each point
    t = (x - r[k]) / (r[k + 1] - r[k])
    rows = np.arange(x.size)
    return np.exp(logs[rows, k] + t * (logs[rows, k + 1] - logs[rows, k]))


def anchored_amplification(anchors: ArrayLike, values: ArrayLike, num_blocks: int) -> np.ndarray:
    """A_i for every block from values measured at anchor blocks: log A interpolated linearly in i
    (held constant beyond the first and last anchor)."""
    idx, vals = np.asarray(anchors, np.float64), np.asarray(values, np.float64)
    if idx.size == 0 or idx.shape != vals.shape:
        raise ValueError(f"need one value per anchor block, got {idx.shape} and {vals.shape}")
    return np.exp(np.interp(np.arange(num_blocks), idx, np.log(np.maximum(vals, TINY))))


def chain_amplification(gains: ArrayLike) -> np.ndarray:
    """A_i = prod_{j > i} g_j (A_{L-1} = 1): the error of block i carried through every later block."""
    g = np.asarray(gains, np.float64)
    return np.append(np.cumprod(g[:0:-1])[::-1], 1.0)


def predicted_error(
    amplification: ArrayLike, rates: ArrayLike, errors: ArrayLike, sparsity: float, betas: ArrayLike
) -> np.ndarray:
    """E(beta) = sum_i A_i e_i(S - beta*(L-1)/2 + beta*i) for each beta."""
    a = np.asarray(amplification, np.float64)
    return np.array(
        [float(a @ interpolate_errors(rates, errors, published.atp(a.size, sparsity, b))) for b in np.asarray(betas)]
    )


def best_beta(betas: ArrayLike, errors: ArrayLike) -> tuple[float, int]:
    """The beta with the smallest predicted error and its index (the first of ties)."""
    index = int(np.argmin(np.asarray(errors, np.float64)))
    return float(np.asarray(betas)[index]), index


# amplification model -> A (L,) from a measured profile
AMPLIFICATIONS: dict[str, Callable[[Profile], np.ndarray]] = {
    "chain": lambda p: chain_amplification(p.gains),
    "direct": lambda p: anchored_amplification(p.anchors, p.direct, len(p.gains)),
    "residual": lambda p: np.ones(len(p.gains)),
}
DEFAULT_AMPLIFICATION = "residual"


@dataclass(frozen=True)
class Profile:
    """What the dense model tells about pruning each block (the inputs of the pure model)."""

    rates: np.ndarray  # (K,) rates at which local errors were measured
    local: np.ndarray  # (L, K) e_i(rate_k) = ||fhat_i(h) - f_i(h)||_F^2 on the dense input
    gains: np.ndarray  # (L,) g_i: one-block gain of block i-1's error at rate S (g_0 = 1)
    anchors: np.ndarray  # (M,) blocks whose error at rate S was carried to the readout
    direct: np.ndarray  # (M,) their amplification A measured through every later block
    forwards: int  # block forwards spent

    def to_record(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Profile:
        arrays = {k: np.asarray(record[k]) for k in ("rates", "local", "gains", "anchors", "direct")}
        return cls(**arrays, forwards=int(record["forwards"]))


@dataclass(frozen=True)
class Prediction:
    """A predicted beta on ATP's grid with the predicted-error curve it was chosen from."""

    sparsity: float
    step: float
    amplification: str
    betas: np.ndarray  # the grid
    predicted_error: np.ndarray  # E(beta) per grid point (arbitrary scale)
    beta: float
    index: int  # of ``beta`` in the grid
    seconds: float  # measuring the profile (0 when read back)
    profile: Profile
    cached: bool = False

    @property
    def forwards(self) -> int:
        return self.profile.forwards

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: what the CLI prints and the dashboard draws."""
        return {"sparsity": self.sparsity, "step": self.step, "amplification": self.amplification,
                "beta": self.beta, "index": self.index, "grid_points": int(self.betas.size),
                "seconds": self.seconds, "block_forwards": self.forwards, "cached": self.cached,
                "curve": [{"beta": float(b), "predicted_error": float(e)}
                          for b, e in zip(self.betas, self.predicted_error)]}  # fmt: skip


def predict_from_profile(
    profile: Profile, sparsity: float, step: float, amplification: str = DEFAULT_AMPLIFICATION, seconds: float = 0.0
) -> Prediction:
    """The predicted best beta on the grid under one amplification model (pure)."""
    if amplification not in AMPLIFICATIONS:
        raise ValueError(f"unknown amplification model {amplification!r}; allowed: {', '.join(AMPLIFICATIONS)}")
    if amplification == "direct" and profile.direct.size == 0:
        raise ValueError("the direct amplification was not measured for this profile (anchors = 0)")
    betas = published.beta_grid(len(profile.gains), sparsity, step)
    curve = predicted_error(AMPLIFICATIONS[amplification](profile), profile.rates, profile.local, sparsity, betas)
    beta, index = best_beta(betas, curve)
    return Prediction(sparsity, step, amplification, betas, curve, beta, index, seconds, profile)


# -- measuring the profile (torch) --------------------------------------------------------------
@contextmanager
def pruned_block(
    block: nn.Module,
    index: int,
    rate: float,
    pruner: Pruner,
    stats: DenseStats | None,
    orders: dict[LinearKey, torch.Tensor] | None,
    nm: tuple[int, int] | None = None,
) -> Iterator[None]:
    """Block ``index`` pruned at ``rate`` (a prefix of each row's order when given), restored after."""
    linears = prunable_linears(block)
    saved = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    try:
        with torch.no_grad():
            for name, lin in linears.items():
                if orders is not None and nm is None:
                    zero_prefix_(lin.weight, orders[(index, name)], rate)
                else:
                    pruner.prune_(lin, linear_stats(stats, pruner, (index, name)), rate, nm)
        yield
    finally:
        with torch.no_grad():
            for name, lin in linears.items():
                lin.weight.copy_(saved[name])


def anchor_blocks(num_blocks: int, anchors: int) -> np.ndarray:
    """``anchors`` source blocks spread evenly over 0..L-1 (the last block always among them)."""
    if anchors <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.linspace(0, num_blocks - 1, max(anchors, 2))).astype(np.int64))


@torch.inference_mode()
def measure_profile(
    blocks: nn.ModuleList,
    calls: BlockCalls,
    rates: ArrayLike,
    sparsity: float,
    prune: Callable[[int, float], Any],
    windows: int,
    batch_size: int = 8,
    anchors: int = 0,
    readout: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Profile:
    """Local errors e_i(rate_k), one-block gains g_i and direct amplifications at anchor blocks.

    ``prune(i, rate)``: a context manager pruning block i at ``rate`` and restoring it afterwards.
    One dense pass over the first ``windows`` calibration windows; per block K pruned forwards and one
    gain forward; then each anchor block's error at rate S carried through the dense blocks after it
    and ``readout`` (``logit_readout``; identity when None).
    """
    rates = np.asarray(rates, np.float64)
    n, centre = len(blocks), int(np.argmin(np.abs(rates - sparsity)))
    read = readout or (lambda x: x)
    hidden = calls.hidden[:windows]
    local, gains = np.zeros((n, rates.size)), np.ones(n)
    inputs: list[torch.Tensor] = []
    deltas: list[torch.Tensor] = []
    forwards = 0
    for i, block in enumerate(blocks):
        run = lambda x, i=i, block=block: run_block(block, x, calls.args[i], batch_size)  # noqa: E731
        out = run(hidden)  # (N, T, H) dense output
        if deltas:  # the previous block's error at rate S, through this dense block
            previous = deltas[-1]
            gains[i] = squared_norm(run(hidden + previous) - out) / max(squared_norm(previous), TINY)
            forwards += 1
        for k, rate in enumerate(rates):
            with prune(i, float(rate)):
                error = run(hidden) - out
            local[i, k] = squared_norm(error)
            if k == centre:
                deltas.append(error)
        inputs.append(out)  # inputs[i] = h_i, the dense output of block i
        forwards += 1 + rates.size
        hidden = out
        if progress:
            progress(i + 1, n + 1)
    sources = anchor_blocks(n, anchors)
    final = read(hidden)
    amplified = []
    for i in sources:
        noisy = inputs[i] + deltas[i]
        for j in range(int(i) + 1, n):
            noisy = run_block(blocks[j], noisy, calls.args[j], batch_size)
            forwards += 1
        amplified.append(squared_norm(read(noisy) - final) / max(squared_norm(deltas[i]), TINY))
    if progress:
        progress(n + 1, n + 1)
    return Profile(rates, local, gains, sources, np.asarray(amplified, np.float64), forwards)


@dataclass(frozen=True)
class PredictConfig:
    """How the profile is measured: ``windows`` of the calibration batch, the amplification model,
    and how many anchor blocks carry their error to the readout (about L * anchors / 2 forwards)."""

    windows: int = 2
    amplification: str = DEFAULT_AMPLIFICATION
    anchors: int = 6

    def __post_init__(self) -> None:
        check_int("prediction windows", self.windows, 1)
        check_int("anchor blocks", self.anchors, 0)
        if self.amplification not in AMPLIFICATIONS:
            raise ValueError(
                f"unknown amplification model {self.amplification!r}; allowed: {', '.join(AMPLIFICATIONS)}"
            )
        if self.amplification == "direct" and self.anchors == 0:
            raise ValueError("the direct amplification needs anchors >= 1")


READOUT = "centered-logits"  # what the direct amplification is measured on (part of the stored key)
READOUT_STRIDE = 8  # the readout looks at every 8th position (the LM head is the costly part)


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied to the last block's output before the LM head (None when not found)."""
    body = base_model(model)
    for name in ("norm", "final_layer_norm", "ln_f", "final_layernorm"):
        if isinstance(module := getattr(body, name, None), nn.Module):
            return module
    return None


def logit_readout(model: nn.Module, stride: int = READOUT_STRIDE) -> Callable[[torch.Tensor], torch.Tensor]:
    """Last hidden state -> centred logits (mean over the vocabulary removed: a shift common to every
    logit leaves the softmax unchanged) at every ``stride``-th position: the errors that change the
    next-token distribution, which is what perplexity reads."""
    norm, head = final_norm(model), getattr(model, "get_output_embeddings", lambda: None)()
    if not isinstance(head, nn.Module):
        raise ValueError("the model has no output embeddings (LM head) to read the last hidden state with")

    def read(hidden: torch.Tensor) -> torch.Tensor:
        x = hidden[:, ::stride]
        logits = head(norm(x) if norm is not None else x).float()  # (N, T/stride, V)
        return logits - logits.mean(dim=-1, keepdim=True)

    return read


def check_request(num_blocks: int, sparsity: float, step: float) -> None:
    """One-line errors for a bad sparsity or step, before anything is measured."""
    check_sparsity(sparsity)
    if not (isinstance(step, (int, float)) and np.isfinite(step) and step > 0):
        raise ValueError(f"step must be a finite number > 0, got {step!r}")
    if step > published.beta_max(num_blocks, sparsity) + published.BETA_TOL:
        raise published.no_grid_point(num_blocks, sparsity, step)


def prediction_key(wb: Workbench, sparsity: float, step: float, config: PredictConfig) -> str:
    """The results-store key of a prediction: what decides the pruned models, S, step and config."""
    return fingerprint(kind=PREDICTION_KIND, **wb.identity(), sparsity=float(sparsity), step=float(step),
                       windows=config.windows, anchors=config.anchors, readout=READOUT)  # fmt: skip


def stored_prediction(
    wb: Workbench, sparsity: float, step: float = published.GRID_STEP, config: PredictConfig | None = None
) -> Prediction | None:
    """The stored prediction for this setting, or None; never measures."""
    config = config or PredictConfig()
    row = wb.get(prediction_key(wb, sparsity, step, config))
    if row is None:
        return None
    prediction = predict_from_profile(Profile.from_record(row["profile"]), sparsity, step, config.amplification,
                                      float(row["seconds"]))  # fmt: skip
    return Prediction(**{**prediction.__dict__, "cached": True})


def predict_for(
    wb: Workbench,
    sparsity: float,
    step: float = published.GRID_STEP,
    config: PredictConfig | None = None,
    progress: Progress | None = None,
) -> Prediction:
    """Predict the best beta for ``wb``'s model at ``sparsity`` (read back when stored; else measured
    on the dense model and stored at once). Needs the dense statistics (one dense pass, cached)."""
    config = config or PredictConfig()
    check_request(wb.num_blocks, sparsity, step)
    if (found := stored_prediction(wb, sparsity, step, config)) is not None:
        return found
    started = time.perf_counter()
    pruner, nm = wb.pruner, wb.setup.prune.nm
    stats = wb.dense_stats(scaled(progress, 0.0, 0.2)) if pruner.needs_inputs else None
    wb.restore()
    orders = wb.calibration.orders() if nm is None and isinstance(wb.calibration, CachedMode) else None
    if orders is None and nm is None:
        orders = score_orders(wb.loaded_model.blocks, stats, pruner)
    wb.restore()
    rates = measured_rates(wb.num_blocks, sparsity, step)
    profile = measure_profile(
        wb.loaded_model.blocks, wb.block_calls(), rates, sparsity,
        lambda i, rate: pruned_block(wb.loaded_model.blocks[i], i, rate, pruner, stats, orders, nm),
        min(config.windows, wb.setup.calib.samples), wb.setup.batch_size, config.anchors,
        logit_readout(wb.loaded_model.model), counted(progress, "predicting: block", 0.2, 0.8),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    prediction = predict_from_profile(profile, sparsity, step, config.amplification, seconds)
    about = {"method": "atp", "sparsity": float(sparsity), "step": float(step), "windows": config.windows}
    wb.put(prediction_key(wb, sparsity, step, config), PREDICTION_KIND, about,
                {"profile": profile.to_record(), "seconds": seconds, "beta": prediction.beta})  # fmt: skip
    return prediction
