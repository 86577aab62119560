"""Theory sandbox: a toy deep network showing error propagation (Thm 3.2) and the increasing-order optimum (Thm 3.5)."""

import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.schedules import published, toy

st.set_page_config(page_title="Theory sandbox - atp-viz", layout="wide")
ui.sidebar(load_model=False)

st.title("Theory sandbox")
st.markdown(
    f"""
A random {toy.WIDTH}-wide tanh network stands in for the LLM (no model needed, answers at once).
Each layer is magnitude-pruned at its rate; the dense and the pruned network see the same
{toy.SAMPLES} inputs. **Thm 3.2:** the error at layer i+1 grows with the error arriving from layer i,
so the relative error rises with depth. **Thm 3.5:** for the *same* rates, putting them in increasing order
gives the lowest total error; decreasing order gives the highest.
"""
)

left, right = st.columns(2)
depth = left.slider("Depth (layers)", 2, toy.MAX_DEPTH, **ui.state("toy_depth", 16))
sparsity = left.slider("Average sparsity S", 0.05, 0.95, step=0.01, **ui.state("toy_sparsity", 0.7))
bound = published.beta_max(depth, sparsity)
ui.set_state("toy_beta", min(float(st.session_state.get("_toy_beta", 0.02)), bound))
beta = right.slider(
    f"beta (0 .. beta_max = {bound:.4g})",
    0.0,
    max(bound, 1e-6),
    step=max(bound / 200, 1e-6),
    format="%.5f",
    **ui.state("toy_beta", 0.02),
)
seed = right.number_input("Network seed", min_value=0, step=1, **ui.state("toy_seed", 0))
scale = right.radio("Error", ("relative", "absolute"), horizontal=True, **ui.state("toy_scale", "relative"))
log_y = right.toggle("Log y axis", **ui.state("toy_log", True))

try:
    results = toy.sandbox(depth, sparsity, min(beta, bound), int(seed))
except ValueError as exc:
    st.error(str(exc))
    st.stop()

relative = scale == "relative"
errors = figures.error_figure(
    {name: (r.relative if relative else r.cumulative) for name, r in results.items()},
    log_y=log_y,
    title=f"Error per layer of a {depth}-layer toy network at S = {sparsity:g}, beta = {beta:.4g}",
    y_title="relative error ||y_i - y_pruned,i||^2 / ||y_i||^2 (unitless)"
    if relative
    else "squared error ||y_i - y_pruned,i||_F^2 (activation units^2)",
    x_title="layer i (0 = first)",
)
ui.chart(errors, key="toy_errors")
totals = {name: (r.total_relative if relative else r.total) for name, r in results.items()}
ui.chart(
    figures.totals_figure(
        totals,
        f"Total {scale} error: same rates, different order (Thm 3.5)",
        f"sum over layers of the {scale} error" + (" (unitless)" if relative else " (activation units^2)"),
    ),
    key="toy_totals",
)
best = min(totals, key=lambda name: totals[name])
st.caption(
    f"Lowest total error: {best}. Uniform {totals['uniform']:.4g}; increasing (ATP) "
    f"{totals['increasing (ATP)']:.4g}; random order {totals['random order']:.4g}; decreasing "
    f"{totals['decreasing']:.4g}."
)
