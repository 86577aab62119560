"""Write ``atp_viz/experiment/shipped/lesson_story.json``: what the Lesson's chapter 7 shows without computing, read
from two measured result files of the embedded model at S = 0.7 (their settings differ from the lesson's defaults:
16 x 256 calibration windows, cached calibration, 16 x 512 evaluation windows, seeds 0, 1, 2; the page says so):

- the curved profiles (``docs/results/profiles-s0.7.json``, grid ``power``: s_i = S + beta (L-1) (x_i^p - mean x^p)
  at beta = 0.01 for p = 0.5, 1 (ATP's line) and 2), with each profile's per-seed evaluation perplexities where the
  run measured them (its ``chosen`` list);
- the seed band (``docs/results/seeds-s0.7.json``): uniform and ATP (beta = 0.012) over three calibration seeds.

    .venv/bin/python scripts/lesson_story.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILES, SEEDS = ROOT / "docs/results/profiles-s0.7.json", ROOT / "docs/results/seeds-s0.7.json"
OUT = ROOT / "atp_viz/experiment/shipped/lesson_story.json"


def number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def main() -> int:
    profiles, seeds = json.loads(PROFILES.read_text()), json.loads(SEEDS.read_text())
    per_seed = {c["schedule"]: c["per_seed_evaluation"] for c in profiles["chosen"]}
    curved = []
    for row in profiles["grids"]["power"]["table"]:
        p, beta = float(row["power"]), float(row["beta"])
        name = f"atp S={profiles['sparsity']:g} beta={beta:g}" if p == 1 else (
            f"power S={profiles['sparsity']:g} beta={beta:g} power={p:g}")  # fmt: skip
        curved.append({
            "label": f"p = {p:g}" + (" (ATP's line)" if p == 1 else ""),
            "method": "atp" if p == 1 else "power",
            "params": {"beta": beta} | ({} if p == 1 else {"power": p}),
            "seeds": int(row["seeds"]),
            "validation": number(row["perplexity (validation)"]),
            "validation_std": number(row["std (validation)"]) if row["seeds"] > 1 else None,
            "evaluation": number(row["perplexity (evaluation)"]),
            "evaluation_std": number(row["std (evaluation)"]) if row["seeds"] > 1 else None,
            "evaluation_per_seed": per_seed.get(name, []),
        })  # fmt: skip
    band = [
        {
            "label": row["label"] + "".join(f", {k} = {v:g}" for k, v in row["params"].items()),
            "method": row["method"],
            "params": row["params"],
            "seeds": int(row["seeds"]),
            "evaluation": float(row["perplexity"]),
            "evaluation_std": float(row["perplexity_std"]),
            "validation": float(row["validation_perplexity"]),
        }
        for row in seeds["rows"]
    ]
    story = {
        "about": "measured elsewhere, read by scripts/lesson_story.py; not the lesson's default settings",
        "sources": [str(PROFILES.relative_to(ROOT)), str(SEEDS.relative_to(ROOT))],
        "date": profiles["date"][:10],
        "command": profiles["command"],
        "settings": profiles["setup"],
        "sparsity": profiles["sparsity"],
        "num_blocks": profiles["num_blocks"],
        "seed_list": seeds["seeds"],
        "dense_perplexity": profiles["dense_perplexity"],
        "curved": curved,
        "seed_band": band,
    }
    OUT.write_text(json.dumps(story, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
