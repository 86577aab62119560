"""Compare strategies: every registered method (ATP at its best beta) across target sparsities."""

import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.experiment.workbench import compare_cells, compare_rows, zeroshot_table
from atp_viz.measure.metrics import EVALUATION, VALIDATION
from atp_viz.schedules import methods, published
from atp_viz.speed import speedup
from atp_viz.tuning import findbest

st.set_page_config(page_title="Compare strategies - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Compare strategies")
st.markdown(
    "Perplexity of each layer-wise strategy at several target sparsities, same pruner and calibration. "
    "A method with a grid (ATP's beta) uses its best grid point at each sparsity, **chosen on the validation "
    "split and reported on the evaluation split**; the sweep runs where it is missing and is shared with the "
    "Beta tuning page."
)
setup, bench = ui.require(ctx)
L = bench.num_blocks

METHODS = methods.method_names(comparable=True)
PEERS = methods.method_names(comparable=True, peers=True)  # chosen by default; this project's profiles are opt-in
SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
c1, c2, c3, c4 = st.columns([3, 3, 1, 1])
chosen = c1.multiselect("Methods", METHODS, format_func=methods.label, **ui.state("cmp_methods", list(PEERS)))
sparsities = sorted(
    c2.multiselect(
        "Target sparsities",
        SPARSITIES,
        format_func=lambda s: f"{s:.0%}",
        **ui.state("cmp_sparsities", [0.5, 0.6, 0.7, 0.8]),
    )
)
step = c3.number_input(
    "Grid step",
    min_value=0.0,
    step=0.001,
    format="%.4f",
    help="ATP's beta grid; shared with the Beta tuning page.",
    **ui.state("tune_step", published.GRID_STEP),
)
log_y = c4.toggle("Log y axis", **ui.state("cmp_log", True))
fast = st.toggle(
    "Fast: find best beta, cached calibration", help=findbest.FAST_COMPARE_NOTE, **ui.state("cmp_fast", True)
)
with st.expander("Method parameters (default: each method's published setting)"):
    st.caption(
        "A method with a grid searches its beta at the values here (the power profile's beta grid at curvature p); "
        "the others run once with them."
    )
    given = ui.method_columns(chosen, L, sparsities[0] if sparsities else 0.5, "cmp", skip=(methods.GRID_PARAM,))
if step <= 0:
    st.error(f"Grid step must be > 0 (paper: {published.GRID_STEP}), got {step:g}.")
    st.stop()
try:
    cells = compare_cells(L, chosen, sparsities, step, given)
except ValueError as exc:
    st.error(str(exc))
    st.stop()

everything = list(dict.fromkeys(spec for cell in cells for spec in cell.specs))
if fast:  # the default: a grid is searched (atp_viz.tuning.findbest), statistics come from one dense pass
    st.caption(findbest.FAST_COMPARE_NOTE)
    work = bench.variant(findbest.fast_setup(setup))
    view = findbest.fast_compare(work, cells, ctx.seeds, compute=False)  # stored points only
    stored, pending = view.found, view.pending
    missing: list[tuple[int, methods.ScheduleSpec]] = []
else:
    stored, missing = ui.stored_groups(bench, everything, ctx.seeds)
    pending = []
runs = len(everything) * len(ctx.seeds)
todo = [(seed, spec) for seed in ctx.seeds for spec in everything]
job = fast_job = speed_job = None
dense = ui.dense_perplexity(bench)
follow_slot = st.container()  # progress and queue place of this page's job, filled at the end
ui.shipped_note(work if fast else bench, everything, ctx.seeds)
fast_key = ("fast comparison", bench.setup, tuple(everything), ctx.seeds)
if pending:
    st.info(f"{len(pending)} of {len(cells)} cells are not finished. Finished points are kept if you leave.")
    fast_job = ui.job_button(
        f"Run {len(pending)} cells",
        fast_key,
        lambda: ui.submit(
            work,
            fast_key,
            "strategy comparison (find best beta)",
            lambda job: findbest.fast_compare(work, cells, ctx.seeds, job.report, lambda *_: job.point_stored()),
        ),
        key="cmp_run",
        type="primary",
    )
if missing:
    st.info(
        f"{len(missing)} of {runs} runs are not stored yet (about 20 s each for smollm2-135m on 2 CPU "
        "cores). Each bar appears as soon as its runs are stored; finished runs are kept if you leave."
    )
    job = ui.points_button(  # the same comparison started by any session: followed
        f"Run {len(missing)} missing", bench, todo, "strategy comparison", key="cmp_run", type="primary"
    )
