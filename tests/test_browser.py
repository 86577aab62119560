"""The dashboard in a real browser: headless Chromium (system build) drives every page.

Starts ``streamlit run app.py`` on a free localhost port with the tiny model (or, with
ATP_VIZ_BROWSER_REAL=1, the real default model), opens Schedules by its URL first (the page list must be
app.py's, with Home), then walks Home -> Lesson -> Schedules -> Error explosion -> Beta tuning -> Compare
strategies -> Theory sandbox -> ATP vs search -> Profile shapes through the sidebar navigation (one session,
so settings carry over), asserts a Plotly chart is drawn on each page, and saves one screenshot per
page to artifacts/screenshots (and to docs/screenshots when ATP_VIZ_SCREENSHOTS is set).
"""

from __future__ import annotations

import os
import re

import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, NO_CHROMIUM, ROOT, dashboard_server

ARTIFACTS = ROOT / "artifacts" / "screenshots"
DOCS = ROOT / "docs" / "screenshots"
REAL = os.environ.get("ATP_VIZ_BROWSER_REAL") == "1"
CHART = ".js-plotly-plot .main-svg"
# ATP grid steps typed into the pages: coarse for the tiny model (few points), finer for the real one.
BETA_STEP = "0.0040" if REAL else "0.1000"
COMPARE_STEP = "0.0100" if REAL else "0.1000"

pytestmark = [
    pytest.mark.slow,  # headless Chromium against a running dashboard
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM),
]


