"""Ray executor on this CPU: 2 actors x 1 thread against 1 process x 2 threads, and Ray's fixed costs.

One run, on the embedded model (small windows, cached calibration and bf16 by default, so that it fits
the time and memory of a shared 2-core machine; Wanda, S = 0.7):
1. local: one process with ``torch.set_num_threads(2)`` runs the points one after another;
2. ray: a local Ray instance, 2 actors with 1 torch thread each run the same points (fresh store);
   the floats of every point are checked equal to the local run's.
Ray's fixed costs measured in the same run: starting the local Ray instance, starting the actors
(each loads the model: the same load a local run does once), and the per-point round trip (submit,
``ray.wait``, fetch) of a real point's result and rows to an idle actor that sends them straight back.

Projection (on paper, not measured): the 9-point LLaMA-2-7B-shape sequential sweep on 1, 8 and 64
GPUs, one Ray actor per GPU, from a single-GPU point time plus the overheads measured here. The point
time is read from ``bench/results/gpu_sweep.json`` when a GPU run wrote it; otherwise it is derived
from the measured 34.5k tok/s forward throughput (docs/benchmarks.md): per point one evaluation pass
and the paper loop's two calibration passes, plus the 0.37 s per-row sort.

    .venv/bin/python bench/ray_overhead.py          # writes bench/results/ray_overhead.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atp_viz.config import CalibConfig, EvalConfig  # noqa: E402
from atp_viz.experiment.executors import ExecutorConfig, LocalExecutor, PointJob, RayExecutor, WorkerError  # noqa: E402
from atp_viz.experiment.workbench import Setup, Workbench, sweep_specs  # noqa: E402
from atp_viz.store import ResultStore  # noqa: E402

THREADS = 2  # the local run's torch threads; each Ray actor gets THREADS // WORKERS
WORKERS = 2
SPARSITY = 0.7
# LLaMA-2-7B shape on one H200 (docs/benchmarks.md, offline-assets notes): measured forward throughput
GPU_TOKENS_PER_S = 34_500.0
GPU_SORT_S = 0.37  # per-row sort of all 224 block linears, measured
EVAL_TOKENS = 161 * 2048  # bench/gpu_sweep.py's evaluation per point
CALIB_TOKENS = 128 * 2048  # the paper's calibration
SWEEP_POINTS = 9
GPU_COUNTS = (1, 8, 64)


def gpu_point_seconds() -> tuple[float, str]:
    """Single-GPU seconds per sequential sweep point, and where the number comes from."""
    measured = ROOT / "bench" / "results" / "gpu_sweep.json"
    if measured.is_file():
        report = json.loads(measured.read_text())
        run = report.get("modes", {}).get("sequential")  # bench/gpu_sweep.py: modes -> {sweep_s, ...}
        if run and run.get("sweep_s") and report.get("points"):
            return float(run["sweep_s"]) / int(report["points"]), f"measured: {measured.relative_to(ROOT)}"
    evaluation, calibration = EVAL_TOKENS / GPU_TOKENS_PER_S, CALIB_TOKENS / GPU_TOKENS_PER_S
    return evaluation + 2 * calibration + GPU_SORT_S, (
        f"derived from the measured {GPU_TOKENS_PER_S:.0f} tok/s bf16 forward (no measured GPU sweep point yet): "
        f"evaluation {evaluation:.2f} s + 2 x calibration {calibration:.2f} s + sort {GPU_SORT_S} s"
    )


def round_trip(ray: Any, wb: Workbench, job: PointJob, point: Any, rounds: int = 20) -> float:
    """Seconds per submit + ``ray.wait`` + fetch of a real point and its rows, to an idle actor."""

    class Echo:
        def back(self, payload: object) -> object:
            return payload

    echo: Any = ray.remote(num_cpus=0)(Echo).remote()
    bench = wb.reseeded(job.seed)
    found = bench.metrics_of(point.key)[0]  # rows of the same size as a worker's metric rows
    payload: tuple[object, list[object]] = (point, [(k, "metric", {}, {"values": {k: v}}) for k, v in found.items()])
    ray.get(echo.back.remote(payload))
    started = time.perf_counter()
    for _ in range(rounds):
        ref = echo.back.remote(payload)
        ray.wait([ref], num_returns=1)
        ray.get(ref)
    return (time.perf_counter() - started) / rounds


def same_floats(a: dict, b: dict) -> bool:
    return all(a[k].metrics == b[k].metrics and (a[k].cumulative_error == b[k].cumulative_error).all() for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4, help="sweep points (uniform + betas; default 4)")
    parser.add_argument("--windows", type=int, default=4, help="calibration, validation and evaluation windows")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per window (default 128)")
    parser.add_argument("--calibration", default="cached", choices=("sequential", "cached"), help="(default cached)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"), help="(default bfloat16)")
    parser.add_argument("--model", default=None, help="model (default: the embedded smollm2-135m)")
    parser.add_argument("--corpus", default=None, help="corpus (default: the embedded one)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "ray_overhead.json")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    import ray

    setup = Setup(calib=CalibConfig(args.windows, args.tokens), evaluation=EvalConfig(args.windows, args.tokens, 4),
                  calibration=args.calibration, dtype=args.dtype)  # fmt: skip
    setup = replace(setup, model=args.model or setup.model, corpus=args.corpus or setup.corpus)
    folder = Path(tempfile.mkdtemp(prefix="atp-viz-ray-bench-"))
    started = time.perf_counter()
    wb = Workbench(setup, ResultStore(folder / "local.sqlite"))
    load_s = time.perf_counter() - started
    wb.dense_perplexity()  # the driver measures the dense model in both runs: not part of the comparison
    if setup.calibration == "cached":
        wb.dense_stats()  # dense statistics computed (or read) once, into the cache file the actors read too
    specs = sweep_specs(wb.num_blocks, SPARSITY, 0.005)[: args.points]
    jobs = [PointJob(setup.calib.seed, spec) for spec in specs]

    started = time.perf_counter()
    local = dict(LocalExecutor(ExecutorConfig()).points(wb, jobs))
    local_s = time.perf_counter() - started
    print(f"local: {len(jobs)} points, 1 process x {THREADS} threads: {local_s:.1f} s", flush=True)

    wb.store = ResultStore(folder / "ray.sqlite")
    started = time.perf_counter()
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start_s = time.perf_counter() - started
    executor = RayExecutor(ExecutorConfig("ray", WORKERS, threads=THREADS // WORKERS), setup)
    actors_s = ray_points_s = per_point_s = math.nan
    remote: dict[PointJob, Any] = {}
    error = None
    try:
        started = time.perf_counter()
        executor.start()
        actors_s = time.perf_counter() - started
        started = time.perf_counter()
        remote = dict(executor.points(wb, jobs))
        ray_points_s = time.perf_counter() - started
        print(f"ray: {WORKERS} actors x {THREADS // WORKERS} thread: start {ray_start_s:.1f} s, actors "
              f"{actors_s:.1f} s, points {ray_points_s:.1f} s", flush=True)  # fmt: skip
        per_point_s = round_trip(ray, wb, jobs[0], remote[jobs[0]])
    except WorkerError as exc:  # e.g. Ray's memory monitor killed the workers on a full machine: say so
        error = str(exc)
        print(f"ray run failed: {error}", flush=True)
    finally:
        executor.close()
        ray.shutdown()

    point_s, source = gpu_point_seconds()
    overhead_s = ray_start_s  # paid once; each worker's model load runs in parallel, as the one local load
    projection: dict[str, dict[str, Any]] = {
        str(gpus): {
            "points_per_gpu": math.ceil(SWEEP_POINTS / gpus),
            "seconds": (
                SWEEP_POINTS * point_s
                if gpus == 1
                else overhead_s + math.ceil(SWEEP_POINTS / gpus) * (point_s + per_point_s)
            ),  # fmt: skip
            "executor": "local" if gpus == 1 else "ray",
        }
        for gpus in GPU_COUNTS
    }
    report = {
        "date": date.today().isoformat(),
        "command": f"python bench/ray_overhead.py --points {args.points} --windows {args.windows} "
        f"--tokens {args.tokens} --calibration {args.calibration} --dtype {args.dtype}"
        + (f" --model {args.model}" if args.model else "")
        + (f" --corpus {args.corpus}" if args.corpus else ""),
        "settings": {
            "model": setup.model,
            "calibration": setup.calibration,
            "pruner": setup.prune.pruner,
            "dtype": setup.dtype,
            "calib": f"{args.windows} x {args.tokens}",
            "evaluation": f"{args.windows} x {args.tokens} (validation and evaluation each)",
            "sparsity": SPARSITY,
            "points": len(jobs),
            "local_threads": THREADS,
            "workers": WORKERS,
            "threads_per_worker": THREADS // WORKERS,
            "cpus": torch.get_num_threads(),
        },  # fmt: skip
        "load_average_1min_at_end": os.getloadavg()[0],  # the machine is shared: say how busy it was
        "workbench_load_s": load_s,
        "local_points_s": local_s,
        "ray_start_s": ray_start_s,
        "ray_actors_ready_s": actors_s,
        "ray_points_s": ray_points_s,
        "ray_total_s": ray_start_s + actors_s + ray_points_s,
        "local_total_s": load_s + local_s,
        "points_ratio_local_over_ray": local_s / ray_points_s,
        "total_ratio_local_over_ray": (load_s + local_s) / (ray_start_s + actors_s + ray_points_s),
        "ray_per_point_overhead_s": per_point_s,
        "same_floats": same_floats(local, remote) if remote else None,
        "ray_error": error,
        "projection_llama2_7b_9_points": {
            "point_s": point_s,
            "point_source": source,
            "fixed_overhead_s": overhead_s,
            "per_point_overhead_s": per_point_s,
            "note": "model load excluded: paid once locally and once per worker in parallel on Ray",
            "gpus": projection,
        },  # fmt: skip
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "projection_llama2_7b_9_points"}, indent=1))
    print("projection (9-point LLaMA-2-7B sweep):", {g: round(p["seconds"], 1) for g, p in projection.items()},
          f"point {point_s:.2f} s ({source})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
