"""Plotly figure builders for the dashboard (pure: they never import streamlit).

Every builder returns a ``plotly.graph_objects.Figure`` with axis titles that carry units, a legend,
and hover labels that show exact values; pages draw them with ``PLOTLY_CONFIG`` so the toolbar
exports PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from numpy.typing import ArrayLike

from atp_viz.display import metric_text, perplexity_text
from atp_viz.measure.metrics import METRICS
from atp_viz.schedules import methods

PLOTLY_CONFIG = {
    "displaylogo": False,
    "displayModeBar": True,
    "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "atp-viz"},
}
# Colours of things that are not schedule methods (a method's colour lives in its registry entry).
COLORS = {
    "dense": "#000000",
    "increasing": "#d62728",  # theory sandbox: the ATP rates in three orders
    "random": "#ff7f0e",
    "decreasing": "#9467bd",
}
BLOCK_AXIS = "decoder block i (index; 0 = next to the embeddings)"
RATE_AXIS = "sparsity s_i (fraction of the block's weights set to 0)"
HEIGHT = 420


def color_for(name: str) -> str | None:
    """A stable colour per method: ``name`` is a method's registry name (``prefix``) or a legend label that
    begins with a method's name or label ('protected prefix + line (k = 2)', 'ATP (beta = 0.01)'; the
    longest match wins); anything else by its first word (``COLORS``: dense, the sandbox's orders)."""
    text = name.strip().lower()
    matches = [
        (len(key), entry.color)
        for entry in methods.METHODS.values()
        for key in (entry.name.lower(), entry.label.lower())
        if text.startswith(key) and not text[len(key) : len(key) + 1].isalnum()
    ]
    if matches:
        return max(matches)[1]
    first = text.split()[0].strip("(),:") if text else ""
    return COLORS.get(first)


def _block_ticks(fig: go.Figure, blocks: int) -> go.Figure:
    """Integer ticks on a block/layer axis (about 16 of them at most)."""
    return fig.update_xaxes(tick0=0, dtick=max(1, math.ceil(blocks / 16)))


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        yaxis_type="log" if log_y else "linear",
        hovermode="closest",
        legend_title_text="",
        showlegend=True,
        height=HEIGHT,
        margin=dict(l=70, r=20, t=60, b=60),
    )
    if log_y:  # 1-2-5 ticks written out in full, instead of Plotly's bare "2" and "5" between the decades
        values = [float(v) for t in fig.data if getattr(t, "yaxis", None) in (None, "y") and t.y is not None
                  for v in t.y if v is not None]  # fmt: skip
        ticks = log_ticks(values)
        fig.update_yaxes(tickvals=ticks, ticktext=[f"{t:,g}" for t in ticks])
    return fig


def last_first_ratio(curve: ArrayLike) -> float:
    """curve[-1] / curve[0]: how many times larger the last block's error is than the first's."""
    values = np.asarray(curve, dtype=np.float64)
    if values.size == 0 or not np.isfinite(values[[0, -1]]).all():
        return math.nan
    return float(values[-1] / values[0]) if values[0] > 0 else math.inf


def _block_line(name: str, values: np.ndarray, hover_value: str) -> go.Scatter:
    """One schedule's per-block curve: block index on x, exact value in the hover."""
    return go.Scatter(
        x=list(range(values.size)),
        y=values.tolist(),
        mode="lines+markers",
        name=name,
        line=dict(color=color_for(name)),
        hovertemplate=f"<b>{name}</b><br>block %{{x}}<br>{hover_value}<extra></extra>",
    )


def schedule_figure(schedules: Mapping[str, ArrayLike], title: str = "Per-block sparsity schedules") -> go.Figure:
    """One line per schedule: block index -> sparsity rate."""
    fig = go.Figure()
    for name, rates in schedules.items():
        fig.add_trace(_block_line(name, np.asarray(rates, dtype=np.float64), "sparsity %{y:.6f}"))
    fig = _layout(fig, title, BLOCK_AXIS, RATE_AXIS)
    fig.update_yaxes(tickformat=".2f")
    _block_ticks(fig, max((len(t.y) for t in fig.data), default=1))
    return fig


