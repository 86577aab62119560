"""The Compare page's "measured speedup on this machine" columns (AppTest, tiny random model)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from atp_viz.store import ResultStore

pytestmark = pytest.mark.slow  # AppTest page

ROOT = Path(__file__).resolve().parents[1]
PAGE = str(ROOT / "pages" / "4_Compare_strategies.py")


@pytest.fixture(scope="module", autouse=True)
def tiny_dashboard(dashboard_env: dict[str, str], settle_jobs: None):
    with pytest.MonkeyPatch.context() as mp:
        for name, value in dashboard_env.items():
            mp.setenv(name, value)
        yield


def test_speed_columns_appear_after_the_button_and_are_stored(tiny_assets: dict[str, Path]) -> None:
    at = AppTest.from_file(PAGE, default_timeout=120)
    for key, value in {"_cmp_methods": ["uniform", "atp"], "_cmp_sparsities": [0.4], "_tune_step": 0.2}.items():
        at.session_state[key] = value
    at.run()
    at.button(key="cmp_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert list(at.dataframe[0].value.columns) == ["S = 0.4"]  # nothing timed yet: no speed columns
    caption = next(c.value for c in at.caption if "measured speedup on this machine (" in c.value)
    assert "cores" in caption and "CSR" in caption
    at.button(key="cmp_speed").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert list(table.columns) == ["S = 0.4", "S = 0.4 prefill speedup", "S = 0.4 decode speedup"]
    for label in ("uniform", "ATP"):
        assert all(value > 0 for value in table.loc[label, ["S = 0.4 prefill speedup", "S = 0.4 decode speedup"]])
    assert math.isnan(table.loc["dense", "S = 0.4 prefill speedup"])
    assert not any(b.key == "cmp_speed" for b in at.button)  # all measured: the button is gone
    rows = ResultStore(tiny_assets["store"]).query(kind="speed")
    assert {row["config"]["method"] for row in rows} >= {"uniform", "atp"}
