"""Beyond one straight line (issue 12): beta x attention-MLP offset and beta x curvature p.

On the embedded model at one target sparsity (Wanda, cached calibration):
1. every cell of each 2-D grid on the validation split (calibration seed 0), each point stored as
   it finishes; cells on the paper's line (offset 0, p = 1) are ATP's own points;
2. the best cell of each grid off the paper's line and the best on it (both chosen on validation),
   under every seed of ``--seeds``, on both splits; reported on the evaluation split with the seed
   spread (``--seeds-only``: this step alone, from the cells stored so far).

Writes ``docs/results/profiles-s<S>.json`` with the date and the command. Rerunning reads every
stored point back; ``--report-only`` writes the JSON from what is stored, computing nothing.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/profiles.py --sparsity 0.7 --store /tmp/atp-profiles/results.sqlite
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_results  # noqa: E402

from atp_viz.config import CalibConfig, EvalConfig  # noqa: E402
from atp_viz.experiment.executors import run_seeds  # noqa: E402
from atp_viz.experiment.workbench import Setup, Workbench, stored_groups  # noqa: E402
from atp_viz.measure.metrics import VALIDATION  # noqa: E402
from atp_viz.measure.points import seed_spread  # noqa: E402
from atp_viz.models.loading import DEFAULT_MODEL  # noqa: E402
from atp_viz.pruning.pruners import PruneConfig  # noqa: E402
from atp_viz.store import ResultStore  # noqa: E402
from atp_viz.tuning import sweep2d  # noqa: E402

OUT_DIR = ROOT / "docs" / "results"
THREADS = 2
CALIB = CalibConfig(samples=16, seqlen=256, seed=0)
EVALUATION = EvalConfig(windows=16, seqlen=512)  # validation: the same count and length


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--betas", default="0.006,0.01", help="slopes of the offset grid (default %(default)s)")
    parser.add_argument("--power-betas", default="0.01", help="slopes of the curvature grid (default %(default)s)")
    parser.add_argument("--offsets", default="-0.1,-0.05,0,0.05", help="attention-MLP offsets")
    parser.add_argument("--powers", default="0.5,1,2", help="curvatures p")
    parser.add_argument("--seeds", default="0,1", help="calibration seeds for the chosen cells")
    parser.add_argument("--store", required=True)
    parser.add_argument("--report-only", action="store_true", help="write the JSON from the store, compute nothing")
    parser.add_argument("--seeds-only", action="store_true", help="skip the grids: only the chosen cells' seeds")
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    command = "HF_HUB_OFFLINE=1 .venv/bin/python " + shlex.join(["bench/profiles.py", *(argv or sys.argv[1:])])
    setup = Setup(
        model=args.model, calib=CALIB, evaluation=EVALUATION, prune=PruneConfig("wanda"), calibration="cached"
    )
    wb = Workbench(setup, ResultStore(args.store))
    started = time.monotonic()
    dense = wb.stored_dense_perplexity() if args.report_only else wb.dense_perplexity()
    L, S = wb.num_blocks, args.sparsity
    grids = {
        "offset": sweep2d.build_grid(sweep2d.AXES["offset"], L, S, floats(args.betas), floats(args.offsets)),
        "power": sweep2d.build_grid(sweep2d.AXES["power"], L, S, floats(args.power_betas), floats(args.powers)),
    }

    def show(seed: int, spec: Any, point: Any) -> None:
        values = ", ".join(f"{k} {v:.2f}" for k, v in sorted(point.metrics.items()) if k.endswith("perplexity"))
        print(f"seed {seed} {spec.describe()}: {values} ({'stored' if point.cached else f'{point.wall_time:.0f} s'})",
              flush=True)  # fmt: skip

    # 1. every cell on validation, seed 0
    if not (args.report_only or args.seeds_only):
        for grid in grids.values():
            sweep2d.run_grid(wb, grid, seeds[:1], splits=(VALIDATION,), on_point=show)
    # 2. the chosen cells under every seed, both splits
    chosen = []
    for grid in grids.values():
        summary = sweep2d.summarize(grid, stored_groups(wb, grid.specs(), seeds[:1], need=())[0])
        chosen += [grid.cells[c] for c in (summary.line_best, summary.off_best) if c is not None]
    chosen = list(dict.fromkeys(chosen))
    if not args.report_only:
        run_seeds(wb, seeds, chosen, on_point=show)
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "setup": wb.setup.describe(),
        "torch_threads": torch.get_num_threads(),
        "sparsity": args.sparsity,
        "num_blocks": wb.num_blocks,
        "dense_perplexity": dense,
        "seeds": seeds,
        "selected_on": "validation",
        "reported_on": "evaluation",
        "seconds_this_run": time.monotonic() - started,
        "grids": {},
    }
    for name, grid in grids.items():
        summary = sweep2d.summarize(grid, stored_groups(wb, grid.specs(), seeds, need=())[0])
        out["grids"][name] = {"axis": grid.axis.label} | summary.report()
        print(f"\n{grid.axis.label}: best {summary.cell(summary.best)}\n  line {summary.cell(summary.line_best)}"
              f"\n  off line {summary.cell(summary.off_best)}\n  within noise: {summary.within_noise}",
              flush=True)  # fmt: skip
    found = stored_groups(wb, chosen, seeds, need=())[0]
    out["chosen"] = [
        {"schedule": spec.describe(), "params": spec.params(), "seeds": len(points),
         "evaluation": seed_spread(points).mean, "evaluation_std": seed_spread(points).std,
         "validation": seed_spread(points, split=VALIDATION).mean,
         "validation_std": seed_spread(points, split=VALIDATION).std,
         "per_seed_evaluation": [p.perplexity for p in points],
         "linear_rates": points[0].linear_rates if points else {}, "rates": points[0].rates if points else []}
        for spec, points in found.items()
    ]  # fmt: skip
    write_results(Path(args.out_dir) / f"profiles-s{args.sparsity:g}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
