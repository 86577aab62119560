"""GPU benchmark: a 9-point ATP beta sweep at LLaMA-2-7B shape through the project's own Workbench.

A LlamaForCausalLM built from a config (hidden 4096, 32 blocks, 32 heads, MLP 11008, vocab 32000)
with random bf16 weights created directly on the GPU (timing does not depend on weight values),
random token windows: 128 x 2048 calibration tokens and 161 x 2048 = 329,728 evaluation tokens per
point (about WikiText-2's test split), Wanda, S = 0.7, the 9 betas of the paper's grid (step 0.002).
Prints one table (sweep time, floor, ratio, peak GPU memory) and writes JSON.

    python bench/gpu_sweep.py                      # H200: sequential mode (the paper's loop)
    python bench/gpu_sweep.py --modes sequential,cached
    python bench/gpu_sweep.py --tiny               # CPU smoke test at a tiny shape, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    capture_block_calls,
    floor_passes,
    floors,
    llama_config,
    peak_rss_mb,
    random_ids,
    shape_setup,
    timed,
)

from atp_viz.experiment.workbench import Workbench, sweep_specs  # noqa: E402
from atp_viz.models.loading import LoadedModel, find_blocks  # noqa: E402

SPARSITY = 0.7
FULL: dict[str, Any] = dict(
    hidden=4096,
    layers=32,
    heads=32,
    mlp=11008,
    vocab=32000,
    calib=(128, 2048),
    eval=(161, 2048),
    device="cuda",
    dtype="bfloat16",
    batch=16,
    eval_batch=8,
)
TINY: dict[str, Any] = dict(
    hidden=32,
    layers=32,
    heads=4,
    mlp=64,
    vocab=500,
    calib=(2, 32),
    eval=(4, 32),
    device="cpu",
    dtype="float32",
    batch=4,
    eval_batch=4,
)


def build_model(shape: dict, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Random weights created on ``device`` directly (no slow CPU init, no copy)."""
    from transformers import LlamaForCausalLM

    config = llama_config(shape)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(
        name="llama2-7b-shape" if shape is FULL else "llama-tiny",
        model=model,
        tokenizer=None,
        blocks=find_blocks(model),
        fingerprint=f"random:{json.dumps(shape, sort_keys=True)}",
        source="config",
        device=device,
        dtype=dtype,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shape on the CPU (smoke test)")
    parser.add_argument(
        "--modes", default="sequential", help="comma-separated: sequential, cached (default %(default)s)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default bench/results/gpu_sweep[_tiny].json)",
    )
    args = parser.parse_args()
    shape = TINY if args.tiny else FULL
    if args.tiny:
        torch.set_num_threads(1)  # tiny matmuls: thread start-up (and a busy machine) would dominate
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    os.environ.setdefault("ATP_VIZ_CACHE", tempfile.mkdtemp(prefix="atp-viz-bench-"))
    device, dtype = torch.device(shape["device"]), getattr(torch, shape["dtype"])
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU; run with --tiny on a CPU", file=sys.stderr)
        return 2
    started = time.perf_counter()
    build_s, loaded = timed(lambda: build_model(shape, device, dtype), device)
    calib_ids, eval_ids = random_ids(shape)
    specs = sweep_specs(loaded.num_blocks, SPARSITY)[1:]  # the paper's grid: beta = 0.002 .. 0.018 (9 points)
    # floor: one dense evaluation pass and one dense calibration pass, measured before and after
    calls = capture_block_calls(loaded.model, loaded.blocks, calib_ids, shape["batch"])
    passes = [floor_passes(loaded.model, loaded.blocks, calls, eval_ids, shape["eval_batch"], shape["batch"], device)]
    del calls
    report: dict = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "shape": shape,
        "points": len(specs),
        "sparsity": SPARSITY,
        "build_s": build_s,
        "modes": {},
    }
    for mode in modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        setup = shape_setup(loaded.name, shape, mode)  # one evaluation pass per point, as the paper
        t0 = time.perf_counter()
        wb = Workbench(setup, store=None, loaded=loaded, windows=(calib_ids, eval_ids))
        results = []
        for point in wb.run_many(specs):
            results.append(point)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sweep_s = time.perf_counter() - t0
        report["modes"][mode] = {
            "sweep_s": sweep_s,
            "per_point_s": [p.wall_time for p in results],
            "perplexity": [p.perplexity for p in results],
            "beta": [p.beta for p in results],
            "peak_gpu_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
        wb.restore()
        del wb
        if device.type == "cuda":
            torch.cuda.empty_cache()
    calls = capture_block_calls(loaded.model, loaded.blocks, calib_ids, shape["batch"])
    passes.append(
        floor_passes(loaded.model, loaded.blocks, calls, eval_ids, shape["eval_batch"], shape["batch"], device)
    )
    eval_pass = min(p["eval_pass_s"] for p in passes)
    calib_pass = min(p["calib_pass_s"] for p in passes)
    report.update(
        {
            "passes": passes,
            "eval_pass_s": eval_pass,
            "calib_pass_s": calib_pass,
            **floors(len(specs), eval_pass, calib_pass),
            "peak_rss_mib": peak_rss_mb(),
            "total_s": time.perf_counter() - started,
        }
    )
    first = report["modes"][modes[0]]
    report["sweep_s"] = first["sweep_s"]
    report["floor_s"] = report[f"floor_{modes[0]}_s"]
    tokens = (shape["eval"][0] * shape["eval"][1], shape["calib"][0] * shape["calib"][1])
    print(
        f"{report['points']}-point sweep, {shape['layers']} blocks x hidden {shape['hidden']}, {shape['dtype']} on "
        f"{report['device']}; "
        f"{tokens[0]:,} eval + {tokens[1]:,} calibration tokens per point"
    )
    print(f"dense passes (min of {len(passes)}): evaluation {eval_pass:.2f} s, calibration {calib_pass:.2f} s")
    print(
        f"{'mode':<12}{'sweep s':>10}{'floor s':>10}{'ratio':>8}{'2-pass floor s':>16}{'peak GPU GiB':>14}"
        f"{'best beta':>11}"
    )
    for mode, row in report["modes"].items():
        floor = report[f"floor_{mode}_s"]
        row["floor_s"], row["ratio"] = floor, row["sweep_s"] / floor
        best = min(range(len(row["perplexity"])), key=lambda k: row["perplexity"][k])
        gib = f"{row['peak_gpu_gib']:.1f}" if row["peak_gpu_gib"] is not None else "-"
        print(
            f"{mode:<12}{row['sweep_s']:>10.1f}{floor:>10.1f}{row['ratio']:>8.2f}{report['two_pass_floor_s']:>16.1f}{gib:>14}{row['beta'][best]:>11.3f}"
        )
    report["ratio"] = first["ratio"]
    print(
        f"total wall time {report['total_s']:.1f} s (model build {build_s:.1f} s); peak RSS "
        f"{report['peak_rss_mib']:.0f} MiB"
    )
    out = args.json or Path(__file__).resolve().parent / "results" / (
        "gpu_sweep_tiny.json" if args.tiny else "gpu_sweep.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
