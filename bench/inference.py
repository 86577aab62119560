"""Inference speed of a pruned model: dense vs sparse kernels, measured in one run.

CPU (default): the embedded model (fp32), pruned by MAGNITUDE (per row; no calibration, the speed of
a kernel does not depend on which weights are zero, only on how many and in what pattern) uniformly
at 0.5 and 0.7 and with 2:4; for each, the prefill (batch 1 x 512 tokens) and decode (1 new token
after a 512-token KV cache) forward with dense weights vs PyTorch CSR weights, the compressed storage
(dense, sparse-bitmask, CSR), and a per-linear crossover sweep (sparsity 0.5 .. 0.95) on the model's
MLP shape at the prefill and decode token counts, CSR and COO.

GPU (``--gpu``, needs CUDA): 2:4 semi-structured kernels (``to_sparse_semi_structured``) on
LLaMA-2-7B-shape linears and a LLaMA-2-7B-shape model with random bf16 weights, vs dense bf16.

    .venv/bin/python bench/inference.py            # CPU, writes bench/results/inference.json
    python bench/inference.py --gpu                # GPU machine, writes bench/results/inference_gpu.json
    .venv/bin/python bench/inference.py --tiny     # seconds: a tiny random llama, prints only

Each time is the fastest of several calls. CPU mode defaults to 1 thread and the process's CPU time
(``--clock cpu``): on a shared machine, wall time punishes a multi-threaded dense GEMM whose threads
are descheduled more than a sparse kernel, which made sparse look faster than it is. ``--clock wall
--threads N`` measures elapsed time on an idle machine. The ratios are from one run, not constants;
the report records the load average.
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

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from atp_viz.models.loading import DEFAULT_MODEL, LoadedModel, load_model  # noqa: E402
from atp_viz.pruning.layer_stats import prunable_linears  # noqa: E402
from atp_viz.speed import kernels  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PATTERNS: dict[str, tuple[float, tuple[int, int] | None]] = {  # label: (uniform rate, N:M)
    "uniform 0.5": (0.5, None),
    "uniform 0.7": (0.7, None),
    "2:4": (kernels.SEMI_STRUCTURED_RATE, kernels.SEMI_STRUCTURED),
}
CPU = {"prefill_tokens": 512, "decode_context": 512, "batch": 1, "repeats": 5, "warmup": 1}
TINY = {"prefill_tokens": 32, "decode_context": 32, "batch": 1, "repeats": 1, "warmup": 0}
GPU = kernels.SpeedConfig(prefill_tokens=2048, decode_context=2048, batch=1, repeats=10, warmup=3)
LINEAR_REPEATS = {"cpu": 5, "tiny": 1}  # timed calls per point of the per-linear sweep
GPU_LINEAR_TOKENS = (1, 16, 2048, 8192)  # decode, small batch, prefill, long prefill
LLAMA2_7B = {"hidden": 4096, "layers": 32, "heads": 32, "mlp": 11008, "vocab": 32000}
SWEEP_KERNELS = ("csr", "coo")
DIGITS = 4


def environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_1m": os.getloadavg()[0],  # other processes on a shared machine disturb the timings
    }


def rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.{DIGITS}g}")
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v) for v in obj]
    return obj


def tiny_model() -> LoadedModel:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import shared_tiny_model

    return load_model(str(shared_tiny_model()))


def cpu_run(loaded: LoadedModel, config: kernels.SpeedConfig, linear_repeats: int, vocab: int) -> dict[str, Any]:
    dense = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}
    report: dict[str, Any] = {"dense_storage": kernels.storage_bytes(loaded.blocks), "patterns": {}}
    for label, (rate, nm) in PATTERNS.items():
        loaded.model.load_state_dict(dense)
        kernels.magnitude_prune_(loaded.blocks, rate, nm)
        started = time.perf_counter()
        measured = kernels.measure_speed(loaded.model, loaded.blocks, "csr", config, vocab)
        report["patterns"][label] = {
            "kernel": "csr",
            **measured,
            "storage": kernels.storage_bytes(loaded.blocks),
            "seconds": time.perf_counter() - started,
        }
        print(
            f"{label:12s} prefill {measured['dense_prefill_tok_s']:8.1f} -> "
            f"{measured['sparse_prefill_tok_s']:8.1f} tok/s (x{measured['prefill_speedup']:.2f})  "
            f"decode {measured['dense_decode_tok_s']:6.1f} -> "
            f"{measured['sparse_decode_tok_s']:6.1f} tok/s (x{measured['decode_speedup']:.2f})",
            flush=True,
        )
    loaded.model.load_state_dict(dense)
    # the largest linear of a block (an MLP projection)
    shape = max(
        ((lin.out_features, lin.in_features) for lin in prunable_linears(loaded.blocks[0]).values()),
        key=lambda s: s[0] * s[1],
    )
    sweeps = []
    for kernel in SWEEP_KERNELS:
        for tokens in (config.prefill_tokens, 1):
            sweep = kernels.crossover_sweep(shape, tokens, kernel, repeats=linear_repeats, clock=config.clock)
            sweeps.append(sweep)
            print(
                f"linear {shape} {kernel} x {tokens:4d} tokens: speedup "
                + ", ".join(f"{row['sparsity']:.2f}:{row['speedup']:.2f}" for row in sweep["rows"])  # type: ignore[attr-defined]
                + f"  crossover {sweep['crossover']}",
                flush=True,
            )
    report["linear_sweeps"] = sweeps
    report["config"] = {
        "prefill_tokens": config.prefill_tokens,
        "decode_context": config.decode_context,
        "batch": config.batch,
        "repeats": config.repeats,
        "warmup": config.warmup,
        "clock": config.clock,
        "threads": torch.get_num_threads(),
        "pruning": "magnitude per row",
        "dtype": str(loaded.dtype).removeprefix("torch."),
    }
    return report


def gpu_run() -> dict[str, Any]:
    from gpu_sweep import build_model

    device, dtype = torch.device("cuda"), torch.bfloat16
    linears = kernels.semi_structured_linear_speed(kernels.LLAMA2_7B_LINEARS, GPU_LINEAR_TOKENS, dtype)
    for row in linears:
        print(row, flush=True)
    loaded = build_model(LLAMA2_7B, device, dtype)
    config = GPU
    kernels.magnitude_prune_(loaded.blocks, kernels.SEMI_STRUCTURED_RATE, kernels.SEMI_STRUCTURED)
    dense = kernels.forward_times(loaded.model, config, LLAMA2_7B["vocab"])
    report: dict[str, Any] = {"linears": linears, "dense": {**dense, **kernels.tokens_per_second(dense, config)}}
    report["swapped"] = kernels.semi_structured_model(loaded.blocks)
    try:
        sparse = kernels.forward_times(loaded.model, config, LLAMA2_7B["vocab"])
    except (RuntimeError, NotImplementedError) as exc:
        report["sparse_error"] = str(exc).splitlines()[0]
    else:
        report["sparse"] = {**sparse, **kernels.tokens_per_second(sparse, config)}
        report["prefill_speedup"] = dense["prefill_s"] / sparse["prefill_s"]
        report["decode_speedup"] = dense["decode_s"] / sparse["decode_s"]
    report["config"] = {
        "shape": LLAMA2_7B,
        "dtype": "bfloat16",
        "prefill_tokens": config.prefill_tokens,
        "decode_context": config.decode_context,
        "repeats": config.repeats,
        "pruning": "magnitude 2:4",
    }
    print(json.dumps({k: v for k, v in rounded(report).items() if k != "linears"}, indent=2), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dense vs sparse inference speed of a pruned model")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="a tiny random llama, seconds; prints only unless --out")
    mode.add_argument("--gpu", action="store_true", help="2:4 semi-structured on LLaMA-2-7B shape (needs CUDA)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="CPU mode: model name or folder")
    parser.add_argument("--out", type=Path, default=None, help="JSON report path")
    parser.add_argument("--threads", type=int, default=1, help="CPU mode: torch threads (1: a fair kernel comparison)")
    parser.add_argument(
        "--clock",
        choices=tuple(kernels.CLOCKS),
        default="cpu",
        help="CPU mode: cpu = process CPU time (robust on a shared machine)",
    )
    args = parser.parse_args(argv)
    command = " ".join(["bench/inference.py", *(sys.argv[1:] if argv is None else argv)])
    env = environment()  # load average at the start; the end value is added after the run

    if args.gpu:
        reason = kernels.cuda_unavailable_reason(torch.bfloat16)
        if reason:
            print(f"inference --gpu: {reason}", file=sys.stderr)
            return 2
        report = gpu_run()
        out = args.out or RESULTS / "inference_gpu.json"
    else:
        torch.manual_seed(0)
        torch.set_num_threads(args.threads)
        loaded = tiny_model() if args.tiny else load_model(args.model)
        model_config: Any = loaded.model.config
        vocab = int(model_config.vocab_size)
        kind = "tiny" if args.tiny else "cpu"
        config = kernels.SpeedConfig(**(TINY if args.tiny else CPU), clock=args.clock)
        report = cpu_run(loaded, config, LINEAR_REPEATS[kind], vocab)
        report["model"] = "tiny random llama" if args.tiny else args.model
        out = args.out if (args.out or args.tiny) else RESULTS / "inference.json"
    env["load_average_1m_end"] = os.getloadavg()[0]
    report = rounded({"environment": env, "command": command, **report})
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkstemp(dir=out.parent, suffix=".partial")[1])
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
