"""Time to the best beta: find-best on cached statistics vs the paper's structure over the whole grid,
and the Compare page's fast default from an empty store; all measured in one run.

Parts, each in its own fresh process, one after the other:
1. find-best: one Workbench (cached calibration, empty results store, the dense statistics file
   deleted so its pass is counted), then ``findbest.find_best`` at every S (validation selects,
   the chosen beta alone is measured on the evaluation split). Timed from before the model load.
2. compare: the Compare page's fast default from an empty store (dashboard settings 8 x 256 / 8 x 256,
   every comparable method x S = 0.5, 0.6, 0.7, 0.8, cached calibration, ``findbest.fast_compare``),
   timed from before the model load and after it.
3. baseline: the paper's structure (bench/cpu_sweep.py's): per beta of the whole grid at every S a
   fresh model load, fresh tokenization, capture, the Wanda loop (statistics on the pruned input,
   prune, re-run), one evaluation pass; its best beta per S is the full sequential grid's best.

    .venv/bin/python bench/find_best.py                    # S = 0.5, 0.6, 0.7, step 0.002
    .venv/bin/python bench/find_best.py --parts findbest,compare
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository on sys.path)

HERE = Path(__file__).resolve().parent
COMPARE_SPARSITIES = (0.5, 0.6, 0.7, 0.8)  # the Compare page's default


def make_setup(args: argparse.Namespace, mode: str, splits: tuple[str, ...] = ("validation", "evaluation")) -> Any:
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup
    from atp_viz.pruning.pruners import PruneConfig

    return Setup(
        model=args.model,
        corpus=args.corpus,
        calib=CalibConfig(args.calib_samples, args.calib_seqlen),
        evaluation=EvalConfig(args.eval_windows, args.eval_seqlen, args.eval_batch, args.val_windows),
        prune=PruneConfig(args.pruner),
        calibration=mode,
        batch_size=args.batch,
        splits=splits,
    )


def worker_findbest(args: argparse.Namespace) -> dict:
    import torch

    from atp_viz.experiment.workbench import Workbench
    from atp_viz.store import ResultStore
    from atp_viz.tuning.findbest import atp_grid, find_best

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        wb = Workbench(make_setup(args, "cached"), ResultStore(Path(folder) / "results.sqlite"))
        wb.stats_file().unlink(missing_ok=True)  # cold: the dense statistics pass is part of the time
        load_s = time.perf_counter() - t0
        rows = []
        for sparsity in args.sparsities:
            started = time.perf_counter()
            search = find_best(wb, atp_grid(wb.num_blocks, sparsity, args.step))
            assert search is not None  # computing, never a stored-only replay
            rows.append({"sparsity": sparsity, "seconds": time.perf_counter() - started, **search.summary()})
            save_partial(args, {"total_s": time.perf_counter() - t0, "rows": rows})
            print(f"  find-best S={sparsity}: beta {rows[-1]['chosen']} after {rows[-1]['evaluations']}/"
                  f"{rows[-1]['grid_points']} points, {rows[-1]['seconds']:.0f} s", flush=True)  # fmt: skip
        return {"total_s": time.perf_counter() - t0, "load_s": load_s, "rows": rows, "threads": args.threads}


def worker_compare(args: argparse.Namespace) -> dict:
    import torch

    from atp_viz.dashboard import ui
    from atp_viz.experiment.workbench import Workbench, compare_cells, compare_rows
    from atp_viz.schedules import methods
    from atp_viz.store import ResultStore
    from atp_viz.tuning.findbest import fast_compare, fast_setup

    torch.set_num_threads(args.threads)
    # the sidebar's defaults, as a first visit sees them
    dashboard = ui.setup_of({**ui.defaults(), "model": args.model, "corpus": args.corpus})
    setup = fast_setup(dashboard)
    names = methods.method_names(comparable=True)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        wb = Workbench(setup, ResultStore(Path(folder) / "results.sqlite"))
        wb.stats_file().unlink(missing_ok=True)
        load_s = time.perf_counter() - t0
        dense = wb.dense_perplexity()  # the sidebar shows it before the page runs
        cells = compare_cells(wb.num_blocks, names, COMPARE_SPARSITIES)
        result = fast_compare(wb, cells)
        rows = compare_rows(cells, result.found)
        total = time.perf_counter() - t0
        computed = sum(len(points) for points in result.found.values())
        grid = sum(len(cell.specs) for cell in cells)
    return {
        "total_s": total,
        "load_s": load_s,
        "after_load_s": total - load_s,
        "dense_perplexity": dense,
        "methods": list(names),
        "sparsities": list(COMPARE_SPARSITIES),
        "settings": setup.describe(),
        "points_run": computed,
        "points_full_grid": grid,
        "rows": [{k: v for k, v in row.items() if k != "rates"} for row in rows],
        "threads": args.threads,
    }


def worker_baseline(args: argparse.Namespace) -> dict:
    """The paper's structure over the whole grid at every S (bench/cpu_sweep.py's baseline loop)."""
    import cpu_sweep
    import torch

    from atp_viz.measure.perplexity import perplexity
    from atp_viz.models import data
    from atp_viz.models.data import calibration_windows, evaluation_windows, load_corpus
    from atp_viz.models.loading import load_model
    from atp_viz.pruning.pruners import get_pruner
    from atp_viz.schedules.methods import build_schedule
    from atp_viz.tuning.findbest import atp_grid

    torch.set_num_threads(args.threads)
    setup = make_setup(args, "sequential", ("evaluation",))
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for sparsity in args.sparsities:
        index, specs = 0, None
        while specs is None or index < len(specs):
            t = time.perf_counter()
            loaded = load_model(setup.model, setup.device, setup.dtype)
            t_load = time.perf_counter() - t
            specs = specs or atp_grid(loaded.num_blocks, sparsity, args.step)
            spec = specs[index]
            t = time.perf_counter()
            corpus = load_corpus(setup.corpus)
            calib_ids = calibration_windows(cpu_sweep.tokens(loaded.tokenizer, corpus.calibration_text),
                                            setup.calib.samples, setup.calib.seqlen, setup.calib.seed)  # fmt: skip
            eval_ids = evaluation_windows(cpu_sweep.tokens(loaded.tokenizer, corpus.evaluation_text),
                                          setup.evaluation.windows, setup.evaluation.seqlen)  # fmt: skip
            t_data = time.perf_counter() - t
            t = time.perf_counter()
            rates = build_schedule(spec, loaded.num_blocks)
            calls = common.capture_block_calls(loaded.model, loaded.blocks, calib_ids, setup.batch_size)
            common.paper_prune(loaded.blocks, calls, rates, get_pruner(setup.prune.pruner), None, setup.batch_size)
            t_prune = time.perf_counter() - t
            t = time.perf_counter()
            ppl = perplexity(loaded.model, eval_ids, setup.evaluation.batch_size)
            t_eval = time.perf_counter() - t
            times = {"load_s": t_load, "data_s": t_data, "calibrate_prune_s": t_prune, "eval_s": t_eval}
            rows.append({"sparsity": sparsity, "beta": float(spec.get("beta")), "perplexity": ppl, **times})
            print(f"  baseline S={sparsity} beta={rows[-1]['beta']:.3f}: ppl {ppl:.2f}", flush=True)
            save_partial(args, {"total_s": time.perf_counter() - t0, "points": rows})
            del loaded, calls
            data._TOKEN_CACHE.clear()
            index += 1
    return {"total_s": time.perf_counter() - t0, "points": rows, "threads": args.threads}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads): less sensitive than wall time to other jobs
    on a shared machine, which slow a part down without adding to its CPU time (mostly)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def save_partial(args: argparse.Namespace, result: dict) -> None:
    """The part's result so far (a long part that is stopped still leaves its finished points)."""
    if args.out is not None:
        args.out.with_suffix(".partial").write_text(json.dumps(result | {"cpu_s": cpu_seconds()}, default=str))


