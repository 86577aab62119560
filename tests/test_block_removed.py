"""A schedule that prunes a block whole (rate 1) says so: one library warning, printed by the CLI, shown by pages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from atp_viz.cli import main as cli
from atp_viz.dashboard import ui
from atp_viz.schedules import published as schedules
from atp_viz.schedules.methods import BlockRemovedWarning, ScheduleSpec, build_schedule, removed_blocks


def test_alphapruning_clipped_to_one_names_the_block() -> None:
    alphas = np.array([3.0, 3.1, 2.9, 3.0, 6.0, 3.05])  # block 4: ratio 1.3 * c > 1 at S = 0.7 -> clipped to 1
    spec = ScheduleSpec("alphapruning", 0.7)
    with pytest.warns(BlockRemovedWarning, match=r"alphapruning S=0.7 .* prunes block 4 whole") as caught:
        rates = build_schedule(spec, 6, {"alphas": alphas})
    assert rates[4] == 1.0 and removed_blocks(rates) == [4]
    assert any(issubclass(w.category, schedules.ScheduleClipWarning) for w in caught)  # and the clip itself


def test_atp_at_beta_max_removes_the_last_block_and_below_it_nothing() -> None:
    bound = schedules.beta_max(30, 0.7)
    with pytest.warns(BlockRemovedWarning, match="prunes block 29 whole"):
        build_schedule(ScheduleSpec("atp", 0.7, beta=bound), 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rates = build_schedule(ScheduleSpec("atp", 0.7, beta=0.02), 30)
    assert removed_blocks(rates) == []


def test_custom_rates_name_every_removed_block() -> None:
    with pytest.warns(BlockRemovedWarning, match="prunes blocks 1, 3 whole"):
        build_schedule(ScheduleSpec("custom", rates=(0.5, 1.0, 0.2, 1.0)), 4)


def test_cli_prints_the_warning_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    bound = schedules.beta_max(30, 0.7)
    assert cli.main(["schedule", "--layers", "30", "--method", "atp", "--beta", repr(bound), "--json"]) == 0
    err = capsys.readouterr().err
    assert "atp-viz: warning: atp S=0.7" in err and "prunes block 29 whole" in err


def test_schedules_page_gets_the_warning_of_a_pure_method() -> None:
    spec = ScheduleSpec("custom", rates=(0.5, 1.0, 0.2))
    found = ui.schedules(None, 3, [spec])
    assert found.rates[spec][1] == 1.0
    assert any("prunes block 1 whole" in text for text in found.warnings)


# ------------------------------------------------------------------ every place that shows a schedule says it


def test_recipe_and_schedule_json_name_the_removed_blocks() -> None:
    import json

    import yaml

    from atp_viz.speed.export import schedule_recipe

    recipe = schedule_recipe([0.5, 1.0, 0.2], "wanda")
    assert recipe.splitlines()[0].startswith("# this schedule prunes block 1 whole")
    assert yaml.safe_load(recipe)["sparsity_stage"]["sparsity_modifiers"]  # still a valid recipe
    assert "whole" not in schedule_recipe([0.5, 0.6, 0.2], "wanda")
    named = {"a": np.array([0.5, 1.0, 1.0]), "b": np.array([0.5, 0.5, 0.5])}
    assert json.loads(ui.schedule_json(named, {}))["removed_blocks"] == {"a": [1, 2], "b": []}


def test_cli_schedule_json_names_the_removed_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    bound = schedules.beta_max(30, 0.7)
    assert cli.main(["schedule", "--layers", "30", "--method", "atp", "--beta", repr(bound), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed_blocks"] == [29]


@pytest.mark.slow  # compare and prune on the tiny model, in-process
def test_cli_compare_table_json_and_prune_json_name_the_removed_blocks(tmp_path) -> None:
    import json

    from reliability import run_main
    from tiny import shared_corpus_file, shared_tiny_model

    bound = schedules.beta_max(4, 0.6)
    setup = ["--model", str(shared_tiny_model("llama")), "--corpus", str(shared_corpus_file()), "--calib-samples",
             "2", "--seqlen", "32", "--eval-windows", "1", "--store", str(tmp_path / "r.sqlite")]  # fmt: skip
    code, out, err = run_main(["compare", *setup, "--methods", "atp,uniform", "--beta", repr(bound),
                               "--sparsities", "0.6", "--json"])  # fmt: skip
    assert code == 0, err[-2000:]
    rows = {row["method"]: row for row in json.loads(out)["rows"]}
    assert rows["atp"]["removed_blocks"] == [3] and rows["uniform"]["removed_blocks"] == []
    assert "atp S=0.6" in err and "prunes block 3 whole" in err  # the table's line says it
    code, out, err = run_main(["prune", *setup, "--method", "atp", "--sparsity", "0.6", "--beta", repr(bound),
                               "--json"])  # fmt: skip
    assert code == 0, err[-2000:]
    assert json.loads(out)["removed_blocks"] == [3]  # the JSON a saved model's schedule.json holds too


@pytest.fixture()
def tiny_pages(dashboard_env: dict[str, str], settle_jobs: None):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in dashboard_env.items():
            mp.setenv(name, value)
        yield


def page(name: str, **state: object):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / name), default_timeout=180)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


@pytest.mark.slow  # AppTest pages on the tiny model
def test_schedules_page_names_the_removed_blocks_in_its_table(tiny_pages) -> None:
    at = page("pages/1_Schedules.py", _sparsity=0.6, _sched_show=["uniform", "atp"],
              _sched_atp_beta=schedules.beta_max(4, 0.6))  # fmt: skip
    assert not at.exception, [e.value for e in at.exception]
    assert any("prunes block 3 whole" in w.value for w in at.warning)
    means = next(frame.value for frame in at.dataframe if "blocks pruned whole (rate 1)" in frame.value.columns)
    assert list(means["blocks pruned whole (rate 1)"]) == ["-", "3"]
    at.selectbox(key="sched_recipe").set_value(list(means["schedule"])[1]).run()
    assert at.code[0].value.startswith("# this schedule prunes block 3 whole")


@pytest.mark.slow
def test_compare_page_says_which_method_prunes_a_block_whole(tiny_pages) -> None:
    at = page("pages/4_Compare_strategies.py", _cmp_methods=["atp"], _cmp_sparsities=[0.6],
              _tune_step=schedules.beta_max(4, 0.6))  # fmt: skip
    assert not at.exception, [e.value for e in at.exception]
    at.button(key="cmp_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("ATP at S = 0.6 prunes block 3 whole" in w.value for w in at.warning), [w.value for w in at.warning]
