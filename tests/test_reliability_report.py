"""The reliability report merges rows, so runs with -k or -n update their rows and keep the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import reliability


def test_report_merges_rows_of_separate_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_VIZ_WRITE_RELIABILITY", "1")
    monkeypatch.setattr(reliability, "REPORT", tmp_path / "reliability.md")
    monkeypatch.setattr(reliability, "_ROWS", {})
    reliability.record("bad input", "case A", 1, 0, "refused")
    reliability.record("interruption", "case B", 2, 0, "kept")
    reliability.write_report()
    monkeypatch.setattr(reliability, "_ROWS", {})  # a second run (another -k subset, another xdist worker)
    reliability.record("bad input", "case A", 3, 0, "refused again")
    reliability.record("memory", "case C", 1, 0, "refused")
    reliability.write_report()
    rows = reliability.stored_rows()
    assert set(rows) == {("bad input", "case A"), ("interruption", "case B"), ("memory", "case C")}
    assert rows[("bad input", "case A")].times == 3 and rows[("bad input", "case A")].outcome == "refused again"
    assert "Total: 3 cases, 6 injections, 0 results lost." in reliability.REPORT.read_text()
