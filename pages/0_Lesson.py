"""Lesson: a guided walk through the error explosion and ATP, in seven chapters, from stored (at the
defaults: shipped) results. The computations live in atp_viz/experiment/lesson.py, the figures in
atp_viz/dashboard/lesson_figures.py."""

import math

import numpy as np
import pandas as pd
import streamlit as st

from atp_viz.dashboard import figures, jobs, ui
from atp_viz.dashboard import lesson_figures as lf
from atp_viz.display import perplexity_text
from atp_viz.experiment import lesson
from atp_viz.experiment.workbench import Workbench, compare_cells, compare_rows, scaled, summarize_sweep, sweep_specs
from atp_viz.schedules import methods, published

st.set_page_config(page_title="Lesson - atp-viz", layout="wide")
ctx = ui.sidebar()
st.title("Lesson: why pruning errors grow with depth, and what ATP does about it")
setup, bench = ui.require(ctx)
S, L = ctx.sparsity, bench.num_blocks
seed = setup.calib.seed
specs = sweep_specs(L, S)  # uniform, then ATP's grid
uniform = specs[0]
grid = [0.0, *(float(s.get("beta")) for s in specs[1:])]

# -- teacher: a link's query parameters set the widgets once per session (each bad one refused with one line)
PARAMS = {
    "chapter": "lesson_chapter",
    "beta": "beta",
    "block": "lesson_block",
    "inputs": "lesson_inputs",
    "presenter": "lesson_presenter",
    "quiz": "lesson_quiz",
}
if not st.session_state.get("_lesson_link_read"):
    st.session_state["_lesson_link_read"] = True
    parse = {
        "chapter": lesson.parse_chapter,
        "beta": lambda v: lesson.parse_beta(v, grid),
        "block": lambda v: lesson.parse_block(v, L),
        "inputs": lambda v: lesson.parse_choice("inputs", v, tuple(lesson.INPUTS)),
        "presenter": lambda v: lesson.parse_flag("presenter", v),
        "quiz": lambda v: lesson.parse_flag("quiz", v),
    }
    for name, value in st.query_params.items():
        try:
            if name not in parse:
                raise ValueError(f"unknown link parameter {name!r}; allowed: {', '.join(parse)}")
            ui.set_state(PARAMS[name], parse[name](value))
        except ValueError as exc:
            st.session_state.setdefault("_lesson_link_errors", []).append(f"Link refused: {exc}")
for message in st.session_state.get("_lesson_link_errors", []):
    st.error(message)

# -- stored results (shipped at the defaults): nothing below computes unless a button asks
points = dict(zip(grid, ui.stored_points(bench, specs)))
base = points[0.0]
base_errors = lesson.errors_of(base)
budget = lesson.stored_budget(bench, uniform)
dense_in = lesson.stored_dense_input(bench, uniform)
ui.shipped_note(bench, specs)
lesson_job = None
if base_errors is None or budget is None or dense_in is None:
    st.info(
        f"The lesson's data at these settings ({setup.model}, S = {S:g}) is not computed yet: the uniform point, "
        "its error budget (each block pruned alone) and its errors when blocks are calibrated on dense inputs. "
        "Shipped results cover the default settings only."
    )

    def compute_lesson(job: jobs.Job) -> None:
        bench.run(uniform, scaled(job.report, 0.0, 0.4))
        job.point_stored()
        lesson.budget(bench, uniform, scaled(job.report, 0.4, 0.45))
        job.point_stored()
        lesson.dense_input_errors(bench, uniform, scaled(job.report, 0.85, 0.15))
        job.point_stored()

    lesson_key = ("lesson", bench.setup, S)
    lesson_job = ui.job_button(
        "Compute the lesson's data",
        lesson_key,
        lambda: ui.submit(bench, lesson_key, f"lesson data at S = {S:g}", compute_lesson, 3),
        key="lesson_run",
        type="primary",
    )


