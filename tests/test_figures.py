"""Figure builders: traces, axis titles, hover text, annotations; no streamlit needed."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
import pytest

from atp_viz.dashboard import figures
from atp_viz.schedules import published


def axis_titles(fig: go.Figure) -> tuple[str, str]:
    return fig.layout.xaxis.title.text, fig.layout.yaxis.title.text


def assert_readable(fig: go.Figure) -> None:
    x_title, y_title = axis_titles(fig)
    assert x_title and y_title and "(" in x_title and "(" in y_title  # units / meaning in brackets
    assert fig.layout.showlegend
    for trace in fig.data:
        assert trace.name and trace.hovertemplate


def test_schedule_figure_has_one_exact_line_per_schedule() -> None:
    rates = {"uniform": published.uniform(8, 0.6), "ATP (beta = 0.02)": published.atp(8, 0.6, 0.02)}
    fig = figures.schedule_figure(rates)
    assert_readable(fig)
    assert [t.name for t in fig.data] == list(rates)
    assert list(fig.data[1].y) == rates["ATP (beta = 0.02)"].tolist() and list(fig.data[0].x) == list(range(8))
    assert fig.data[1].line.color == figures.color_for("atp")
    assert "%{y:.6f}" in fig.data[0].hovertemplate


def test_error_figure_annotates_last_first_ratio_and_log_axis() -> None:
    fig = figures.error_figure({"uniform": [0.01, 0.1, 1.0], "ATP": [0.01, 0.02, 0.04]}, log_y=True)
    assert_readable(fig)
    assert fig.layout.yaxis.type == "log"
    text = fig.layout.title.subtitle.text
    assert "uniform: last/first = 100x" in text and "ATP: last/first = 4x" in text
    assert figures.error_figure({"a": [1, 2]}, log_y=False).layout.yaxis.type == "linear"


@pytest.mark.parametrize(("curve", "expected"), [([2.0, 8.0], 4.0), ([0.0, 1.0], math.inf), ([], math.nan)])
def test_last_first_ratio(curve: list[float], expected: float) -> None:
    got = figures.last_first_ratio(curve)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_beta_curve_marks_best_and_uniform_baseline() -> None:
    fig = figures.beta_curve_figure(
        [0.004, 0.002, 0.006],
        [10.0, 12.0, 11.0],
        sparsity=0.7,
        uniform_ppl=15.0,
        best_beta=0.004,
        beta_max=0.0069,
        selected=0.006,
    )
    assert_readable(fig)
    names = [t.name for t in fig.data]
    assert names[0].startswith("uniform (beta = 0)") and list(fig.data[0].y) == [15.0, 15.0]
    assert list(fig.data[1].x) == [0.002, 0.004, 0.006]  # sorted by beta
    best = next(t for t in fig.data if t.name.startswith("best"))
    assert list(best.x) == [0.004] and list(best.y) == [10.0] and best.marker.symbol == "star"
    assert any(n.startswith("selected") for n in names)
    assert fig.layout.xaxis.range[1] > 0.0069


def test_compare_figure_groups_bars_with_dense_line() -> None:
    rows = [
        {"method": "uniform", "sparsity": 0.5, "perplexity": 30.0},
        {"method": "uniform", "sparsity": 0.7, "perplexity": 300.0},
        {"method": "ATP (best beta)", "sparsity": 0.7, "perplexity": 120.0},
    ]
    fig = figures.compare_figure(rows, dense_ppl=20.0)
    assert_readable(fig)
    assert fig.layout.barmode == "group" and fig.layout.yaxis.type == "log"
    bars = {t.name: t for t in fig.data if isinstance(t, go.Bar)}
    assert list(bars["uniform"].x) == ["50%", "70%"] and list(bars["ATP (best beta)"].y) == [None, 120.0]
    dense = next(t for t in fig.data if t.name.startswith("dense"))
    assert list(dense.y) == [20.0, 20.0]


def test_totals_figure_labels_every_bar() -> None:
    fig = figures.totals_figure({"uniform": 3.0, "ATP (increasing)": 1.5})
    assert_readable(fig)
    assert list(fig.data[0].y) == [3.0, 1.5] and list(fig.data[0].text) == ["3", "1.5"]


def test_figures_module_does_not_import_streamlit() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(figures.__file__).read_text())
    imported = {
        alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.startswith("streamlit") for name in imported)


def test_compare_figure_writes_log_ticks_in_full_and_pads_a_lone_group() -> None:
    rows = [
        {"method": "uniform", "sparsity": 0.7, "perplexity": 600.8},
        {"method": "atp", "sparsity": 0.7, "perplexity": 246.3},
    ]
    fig = figures.compare_figure(rows, dense_ppl=14.18, log_y=True)
    assert list(fig.layout.yaxis.ticktext) == ["10", "20", "50", "100", "200", "500", "1,000"]
    low, high = fig.layout.xaxis.range
    assert low < -0.5 and high > 0.5  # one sparsity group does not fill the plot
    assert figures.compare_figure(rows, log_y=False).layout.yaxis.ticktext is None


def test_colours_follow_the_method_not_the_first_word_of_its_label() -> None:
    from atp_viz.schedules import methods

    prefix, power = methods.get_method("prefix"), methods.get_method("power")
    assert figures.color_for("prefix") == prefix.color
    assert figures.color_for(f"{prefix.label} (k = 2, beta = 0.01)") == prefix.color  # first word: 'protected'
    assert figures.color_for(f"{power.label}, p = 2") == power.color
    assert figures.color_for("ATP (beta = 0.01)") == figures.color_for("atp") == methods.get_method("atp").color
    assert figures.color_for("dense") == figures.COLORS["dense"] and figures.color_for("tpe") is None
    rows = [{"method": "prefix", "label": "my prefix run", "sparsity": 0.5, "perplexity": 30.0}]
    assert figures.compare_figure(rows).data[0].marker.color == prefix.color


def test_log_axes_write_every_tick_out() -> None:
    """A log axis gets 1-2-5 ticks written in full, never Plotly's bare minor digits ("2", "5")."""
    from atp_viz.dashboard.figures import error_figure

    fig = error_figure({"uniform": [0.003, 0.02, 0.4], "ATP": [0.002, 0.01, 0.9]})
    text = list(fig.layout.yaxis.ticktext)
    assert "0.002" in text and "0.5" in text and "1" in text and "2" not in text and "5" not in text
    assert all(0.001 <= v <= 2 for v in fig.layout.yaxis.tickvals)


def test_a_2d_grid_is_drawn_on_category_axes_with_its_line_outlined_on_a_cell() -> None:
    from atp_viz.dashboard.figures import sweep2d_figure

    fig = sweep2d_figure([0.0, 0.008, 0.016], [-0.05, 0.0, 0.05], np.full((3, 3), 300.0), "offset", 0.0, (1, 0))
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    outline = fig.layout.shapes[0]
    assert (outline.x0, outline.x1, outline.y0, outline.y1) == (0.5, 1.5, -0.5, 2.5)  # the column offset = 0