@pytest.fixture(scope="module")
def server(dashboard_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """A dashboard server on localhost; yields its base URL and stops it by its own handle."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if REAL:
        env.setdefault("ATP_VIZ_STORE", str(tmp_path_factory.mktemp("real") / "results.sqlite"))
    else:
        env.update({**dashboard_env, "ATP_VIZ_STORE": str(tmp_path_factory.mktemp("browser") / "results.sqlite")})
    with dashboard_server(env, tmp_path_factory.mktemp("server") / "streamlit.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser_page(server: str):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.set_default_timeout(1_200_000 if REAL else 90_000)
        yield page
        browser.close()


def shoot(page, name: str) -> None:
    page.wait_for_timeout(800)  # let Plotly finish its transitions
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("ATP_VIZ_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


def goto(page, label: str) -> None:
    """Switch page through the sidebar navigation (keeps the session and its settings)."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=re.compile(f"^{label}$")).click()
    page.wait_for_url(re.compile(label.replace(" ", "_") + "$"))


def wait_idle(page) -> None:
    """Wait until the script run finished (Streamlit shows a 'Running...' status widget meanwhile)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached")


def set_number(page, label: str, value: str) -> None:
    box = page.locator(f'input[aria-label="{label}"]')
    box.fill(value)
    box.press("Enter")
    page.wait_for_function(
        "([l, v]) => document.querySelector(`input[aria-label='${l}']`)?.value === v", arg=[label, value]
    )
    wait_idle(page)


def press(page, name: str | re.Pattern[str], done) -> None:
    """Press a page's job button when there is work: wait until the page shows the button or ``done`` (a locator
    of what the page draws once its results are there), then click the button if it is there and enabled.
    Results already stored (or shipped, on the embedded model) leave nothing to press."""
    button = page.get_by_role("button", name=name)
    button.or_(done).first.wait_for()
    wait_idle(page)
    if button.count() and button.first.is_enabled():
        button.first.click()


def wait_charts(page, count: int) -> None:
    """Wait until exactly ``count`` Plotly charts are drawn (stale ones of the previous run are gone). A wait, not a
    count read once: a rerun the watcher starts after ``wait_idle`` can still add or drop a chart for a moment."""
    page.locator(CHART).first.wait_for(state="visible")
    page.wait_for_function("n => document.querySelectorAll('.js-plotly-plot').length === n", arg=count)


def drawn(page, part: str, text: str):
    """The first visible Plotly ``part`` (``gtitle``: a chart's title, ``xtitle``: an x-axis title) containing
    ``text``. While a rerun redraws a chart with new data, Plotly can hold a hidden copy of the old title beside
    the new one for a moment (CI saw two "Per-block sparsity" titles, one hidden), which a strict locator refuses
    instead of waiting."""
    return page.locator(f".js-plotly-plot .{part}:visible", has_text=text).first


def legend(page) -> str:
    return " | ".join(page.locator(".js-plotly-plot .legendtext").all_text_contents())


def test_every_page_draws_a_plotly_chart(server: str, browser_page) -> None:
    page = browser_page
    # the server's first visitor opens a page's own URL: that page, listed under app.py's navigation
    page.goto(f"{server}/Schedules", wait_until="domcontentloaded")
    page.locator("h1", has_text="Schedules").wait_for()
    page.locator('[data-testid="stSidebarNav"] a', has_text=re.compile("^Home$")).wait_for()
    assert page.locator('[data-testid="stSidebarNav"] a', has_text=re.compile("^app$")).count() == 0

    page.goto(server, wait_until="domcontentloaded")
    page.locator(CHART).first.wait_for(state="visible")
    wait_idle(page)
    drawn(page, "gtitle", "Uniform vs ATP schedule").wait_for()
    page.get_by_text("Dense perplexity:").first.wait_for()  # the model loads, then is measured, in the background
    shoot(page, "1_home")

    goto(page, "Lesson")
    first = drawn(page, "gtitle", "Each block's own error")
    press(page, "Compute the lesson's data", first)  # the embedded model's lesson is shipped: nothing to press
    first.wait_for()
    drawn(page, "gtitle", "Error budget").wait_for()
    wait_idle(page)
    shoot(page, "2_lesson")

    goto(page, "Schedules")
    drawn(page, "gtitle", "Per-block sparsity").wait_for()
    # uniform, ATP and custom are drawn at once; OWL, AlphaPruning, DLP, DSA and LSA once their statistics are in:
    # eight lines (the wait is the check: it fails on its timeout)
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line').length === 8")
    wait_idle(page)
    before = legend(page)
    slider = page.locator('[data-testid="stMain"] input[type="range"]').first  # ATP beta, not the sidebar's S
    slider.focus()
    for _ in range(4):
        slider.press("ArrowRight")
    page.wait_for_function(
        "b => Array.from(document.querySelectorAll('.js-plotly-plot .legendtext')).map(e => e.textContent).join(' "
        "| ') !== b",
        arg=before,
    )
    wait_idle(page)
    shoot(page, "3_schedules")

    goto(page, "Error explosion")
    errors = drawn(page, "gtitle", "reconstruction error per block")
    press(page, re.compile("^Measure"), errors)
    errors.wait_for()
    wait_idle(page)
    page.locator(".js-plotly-plot .infolayer", has_text="last/first").first.wait_for(state="attached")
    shoot(page, "4_error_explosion")

    goto(page, "Beta tuning")
    set_number(page, "Grid step (> 0)", BETA_STEP)
    press(page, re.compile("^Run sweep"), page.get_by_role("button", name="Sweep complete"))
    page.locator(".js-plotly-plot .legendtext", has_text="best:").first.wait_for()
    page.get_by_text(re.compile("^Best beta =")).first.wait_for()  # a rerun may briefly show a stale copy too
    wait_idle(page)
    wait_charts(page, 3)
    shoot(page, "5_beta_tuning")

    goto(page, "Compare strategies")
    page.locator('input[aria-label="Grid step"]').wait_for()
    set_number(page, "Grid step", COMPARE_STEP)
    for chip in ("50%", "80%"):  # compare at 60% and 70% only: fewer runs
        remove = page.locator(f'[data-testid="stMain"] button[aria-label="Remove {chip}"]:visible')
        remove.click()
        remove.wait_for(state="detached")
        wait_idle(page)
    run = re.compile("^Run .* (missing|cells)")  # the fast default: cells
    press(page, run, page.get_by_role("button", name="Download CSV"))
    page.get_by_role("button", name=run).wait_for(state="detached")  # the page drops it once every cell is stored
    page.get_by_role("button", name="Download CSV").first.wait_for()
    wait_idle(page)
    page.locator(".js-plotly-plot .legendtext", has_text="ATP").first.wait_for()
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .barlayer .point').length >= 4")
    shoot(page, "6_compare_strategies")

    goto(page, "Theory sandbox")
    drawn(page, "gtitle", "toy network").wait_for()
    drawn(page, "gtitle", "same rates, different order").wait_for()
    wait_idle(page)
    wait_charts(page, 2)
    shoot(page, "7_theory_sandbox")

    goto(page, "ATP vs search")
    if REAL:  # a small comparison: ATP's coarse grid against TPE at its budget
        set_number(page, "ATP grid step (> 0)", "0.0040")
        box = page.locator('input[aria-label^="Points per method"]')
        box.fill("6")
        box.press("Enter")
        wait_idle(page)
        for chip in ("CMA-ES (Optuna)", "Evolutionary (1+λ), level switch"):
            remove = page.locator(f'[data-testid="stMain"] button[aria-label="Remove {chip}"]:visible')
            remove.click()
            remove.wait_for(state="detached")
            wait_idle(page)
    press(page, re.compile("^Run$"), drawn(page, "xtitle", "trial (points evaluated)"))
    if REAL:  # the picture of a finished comparison
        page.wait_for_function("() => !document.body.innerText.includes('Running: ATP vs')")
    drawn(page, "xtitle", "trial (points evaluated)").wait_for()
    wait_idle(page)
    shoot(page, "8_atp_vs_search")

    goto(page, "Profile shapes")
    if REAL:  # a 3 x 3 grid around the line
        set_number(page, "Beta step (> 0)", "0.0080")
        box = page.locator('input[aria-label^="attention-MLP offset values"]')
        box.fill("-0.05,0,0.05")
        box.press("Enter")
        wait_idle(page)
    press(page, re.compile("^Run grid"), page.get_by_role("button", name="Grid complete"))
    if REAL:  # the picture of a finished grid
        page.get_by_role("button", name="Grid complete").first.wait_for()
    drawn(page, "gtitle", "validation perplexity").wait_for()
    wait_idle(page)
    # from the first stored point on: two heatmaps, the chosen schedule's rates per linear type, the curved profiles
    wait_charts(page, 4)
    shoot(page, "9_profile_shapes")
