"""Beta tuning: the ATP grid search, drawn point by point on the U-curve."""

import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, ui
from atp_viz.display import metric_text
from atp_viz.experiment.workbench import summarize_sweep, sweep_specs
from atp_viz.measure.metrics import METRICS
from atp_viz.measure.points import seed_spread
from atp_viz.schedules import published
from atp_viz.tuning import findbest
from atp_viz.tuning.predict import predict_for, stored_prediction

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
bound = published.beta_max(L, S)

step = st.number_input(
    "Grid step (> 0)", min_value=0.0, step=0.001, format="%.4f", **ui.state("tune_step", published.GRID_STEP)
)
try:
    specs = sweep_specs(L, S, step)
except ValueError as exc:
    st.error(f"{exc} (allowed: 0 < step <= beta_max = {bound:.5g})")
    st.stop()
if len(specs) == 1:
    st.error(str(published.no_grid_point(L, S, step)))
    st.stop()

seeds = ctx.seeds
todo = [(seed, spec) for seed in seeds for spec in specs]
groups, missing = ui.stored_groups(bench, specs, seeds)
total = len(specs) * len(seeds)
st.caption(
    f"{L} blocks at S = {S:g}: beta_max = {bound:.5g}, {len(specs) - 1} grid betas + the uniform baseline"
    f"{f' under seeds {seeds[0]}..{seeds[-1]}' if len(seeds) > 1 else ''}; "
    f"{total - len(missing)} of {total} points stored."
)
ui.shipped_note(bench, specs, seeds)

measured = [name for name in setup.metrics if name in METRICS]
metric = measured[0]
if len(measured) > 1:
    metric = st.radio(
        "Curve and best beta by",
        measured,
        format_func=lambda name: METRICS[name].label,
        horizontal=True,
        **ui.state("tune_metric", measured[0]),
    )
c1, c3, c2 = st.columns([1, 1, 3])
job = ui.points_button(  # the same sweep started by any session: followed, not rerun
    f"Run sweep ({len(missing)} missing)" if missing else "Sweep complete",
    bench,
    todo,
    f"beta sweep at S = {S:g}",
    key="tune_run",
    type="primary",
    container=c1,
    disabled=not missing,
)

# -- find best beta: a Fibonacci (golden-section) search over the grid instead of all of it (atp_viz.tuning.findbest)
find_key = ("find best", bench.setup, tuple(specs[1:]), tuple(seeds), metric)
find_job = ui.job_button(
    "Find best beta",
    find_key,
    lambda: ui.submit(
        bench,
        find_key,
        f"find best beta at S = {S:g}",
        lambda job: findbest.find_best(
            bench, specs[1:], seeds, metric, job.report, on_point=lambda *_: job.point_stored()
        ),
    ),
    key="tune_find",
    container=c3,
    help=findbest.BUTTON_HELP,
)

# -- Predict beta without a sweep (atp_viz.tuning.predict: the error-propagation model of Thm 3.2) ----------
predict_key = ("predict beta", bench.setup, S, step)
predict_job = ui.job_button(
    "Predict beta",
    predict_key,
    lambda: ui.submit(
        bench,
        predict_key,
        f"beta prediction at S = {S:g}",
        lambda job: predict_for(bench, S, step, progress=job.report),
    ),
    key="tune_predict",
    container=c2,
    help="From the dense model alone (about one sweep point of work)",
)
ui.follow(setup.model, job, find_job, predict_job)

if (found := findbest.find_best(bench, specs[1:], seeds, metric, compute=False)) is not None:
    st.success(findbest.found_text(found))
    ui.perplexity_frame(pd.DataFrame(findbest.probe_table(found)), hide_index=True, key="tune_find_table")
prediction = stored_prediction(bench, S, step) if step > 0 else None
if prediction is not None:
    st.caption(
        f"Predicted beta = {prediction.beta:.4g} (grid point {prediction.index + 1} of {prediction.betas.size}; "
        f"{prediction.forwards} block forwards, {prediction.seconds:.1f} s): the grid point whose arithmetic "
        "progression minimises the predicted final-layer error (see docs/predict.md)."
    )
    with st.expander("Predicted error over the grid"):
        ui.chart(
            figures.predicted_error_figure(
                prediction.betas.tolist(), prediction.predicted_error.tolist(), prediction.beta
            )
        )


