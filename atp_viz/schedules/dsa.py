"""DSA (Li et al., NeurIPS 2024, "Discovering Sparsity Allocation for Layer-wise Pruning of LLMs") as its code
computes it (pure numpy).

The authors' code (github.com/lliai/DSA) turns a graph string such as ``W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)``
into a block importance (``lib/autolayer.py``, ``LayerEngine.compute_importance``) and the importances into
rates (``lib/prune_all.py``, ``test_prune_wanda_outlier_use_var``, the ``--prune_method wanda_owl_search``
path of ``main.py``):

- x = the block's Wanda scores |W_jk| * sqrt(scaler_row_k) of all its linears, flattened and concatenated
  (scaler_row = sum of x_k^2 over the calibration tokens / number of calibration sequences), taken on the
  **dense** model (a first pass that prunes nothing);
- element-wise "stick" operations, then "deform" operations (reductions to a scalar), then element-wise
  "post" operations; the importance is the scalar (or the mean when the graph kept a vector);
- a NaN importance becomes 0.0 and an infinite one -1 (``compute_importance``'s special values);
- the fourth group of the graph, ``(7)``, is parsed into ``LayerEngine.LAMBDA`` and never read again: the
  spread of the rates is ``--Lamda`` (default 0.08), OWL's band half-width;
- n_i = (I_i - min I) / (max I - min I); a_i = 1 - n_i; density d = (a - min a)/(max a - min a) * 2*Lamda,
  d = d - mean(d) + (1 - S); s_i = 1 - d_i, a rate <= 0 pruned at 0.01. So s_i = S + 2*Lamda*(n_i - mean n):
  the more important block (larger I) is pruned *more*.

This module holds the operations, the graph parser (an unknown operation or a malformed graph is refused
with one line naming what is allowed), the importance of one block's scores and the rate mapping.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from atp_viz.config import check_choice, check_sparsity
from atp_viz.schedules import published

DEFAULT_GRAPH = "W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)"  # the authors' published function for LLaMA at 70 %
LAMBDA = 0.08  # main.py's --Lamda default (the README's command keeps it)
MAX_LAMBDA = published.OWL_MAX_LAMBDA
NAN_IMPORTANCE = 0.0  # compute_importance: "if math.isnan(value): return 0.0"
INF_IMPORTANCE = -1.0  # compute_importance: "elif math.isinf(value): return -1  # denotes invalid"
LOG_EPS = 1e-6  # element_wise_log_op: log(x + 1e-6) after x[x <= 0] = 1
MMS_EPS = 1e-9  # the MMS stick op: (x - min) / (max - min + 1e-9)
SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus: x itself above 20
# What the code does with a non-finite importance (``authors``), or the named correction (``clamp``): the post
# operations ASIN/ACOS/LOG take their argument clipped into their domain ([-1, 1]; > 0), so that a block past
# the domain's edge keeps the importance at the edge instead of falling to 0.
NONFINITE = ("authors", "clamp")

Op = Callable[[np.ndarray], np.ndarray]


def _log(x: np.ndarray) -> np.ndarray:
    y = x.copy()  # the code's x[x <= 0] = 1 is in place; here the caller's array stays as it was
    y[y <= 0] = 1
    return np.log(y + LOG_EPS)


def _abslog(x: np.ndarray) -> np.ndarray:
    y = x.copy()  # the code's x[x == 0] = 1 mutates its input
    y[y == 0] = 1
    return np.log(np.abs(y))


def _normalize(x: np.ndarray) -> np.ndarray:
    # the torch branch (the code's inputs are tensors): unbiased std, no epsilon, NaN -> 0
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (x - x.mean()) / x.std(ddof=1)
    out[np.isnan(out)] = 0
    return out


def _mms(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min() + MMS_EPS)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


STICK_OPS: dict[str, Op] = {
    "NO_OP": lambda x: x,
    "ABS": np.abs,
    "LOG": _log,
    "ABSLOG": _abslog,
    "POW": np.square,
    "EXP": np.exp,
    "NORMALIZE": _normalize,
    "SIGMOID": _sigmoid,
    "TANH": np.tanh,
    "MMS": _mms,
}


def _entropy(x: np.ndarray) -> np.ndarray:
    """entropy_op on a vector: the non-negative, non-NaN entries as probabilities (normalised), -sum p ln p."""
    valid = x[~np.isnan(x) & (x >= 0)]
    if valid.size == 0:
        return np.array(math.nan)
    p = valid / valid.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return np.array(-terms.sum())


def _geometric_mean(x: np.ndarray) -> np.ndarray:
    # the literal prod(x) ** (1/n): over a block's millions of scores it under- or overflows, as in the code
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return np.array(np.prod(x) ** (1.0 / x.size))


# reductions: a vector (or a scalar) in, a scalar out
DEFORM_OPS: dict[str, Op] = {
    "NO_OP": lambda x: x,
    "GRAM": lambda x: np.array(np.dot(x, x)),  # x @ x.T of a vector: the dot product
    "FROBENIUS_NORM": lambda x: np.array(np.sqrt(np.sum(np.square(x)))),
    "L1_NORM": lambda x: np.array(np.sum(np.abs(x)) / x.size),
    "GEOMETRIC_MEAN": _geometric_mean,
    "MEAN": lambda x: np.array(np.mean(x)),
    "VAR": lambda x: np.array(np.var(x, ddof=1)),  # torch.var: unbiased
    "STD": lambda x: np.array(np.std(x, ddof=1)),
    "ENTROPY": _entropy,
}
# deform ops of the code that need a matrix: it applies the graph to a block's flattened scores, where they fail
MATRIX_OPS = ("CORREF", "DIAGONAL", "DETERMINANT", "RANK", "SLOGDET")
# deform ops that fail, or give every block the same importance, once the graph has reduced to a scalar
VECTOR_ONLY = ("GRAM", "VAR", "STD", "ENTROPY")


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > SOFTPLUS_THRESHOLD, x, np.log1p(np.exp(np.minimum(x, SOFTPLUS_THRESHOLD))))


POST_OPS: dict[str, Op] = {
    "NO_OP": lambda x: x,
    "SIN": np.sin,
    "COS": np.cos,
    "TAN": np.tan,
    "ASIN": np.arcsin,
    "ACOS": np.arccos,
    "ATAN": np.arctan,
    "EXP": np.exp,
    "LOG": np.log,
    "ABS": np.abs,
    "SIGMOID": _sigmoid,
    "TANH": np.tanh,
    "SOFTPLUS": _softplus,
}
# the ``clamp`` correction: the argument of these post ops clipped into their domain
DOMAINS: dict[str, tuple[float, float]] = {
    "ASIN": (-1.0, 1.0),
    "ACOS": (-1.0, 1.0),
    "LOG": (float(np.finfo(np.float64).tiny), math.inf),
}
GROUPS = (("stick", STICK_OPS), ("deform", DEFORM_OPS), ("post", POST_OPS))
_GRAPH = re.compile(r"W:\(([^()]*)\)-\(([^()]*)\)-\(([^()]*)\)(?:-\(([^()]*)\))?", re.IGNORECASE)
FORM = "W:(STICK,...)-(DEFORM,...)-(POST,...)[-(INT)]"


class NonFiniteImportanceWarning(UserWarning):
    """The graph is not finite for some blocks: their importance is what the authors' code makes of it."""


