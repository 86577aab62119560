"""The answers of the lesson plan (docs/teaching.md), read from the shipped results exactly as the
Lesson page reads them (a ``Workbench`` at the dashboard defaults; nothing is computed: a missing result is
reported as missing), written to docs/results/lesson_answers.json.

    .venv/bin/python scripts/lesson_answers.py [--out docs/results/lesson_answers.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from atp_viz.dashboard import figures, ui  # noqa: E402
from atp_viz.experiment import lesson  # noqa: E402
from atp_viz.experiment.shipped import ShippedResults  # noqa: E402
from atp_viz.experiment.workbench import Workbench, compare_cells, compare_rows, summarize_sweep, sweep_specs  # noqa: E402
from atp_viz.store import to_jsonable  # noqa: E402

PEERS = ("uniform", "atp", "owl", "alphapruning", "dlp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "lesson_answers.json")
    args = parser.parse_args()
    for name in (ui.ENV_MODEL, ui.ENV_CORPUS, ui.ENV_WINDOWS):
        os.environ.pop(name, None)
    values = ui.defaults()
    setup, S = ui.setup_of(values), float(values["sparsity"])  # type: ignore[arg-type]
    wb = Workbench(setup, None, shipped=ShippedResults())  # the shipped results only: what a fresh install shows
    L = wb.num_blocks
    specs = sweep_specs(L, S)
    points = [wb.stored(spec) for spec in specs]
    uniform, base = specs[0], points[0]
    out: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/lesson_answers.py",
        "settings": {**setup.describe(), "sparsity": S},
    }
    if base is not None:
        cum = base.cumulative_error
        out["uniform"] = {
            "perplexity": base.perplexity,
            "cumulative_error": cum.tolist(),
            "local_error_sequential": base.local_error.tolist(),
            "growth_last_over_first": figures.last_first_ratio(cum),
            "staircase_steps": lesson.jumps(cum),
            "largest_after_block": int(np.argmax(cum)),
            "text": lesson.curve_text(cum),
        }
    out["atp"] = [
        {
            "beta": float(spec.get("beta")),
            "perplexity_evaluation": p.perplexity,
            "perplexity_validation": p.value("perplexity", "validation"),
            "last_block_error": float(p.cumulative_error[-1]),
            "last_over_first": figures.last_first_ratio(p.cumulative_error),
        }
        for spec, p in zip(specs[1:], points[1:])
        if p is not None
    ]
    summary = summarize_sweep(specs, {spec: [p] for spec, p in zip(specs, points) if p is not None})
    if summary.best is not None:
        out["best_beta"] = {"beta": summary.betas[summary.best], "chosen_on": "validation",
                            "evaluation_perplexity": summary.evaluation[summary.best].mean}  # fmt: skip
    cells = compare_cells(L, PEERS, [S])
    found = {spec: [p] for cell in cells for spec in cell.specs if (p := wb.stored(spec)) is not None}
    out["methods"] = [
        {"method": r["label"], "perplexity": r["perplexity"], "points": r["points"]} for r in compare_rows(cells, found)
    ]
    out["methods_missing"] = [c.method for c in cells if not any(s in found for s in c.specs)]
    budget = lesson.stored_budget(wb, uniform)
    if budget is not None and base is not None:
        joint = float(base.cumulative_error_abs[-1])
        shares = budget.shares(joint)
        out["budget"] = {
            "table": lesson.budget_table(budget, joint),
            "shares_sum": float(shares.sum()),
            "largest": [int(i) for i in np.argsort(-shares)[:3]],
            "norm_jumps_squared": lesson.norm_jumps(budget.dense_norm),
            "seconds": budget.seconds,
            "text": lesson.budget_text(budget, joint),
        }
    dense_in = lesson.stored_dense_input(wb, uniform)
    if dense_in is not None and base is not None:
        errors = lesson.errors_of(base)
        assert errors is not None
        out["dense_inputs"] = {
            "cumulative_error": dense_in.cumulative_error.tolist(),
            "text": lesson.variants_text(errors, dense_in),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(to_jsonable(out), indent=1, allow_nan=True) + "\n")
    print(json.dumps({k: v for k, v in to_jsonable(out).items() if k not in ("budget",)}, indent=1)[:6000])
    if "budget" in out:
        for row in out["budget"]["table"]:
            print(" ".join(f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v) for v in row.values()))
        print(out["budget"]["text"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
