"""Plotly figure builders of the Lesson page (pure: they never import streamlit), in ``figures``' style:
axis titles with units, a legend, exact values in the hover."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from numpy.typing import ArrayLike

from atp_viz.dashboard.figures import BLOCK_AXIS, _block_ticks, _layout, color_for
from atp_viz.experiment.lesson import Budget, ScoreHistogram

RATE_SCALE = "Viridis"  # colour = the block's sparsity s_i
STRIP_HEIGHT = 260
RATE_MARGIN = 0.05  # the colour scale spans the schedule's rates +- this


def _highlight(fig: go.Figure, block: int | None) -> go.Figure:
    if block is not None:
        fig.add_vrect(x0=block - 0.5, x1=block + 0.5, fillcolor="#ff7f0e", opacity=0.25, line_width=0)
    return fig


def strip_figure(
    rates: ArrayLike,
    local: ArrayLike,
    cumulative: ArrayLike,
    *,
    selected: int | None = None,
    title: str = "The decoder blocks",
) -> go.Figure:
    """The depth strip: one column per block, bars = its local and cumulative relative error (log scale),
    colour = its sparsity s_i; ``selected`` is shaded. Clicking a bar selects that block."""
    r = np.asarray(rates, dtype=np.float64)
    blocks = list(range(r.size))
    fig = go.Figure()
    for name, values, pattern in (("cumulative error", cumulative, ""), ("local error", local, "/")):
        v = np.asarray(values, dtype=np.float64)
        fig.add_trace(
            go.Bar(
                x=blocks,
                y=v.tolist(),
                name=name,
                customdata=r.tolist(),
                marker=dict(
                    color=r.tolist(),
                    colorscale=RATE_SCALE,
                    cmin=float(r.min()) - RATE_MARGIN,  # a uniform schedule gets one mid-scale colour
                    cmax=float(r.max()) + RATE_MARGIN,
                    pattern=dict(shape=pattern),
                    colorbar=dict(title="s_i", thickness=12, len=0.9, tickformat=".2f") if not pattern else None,
                    showscale=not pattern,
                ),
                hovertemplate=f"block %{{x}}<br>s_i %{{customdata:.4f}}<br>{name} %{{y:.4g}}<extra></extra>",
            )
        )
    fig = _layout(fig, title, "decoder block i", "relative error", log_y=True)
    fig.update_layout(
        barmode="group",
        height=STRIP_HEIGHT,
        margin=dict(l=60, r=10, t=40, b=40),
        legend=dict(orientation="h", y=1.12, x=0.5, xanchor="left"),
        clickmode="event+select",
    )
    _block_ticks(fig, r.size)
    return _highlight(fig, selected)


def local_figure(local: ArrayLike, rates: ArrayLike, selected: int | None = None) -> go.Figure:
    """Chapter 1: each block's own (local) relative error when it alone is pruned at its rate."""
    v, r = np.asarray(local, dtype=np.float64), np.asarray(rates, dtype=np.float64)
    fig = go.Figure(
        go.Bar(
            x=list(range(v.size)),
            y=v.tolist(),
            name="local error, block pruned alone",
            customdata=r.tolist(),
            marker=dict(color=color_for("uniform")),
            hovertemplate="block %{x}<br>s_i %{customdata:.4f}<br>local error %{y:.4g}<extra></extra>",
        )
    )
    fig = _layout(
        fig,
        "Each block's own error when it alone is pruned",
        BLOCK_AXIS,
        "local error ||f_i(x) - fhat_i(x)||^2 / ||f_i(x)||^2",
    )
    _block_ticks(fig, v.size)
    return _highlight(fig, selected)


