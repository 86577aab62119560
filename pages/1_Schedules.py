"""Schedules: per-block rates of uniform, ATP, OWL, AlphaPruning and a custom schedule, with exports."""

import pandas as pd
import streamlit as st

from atp_viz import figures, schedules, ui
from atp_viz.config import ScheduleSpec
from atp_viz.export import recipe_snippet
from atp_viz.models import blocks_path

st.set_page_config(page_title="Schedules - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Schedules")
if not ctx.ready:
    st.stop()
bench, S, L = ctx.workbench, ctx.sparsity, ctx.workbench.num_blocks
bound = schedules.beta_max(L, S)
st.markdown(f"Per-block sparsity for **{ctx.setup.model}** ({L} blocks) at average sparsity **S = {S:g}**. ATP's slope is bounded by **beta_max = {bound:.5g}** (first block at 0 or last at 1).")

SHOW = ("uniform", "ATP", "OWL", "AlphaPruning", "custom")
ui.set_state("sched_beta", min(float(st.session_state.get("_sched_beta", bound / 2)), bound))
show = st.multiselect("Schedules to show", SHOW, **ui.state("sched_show", list(SHOW)))
c1, c2, c3, c4 = st.columns(4)
beta = c1.slider(f"ATP beta (0 .. {bound:.5g})", 0.0, max(bound, 1e-9), step=schedules.GRID_STEP / 4, format="%.4f", **ui.state("sched_beta", bound / 2))
lam = c2.number_input("OWL lambda (0 .. 1)", step=0.01, format="%.3f", **ui.state("sched_lam", 0.08))
m = c3.number_input("OWL M (outlier threshold, x mean score)", step=0.5, **ui.state("sched_m", 5.0))
eps = c4.number_input("AlphaPruning eps (0 .. 1)", step=0.05, format="%.3f", **ui.state("sched_eps", 0.3))

with st.expander("Custom schedule (edit the rates; each in [0, 1])", expanded=False):
    start = pd.DataFrame({"block": range(L), "sparsity": schedules.uniform(L, S)})
    edited = st.data_editor(start, key=f"sched_custom_{L}_{S:g}", disabled=["block"], hide_index=True, height=min(35 * (L + 1) + 3, 400))

specs = {  # built one at a time below, so a bad value shows an error instead of stopping the page
    "uniform": lambda: ScheduleSpec("uniform", S),
    "ATP": lambda: ScheduleSpec("atp", S, beta=min(beta, bound)),
    "OWL": lambda: ScheduleSpec("owl", S, lam=lam, m=m),
    "AlphaPruning": lambda: ScheduleSpec("alphapruning", S, eps=eps),
    "custom": lambda: ScheduleSpec("custom", rates=tuple(float(x) for x in edited["sparsity"].fillna(-1))),
}
named = {}
for name in show:
    try:
        spec = specs[name]()
    except ValueError as exc:
        st.error(f"{name}: {exc}")
        continue
    rates = ui.schedule_or_error(bench, spec)
    if rates is not None:
        named[f"{name}" if name != "ATP" else f"ATP (beta = {spec.beta:.4g})"] = rates
if not named:
    st.info("Choose at least one valid schedule.")
    st.stop()

ui.chart(figures.schedule_figure(named, f"Per-block sparsity, {ctx.setup.model}, S = {S:g}"), key="sched_figure")
means = pd.DataFrame({"schedule": list(named), "parameter-weighted mean sparsity": [schedules.weighted_mean(r, bench.param_counts) for r in named.values()], "min": [r.min() for r in named.values()], "max": [r.max() for r in named.values()]})
st.dataframe(means, hide_index=True, key="sched_means")
table = pd.DataFrame({"block": range(L), **named})
st.dataframe(table, hide_index=True, key="sched_table")

meta = {"model": ctx.setup.model, "num_blocks": L, "sparsity": S, "param_counts": [int(c) for c in bench.param_counts]}
d1, d2 = st.columns(2)
d1.download_button("Download JSON", ui.schedule_json(named, meta), file_name="schedules.json", mime="application/json", key="sched_json")
d2.download_button("Download CSV", table.to_csv(index=False), file_name="schedules.csv", mime="text/csv", key="sched_csv")
pick = st.selectbox("Recipe for", list(named), key="sched_recipe")
st.caption("llm-compressor oneshot recipe with one sparsity per decoder block (copy button at the top right):")
st.code(recipe_snippet(named[pick], ctx.setup.prune.pruner, blocks_path(bench.loaded), type(bench.loaded.blocks[0]).__name__), language="yaml")
