"""Shipped results: a small read-only set of store rows inside the package, for an instant first view.

``scripts/ship_results.py`` runs the project's own pipeline (dense metrics, the Beta tuning sweep, the
Error explosion schedules, the strategy comparison) at the dashboard's default settings on the
embedded model and writes the rows it stored to ``atp_viz/experiment/shipped/results.json``. The rows keep the
store's keys, which are fingerprints of everything that decides a result (model weights, calibration
text and settings, pruner, mode, dtype, schedule; the split's text and window shape for a metric), so a
shipped row is found only where the settings match exactly.

A ``Workbench`` whose ``shipped`` is set reads a key from the user's store first and from the shipped
rows only when the store has none (user results win). Nothing is ever written to the shipped file by a
run: a point found there is not computed again, and a metric missing there (zero-shot, say) is
measured and stored in the user's store as usual.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from atp_viz.store import to_jsonable

SHIPPED_PATH = Path(__file__).resolve().parent / "shipped" / "results.json"
REGENERATE = "python scripts/ship_results.py"
FORMAT = 1  # layout of the JSON file: {"format", "about", "rows": [{key, kind, model, config, record}]}
ROW_FIELDS = ("key", "kind", "model", "config", "record")


class ShippedResults:
    """Rows of the store read from a JSON file (missing file: no rows). Read-only."""

    def __init__(self, path: str | Path = SHIPPED_PATH) -> None:
        self.path = Path(path)
        self.about: dict[str, Any] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{self.path}: shipped results format {data.get('format')!r}; this code reads {FORMAT}")
        self.about = dict(data.get("about", {}))
        self.rows = {row["key"]: row for row in data["rows"]}

    def __repr__(self) -> str:
        return f"ShippedResults({str(self.path)!r}, {len(self.rows)} rows)"

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def get(self, key: str) -> dict[str, Any] | None:
        """The record shipped under ``key`` (a copy: callers may change it), or None."""
        row = self.rows.get(key)
        return None if row is None else copy.deepcopy(row["record"])

    def count(self, model: str | None = None) -> int:
        """Rows shipped, optionally of one model (the store's ``model`` column: the name given)."""
        return sum(1 for row in self.rows.values() if model is None or row["model"] == model)


def write_shipped(rows: Iterable[Mapping[str, Any]], path: str | Path, about: Mapping[str, Any]) -> Path:
    """Write store rows (``ResultStore.query`` dicts) as a shipped-results file, atomically.

    Floats keep their full precision (the recompute test compares them); keys are sorted so a
    regenerated file diffs cleanly."""
    path = Path(path)
    plain = sorted(({name: row[name] for name in ROW_FIELDS} for row in rows), key=lambda row: row["key"])
    text = json.dumps(
        {"format": FORMAT, "about": to_jsonable(dict(about)), "rows": to_jsonable(plain)},
        sort_keys=True,
        allow_nan=True,
        separators=(",", ":"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".partial", delete=False, encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(f.name, 0o644)  # a temporary file is private; the shipped one is read by everyone
    Path(f.name).replace(path)
    return path