def stepper_figure(
    steps: Sequence[Mapping[str, float]],
    num_blocks: int,
    reference: ArrayLike | None = None,
    label: str = "uniform",
    reference_label: str = "reference",
) -> go.Figure:
    """Chapter 3: the cumulative (and local) relative error of the blocks pruned so far, on a fixed block axis;
    ``reference``: a finished curve drawn faintly (e.g. the whole uniform curve) for orientation."""
    done = len(steps)
    fig = go.Figure()
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        fig.add_trace(
            go.Scatter(
                x=list(range(ref.size)),
                y=ref.tolist(),
                mode="lines",
                name=reference_label,
                line=dict(color="#bbbbbb", dash="dot"),
                hovertemplate="block %{x}<br>%{y:.4g}<extra>reference</extra>",
            )
        )
    for field, name, dash in (("cumulative_error", "cumulative error", "solid"), ("local_error", "local error", "dot")):
        fig.add_trace(
            go.Scatter(
                x=list(range(done)),
                y=[float(s[field]) for s in steps],
                mode="lines+markers",
                name=f"{label}: {name}",
                line=dict(color=color_for(label), dash=dash),
                hovertemplate=f"block %{{x}}<br>{name} %{{y:.4g}}<extra></extra>",
            )
        )
    fig = _layout(fig, f"{done} of {num_blocks} blocks pruned", BLOCK_AXIS, "relative error", log_y=True)
    fig.update_xaxes(range=[-0.5, num_blocks - 0.5])
    _block_ticks(fig, num_blocks)
    return fig


def budget_figure(budget: Budget, joint_abs: float, selected: int | None = None) -> go.Figure:
    """Chapter 4: the share of the final error each block causes when pruned alone (bars, %) and its
    amplification final / local (markers, right log axis)."""
    share = 100 * budget.shares(joint_abs)
    amp = budget.amplification
    blocks = list(range(share.size))
    custom = np.stack([budget.rates, budget.local, budget.final, amp], axis=1).tolist()
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=blocks,
            y=share.tolist(),
            name="share of the final error (block pruned alone), %",
            customdata=custom,
            marker=dict(color=color_for("uniform")),
            hovertemplate="block %{x}<br>s_i %{customdata[0]:.4f}<br>share %{y:.3g} %<br>local %{customdata[1]:.4g}"
            "<br>final %{customdata[2]:.4g}<br>amplification %{customdata[3]:.4g}x<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=blocks,
            y=amp.tolist(),
            mode="markers",
            name="amplification final / local (right axis)",
            yaxis="y2",
            marker=dict(color="#d62728", symbol="diamond", size=8),
            hovertemplate="block %{x}<br>amplification %{y:.4g}x<extra></extra>",
        )
    )
    fig = _layout(
        fig, "Error budget: who causes the last block's error", BLOCK_AXIS, "share of the joint final error (%)"
    )
    fig.update_layout(
        yaxis2=dict(title="amplification (x, log)", overlaying="y", side="right", type="log"),
        legend=dict(orientation="h", y=-0.25),
        margin=dict(l=70, r=70, t=60, b=90),
    )
    _block_ticks(fig, share.size)
    return _highlight(fig, selected)


def guess_line(fig: go.Figure, block: int | None, text: str = "your guess") -> go.Figure:
    """A dashed vertical line at a student's guessed block (nothing when there is no guess)."""
    if block is not None:
        fig.add_vline(x=block, line=dict(color="#ff7f0e", dash="dash", width=2), annotation_text=text)
    return fig


