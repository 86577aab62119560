"""What the error-explosion numbers show, computed with plain forward passes.

On the embedded model at the dashboard's defaults (smollm2-135m, wiki-summaries, 8 x 256 calibration
tokens, seed 0, float32, CPU), uniform sparsity S = 0.7 with Wanda, this script measures, independently
of ``calibration.prune_sequential`` and the dashboard (it uses the library only to load the model, the
corpus's calibration windows and Wanda's mask function):

- the dense hidden state h_i after every block: ||h_i||_F and ||h_i||_F^2;
- sequential uniform pruning (block i calibrated and pruned on the output of the pruned blocks before
  it): the local error ||f_i(x) - fhat_i(x)||^2 (x = pruned input) and the cumulative error
  ||h_i - hhat_i||^2, absolute and relative to the dense reference;
- for each block j, the model with block j ALONE pruned (calibrated on its dense input, every other
  block dense): the error at block j's output and at the last block's output, its growth on the way,
  and its share of the jointly pruned model's final error.

    OMP_NUM_THREADS=1 python bench/explosion_facts.py            # writes docs/results/explosion_facts.json

The JSON holds every per-block array and a ``facts`` summary; the paragraph in docs/results.md quotes it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atp_viz.models.data import calibration_windows, load_corpus, token_ids
from atp_viz.models.loading import load_model
from atp_viz.pruning.pruners import wanda

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "results" / "explosion_facts.json"
Call = tuple[tuple[Any, ...], dict[str, Any]]


def sq(x: torch.Tensor) -> float:
    """||x||_F^2 in float64."""
    return float(x.double().square().sum())


def capture(model: nn.Module, blocks: nn.ModuleList, ids: torch.Tensor) -> tuple[torch.Tensor, list[Call]]:
    """Block 0's hidden input for the batch and every block's other call arguments, from one model forward."""
    calls: list[Call] = [((), {})] * len(blocks)
    first: list[torch.Tensor] = []

    def pre_hook(index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            kw = dict(kwargs)
            hidden = kw.pop("hidden_states") if "hidden_states" in kw else args[0]
            rest = args if "hidden_states" in kwargs else args[1:]
            for key in ("past_key_values", "past_key_value", "use_cache"):
                kw.pop(key, None)
            calls[index] = (tuple(rest), kw)
            if index == 0:
                first.append(hidden.detach().clone())

        return hook

    handles = [b.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return first[0], calls


def run(block: nn.Module, hidden: torch.Tensor, call: Call) -> torch.Tensor:
    pos, kw = call
    out = block(hidden, *pos, use_cache=False, **kw)
    return out[0] if isinstance(out, tuple) else out


def linears(block: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def prune_block(block: nn.Module, hidden: torch.Tensor, call: Call, sparsity: float) -> torch.Tensor:
    """Wanda on ``hidden`` (all linears' input norms from one dense-weight pass), in place; returns f_i(hidden)."""
    lins = linears(block)
    sums = {name: torch.zeros(lin.in_features, dtype=torch.float64) for name, lin in lins.items()}

    def norm_hook(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] += x.square().sum(dim=0)

        return hook

    handles = [lin.register_forward_pre_hook(norm_hook(name)) for name, lin in lins.items()]
    try:
        reference = run(block, hidden, call)
    finally:
        for h in handles:
            h.remove()
    for name, lin in lins.items():
        mask = wanda(lin.weight, sums[name].sqrt().float(), sparsity)
        lin.weight[mask] = 0
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.monotonic()
    torch.set_grad_enabled(False)

    loaded = load_model(args.model)
    model, blocks = loaded.model, loaded.blocks
    corpus = load_corpus()
    calibration_ids = token_ids(loaded.tokenizer, corpus.calibration_text)
    ids = calibration_windows(calibration_ids, args.samples, args.seqlen, args.seed)
    dense_weights = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
    h0, calls = capture(model, blocks, ids)
    n = len(blocks)

    # dense trajectory
    dense_in: list[torch.Tensor] = []
    dense_out: list[torch.Tensor] = []
    h = h0
    for i, block in enumerate(blocks):
        dense_in.append(h)
        h = run(block, h, calls[i])
        dense_out.append(h)
    norm_sq = np.array([sq(x) for x in dense_out])
    print(f"dense trajectory done ({time.monotonic() - started:.0f} s)", flush=True)

    # sequential uniform pruning
    loc_abs, loc_rel, cum_abs, cum_rel = (np.zeros(n) for _ in range(4))
    x = h0
    for i, block in enumerate(blocks):
        reference = prune_block(block, x, calls[i], args.sparsity)
        out = run(block, x, calls[i])
        loc_abs[i] = sq(reference - out)
        loc_rel[i] = loc_abs[i] / sq(reference)
        cum_abs[i] = sq(dense_out[i] - out)
        cum_rel[i] = cum_abs[i] / norm_sq[i]
        x = out
    for block, weights in zip(blocks, dense_weights):
        block.load_state_dict(weights)
    print(f"sequential pruning done ({time.monotonic() - started:.0f} s)", flush=True)

    # each block pruned alone
    alone_at_block, alone_final = np.zeros(n), np.zeros(n)
    for j in range(n):
        prune_block(blocks[j], dense_in[j], calls[j], args.sparsity)
        y = run(blocks[j], dense_in[j], calls[j])
        alone_at_block[j] = sq(dense_out[j] - y)
        for k in range(j + 1, n):
            y = run(blocks[k], y, calls[k])
        alone_final[j] = sq(dense_out[-1] - y)
        blocks[j].load_state_dict(dense_weights[j])
        print(f"block {j} alone: final error {alone_final[j]:.4g} ({time.monotonic() - started:.0f} s)", flush=True)

    joint_final = cum_abs[-1]
    share = alone_final / joint_final
    growth = alone_final / alone_at_block
    norm = np.sqrt(norm_sq)
    step = norm[1:] / norm[:-1]
    order = np.argsort(-share)
    others = [j for j in range(n) if j != int(order[0])]
    facts = {
        "largest_norm_jump": {"after_block": int(np.argmax(step)) + 1, "factor": float(step.max())},
        "largest_norm_drop": {"after_block": int(np.argmin(step)) + 1, "factor": float(1 / step.min())},
        "largest_local_error": {"block": int(np.argmax(loc_rel)), "relative": float(loc_rel.max())},
        "largest_share": [{"block": int(j), "share": float(share[j])} for j in order[:3]],
        "shares_sum": float(share.sum()),
        "growth_of_top_block": float(growth[order[0]]),
        "growth_of_other_blocks": {"min": float(growth[others].min()), "max": float(growth[others].max())},
        "cumulative_abs_last_over_first": float(cum_abs[-1] / cum_abs[0]),
        "cumulative_rel_last_over_first": float(cum_rel[-1] / cum_rel[0]),
        "norm_sq_last_over_first": float(norm_sq[-1] / norm_sq[0]),
        "block_28_rel_step": float(cum_rel[28] / cum_rel[27]) if n > 28 else None,
        "block_28_abs_step": float(cum_abs[28] / cum_abs[27]) if n > 28 else None,
        "block_28_norm_sq_step": float(norm_sq[28] / norm_sq[27]) if n > 28 else None,
    }
    result = {
        "command": "OMP_NUM_THREADS=1 python bench/explosion_facts.py",
        "date": dt.date.today().isoformat(),
        "settings": {
            "model": args.model,
            "corpus": "wiki-summaries (calibration split)",
            "sparsity": args.sparsity,
            "schedule": "uniform",
            "pruner": "wanda",
            "calibration": f"{args.samples} x {args.seqlen} tokens, seed {args.seed}, sequential",
            "dtype": "float32",
            "threads": torch.get_num_threads(),
        },
        "machine": platform.processor() or platform.machine(),
        "seconds": round(time.monotonic() - started, 1),
        "facts": facts,
        "blocks": {
            "dense_norm": norm.tolist(),
            "dense_norm_sq": norm_sq.tolist(),
            "local_error_rel": loc_rel.tolist(),
            "local_error_abs": loc_abs.tolist(),
            "cumulative_error_rel": cum_rel.tolist(),
            "cumulative_error_abs": cum_abs.tolist(),
            "alone_error_at_block_abs": alone_at_block.tolist(),
            "alone_error_final_abs": alone_final.tolist(),
            "alone_growth_to_last_block": growth.tolist(),
            "alone_share_of_joint_final": share.tolist(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(facts, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