summary = summarize_sweep(specs, groups, metric=metric)
if summary.best is None:
    st.info(
        f"The U-curve (evaluation {metric} against beta, one marker per grid point) appears here as soon as the "
        "first ATP point is stored"
        + (
            ": the sweep is running, each point takes about 20 s on smollm2-135m."
            if not ui.idle(job)
            else ": press Run sweep (points are stored as they finish; other sessions see them too)."
        )
    )
    if prediction is not None:  # the predicted beta on the still empty grid: the one thing known so far
        predicted_only = figures.beta_curve_figure(
            [], [], sparsity=S, beta_max=bound, metric=metric, predicted=prediction.beta
        )
        ui.chart(predicted_only, key="tune_curve_predicted")
    st.stop()
betas, best_beta = summary.betas, summary.betas[summary.best]
if st.session_state.get("_tune_pick") not in betas:  # none yet, or a grid point of other settings
    ui.set_state("tune_pick", best_beta)
uniform_mean = seed_spread(summary.uniform, metric).mean if summary.uniform else None
fig = figures.beta_curve_figure(
    summary.betas,
    [v.mean for v in summary.evaluation],
    sparsity=S,
    uniform_ppl=uniform_mean,
    best_beta=best_beta,
    beta_max=bound,
    selected=st.session_state["_tune_pick"],
    validation=[v.mean for v in summary.validation],
    spread=[v.std for v in summary.evaluation],
    metric=metric,
    predicted=prediction.beta if prediction is not None else None,
)
ui.chart(fig, key=f"tune_curve_{sum(len(g) for g in groups.values())}")
best_eval, best_val = summary.evaluation[summary.best], summary.validation[summary.best]
noise = f" +- {best_eval.std:.3g} (std over {best_eval.n} seeds)" if best_eval.n > 1 else ""
if summary.uniform:
    uniform = seed_spread(summary.uniform, metric)
    st.success(
        f"Best beta = {best_beta:.4g} (chosen on validation {metric} {metric_text(metric, best_val.mean)}): "
        f"evaluation {metric} {metric_text(metric, best_eval.mean)}{noise} vs uniform "
        f"{metric_text(metric, uniform.mean)} ({(best_eval.mean / uniform.mean - 1) * 100:+.2f} %)."
    )
if summary.within_noise and summary.runner_up is not None:
    st.warning(
        f"The runner-up, beta = {summary.betas[summary.runner_up]:.4g}, is within the seed noise of the best "
        "(their mean +- std validation bands overlap): the grid does not separate them at these settings."
    )
elif summary.within_noise is None and len(seeds) == 1:
    st.caption(
        "One calibration seed: raise 'Seeds per point' in the sidebar to see whether the best beta is within noise."
    )

# the labels must not change while points arrive: the browser sends a label back, and one that no longer
# names an option comes back as that string, not a beta (a moving "(best)" mark did that to other viewers)
pick = st.selectbox("Show point", betas, format_func=lambda b: f"beta = {b:.4g}", **ui.state("tune_pick", best_beta))
chosen = summary.points[betas.index(pick)][0]  # the first seed's point
base = summary.uniform[0] if summary.uniform else None
left, right = st.columns(2)
with left:
    rates = {"ATP (beta = %.4g)" % chosen.beta: chosen.rates, **({"uniform": base.rates} if base else {})}
    ui.chart(figures.schedule_figure(rates, f"Schedule at beta = {chosen.beta:.4g}"))
with right:
    errors = {
        "ATP (beta = %.4g)" % chosen.beta: chosen.cumulative_error,
        **({"uniform": base.cumulative_error} if base else {}),
    }
    ui.chart(figures.error_figure(errors, log_y=True, title=f"Cumulative error at beta = {chosen.beta:.4g}"))
sweep_table = pd.DataFrame(summary.table())
ui.perplexity_frame(
    sweep_table, [c for c in sweep_table.columns if c.startswith(("perplexity", "std ("))], hide_index=True
)
st.download_button(
    "Download CSV", sweep_table.to_csv(index=False), file_name="sweep.csv", mime="text/csv", key="tune_csv"
)