def run_worker(args: argparse.Namespace, part: str) -> dict:
    out = HERE / "results" / f".find_best_{part}.json"
    cmd = [sys.executable, __file__, "--worker", part, "--out", str(out), *args.passthrough]
    print(f"[{datetime.datetime.now():%H:%M:%S}] {part} ...", flush=True)
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    out.unlink()
    print(f"[{datetime.datetime.now():%H:%M:%S}] {part}: {result['total_s']:.1f} s", flush=True)
    out.with_suffix(".partial").unlink(missing_ok=True)
    return result


def summarize(args: argparse.Namespace, parts: dict[str, dict]) -> dict[str, Any]:
    """Per S: the chosen beta and the full grid's best, both on the sequential grid's perplexities too."""
    out: dict[str, Any] = {}
    if "findbest" in parts and "baseline" in parts:
        base, fast = parts["baseline"], parts["findbest"]
        out["speedup"] = base["total_s"] / fast["total_s"]
        out["speedup_cpu"] = base["cpu_s"] / fast["cpu_s"]
        per_s = []
        for row in fast["rows"]:
            grid = [p for p in base["points"] if p["sparsity"] == row["sparsity"]]
            best = min(grid, key=lambda p: p["perplexity"])
            at_chosen = next((p["perplexity"] for p in grid if abs(p["beta"] - row["chosen"]) < 1e-9), None)
            steps = round(abs(best["beta"] - row["chosen"]) / args.step)
            per_s.append({
                "sparsity": row["sparsity"], "chosen_beta": row["chosen"], "evaluations": row["evaluations"],
                "grid_points": row["grid_points"], "chosen_cached_perplexity": row["chosen_perplexity"],
                "chosen_sequential_perplexity": at_chosen, "grid_best_beta": best["beta"],
                "grid_best_perplexity": best["perplexity"], "steps_apart": steps, "within_one_step": steps <= 1,
            })  # fmt: skip
        out["per_sparsity"] = per_s
    return out