def error_figure(
    curves: Mapping[str, ArrayLike],
    *,
    log_y: bool = True,
    title: str = "Reconstruction error per block",
    y_title: str = "relative error ||h - h_pruned||^2 / ||h||^2 (unitless)",
    x_title: str = BLOCK_AXIS,
) -> go.Figure:
    """One line per schedule of a per-block error; the subtitle gives each last/first block ratio."""
    fig = go.Figure()
    notes = []
    for name, curve in curves.items():
        values = np.asarray(curve, dtype=np.float64)
        ratio = last_first_ratio(values)
        notes.append(f"{name}: last/first = {ratio:.3g}x")
        fig.add_trace(_block_line(name, values, "error %{y:.6g}"))
    fig = _layout(fig, title, x_title, y_title, log_y)
    fig.update_layout(title_subtitle_text="; ".join(notes), margin_t=80)
    _block_ticks(fig, max((len(t.y) for t in fig.data), default=1))
    return fig


def beta_curve_figure(
    betas: Sequence[float],
    perplexities: Sequence[float],
    *,
    sparsity: float,
    uniform_ppl: float | None = None,
    best_beta: float | None = None,
    beta_max: float | None = None,
    selected: float | None = None,
    validation: Sequence[float] | None = None,
    spread: Sequence[float] | None = None,
    metric: str = "perplexity",
    predicted: float | None = None,
) -> go.Figure:
    """ATP perplexity against beta (the U-curve, evaluation split), the validation curve that chose the
    best beta (dotted), uniform baseline, best and selected point. ``spread``: the standard deviation
    of each evaluation value over calibration seeds, drawn as +-1 std error bars. ``predicted``: a
    beta predicted without a sweep (``atp_viz.tuning.predict``), drawn as a vertical line (with or without
    swept points)."""
    order = np.argsort(np.asarray(betas, dtype=np.float64))
    x = np.asarray(betas, dtype=np.float64)[order]
    y = np.asarray(perplexities, dtype=np.float64)[order]
    right = max([beta_max or 0.0, *x.tolist(), 1e-9])
    fig = go.Figure()
    if uniform_ppl is not None:
        fig.add_trace(
            go.Scatter(
                x=[0.0, right],
                y=[uniform_ppl, uniform_ppl],
                mode="lines",
                name=f"uniform (beta = 0): {metric_text(metric, uniform_ppl)}",
                line=dict(color=color_for("uniform"), dash="dash"),
                hovertemplate=f"uniform baseline<br>{metric} {uniform_ppl:.6g}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=x.tolist(),
            y=y.tolist(),
            mode="lines+markers",
            name=f"ATP at S = {sparsity:g} (evaluation)",
            line=dict(color=color_for("atp")),
            error_y=_error_bars(spread, order),
            hovertemplate=f"beta %{{x:.6g}}<br>evaluation {metric} %{{y:.6g}}<extra>ATP</extra>",
        )
    )
    if validation is not None and len(validation) == len(x):
        v = np.asarray(validation, dtype=np.float64)[order]
        fig.add_trace(
            go.Scatter(
                x=x.tolist(),
                y=v.tolist(),
                mode="lines+markers",
                name="validation (chooses the best beta)",
                line=dict(color=color_for("atp"), dash="dot"),
                marker=dict(symbol="circle-open"),
                hovertemplate=f"beta %{{x:.6g}}<br>validation {metric} %{{y:.6g}}<extra>ATP</extra>",
            )
        )
    for label, beta, symbol, size in (("best", best_beta, "star", 18), ("selected", selected, "circle-open", 20)):
        if beta is None or not np.any(np.isclose(x, beta)):
            continue
        value = float(y[np.isclose(x, beta)][0])
        fig.add_trace(
            go.Scatter(
                x=[beta],
                y=[value],
                mode="markers",
                name=f"{label}: beta = {beta:.4g}, {metric} {metric_text(metric, value)}",
                marker=dict(symbol=symbol, size=size, color="#ff7f0e", line=dict(width=2, color="#ff7f0e")),
                hovertemplate=f"{label}<br>beta %{{x:.6g}}<br>{metric} %{{y:.6g}}<extra></extra>",
            )
        )
    if predicted is not None:
        fig.add_vline(x=predicted, line=dict(color="#2ca02c", dash="dashdot", width=2))
        fig.add_trace(  # a legend entry for the line (vlines have none)
            go.Scatter(
                x=[predicted],
                y=[float(y[np.isclose(x, predicted)][0])] if np.any(np.isclose(x, predicted)) else [None],
                mode="markers",
                name=f"predicted (no sweep): beta = {predicted:.4g}",
                marker=dict(symbol="diamond", size=13, color="#2ca02c"),
                hovertemplate="predicted beta %{x:.6g}<extra></extra>",
            )
        )
    fig = _layout(
        fig,
        f"Beta sweep at target sparsity {sparsity:g}",
        "beta (sparsity increase per block, fraction)",
        METRICS[metric].label,
    )
    if beta_max:
        fig.update_xaxes(range=[-0.03 * beta_max, 1.03 * beta_max])
    return fig


