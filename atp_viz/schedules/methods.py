"""The schedule method registry: one entry per way of choosing per-block rates.

Each ``Method`` holds its pure builder (numpy in, numpy out), its parameters with defaults and
valid ranges, the per-block statistics it needs, its label and colour. The CLI options, the
dashboard's method pickers and parameter widgets, the figure colours and every input check read
this registry, so adding a method is one ``register(Method(...))`` plus its function in
``published.py``. ``ScheduleSpec`` is a validated request for one schedule: bad parameters are
refused here, before a model is loaded or anything is written.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from atp_viz.config import check_choice, check_sparsity
from atp_viz.schedules import dsa, lsa, profiles, published

Value = float | str
# statistic name -> one value per block (outlier ratios, alphas, ...), computed by the caller
BlockStats = Mapping[str, np.ndarray]
# (num_layers, sparsity, parameters, statistics, per-block weights) -> rates
Builder = Callable[[int, float, Mapping[str, Any], BlockStats, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Param:
    """One parameter of a method: default, valid range (or choices), and how to show it."""

    name: str
    label: str
    default: Value
    low: float = -math.inf
    high: float = math.inf
    choices: tuple[str, ...] = ()  # a text parameter (its default is one of these)
    step: float = 0.01  # widget step
    help: str = ""
    required: bool = False  # a single prune must give it (ATP's beta); sweeps fill it from a grid
    upper: Callable[[int, float], float] | None = None  # a tighter bound that depends on (L, S), checked when built
    upper_text: str = ""  # how ``upper`` is computed, for messages
    # added to a method after points were stored: left out of ``ScheduleSpec.params`` (the stored key)
    # while at its default, so that earlier points keep their keys
    keyed_at_default: bool = True
    text: Callable[[str], str] | None = None  # a text parameter checked (and normalised) by this function

    def check(self, value: Any, method: str) -> Value:
        """The value as the parameter's type, or ValueError naming the allowed range."""
        if self.text is not None:
            return self.text(str(value))
        if self.choices:
            check_choice(f"{method} {self.name}", str(value), self.choices)
            return str(value)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{method} {self.name} must be a number {self.allowed()}, got {value!r}") from None
        if not (math.isfinite(number) and self.low <= number <= self.high):
            raise ValueError(f"{method} {self.name} must be {self.allowed()}, got {number:g}")
        return number

    def allowed(self) -> str:
        if self.text is not None:
            return f"text such as {self.default}"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.upper_text:
            return f"in [{self.low:g}, {self.upper_text}]"
        if math.isinf(self.high):
            return f"a finite number >= {self.low:g}"
        return f"in [{self.low:g}, {self.high:g}]"


GRID_PARAM = "beta"  # the parameter every registered grid searches (the slope); giving it fixes the grid


@dataclass(frozen=True)
class Method:
    """A way of choosing per-block rates."""

    name: str  # CLI value and store field
    label: str  # legend, table and widget text
    color: str  # figure colour
    build: Builder
    params: tuple[Param, ...] = ()
    needs: tuple[str, ...] = ()  # statistics the caller provides (see experiment.STATISTICS)
    # this method's parameters each statistic it needs is computed with, passed by name (OWL's m)
    stat_params: tuple[str, ...] = ()
    takes_sparsity: bool = True  # False: the rates are given (custom)
    # the grid a sweep or comparison searches over GRID_PARAM, as parameter dicts, at the parameters the caller
    # fixed (the power profile's beta grid at a given curvature p): (L, S, step, fixed) -> [{beta: ...}, ...];
    # None: the defaults only
    grid: Callable[[int, float, float, Mapping[str, Any]], list[dict[str, Any]]] | None = None
    description: str = ""
    peer: bool = True  # a published method, compared by default; False: this project's own profiles (opt-in)
    # rates per (block, linear) in the order of each block's linears, or None where the spec keeps one rate per
    # block: (sparsity, parameters, statistics) -> blocks x linears (LSA's projection granularity)
    per_linear: Callable[[float, Mapping[str, Any], BlockStats], np.ndarray | None] | None = None

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise ValueError(f"{self.name} has no parameter {name!r}; allowed: {', '.join(self.param_names) or 'none'}")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"schedule method {method.name!r} is registered already")
    METHODS[method.name] = method
    return method