# ------------------------------------------------------------------ 3. step through
@st.fragment
def stepper(reference: np.ndarray | None) -> None:
    """The 'prune next block' stepper (a fragment: a press redraws only this chapter): stored blocks are read
    back; after the first press the next block is computed and stored in the background while the student reads
    (``lesson.step_target``: three block forwards, the inputs of the next block kept in memory), so a press
    only redraws; a press faster than that waits for the job, and the whole page follows it."""
    st.markdown(
        "Each press prunes the next block, calibrated on the **pruned** model's outputs of the blocks before it "
        "(the paper's sequential loop), and adds its point to the curve."
    )
    steps = lesson.known_steps(bench, uniform)
    shown = min(int(st.session_state.get("_lesson_steps", 0)), L)
    c1, c2, c3 = st.columns([1, 1, 4])
    if c1.button("Prune next block", key="lesson_step", type="primary", disabled=shown >= L):
        shown += 1
    if c2.button("Reset", key="lesson_reset"):
        shown = 0
    st.session_state["_lesson_steps"] = shown
    step_job = ui.last_job(("lesson step", bench.setup, uniform))
    if step_job is not None and step_job.state == jobs.FAILED:
        st.error(f"{step_job.label} stopped: {step_job.error}")
    elif len(steps) < (target := lesson.step_target(shown, L)) and ui.idle(step_job):

        def step_work(job: jobs.Job) -> None:  # each block stored: the page redraws while the next one computes
            ui.lesson_steppers().get(bench, uniform).advance(target, job.report, job.point_stored)

        waits = shown > len(steps)
        label = f"pruning block {shown - 1}" if waits else f"pruning block {target - 1} ahead"
        if ui.submit(bench, ("lesson step", bench.setup, uniform), label, step_work) and waits:
            st.rerun(scope="app")  # the page's follow() shows the progress and redraws when the block is stored
    visible = steps[: min(shown, len(steps))]
    ui.chart(
        lf.stepper_figure(visible, L, reference=reference if shown >= L else None, label="uniform"),
        key="lesson_stepper",
    )
    if visible:
        last = visible[-1]
        c3.caption(
            f"Block {len(visible) - 1}: local error {last['local_error']:.3g}, "
            f"cumulative {last['cumulative_error']:.3g}"
            f" (achieved sparsity {last['sparsity']:.3f})."
        )


ui.follow(setup.model, lesson_job)
if base_errors is None or base is None:  # the stepper computes the uniform point's blocks one press at a time
    st.header(f"3. {lesson.CHAPTERS[3]}", anchor="chapter-3")
    stepper(None)
    st.stop()

# -- presenter mode and the chapter filter
with st.expander("For the teacher: presenter mode, quiz mode, a link to this view"):
    left, mid, right = st.columns(3)
    presenter = left.toggle("Presenter mode (large type, no sidebar)", **ui.state("lesson_presenter", False))
    quiz = mid.toggle("Quiz mode: hide each answer until a guess is made", **ui.state("lesson_quiz", False))
    chapter = right.selectbox(
        "Show",
        [0, *lesson.CHAPTERS],
        format_func=lambda c: "all chapters" if c == 0 else f"{c}. {lesson.CHAPTERS[c]}",
        **ui.state("lesson_chapter", 0),
    )
    link_box = st.empty()  # filled at the end, once every widget of this run is drawn
if presenter:
    st.markdown(
        "<style>section[data-testid='stSidebar'], [data-testid='stSidebarCollapsedControl'] {display: none;}"
        " .stMarkdown p, .stMarkdown li, .stAlert p {font-size: 1.45rem !important; line-height: 1.5;}"
        " h1 {font-size: 3rem !important;} h2 {font-size: 2.3rem !important;}</style>",
        unsafe_allow_html=True,
    )


def show(number: int) -> bool:
    """Whether chapter ``number`` is drawn (all, or the one chosen), with its heading."""
    if chapter not in (0, number):
        return False
    st.header(f"{number}. {lesson.CHAPTERS[number]}", anchor=f"chapter-{number}")
    return True


# -- the depth strip: stays on screen (sticky), follows the beta slider, a click selects a block
beta_value = float(st.session_state.get("_beta", 0.0))
strip_beta = min(grid, key=lambda b: abs(b - beta_value))
strip_point = points.get(strip_beta) if lesson.errors_of(points.get(strip_beta)) is not None else base
strip_errors = lesson.errors_of(strip_point)
assert strip_errors is not None and strip_point is not None
shares = budget.shares(float(base_errors.cumulative_error_abs[-1])) if budget is not None else None
default_block = int(np.argmax(shares)) if shares is not None else 0


