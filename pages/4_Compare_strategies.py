"""Compare strategies: uniform, OWL, AlphaPruning and ATP (at its best beta) across target sparsities."""

import pandas as pd
import streamlit as st

from atp_viz import figures, schedules, ui
from atp_viz.config import ScheduleSpec
from atp_viz.experiment import best_point, sweep_specs

st.set_page_config(page_title="Compare strategies - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Compare strategies")
st.markdown("Perplexity of each layer-wise strategy at several target sparsities, same pruner and calibration. ATP uses the best beta of its grid sweep at each sparsity (the sweep runs where it is missing, and is shared with the Beta tuning page).")
if not ctx.ready:
    st.stop()
bench, L = ctx.workbench, ctx.workbench.num_blocks

METHODS = ("uniform", "OWL", "AlphaPruning", "ATP (best beta)")
SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
c1, c2, c3, c4 = st.columns([3, 3, 1, 1])
methods = c1.multiselect("Methods", METHODS, **ui.state("cmp_methods", list(METHODS)))
sparsities = sorted(c2.multiselect("Target sparsities", SPARSITIES, format_func=lambda s: f"{s:.0%}", **ui.state("cmp_sparsities", [0.5, 0.6, 0.7, 0.8])))
step = c3.number_input("ATP grid step", min_value=0.0, step=0.001, format="%.4f", help="Shared with the Beta tuning page.", **ui.state("tune_step", schedules.GRID_STEP))
log_y = c4.toggle("Log y axis", **ui.state("cmp_log", True))
if not methods or not sparsities:
    st.error(f"Choose at least one method and one sparsity (allowed sparsities: {', '.join(f'{s:g}' for s in SPARSITIES)}).")
    st.stop()
if step <= 0:
    st.error(f"ATP grid step must be > 0 (paper: {schedules.GRID_STEP}), got {step:g}.")
    st.stop()
if "ATP (best beta)" in methods and not all(len(schedules.beta_grid(L, s, step)) for s in sparsities):
    tight = min(schedules.beta_max(L, s) for s in sparsities)
    st.error(f"No ATP beta fits: step {step:g} > beta_max for {L} blocks at some chosen sparsity. Allowed: 0 < step <= {tight:.5g}.")
    st.stop()


def specs_for(method: str, s: float) -> list[ScheduleSpec]:
    if method == "ATP (best beta)":
        return sweep_specs(L, s, step)
    return [ScheduleSpec({"uniform": "uniform", "OWL": "owl", "AlphaPruning": "alphapruning"}[method], s)]


cells = {(m, s): specs_for(m, s) for m in methods for s in sparsities}
everything = list(dict.fromkeys(spec for specs in cells.values() for spec in specs))  # ATP sweeps share uniform points
stored = dict(zip(everything, ui.stored_points(bench, everything)))
missing = [spec for spec in everything if stored[spec] is None]


def rows() -> list[dict]:
    out = []
    for (method, s), specs in cells.items():
        found = [stored[spec] for spec in specs if stored[spec] is not None]
        if method == "ATP (best beta)":
            found = [p for p in found if p.method == "atp"]
            if not found:
                continue
            best = best_point(found)
            out.append({"method": method, "sparsity": s, "perplexity": best.perplexity, "beta": best.beta, "note": f"{len(found)}/{len(specs) - 1} betas"})
        elif found:
            out.append({"method": method, "sparsity": s, "perplexity": found[0].perplexity, "beta": None, "note": ""})
    return out


dense = ui.dense_perplexity(bench)
slot = st.empty()


def draw() -> None:
    with slot.container():
        ui.chart(figures.compare_figure(rows(), dense, log_y), key=f"cmp_chart_{sum(p is not None for p in stored.values())}")


draw()
if missing:
    st.info(f"{len(missing)} of {len(everything)} runs are not stored yet (about 20 s each for smollm2-135m on 2 CPU cores). Finished runs are kept if you leave.")
    if st.button(f"Run {len(missing)} missing", key="cmp_run", type="primary"):
        def arrived(point):
            stored[next(spec for spec in missing if bench.point_key(spec) == point.key)] = point
            draw()

        if ui.run_points(bench, missing, "strategy comparison", on_point=arrived) is not None:
            st.rerun()

table = pd.DataFrame(rows())
if table.empty:
    st.stop()
wide = table.pivot(index="method", columns="sparsity", values="perplexity").reindex([m for m in methods if m in set(table["method"])])
wide.columns = [f"S = {s:g}" for s in wide.columns]
if dense is not None:
    wide.loc["dense"] = dense
st.dataframe(wide, key="cmp_table")
st.download_button("Download CSV", table.assign(dense_perplexity=dense).to_csv(index=False), file_name="compare.csv", mime="text/csv", key="cmp_csv")
