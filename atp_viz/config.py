"""Settings passed explicitly from the CLI or the UI down to the library.

Every dataclass is frozen and validates itself in ``__post_init__`` so that a bad combination fails
before any model is loaded or anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2): calibration seeds, each an integer >= 0, no repeats."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"seeds must be comma-separated integers >= 0 such as 0,1,2, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"seeds must be distinct integers >= 0 such as 0,1,2, got {text!r}")
    return seeds


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
    """Measurement windows: the first ``windows`` non-overlapping windows of ``seqlen`` tokens of
    the evaluation split (0 = all), and as many of the validation split (``validation_windows``,
    default: the same count; 0 = all). Selection reads validation, reports read evaluation."""

    windows: int = 12
    seqlen: int = 1024  # paper: 2048
    batch_size: int = 4
    validation_windows: int | None = None  # None: same as ``windows``

    def __post_init__(self) -> None:
        check_int("evaluation windows", self.windows, 0)
        check_int("evaluation seqlen", self.seqlen, 2)
        check_int("evaluation batch size", self.batch_size, 1)
        validation = self.windows if self.validation_windows is None else self.validation_windows
        check_int("validation windows", validation, 0)
        object.__setattr__(self, "validation_windows", validation)

    def windows_of(self, split: str) -> int:
        """How many windows ``split`` ("validation" or "evaluation") is measured on (0 = all)."""
        return int(self.validation_windows) if split == "validation" else self.windows  # type: ignore[arg-type]
