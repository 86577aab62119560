"""AppTest of the Lesson page: on the tiny model (nothing shipped: computed behind a button, then read back;
the stepper computes blocks one press at a time) and on the embedded model at the dashboard defaults with an
empty store (every chapter draws from the shipped results, a beta move computes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS, package_dir

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "0_Lesson.py")
TIMEOUT = 300
pytestmark = pytest.mark.slow


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly charts by their key (the element id ends with it)."""
    return {chart.proto.id.rsplit("-", 1)[-1]: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def lesson(query: dict[str, str] | None = None, **state: object) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def has_button(at: AppTest, key: str) -> bool:
    return any(b.key == key for b in at.button)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


class TestTinyModel:
    @pytest.fixture(scope="class", autouse=True)
    def tiny(self, dashboard_env: dict[str, str], settle_jobs: None):  # type: ignore[no-untyped-def]
        with pytest.MonkeyPatch.context() as mp:
            for name, value in dashboard_env.items():
                mp.setenv(name, value)
            yield

    def test_the_stepper_computes_a_block_per_press_before_anything_is_stored(self) -> None:
        from atp_viz.dashboard import ui
        from atp_viz.experiment.lesson import STEP_KIND

        def stored_steps() -> int:
            return ui.get_store(ui.store_path()).count(kind=STEP_KIND)

        at = lesson(_sparsity=0.53)
        ok(at)
        assert has_button(at, "lesson_run") and has_button(at, "lesson_step")
        assert stored_steps() == 0  # opening the page computes nothing
        for expected in (1, 2):
            at.button(key="lesson_step").click().run()
            ok(at)
            fig = charts(at)["lesson_stepper"]
            assert fig["layout"]["title"]["text"].startswith(f"{expected} of 4 blocks pruned")
            assert len(fig["data"][0]["x"]) == expected
            assert stored_steps() == expected + 1  # the next block was computed ahead: the next press redraws

    def test_compute_then_every_chapter_reads_back(self) -> None:
        at = lesson(_sparsity=0.57)
        ok(at)
        at.button(key="lesson_run").click().run()
        ok(at)
        drawn = charts(at)
        for key in (
            "lesson_strip",
            "lesson_local",
            "lesson_reveal",
            "lesson_stepper",
            "lesson_budget",
            "lesson_masked",
        ):
            assert key in drawn, key
        budget = drawn["lesson_budget"]
        assert len(budget["data"][0]["y"]) == 4 and budget["layout"]["yaxis"]["title"]["text"]
        assert any("No ATP point is stored at these settings yet" in i.value for i in at.info)  # no sweep run here
        again = lesson(_sparsity=0.57)  # a reload or a second student: read back, no button
        ok(again)
        assert "lesson_budget" in charts(again) and not has_button(again, "lesson_run")
        again.radio(key="lesson_inputs").set_value("dense").run()
        ok(again)
        names = [t["name"] for t in charts(again)["lesson_masked"]["data"]]
        assert names == ["calibrated on dense inputs", "the other choice"]

    def test_a_blocks_weight_scores_on_demand(self) -> None:
        at = lesson(_sparsity=0.57, _lesson_block=1)
        ok(at)
        assert "lesson_scores_chart" not in charts(at)  # not drawn (nor computed) until asked
        at.toggle(key="lesson_scores").set_value(True).run()
        ok(at)
        if has_button(at, "lesson_scores_run"):  # no dense statistics cached yet: one dense pass behind a button
            at.button(key="lesson_scores_run").click().run()
            ok(at)
        fig = charts(at)["lesson_scores_chart"]
        assert fig["layout"]["title"]["text"].startswith("Block 1: Wanda")
        assert [t["name"] for t in fig["data"]][0] == "kept" and fig["layout"]["shapes"]
        at.selectbox(key="lesson_scores_linear").set_value(at.selectbox(key="lesson_scores_linear").options[1]).run()
        ok(at)
        assert "all" not in charts(at)["lesson_scores_chart"]["layout"]["title"]["text"]
        bad = lesson(_sparsity=0.57, _lesson_scores=True, _lesson_scores_linear="nope")
        ok(bad)
        assert [e for e in errors(bad) if e.startswith("Linear refused: it must be one of all, ")]
        assert "all 7 linears" in charts(bad)["lesson_scores_chart"]["layout"]["title"]["text"]

    def test_a_bad_link_parameter_is_refused_with_one_line(self) -> None:
        at = lesson({"chapter": "9", "block": "2", "presenter": "maybe"}, _sparsity=0.57)
        ok(at)
        assert errors(at) == [
            "Link refused: chapter must be one of 1, 2, 3, 4, 5, 6, 7, got '9'",
            "Link refused: presenter must be one of 0, 1, got 'maybe'",
        ]
        assert at.number_input(key="lesson_block").value == 2  # the good one is taken


def embedded_installed() -> bool:
    return all(package_dir(p) is not None for p in EMBEDDED_MODELS[DEFAULT_MODEL].packages)


@pytest.mark.integration
@pytest.mark.skipif(not embedded_installed(), reason="the embedded model is not installed")
class TestShippedDefaults:
    @pytest.fixture(scope="class", autouse=True)
    def defaults(self, tmp_path_factory: pytest.TempPathFactory, settle_jobs: None):  # type: ignore[no-untyped-def]
        from atp_viz.dashboard import ui

        with pytest.MonkeyPatch.context() as mp:
            for name in (ui.ENV_MODEL, ui.ENV_CORPUS, ui.ENV_WINDOWS):
                mp.delenv(name, raising=False)
            mp.setenv("ATP_VIZ_STORE", str(tmp_path_factory.mktemp("empty") / "results.sqlite"))
            yield

    def test_every_chapter_draws_from_shipped_results_and_a_beta_move_computes_nothing(self) -> None:
        from atp_viz.dashboard import ui

        at = lesson()
        ok(at)
        drawn = charts(at)
        for key in ("lesson_strip", "lesson_local", "lesson_reveal", "lesson_stepper", "lesson_budget", "lesson_upoint",
                    "lesson_masked", "lesson_schedule", "lesson_tilt", "lesson_ucurve", "lesson_peers",
                    "lesson_curved_schedules", "lesson_curved", "lesson_seed_band"):  # fmt: skip
            assert key in drawn, key
        assert not has_button(at, "lesson_run")  # nothing to compute at the defaults
        budget = drawn["lesson_budget"]["data"][0]["y"]
        assert len(budget) == 30 and max(budget) == budget[11]  # the outlier block
        # chapter 7 from shipped measurements: the curved profile that beats the line, the seed band, block 11
        assert [t["name"] for t in drawn["lesson_curved_schedules"]["data"]] == [
            "p = 0.5",
            "p = 1 (ATP's line)",
            "p = 2",
        ]
        assert drawn["lesson_seed_band"]["data"][0]["x"] == ["uniform", "ATP, beta = 0.012"]
        text = " ".join(m.value for m in at.markdown)
        assert "The outlier block.** Block 11" in text and "lower at every seed" in text
        before = ui.job_manager().epoch()
        at.slider(key="beta").set_value(0.012).run()
        ok(at)
        assert "beta = 0.012" in charts(at)["lesson_tilt"]["layout"]["title"]["text"]
        assert ui.job_manager().epoch() == before  # no job started, nothing stored
        assert ui.get_store(ui.store_path()).count() == 0
        at.button(key="lesson_step").click().run()
        assert charts(at)["lesson_stepper"]["layout"]["title"]["text"].startswith("1 of 30 blocks pruned")

    def test_a_link_opens_a_chapter_with_its_settings(self) -> None:
        at = lesson({"chapter": "5", "beta": "0.014"})
        ok(at)
        drawn = charts(at)
        assert "lesson_tilt" in drawn and "lesson_budget" not in drawn
        assert "beta = 0.014" in drawn["lesson_tilt"]["layout"]["title"]["text"]
        bad = lesson({"beta": "0.013"})
        assert errors(bad) and errors(bad)[0].startswith("Link refused: beta must be a grid point at these settings")