def orchestrate(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    parts: dict[str, dict] = {}
    for part in args.parts:  # each finished part is on disk at once: a run stopped later keeps it
        parts[part] = run_worker(args, part)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"finished": False, "parts": parts}, indent=2, default=str))
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "load_average_1m_at_end": os.getloadavg()[0],  # other jobs on the shared machine
        "settings": {k: v for k, v in vars(args).items() if k not in ("passthrough", "worker", "out")},
        "parts": parts,
        **summarize(args, parts),
        "total_s": time.perf_counter() - started,
    }
    print(f"\nfind-best vs the paper-structure grid ({args.pruner}, calibration {args.calib_samples}x"
          f"{args.calib_seqlen}, validation {args.val_windows}x{args.eval_seqlen}, evaluation {args.eval_windows}x"
          f"{args.eval_seqlen}, step {args.step}, {args.threads} threads, {report['machine']}, "
          f"{report['date']})")  # fmt: skip
    for name, part in parts.items():
        print(f"  {name}: {part['total_s']:.0f} s wall, {part['cpu_s']:.0f} s CPU")
    if "speedup" in report:
        print(f"  baseline / find-best: {report['speedup']:.2f}x wall, {report['speedup_cpu']:.2f}x CPU time")
        for row in report["per_sparsity"]:
            print(f"  S={row['sparsity']}: chosen {row['chosen_beta']:.3f} ({row['evaluations']}/{row['grid_points']} "
                  f"points; ppl cached {row['chosen_cached_perplexity']:.2f}, sequential "
                  f"{row['chosen_sequential_perplexity']}) vs grid best {row['grid_best_beta']:.3f} "
                  f"(sequential ppl {row['grid_best_perplexity']:.2f}): "
                  f"{row['steps_apart']} step(s) apart")  # fmt: skip
    if "compare" in parts:
        c = parts["compare"]
        print(f"  compare default: {c['total_s']:.0f} s from an empty store ({c['after_load_s']:.0f} s after the "
              f"model load), {c['points_run']} points run (full grid: {c['points_full_grid']})")  # fmt: skip
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="wiki-summaries")
    parser.add_argument("--pruner", default="wanda")
    parser.add_argument("--sparsities", default="0.5,0.6,0.7")
    parser.add_argument("--step", type=float, default=0.002, help="beta grid step (the paper's, default %(default)s)")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--val-windows", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="calibration windows per block call")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every part")
    parser.add_argument("--parts", default="findbest,compare,baseline")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "find_best.json")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sparsities = (
        [float(s) for s in args.sparsities.split(",")] if isinstance(args.sparsities, str) else args.sparsities
    )
    args.parts = [p for p in args.parts.split(",") if p]
    args.passthrough = list(sys.argv[1:])
    if args.worker:
        worker = {"findbest": worker_findbest, "compare": worker_compare, "baseline": worker_baseline}[args.worker]
        result = worker(args)
        result["peak_rss_mib"] = common.peak_rss_mb()
        result["cpu_s"] = cpu_seconds()
        args.out.write_text(json.dumps(result, default=str))
        return 0
    report = orchestrate(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
