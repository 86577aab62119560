"""Beta tuning: the ATP grid search, drawn point by point on the U-curve."""

import pandas as pd
import streamlit as st

from atp_viz import figures, schedules, ui
from atp_viz.experiment import sweep_specs
from atp_viz.metrics import EVALUATION, VALIDATION
from atp_viz.results import PointResult, best_point

st.set_page_config(page_title="Beta tuning - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Beta tuning")
st.markdown(
    "ATP tries beta = step, 2*step, ... up to beta_max and keeps the beta with the lowest perplexity "
    "(paper: step 0.002). The best beta is chosen on the **validation** split and reported on the "
    "**evaluation** split, so the reported number was not used to choose it. The curve is typically "
    "U-shaped: a little slope helps, too much starves the late blocks. Every point is stored as soon "
    "as it finishes, so you can leave this page and come back; finished points appear at once."
)
setup, bench = ui.require(ctx)
S, L = ctx.sparsity, bench.num_blocks
bound = schedules.beta_max(L, S)

step = st.number_input(
    "Grid step (> 0)", min_value=0.0, step=0.001, format="%.4f", **ui.state("tune_step", schedules.GRID_STEP)
)
try:
    specs = sweep_specs(L, S, step)
except ValueError as exc:
    st.error(f"{exc} (allowed: 0 < step <= beta_max = {bound:.5g})")
    st.stop()
if len(specs) == 1:
    st.error(
        f"No beta fits: step {step:g} > beta_max = {bound:.5g} for {L} blocks at S = {S:g}. Allowed: 0 < step <= "
        f"{bound:.5g}."
    )
    st.stop()

job_id = (setup, S, step)
found = dict(zip(specs, ui.stored_points(bench, specs)))
missing = [spec for spec, point in found.items() if point is None]
st.caption(
    f"{L} blocks at S = {S:g}: beta_max = {bound:.5g}, {len(specs) - 1} grid betas + the uniform baseline; "
    f"{len(specs) - len(missing)} of {len(specs)} points stored."
)

c1, c2 = st.columns([1, 4])
if c1.button(
    f"Run sweep ({len(missing)} missing)" if missing else "Sweep complete",
    key="tune_run",
    type="primary",
    disabled=not missing,
):
    st.session_state["tune_job"] = job_id
if st.session_state.get("tune_job") is not None and c2.button("Stop (finished points are kept)", key="tune_stop"):
    st.session_state["tune_job"] = None
chart_slot = st.empty()


def split_points(points: list[PointResult]) -> tuple[list[PointResult], PointResult | None]:
    """The grid points (sorted by beta) and the uniform baseline (the sweep's first spec)."""
    keys = {bench.point_key(spec): spec for spec in specs}
    uniform = next((p for p in points if keys.get(p.key) == specs[0]), None)
    return sorted((p for p in points if keys.get(p.key) != specs[0]), key=lambda p: p.beta), uniform


def draw(points: list[PointResult]) -> None:
    atp_points, uniform = split_points(points)
    best = best_point(atp_points) if atp_points else None
    fig = figures.beta_curve_figure(
        [p.beta for p in atp_points],
        [p.perplexity for p in atp_points],
        sparsity=S,
        uniform_ppl=uniform.perplexity if uniform else None,
        best_beta=best.beta if best else None,
        beta_max=bound,
        selected=st.session_state.get("_tune_pick"),
        validation=[p.value("perplexity", VALIDATION) for p in atp_points],
    )
    with chart_slot.container():
        ui.chart(fig, key=f"tune_curve_{len(points)}")


points = [p for p in found.values() if p is not None]
draw(points)
if missing and st.session_state.get("tune_job") == job_id:
    st.caption("Changing a widget while the sweep runs restarts the point in progress (finished points are kept).")

    def arrived(point: PointResult) -> None:
        points.append(point)
        draw(points)

    done = ui.run_points(bench, missing, f"beta sweep at S = {S:g}", on_point=arrived)
    if done is not None:
        st.session_state["tune_job"] = None
        st.rerun()

atp_points, uniform = split_points(points)
if not atp_points:
    st.info("No ATP point stored yet for these settings: press Run sweep.")
    st.stop()
best = best_point(atp_points)
if uniform:
    st.success(
        f"Best beta = {best.beta:.4g} (chosen on validation perplexity {best.value('perplexity', VALIDATION):.4g}): "
        f"evaluation perplexity {best.perplexity:.4f} vs uniform {uniform.perplexity:.4f} "
        f"({(best.perplexity / uniform.perplexity - 1) * 100:+.2f} %)."
    )

betas = [p.beta for p in atp_points]
if st.session_state.get("_tune_pick") not in betas:
    ui.set_state("tune_pick", best.beta)
pick = st.selectbox(
    "Show point",
    betas,
    format_func=lambda b: f"beta = {b:.4g}" + (" (best)" if b == best.beta else ""),
    **ui.state("tune_pick", best.beta),
)
chosen = next(p for p in atp_points if p.beta == pick)
left, right = st.columns(2)
with left:
    rates = {"ATP (beta = %.4g)" % chosen.beta: chosen.rates, **({"uniform": uniform.rates} if uniform else {})}
    ui.chart(figures.schedule_figure(rates, f"Schedule at beta = {chosen.beta:.4g}"))
with right:
    errors = {
        "ATP (beta = %.4g)" % chosen.beta: chosen.cumulative_error,
        **({"uniform": uniform.cumulative_error} if uniform else {}),
    }
    ui.chart(figures.error_figure(errors, log_y=True, title=f"Cumulative error at beta = {chosen.beta:.4g}"))
st.dataframe(
    pd.DataFrame(
        {
            "beta": [p.beta for p in points],
            "method": [p.method for p in points],
            f"perplexity ({EVALUATION})": [p.perplexity for p in points],
            f"perplexity ({VALIDATION})": [p.value("perplexity", VALIDATION) for p in points],
            "seconds": [p.wall_time for p in points],
        }
    ),
    hide_index=True,
)
