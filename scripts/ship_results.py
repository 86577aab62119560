"""Regenerate the shipped results (``atp_viz/experiment/shipped/results.json``) through the project's own pipeline.

At the dashboard's default settings (``atp_viz.dashboard.ui.defaults()`` turned into a ``Setup`` by
``atp_viz.dashboard.ui.setup_of``, exactly as the sidebar does; the ``ATP_VIZ_DEFAULT_*`` variables are
ignored) on the embedded model, it runs, in this order, each point stored in a working store as it
finishes (an interrupted run resumes):

- ``dense``: the dense model's metrics (the sidebar's dense perplexity);
- ``errors``: the Error explosion page's default schedules (uniform and ATP at beta_max / 2);
- ``sweep``: the Beta tuning page's default sweep (uniform + every grid beta at the default S);
- ``lesson``: the Lesson page's data at the default S: uniform's error budget (each block pruned alone)
  and its errors when every block is calibrated on dense inputs (``atp_viz.experiment.lesson``), and the OWL,
  AlphaPruning and DLP points at the default S (the Compare page's cells, same keys);
- ``compare``: the Compare page's default table (every comparable method at S = 0.5 .. 0.8, ATP's
  whole grid at each), one sparsity at a time, the default S first (it shares the sweep).

After every point it rewrites the shipped file with every finished row: dense, errors and sweep
points as they finish, a comparison cell only once all its points are stored (a half-searched grid
would report the wrong best beta). ``--views`` picks a subset. The rows of the shipped file already there are
copied into the working store first (first writer wins): they are this pipeline's own results at the same
keys, so a run that adds a view (``--views lesson``) computes only what is new and keeps every existing row.

    .venv/bin/python scripts/ship_results.py                  # everything (about 25 min idle, 2 cores)
    .venv/bin/python scripts/ship_results.py --views dense,errors,sweep
    OMP_NUM_THREADS=1 .venv/bin/python scripts/ship_results.py --views dense,errors,sweep,lesson
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from atp_viz.experiment import lesson  # noqa: E402
from atp_viz.experiment.ledger import METRIC_KIND  # noqa: E402
from atp_viz.experiment.shipped import SHIPPED_PATH, ShippedResults, write_shipped  # noqa: E402
from atp_viz.experiment.workbench import Setup, Workbench, compare_cells, sweep_specs  # noqa: E402
from atp_viz.models.loading import cache_dir  # noqa: E402
from atp_viz.schedules import methods, published  # noqa: E402
from atp_viz.schedules.methods import ScheduleSpec  # noqa: E402
from atp_viz.store import CODE_VERSION, ResultStore  # noqa: E402

VIEWS = ("dense", "errors", "sweep", "lesson", "compare")
# The pages' own defaults (pages/2_Error_explosion.py, pages/4_Compare_strategies.py).
ERROR_METHODS = ("uniform", "atp")
COMPARE_SPARSITIES = (0.5, 0.6, 0.7, 0.8)
LESSON_PEERS = ("owl", "alphapruning", "dlp")  # chapter 6: where ATP lands against them at the default S


def dashboard_setup() -> tuple[Setup, float]:
    """The sidebar's default ``Setup`` and target sparsity, without the test-only environment overrides."""
    from atp_viz.dashboard import ui

    for name in (ui.ENV_MODEL, ui.ENV_CORPUS, ui.ENV_WINDOWS):
        os.environ.pop(name, None)
    values = ui.defaults()
    return ui.setup_of(values), float(values["sparsity"])  # type: ignore[arg-type]


def widget_default(param: methods.Param, num_blocks: int, sparsity: float) -> Any:
    """The value a parameter widget starts at (``ui.param_widgets``): mid-range for a bounded slider."""
    if param.choices:
        return param.default
    return param.upper(num_blocks, sparsity) / 2 if param.upper else float(param.default)


def error_specs(num_blocks: int, sparsity: float) -> list[ScheduleSpec]:
    return [
        ScheduleSpec(name, sparsity, **{p.name: widget_default(p, num_blocks, sparsity) for p in entry.params})
        for name in ERROR_METHODS
        for entry in [methods.get_method(name)]
    ]


def compare_groups(num_blocks: int, sparsity: float) -> list[list[ScheduleSpec]]:
    """The Compare page's default cells, the default sparsity's first; each cell's specs."""
    order = sorted(COMPARE_SPARSITIES, key=lambda s: (s != sparsity, s))
    cells = compare_cells(num_blocks, methods.method_names(comparable=True), order, published.GRID_STEP)
    return [list(cell.specs) for cell in cells]


