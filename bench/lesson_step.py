"""The Lesson's live computations on a model at the dashboard's default settings (8x256 calibration windows):
the time of one stepper step (``atp_viz.experiment.lesson.Stepper.step``: calibrate, prune and measure one block on the
pruned model's inputs kept in memory) against the 2 s target, in seconds and in dense block forwards measured in
the same run (a ratio that does not depend on how loaded the machine is), and of one whole error budget.

    OMP_NUM_THREADS=2 .venv/bin/python bench/lesson_step.py [--model smollm2-135m] [--steps 6] [--budget]

Prints each step's seconds and the ratio of the median to the target (< 1: met); writes
bench/results/lesson_step_<model>.json. Nothing is stored in the user's results store (no store)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import write_results  # noqa: E402

from atp_viz.dashboard import ui  # noqa: E402
from atp_viz.experiment import lesson  # noqa: E402
from atp_viz.experiment.workbench import Workbench  # noqa: E402
from atp_viz.pruning.calibration import run_block  # noqa: E402
from atp_viz.schedules.methods import ScheduleSpec  # noqa: E402

TARGET_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--budget", action="store_true", help="also time one whole error budget")
    args = parser.parse_args()
    for name in (ui.ENV_MODEL, ui.ENV_CORPUS, ui.ENV_WINDOWS):
        os.environ.pop(name, None)
    values = ui.defaults() | {"model": args.model}
    setup = ui.setup_of(values)
    started = time.perf_counter()
    wb = Workbench(setup, None)  # no store: nothing is read back or written
    load_s = time.perf_counter() - started
    spec = ScheduleSpec("uniform", float(values["sparsity"]))  # type: ignore[arg-type]
    t0 = time.perf_counter()
    wb.block_calls()  # the block-0 inputs: captured once per Workbench (before the first step)
    capture_s = time.perf_counter() - t0
    stepper = lesson.Stepper(wb, spec)
    wb.restore()
    forwards = []  # one dense block forward over the calibration batch, measured in the same run (the load varies)
    for i in range(3):
        t0 = time.perf_counter()
        with torch.inference_mode():
            run_block(wb.blocks[i], wb.block_calls().hidden, wb.block_calls().args[i], setup.batch_size)
        forwards.append(time.perf_counter() - t0)
    forward = statistics.median(forwards)
    print(f"one dense block forward: {forward:.3f} s (median of 3)", flush=True)
    seconds = []
    for _ in range(min(args.steps, wb.num_blocks)):
        t0 = time.perf_counter()
        stepper.step()
        seconds.append(time.perf_counter() - t0)
        print(f"step {stepper.done - 1}: {seconds[-1]:.3f} s", flush=True)
    median = statistics.median(seconds)
    print(f"median step {median:.3f} s; ratio to the {TARGET_S:g} s target: {median / TARGET_S:.2f}; "
          f"{median / forward:.2f} block forwards per step", flush=True)  # fmt: skip
    out: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "settings": setup.describe(),
        "load_s": load_s,
        "capture_block_inputs_s": capture_s,
        "step_s": seconds,
        "median_step_s": median,
        "ratio_to_target": median / TARGET_S,
        "block_forward_s": forward,
        "step_in_block_forwards": median / forward,
    }
    if args.budget:
        t0 = time.perf_counter()
        lesson.budget(wb, spec)
        out["budget_s"] = time.perf_counter() - t0
        print(f"error budget: {out['budget_s']:.1f} s", flush=True)
    write_results(ROOT / "bench" / "results" / f"lesson_step_{args.model}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
