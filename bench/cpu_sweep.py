"""CPU benchmark on the embedded model: a beta sweep in cached and sequential modes, the paper's
structure as a baseline, and the forward-pass floor, all measured in one run.

Each part runs in its own process (so each peak RSS is its own), one after the other:
floor (start) -> cached sweep -> sequential sweep -> paper-structure baseline -> floor (end).
The floor passes are measured at the start and at the end; the faster of each is used (the machine
is shared, so a slow pass would flatter the ratios). See bench/common.py for what the floor counts.

    .venv/bin/python bench/cpu_sweep.py                 # S = 0.7, beta step 0.005: 5 points
    .venv/bin/python bench/cpu_sweep.py --step 0.002    # the full default grid: 11 points
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

HERE = Path(__file__).resolve().parent


def make_setup(args: argparse.Namespace, mode: str):
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup
    from atp_viz.pruning.pruners import PruneConfig

    return Setup(
        model=args.model,
        corpus=args.corpus,
        calib=CalibConfig(args.calib_samples, args.calib_seqlen),
        evaluation=EvalConfig(args.eval_windows, args.eval_seqlen, args.eval_batch),
        prune=PruneConfig(args.pruner),
        calibration=mode,
        batch_size=args.batch,
        splits=("evaluation",),
    )  # one evaluation pass per point, as the paper


def specs_for(args: argparse.Namespace, num_blocks: int):
    from atp_viz.experiment.workbench import sweep_specs

    return sweep_specs(num_blocks, args.sparsity, args.step)


def worker_floor(args: argparse.Namespace) -> dict:
    import torch

    from atp_viz.experiment.workbench import Workbench

    wb = Workbench(make_setup(args, "sequential"))
    passes = common.floor_passes(
        wb.loaded_model.model,
        wb.loaded_model.blocks,
        wb.block_calls(),
        wb.windows("evaluation"),
        args.eval_batch,
        args.batch,
        torch.device("cpu"),
    )
    return {
        **passes,
        "calib_tokens": wb.windows("calibration").numel(),
        "eval_tokens": wb.windows("evaluation").numel(),
        "num_blocks": wb.num_blocks,
    }


def worker_sweep(args: argparse.Namespace, mode: str) -> dict:
    from atp_viz.experiment.workbench import Workbench
    from atp_viz.measure.points import best_point

    t0 = time.perf_counter()
    wb = Workbench(make_setup(args, mode))
    if mode == "cached":
        wb.stats_file().unlink(missing_ok=True)  # cold: the dense statistics pass is part of the sweep
    setup_s = time.perf_counter() - t0
    specs = specs_for(args, wb.num_blocks)
    points = list(wb.run_many(specs))
    sweep_s = time.perf_counter() - t0
    best = best_point(points[1:], split=wb.setup.select_split)
    trajectory = getattr(wb.calibration, "trajectory", None)
    return {
        "setup_s": setup_s,
        "sweep_s": sweep_s,
        "per_point_s": [p.wall_time for p in points],
        "beta": [p.beta for p in points],
        "perplexity": [p.perplexity for p in points],
        "achieved_sparsity": [p.achieved_sparsity for p in points],
        "best_beta": best.beta,
        "best_perplexity": best.perplexity,
        "trajectory_mib": trajectory.nbytes() / 2**20
        if (trajectory := getattr(wb.calibration, "trajectory", None))
        else None,
    }


def tokens(tokenizer: Any, text: str) -> Any:
    """``text`` tokenized from scratch (the paper's structure tokenizes again for every beta)."""
    import torch

    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def worker_baseline(args: argparse.Namespace) -> dict:
    """The paper's structure: per beta a fresh model load, fresh tokenization, calibration, prune, eval."""

    from atp_viz.measure.perplexity import perplexity
    from atp_viz.models import data
    from atp_viz.models.data import calibration_windows, evaluation_windows, load_corpus
    from atp_viz.models.loading import load_model
    from atp_viz.pruning.pruners import get_pruner
    from atp_viz.schedules.methods import build_schedule

    setup = make_setup(args, "sequential")
    t0 = time.perf_counter()
    specs = None
    rows = []
    for index in range(10**6):
        t = time.perf_counter()
        loaded = load_model(setup.model, setup.device, setup.dtype)
        t_load = time.perf_counter() - t
        if specs is None:
            specs = specs_for(args, loaded.num_blocks)
        if index >= len(specs):
            break
        spec = specs[index]
        t = time.perf_counter()
        corpus = load_corpus(setup.corpus)
        calib_ids = calibration_windows(
            tokens(loaded.tokenizer, corpus.calibration_text), setup.calib.samples, setup.calib.seqlen, setup.calib.seed
        )
        eval_ids = evaluation_windows(
            tokens(loaded.tokenizer, corpus.evaluation_text), setup.evaluation.windows, setup.evaluation.seqlen
        )
        t_data = time.perf_counter() - t
        t = time.perf_counter()
        rates = build_schedule(spec, loaded.num_blocks)
        calls = common.capture_block_calls(loaded.model, loaded.blocks, calib_ids, setup.batch_size)
        common.paper_prune(
            loaded.blocks, calls, rates, get_pruner(setup.prune.pruner), setup.prune.nm, setup.batch_size
        )
        t_prune = time.perf_counter() - t
        t = time.perf_counter()
        ppl = perplexity(loaded.model, eval_ids, setup.evaluation.batch_size)
        t_eval = time.perf_counter() - t
        rows.append(
            {
                "beta": float(spec.get("beta", 0.0)),
                "perplexity": ppl,
                "load_s": t_load,
                "data_s": t_data,
                "calibrate_prune_s": t_prune,
                "eval_s": t_eval,
            }
        )
        del loaded, calls
        data._TOKEN_CACHE.clear()
    total = time.perf_counter() - t0
    return {
        "sweep_s": total,
        "points": rows,
        "perplexity": [r["perplexity"] for r in rows],
        "beta": [r["beta"] for r in rows],
    }


def run_worker(args: argparse.Namespace, part: str) -> dict:
    out = HERE / "results" / f".cpu_{part}.json"
    cmd = [sys.executable, __file__, "--worker", part, "--out", str(out), *args.passthrough]
    print(f"[{datetime.datetime.now():%H:%M:%S}] {part} ...", flush=True)
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    print(
        f"[{datetime.datetime.now():%H:%M:%S}] {part}: {result.get('sweep_s', result.get('eval_pass_s', 0)):.1f} "
        f"s, peak RSS {result['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    return result


def orchestrate(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    parts = {"floor_start": run_worker(args, "floor")}
    for mode in args.modes:
        parts[mode] = run_worker(args, mode)
    parts["floor_end"] = run_worker(args, "floor")
    eval_pass = min(parts["floor_start"]["eval_pass_s"], parts["floor_end"]["eval_pass_s"])
    calib_pass = min(parts["floor_start"]["calib_pass_s"], parts["floor_end"]["calib_pass_s"])
    ref = parts.get("cached") or parts.get("sequential") or parts["baseline"]
    points = len(ref["perplexity"])
    fl = common.floors(points, eval_pass, calib_pass)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "settings": vars(args) | {"passthrough": None, "modes": args.modes},
        "points": points,
        "eval_pass_s": eval_pass,
        "calib_pass_s": calib_pass,
        **fl,
        "parts": parts,
        "total_s": time.perf_counter() - started,
    }
    print(
        f"\n{points}-point sweep (S={args.sparsity}, beta step {args.step}), {args.pruner}, calibration "
        f"{args.calib_samples}x{args.calib_seqlen}, evaluation {args.eval_windows}x{args.eval_seqlen}, "
        f"{report['machine']}, {report['date']}"
    )
    print(
        f"dense passes (faster of start/end): evaluation {eval_pass:.1f} s, calibration {calib_pass:.1f} s; "
        f"two-pass floor (paper loop: 2 calibration passes per point) {fl['two_pass_floor_s']:.0f} s"
    )
    print(
        f"{'run':<12}{'time s':>9}{'floor s':>9}{'/floor':>8}{'baseline/run':>14}{'peak RSS MiB':>14}"
        f"{'best beta':>11}{'best ppl':>10}{'uniform ppl':>13}"
    )
    base = parts.get("baseline")
    for name in args.modes:
        row = parts[name]
        floor = fl["floor_cached_s"] if name == "cached" else fl["floor_sequential_s"]
        row["floor_s"], row["ratio_to_floor"] = floor, row["sweep_s"] / floor
        row["baseline_over_run"] = base["sweep_s"] / row["sweep_s"] if base else None
        ppl, betas = row["perplexity"], row["beta"]
        grid = [k for k in range(len(betas)) if betas[k] > 0] or list(range(len(betas)))
        best = min(grid, key=lambda k: ppl[k])
        row["best_beta"], row["best_perplexity"] = betas[best], ppl[best]
        vs = f"{row['baseline_over_run']:.2f}" if row["baseline_over_run"] else "-"
        print(
            f"{name:<12}{row['sweep_s']:>9.0f}{floor:>9.0f}{row['ratio_to_floor']:>8.2f}{vs:>14}{row['peak_rss_mib']:>14.0f}{betas[best]:>11.3f}{ppl[best]:>10.1f}{ppl[0]:>13.1f}"
        )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="wiki-summaries")
    parser.add_argument("--pruner", default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument(
        "--step", type=float, default=0.005, help="beta grid step (default %(default)s; the product's default is 0.002)"
    )
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=12)
    parser.add_argument("--eval-seqlen", type=int, default=1024)
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="calibration windows per block call")
    parser.add_argument(
        "--modes", default="cached,sequential,baseline", help="runs besides the floor (default %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=HERE / "results" / "cpu_sweep.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m] if isinstance(args.modes, str) else args.modes
    args.passthrough = [a for a in sys.argv[1:]]
    if args.worker:
        part = args.worker
        result = (
            worker_floor(args)
            if part == "floor"
            else worker_baseline(args)
            if part == "baseline"
            else worker_sweep(args, part)
        )
        result["peak_rss_mib"] = common.peak_rss_mb()
        args.out.write_text(json.dumps(result))
        return 0
    report = orchestrate(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report["settings"]["json"] = str(args.json)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