@contextlib.contextmanager
def registered(method: Method) -> Iterator[Method]:
    """Register ``method`` for the duration of a block (tests, plugins tried out)."""
    register(method)
    try:
        yield method
    finally:
        METHODS.pop(method.name, None)


def get_method(name: str) -> Method:
    check_choice("method", name, tuple(METHODS))
    return METHODS[name]


def method_names(comparable: bool = False, peers: bool = False) -> tuple[str, ...]:
    """Registered names; ``comparable``: only those that target a sparsity (not custom); ``peers``:
    only published methods (what a comparison runs by default)."""
    return tuple(name for name, m in METHODS.items() if (m.takes_sparsity or not comparable) and (m.peer or not peers))


def label(name: str) -> str:
    return METHODS[name].label if name in METHODS else name


def colors() -> dict[str, str]:
    return {name: m.color for name, m in METHODS.items()}


@dataclass(frozen=True, init=False)
class ScheduleSpec:
    """A validated request for one schedule: method, target sparsity, parameters (or custom rates).

    ``ScheduleSpec("owl", 0.7, lam=0.1)``: parameters not given take the registry default; unknown
    names and values outside a parameter's range raise ``ValueError`` naming what is allowed.
    """

    method: str
    sparsity: float
    args: tuple[tuple[str, Value], ...]
    rates: tuple[float, ...] = field(default=())

    def __init__(
        self, method: str = "atp", sparsity: float = 0.7, rates: tuple[float, ...] = (), **params: Any
    ) -> None:
        entry = get_method(method)
        unknown = sorted(set(params) - set(entry.param_names))
        if unknown:
            raise ValueError(
                f"{method} takes no parameter {', '.join(unknown)}; allowed: {', '.join(entry.param_names) or 'none'}"
            )
        values = {p.name: p.check(params.get(p.name, p.default), method) for p in entry.params}
        if entry.takes_sparsity:
            sparsity = check_sparsity(sparsity)
            rates = ()
        else:
            if not rates:
                raise ValueError(f"a {method} schedule needs rates, one per block, each in [0, 1]")
            rates = tuple(float(r) for r in rates)
            sparsity = float("nan")
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "sparsity", sparsity)
        object.__setattr__(self, "args", tuple(values.items()))
        object.__setattr__(self, "rates", rates)

    def __eq__(self, other: object) -> bool:  # NaN sparsity of custom specs must not break equality
        if not isinstance(other, ScheduleSpec):
            return NotImplemented
        return self.params() == other.params()

    def __hash__(self) -> int:
        return hash((self.method, repr(self.params())))

    def get(self, name: str, default: Value | None = None) -> Any:
        return dict(self.args).get(name, default)

    @property
    def entry(self) -> Method:
        return METHODS[self.method]

    def keyed_args(self) -> tuple[tuple[str, Value], ...]:
        """The parameters that define this schedule: all but those at a default not keyed there."""
        entry = self.entry
        return tuple((k, v) for k, v in self.args if entry.param(k).keyed_at_default or v != entry.param(k).default)

    def params(self) -> dict[str, Any]:
        """What defines this schedule (fingerprints, exports): method, sparsity or rates, parameters."""
        if not self.entry.takes_sparsity:
            return {"method": self.method, "rates": self.rates}
        return {"method": self.method, "sparsity": self.sparsity, **dict(self.keyed_args())}

    def replace(self, **params: Any) -> ScheduleSpec:
        """The same schedule with some parameters changed (validated again)."""
        return ScheduleSpec(self.method, self.sparsity, self.rates, **{**dict(self.args), **params})

    def describe(self) -> str:
        """A short label: ``atp S=0.7 beta=0.01``."""
        if not self.entry.takes_sparsity:
            return self.method
        extra = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.keyed_args())
        return f"{self.method} S={self.sparsity:g}" + (f" {extra}" if extra else "")


def build_schedule(
    spec: ScheduleSpec, num_layers: int, stats: BlockStats | None = None, weights: ArrayLike | None = None
) -> np.ndarray:
    """The rates ``spec`` describes for ``num_layers`` blocks.

    ``stats`` holds what the method ``needs`` (one value per block each); ``weights`` (per-block
    parameter counts) make parameter-weighted means exact where a method uses them.
    """
    entry = spec.entry
    stats = stats or {}
    for need in entry.needs:
        if stats.get(need) is None:
            raise ValueError(f"{entry.label} needs {need.replace('_', ' ')}, one per block ({num_layers} blocks)")
        given = np.asarray(stats[need])
        if (given.shape[0] if given.ndim == 2 else given.size) != num_layers:  # 2-D: one row per block
            raise ValueError(
                f"{entry.label} needs {num_layers} {need.replace('_', ' ')} (one per block), got {given.shape}"
            )
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    params: dict[str, Any] = {**dict(spec.args), "rates": spec.rates}
    rates = entry.build(num_layers, spec.sparsity, params, stats, w)
    if removed_blocks(rates):
        warnings.warn(f"{spec.describe()} {removed_note(rates)}", BlockRemovedWarning, stacklevel=2)
    return rates


