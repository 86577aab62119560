"""Schedules: per-block rates of uniform, ATP, OWL, AlphaPruning and a custom schedule, with exports."""

import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.schedules import methods, published
from atp_viz.speed.export import block_location, schedule_recipe

st.set_page_config(page_title="Schedules - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Schedules")
if ctx.setup is None or ctx.num_blocks is None or (ctx.workbench is None and not ctx.loading):
    st.stop()  # the sidebar (or the loading notice above) says why
setup, bench = ctx.setup, ctx.workbench  # bench: None while the model loads; uniform, ATP and custom need none
S, L = ctx.sparsity, ctx.num_blocks
bound = published.beta_max(L, S)
st.markdown(
    f"Per-block sparsity for **{setup.model}** ({L} blocks) at average sparsity **S = {S:g}**. ATP's slope is "
    f"bounded by **beta_max = {bound:.5g}** (first block at 0 or last at 1)."
)

SHOW = methods.method_names()  # every registered method
DEFAULT = [name for name in SHOW if methods.get_method(name).peer]  # this project's own profiles are opt-in
show = st.multiselect("Schedules to show", SHOW, format_func=methods.label, **ui.state("sched_show", DEFAULT))

custom = [name for name in show if not methods.get_method(name).takes_sparsity]
rates = None
if custom:
    with st.expander("Custom schedule (edit the rates; each in [0, 1])", expanded=False):
        start = pd.DataFrame({"block": range(L), "sparsity": published.uniform(L, S)})
        edited = st.data_editor(
            start, key=f"sched_custom_{L}_{S:g}", disabled=["block"], hide_index=True, height=min(35 * (L + 1) + 3, 400)
        )
        rates = [float(x) for x in edited["sparsity"].fillna(-1)]
specs = ui.method_specs(show, L, S, "sched", custom_rates=rates)
found = ui.schedules(bench, L, list(specs.values()))
for spec, problem in found.errors.items():
    st.error(f"{spec.entry.label}: {problem}")
for warning in found.warnings:
    st.warning(warning)
if found.pending:
    waiting = ", ".join(spec.entry.label for spec in found.pending)
    st.info(
        f"{waiting}: drawn here as soon as {'the model is loaded and ' if bench is None else ''}their layer "
        "statistics are computed (once per model setting, in the background); the other schedules need no model."
    )
    ui.follow(setup.model, found.job)
named = {ui.spec_label(spec): found.rates[spec] for spec in specs.values() if spec in found.rates}
if not named:
    if not found.pending:
        st.info("Choose at least one valid schedule.")
    st.stop()

ui.chart(figures.schedule_figure(named, f"Per-block sparsity, {setup.model}, S = {S:g}"), key="sched_figure")
weights = bench.param_counts if bench is not None else None  # equal-sized blocks until the model is loaded
means = pd.DataFrame(
    {
        "schedule": list(named),
        "parameter-weighted mean sparsity" if weights is not None else "mean sparsity": [
            published.weighted_mean(r, weights) for r in named.values()
        ],
        "min": [r.min() for r in named.values()],
        "max": [r.max() for r in named.values()],
        "blocks pruned whole (rate 1)": [", ".join(map(str, methods.removed_blocks(r))) or "-" for r in named.values()],
    }
)
st.dataframe(means, hide_index=True, key="sched_means")
table = pd.DataFrame({"block": range(L), **named})
st.dataframe(table, hide_index=True, key="sched_table")

meta = {"model": setup.model, "num_blocks": L, "sparsity": S}
if bench is not None:
    meta["param_counts"] = [int(c) for c in bench.param_counts]
d1, d2 = st.columns(2)
d1.download_button(
    "Download JSON",
    ui.schedule_json(named, meta),
    file_name="schedules.json",
    mime="application/json",
    key="sched_json",
)
d2.download_button(
    "Download CSV", table.to_csv(index=False), file_name="schedules.csv", mime="text/csv", key="sched_csv"
)
if bench is None:
    st.caption("The llm-compressor recipe (it names the model's block path) appears here when the model is loaded.")
    st.stop()
pick = st.selectbox("Recipe for", list(named), key="sched_recipe")
st.caption("llm-compressor oneshot recipe with one sparsity per decoder block (copy button at the top right):")
picked = next(spec for spec in specs.values() if ui.spec_label(spec) == pick)
per_type = bench.linear_rates(picked, named[pick])  # {} unless rates differ within a block (offset, LSA projections)
if per_type:
    ui.chart(figures.linear_rates_figure(per_type, f"{pick}: rates per block and linear"), key="sched_linear")
recipe = schedule_recipe(named[pick].tolist(), setup.prune.pruner, block_location(bench.loaded_model), setup.prune.nm,
                         per_type, bench.linear_names)  # fmt: skip
st.code(recipe, language="yaml")