def predicted_error_figure(betas: Sequence[float], errors: Sequence[float], predicted: float) -> go.Figure:
    """The error-propagation model's predicted final-layer error over the beta grid, relative to its
    minimum (``atp_viz.tuning.predict``); the predicted beta is the lowest point."""
    e = np.asarray(errors, dtype=np.float64)
    fig = go.Figure(
        go.Scatter(
            x=list(betas),
            y=(e / e.min()).tolist(),
            mode="lines+markers",
            name="predicted error",
            line=dict(color="#2ca02c"),
            hovertemplate="beta %{x:.6g}<br>predicted error / minimum %{y:.4f}<extra></extra>",
        )
    )
    fig.add_vline(x=predicted, line=dict(color="#2ca02c", dash="dashdot"))
    return _layout(fig, f"Predicted final-layer error (lowest at beta = {predicted:.4g})", "beta", "error / minimum")


def _error_bars(spread: Sequence[float] | None, order: np.ndarray | None = None) -> dict[str, object] | None:
    """Plotly +-1 std error bars (None: no bars, e.g. a single seed)."""
    if spread is None or not np.any(np.asarray(spread, dtype=np.float64) > 0):
        return None
    values = np.asarray(spread, dtype=np.float64)
    return dict(type="data", array=(values[order] if order is not None else values).tolist(), visible=True)


def compare_figure(
    rows: Sequence[Mapping[str, object]], dense_ppl: float | None = None, log_y: bool = True
) -> go.Figure:
    """Grouped bars: one group per target sparsity, one bar per method; rows hold method/sparsity/perplexity."""
    sparsities = sorted({float(r["sparsity"]) for r in rows})  # type: ignore[arg-type]
    categories = [f"{s:.0%}" for s in sparsities]
    names = list(dict.fromkeys(str(r.get("label", r["method"])) for r in rows))
    fig = go.Figure()
    for name in names:
        mine = [r for r in rows if r.get("label", r["method"]) == name]
        by_s = {float(r["sparsity"]): float(r["perplexity"]) for r in mine}  # type: ignore[arg-type]
        std = {float(r["sparsity"]): float(r.get("perplexity_std") or 0.0) for r in mine}  # type: ignore[arg-type]
        fig.add_trace(
            go.Bar(
                x=categories,
                y=[by_s.get(s) for s in sparsities],
                error_y=_error_bars([std.get(s, 0.0) for s in sparsities]),
                name=name,
                marker_color=color_for(str(mine[0]["method"])),  # by the method, whatever the label says
                hovertemplate=f"<b>{name}</b><br>sparsity %{{x}}<br>perplexity %{{y:.6g}}<extra></extra>",
            )
        )
    if dense_ppl is not None and categories:
        fig.add_trace(
            go.Scatter(
                x=categories,
                y=[dense_ppl] * len(categories),
                mode="lines+markers",
                name=f"dense: {perplexity_text(dense_ppl)}",
                line=dict(color=COLORS["dense"], dash="dot"),
                hovertemplate="dense model<br>perplexity %{y:.6g}<extra></extra>",
            )
        )
    fig = _layout(
        fig,
        "Perplexity by strategy and target sparsity",
        "target sparsity S (% of prunable weights)",
        "perplexity (lower is better)" + (", log scale" if log_y else ""),
        log_y,
    )
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category")  # '70%' would otherwise be read as the number 70
    if len(categories) < MIN_CATEGORIES:  # a lone group would otherwise stretch across the whole plot
        fig.update_xaxes(range=[-0.5 * MIN_CATEGORIES, len(categories) - 1 + 0.5 * MIN_CATEGORIES])
    return fig


MIN_CATEGORIES = 3  # fewer sparsity groups than this get side padding
LOG_TICK_MANTISSAS = (1, 2, 5)