class BlockRemovedWarning(UserWarning):
    """A schedule prunes some blocks whole (rate 1): the model loses those blocks."""


def removed_blocks(rates: ArrayLike) -> list[int]:
    """The blocks a schedule prunes whole: rate >= 1 (floor(columns * rate) = every column of every row)."""
    return [int(i) for i in np.flatnonzero(np.asarray(rates, dtype=np.float64) >= 1.0 - published.CLIP_TOL)]


def removed_note(rates: ArrayLike) -> str:
    """What every place that shows a schedule says of the blocks it prunes whole ("" when none): "prunes block 4
    whole (rate 1: ...)"."""
    whole = removed_blocks(rates)
    if not whole:
        return ""
    return (
        f"prunes {'blocks' if len(whole) > 1 else 'block'} {', '.join(map(str, whole))} whole "
        "(rate 1: every weight of its linears set to zero, only the residual path is left)"
    )


def with_removed(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows that hold a schedule's ``rates`` (a comparison's rows), each with ``removed_blocks`` added."""
    return [{**row, "removed_blocks": removed_blocks(row["rates"])} for row in rows]


def per_linear_rates(spec: ScheduleSpec, stats: BlockStats) -> np.ndarray | None:
    """Rates per (block, linear) when ``spec`` gives each linear its own rate from statistics (LSA's projection
    granularity), else None."""
    entry = spec.entry
    return None if entry.per_linear is None else entry.per_linear(spec.sparsity, dict(spec.args), stats)


def linear_split(spec: ScheduleSpec, rates: np.ndarray, counts: ArrayLike) -> np.ndarray | None:
    """Rates per linear type (blocks x 2: attention, MLP; ``profiles.split_rates``) when ``spec`` has a
    non-zero attention-MLP offset; None when every linear of a block takes the block's rate (the
    paper's granularity, and every method without the offset parameter).

    ``counts``: each block's (attention, MLP) weights (``profiles.group_counts``)."""
    offset = float(spec.get(OFFSET.name, 0.0))
    return None if offset == 0.0 else profiles.split_rates(rates, offset, counts)


def sweep_grid(
    spec_method: str, num_layers: int, sparsity: float, step: float, fixed: Mapping[str, Any] | None = None
) -> list[ScheduleSpec]:
    """The specs a sweep or comparison tries for one method: its grid at the parameters in ``fixed`` (the power
    profile's beta grid at a given p), or one spec when it has no grid or ``fixed`` gives GRID_PARAM."""
    entry = get_method(spec_method)
    given = dict(fixed or {})
    if entry.grid is None or GRID_PARAM in given:
        return [ScheduleSpec(spec_method, sparsity, **given)]
    grid = entry.grid(num_layers, sparsity, step, given)
    return [ScheduleSpec(spec_method, sparsity, **given, **values) for values in grid]


# ------------------------------------------------------------------------------ the methods
# The granularity option: 0 keeps the paper's one rate per block; otherwise each block's attention
# projections and MLP take different rates with the same parameter-weighted block mean.
OFFSET = Param(
    "offset",
    "attention-MLP offset (s_MLP - s_attention)",
    0.0,
    -profiles.OFFSET_MAX,
    profiles.OFFSET_MAX,
    step=0.01,
    help="0: every linear of a block at the block's rate (the paper); > 0 prunes the MLP more than attention",
    keyed_at_default=False,
)


