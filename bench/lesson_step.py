"""The Lesson stepper's press on a model at the dashboard's default settings (8x256 calibration windows), measured
in one run, against the 2 s target:

- **computed at the press** (the page before 2026-12-07): the press waits for ``lesson.Stepper.step`` (calibrate,
  prune and measure one block on the pruned model's inputs kept in memory: three block forwards and the Wanda
  pruning of the block's linears), timed per step and split into its parts;
- **computed ahead** (the page now, ``lesson.step_target``): after a press the next block is computed and stored in
  a background thread while the student reads; the next press, ``--think`` seconds later, waits for that thread if
  it has not finished and then does what the page's stepper fragment does (read the stored steps, build the
  figure). ``--think 0`` is a student pressing as fast as the page allows.

Each is also given in dense block forwards over the calibration batch, measured in the same run (a ratio that
depends less on how loaded the machine is).

    OMP_NUM_THREADS=2 .venv/bin/python bench/lesson_step.py [--model smollm2-135m] [--steps 6] [--think 3] [--budget]

Writes bench/results/lesson_step_<model>.json. Results go to a temporary store (the user's is not touched)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from common import write_results  # noqa: E402

from atp_viz.dashboard import lesson_figures, ui  # noqa: E402
from atp_viz.experiment import lesson  # noqa: E402
from atp_viz.experiment.workbench import Workbench  # noqa: E402
from atp_viz.models.hooks import input_hooks  # noqa: E402
from atp_viz.pruning.calibration import DenseTrajectory, run_block  # noqa: E402
from atp_viz.pruning.layer_stats import prunable_linears  # noqa: E402
from atp_viz.pruning.pruners import recorder  # noqa: E402
from atp_viz.schedules.methods import ScheduleSpec  # noqa: E402
from atp_viz.store import ResultStore  # noqa: E402

TARGET_S = 2.0


def parts_of_a_step(wb: Workbench, block: int) -> dict[str, float]:
    """One step's parts on block ``block`` with dense inputs (the same work as ``prune_block``), in seconds."""
    calls, setup, pruner = wb.block_calls(), wb.setup, wb.pruner
    linears = prunable_linears(wb.blocks[block])
    hidden = calls.hidden
    out: dict[str, float] = {}
    with torch.inference_mode():
        for i in range(block):  # the block's dense input
            hidden = run_block(wb.blocks[i], hidden, calls.args[i], setup.batch_size)
        t0 = time.perf_counter()
        stats = {name: pruner.new_stats(lin.in_features, lin.weight.device) for name, lin in linears.items()}
        with input_hooks(linears, recorder(stats)):
            run_block(wb.blocks[block], hidden, calls.args[block], setup.batch_size)
        out["dense forward with statistics hooks (local-error reference)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_block(wb.blocks[block], hidden, calls.args[block], setup.batch_size)
        out["dense forward (cumulative-error reference)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for name, lin in linears.items():
            pruner.prune_(lin, stats[name], 0.7, setup.prune.nm)
        out["Wanda pruning of the block's linears"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_block(wb.blocks[block], hidden, calls.args[block], setup.batch_size)
        out["pruned forward"] = time.perf_counter() - t0
    wb.restore()
    return out


def unshared(stepper: lesson.Stepper) -> lesson.Stepper:
    """A stepper that computes the dense outputs itself (three block forwards a step, as on a fresh server), not
    reading those another series filled in the trajectory it shares with the Workbench."""
    stepper.trajectory = DenseTrajectory.empty(stepper.bench.num_blocks)
    return stepper


def fresh_store() -> ResultStore:
    return ResultStore(Path(tempfile.mkdtemp()) / "results.sqlite")


def computed_ahead(wb: Workbench, spec: ScheduleSpec, steps: int, think: float) -> tuple[list[float], list[float]]:
    """``steps`` presses ``think`` seconds apart, the page's way: each press waits for the block computed ahead
    (if its thread has not finished), reads the stored steps and builds the stepper's figure; then the next block
    is computed and stored in a thread. Returns each press's seconds and how long of it was waiting."""
    wb.store = fresh_store()
    stepper = unshared(lesson.Stepper(wb, spec))
    pressed, waits, worker = [], [], None
    for shown in range(1, steps + 1):
        t0 = time.perf_counter()
        if worker is not None:
            worker.join()
        waited = time.perf_counter() - t0
        if len(lesson.known_steps(wb, spec)) < shown:  # the first press: nothing was computed ahead
            stepper.advance(shown)
        lesson_figures.stepper_figure(lesson.known_steps(wb, spec)[:shown], wb.num_blocks, label="uniform")
        pressed.append(time.perf_counter() - t0)
        waits.append(waited)
        print(f"computed ahead, {think:g} s between presses, press {shown}: {pressed[-1]:.3f} s "
              f"(waited {waited:.3f} s)", flush=True)  # fmt: skip
        worker = threading.Thread(target=stepper.advance, args=(lesson.step_target(shown, wb.num_blocks),))
        worker.start()
        time.sleep(think)
    if worker is not None:
        worker.join()
    return pressed, waits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--think", type=float, default=3.0, help="seconds a student reads between two presses")
    parser.add_argument("--budget", action="store_true", help="also time one whole error budget")
    args = parser.parse_args()
    for name in (ui.ENV_MODEL, ui.ENV_CORPUS, ui.ENV_WINDOWS):
        os.environ.pop(name, None)
    values = ui.defaults() | {"model": args.model}
    setup = ui.setup_of(values)
    started = time.perf_counter()
    wb = Workbench(setup, fresh_store())
    load_s = time.perf_counter() - started
    sparsity = float(values["sparsity"])  # type: ignore[arg-type]
    steps = min(args.steps, wb.num_blocks)
    wb.block_calls()  # the block-0 inputs: captured once per Workbench
    wb.restore()
    forwards = []  # one dense block forward over the calibration batch, measured in the same run (the load varies)
    for i in range(6):  # the first one warms up (allocations), the median of the other five is kept
        t0 = time.perf_counter()
        with torch.inference_mode():
            run_block(wb.blocks[i], wb.block_calls().hidden, wb.block_calls().args[i], setup.batch_size)
        forwards.append(time.perf_counter() - t0)
    forward = statistics.median(forwards[1:])
    print(
        f"one dense block forward over {setup.calib.samples}x{setup.calib.seqlen} tokens: {forward:.3f} s", flush=True
    )
    repeats = [parts_of_a_step(wb, 1) for _ in range(3)]
    parts = {name: statistics.median(r[name] for r in repeats) for name in repeats[0]}
    for name, s in parts.items():
        print(f"  block 1, {name}: {s:.3f} s (median of 3)", flush=True)

    # computed at the press: the press waits for the step
    at_press = []
    uniform = ScheduleSpec("uniform", sparsity)
    stepper = unshared(lesson.Stepper(wb, uniform))
    for _ in range(steps):
        t0 = time.perf_counter()
        stepper.step()
        at_press.append(time.perf_counter() - t0)
        print(f"computed at the press, block {stepper.done - 1}: {at_press[-1]:.3f} s", flush=True)

    # computed ahead: the next block computed while the student reads (each series with an empty store)
    series = {think: computed_ahead(wb, uniform, steps, think) for think in dict.fromkeys((args.think, 0.0))}
    before = statistics.median(at_press)
    after = {think: statistics.median(pressed[1:]) for think, (pressed, _) in series.items()}
    print(f"median press, computed at the press: {before:.3f} s ({before / forward:.2f} block forwards); computed "
          "ahead (presses 2..): " + ", ".join(f"{s:.3f} s with {t:g} s between presses" for t, s in after.items())
          + f"; target {TARGET_S:g} s", flush=True)  # fmt: skip
    out: dict[str, object] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "torch_threads": torch.get_num_threads(),
        "model": args.model,
        "settings": setup.describe(),
        "load_s": load_s,
        "block_forward_s": forward,
        "step_parts_block_1_s": parts,
        "computed_at_press_s": at_press,
        "median_computed_at_press_s": before,
        "computed_at_press_in_block_forwards": before / forward,
        "computed_ahead": [
            {"think_s": t, "press_s": p, "waited_s": w, "median_press_s_from_press_2": after[t]}
            for t, (p, w) in series.items()
        ],
        "target_s": TARGET_S,
    }
    if args.budget:
        t0 = time.perf_counter()
        lesson.budget(wb, uniform)
        out["budget_s"] = time.perf_counter() - t0
        print(f"error budget: {out['budget_s']:.1f} s", flush=True)
    write_results(ROOT / "bench" / "results" / f"lesson_step_{args.model}.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
