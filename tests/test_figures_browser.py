"""The heatmaps drawn by a real Chromium: a figure whose axes Plotly cannot place draws an empty frame, which
no assertion on the figure object sees (the rates-per-linear heatmap did so on Schedules and Profile shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, NO_CHROMIUM

from atp_viz.dashboard import figures
from atp_viz.schedules import published

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)]

RATES = published.atp(30, 0.7, 0.008)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CASES = {
    "attention and MLP": (
        figures.linear_rates_figure({"attention": (RATES - 0.05).tolist(), "mlp": (RATES + 0.03).tolist()}),
        ["attention", "mlp"],
    ),
    "projections": (
        figures.linear_rates_figure({name: (RATES + j / 100).tolist() for j, name in enumerate(PROJECTIONS)}),
        list(PROJECTIONS),
    ),
    "2-D grid": (
        figures.sweep2d_figure([0.0, 0.008, 0.016], [-0.05, 0.0, 0.05], np.full((3, 3), 300.0), "offset", 0.0, (1, 0)),
        ["0", "0.008", "0.016"],
    ),
}


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        yield browser.new_page(viewport={"width": 900, "height": 500})
        browser.close()


@pytest.mark.parametrize("case", list(CASES))
def test_every_heatmap_draws_its_cells_with_named_rows(page, tmp_path: Path, case: str) -> None:
    fig, rows = CASES[case]
    assert isinstance(fig, go.Figure)
    html = tmp_path / "figure.html"
    fig.write_html(html, include_plotlyjs=True, full_html=True)
    page.goto(html.as_uri())
    page.locator(".main-svg").first.wait_for()
    drawn = page.locator(".heatmaplayer image")
    assert drawn.count() == 1  # Plotly paints a heatmap as one image; none when its axes cannot place the cells
    box = drawn.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 20
    ticks = page.locator(".yaxislayer-above .ytick text").all_text_contents()
    assert ticks == rows
