"""Zero-shot accuracy of uniform, OWL, AlphaPruning and ATP (at a given beta) next to the dense model.

Each schedule is pruned as ``atp-viz compare`` prunes it (same settings, so its point is read back
from the store when the compare run stored it) and scored on the evaluation items of every task
(``--items`` seeded rows per task; the validation items are not scored here: nothing is selected).
Prints the paper's Table 1 shape and writes JSON::

    python bench/zeroshot_compare.py --sparsity 0.7 --beta 0.01 --items 30 --store /tmp/readme/results.sqlite
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Cell, Setup, Workbench, compare_rows, zeroshot_table
from atp_viz.measure.zeroshot import DEFAULT_TASKS, ZeroShotConfig
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--beta", type=float, required=True, help="ATP's beta (the best of its sweep, on validation)")
    parser.add_argument("--items", type=int, default=30, help="evaluation items per task")
    parser.add_argument("--calib", default="16x256", help="calibration windows x tokens")
    parser.add_argument("--eval", default="16x512", help="evaluation (and validation) windows x tokens")
    parser.add_argument("--calibration", default="sequential", help="sequential (default) or cached")
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    samples, seqlen = (int(x) for x in args.calib.split("x"))
    windows, eval_seqlen = (int(x) for x in args.eval.split("x"))
    setup = Setup(
        calib=CalibConfig(samples, seqlen),
        evaluation=EvalConfig(windows, eval_seqlen),
        metrics=("perplexity", "zeroshot"),
        zeroshot=ZeroShotConfig(DEFAULT_TASKS, args.items),
        splits=("evaluation",),  # reporting only: the schedules are given, nothing is chosen here
        calibration=args.calibration,
    )
    started = time.perf_counter()
    wb = Workbench(setup, ResultStore(args.store) if args.store else None)
    dense = wb.dense_metrics()
    specs = [
        ScheduleSpec("uniform", args.sparsity),
        ScheduleSpec("owl", args.sparsity),
        ScheduleSpec("alphapruning", args.sparsity),
        ScheduleSpec("atp", args.sparsity, beta=args.beta),
    ]
    found = {}
    for spec in specs:
        found[spec] = [wb.run(spec)]
        print(f"{spec.describe()}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    cells = [Cell(spec.method, args.sparsity, (spec,)) for spec in specs]
    rows = compare_rows(cells, found, select="evaluation", extra=("zeroshot",))
    table = zeroshot_table(rows, dense, setup.zeroshot.tasks)
    for line in table:
        cells_text = " ".join(f"{line[t]:5.1f}" for t in setup.zeroshot.tasks)
        print(f"{line['method']:<13} {cells_text}  mean {line['mean']:.1f} +- {line['stderr']:.1f}")
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
        "sparsity": args.sparsity,
        "beta": args.beta,
        "calibration": args.calibration,
        "items": args.items,
        "tasks": list(setup.zeroshot.tasks),
        "table": table,
        "perplexity": {str(r["label"]): r["perplexity"] for r in rows},
        "seconds": time.perf_counter() - started,
    }
    out = args.json or HERE / "results" / f"zeroshot_compare_s{args.sparsity:g}_{args.calibration}.json"
    out.write_text(json.dumps(report, indent=1, allow_nan=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