rows = methods.with_removed(compare_rows(cells, stored))
for row in rows:  # a chosen schedule that prunes a block whole says so (also a column of the CSV)
    if row["removed_blocks"]:
        st.warning(f"{row['label']} at S = {row['sparsity']:g} {methods.removed_note(row['rates'])}.")
if rows:
    ui.chart(
        figures.compare_figure(rows, dense, log_y),
        key=f"cmp_chart_{sum(len(points) for points in stored.values())}",
    )
else:
    st.info(
        "The bar chart (evaluation perplexity per method and sparsity, dense model as a line) appears here as "
        "soon as the first run is stored."
    )

table = pd.DataFrame(speedup.speed_columns(bench, rows))
if table.empty:
    with follow_slot:
        ui.follow(setup.model, job, fast_job)
    st.stop()
wide = table.pivot(index="label", columns="sparsity", values="perplexity").reindex(
    [methods.label(m) for m in chosen if methods.label(m) in set(table["label"])]
)
wide.columns = [f"S = {s:g}" for s in wide.columns]
if dense is not None:
    wide.loc["dense"] = dense
seeds = f", mean over calibration seeds {ctx.seeds[0]}..{ctx.seeds[-1]}" if len(ctx.seeds) > 1 else ""
st.caption(f"Perplexity on the {EVALUATION} split{seeds}; grid points chosen on the {VALIDATION} split.")
speed_column = f"measured speedup on this machine ({table['speed_device'].iloc[0]})"
for phase in ("prefill", "decode"):  # columns appear once something is measured (the button below)
    timed = table.pivot(index="label", columns="sparsity", values=f"{phase}_speedup")
    if timed.notna().any().any():
        wide = wide.join(timed.rename(columns=lambda s: f"S = {s:g} {phase} speedup"))
ui.perplexity_frame(wide, [c for c in wide.columns if not c.endswith("speedup")], key="cmp_table")
unmeasured = table[table["prefill_speedup"].isna()].to_dict("records")
shapes = speedup.DASHBOARD_SPEED
st.caption(
    f"{speed_column}: dense-kernel forward time / PyTorch CSR time of the same pruned model (the chosen schedule), "
    f"prefill {shapes.prefill_tokens} tokens and one decoded token after {shapes.decode_context}; > 1 is faster. "
    "`atp-viz speed` measures one model from the command line."
)
if unmeasured:
    speed_job = ui.job_button(
        f"Measure speedup on this machine ({len(unmeasured)} pruned model{'s' * (len(unmeasured) != 1)})",
        ui.speed_key(bench, unmeasured),
        lambda: ui.submit_speed(bench, unmeasured, "speedup on this machine"),
        key="cmp_speed",
    )
if "zeroshot" in setup.metrics:
    st.subheader("Zero-shot accuracy (the paper's Table 1)")
    dense_values = ui.dense_metrics(bench)
    rows = compare_rows(cells, stored, extra=("zeroshot",))
    if dense_values is None:
        st.info("The accuracy table appears here once the dense model is measured (in the background, once).")
    if dense_values is not None and rows:
        field = st.radio("Accuracy", ("acc", "acc_norm"), horizontal=True, **ui.state("cmp_zs_field", "acc"))
        accuracy = pd.DataFrame(zeroshot_table(rows, dense_values, setup.zeroshot.tasks, field))
        st.caption(
            f"{field} in % on {setup.zeroshot.items} seeded evaluation items per task (ARC and OpenBookQA: their "
            "validation splits); mean over the tasks with its standard error; chance is 25-50 % per task."
        )
        st.dataframe(accuracy, hide_index=True, key="cmp_zeroshot")
        st.download_button(
            "Download zero-shot CSV",
            accuracy.to_csv(index=False),
            file_name="zeroshot.csv",
            mime="text/csv",
            key="cmp_zs_csv",
        )
if len(ctx.seeds) > 1:
    spread = table.pivot(index="label", columns="sparsity", values="perplexity_std")
    spread.columns = [f"S = {s:g}" for s in spread.columns]
    st.caption("Standard deviation over the seeds (the bars' error bars):")
    ui.perplexity_frame(spread, key="cmp_spread")
csv = table.drop(columns=["rates"]).assign(params=table["params"].map(str), dense_perplexity=dense)
st.download_button("Download CSV", csv.to_csv(index=False), file_name="compare.csv", mime="text/csv", key="cmp_csv")
with follow_slot:
    ui.follow(setup.model, job, fast_job, speed_job)