def keys_of(wb: Workbench, spec: ScheduleSpec | None = None) -> list[str]:
    """A point's row and its metric rows in the working store (each names its point); None: the dense model's
    metric rows (the dense model has no point row)."""
    assert wb.store is not None
    if spec is None:
        return [row["key"] for row in wb.store.query(METRIC_KIND, method="dense")]
    point = wb.point_key(spec)
    return [point, *(row["key"] for row in wb.store.query(METRIC_KIND, point=point))]


def export(work: ResultStore, keys: set[str], out: Path, about: dict[str, Any]) -> int:
    rows = [row for row in work.query() if row["key"] in keys]
    write_shipped(rows, out, about)
    return len(rows)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--views", default=",".join(VIEWS), help=f"comma-separated, of: {', '.join(VIEWS)}")
    parser.add_argument("--out", type=Path, default=SHIPPED_PATH, help="shipped file (default: the package's)")
    parser.add_argument(
        "--work", type=Path, default=None, help="working store (default: <cache dir>/shipped-work.sqlite)"
    )
    args = parser.parse_args(argv)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        parser.error(f"unknown view {', '.join(bad) or '(none)'}; allowed: {', '.join(VIEWS)}")

    setup, sparsity = dashboard_setup()
    work = ResultStore(args.work or cache_dir() / "shipped-work.sqlite")
    before = ShippedResults(args.out)
    for row in before.rows.values():
        work.put(row["key"], row["kind"], row["model"], row["config"], row["record"])
    log(f"loading {setup.model}; working store {work.path}")
    wb = Workbench(setup, work)
    L = wb.num_blocks
    groups: dict[str, list[list[ScheduleSpec]]] = {
        "errors": [[spec] for spec in error_specs(L, sparsity)],
        "sweep": [[spec] for spec in sweep_specs(L, sparsity)],
        "compare": compare_groups(L, sparsity),
    }
    about: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python scripts/ship_results.py", *(sys.argv[1:] if argv is None else argv)]),
        "code_version": CODE_VERSION,
        "settings": {**setup.describe(), "sparsity": sparsity},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "views": dict(before.about.get("views", {})),  # views not run again keep their counts
    }
    keys: set[str] = set(before.rows)
    started = time.perf_counter()

    def shipped(view: str, cells: int, total: int) -> None:
        about["views"][view] = {"cells": cells, "of": total, "minutes": round((time.perf_counter() - started) / 60, 1)}
        log(f"{view}: {cells}/{total} shipped; {export(work, keys, args.out, about)} rows in {args.out}")

    if "dense" in views:
        wb.dense_metrics()
        keys.update(keys_of(wb))
        shipped("dense", 1, 1)
    if "lesson" in views:
        uniform = ScheduleSpec("uniform", sparsity)
        budget = lesson.budget(wb, uniform, lambda fraction, message: None)
        keys.add(lesson.lesson_key(wb, lesson.BUDGET_KIND, uniform))
        log(f"lesson budget: {budget.seconds:.0f} s")
        shipped("lesson", 1, 2 + len(LESSON_PEERS))
        lesson.dense_input_errors(wb, uniform)
        keys.add(lesson.lesson_key(wb, lesson.DENSE_INPUT_KIND, uniform))
        shipped("lesson", 2, 2 + len(LESSON_PEERS))
        for index, name in enumerate(LESSON_PEERS):
            for spec in methods.sweep_grid(name, L, sparsity, published.GRID_STEP):
                point = wb.run(spec)
                log(f"lesson {spec.describe()}: ppl {point.perplexity:.4f}{' (stored)' if point.cached else ''}")
                keys.update(keys_of(wb, spec))
            shipped("lesson", 3 + index, 2 + len(LESSON_PEERS))
    for view in ("errors", "sweep", "compare"):
        if view not in views:
            continue
        cells = groups[view]
        for index, cell in enumerate(cells):
            for spec in cell:
                point = wb.run(spec)
                log(f"{view} {spec.describe()}: ppl {point.perplexity:.4f}{' (stored)' if point.cached else ''}")
            keys.update(key for spec in cell for key in keys_of(wb, spec))
            shipped(view, index + 1, len(cells))
    size = args.out.stat().st_size
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min: {args.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