def pick_block() -> None:
    chosen = st.session_state["lesson_strip"].selection.get("points", [])
    if chosen:
        ui.set_state("lesson_block", int(chosen[0]["x"]))


st.markdown(
    "<style>.st-key-lesson_strip_box {position: sticky; top: 2.8rem; z-index: 990; background: "
    "var(--background-color, white); border-bottom: 1px solid #ddd;}</style>",
    unsafe_allow_html=True,
)
with st.container(key="lesson_strip_box"):
    strip_col, info_col = st.columns([3, 1])
    with info_col:
        block = int(st.number_input("Block", 0, L - 1, step=1, **ui.state("lesson_block", default_block)))
        name = "uniform" if strip_beta == 0 else f"ATP beta = {strip_beta:g}"
        lines = [
            f"**Block {block}** ({name}): s = {strip_point.rates[block]:.3f}",
            f"local error {strip_errors.local_error[block]:.3g}, cumulative {strip_errors.cumulative_error[block]:.3g}",
        ]
        if budget is not None and shares is not None:
            amp = budget.amplification[block]
            lines.append(
                f"pruned alone (uniform): {100 * shares[block]:.1f} % of the final error, amplification "
                f"{amp:.3g}x, ||h|| = {math.sqrt(budget.dense_norm[block]):.3g}"
            )
        st.caption("  \n".join(lines))
        show_scores = st.toggle("Its weight scores", **ui.state("lesson_scores", False))
    with strip_col:
        strip = lf.strip_figure(
            strip_point.rates,
            strip_errors.local_error,
            strip_errors.cumulative_error,
            selected=block,
            title=f"{L} decoder blocks, {name}: colour = s_i, bars = errors",
        )
        st.plotly_chart(
            strip, key="lesson_strip", on_select=pick_block, selection_mode="points", config=figures.PLOTLY_CONFIG
        )


@st.cache_data(show_spinner=False, max_entries=64)
def block_scores(_bench: Workbench, setup_key: str, block: int, rate: float) -> lesson.ScoreHistogram:
    return lesson.score_histogram(_bench, block, rate)  # binned: a few kB per block


if show_scores:  # block detail on demand: the histogram of the pruner's scores, the block's rate marked
    rate = float(strip_point.rates[block])
    if not lesson.score_stats_ready(bench):
        scores_key = ("lesson scores", bench.setup)
        scores_job = ui.job_button(
            "Compute the dense statistics the scores need (one dense pass)",
            scores_key,
            lambda: ui.submit(
                bench,
                scores_key,
                "dense statistics",
                lambda job: lesson.score_histogram(bench, block, rate, job.report),
            ),
            key="lesson_scores_run",
        )
        ui.follow(setup.model, scores_job)
    else:
        hist = block_scores(bench, str(setup), block, rate)
        options = ["all", *hist.linears]
        if (asked := st.session_state.get("_lesson_scores_linear", "all")) not in options:
            st.error(f"Linear refused: it must be one of {', '.join(options)}, got {asked!r}")
            ui.set_state("lesson_scores_linear", "all")
        linear = st.selectbox("Linear", options, **ui.state("lesson_scores_linear", "all"))
        ui.chart(lf.score_histogram_figure(hist, None if linear == "all" else linear), key="lesson_scores_chart")

cum = base_errors.cumulative_error
# ------------------------------------------------------------------ 1. one block
if show(1):
    st.markdown(
        f"Prune one block: zero a fraction s of the weights of each of its linear layers (here by Wanda's score "
        f"|W| x ||X||, s = {S:g}) and compare its output with the dense block's on the same input x. That is the "
        "block's own, **local** error:"
    )
    st.latex(r"e_i^{\mathrm{local}} = \|f_i(x) - \hat f_i(x)\|_F^2 \,/\, \|f_i(x)\|_F^2")
    if budget is not None:
        ui.chart(lf.local_figure(budget.local, budget.rates, block), key="lesson_local")
        order = np.argsort(-budget.local)
        st.markdown(
            f"Each block pruned **alone** at s = {S:g}, on its dense input: the local errors range from "
            f"{budget.local.min():.3g} to {budget.local.max():.3g}; the largest are blocks "
            f"{lesson.listed([int(i) for i in order[:3]])}. Block {block}: {budget.local[block]:.3g}."
        )

