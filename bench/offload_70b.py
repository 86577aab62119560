"""GPU benchmark: one ATP sweep point of a LLaMA-2-70B-shaped model on one GPU with --offload.

LLaMA-2-70B shape (80 blocks, hidden 8192, MLP 28672, 64 heads with 8 KV heads (GQA), vocab 32000)
in bf16 is 138 GB: it fits neither one GPU nor this project's 128 GiB GPU host. Nothing is downloaded:
the model is built from a config on the meta device, embeddings / norm / LM head are random on the
GPU, and each decoder block's random bf16 weights are generated on the GPU when the streamed loop
reaches it (seeded per tensor, so every pass sees the same dense weights; timing does not depend on
weight values). Random token windows: 128 x 2048 calibration tokens, 161 x 2048 = 329,728 evaluation
tokens (about WikiText-2's test split).

Measured through the project's own Workbench with ``Setup(offload=True)``:
- floor: one dense streamed pass over the evaluation windows (the dense perplexity) plus one dense
  streamed pass of every block over the calibration batch: what any point must at least do;
- one point: ATP at S = 0.7 (beta = the middle of the paper's grid), Wanda, sequential calibration
  (3 block forwards per block over the calibration batch on the first point, the pruned evaluation
  carried in the same pass); its time, peak GPU memory, and the ratio to the floor;
- the projected 9-point sweep: on 1 GPU = 9 points; on 8 GPUs with the Ray executor (one worker per
  GPU, each streaming its own blocks) = ceil(9 / 8) = 2 rounds of a point plus one floor (each worker's
  dense pass), scheduling overheads not included.

    python bench/offload_70b.py            # one H200: about 6-8 minutes
    python bench/offload_70b.py --tiny     # CPU smoke test at a tiny shape, seconds
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import llama_config, random_ids, shape_setup  # noqa: E402

from atp_viz.experiment.workbench import Workbench  # noqa: E402
from atp_viz.pruning import offload  # noqa: E402
from atp_viz.pruning.calibration import run_block  # noqa: E402
from atp_viz.schedules import methods, published  # noqa: E402
from atp_viz.schedules.methods import ScheduleSpec  # noqa: E402

SPARSITY, SWEEP_POINTS, GPUS = 0.7, 9, 8
FULL: dict[str, Any] = dict(
    hidden=8192,
    layers=80,
    heads=64,
    kv_heads=8,
    mlp=28672,
    vocab=32000,
    calib=(128, 2048),
    eval=(161, 2048),
    device="cuda",
    dtype="bfloat16",
    batch=8,
    eval_batch=8,
)
TINY: dict[str, Any] = dict(
    hidden=64,
    layers=4,
    heads=8,
    kv_heads=2,
    mlp=128,
    vocab=500,
    calib=(4, 32),
    eval=(4, 32),
    device="cpu",
    dtype="float32",
    batch=2,
    eval_batch=2,
)
STD = 0.02  # scale of the random weights (LLaMA's initializer range)


def random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The same values for the same name at every call: norms are ones, everything else N(0, STD^2)."""
    if len(shape) == 1:
        return torch.ones(shape, dtype=dtype, device=device)
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:6], "little")
    gen = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * STD).to(dtype)


def build(shape: dict[str, Any], device: torch.device, dtype: torch.dtype) -> offload.OffloadedModel:
    """A LLaMA skeleton on meta; the rest random on ``device``; blocks generated when streamed."""
    model, blocks, prefix = offload.skeleton(llama_config(shape), dtype)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}

    def rest(wanted: Mapping[str, torch.dtype]) -> dict[str, torch.Tensor]:
        return {name: random_tensor(name, shapes[name], dt, device) for name, dt in wanted.items()}

    def block(index: int, module: nn.Module, target: torch.device) -> dict[str, torch.Tensor]:
        return {
            name: random_tensor(f"{prefix}.{index}.{name}", tuple(t.shape), t.dtype, target)
            for name, t in module.state_dict(keep_vars=True).items()
        }

    offload.materialize_rest(model, prefix, device, rest)
    size = torch.finfo(dtype).bits // 8
    block_bytes = sum(t.numel() for t in blocks[0].state_dict(keep_vars=True).values()) * size
    resident = sum(math.prod(s) for n, s in shapes.items() if not n.startswith(f"{prefix}.")) * size
    return offload.OffloadedModel(
        name="llama2-70b-shape" if shape is FULL else "llama-tiny-gqa",
        model=model,
        tokenizer=None,
        blocks=blocks,
        fingerprint=f"random:{json.dumps(shape, sort_keys=True)}",
        source="config",
        device=device,
        dtype=dtype,
        streamed=offload.StreamedBlocks(list(blocks), block, device),
        block_bytes=block_bytes,
        resident_bytes=resident,
    )


def timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    value = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, value


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape on the CPU (smoke test)")
    parser.add_argument("--calibration", default="sequential", choices=("sequential", "cached"))
    parser.add_argument("--eval-windows", type=int, default=None, help="evaluation windows (default 161 x 2048)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 tiny, 16 full)")
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/offload_70b[_tiny].json")
    args = parser.parse_args()
    shape = dict(TINY if args.tiny else FULL)
    if args.eval_windows:
        shape["eval"] = (args.eval_windows, shape["eval"][1])
    threads = args.threads or (1 if args.tiny else 16)
    torch.set_num_threads(threads)
    os.environ.setdefault("ATP_VIZ_CACHE", tempfile.mkdtemp(prefix="atp-viz-bench-"))
    device, dtype = torch.device(shape["device"]), getattr(torch, shape["dtype"])
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU; run with --tiny on a CPU", file=sys.stderr)
        return 2
    started = time.perf_counter()
    build_s, loaded = timed(lambda: build(TINY if args.tiny else FULL, device, dtype), device)
    calib_ids, eval_ids = random_ids(shape)
    setup = shape_setup(loaded.name, shape, args.calibration, offload=True)
    wb = Workbench(setup, store=None, loaded=loaded, windows=(calib_ids, eval_ids))
    # floor: a dense streamed evaluation pass and a dense streamed calibration pass
    reset_peak(device)
    eval_s, dense = timed(lambda: wb.dense_perplexity(), device)
    calls = wb.block_calls()

    @torch.inference_mode()
    def calibration_pass() -> None:
        hidden = calls.hidden
        for i, block in enumerate(wb.blocks):
            hidden = run_block(block, hidden, calls.args[i], shape["batch"])

    calib_s, _ = timed(calibration_pass, device)
    floor_peak = peak_gib(device)
    grid = methods.sweep_grid("atp", loaded.num_blocks, SPARSITY, published.GRID_STEP)
    spec = grid[len(grid) // 2] if grid else ScheduleSpec("uniform", SPARSITY)
    reset_peak(device)
    point_s, point = timed(lambda: wb.run(spec), device)
    floor_s = eval_s + calib_s
    tokens = {"calibration": shape["calib"][0] * shape["calib"][1], "evaluation": shape["eval"][0] * shape["eval"][1]}
    report: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/offload_70b.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": threads,
        "shape": shape,
        "tokens": tokens,
        "resident_gib": loaded.resident_bytes / 2**30,
        "block_gib": loaded.block_bytes / 2**30,
        "model_gib": (loaded.resident_bytes + loaded.block_bytes * loaded.num_blocks) / 2**30,
        "build_s": build_s,
        "floor": {
            "seconds": floor_s,
            "eval_pass_s": eval_s,
            "calib_pass_s": calib_s,
            "peak_gpu_gib": floor_peak,
            "dense_perplexity": dense,
        },
        "point": {
            "spec": spec.describe(),
            "calibration": args.calibration,
            "seconds": point_s,
            "ratio_to_floor": point_s / floor_s,
            "peak_gpu_gib": peak_gib(device),
            "perplexity": point.perplexity,
            "achieved_sparsity": point.achieved_sparsity,
        },
        "projection": {
            "points": SWEEP_POINTS,
            "gpus": GPUS,
            "one_gpu_s": SWEEP_POINTS * point_s,
            "eight_gpus_s": eval_s + math.ceil(SWEEP_POINTS / GPUS) * point_s,
            "how": "1 GPU: 9 x point; 8 GPUs (one Ray worker per GPU): one dense pass + ceil(9/8) x point",
        },
        "total_s": time.perf_counter() - started,
    }
    p, f, proj = report["point"], report["floor"], report["projection"]

    def gib(value: float | None) -> str:
        return f"{value:.1f} GiB" if value is not None else "-"

    print(
        f"{loaded.name}: {loaded.num_blocks} blocks, {report['model_gib']:.1f} GiB in {shape['dtype']} "
        f"({report['block_gib']:.2f} GiB per block) on {report['device']}, {threads} CPU threads"
    )
    print(f"tokens: {tokens['calibration']:,} calibration, {tokens['evaluation']:,} evaluation")
    print(
        f"floor (dense streamed passes): {f['seconds']:.1f} s (evaluation {eval_s:.1f} s, calibration "
        f"{calib_s:.1f} s), peak GPU {gib(f['peak_gpu_gib'])}"
    )
    print(
        f"one point ({p['spec']}, {args.calibration}): {point_s:.1f} s = {p['ratio_to_floor']:.2f} x floor, "
        f"peak GPU {gib(p['peak_gpu_gib'])}, ppl {p['perplexity']:.4g}"
    )
    print(
        f"projected {SWEEP_POINTS}-point sweep: 1 GPU {proj['one_gpu_s'] / 60:.1f} min, {GPUS} GPUs "
        f"{proj['eight_gpus_s'] / 60:.1f} min; total wall time {report['total_s']:.1f} s"
    )
    out = args.json or ROOT / "bench" / "results" / ("offload_70b_tiny.json" if args.tiny else "offload_70b.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
