"""The Lesson in a real browser, from a fresh server process with an empty results store, on the embedded
model at the dashboard defaults (everything it draws is shipped): every chapter's first chart is drawn, and
the time of a ``beta`` slider move until the charts change and of a stepper press until the curve grows are
measured and printed (recorded in ``artifacts/lesson_timings.json``, or ``$ATP_VIZ_LESSON_TIMINGS``), never
asserted (speed targets: 1 s and 2 s; see docs/teaching.md)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, NO_CHROMIUM, ROOT, dashboard_server

from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS, package_dir

TITLES = ".js-plotly-plot .gtitle"
FIRST_CHARTS = {  # chapter -> the start of its first chart's title
    1: "Each block's own error when it alone is pruned",
    2: "Cumulative error under uniform sparsity",
    3: "0 of 30 blocks pruned",
    4: "Error budget: who causes the last block's error",
    5: "Schedule at beta = 0",
    6: "Beta sweep at target sparsity 0.7",
}
MOVES = 6  # slider moves and stepper presses timed


def embedded_installed() -> bool:
    return all(package_dir(p) is not None for p in EMBEDDED_MODELS[DEFAULT_MODEL].packages)


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM),
    pytest.mark.skipif(not embedded_installed(), reason="the embedded model is not installed"),
]


def titles(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.locator(TITLES).all_text_contents()


def wait_title(page, start: str, timeout_ms: float = 120_000) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(
        "s => [...document.querySelectorAll('.js-plotly-plot .gtitle')].some(t => t.textContent.startsWith(s))",
        arg=start,
        timeout=timeout_ms,
    )


def settle(page) -> None:  # type: ignore[no-untyped-def]
    """Wait until no script run is in flight (the status widget is gone), so each timing starts idle."""
    page.wait_for_timeout(500)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=60_000)


def test_the_lesson_clicks_through_from_shipped_results(tmp_path_factory: pytest.TempPathFactory) -> None:
    from playwright.sync_api import sync_playwright

    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_VIZ_DEFAULT_")}
    env |= {"PYTHONPATH": str(ROOT), "ATP_VIZ_STORE": str(tmp_path_factory.mktemp("empty") / "results.sqlite")}
    record: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "model": DEFAULT_MODEL,
    }
    started = time.perf_counter()
    with dashboard_server(env, tmp_path_factory.mktemp("server") / "streamlit.log") as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{base}/Lesson", wait_until="domcontentloaded")
        wait_title(page, FIRST_CHARTS[6], 300_000)  # model load (first time: dequantized from the GGUF) + draw
        for start in FIRST_CHARTS.values():  # each chapter's first chart (a rerun may redraw the page meanwhile)
            wait_title(page, start, 60_000)
        record["first view s (server start, model load, all chapters drawn)"] = round(time.perf_counter() - started, 1)
        drawn = titles(page)
        assert all(any(t.startswith(start) for t in drawn) for start in FIRST_CHARTS.values()), drawn
        page.get_by_text("Block 11 alone causes").first.wait_for(timeout=60_000)  # chapter 7, the shipped budget

        slider = page.locator('[data-testid="stSlider"]').filter(has_text="beta").locator('input[type="range"]')
        slider_s = []
        for move in range(1, MOVES + 1):
            settle(page)
            slider.focus()
            t0 = time.perf_counter()
            slider.press("ArrowRight")
            wait_title(page, f"Cumulative error at beta = {0.002 * move:g}", 30_000)
            slider_s.append(round(time.perf_counter() - t0, 3))
        step_s = []
        button = page.get_by_role("button", name="Prune next block")
        for press in range(1, MOVES + 1):
            settle(page)
            t0 = time.perf_counter()
            button.click()
            wait_title(page, f"{press} of 30 blocks pruned", 30_000)
            step_s.append(round(time.perf_counter() - t0, 3))
        browser.close()
    record["beta slider move until the charts change, s"] = slider_s
    record["stepper press until the curve grows, s"] = step_s
    record["median s"] = {"beta slider move": statistics.median(slider_s), "stepper press": statistics.median(step_s)}
    record["targets s"] = {"beta slider move": 1.0, "stepper press": 2.0}
    print(json.dumps(record, indent=2))
    out = os.environ.get("ATP_VIZ_LESSON_TIMINGS", str(ROOT / "artifacts" / "lesson_timings.json"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
