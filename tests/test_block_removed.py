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