def _slope_grid(
    bound: Callable[[int, float, Mapping[str, Any]], float],
) -> Callable[[int, float, float, Mapping[str, Any]], list[dict[str, Any]]]:
    """beta = step, 2 step, ... <= bound(L, S, fixed parameters) (the ATP grid's steps under another bound)."""

    def grid(num_layers: int, sparsity: float, step: float, fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
        count = math.floor((bound(num_layers, sparsity, fixed) + published.BETA_TOL) / step)
        return [{GRID_PARAM: float(b)} for b in np.round(step * np.arange(1, count + 1), published.GRID_DECIMALS)]

    return grid


def _atp_grid(num_layers: int, sparsity: float, step: float, _fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{GRID_PARAM: float(b)} for b in published.beta_grid(num_layers, sparsity, step)]


def _custom(num_layers: int, _s: float, p: Mapping[str, Any], _stats: BlockStats, _w: np.ndarray | None) -> np.ndarray:
    rates = published.custom(p["rates"])
    if rates.size != num_layers:
        raise ValueError(f"a custom schedule needs {num_layers} rates (one per block), got {rates.size}")
    return rates


register(
    Method(
        "uniform",
        "uniform",
        "#7f7f7f",
        lambda n, s, p, stats, w: published.uniform(n, s),
        description="s_i = S for every block",
    )
)
register(
    Method(
        "atp",
        "ATP",
        "#d62728",
        lambda n, s, p, stats, w: published.atp(n, s, float(p["beta"])),
        params=(
            Param(
                "beta",
                "ATP beta (slope per block)",
                0.0,
                0.0,
                step=published.GRID_STEP / 4,
                required=True,
                upper=published.beta_max,
                upper_text="beta_max = min(2S, 2(1-S))/(L-1)",
            ),
            OFFSET,
        ),
        grid=_atp_grid,
        description="s_i = S - beta(L-1)/2 + beta*i (arXiv 2502.14770, Eq. 10)",
    )
)
register(
    Method(
        "owl",
        "OWL",
        "#1f77b4",
        lambda n, s, p, stats, w: published.owl(stats["outlier_ratios"], s, float(p["lam"])),
        params=(
            Param("lam", "OWL lambda (half-width of the band)", published.OWL_LAMBDA, 0.0, published.OWL_MAX_LAMBDA),
            Param("m", "OWL M (outlier threshold, x mean score)", published.OWL_M, 0.0, step=0.5),
        ),
        needs=("outlier_ratios",),
        stat_params=("m",),
        description="more outliers -> denser block (Yin et al. 2023)",
    )
)
register(
    Method(
        "alphapruning",
        "AlphaPruning",
        "#2ca02c",
        lambda n, s, p, stats, w: published.alphapruning(stats["alphas"], s, float(p["eps"]), w),
        params=(
            Param(
                "eps",
                "AlphaPruning eps (half-width of the ratio band)",
                published.ALPHA_EPS,
                0.0,
                published.ALPHA_MAX_EPS,
                step=0.05,
            ),
            Param(
                "estimator",
                "AlphaPruning alpha estimator",
                "official",
                choices=published.ALPHA_ESTIMATORS,
                help="official: AlphaPruning's code; window: both xmin bounds applied, near-zero eigenvalues "
                "dropped; farms: FARMS's spectra of square sub-matrices (its released configuration)",
            ),
            Param(
                "precision",
                "AlphaPruning spectra precision",
                published.SPECTRA_PRECISION,
                choices=published.SPECTRA_PRECISIONS,
                help="float16: weights rounded to float16 before the spectra, as both official codes load them; "
                "float32: the weights in float32",
            ),
        ),
        needs=("alphas",),
        stat_params=("estimator", "precision"),
        description="heavier-tailed spectrum (smaller alpha) -> denser block (Lu et al. 2024)",
    )
)
register(
    Method(
        "dlp",
        "DLP",
        "#8c564b",
        lambda n, s, p, stats, w: published.dlp(stats["block_scores"], s, float(p["alpha"])),
        params=(
            Param(
                "alpha", "DLP alpha (half-width of the density band)", published.DLP_ALPHA, 0.0, published.DLP_MAX_ALPHA
            ),
        ),
        needs=("block_scores",),
        description="larger mean Wanda score -> sparser block (Chen et al. 2025)",
    )
)
register(
    Method(
        "dsa",
        "DSA",
        "#17becf",
        lambda n, s, p, stats, w: dsa.dsa(
            stats["dsa_values"], s, float(p["lam"]), str(p["nonfinite"]), str(p["graph"])
        ),
        params=(
            Param(
                "graph",
                "DSA graph (stick)-(deform)-(post)",
                dsa.DEFAULT_GRAPH,
                text=dsa.check_graph,
                help="the allocation function applied to each block's Wanda scores; default: the authors' "
                "published function for LLaMA at 70 %; the last group (7) is parsed and unused, as in their code",
            ),
            Param("lam", "DSA Lamda (half-width of the band)", dsa.LAMBDA, 0.0, dsa.MAX_LAMBDA),
            Param(
                "nonfinite",
                "DSA non-finite importance",
                "authors",
                choices=dsa.NONFINITE,
                help="authors: NaN counts as 0 and inf as -1 (their code); clamp: ASIN/ACOS/LOG arguments kept in "
                "their domain (a correction)",
            ),
        ),
        needs=("dsa_values",),
        stat_params=("graph", "nonfinite"),
        description="a searched function of each block's Wanda scores -> importance -> OWL-style band (Li et al. 2024)",
    )
)
LSA_PARAMS = (
    Param(
        "granularity",
        "LSA granularity",
        "layer",
        choices=lsa.GRANULARITIES,
        help="layer: one rate per block (the code's --layer lsa, spread from its table by S); projection: one rate "
        "per linear (--layer lsac; --layer lsab runs the same code)",
    ),
    Param(
        "lam",
        "LSA Lamda (half-width, projection granularity; layer granularity below S = 0.1)",
        lsa.LAMBDA,
        0.0,
        lsa.MAX_LAMBDA,
    ),
)


def _lsa_table(sparsity: float, p: Mapping[str, Any], stats: BlockStats) -> np.ndarray:
    return lsa.rates(stats["lsa_errors"], stats["linear_sizes"], sparsity, float(p["lam"]), str(p["granularity"]))


register(
    Method(
        "lsa",
        "LSA",
        "#ff7f0e",
        lambda n, s, p, stats, w: lsa.block_means(_lsa_table(s, p, stats), stats["linear_sizes"]),
        params=LSA_PARAMS,
        needs=("lsa_errors", "linear_sizes"),
        description="larger minimal reconstruction error -> sparser block or linear (Yang et al. 2026)",
        per_linear=lambda s, p, stats: _lsa_table(s, p, stats) if p["granularity"] == "projection" else None,
    )
)
register(
    Method(
        "power",
        "power profile (x^p)",
        "#e377c2",
        lambda n, s, p, stats, w: profiles.power_profile(n, s, float(p["beta"]), float(p["power"])),
        params=(
            Param(
                "beta",
                "mean slope per block",
                0.0,
                0.0,
                1.0,
                step=published.GRID_STEP / 4,
                required=True,
                upper_text="min(S/mean f, (1-S)/(1-mean f))/(L-1), f = x^p",
            ),
            Param(
                "power",
                "curvature p (1 = ATP's line)",
                profiles.POWER_DEFAULT,
                profiles.POWER_MIN,
                profiles.POWER_MAX,
                step=0.25,
                help="p > 1 keeps early blocks flatter, p < 1 rises early",
            ),
        ),
        grid=_slope_grid(lambda n, s, p: profiles.power_beta_max(n, s, float(p.get("power", profiles.POWER_DEFAULT)))),
        description="s_i = S + beta(L-1)(x_i^p - mean x^p), x_i = i/(L-1): a curved increasing profile",
        peer=False,
    )
)
register(
    Method(
        "prefix",
        "protected prefix + line",
        "#bcbd22",
        lambda n, s, p, stats, w: profiles.prefix_profile(n, s, float(p["beta"]), float(p["prefix"])),
        params=(
            Param(
                "beta",
                "slope per block after the prefix",
                0.0,
                0.0,
                1.0,
                step=published.GRID_STEP / 4,
                required=True,
                upper_text="min(S/mean r, (1-S)/(L-k-mean r)), r_i = max(0, i-k+1)",
            ),
            Param(
                "prefix",
                "protected blocks k (flat, lowest rate)",
                float(profiles.PREFIX_DEFAULT),
                0.0,
                step=1.0,
                help="a whole number in [0, L-1]; 0 and 1 give ATP's line",
            ),
        ),
        grid=_slope_grid(
            lambda n, s, p: profiles.prefix_beta_max(n, s, min(float(p.get("prefix", profiles.PREFIX_DEFAULT)), n - 1))
        ),
        description="first k blocks at one flat rate, then a line rising by beta per block",
        peer=False,
    )
)
register(Method("custom", "custom", "#9467bd", _custom, takes_sparsity=False, description="your own rates"))
