"""Home (first in app.py's page list): what the error explosion is, what ATP does, and the current
model's uniform vs ATP schedule."""

import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.dashboard.navigation import PAGES
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
small grid search (the beta/perplexity curve is U-shaped). OWL, AlphaPruning (with FARMS), DLP, LSA and
DSA's searched allocation functions are the alternatives compared here.
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
for page in PAGES:
    st.page_link(page.path, label=f"{page.title}: {page.blurb}")