@dataclass(frozen=True)
class Graph:
    """A parsed DSA graph: the operation names of each group and the parsed (and unused) lambda."""

    stick: tuple[str, ...]
    deform: tuple[str, ...]
    post: tuple[str, ...]
    lam: int | None = None  # LayerEngine.LAMBDA: parsed, never used by the rate mapping

    def __str__(self) -> str:
        text = f"W:({','.join(self.stick)})-({','.join(self.deform)})-({','.join(self.post)})"
        return text + ("" if self.lam is None else f"-({self.lam})")


def allowed_ops() -> str:
    return "; ".join(f"{name} ops: {', '.join(ops)}" for name, ops in GROUPS)


def parse_graph(text: str) -> Graph:
    """``W:(STICK,...)-(DEFORM,...)-(POST,...)`` with an optional ``-(INT)``, as ``LayerEngine._parse_graph`` reads
    it; an unknown operation, a matrix operation (the graph sees a vector), a reduction of a scalar that fails or
    is constant, or a malformed string raises ValueError naming what is allowed. Spaces are ignored and names
    are upper-cased."""
    raw = str(text)
    match = _GRAPH.fullmatch(re.sub(r"\s+", "", raw))
    if match is None:
        raise ValueError(f"DSA graph {raw!r} is malformed: the form is {FORM}; {allowed_ops()}")
    groups: list[tuple[str, ...]] = []
    for (name, ops), body in zip(GROUPS, match.groups()[:3]):
        names = tuple(op.upper() for op in body.split(",")) if body else ()
        for op in names:
            if op in MATRIX_OPS and name == "deform":
                raise ValueError(
                    f"DSA graph {raw!r}: {op} needs a matrix, and the graph is applied to a block's flattened "
                    f"scores; {allowed_ops()}"
                )
            if op not in ops:
                raise ValueError(f"DSA graph {raw!r}: unknown {name} operation {op!r}; {allowed_ops()}")
        groups.append(names)
    reducers = [op for op in groups[1] if op != "NO_OP"]
    for earlier, op in zip(reducers, reducers[1:]):
        if op in VECTOR_ONLY:
            raise ValueError(
                f"DSA graph {raw!r}: {op} needs a vector, but {earlier} reduced the scores to a scalar before it; "
                f"{allowed_ops()}"
            )
    lam = match.group(4)
    if lam is not None and not re.fullmatch(r"[+]?\d+", lam):
        raise ValueError(
            f"DSA graph {raw!r}: the last group must be a whole number such as (7); the form is {FORM}; {allowed_ops()}"
        )
    return Graph(groups[0], groups[1], groups[2], None if lam is None else int(lam))


