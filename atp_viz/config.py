"""Settings passed explicitly from the CLI or the UI down to the library.

Every dataclass is frozen and validates itself in ``__post_init__`` so that a bad combination fails
before any model is loaded or anything is written.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

PRUNERS = ("wanda", "sparsegpt", "magnitude")
METHODS = ("uniform", "atp", "owl", "alphapruning", "custom")
CALIBRATION_MODES = ("sequential", "cached")
DTYPES = ("float32", "bfloat16", "float16")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        upper = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name} must be >= {low}{upper}, got {value}")


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """A target sparsity is a fraction strictly inside (0, 1)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from None
    if not math.isfinite(value) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def parse_nm(text: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4); None or '' -> None (unstructured)."""
    if not text:
        return None
    try:
        n, m = (int(part) for part in text.split(":"))
    except ValueError:
        raise ValueError(f"N:M must look like '2:4', got {text!r}") from None
    nm = (n, m)
    check_nm(nm)
    return nm


def check_nm(nm: tuple[int, int] | None) -> None:
    if nm is None:
        return
    n, m = nm
    if not (isinstance(n, int) and isinstance(m, int)) or not 0 < n < m:
        raise ValueError(f"N:M needs integers 0 < N < M, got {n}:{m}")


@dataclass(frozen=True)
class CalibConfig:
    """Calibration batch: ``samples`` random windows of ``seqlen`` tokens drawn with ``seed``."""

    samples: int = 16  # paper: 128
    seqlen: int = 512  # paper: 2048
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("calibration samples", self.samples, 1)
        check_int("calibration seqlen", self.seqlen, 2)
        check_int("seed", self.seed, 0)


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: the first ``windows`` non-overlapping windows of ``seqlen`` tokens (0 = all)."""

    windows: int = 12
    seqlen: int = 1024  # paper: 2048
    batch_size: int = 4

    def __post_init__(self) -> None:
        check_int("evaluation windows", self.windows, 0)
        check_int("evaluation seqlen", self.seqlen, 2)
        check_int("evaluation batch size", self.batch_size, 1)


@dataclass(frozen=True)
class PruneConfig:
    """Which pruner scores the weights, and whether it keeps an N:M pattern instead of a rate."""

    pruner: str = "wanda"
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_choice("pruner", self.pruner, PRUNERS)
        check_nm(self.nm)


@dataclass(frozen=True)
class ScheduleSpec:
    """How per-block rates are chosen; only the fields of ``method`` are used."""

    method: str = "atp"
    sparsity: float = 0.7
    beta: float = 0.0  # atp: slope of the arithmetic progression
    lam: float = 0.08  # owl: half-width of the sparsity band
    m: float = 5.0  # owl: outlier threshold multiple of the mean score
    eps: float = 0.3  # alphapruning: half-width of the ratio band
    rates: tuple[float, ...] = field(default_factory=tuple)  # custom

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        if self.method == "custom":
            if not self.rates:
                raise ValueError("a custom schedule needs rates, one per block, each in [0, 1]")
        else:
            object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        for name in ("beta", "lam", "m", "eps"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    def params(self) -> dict[str, Any]:
        """The fields that define this schedule (used in fingerprints and exports)."""
        keep = {
            "uniform": ("sparsity",),
            "atp": ("sparsity", "beta"),
            "owl": ("sparsity", "lam", "m"),
            "alphapruning": ("sparsity", "eps"),
            "custom": ("rates",),
        }[self.method]
        data = asdict(self)
        return {"method": self.method, **{k: data[k] for k in keep}}