# ------------------------------------------------------------------ 2. predict, then reveal
if show(2):
    guess = st.number_input(
        f"Your guess: after which block (0..{L - 1}) is the cumulative error (dense vs pruned hidden state, "
        "relative) largest when every block is pruned at the same rate?",
        min_value=0,
        max_value=L - 1,
        step=1,
        placeholder="type a block number",
        **ui.state("lesson_guess_block", None),
    )
    if quiz and guess is None:
        st.info("Quiz mode: make a guess to reveal the curve.")
    else:
        curve_fig = figures.error_figure(
            {f"uniform (S = {S:g})": cum}, log_y=True, title="Cumulative error under uniform sparsity"
        )
        ui.chart(lf.guess_line(curve_fig, None if guess is None else int(guess)), key="lesson_reveal")
        peak = int(np.argmax(cum))
        verdict = (
            ""
            if guess is None
            else (
                f" Your guess, block {int(guess)}, is {abs(int(guess) - peak)} block(s) away."
                if int(guess) != peak
                else " Your guess is right."
            )
        )
        st.markdown(
            f"On {setup.model} at S = {S:g} the relative cumulative error {lesson.curve_text(cum)}; it is largest "
            f"after block {peak}.{verdict} The error made early is carried by every later block, but it does not "
            "grow smoothly: where the curve steps up, chapter 4 shows what happens in that block."
        )

if show(3):
    stepper(cum)

# ------------------------------------------------------------------ 4. where the error comes from
if show(4):
    if budget is None:
        st.info("The error budget is not computed yet at these settings (the button at the top computes it).")
    else:
        joint = float(base_errors.cumulative_error_abs[-1])
        st.markdown(
            "Prune **one block alone** at its rate, keep every other block dense, and measure the error at the last "
            "block: that is the final error this block *causes*. Divided by its own local error it gives the "
            "block's **amplification**: how much what it does wrong grows (> 1) or shrinks (< 1) on its way out."
        )
        ui.chart(lf.budget_figure(budget, joint, block), key="lesson_budget")
        st.markdown(lesson.budget_text(budget, joint))
        with st.expander("The budget table"):
            st.dataframe(pd.DataFrame(lesson.budget_table(budget, joint)), hide_index=True)
        inputs = st.radio(
            "Calibrate each block on (masked forward)",
            list(lesson.INPUTS),
            format_func=lambda k: lesson.INPUTS[k],
            horizontal=True,
            **ui.state("lesson_inputs", "pruned"),
        )
        if dense_in is None:
            st.info("The dense-input variant is not computed yet at these settings.")
        else:
            variants = {"calibrated on pruned inputs": base_errors, "calibrated on dense inputs": dense_in}
            chosen_name = "calibrated on pruned inputs" if inputs == "pruned" else "calibrated on dense inputs"
            chosen = variants[chosen_name]
            other = dense_in if inputs == "pruned" else base_errors
            ui.chart(
                figures.error_figure(
                    {chosen_name: chosen.cumulative_error, "the other choice": other.cumulative_error},
                    title=f"Cumulative error, every block pruned at S = {S:g}",
                ),
                key="lesson_masked",
            )
            st.markdown(lesson.variants_text(base_errors, dense_in))

# ------------------------------------------------------------------ 5. tilt the line
stored_grid = {spec: [p] for spec, p in zip(specs, points.values()) if p is not None}
summary = summarize_sweep(specs, stored_grid)