def log_ticks(values: Sequence[float]) -> list[float]:
    """1-2-5 ticks per decade covering ``values`` (positive, finite), written out in full on a log axis
    (Plotly's own log ticks abbreviate the 2 and 5 ticks to a bare digit)."""
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    if not finite:
        return []
    low, high = math.floor(math.log10(min(finite))), math.ceil(math.log10(max(finite)))
    ticks = [m * 10.0**e for e in range(low, high + 1) for m in LOG_TICK_MANTISSAS]
    inside = [t for t in ticks if min(finite) / 2 <= t <= max(finite) * 2]
    return inside or ticks


def totals_figure(
    totals: Mapping[str, float],
    title: str = "Total error (sum over layers)",
    y_title: str = "sum over layers of ||y - y_pruned||_F^2 (activation units^2)",
) -> go.Figure:
    """Bars of one number per schedule (the theory sandbox's total error)."""
    names = list(totals)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[totals[n] for n in names],
            marker_color=[color_for(n) or "#8c564b" for n in names],
            name="total error",
            text=[f"{totals[n]:.4g}" for n in names],
            textposition="auto",
            hovertemplate="%{x}<br>total error %{y:.6g}<extra></extra>",
        )
    )
    return _layout(fig, title, "schedule (same average sparsity)", y_title)


def search_curve_figure(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    x_title: str,
    atp_best: float | None = None,
    colors: Mapping[str, str] | None = None,
    title: str = "Best validation perplexity so far",
) -> go.Figure:
    """One step line per method: x (trials or seconds) -> b_k = min_{j <= k} validation perplexity_j;
    ATP's grid best (chosen on validation) as a dashed horizontal line."""
    fig = go.Figure()
    for name, (x, y) in curves.items():
        fig.add_trace(
            go.Scatter(
                x=list(x),
                y=list(y),
                mode="lines+markers",
                line_shape="hv",
                name=name,
                line=dict(color=(colors or {}).get(name) or color_for(name)),
                hovertemplate=f"<b>{name}</b><br>{x_title.split(' (')[0]} %{{x:.4g}}<br>best so far %{{y:.6g}}"
                "<extra></extra>",
            )
        )
    if atp_best is not None and math.isfinite(atp_best):
        fig.add_hline(y=atp_best, line=dict(color=color_for("atp"), dash="dash"))
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="lines",
                name=f"ATP grid best: {perplexity_text(atp_best)}",
                line=dict(color=color_for("atp"), dash="dash"),
            )
        )
    return _layout(fig, title, x_title, "best validation perplexity so far (lower is better)")


def winners_figure(
    winners: Mapping[str, ArrayLike],
    atp: ArrayLike | None = None,
    colors: Mapping[str, str] | None = None,
    title: str = "Winning schedules vs ATP's best line",
) -> go.Figure:
    """Per-block rates of each search's winner (markers) over ATP's best line (thick); Theorem 3.5
    predicts increasing winners."""
    fig = go.Figure()
    if atp is not None:
        line = _block_line("ATP best", np.asarray(atp, dtype=np.float64), "sparsity %{y:.6f}")
        line.update(line=dict(color=color_for("atp"), width=4), mode="lines")
        fig.add_trace(line)
    for name, rates in winners.items():
        trace = _block_line(name, np.asarray(rates, dtype=np.float64), "sparsity %{y:.6f}")
        trace.update(line=dict(color=(colors or {}).get(name) or color_for(name), width=1.5))
        fig.add_trace(trace)
    fig = _layout(fig, title, BLOCK_AXIS, RATE_AXIS)
    fig.update_yaxes(tickformat=".2f")
    _block_ticks(fig, max((len(t.y) for t in fig.data if t.y is not None), default=1))
    return fig


