"""Shared fixtures: one tiny random model + corpus per test session, used by the dashboard tests."""

from __future__ import annotations

import sys
from pathlib import Path

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
