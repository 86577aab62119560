"""ATP's beta grid against searches over all per-block rates, at equal point budgets (issue 10).

For each target sparsity S and search seed: ATP's sweep (uniform + the grid betas, step 0.002) and
each sampler (TPE, CMA-ES, evolutionary) with the same number of points (default: the sweep's size),
every point a stored result (rerunning reads them back). Winners are chosen on validation perplexity
and reported on evaluation perplexity; monotonicity of each winner (Spearman of rate vs depth,
inversions). Writes ``docs/results/search-s<S>.json`` per sparsity, with the date and the command.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/search_vs_atp.py --sparsities 0.7,0.6 --seeds 0 \\
        --store /tmp/atp-search-bench/results.sqlite

``--report-only`` writes the JSON from what is stored (a run cut short) without running trials.
``--budgets 11,110`` adds budget-matched views of the same run: each search cut to its first N
trials (ATP's grid whole), the winners' evaluation perplexity measured where missing; a budget
larger than the shortest stored search is cut to it (the JSON says which budget was used).
"""

from __future__ import annotations

import argparse
import datetime
import math
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
from atp_viz.experiment.workbench import Setup, Workbench  # noqa: E402
from atp_viz.models.loading import DEFAULT_MODEL  # noqa: E402
from atp_viz.pruning.pruners import PruneConfig  # noqa: E402
from atp_viz.schedules import published  # noqa: E402
from atp_viz.search import space, study  # noqa: E402
from atp_viz.store import ResultStore  # noqa: E402

OUT_DIR = ROOT / "docs" / "results"
CALIB = CalibConfig(samples=16, seqlen=256, seed=0)
EVALUATION = EvalConfig(windows=16, seqlen=512)  # validation: the same count and length


def setup_for(model: str, evaluation: EvalConfig = EVALUATION) -> Setup:
    return Setup(model=model, calib=CALIB, evaluation=evaluation, prune=PruneConfig("wanda"), calibration="cached")


def table(comparison: study.Comparison) -> str:
    """Markdown rows: method, winner's validation / evaluation perplexity, seconds, Spearman, inversions."""
    lines = [
        "| method | trials | validation ppl | evaluation ppl | seconds | Spearman | inversions |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in comparison.rows():
        rho = "-" if math.isnan(row["spearman"]) else f"{row['spearman']:.2f}"
        lines.append(
            f"| {row['label']} | {row['trials']} | {row['validation_perplexity']:.2f} | "
            f"{row['evaluation_perplexity']:.2f} | {row['seconds']:.0f} | {rho} | {row['inversions']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--sparsities", default="0.7,0.6", help="comma-separated (default %(default)s)")
    parser.add_argument("--samplers", default=",".join(space.SAMPLERS), help="comma-separated (default: all)")
    parser.add_argument("--trials", type=int, default=None, help="points per search (default: ATP's sweep size)")
    parser.add_argument("--step", type=float, default=published.GRID_STEP, help="ATP grid step (default %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated search seeds (default %(default)s)")
    parser.add_argument(
        "--evaluate",
        default="winners",
        choices=("all", "winners"),
        help="evaluation split for every point, or for winners only (default; half the cost)",
    )
    parser.add_argument("--store", required=True, help="results store (points, trials; journals beside it)")
    parser.add_argument("--report-only", action="store_true", help="write the JSON from the store, compute nothing")
    parser.add_argument("--windows", type=int, default=EVALUATION.windows, help="evaluation windows (%(default)s)")
    parser.add_argument("--val-windows", type=int, default=None, help="validation windows (default: --windows)")
    parser.add_argument("--seqlen", type=int, default=EVALUATION.seqlen, help="window length (%(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--budgets", default="", help="comma-separated budget-matched views, e.g. 11,110")
    parser.add_argument("--tag", default="", help="suffix of the JSON file name, e.g. x10")
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    evaluation = EvalConfig(windows=args.windows, seqlen=args.seqlen, validation_windows=args.val_windows)
    sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    samplers = [space.check_sampler(s.strip()) for s in args.samplers.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    command = "HF_HUB_OFFLINE=1 .venv/bin/python " + shlex.join(["bench/search_vs_atp.py", *(argv or sys.argv[1:])])

    wb = Workbench(setup_for(args.model, evaluation), ResultStore(args.store))
    dense = wb.stored_dense_perplexity() if args.report_only else wb.dense_perplexity()
    for sparsity in sparsities:
        runs: list[dict[str, Any]] = []
        for seed in seeds:
            started = time.monotonic()
            if args.report_only:
                comparison = study.stored_comparison(wb, sparsity, samplers, args.trials, seed=seed, step=args.step)
            else:
                comparison = study.versus_atp(
                    wb,
                    sparsity,
                    samplers,
                    args.trials,
                    seed=seed,
                    step=args.step,
                    every_split=args.evaluate == "all",
                    on_trial=lambda m, t: print(
                        f"S={sparsity:g} seed {seed} {m} trial {t.number}: validation "
                        f"{t.validation:.3f} at {t.seconds:.0f} s",
                        flush=True,
                    ),
                )
            print(
                f"\nS = {sparsity:g}, search seed {seed}, budget {comparison.budget} points "
                f"({time.monotonic() - started:.0f} s this run)\n{table(comparison)}\n",
                flush=True,
            )
            views = {}
            shortest = min(len(r.trials) for name, r in comparison.methods.items() if name != study.ATP)
            for asked in [int(b) for b in args.budgets.split(",") if b.strip()]:
                view = study.completed(wb, comparison.at_budget(min(asked, shortest)))
                print(f"budget {view.budget} (asked {asked})\n{table(view)}\n", flush=True)
                views[str(asked)] = {**view.summary(), "table": table(view)}
            runs.append({"search_seed": seed, **comparison.summary(), "table": table(comparison), "budgets": views})
        out = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "setup": wb.setup.describe(),
            "evaluate": args.evaluate,
            "atp_step": args.step,
            "torch_threads": torch.get_num_threads(),
            "dense_perplexity": dense,
            "num_blocks": wb.num_blocks,
            "runs": runs,
        }
        tag = f"-{args.tag}" if args.tag else ""
        write_results(Path(args.out_dir) / f"search-s{sparsity:g}{tag}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
