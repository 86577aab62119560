"""Profile shapes: beyond ATP's one straight line (rates per linear type, curved increasing profiles)."""

import pandas as pd
import streamlit as st

from atp_viz import figures, profiles, schedules, sweep2d, ui
from atp_viz.results import PointResult

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
job_id = (setup, S, axis.name, grid.betas, grid.values, seeds)
st.caption(
    f"{len(grid.betas)} betas x {len(grid.values)} values: {len(grid.cells)} cells that can be built, "
    f"{len(specs)} distinct schedules; {len(specs) * len(seeds) - len(missing)} of {len(specs) * len(seeds)} "
    "points stored."
)
if st.button(f"Run grid ({len(missing)} missing)" if missing else "Grid complete", key="p2d_run", type="primary",
             disabled=not missing):  # fmt: skip
    st.session_state["p2d_job"] = job_id
if missing and st.session_state.get("p2d_job") == job_id:
    keys = {(seed, bench.reseeded(seed).point_key(spec)): spec for seed, spec in missing}

    def arrived(seed: int, point: PointResult) -> None:
        groups[keys[(seed, point.key)]].append(point)

    if ui.run_jobs(bench, missing, f"beta x {axis.label} at S = {S:g}", on_point=arrived) is not None:
        st.session_state["p2d_job"] = None
        st.rerun()

summary = sweep2d.summarize(grid, groups)
left, right = st.columns(2)
for column, split in ((left, "validation"), (right, "evaluation")):
    with column:
        fig = figures.sweep2d_figure(grid.betas, grid.values, summary.mean[split], axis.label, axis.neutral,
                                     summary.best, summary.line_best, title=f"{split} perplexity")  # fmt: skip
        ui.chart(fig)
if summary.best is None:
    st.info("No point of this grid is stored yet: press Run grid.")
    st.stop()
off, line = summary.cell(summary.off_best), summary.cell(summary.line_best)
if off and line:
    noise = {True: " (within the seed noise)", False: " (outside the seed noise)", None: ""}[summary.within_noise]
    winner = "off" if summary.best == summary.off_best else "on"
    st.success(
        f"Best cell {winner} the paper's line (chosen on validation). Off the line: {off['schedule']}, evaluation "
        f"perplexity {off['perplexity (evaluation)']:.4g}; on the line: {line['schedule']}, "
        f"{line['perplexity (evaluation)']:.4g}{noise}."
    )
st.dataframe(pd.DataFrame(summary.table()), hide_index=True)

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
    ui.chart(figures.profiles_figure(curved, schedules.atp(L, S, beta), f"ATP (beta = {beta:g})",
                                     f"Curved profiles with the same mean S = {S:g}"))  # fmt: skip
