"""Theory sandbox latency at its largest depth, against its one-second budget (issue 3).

Prints one table and writes bench/results/sandbox.json. A ratio below 1 meets the budget.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from atp_viz.schedules import toy

BUDGET_S = 1.0
REPEATS = 5


def main() -> None:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        toy.sandbox(toy.MAX_DEPTH, 0.7, 0.001)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    result = {"depth": toy.MAX_DEPTH, "median_s": median, "budget_s": BUDGET_S, "ratio_to_budget": median / BUDGET_S}
    print(f"{'depth':>6} {'median s':>10} {'budget s':>9} {'ratio':>6}")
    print(f"{toy.MAX_DEPTH:>6} {median:>10.3f} {BUDGET_S:>9.1f} {median / BUDGET_S:>6.2f}")
    out = Path(__file__).parent / "results" / "sandbox.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
