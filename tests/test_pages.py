"""AppTest for every dashboard page on a tiny random model (same loading path as the real one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.slow  # AppTest pages

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


@pytest.fixture(scope="module", autouse=True)
def tiny_dashboard(dashboard_env: dict[str, str], settle_jobs: None):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in dashboard_env.items():
            mp.setenv(name, value)
        yield


def page(name: str, **state) -> AppTest:
    at = AppTest.from_file(str(ROOT / name), default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def title(fig: dict) -> str:
    return fig["layout"]["title"]["text"]


def traces(fig: dict) -> dict[str, dict]:
    return {trace["name"]: trace for trace in fig["data"]}


def test_home_draws_the_schedule_and_follows_the_sparsity() -> None:
    at = page("app.py")
    ok(at)
    (fig,) = figures(at)
    assert "4 blocks" in title(fig) and len(fig["data"]) == 2
    assert fig["layout"]["xaxis"]["title"]["text"] and fig["layout"]["yaxis"]["title"]["text"]
    status = " ".join(c.value for c in at.sidebar.caption)
    assert "loaded, 4 blocks" in status and "Dense perplexity:" in status
    at.sidebar.slider(key="sparsity").set_value(0.5).run()
    ok(at)
    assert "uniform (S = 0.5)" in traces(figures(at)[0])


def test_sidebar_bad_input_shows_the_allowed_range() -> None:
    at = page("app.py")
    at.sidebar.number_input(key="eval_windows").set_value(100000).run()
    ok(at)
    assert any("allowed: 1.." in e.value for e in at.error), [e.value for e in at.error]
    assert not figures(at)
    at.sidebar.number_input(key="eval_windows").set_value(8).run()
    ok(at)
    assert not at.error and figures(at)
    at.sidebar.text_input(key="model").input("/no/such/model").run()
    ok(at)
    assert any("does not exist" in e.value for e in at.error)


def test_schedules_page_overlays_all_schedules_and_reacts_to_beta() -> None:
    at = page("pages/1_Schedules.py")
    ok(at)
    fig = figures(at)[0]
    names = list(traces(fig))
    assert names[0] == "uniform" and names[1].startswith("ATP") and {"OWL", "AlphaPruning", "custom"} <= set(names)
    assert "sparsity: [" in at.code[0].value and "WandaPruningModifier" in at.code[0].value
    atp_before = traces(fig)[names[1]]["y"]
    at.slider(key="sched_atp_beta").set_value(0.0).run()
    ok(at)
    after = traces(figures(at)[0])
    assert "ATP (beta = 0)" in after and after["ATP (beta = 0)"]["y"] != atp_before
    assert after["ATP (beta = 0)"]["y"] == after["uniform"]["y"]
    at.number_input(key="sched_owl_lam").set_value(3.0).run()
    ok(at)
    assert any("lam must be in [0, 1]" in e.value for e in at.error)
    assert not any(n.startswith("OWL") for n in traces(figures(at)[0]))  # the rest of the page still works


def test_a_registered_method_appears_on_the_pages() -> None:
    """A method is one registry entry: the pages offer it, draw its parameter widget and colour it."""
    import numpy as np

    from atp_viz.schedules.methods import Method, Param, registered
    from atp_viz.schedules.published import atp

    def reverse_atp(n: int, s: float, p: dict, stats: dict, w: object) -> np.ndarray:
        return atp(n, s, float(p["slope"]))[::-1].copy()

    with registered(
        Method(
            "throwaway", "Throwaway", "#123456", reverse_atp, params=(Param("slope", "Throwaway slope", 0.0, 0.0, 0.1),)
        )
    ):
        at = page("pages/1_Schedules.py")
        ok(at)
        assert "Throwaway" in at.multiselect(key="sched_show").options  # shown by its label
        assert at.number_input(key="sched_throwaway_slope").value == 0.0
        line = traces(figures(at)[0])["Throwaway"]
        assert line["line"]["color"] == "#123456"
        for name, key in (("pages/2_Error_explosion.py", "err_show"), ("pages/4_Compare_strategies.py", "cmp_methods")):
            other = page(name)
            ok(other)
            assert "Throwaway" in other.multiselect(key=key).options


def test_error_explosion_measures_then_reads_back() -> None:
    at = page("pages/2_Error_explosion.py", _sparsity=0.6)
    ok(at)
    assert not figures(at)
    at.button(key="err_run").click().run()
    ok(at)
    (fig,) = figures(at)
    assert len(fig["data"]) == 2 and fig["layout"]["yaxis"]["type"] == "log"
    assert "last/first" in fig["layout"]["title"]["subtitle"]["text"]
    at.toggle(key="err_log").set_value(False).run()
    assert figures(at)[0]["layout"]["yaxis"]["type"] == "linear"
    again = page("pages/2_Error_explosion.py", _sparsity=0.6)  # a revisit reads the store, no button needed
    ok(again)
    assert len(figures(again)[0]["data"]) == 2 and not again.button


def test_beta_tuning_sweeps_point_by_point_and_shows_them_on_revisit() -> None:
    at = page("pages/3_Beta_tuning.py", _sparsity=0.7)
    ok(at)
    at.number_input(key="tune_step").set_value(0.0).run()
    assert any("step must be" in e.value for e in at.error)
    at.number_input(key="tune_step").set_value(0.05).run()
    ok(at)
    at.button(key="tune_run").click().run()
    ok(at)
    figs = figures(at)
    curve = figs[0]
    names = list(traces(curve))
    assert any(n.startswith("uniform (beta = 0)") for n in names) and any(n.startswith("best:") for n in names)
    assert len(traces(curve)["ATP at S = 0.7 (evaluation)"]["x"]) == 4  # 0.05 .. 0.2
    assert len(traces(curve)["validation (chooses the best beta)"]["x"]) == 4
    assert any("chosen on validation" in s.value for s in at.success)
    assert len(figs) == 3  # U-curve, selected schedule, selected error curve
    revisit = page("pages/3_Beta_tuning.py", _sparsity=0.7, _tune_step=0.05)
    ok(revisit)
    assert len(traces(figures(revisit)[0])["ATP at S = 0.7 (evaluation)"]["x"]) == 4
    assert revisit.button(key="tune_run").disabled
    before = title(figures(revisit)[1])
    shown = float(before.split("=")[1])
    other = next(
        v for b in revisit.selectbox(key="tune_pick").options if (v := float(b.split("=")[1].split()[0])) != shown
    )
    revisit.selectbox(key="tune_pick").set_value(other).run()
    ok(revisit)
    assert title(figures(revisit)[1]) != before
    # a label the browser sent for options that changed meanwhile comes back as a string: shown as the best point
    stale = page("pages/3_Beta_tuning.py", _sparsity=0.7, _tune_step=0.05, _tune_pick="beta = 0.05 (best)")
    ok(stale)
    assert title(figures(stale)[1]) == before


def test_compare_strategies_table_chart_and_csv() -> None:
    at = page("pages/4_Compare_strategies.py", _cmp_sparsities=[0.5, 0.6], _tune_step=0.1)
    ok(at)
    at.button(key="cmp_run").click().run()
    ok(at)
    fig = figures(at)[0]
    assert fig["layout"]["yaxis"]["type"] == "log" and fig["layout"]["barmode"] == "group"
    names = set(traces(fig))
    assert {"uniform", "OWL", "AlphaPruning", "ATP"} <= names and any(n.startswith("dense") for n in names)
    table = at.dataframe[0].value
    assert list(table.columns) == ["S = 0.5", "S = 0.6"] and "dense" in table.index
    at.toggle(key="cmp_log").set_value(False).run()
    assert figures(at)[0]["layout"]["yaxis"]["type"] == "linear"


def test_theory_sandbox_answers_instantly_and_orders_errors() -> None:
    at = page("pages/5_Theory_sandbox.py")
    ok(at)
    errors, totals = figures(at)
    assert "16-layer" in title(errors)
    bars = dict(zip(totals["data"][0]["x"], totals["data"][0]["y"]))
    assert bars["increasing (ATP)"] < bars["random order"] < bars["decreasing"]
    curves = traces(errors)
    assert curves["uniform"]["y"][-1] > curves["uniform"]["y"][0]  # relative error grows with depth
    at.slider(key="toy_depth").set_value(32).run()
    ok(at)
    assert "32-layer" in title(figures(at)[0])
    at.radio(key="toy_scale").set_value("absolute").run()
    ok(at)
    assert "squared" in figures(at)[0]["layout"]["yaxis"]["title"]["text"]


def test_beta_tuning_with_seeds_draws_error_bars() -> None:
    at = page("pages/3_Beta_tuning.py", _sparsity=0.6, _tune_step=0.1, _seed_count=2)
    ok(at)
    assert "of 6 points stored" in " ".join(c.value for c in at.caption)  # 3 specs x 2 seeds
    at.button(key="tune_run").click().run()
    ok(at)
    curve = traces(figures(at)[0])["ATP at S = 0.6 (evaluation)"]
    assert curve["error_y"]["visible"] and len(curve["error_y"]["array"]) == 2
    assert any("std over 2 seeds" in s.value for s in at.success)


def test_compare_shows_the_zero_shot_table() -> None:
    at = page("pages/4_Compare_strategies.py", _cmp_sparsities=[0.5], _tune_step=0.2, _zeroshot=True, _zs_items=2)
    ok(at)
    at.button(key="cmp_run").click().run()
    ok(at)
    table = next(frame.value for frame in at.dataframe if "mean" in frame.value.columns)
    assert list(table["method"])[0] == "dense" and {"uniform", "ATP", "OWL", "AlphaPruning"} <= set(table["method"])
    assert {"boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"} <= set(table.columns)
    assert table["mean"].between(0, 100).all()


def test_beta_tuning_can_choose_beta_by_zero_shot_accuracy() -> None:
    at = page("pages/3_Beta_tuning.py", _sparsity=0.65, _tune_step=0.2, _zeroshot=True, _zs_items=2)
    ok(at)
    at.button(key="tune_run").click().run()
    ok(at)
    at.radio(key="tune_metric").set_value("zeroshot").run()
    ok(at)
    assert "zero-shot accuracy" in figures(at)[0]["layout"]["yaxis"]["title"]["text"]
    assert any("chosen on validation zeroshot" in s.value for s in at.success)


def test_schedules_page_says_which_blocks_a_schedule_prunes_whole_and_where_dsa_is_not_finite() -> None:
    at = page("pages/1_Schedules.py")
    ok(at)
    beta = at.slider(key="sched_atp_beta")
    beta.set_value(beta.max).run()  # ATP at beta_max puts its last block at rate 1 (S > 0.5)
    ok(at)
    texts = [w.value for w in at.warning]
    assert any("prunes block 3 whole" in t and t.startswith("atp S=") for t in texts), texts
    assert any("the DSA graph W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7) is not finite for" in t for t in texts), texts
