"""Home (first in app.py's page list): what the error explosion is, what ATP does, and the current
model's uniform vs ATP schedule."""

import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.schedules import published

st.set_page_config(page_title="atp-viz", layout="wide")
ctx = ui.sidebar()

st.title("atp-viz: layer-wise sparsity for LLM pruning")
st.markdown(
    """
Pruning every decoder block of an LLM to the same sparsity looks fair, but it is not: the error a
pruned block makes is fed into every block after it, so errors of **early** blocks propagate and
grow with depth (the *error explosion*; ATP paper, Thm 3.2). **ATP** (arXiv 2502.14770)
therefore prunes early blocks less and late blocks more:
`s_i = S - beta*(L-1)/2 + beta*i`, a straight line with mean `S` whose slope `beta` is found by a
small grid search (the beta/perplexity curve is U-shaped). OWL, AlphaPruning and DLP are the
statistics-driven alternatives compared here.
"""
)

if ctx.setup is not None and ctx.num_blocks is not None and (ctx.workbench is not None or ctx.loading):
    L = ctx.num_blocks  # from the model's config while it is still loading: the schedules are pure math
    bound = published.beta_max(L, ctx.sparsity)
    beta = bound / 2
    fig = figures.schedule_figure(
        {
            f"uniform (S = {ctx.sparsity:g})": published.uniform(L, ctx.sparsity),
            f"ATP (beta = {beta:.4g} = beta_max / 2)": published.atp(L, ctx.sparsity, beta),
        },
        title=f"Uniform vs ATP schedule for {ctx.setup.model} ({L} blocks)",
    )
    ui.chart(fig, key="home_schedule")
    st.caption(
        f"beta_max = {bound:.5g} for {L} blocks at S = {ctx.sparsity:g}; both schedules prune the "
        "same number of weights on average."
    )

st.subheader("Pages")
st.page_link("pages/0_Lesson.py", label="Lesson: a guided walk through the error explosion and ATP (start here)")
st.page_link("pages/1_Schedules.py", label="Schedules: uniform, ATP, OWL, AlphaPruning, DLP and your own, with exports")
st.page_link("pages/2_Error_explosion.py", label="Error explosion: per-block reconstruction error of pruned models")
st.page_link("pages/3_Beta_tuning.py", label="Beta tuning: the U-shaped beta sweep, point by point")
st.page_link("pages/4_Compare_strategies.py", label="Compare strategies: methods x sparsities")
st.page_link("pages/5_Theory_sandbox.py", label="Theory sandbox: a toy network showing Thm 3.2 and 3.5 instantly")
st.page_link("pages/6_ATP_vs_search.py", label="ATP vs search: the beta grid against Bayesian and evolutionary search")
st.page_link("pages/7_Profile_shapes.py", label="Profile shapes: attention vs MLP rates, curved profiles, 2-D sweeps")
