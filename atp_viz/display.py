"""How numbers are printed for people: short in text and tables, full in tooltips and downloads."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd
from pandas.io.formats.style import Styler


def perplexity_text(value: float | None) -> str:
    """A perplexity with 3 significant digits, or 1 decimal from 100 up: 3.14, 26.9, 257.3, 1234.5.

    None and NaN print as '-', infinity as 'inf'."""
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(float(f"{value:.3g}")) >= 100:  # 99.96 rounds up to 100: print it as 100.0, not 1e+02
        return f"{value:.1f}"
    return f"{value:.3g}"


def full_text(value: float | None) -> str:
    """The value with every digit a float carries (tooltips)."""
    return "-" if value is None else repr(float(value))


def perplexity_columns(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> list[str]:
    """The numeric columns of ``frame`` among ``columns`` (default: all of them)."""
    return [c for c in (frame.columns if columns is None else columns) if pd.api.types.is_numeric_dtype(frame[c])]


def perplexity_table(frame: pd.DataFrame, columns: Iterable[str] | None = None) -> Styler:
    """``frame`` with its perplexity columns (default: every numeric column) printed by ``perplexity_text``;
    the frame's own values (downloads, the grid's copy) stay untouched."""
    chosen = perplexity_columns(frame, columns)
    return frame.style.format(lambda v: perplexity_text(None if pd.isna(v) else float(v)), subset=chosen)


def metric_text(metric: str, value: float | None) -> str:
    """A metric's value for a sentence: perplexity by ``perplexity_text``, others with 4 significant digits."""
    if metric == "perplexity" or value is None:
        return perplexity_text(value)
    return f"{value:.4g}"
