"""Profile shapes: beyond ATP's one straight line (rates per linear type, curved increasing profiles)."""

import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.display import perplexity_text
from atp_viz.schedules import profiles, published
from atp_viz.tuning import sweep2d

st.set_page_config(page_title="Profile shapes - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Profile shapes")
st.markdown(
    "ATP gives every linear of a block the same rate and lets the rate grow in a **straight line**. Two "
    "questions the paper leaves open: should **attention and MLP** get different rates (the offset d = "
    "s_MLP - s_attention, each block's parameter-weighted mean unchanged), and is the straight line the best "
    "**increasing** profile (curvature p: s_i = S + beta (L-1) (x_i^p - mean x^p), p = 1 is ATP)? Each cell of "
    "the grid is a stored point, chosen on **validation**, reported on **evaluation**; the red outline is the "
    "paper's 1-D line."
)
setup, bench = ui.require(ctx)
S, L = ctx.sparsity, bench.num_blocks

c1, c2, c3 = st.columns([2, 1, 3])
axis = sweep2d.AXES[
    c1.radio(
        "Second axis",
        tuple(sweep2d.AXES),
        format_func=lambda name: f"beta x {sweep2d.AXES[name].label}",
        horizontal=True,
        **ui.state("p2d_axis", "offset"),
    )
]
step = c2.number_input("Beta step (> 0)", min_value=0.0, step=0.001, format="%.4f", **ui.state("p2d_step", 0.004))
text = c3.text_input(
    f"{axis.label} values (comma-separated; {axis.entry.allowed()})",
    **ui.state(f"p2d_values_{axis.name}", ",".join(f"{v:g}" for v in axis.values)),
)
try:
    values = [float(v) for v in text.split(",") if v.strip()]
    grid = sweep2d.build_grid(axis, L, S, None, values, step)
except ValueError as exc:
    st.error(f"{exc}".replace("could not convert string to float", "not a number"))
    st.stop()

seeds = ctx.seeds
specs = grid.specs()
groups, missing = ui.stored_groups(bench, specs, seeds)
todo = [(seed, spec) for seed in seeds for spec in specs]
st.caption(
    f"{len(grid.betas)} betas x {len(grid.values)} values: {len(grid.cells)} cells that can be built, "
    f"{len(specs)} distinct schedules; {len(specs) * len(seeds) - len(missing)} of {len(specs) * len(seeds)} "
    "points stored."
)
job = ui.points_button(  # the same grid started by any session: followed, not rerun
    f"Run grid ({len(missing)} missing)" if missing else "Grid complete",
    bench,
    todo,
    f"beta x {axis.label} at S = {S:g}",
    key="p2d_run",
    type="primary",
    disabled=not missing,
)
ui.follow(setup.model, job)

summary = sweep2d.summarize(grid, groups)
if summary.best is None:
    st.info(
        "Two heatmaps (validation and evaluation perplexity over beta x "
        f"{axis.label}, the paper's line outlined) appear here as soon as the first point is stored"
        + (": the grid is running." if not ui.idle(job) else ": press Run grid.")
    )
    st.stop()
left, right = st.columns(2)
for column, split in ((left, "validation"), (right, "evaluation")):
    with column:
        fig = figures.sweep2d_figure(grid.betas, grid.values, summary.mean[split], axis.label, axis.neutral,
                                     summary.best, summary.line_best, title=f"{split} perplexity")  # fmt: skip
        ui.chart(fig)
off, line = summary.cell(summary.off_best), summary.cell(summary.line_best)
if off and line:
    noise = {True: " (within the seed noise)", False: " (outside the seed noise)", None: ""}[summary.within_noise]
    winner = "off" if summary.best == summary.off_best else "on"
    st.success(
        f"Best cell {winner} the paper's line (chosen on validation). Off the line: {off['schedule']}, evaluation "
        f"perplexity {perplexity_text(off['perplexity (evaluation)'])}; on the line: {line['schedule']}, "
        f"{perplexity_text(line['perplexity (evaluation)'])}{noise}."
    )
ui.perplexity_frame(pd.DataFrame(summary.table()), hide_index=True)

cells = sorted(summary.points)
pick = st.selectbox("Schedule", cells, format_func=lambda c: grid.cells[c].describe(), index=cells.index(summary.best),
                    key="p2d_pick")  # fmt: skip
spec = grid.cells[pick]
rates = bench.schedule(spec)
per_type = bench.linear_rates(spec, rates) or {group: rates.tolist() for group in profiles.LINEAR_GROUPS}
left, right = st.columns(2)
with left:
    ui.chart(figures.linear_rates_figure(per_type, f"{spec.describe()}: rates per block and linear type"))
with right:
    beta = grid.betas[pick[0]]
    curved = profiles.curved_family(L, S, beta)
    ui.chart(figures.profiles_figure(curved, published.atp(L, S, beta), f"ATP (beta = {beta:g})",
                                     f"Curved profiles with the same mean S = {S:g}"))  # fmt: skip
