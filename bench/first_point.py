"""Time to the first point of a dashboard sweep, in a fresh process, with the model already cached.

Clock starts before ``import atp_viz``; stops when the first point of ``Workbench.beta_sweep`` is
back. Dashboard settings (atp_viz/ui.py defaults): calibration 8 x 256, evaluation 8 x 256 tokens,
Wanda, S = 0.7, an empty results store. The corpus token ids come from the disk cache after the
first run on a machine; pass --cold-tokens to time a fresh tokenization too.

    .venv/bin/python bench/first_point.py                       # sequential (dashboard default)
    .venv/bin/python bench/first_point.py --calibration cached
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default="sequential", choices=("sequential", "cached"))
    parser.add_argument("--cold-tokens", action="store_true", help="ignore the on-disk token ids")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    marks: dict[str, float] = {}
    from atp_viz import data
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment import Setup, Workbench
    from atp_viz.store import ResultStore

    if args.cold_tokens:
        data.DISK_TOKENS_MIN_CHARS = 10**12
    marks["imports_s"] = time.perf_counter() - STARTED
    store = ResultStore(Path(tempfile.mkdtemp(prefix="atp-viz-first-")) / "results.sqlite")
    setup = Setup(calib=CalibConfig(8, 256), evaluation=EvalConfig(8, 256, 4), calibration=args.calibration)
    wb = Workbench(setup, store)
    marks["workbench_s"] = time.perf_counter() - STARTED
    wb.dense_perplexity()
    marks["dense_ppl_s"] = time.perf_counter() - STARTED
    first = next(iter(wb.beta_sweep(0.7)))
    marks["first_point_s"] = time.perf_counter() - STARTED
    print(
        f"first point ({args.calibration}, ppl {first.perplexity:.1f}) after {marks['first_point_s']:.1f} s: "
        + ", ".join(f"{k} {v:.1f}" for k, v in marks.items())
        + f"; stats from {wb.stats.source or '-'}"
    )
    if args.json:
        args.json.write_text(json.dumps({**marks, "calibration": args.calibration, "stats_source": wb.stats.source}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
