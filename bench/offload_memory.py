"""Peak host memory with and without --offload on the embedded model (CPU), and the same points.

Each run is its own child process (peak RSS = the child's ru_maxrss, which counts every resident page,
memory-mapped weight files included): the dense metrics and two points (uniform and ATP at S = 0.5,
Wanda) through the project's Workbench, in-memory and offloaded, in both calibration modes. The parent
checks that the points are identical (rates, per-block sparsity and errors, perplexities) and writes
bench/results/offload_memory.json.

    python bench/offload_memory.py                     # about 6 minutes on a 2-core CPU
    python bench/offload_memory.py --modes cached --calib 4x256 --eval 2x256
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SPARSITY, BETA = 0.5, 0.01


def shape(text: str) -> tuple[int, int]:
    count, length = text.lower().split("x")
    return int(count), int(length)


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process: load, dense metrics, two points; peak RSS at each stage."""
    import torch

    torch.set_num_threads(args.threads)
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup, Workbench
    from atp_viz.schedules.methods import ScheduleSpec

    def rss() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)

    (calib_n, calib_t), (eval_n, eval_t) = args.calib, args.eval
    setup = Setup(
        model=args.model,
        calib=CalibConfig(calib_n, calib_t, 0),
        evaluation=EvalConfig(eval_n, eval_t, batch_size=args.eval_batch),
        calibration=args.calibration,
        batch_size=args.batch,
        offload=args.offload,
    )
    started = time.perf_counter()
    wb = Workbench(setup, store=None)
    loaded_rss = rss()
    dense = wb.dense_metrics()
    points = [wb.run(ScheduleSpec("uniform", SPARSITY)), wb.run(ScheduleSpec("atp", SPARSITY, beta=BETA))]
    return {
        "offload": args.offload,
        "calibration": args.calibration,
        "peak_rss_mib": rss(),
        "peak_rss_after_load_mib": loaded_rss,
        "seconds": time.perf_counter() - started,
        "dense": dense,
        "points": [
            {
                "method": p.method,
                "metrics": p.metrics,
                "rates": p.rates.tolist(),
                "layer_sparsity": p.layer_sparsity.tolist(),
                "cumulative_error": p.cumulative_error.tolist(),
                "local_error": p.local_error.tolist(),
            }
            for p in points
        ],
    }


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Identical floats (NaN equal to NaN: cached mode measures no errors)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--modes", default="sequential,cached", help="calibration modes (default %(default)s)")
    parser.add_argument("--calib", type=shape, default=(8, 512), help="calibration windows x tokens (default 8x512)")
    parser.add_argument("--eval", type=shape, default=(4, 512), help="windows x tokens per split (default 4x512)")
    parser.add_argument("--batch", type=int, default=4, help="calibration windows per block call")
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "offload_memory.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calibration", default="sequential", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    # every child gets a fresh cache (the cached mode's statistics file is recomputed, not read from a
    # sibling run) that reuses the dequantized model folder
    from atp_viz.models.loading import cache_dir

    runs: list[dict[str, Any]] = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        for offload in (False, True):
            with tempfile.TemporaryDirectory(prefix="atp-viz-offload-bench-") as cache:
                (Path(cache) / "models").symlink_to(cache_dir() / "models")
                command = [sys.executable, __file__, "--child", "--calibration", mode, "--model", args.model]
                command += ["--calib", "x".join(map(str, args.calib)), "--eval", "x".join(map(str, args.eval))]
                command += ["--batch", str(args.batch), "--eval-batch", str(args.eval_batch)]
                command += ["--threads", str(args.threads)] + (["--offload"] if offload else [])
                env = {**os.environ, "ATP_VIZ_CACHE": cache, "PYTHONPATH": str(ROOT)}
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
                row = runs[-1]
                rss = f"peak RSS {row['peak_rss_mib']:7.0f} MiB (after load {row['peak_rss_after_load_mib']:5.0f})"
                print(f"{mode:<11} offload={offload!s:<6} {rss}, {row['seconds']:6.1f} s", flush=True)
    table = []
    for mode in dict.fromkeys(r["calibration"] for r in runs):
        memory, offloaded = (
            next(r for r in runs if r["calibration"] == mode and r["offload"] is o) for o in (False, True)
        )
        table.append(
            {
                "calibration": mode,
                "in_memory_peak_rss_mib": memory["peak_rss_mib"],
                "offload_peak_rss_mib": offloaded["peak_rss_mib"],
                "rss_ratio": offloaded["peak_rss_mib"] / memory["peak_rss_mib"],
                "in_memory_s": memory["seconds"],
                "offload_s": offloaded["seconds"],
                "identical": same(memory["points"], offloaded["points"]) and same(memory["dense"], offloaded["dense"]),
            }
        )
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/offload_memory.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "settings": {
            "calib": args.calib,
            "eval_per_split": args.eval,
            "batch": args.batch,
            "eval_batch": args.eval_batch,
            "threads": args.threads,
            "sparsity": SPARSITY,
            "beta": BETA,
            "pruner": "wanda",
            "dtype": "float32",
        },
        "table": table,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    for row in table:
        rss = f"{row['in_memory_peak_rss_mib']:.0f} -> {row['offload_peak_rss_mib']:.0f}"
        print(
            f"{row['calibration']:<11} peak RSS {rss} "
            f"MiB (x{row['rss_ratio']:.2f}), {row['in_memory_s']:.0f} s -> {row['offload_s']:.0f} s, "
            f"identical points: {row['identical']}"
        )
    return 0 if all(row["identical"] for row in table) else 1


if __name__ == "__main__":
    sys.exit(main())
