"""Error explosion: per-block reconstruction error of models pruned with different schedules."""

import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.experiment import lesson
from atp_viz.schedules import methods

st.set_page_config(page_title="Error explosion - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Error explosion")
st.markdown(
    """
Each pruned block makes an error, and every later block receives the *already-corrupted* output of
the blocks before it. The ATP paper's **Thm 3.2** bounds the reconstruction error of block i+1 from
below by a term that grows with the error of block i, so errors made early can travel to the end.
The **cumulative** error (dense vs pruned hidden state after block i) is what arrives at each depth;
the **local** error is what block i adds by itself. How the cumulative curve grows (smoothly, in
steps, or hardly) is a property of the model: the caption under the chart says what this one shows,
and the Lesson page's chapter 4 shows which blocks cause it. ATP spends less sparsity early.
"""
)
setup, bench = ui.require(ctx)
S, L = ctx.sparsity, bench.num_blocks

CHOICES = methods.method_names(comparable=True)
c1, c2, c3 = st.columns([4, 2, 2])
show = c1.multiselect("Schedules", CHOICES, format_func=methods.label, **ui.state("err_show", ["uniform", "atp"]))
kind = c2.radio("Error", ("cumulative", "local"), horizontal=True, **ui.state("err_kind", "cumulative"))
scale = c2.radio("Scale", ("relative", "absolute"), horizontal=True, **ui.state("err_scale", "relative"))
log_y = c3.toggle("Log y axis", **ui.state("err_log", True))
if not show:
    st.error(f"Choose at least one schedule (allowed: {', '.join(methods.label(n) for n in CHOICES)}).")
    st.stop()
specs = ui.method_specs(show, L, S, "err")
if not specs:
    st.stop()
show = list(specs)
chosen = [specs[name] for name in show]
points = dict(zip(show, ui.stored_points(bench, chosen)))
missing = [specs[name] for name, point in points.items() if point is None]
ui.shipped_note(bench, chosen)
todo = [(setup.calib.seed, spec) for spec in chosen]
if missing:
    names = ", ".join(methods.label(name) for name, point in points.items() if point is None)
    st.info(
        f"Not measured yet at S = {S:g}: {names}. Each takes one prune + evaluation pass (about 20 s for "
        "smollm2-135m on 2 CPU cores); its error curve appears here as soon as it is stored."
    )
    job = ui.points_button(
        f"Measure {len(missing)} schedule{'s' * (len(missing) != 1)}",
        bench,
        todo,
        f"error explosion at S = {S:g}",
        key="err_run",
        type="primary",
    )
    ui.follow(setup.model, job)

done = {name: p for name, p in points.items() if p is not None}
if done:
    field = f"{kind}_error" + ("_abs" if scale == "absolute" else "")
    y_title = (
        "relative error ||h - h_pruned||^2 / ||h||^2 (unitless)"
        if scale == "relative"
        else "squared error ||h - h_pruned||_F^2 (hidden-state units^2)"
    )
    labels = {name: ui.spec_label(specs[name]) for name in done}
    curves = {labels[name]: getattr(p, field) for name, p in done.items()}
    ui.chart(
        figures.error_figure(
            curves,
            log_y=log_y,
            title=f"{kind.capitalize()} reconstruction error per block, {setup.model}, S = {S:g}",
            y_title=y_title,
        )
    )
    if kind == "cumulative" and scale == "relative":
        said = [f"{name}: the relative cumulative error {lesson.curve_text(c)}." for name, c in curves.items()]
        ratios = {name: figures.last_first_ratio(c) for name, c in curves.items()}
        if "uniform" in done and any(r > ratios[labels["uniform"]] for r in ratios.values()):
            said.append(
                "A larger last/first ratio than uniform's does not mean more error: a schedule that prunes the "
                "first blocks less makes their error (the ratio's denominator) smaller."
            )
        st.caption(" ".join(said))
    ui.perplexity_frame(
        pd.DataFrame(
            {
                "schedule": list(curves),
                "perplexity": [p.perplexity for p in done.values()],
                "last/first block error": [figures.last_first_ratio(c) for c in curves.values()],
                "total error (sum over blocks)": [float(c.sum()) for c in curves.values()],
            }
        ),
        ["perplexity"],
        hide_index=True,
    )
