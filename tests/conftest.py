"""Shared fixtures: one tiny random model + corpus per test session, used by the dashboard tests."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_corpus_file, make_tiny_model  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def reliability_report():
    """Write the reliability rows this session (or xdist worker) recorded once it ends."""
    yield
    from reliability import write_report

    write_report()


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-block random llama folder, a small text corpus and a store path, built once."""
    root = tmp_path_factory.mktemp("dashboard")
    return {
        "model": make_tiny_model(root / "tiny-llama"),
        "corpus": make_corpus_file(root / "corpus.txt"),
        "store": root / "results.sqlite",
    }


@pytest.fixture(scope="session")
def dashboard_env(tiny_assets: dict[str, Path]) -> dict[str, str]:
    """Environment that points the dashboard's defaults at the tiny model, corpus and store."""
    return {
        "ATP_VIZ_DEFAULT_MODEL": str(tiny_assets["model"]),
        "ATP_VIZ_DEFAULT_CORPUS": str(tiny_assets["corpus"]),
        "ATP_VIZ_STORE": str(tiny_assets["store"]),
        "ATP_VIZ_DEFAULT_WINDOWS": "4x32",  # calibration and evaluation: 4 windows of 32 tokens
    }


@pytest.fixture(autouse=True, scope="session")
def private_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test writes to the user's own results store: ATP_VIZ_STORE points into the test's tmp."""
    import os

    if "ATP_VIZ_STORE" not in os.environ:
        os.environ["ATP_VIZ_STORE"] = str(tmp_path_factory.mktemp("store") / "results.sqlite")


@pytest.fixture(scope="module")
def settle_jobs():
    """AppTest has no Streamlit server, so the server's ``ui.Watcher`` has no session to rerun. Stand in for
    it: after each run, wait for the server's background jobs (model loading, dense perplexity, a sweep the
    run started) and rerun until ``ui.signal()`` stays put, as the watcher would have rerun the page. Tests
    of the queue itself do not use this."""
    from streamlit.testing.v1 import AppTest

    from atp_viz.dashboard import ui

    original = AppTest._run  # every run goes through it: at.run() and widget.set_value(...).run()

    def run(self: AppTest, widget_state: Any = None, timeout: float | None = None) -> AppTest:
        manager = ui.job_manager()
        seen = ui.signal()
        at = original(self, widget_state, timeout)
        while True:
            assert manager.wait_idle(timeout or self.default_timeout), "background jobs did not finish"
            if ui.signal() == seen:  # nothing started, stored or ended since the last run drew the page
                return at
            seen = ui.signal()
            at = original(self, self._tree.get_widget_states(), timeout)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AppTest, "_run", run)
        yield
