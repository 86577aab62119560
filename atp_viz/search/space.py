"""Search over per-block sparsity rates under a mean constraint (Optuna studies, resumable).

The search space is every schedule r (one rate per decoder block, L >= 2 blocks) with

    sum_i w_i r_i / sum_i w_i = S      (w_i = parameter count of block i; the model's sparsity)
    lo <= r_i <= hi,   lo = max(0, S - max_delta),  hi = min(1, S + max_delta)

(``max_delta = None`` means lo = 0, hi = 1). The objective (e.g. validation perplexity) is
minimised. Every trial is feasible by construction, through this parametrisation:

    raw parameters   z in [-1, 1]^L ("z0" .. "z{L-1}"), amplitude a in [0, 1] ("a")
    direction        d = z - (sum_i w_i z_i / sum_i w_i)            (so sum_i w_i d_i = 0)
    longest step     t_max = min( min_{d_i > 0} (hi - S) / d_i , min_{d_i < 0} (S - lo) / (-d_i) )
    schedule         r = S + a * t_max * d                           (r = S everywhere if d = 0)

The weighted mean of r is S + a t_max (sum w d) / sum w = S, and each r_i lies between S and
S + t_max d_i, which is inside [lo, hi]. The map is onto the feasible set: a feasible r is reached
by z = (r - S) / max|r - S| (already weighted-zero-mean, so d = z) and a = max|r - S| / t_max(z),
which is <= 1 because the step max|r - S| along z is feasible. It is not one-to-one (r depends
only on the direction of d and on a), which the samplers tolerate. ``params_from_rates`` is that
inverse.

Samplers (``SAMPLERS``, chosen by name): ``tpe`` (Optuna TPE, multivariate), ``cmaes`` (Optuna
CMA-ES), ``evo`` (a mean-preserving (1 + lambda) evolutionary search with EvoPress-style level-switch
mutations, ``EvoSampler``). Optuna's ``GPSampler`` is left out: it needs scipy (and torch), and scipy
is not a dependency of atp-viz.

Storage and resume: one Optuna ``JournalStorage`` file (``JournalFileBackend``) at a path the
caller gives, one study per ``study_name`` (``load_if_exists``). A call takes an exclusive lock on
the study (a ``<file>.<hash>.lock`` file beside the journal, ``fcntl.flock``, released by the kernel
when the process dies), so a trial still RUNNING when the lock is taken was left by a dead process:
it is marked FAIL and its slot is run again. Finished trials are never recomputed; every sampler
rebuilds its state from the stored trials (TPE and evo are functions of the trial history, CMA-ES
restores its optimiser from Optuna's trial attributes). TPE's and CMA-ES's random seed is derived
from ``(seed, number of stored trials, sampler name)`` so a resumed run does not replay the first
run's draws and the two samplers do not share their first random trial;
evo keys its draws by trial number, so after a clean stop a resumed evo search equals an
uninterrupted one.
A journal whose last line was half-written by a writer killed mid-append is cut back to its last
whole line (``JournalRepairedWarning``). Seconds a killed process spent on its unfinished trial
are not counted in ``Trial.seconds``.

ATP seeding: ``run_search(enqueue=[...])`` evaluates given schedules first (e.g. uniform and ATP's
best). The default is none, so a search is independent of ATP.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import optuna
from numpy.typing import ArrayLike
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, CmaEsSampler, TPESampler
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

try:  # POSIX only; elsewhere two runs of one study are not kept apart
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SAMPLERS",
    "EvoSampler",
    "JournalRepairedWarning",
    "Monotonicity",
    "RateSpace",
    "SamplerEntry",
    "SearchBusyError",
    "Trial",
    "best_so_far",
    "check_budget",
    "check_sampler",
    "level_switch",
    "load_trials",
    "monotonicity",
    "params_from_rates",
    "rates_from_params",
    "run_search",
]

Z_LOW, Z_HIGH = -1.0, 1.0  # box of the raw direction parameters
AMP_LOW, AMP_HIGH = 0.0, 1.0  # amplitude: fraction of the longest feasible step
FLAT_TOL = 1e-12  # a direction with max|d| below this is no direction: the uniform schedule
SEED_TOL = 1e-9  # an enqueued schedule's weighted mean may miss S by this much (float noise)
TIE_DECIMALS = 9  # rates are rounded to this many decimals before ranking (float noise is no order)
EVO_OFFSPRING = 4  # lambda of the (1 + lambda) search: children per parent
EVO_STEP = 0.05  # sparsity quantum of one level switch for a block of mean size (docs/search.md: 0.01-0.05 measured)
EVO_MAX_SWITCHES = 4  # a child makes 1..this many level switches
TAIL_CHUNK = 1 << 16  # bytes read per step when looking back for the journal's last newline
SEED_SPREAD = 2**31 - 1  # samplers take a 31-bit seed
PARAM_AMP = "a"
ATTR_RATES = "rates"  # user attribute: the schedule the objective saw (list of floats)
ATTR_SECONDS = "seconds"  # user attribute: search wall time when the trial finished
ATTR_SEED = "seed_rates"  # user attribute of an enqueued trial: the exact schedule given
ATTR_STALE = "failed_reason"
ATTR_SETTINGS = "atp_viz_search"  # study user attribute: the settings the study was created with
STALE_REASON = "left RUNNING by a process that died; its slot was run again"


class SearchBusyError(RuntimeError):
    """Another process (or thread) is running a search of this study right now."""


class JournalRepairedWarning(UserWarning):
    """The journal ended in a half-written line (a writer died mid-append); that line was cut."""


# ------------------------------------------------------------------------------ parametrisation


def _z_name(i: int) -> str:
    return f"z{i}"


def _bounds(sparsity: float, max_delta: float | None) -> tuple[float, float]:
    """lo = max(0, S - max_delta), hi = min(1, S + max_delta) (0 and 1 without max_delta)."""
    if max_delta is None:
        return 0.0, 1.0
    return max(0.0, sparsity - max_delta), min(1.0, sparsity + max_delta)


def _longest_step(direction: np.ndarray, sparsity: float, low: float, high: float) -> float:
    """t_max = min( min_{d_i>0} (hi - S)/d_i , min_{d_i<0} (S - lo)/(-d_i) ); d must be non-zero."""
    up, down = direction > 0, direction < 0
    limits = np.concatenate([(high - sparsity) / direction[up], (sparsity - low) / -direction[down]])
    return float(limits.min())


def rates_from_params(
    z: ArrayLike, amplitude: float, weights: np.ndarray, sparsity: float, max_delta: float | None = None
) -> np.ndarray:
    """r = S + a * t_max * d with d = z - sum(w z)/sum(w): a feasible schedule for any z, a in the box.

    Feasible = weighted mean S (to float rounding, ~1e-16) and every rate in [lo, hi] (module
    docstring). max|d| < FLAT_TOL gives the uniform schedule.
    """
    z = np.asarray(z, dtype=np.float64)
    low, high = _bounds(sparsity, max_delta)
    direction = z - np.sum(weights * z) / np.sum(weights)  # weighted-zero-mean
    if np.max(np.abs(direction)) < FLAT_TOL:
        return np.full(z.size, sparsity)
    step = amplitude * _longest_step(direction, sparsity, low, high)
    return np.clip(sparsity + step * direction, low, high)  # clip only removes float noise


def params_from_rates(
    rates: np.ndarray, weights: np.ndarray, sparsity: float, max_delta: float | None = None
) -> dict[str, float]:
    """The inverse of ``rates_from_params`` for a feasible r: z = (r - S)/max|r - S|, a = max|r - S|/t_max(z).

    z has weighted mean 0 (because r has weighted mean S), so d = z and r = S + a t_max z.
    The uniform schedule maps to z = 0, a = 0.
    """
    low, high = _bounds(sparsity, max_delta)
    offset = np.asarray(rates, dtype=np.float64) - sparsity
    spread = float(np.max(np.abs(offset)))
    if spread < FLAT_TOL:
        z, amplitude = np.zeros(offset.size), 0.0
    else:
        z = offset / spread
        amplitude = spread / _longest_step(z, sparsity, low, high)
    params = {_z_name(i): float(np.clip(v, Z_LOW, Z_HIGH)) for i, v in enumerate(z)}
    params[PARAM_AMP] = float(np.clip(amplitude, AMP_LOW, AMP_HIGH))
    return params


@dataclass(frozen=True)
class RateSpace:
    """The feasible schedules of one search: block weights w, target S, optional bound on |r_i - S|.

    Build it with ``RateSpace.create`` (validates); then ``decode`` maps Optuna parameters to a
    schedule and ``encode`` a schedule to parameters.
    """

    weights: np.ndarray  # (L,) per-block parameter counts, all > 0
    sparsity: float  # S in (0, 1)
    max_delta: float | None = None  # |r_i - S| <= max_delta; None: only 0 <= r_i <= 1

    @classmethod
    def create(cls, weights: ArrayLike, sparsity: float, max_delta: float | None = None) -> RateSpace:
        """Validated space; ValueError naming the allowed values otherwise."""
        return cls(_check_weights(weights), _check_sparsity(sparsity), _check_max_delta(max_delta))

    @property
    def num_blocks(self) -> int:
        return int(self.weights.size)

    @property
    def bounds(self) -> tuple[float, float]:
        return _bounds(self.sparsity, self.max_delta)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions of the raw parameters: z_i in [-1, 1], a in [0, 1]."""
        dists: dict[str, BaseDistribution] = {
            _z_name(i): FloatDistribution(Z_LOW, Z_HIGH) for i in range(self.num_blocks)
        }
        dists[PARAM_AMP] = FloatDistribution(AMP_LOW, AMP_HIGH)
        return dists

    def decode(self, params: Mapping[str, float]) -> np.ndarray:
        z = np.array([params[_z_name(i)] for i in range(self.num_blocks)], dtype=np.float64)
        return rates_from_params(z, params[PARAM_AMP], self.weights, self.sparsity, self.max_delta)

    def encode(self, rates: np.ndarray) -> dict[str, float]:
        return params_from_rates(rates, self.weights, self.sparsity, self.max_delta)

    def uniform(self) -> np.ndarray:
        return np.full(self.num_blocks, self.sparsity)

    def check_schedule(self, rates: ArrayLike, name: str = "enqueued schedule") -> np.ndarray:
        """``rates`` as a float64 array if it is feasible (to SEED_TOL), else ValueError."""
        low, high = self.bounds
        try:
            arr = np.array(rates, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be {self.num_blocks} numbers, got {rates!r:.80}") from None
        if arr.shape != (self.num_blocks,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be {self.num_blocks} finite numbers, got shape {arr.shape}")
        mean = float(np.sum(self.weights * arr) / np.sum(self.weights))
        if np.any(arr < low - SEED_TOL) or np.any(arr > high + SEED_TOL) or abs(mean - self.sparsity) > SEED_TOL:
            raise ValueError(
                f"{name} must have rates in [{low:g}, {high:g}] and weighted mean {self.sparsity:g}, "
                f"got rates in [{arr.min():g}, {arr.max():g}] with mean {mean:.9g}"
            )
        return np.clip(arr, low, high)


# ------------------------------------------------------------------------------ validation


def _check_sparsity(sparsity: Any) -> float:
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in (0, 1), got {sparsity!r}") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"sparsity must be in (0, 1), got {value:g}")
    return value


def _check_weights(weights: ArrayLike) -> np.ndarray:
    try:
        w = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be >= 2 finite numbers > 0 (one per block), got {weights!r:.80}") from None
    if w.ndim != 1 or w.size < 2 or not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(f"weights must be >= 2 finite numbers > 0 (one per block), got {w.tolist()!r:.80}")
    return w


def _check_max_delta(max_delta: Any) -> float | None:
    if max_delta is None:
        return None
    try:
        value = float(max_delta)
    except (TypeError, ValueError):
        raise ValueError(f"max_delta must be None or a number in (0, 1], got {max_delta!r}") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(f"max_delta must be None or a number in (0, 1], got {value:g}")
    return value


def check_sampler(name: str) -> str:
    """``name`` if it is a registered sampler, else ValueError listing them."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}; got {name!r}")
    return name


def check_budget(trials: int, timeout_s: float | None = None) -> tuple[int, float | None]:
    """(trials, timeout_s) if trials is an integer >= 1 and timeout_s is None or a number > 0."""
    if isinstance(trials, np.integer):
        trials = int(trials)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
    if timeout_s is None:
        return trials, None
    try:
        timeout = float(timeout_s)
    except (TypeError, ValueError):
        raise ValueError(f"timeout_s must be None or a number of seconds > 0, got {timeout_s!r}") from None
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout_s must be None or a number of seconds > 0, got {timeout:g}")
    return trials, timeout


def _check_seed(seed: Any) -> int:
    if isinstance(seed, np.integer):
        seed = int(seed)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return seed


def _check_study_name(study_name: Any) -> str:
    if not isinstance(study_name, str) or not study_name.strip():
        raise ValueError(f"study_name must be a non-empty string, got {study_name!r}")
    return study_name


# ------------------------------------------------------------------------------ evolutionary sampler


def level_switch(
    rates: np.ndarray,
    weights: np.ndarray,
    step: float,
    bounds: tuple[float, float],
    switches: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """EvoPress-style level switches: ``switches`` times, move sparsity from block j to block i.

    One switch picks i != j and moves m = min(step * mean(w), (hi - r_i) w_i, (r_j - lo) w_j)
    pruned weights: r_i += m / w_i, r_j -= m / w_j. The weighted sum sum(w r) is unchanged and
    every rate stays in [lo, hi] = bounds.
    """
    low, high = bounds
    child = rates.astype(np.float64, copy=True)
    quantum = step * float(np.mean(weights))
    for _ in range(switches):
        i, j = rng.choice(child.size, size=2, replace=False)  # i gains sparsity, j gives it
        moved = min(quantum, (high - child[i]) * weights[i], (child[j] - low) * weights[j])
        child[i] += moved / weights[i]
        child[j] -= moved / weights[j]
    return np.clip(child, low, high)  # clip only removes float noise


def _stored_rates(trial: FrozenTrial, space: RateSpace) -> np.ndarray:
    rates = trial.user_attrs.get(ATTR_RATES)
    if rates is not None:
        return np.asarray(rates, dtype=np.float64)
    return space.decode(trial.params)


class EvoSampler(BaseSampler):
    """Mean-preserving (1 + lambda) evolutionary search; its state is the study's finished trials.

    With C the COMPLETE trials in trial-number order (n = |C|) and m = max(1, number of enqueued
    schedules in C), the next trial is
    - the uniform schedule if n = 0 (the starting parent, as in EvoPress),
    - else a child of the parent p = argmin value over C[:g], g = max(m, lambda * floor(n / lambda)):
      p mutated by k ~ U{1..max_switches} ``level_switch``es of size ``step``, drawn from
      ``default_rng([seed, trial.number])``.
    The parent is thus the best schedule of all earlier generations (elitist), and everything is a
    function of the stored trials, so a killed search resumes exactly where the history says.
    """

    def __init__(
        self,
        space: RateSpace,
        seed: int = 0,
        offspring: int = EVO_OFFSPRING,
        step: float = EVO_STEP,
        max_switches: int = EVO_MAX_SWITCHES,
    ) -> None:
        if isinstance(offspring, bool) or not isinstance(offspring, int) or offspring < 1:
            raise ValueError(f"offspring must be an integer >= 1, got {offspring!r}")
        if isinstance(max_switches, bool) or not isinstance(max_switches, int) or max_switches < 1:
            raise ValueError(f"max_switches must be an integer >= 1, got {max_switches!r}")
        if not (isinstance(step, (int, float)) and 0.0 < step <= 1.0):
            raise ValueError(f"step must be a number in (0, 1], got {step!r}")
        self._space = space
        self._seed = seed
        self._offspring = offspring
        self._step = step
        self._max_switches = max_switches

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space.distributions()

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self._space.encode(self.propose(study.get_trials(deepcopy=False), trial.number))

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        raise ValueError(f"EvoSampler samples only its own parameters (z0.., a), not {param_name!r}")

    def propose(self, history: Sequence[FrozenTrial], number: int) -> np.ndarray:
        """The schedule of trial ``number`` given the study's trials (see the class docstring)."""
        done = sorted((t for t in history if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        if not done:
            return self._space.uniform()
        enqueued = sum(ATTR_SEED in t.user_attrs for t in done)
        start = max(1, enqueued, self._offspring * (len(done) // self._offspring))
        parent = min(done[:start], key=lambda t: (float("inf") if t.value is None else t.value, t.number))
        rng = np.random.default_rng([self._seed, number])
        switches = int(rng.integers(1, self._max_switches + 1))
        rates = _stored_rates(parent, self._space)
        return level_switch(rates, self._space.weights, self._step, self._space.bounds, switches, rng)


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class SamplerEntry:
    """One search strategy: CLI/registry name, label for figures and tables, colour, factory."""

    name: str
    label: str
    factory: Callable[[RateSpace, int, int], BaseSampler]  # (space, seed, stored trials) -> a fresh sampler
    color: str


def _derived_seed(seed: int, stored: int, sampler: str) -> int:
    """A sampler seed from (seed, number of stored trials, sampler name): a resumed run draws fresh
    numbers, and two samplers given the same seed do not start from the same random trial."""
    salt = zlib.crc32(sampler.encode())
    return int(np.random.SeedSequence([seed, stored, salt]).generate_state(1)[0] % SEED_SPREAD)


def _tpe(space: RateSpace, seed: int, stored: int) -> BaseSampler:
    with warnings.catch_warnings():  # "multivariate" is flagged experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TPESampler(seed=_derived_seed(seed, stored, "tpe"), multivariate=True)


def _cmaes(space: RateSpace, seed: int, stored: int) -> BaseSampler:
    return CmaEsSampler(seed=_derived_seed(seed, stored, "cmaes"))


def _evo(space: RateSpace, seed: int, stored: int) -> BaseSampler:
    return EvoSampler(space, seed=seed)  # draws are keyed by trial number: a resume continues exactly


SAMPLERS: dict[str, SamplerEntry] = {
    e.name: e
    for e in (
        SamplerEntry("tpe", "TPE (Bayesian, Optuna)", _tpe, "#9467bd"),
        SamplerEntry("cmaes", "CMA-ES (Optuna)", _cmaes, "#8c564b"),
        SamplerEntry("evo", "Evolutionary (1+λ), level switch", _evo, "#e377c2"),
    )
}


# ------------------------------------------------------------------------------ storage helpers


@dataclass
class Trial:
    """One finished trial of a search."""

    number: int  # Optuna trial number: stable, in order; numbers of failed trials are skipped
    rates: np.ndarray  # (L,) the schedule the objective saw
    value: float  # objective value (minimised); NaN was stored as +inf
    seconds: float  # wall time since the search began, cumulated over resumed runs


def _to_trial(frozen: FrozenTrial, space: RateSpace | None = None) -> Trial:
    rates = frozen.user_attrs.get(ATTR_RATES)
    if rates is None and space is not None:
        rates = space.decode(frozen.params).tolist()
    return Trial(
        number=frozen.number,
        rates=np.asarray(rates, dtype=np.float64),
        value=float(frozen.value) if frozen.value is not None else math.inf,
        seconds=float(frozen.user_attrs.get(ATTR_SECONDS, math.nan)),
    )


def _complete(study: optuna.Study, space: RateSpace | None = None) -> list[Trial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [_to_trial(t, space) for t in sorted(done, key=lambda t: t.number)]


def _lock_path(storage_path: Path, study_name: str) -> Path:
    digest = hashlib.sha256(study_name.encode("utf-8")).hexdigest()[:12]
    return storage_path.with_name(f"{storage_path.name}.{digest}.lock")


@contextlib.contextmanager
def _study_lock(storage_path: Path, study_name: str) -> Iterator[None]:
    """Exclusive, non-blocking lock of one study; the kernel drops it when the process dies."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = _lock_path(storage_path, study_name)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise SearchBusyError(f"study {study_name!r} in {storage_path} is being searched by {owner}") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines off while a search runs (the caller reports progress)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _last_newline_end(handle: Any, size: int) -> int:
    """Offset just past the last b"\\n" of an open binary file of ``size`` bytes (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - TAIL_CHUNK)
        handle.seek(start)
        found = handle.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _repair_tail(storage_path: Path) -> None:
    """Cut a half-written last line, under Optuna's own journal lock, so that later appends stay readable.

    Optuna writes each batch of log lines with one append ending in a newline; a file not ending
    in one was left by a writer that died mid-append (no writer is active while we hold the lock).
    Optuna itself skips such a tail only while it is last; after the next append it fails to read.
    """
    if not storage_path.is_file():
        return
    lock = JournalFileSymlinkLock(str(storage_path))
    lock.acquire()
    try:
        with open(storage_path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep = _last_newline_end(handle, size)
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        lock.release()
    warnings.warn(
        f"search journal {storage_path} ended in a half-written line; cut {size - keep} bytes",
        JournalRepairedWarning,
        stacklevel=3,
    )


def _storage(storage_path: Path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(storage_path)))


def _settings(space: RateSpace, sampler: str) -> dict[str, Any]:
    return {
        "weights": space.weights.tolist(),
        "sparsity": space.sparsity,
        "max_delta": space.max_delta,
        "sampler": sampler,
    }


def _check_settings(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Record the settings in a new study; a stored study with other settings is an error."""
    stored = study.user_attrs.get(ATTR_SETTINGS)
    if stored is None:
        study.set_user_attr(ATTR_SETTINGS, settings)
    elif stored != settings:
        changed = ", ".join(k for k in settings if stored.get(k) != settings[k])
        raise ValueError(f"study {study.study_name!r} was created with other settings ({changed}); use another name")


def _fail_stale(study: optuna.Study, storage: JournalStorage) -> list[int]:
    """Mark FAIL every RUNNING trial (we hold the study lock, so their process is dead)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, ATTR_STALE, STALE_REASON)
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return [t.number for t in stale]


def _enqueue(study: optuna.Study, space: RateSpace, seeds: Sequence[np.ndarray], slots: int) -> None:
    """Enqueue the seeds not yet COMPLETE or WAITING, in order, at most ``slots`` of them."""
    kept = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING))
    present = [np.asarray(t.user_attrs[ATTR_SEED]) for t in kept if ATTR_SEED in t.user_attrs]
    for rates in seeds:
        if slots <= 0:
            break
        if any(p.shape == rates.shape and np.allclose(p, rates, rtol=0.0, atol=SEED_TOL) for p in present):
            continue
        study.enqueue_trial(space.encode(rates), user_attrs={ATTR_SEED: rates.tolist()})
        slots -= 1


def _elapsed_before(study: optuna.Study) -> float:
    """Search seconds recorded by earlier runs (the largest ``seconds`` of any stored trial)."""
    times = [t.user_attrs[ATTR_SECONDS] for t in study.get_trials(deepcopy=False) if ATTR_SECONDS in t.user_attrs]
    return float(max(times, default=0.0))


@dataclass(frozen=True)
class _Clock:
    """Search seconds = seconds recorded by earlier runs + time since this run started."""

    started: float  # time.monotonic() at the start of this call
    earlier: float  # ``_elapsed_before`` the study

    def seconds(self) -> float:
        return self.earlier + time.monotonic() - self.started


def _run_trial(study: optuna.Study, space: RateSpace, objective: Callable[[np.ndarray], float], clock: _Clock) -> Trial:
    """Ask for one trial, evaluate its schedule, store it (FAIL if the objective raises)."""
    trial = study.ask(space.distributions())
    given = trial.user_attrs.get(ATTR_SEED)  # an enqueued schedule is used exactly as given
    rates = np.asarray(given, dtype=np.float64) if given is not None else space.decode(trial.params)
    trial.set_user_attr(ATTR_RATES, rates.tolist())
    try:
        value = float(objective(rates.copy()))
    except BaseException:
        trial.set_user_attr(ATTR_SECONDS, clock.seconds())
        study.tell(trial, state=TrialState.FAIL)
        raise
    value = math.inf if math.isnan(value) else value  # Optuna would store NaN as a failure
    seconds = clock.seconds()
    trial.set_user_attr(ATTR_SECONDS, seconds)
    study.tell(trial, value)
    return Trial(trial.number, rates, value, seconds)


# schedules of one batch -> (index in the batch, objective value) as each finishes, in any order
BatchObjective = Callable[[Sequence[np.ndarray]], Iterator[tuple[int, float]]]


def _run_batch(
    study: optuna.Study, space: RateSpace, evaluate: BatchObjective, count: int, clock: _Clock
) -> Iterator[Trial]:
    """Ask ``count`` trials, evaluate their schedules together and tell each as it finishes (FAIL for
    those unfinished if ``evaluate`` raises). The next ask comes after the whole batch is told, so the
    proposals depend on the batch size and the seed, not on the order the trials finish in."""
    asked = [study.ask(space.distributions()) for _ in range(count)]
    rates = []
    for trial in asked:
        given = trial.user_attrs.get(ATTR_SEED)  # an enqueued schedule is used exactly as given
        rates.append(np.asarray(given, dtype=np.float64) if given is not None else space.decode(trial.params))
        trial.set_user_attr(ATTR_RATES, rates[-1].tolist())
    pending = set(range(count))
    try:
        for index, value in evaluate([r.copy() for r in rates]):
            value = math.inf if math.isnan(value) else float(value)
            seconds = clock.seconds()
            asked[index].set_user_attr(ATTR_SECONDS, seconds)
            study.tell(asked[index], value)
            pending.discard(index)
            yield Trial(asked[index].number, rates[index], value, seconds)
    finally:
        for index in sorted(pending):
            asked[index].set_user_attr(ATTR_SECONDS, clock.seconds())
            study.tell(asked[index], state=TrialState.FAIL)


# ------------------------------------------------------------------------------ the search


def run_search(
    objective: Callable[[np.ndarray], float],
    weights: np.ndarray,
    sparsity: float,
    sampler: str,
    trials: int,
    *,
    storage_path: Path,
    study_name: str,
    seed: int = 0,
    timeout_s: float | None = None,
    max_delta: float | None = None,
    enqueue: Sequence[np.ndarray] = (),
    on_trial: Callable[[Trial], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    batch: int = 1,
    evaluate: BatchObjective | None = None,
) -> list[Trial]:
    """Minimise ``objective(rates)`` over feasible schedules until the study has ``trials`` COMPLETE ones.

    - ``weights`` (L,) per-block parameter counts, ``sparsity`` S: every trial has
      sum(w r)/sum(w) = S and r_i in [max(0, S - max_delta), min(1, S + max_delta)] (module docstring).
    - ``trials`` counts COMPLETE trials of the study, those stored by earlier runs included; a trial
      the objective returns NaN for is stored as +inf. ``timeout_s`` bounds this call's wall clock,
      checked between trials (a running trial is never cut), as is ``should_stop()``.
    - ``enqueue``: schedules evaluated first (e.g. uniform and ATP's best), each feasible; a seed
      already COMPLETE in the study is not enqueued again. Default: none, so the search is
      independent of ATP. (CMA-ES does not learn from enqueued trials; TPE and evo do.)
    - ``on_trial(trial)`` runs after each new COMPLETE trial, so the caller can store it at once.
    - Storage: JournalStorage file ``storage_path``, study ``study_name`` (created or resumed). A
      concurrent search of the same study raises ``SearchBusyError``; a study created with other
      weights / S / max_delta / sampler raises ValueError. If the objective raises, the trial is
      stored as FAIL and the exception propagates.
    - Files: ``storage_path`` (parents created), ``<storage_path>.<sha256(study_name)[:12]>.lock``
      (kept; names the pid of the search holding it) and, for a moment during each write,
      Optuna's ``<storage_path>.lock``.
    - ``evaluate``: the schedules of a batch of ``batch`` trials evaluated together (on parallel
      workers), used instead of ``objective``; ``on_trial`` runs as each trial finishes. A process
      killed mid-batch leaves RUNNING trials, which the next run marks FAIL, as with one trial.
    Bad input raises ValueError before any file is created. Returns all COMPLETE trials of the
    study in trial-number order (more than ``trials`` if an earlier run stored more).
    """
    space = RateSpace.create(weights, sparsity, max_delta)
    name = check_sampler(sampler)
    budget, timeout = check_budget(trials, timeout_s)
    seed = _check_seed(seed)
    study_name = _check_study_name(study_name)
    seeds = [space.check_schedule(s, f"enqueue[{k}]") for k, s in enumerate(enqueue)]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    if not callable(objective):
        raise TypeError(f"objective must be callable, got {objective!r:.80}")
    started = time.monotonic()
    storage_path = Path(storage_path)
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    with _study_lock(storage_path, study_name), _quiet_optuna():
        _repair_tail(storage_path)
        storage = _storage(storage_path)
        study = optuna.create_study(storage=storage, study_name=study_name, direction="minimize", load_if_exists=True)
        _check_settings(study, _settings(space, name))
        _fail_stale(study, storage)
        stored = len(study.get_trials(deepcopy=False))
        sampler_obj = SAMPLERS[name].factory(space, seed, stored)
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler_obj)
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        _enqueue(study, space, seeds, budget - done)
        clock = _Clock(started, _elapsed_before(study))
        while done < budget:
            if timeout is not None and time.monotonic() - started >= timeout:
                break
            if should_stop is not None and should_stop():
                break
            finished: Iterable[Trial] = (
                [_run_trial(study, space, objective, clock)]
                if evaluate is None
                else _run_batch(study, space, evaluate, min(batch, budget - done), clock)
            )
            for trial in finished:
                if on_trial is not None:
                    on_trial(trial)
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        return _complete(study, space)


def load_trials(storage_path: Path, study_name: str) -> list[Trial]:
    """All COMPLETE trials of a stored study (read-only; [] if the file or study does not exist).

    Safe while a search of that study runs in another process: a dashboard polls this for live
    best-so-far curves.
    """
    storage_path = Path(storage_path)
    if not storage_path.is_file():
        return []
    with _quiet_optuna():
        storage = _storage(storage_path)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return []
        return _complete(study)


# ------------------------------------------------------------------------------ analysis


def best_so_far(trials: Sequence[Trial]) -> np.ndarray:
    """b_k = min_{j <= k} value_j over the trials in the given order (an empty array for none)."""
    return np.minimum.accumulate(np.array([t.value for t in trials], dtype=np.float64))


class Monotonicity(TypedDict):
    spearman: float  # rank correlation of rate with depth in [-1, 1]; NaN for a constant schedule
    inversions: int  # pairs i < j with r_i > r_j
    inversion_fraction: float  # inversions / (L (L - 1) / 2): 0 increasing, 1 strictly decreasing


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    ranks = np.empty(values.size)
    start = 0
    for end in range(1, values.size + 1):
        if end == values.size or sorted_vals[end] != sorted_vals[start]:
            ranks[order[start:end]] = (start + end + 1) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def monotonicity(rates: ArrayLike) -> Monotonicity:
    """How increasing a schedule is with depth (Theorem 3.5 of the ATP paper predicts increasing).

    spearman = Pearson correlation of (average ranks of r, depth ranks 1..L), ties averaged;
    inversions = #{i < j : r_i > r_j}; inversion_fraction = inversions / (L (L - 1) / 2).
    Rates are rounded to TIE_DECIMALS decimals first, so float noise creates neither order nor
    inversions. An ATP schedule with beta > 0 gives (1, 0, 0); uniform gives (NaN, 0, 0).
    """
    r = np.round(np.asarray(rates, dtype=np.float64), TIE_DECIMALS)
    n = r.size
    inversions = int(np.sum(np.triu(r[:, None] > r[None, :], k=1)))
    pairs = n * (n - 1) // 2
    fraction = inversions / pairs if pairs else 0.0
    ranks = _average_ranks(r) - (n + 1) / 2
    depth = np.arange(1, n + 1) - (n + 1) / 2
    denom = math.sqrt(float(np.sum(ranks**2) * np.sum(depth**2)))
    spearman = float(np.sum(ranks * depth) / denom) if denom > 0 else math.nan
    return {"spearman": spearman, "inversions": inversions, "inversion_fraction": fraction}