@st.fragment
def tilt() -> None:
    """The beta slider and its three charts: a move reruns only this fragment (no computation: stored points),
    then the whole page once so the depth strip follows."""
    assert base is not None and base_errors is not None
    moved = st.slider("beta", 0.0, grid[-1], step=published.GRID_STEP, format="%.3f", **ui.state("beta", 0.0))
    beta = min(grid, key=lambda b: abs(b - moved))
    point = points[beta]
    if point is None or lesson.errors_of(point) is None:
        st.info(f"beta = {beta:g} is not computed yet at these settings: run the sweep on the Beta tuning page.")
        return
    visited = st.session_state.setdefault("_lesson_visited", set())
    if beta > 0:
        visited.add(beta)
    label = "uniform" if beta == 0 else f"ATP (beta = {beta:g})"
    left, mid, right = st.columns(3)
    with left:
        ui.chart(
            figures.schedule_figure({label: point.rates, "uniform": base.rates}, title=f"Schedule at beta = {beta:g}"),
            key="lesson_schedule",
        )
    with mid:
        ui.chart(
            figures.error_figure(
                {label: point.cumulative_error, "uniform": cum}, title=f"Cumulative error at beta = {beta:g}"
            ),
            key="lesson_tilt",
        )
    with right:  # the U-curve builds from the betas visited so far (chapter 6 reveals all of it)
        seen = [b for b in summary.betas if b in visited]
        values = [summary.evaluation[summary.betas.index(b)].mean for b in seen]
        ui.chart(
            figures.beta_curve_figure(seen, values, sparsity=S, uniform_ppl=base.perplexity,
                                      beta_max=published.beta_max(L, S), selected=beta if beta > 0 else None),
            key="lesson_upoint",
        )  # fmt: skip
    ratio_atp, ratio_uni = figures.last_first_ratio(point.cumulative_error), figures.last_first_ratio(cum)
    first, last = point.cumulative_error[0], point.cumulative_error[-1]
    st.markdown(
        f"At beta = {beta:g}: perplexity {perplexity_text(point.perplexity)} (uniform "
        f"{perplexity_text(base.perplexity)}); the first block's relative error {first:.3g} (uniform {cum[0]:.3g}), "
        f"the last block's {last:.3g} (uniform {cum[-1]:.3g}). The last/first ratio is {ratio_atp:.3g}x (uniform "
        f"{ratio_uni:.3g}x)"
        + (
            ": larger, because ATP prunes the first blocks less and so shrinks the ratio's denominator; the ratio "
            "is not what ATP improves, the final error and the perplexity are."
            if ratio_atp > ratio_uni and beta > 0
            else "."
        )
    )
    if beta != strip_beta:
        st.rerun(scope="app")  # the depth strip and the block details follow the slider


if show(5):
    st.markdown(
        "ATP tilts the line: s_i = S - beta (L-1)/2 + beta i, the same mean S, less sparsity early and more late. "
        "Move `beta`: the schedule, the cumulative error and the point on the beta/perplexity curve move "
        "together (uniform, beta = 0, stays drawn for reference; the curve keeps the betas you visited)."
    )
    tilt()

# ------------------------------------------------------------------ 6. guess the best beta
if show(6):
    guess_beta = st.selectbox(
        "Your guess: which beta gives the lowest perplexity?",
        grid[1:],
        index=None,
        format_func=lambda b: f"beta = {b:g}",
        **ui.state("lesson_guess_beta", None),
    )
    if summary.best is None:
        st.info("No ATP point is stored at these settings yet: run the sweep on the Beta tuning page.")
    elif quiz and guess_beta is None:
        st.info("Quiz mode: make a guess to reveal the U-curve.")
    else:
        best = summary.betas[summary.best]
        ui.chart(
            figures.beta_curve_figure(
                summary.betas,
                [v.mean for v in summary.evaluation],
                sparsity=S,
                uniform_ppl=base.perplexity,
                best_beta=best,
                beta_max=published.beta_max(L, S),
                selected=guess_beta,
                validation=[v.mean for v in summary.validation],
            ),
            key="lesson_ucurve",
        )
        st.markdown(
            f"The best beta is chosen on the **validation** split ({best:g}) and its perplexity reported on the "
            f"**evaluation** split ({perplexity_text(summary.evaluation[summary.best].mean)}, uniform "
            f"{perplexity_text(base.perplexity)}): the reported number was not used to choose."
            + ("" if guess_beta is None else f" Your guess: beta = {guess_beta:g}.")
        )
        peers = ["uniform", "atp", "owl", "alphapruning", "dlp"]
        cells = compare_cells(L, peers, [S])
        wanted = [spec for cell in cells for spec in cell.specs]
        groups, missing = ui.stored_groups(bench, wanted, (seed,))
        rows = compare_rows(cells, groups)
        if rows:
            ui.chart(figures.compare_figure(rows, ui.dense_perplexity(bench)), key="lesson_peers")
        absent = [methods.label(cell.method) for cell in cells if not any(groups[s] for s in cell.specs)]
        if absent:
            st.caption(f"Not computed yet at these settings: {', '.join(absent)}.")
            peer_job = ui.last_job(ui.points_key(bench, missing))
            if ui.idle(peer_job) and st.button(f"Compute {', '.join(absent)}", key="lesson_peers_run"):
                peer_job = ui.submit_points(bench, missing, f"lesson peers at S = {S:g}")
            ui.follow(setup.model, peer_job)

