"""ATP vs search: ATP's one-slope grid against searches over every block's rate, at equal budgets."""

import dataclasses

import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, jobs, ui
from atp_viz.experiment import workbench
from atp_viz.schedules import published
from atp_viz.search import space, study

st.set_page_config(page_title="ATP vs search - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("ATP vs search")
st.markdown(
    "The ATP paper (Table 5) reports that a Bayesian search over all per-block rates ends within a "
    "hair of ATP's one-parameter line after hours instead of minutes. Here ATP's beta grid and "
    "searches over every block's rate (TPE, CMA-ES, an evolutionary level-switch search; each trial "
    "keeps the weighted mean sparsity S), or DSA's evolutionary search over allocation functions (each "
    "trial a DSA graph), get the **same number of pruned models**. Every method "
    "chooses its winner on **validation** perplexity; the table reports the winner's **evaluation** "
    "perplexity. Theorem 3.5 predicts increasing winners: Spearman near 1, few inversions. Every "
    "trial is stored as it finishes, so closing the tab loses nothing."
)
if ctx.setup is None:
    st.stop()
cached = st.toggle(
    "Cached calibration (statistics from one dense pass; much faster per trial)", **ui.state("search_cached", True)
)
setup = dataclasses.replace(ctx.setup, calibration="cached" if cached else "sequential")
# the same loaded model as every other page: the other calibration mode is a variant of it
setup, bench = ui.require(dataclasses.replace(ctx, setup=setup, workbench=ui.load_workbench(setup)))
S, L = ctx.sparsity, bench.num_blocks

left, middle, right = st.columns(3)
step = left.number_input(
    "ATP grid step (> 0)", min_value=0.0, step=0.001, format="%.4f", **ui.state("search_step", published.GRID_STEP)
)
try:
    budget = study.grid_budget(L, S, step)
except ValueError as exc:
    st.error(f"{exc} (allowed: 0 < step <= beta_max = {published.beta_max(L, S):.5g})")
    st.stop()
trials = middle.number_input(
    f"Points per method (ATP's sweep: {budget})", min_value=1, step=1, **ui.state("search_trials", budget)
)
seeds = right.multiselect(
    "Search seeds (spread over seeds when several)", list(range(10)), **ui.state("search_seeds", [0])
)
samplers = st.multiselect(
    "Searches",
    study.SEARCHES,
    format_func=study.labels().__getitem__,
    **ui.state("search_samplers", list(space.SAMPLERS)),  # DSA's graph search is opt-in
)
if not samplers or not seeds:
    st.info("Choose at least one search and one search seed.")
    st.stop()
seeds = sorted(int(s) for s in seeds)
st.caption(
    f"Calibration seed {setup.calib.seed} (the sidebar's); curves and winners below are search seed {seeds[0]}'s, "
    "the spread table covers every chosen search seed."
)
args = (bench, S, samplers, int(trials))


def stored(seed: int) -> study.Comparison:
    return study.stored_comparison(*args, seed=seed, step=step)


key = ("search", setup, S, tuple(samplers), int(trials), tuple(seeds), step)


def work(running: jobs.Job) -> None:
    for index, seed in enumerate(seeds):
        part = workbench.scaled(running.report, index / len(seeds), 1 / len(seeds))
        study.versus_atp(*args, seed=seed, step=step, progress=part, on_trial=lambda *_: running.point_stored())


size = (budget, int(trials), len(seeds))  # classroom mode bounds them (ui.check_search)
job = ui.job_button(  # the same comparison started by any session: followed, not rerun
    "Run",
    key,
    lambda: ui.submit(
        bench, key, f"ATP vs {', '.join(samplers)} at S = {S:g}", work, validate=lambda: ui.check_search(*size)
    ),
    key="search_run",
    type="primary",
)
ui.follow(setup.model, job)
slot = st.empty()
labels, colors = study.labels(), study.sampler_colors()
drawn = [0]


def draw() -> None:
    """Best-so-far curves (trials, seconds), the winners over ATP's line, and the tables."""
    drawn[0] += 1
    comparison = stored(seeds[0])
    atp = comparison.methods[study.ATP].winner()
    named = {labels[m]: c for m, c in colors.items()}
    if not any(c[0] for c in study.curves(comparison, "trial").values()):
        slot.info(
            "Best-so-far curves (validation perplexity against trials and seconds), the winners' schedules and "
            "the table appear here as trials are stored: press Run."
        )
        return
    with slot.container():
        chart_left, chart_right = st.columns(2)
        for column, x, title in (
            (chart_left, "trial", "trial (points evaluated)"),
            (chart_right, "seconds", "wall time (s)"),
        ):
            curves = {labels[m]: c for m, c in study.curves(comparison, x).items() if c[0]}
            with column:
                fig = figures.search_curve_figure(
                    curves, x_title=title, atp_best=atp.validation if atp else None, colors=named
                )
                ui.chart(fig, key=f"search_{x}_{drawn[0]}")
        found = study.winners(comparison)
        atp_rates = found.pop(study.ATP, None)
        overlay = figures.winners_figure({labels[m]: r for m, r in found.items()}, atp_rates, named)
        ui.chart(overlay, key=f"search_winners_{drawn[0]}")
        for note in study.winner_notes(comparison):
            st.caption(note)
        table = pd.DataFrame(comparison.rows()).drop(columns="method")
        st.dataframe(table, hide_index=True, key=f"search_table_{drawn[0]}")
        if len(seeds) > 1:
            st.markdown(f"**Winners over search seeds {', '.join(map(str, seeds))}** (mean and standard deviation)")
            spread = pd.DataFrame(study.seed_rows([stored(s) for s in seeds])).drop(columns="method")
            st.dataframe(spread, hide_index=True, key=f"search_spread_{drawn[0]}")


try:
    draw()
except ValueError as exc:
    st.error(str(exc))
    st.stop()