# -- beyond one straight line: 2-D sweeps, rates per linear type, curved profiles ----------------
def sweep2d_figure(
    betas: Sequence[float],
    values: Sequence[float],
    grid: ArrayLike,
    value_label: str,
    neutral: float,
    best: tuple[int, int] | None = None,
    line_best: tuple[int, int] | None = None,
    metric_label: str = "perplexity",
    title: str = "",
) -> go.Figure:
    """A (betas x values) grid of a metric as a heatmap (log colour scale: log10 of the value), the
    paper's 1-D line (the column at ``neutral``) outlined, the best cell and the best on the line
    marked. NaN cells (not run, or beyond a profile's bound) stay blank."""
    z = np.asarray(grid, dtype=np.float64)
    x = [f"{v:g}" for v in values]
    y = [f"{b:g}" for b in betas]
    with np.errstate(divide="ignore", invalid="ignore"):
        colour = np.where(z > 0, np.log10(z), np.nan)
    fig = go.Figure(
        go.Heatmap(
            x=x,
            y=y,
            z=colour.tolist(),
            customdata=z.tolist(),
            colorscale="Viridis_r",
            colorbar=dict(title=f"log10 {metric_label}"),
            hovertemplate=f"beta %{{y}}<br>{value_label} %{{x}}<br>{metric_label} %{{customdata:.4g}}<extra></extra>",
            name=metric_label,
            showlegend=False,
        )
    )
    if neutral in list(values):
        col = list(values).index(neutral)
        fig.add_shape(type="rect", x0=col - 0.5, x1=col + 0.5, y0=-0.5, y1=len(betas) - 0.5,
                      line=dict(color="#d62728", width=3), xref="x", yref="y")  # fmt: skip
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color="#d62728", width=3),
                                 name=f"paper's line ({value_label} = {neutral:g})"))  # fmt: skip
    for cell, name, symbol in (
        (best, "best (chosen on validation)", "star"),
        (line_best, "best on the line", "circle-open"),
    ):
        if cell is not None:
            marker = dict(symbol=symbol, size=16, color="white", line=dict(color="black", width=2))
            fig.add_trace(go.Scatter(x=[x[cell[1]]], y=[y[cell[0]]], mode="markers", name=name, marker=marker,
                                     hovertemplate=f"{name}<br>%{{customdata:.4g}}<extra></extra>",
                                     customdata=[z[cell]]))  # fmt: skip
    _layout(fig, title or f"{metric_label}: beta x {value_label}", value_label, "ATP slope beta (per block)")
    # one cell per grid value: category axes (Plotly reads "0.05" as a number and would place the cells at their
    # values while the outline above sits at the cells' indices)
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig.update_layout(legend=dict(orientation="h", y=-0.2))


def linear_rates_figure(rates: Mapping[str, ArrayLike], title: str = "Rates per block and linear type") -> go.Figure:
    """A blocks x linear-type (or blocks x projection) heatmap of sparsity (``{"attention": [...], "mlp": [...]}``
    or ``{"self_attn.q_proj": [...], ...}``, one rate per block each), exact rates in the hover."""
    names = list(rates)
    z = np.array([np.asarray(rates[n], dtype=np.float64) for n in names])  # (types, blocks)
    fig = go.Figure(
        go.Heatmap(
            x=list(range(z.shape[1])),
            y=names,
            z=z.tolist(),
            zmin=0.0,
            zmax=1.0,
            colorscale="Reds",
            colorbar=dict(title="sparsity"),
            hovertemplate="block %{x}<br>%{y}<br>sparsity %{z:.4f}<extra></extra>",
            showlegend=False,
        )
    )
    _layout(fig, title, BLOCK_AXIS, "linear type" if len(names) <= 2 else "linear (projection)")
    fig.update_yaxes(type="category")  # the rows are names: on _layout's linear axis Plotly draws no cell
    fig.update_layout(showlegend=False, height=max(260, 140 + 32 * len(names)))
    return _block_ticks(fig, z.shape[1])


def profiles_figure(
    profiles: Mapping[str, ArrayLike],
    line: ArrayLike,
    line_name: str = "ATP",
    title: str = "Curved profiles vs ATP's line",
) -> go.Figure:
    """Per-block rates of curved profiles overlaid on ATP's line (dashed), all with the same mean."""
    fig = go.Figure()
    atp = np.asarray(line, dtype=np.float64)
    hover = f"<b>{line_name}</b><br>block %{{x}}<br>sparsity %{{y:.4f}}<extra></extra>"
    fig.add_trace(go.Scatter(x=list(range(atp.size)), y=atp.tolist(), mode="lines", name=line_name,
                             line=dict(color=color_for("atp"), dash="dash", width=3), hovertemplate=hover))  # fmt: skip
    for name, values in profiles.items():
        fig.add_trace(_block_line(name, np.asarray(values, dtype=np.float64), "sparsity %{y:.4f}"))
    _layout(fig, title, BLOCK_AXIS, RATE_AXIS)
    return _block_ticks(fig, atp.size)