def check_graph(text: str) -> str:
    """The graph string, validated and written canonically (upper case, no spaces): the registry's check of the
    ``graph`` parameter, so that one function has one stored key."""
    return str(parse_graph(text))


def graph_value(graph: Graph | str, scores: ArrayLike, nonfinite: str = "authors") -> float:
    """The graph's raw value on one block's scores (float64): the scalar, or the mean of what is left.

    May be NaN or infinite (``importance_values`` says what the code makes of that). ``nonfinite="clamp"``
    clips the argument of ASIN, ACOS and LOG into their domain."""
    check_choice("DSA nonfinite", nonfinite, NONFINITE)
    parsed = parse_graph(graph) if isinstance(graph, str) else graph
    x = np.array(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("a DSA importance needs at least one score, got none")
    with np.errstate(all="ignore"):
        for op in parsed.stick:
            x = STICK_OPS[op](x)
        for op in parsed.deform:
            x = DEFORM_OPS[op](x)
        for op in parsed.post:
            if nonfinite == "clamp" and op in DOMAINS:
                x = np.clip(x, *DOMAINS[op])
            x = POST_OPS[op](x)
        return float(x) if x.size == 1 else float(np.mean(x))


def importance_values(raw: ArrayLike) -> tuple[np.ndarray, list[int]]:
    """``compute_importance``'s special values: NaN -> 0.0, +-inf -> -1; and the blocks that had one."""
    values = np.array(raw, dtype=np.float64).ravel()
    bad = [int(i) for i in np.flatnonzero(~np.isfinite(values))]
    values = np.where(np.isnan(values), NAN_IMPORTANCE, values)
    return np.where(np.isinf(values), INF_IMPORTANCE, values), bad


def _blocks(indices: Sequence[int]) -> str:
    return f"block{'s' * (len(indices) != 1)} {', '.join(str(i) for i in indices)}"


def dsa(
    importances: ArrayLike, sparsity: float, lam: float = LAMBDA, nonfinite: str = "authors", graph: str = ""
) -> np.ndarray:
    """DSA's rates from per-block graph values I_i (raw: NaN or infinite where the graph is not finite).

    n_i = (I_i - min I)/(max I - min I); density d = (1 - n) * 2*lam (the code's second min-max of 1 - n is the
    identity), d = d - mean(d) + (1 - S); s_i = 1 - d_i = S + 2*lam*(n_i - mean n). Rates <= 0 become 0.01 (as
    in the code) and rates > 1 become 1, with a ``ScheduleClipWarning`` stating the mean reached. With
    ``nonfinite="authors"`` a NaN value counts as 0 and an infinite one as -1, with a
    ``NonFiniteImportanceWarning`` naming the blocks; with ``"clamp"`` a value that is still not finite is refused.
    Equal importances give the uniform schedule (the code divides by zero there).
    """
    check_choice("DSA nonfinite", nonfinite, NONFINITE)
    sparsity = check_sparsity(sparsity)
    lam = published._check_range("lam", lam, 0.0, MAX_LAMBDA)
    values, bad = importance_values(importances)
    if values.size == 0:
        raise ValueError("DSA needs one importance per block, got none")
    where = f" {graph}" if graph else ""
    if bad and nonfinite == "clamp":
        raise ValueError(
            f"the DSA graph{where} is not finite for {_blocks(bad)} even with its post operations kept in their "
            "domain (nonfinite=clamp); choose another graph"
        )
    if bad:
        warnings.warn(
            f"the DSA graph{where} is not finite for {_blocks(bad)}: their importance counts as "
            f"{NAN_IMPORTANCE:g} (NaN) or {INF_IMPORTANCE:g} (infinite), as the authors' code has it "
            "(nonfinite=clamp keeps ASIN/ACOS/LOG in their domain instead)",
            NonFiniteImportanceWarning,
            stacklevel=2,
        )
    span = values.max() - values.min()
    if span == 0:
        return published.uniform(values.size, sparsity)
    normalised = (values - values.min()) / span
    return published._density_band(1 - normalised, sparsity, lam, "DSA")
