"""Schedules of DSA, AlphaPruning (official and FARMS, float16 and float32 spectra) and LSA next to uniform, with
the per-block statistics behind them, on one model at one sparsity. No pruning, no perplexity: statistics only.

    python bench/allocators.py --model smollm2-135m --sparsity 0.7 --json docs/results/allocators-s0.7.json

The statistics come from the dense model with ``atp-viz schedule --model``'s calibration (16 windows x 512
tokens of the embedded corpus, seed 0), so the rates here are the ones that command prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.schedules.methods import ScheduleSpec

VARIANTS: dict[str, dict[str, Any]] = {
    "uniform": {"method": "uniform"},
    "dsa": {"method": "dsa"},
    "dsa-clamp": {"method": "dsa", "nonfinite": "clamp"},
    "alphapruning-float16": {"method": "alphapruning", "estimator": "official", "precision": "float16"},
    "alphapruning-float32": {"method": "alphapruning", "estimator": "official", "precision": "float32"},
    "farms-float16": {"method": "alphapruning", "estimator": "farms", "precision": "float16"},
    "farms-float32": {"method": "alphapruning", "estimator": "farms", "precision": "float32"},
    "lsa": {"method": "lsa"},
    "lsa-projection": {"method": "lsa", "granularity": "projection", "lam": 0.07},  # the README's lsac run
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--calib", default="16x512", help="calibration windows x tokens (the CLI's schedule default)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    samples, seqlen = (int(x) for x in args.calib.split("x"))
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        print(f"bench/allocators.py: unknown variant {', '.join(unknown)}; allowed: {', '.join(VARIANTS)}")
        return 2
    setup = Setup(model=args.model, calib=CalibConfig(samples, seqlen), evaluation=EvalConfig(windows=1, seqlen=seqlen))
    started = time.perf_counter()
    wb = Workbench(setup, None)
    out: dict[str, Any] = {
        "command": "python bench/allocators.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "model": args.model,
        "blocks": wb.num_blocks,
        "sparsity": args.sparsity,
        "calibration": {"samples": samples, "seqlen": seqlen, "seed": 0, "corpus": setup.corpus},
        "param_counts": [int(c) for c in wb.param_counts],
        "schedules": {},
        "statistics": {},
    }
    for name in names:
        params = dict(VARIANTS[name])
        spec = ScheduleSpec(params.pop("method"), args.sparsity, **params)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rates = wb.schedule(spec)
        out["schedules"][name] = {
            "spec": spec.params(),
            "rates": [float(r) for r in rates],
            "min": float(rates.min()),
            "max": float(rates.max()),
            "warnings": [str(w.message) for w in caught],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if spec.method == "alphapruning":  # the official mapping, not capped at 1 (AlphaPruning's code)
            alphas = wb.statistics(spec)["alphas"]
            ratio = (alphas - alphas.min()) / (alphas.max() - alphas.min()) * 2 * float(spec.get("eps")) + 1
            ratio -= float(spec.get("eps"))
            weights = wb.param_counts.astype(np.float64)
            uncapped = args.sparsity * ratio * weights.sum() / np.sum(weights * ratio)
            out["schedules"][name]["uncapped_rates"] = [float(r) for r in uncapped]
        for need, values in wb.statistics(spec).items():  # computed once per setting, read back here
            out["statistics"][f"{need} {name}"] = np.asarray(values, dtype=np.float64).tolist()
        per_linear = wb.linear_rates(spec, rates)
        if per_linear:
            out["schedules"][name]["per_linear"] = per_linear
        print(f"{name}: min {rates.min():.4f} max {rates.max():.4f} ({len(caught)} warning(s))", flush=True)
        for w in caught:
            print(f"  warning: {w.message}", flush=True)
    out["linear_names"] = wb.linear_names[0]
    ap = out["schedules"]
    if "alphapruning-float16" in ap and "alphapruning-float32" in ap:
        diff = np.abs(np.subtract(ap["alphapruning-float16"]["rates"], ap["alphapruning-float32"]["rates"]))
        out["alphapruning_float16_vs_float32_max_abs_rate_diff"] = float(diff.max())
        print(f"AlphaPruning float16 vs float32: max |rate difference| {diff.max():.4f}")
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