# ------------------------------------------------------------------ 7. not the whole story
if show(7):
    st.markdown("A lesson is a regime, not a law. What is measured on this model says where the line falls short:")
    if budget is not None:
        joint = float(base_errors.cumulative_error_abs[-1])
        top = int(np.argmax(budget.shares(joint)))
        st.markdown(
            f"- **The outlier block.** Block {top} alone causes {100 * budget.shares(joint)[top]:.0f} % of the final "
            f"error (amplification {budget.amplification[top]:.3g}x). A straight line cannot single out one block "
            "in the middle; OWL-style methods, which react to outlier weights, can."
        )
    story = lesson.measured_story(setup.model, S)  # shipped: drawn at once, no computation
    if story is not None:
        profiles_text, band_text = lesson.story_text(story)
        c = story["settings"]
        st.markdown(
            f"Measured on {setup.model} at S = {S:g} under other settings than this page's ({c['calib_samples']} x "
            f"{c['calib_seqlen']} calibration tokens, {c['calibration']} calibration, {c['eval_windows']} x "
            f"{c['eval_seqlen']} evaluation tokens, {story['date']}; `{', '.join(story['sources'])}`):"
        )
        st.markdown(f"- **A curved profile beats the line.** {profiles_text}")
        left, mid, right = st.columns(3)
        with left:
            ui.chart(figures.schedule_figure(lesson.story_rates(story), title="Power profiles s_i (x_i^p)"),
                     key="lesson_curved_schedules")  # fmt: skip
        with mid:
            ui.chart(lf.band_figure(story["curved"], "validation", "Curved profiles: validation perplexity"),
                     key="lesson_curved")  # fmt: skip
        st.markdown(f"- **The seed band.** {band_text}")
        with right:
            ui.chart(lf.band_figure(story["seed_band"], "evaluation", f"The seed band at S = {S:g}"),
                     key="lesson_seed_band")  # fmt: skip
    where = "at this page's settings" if story is not None else "at these settings"
    curved = [spec for name in ("power", "prefix") for spec in methods.sweep_grid(name, L, S, published.GRID_STEP)]
    curved_points = [p for p in ui.stored_points(bench, curved) if p is not None]
    if curved_points:
        best_curved = min(curved_points, key=lambda p: p.value("perplexity", "validation"))
        st.markdown(
            f"- **A curved profile {where}.** Best stored curved profile ({best_curved.method}, chosen on "
            f"validation): perplexity {perplexity_text(best_curved.perplexity)} against the line's "
            f"{perplexity_text(summary.evaluation[summary.best].mean) if summary.best is not None else 'n/a'} "
            f"({len(curved_points)} of {len(curved)} profiles stored)."
        )
    else:
        st.markdown(
            f"- **A curved profile {where}**: not computed yet ({len(curved)} profile points; the Profile shapes "
            "page computes them)."
        )
    band_specs = [uniform] + ([specs[1 + summary.best]] if summary.best is not None else [])
    band, _ = ui.stored_groups(bench, band_specs, (seed, seed + 1, seed + 2))
    if all(len(v) >= 2 for v in band.values()):
        text = "; ".join(
            f"{ui.spec_label(s)}: " + ", ".join(perplexity_text(p.perplexity) for p in v) for s, v in band.items()
        )
        st.markdown(f"- **The seed band {where}** (calibration seeds {seed}..{seed + 2}): {text}.")
    else:
        st.markdown(
            f"- **The seed band {where}**: not computed yet (uniform and the best beta under three calibration "
            "seeds; set 'Seeds per point' to 3 on the Beta tuning page)."
        )

link = lesson.share_link(
    int(chapter),
    float(st.session_state.get("_beta", 0.0)),
    block,
    str(st.session_state.get("_lesson_inputs", "pruned")),
    bool(presenter),
    bool(quiz),
)
link_box.markdown(f"Link to this view (append to the dashboard's address): `{link}`")
