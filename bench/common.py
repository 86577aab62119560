"""Shared pieces of the benchmarks: the forward-pass floor, the paper-structure baseline, peak memory.

The floor is the time of the dense forward passes a sweep cannot avoid, measured in the same run:
- one evaluation pass = ``perplexity()`` of the dense model over all evaluation windows (the same
  batched, chunked-loss evaluation every point runs);
- one calibration pass = every decoder block run once over the calibration batch (dense weights,
  block by block, the same micro-batches as calibration), no hooks.
floor(sequential) = points x (evaluation pass + calibration pass): every point recalibrates.
floor(cached)     = points x evaluation pass + 1 calibration pass: statistics come from one dense pass.
The paper's loop itself needs two calibration passes per point (statistics on the pruned input,
then the pruned re-run); that is reported separately as ``two_pass_floor`` and is NOT the floor.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from atp_viz.config import CalibConfig, EvalConfig  # noqa: E402
from atp_viz.experiment.workbench import Setup  # noqa: E402
from atp_viz.measure.perplexity import perplexity  # noqa: E402
from atp_viz.models.hooks import input_hooks  # noqa: E402
from atp_viz.pruning.calibration import BlockCalls, capture_block_calls, run_block  # noqa: E402
from atp_viz.pruning.layer_stats import prunable_linears  # noqa: E402
from atp_viz.pruning.pruners import PruneConfig, Pruner, recorder  # noqa: E402
from atp_viz.store import to_jsonable  # noqa: E402


def llama_config(shape: dict[str, Any]) -> Any:
    """A LLaMA config from a bench shape (``hidden``, ``layers``, ``heads``, optional ``kv_heads`` for GQA,
    ``mlp``, ``vocab``), with untied embeddings as in LLaMA-2."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape.get("kv_heads", shape["heads"]),
        intermediate_size=shape["mlp"],
        vocab_size=shape["vocab"],
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def random_ids(shape: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration and evaluation token ids of a bench shape (``calib``, ``eval``: windows x tokens), uniform
    over its vocabulary, seed 0."""
    gen = torch.Generator().manual_seed(0)
    calib_ids = torch.randint(0, shape["vocab"], shape["calib"], generator=gen)
    return calib_ids, torch.randint(0, shape["vocab"], shape["eval"], generator=gen)


def shape_setup(name: str, shape: dict[str, Any], calibration: str, **extra: Any) -> Setup:
    """The Setup of a bench shape on random ids: Wanda, the evaluation split only (one pass per point)."""
    return Setup(
        model=name,
        corpus="random-ids",
        calib=CalibConfig(samples=shape["calib"][0], seqlen=shape["calib"][1]),
        evaluation=EvalConfig(windows=shape["eval"][0], seqlen=shape["eval"][1], batch_size=shape["eval_batch"]),
        prune=PruneConfig("wanda"),
        calibration=calibration,
        device=shape["device"],
        dtype=shape["dtype"],
        batch_size=shape["batch"],
        splits=("evaluation",),
        **extra,
    )


def write_results(path: Path, out: Any) -> None:
    """A result file: JSON (numpy values converted, NaN kept), its folder made, its path printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(out), indent=1, allow_nan=True) + "\n")
    print(f"wrote {path}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


@torch.inference_mode()
def calibration_pass(blocks: torch.nn.ModuleList, calls: BlockCalls, batch_size: int) -> torch.Tensor:
    """One dense forward of every block over the calibration batch (the floor's calibration unit)."""
    hidden = calls.hidden
    for block, call in zip(blocks, calls.args):
        hidden = run_block(block, hidden, call, batch_size)
    return hidden


def floor_passes(
    model: torch.nn.Module,
    blocks: torch.nn.ModuleList,
    calls: BlockCalls,
    eval_ids: torch.Tensor,
    eval_batch: int,
    calib_batch: int,
    device: torch.device,
) -> dict[str, float]:
    """Seconds of one dense evaluation pass and one dense calibration pass (weights must be dense)."""
    eval_s, _ = timed(lambda: perplexity(model, eval_ids, eval_batch), device)
    calib_s, _ = timed(lambda: calibration_pass(blocks, calls, calib_batch), device)
    return {"eval_pass_s": eval_s, "calib_pass_s": calib_s}


def floors(points: int, eval_pass_s: float, calib_pass_s: float) -> dict[str, float]:
    return {
        "floor_sequential_s": points * (eval_pass_s + calib_pass_s),
        "floor_cached_s": points * eval_pass_s + calib_pass_s,
        "two_pass_floor_s": points * (eval_pass_s + 2 * calib_pass_s),
    }


@torch.inference_mode()
def paper_prune(
    blocks: torch.nn.ModuleList,
    calls: BlockCalls,
    rates: Any,
    pruner: Pruner,
    nm: tuple[int, int] | None,
    batch_size: int,
) -> None:
    """The paper's (Wanda's) loop: statistics on the pruned input, prune, re-run; no error measurement."""
    hidden = calls.hidden
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        stats = {name: pruner.new_stats(lin.in_features, lin.weight.device) for name, lin in linears.items()}
        with input_hooks(linears, recorder(stats)):
            run_block(block, hidden, calls.args[i], batch_size)
        for name, linear in linears.items():
            pruner.prune_(linear, stats[name], float(rates[i]), nm)
        hidden = run_block(block, hidden, calls.args[i], batch_size)


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident set size in MiB (Linux reports ru_maxrss in KiB)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


__all__ = [
    "BlockCalls",
    "calibration_pass",
    "capture_block_calls",
    "floor_passes",
    "floors",
    "paper_prune",
    "peak_rss_mb",
    "timed",
]