def pool_quantile(edges: ArrayLike, counts: ArrayLike, q: float) -> float:
    """The q-quantile of binned values (``counts`` per bin between ``edges``), linear inside its bin."""
    e, c = np.asarray(edges, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        return float(e[0])
    cdf = np.concatenate([[0.0], np.cumsum(c)]) / float(c.sum())
    i = int(np.clip(np.searchsorted(cdf, q, side="left"), 1, e.size - 1))  # the bin where the CDF reaches q
    span = cdf[i] - cdf[i - 1]
    return float(e[i - 1] + (e[i] - e[i - 1]) * ((q - cdf[i - 1]) / span if span > 0 else 0.0))


def score_histogram_figure(hist: ScoreHistogram, linear: str | None = None) -> go.Figure:
    """Block detail: the histogram of the block's weight scores (``linear``, or all its linears pooled), on a log
    axis, stacked into the weights pruned at the block's rate and the kept ones. The dashed line is the rate's
    quantile of the scores shown: the threshold if they were pruned as one pool; the pruner cuts each output row at
    its own threshold, so pruned and kept weights overlap around it."""
    if linear is not None and linear not in hist.pruned:
        raise ValueError(f"linear must be one of {', '.join(hist.linears)}, got {linear!r}")
    names = [linear] if linear is not None else hist.linears
    pruned = np.sum([hist.pruned[n] for n in names], axis=0)
    kept = np.sum([hist.kept[n] for n in names], axis=0)
    centers = (hist.edges[:-1] + hist.edges[1:]) / 2
    width = float(hist.edges[1] - hist.edges[0])
    fig = go.Figure()
    for name, counts, color in (("kept", kept, "#1f77b4"), (f"pruned at s = {hist.rate:.3f}", pruned, "#d62728")):
        fig.add_trace(
            go.Bar(
                x=centers.tolist(),
                y=counts.tolist(),
                width=width,
                name=name,
                marker=dict(color=color),
                customdata=(10**centers).tolist(),
                hovertemplate=f"score ~%{{customdata:.3g}}<br>{name}: %{{y}} weights<extra></extra>",
            )
        )
    threshold = pool_quantile(hist.edges, pruned + kept, hist.rate)
    fig.add_vline(
        x=threshold,
        line=dict(color="black", dash="dash"),
        annotation_text=f"{hist.rate:.0%} quantile: {10**threshold:.3g}",
        annotation_position="top",
    )
    what = linear if linear is not None else f"all {len(names)} linears"
    total = int(pruned.sum() + kept.sum())
    fig = _layout(fig, f"Block {hist.block}: {hist.score} scores of its {total:,} weights ({what})",
                  "score (log scale)", "weights")  # fmt: skip
    low, high = int(np.floor(hist.edges[0])), int(np.ceil(hist.edges[-1]))
    ticks = list(range(low, high + 1))
    fig.update_layout(barmode="stack", bargap=0)
    fig.update_xaxes(tickvals=ticks, ticktext=[f"1e{t}" for t in ticks])
    return fig


def band_figure(rows: Sequence[Mapping[str, Any]], split: str, title: str) -> go.Figure:
    """Chapter 7: one bar per schedule, its mean perplexity on ``split`` over calibration seeds with +- one standard
    deviation (``<split>_std``, absent for one seed), each seed's value as a dot where known
    (``<split>_per_seed``). Rows without a value on ``split`` are left out."""
    shown = [r for r in rows if r.get(split) is not None]
    fig = go.Figure(
        go.Bar(
            x=[r["label"] for r in shown],
            y=[float(r[split]) for r in shown],
            error_y=dict(type="data", array=[float(r.get(f"{split}_std") or 0.0) for r in shown], visible=True),
            customdata=[[r.get("seeds", 1), float(r.get(f"{split}_std") or 0.0)] for r in shown],
            name=f"mean over seeds ({split})",
            marker=dict(color=[color_for(str(r.get("method", "uniform"))) for r in shown]),
            hovertemplate="%{x}<br>perplexity %{y:.1f} +- %{customdata[1]:.1f}<br>%{customdata[0]} seed(s)"
            "<extra></extra>",
        )
    )
    seeds = [(r["label"], float(v)) for r in shown for v in r.get(f"{split}_per_seed") or []]
    if seeds:
        fig.add_trace(
            go.Scatter(
                x=[x for x, _ in seeds],
                y=[y for _, y in seeds],
                mode="markers",
                name="one calibration seed",
                marker=dict(color="black", size=7),
                hovertemplate="%{x}<br>one seed: %{y:.1f}<extra></extra>",
            )
        )
    return _layout(fig, title, "schedule", f"perplexity ({split})")
