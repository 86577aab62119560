"""What a first run costs: the installed size of .venv, how long its install took, and the first load.

- install: the size of ``.venv`` (every file, in MB) and the seconds from the venv's creation
  (``pyvenv.cfg``) to the install stamp ``scripts/setup.sh`` touches when it has finished;
- first model load: ``load_model`` of the embedded model in a fresh process with an empty cache
  (``ATP_VIZ_CACHE`` in a temporary folder: the GGUF is dequantized into a safetensors folder), then
  a second fresh process that reads that folder back.

    python bench/first_run.py [--venv .venv]     # writes bench/results/first_run.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "first_run.json"
LOAD = (
    "import time; t = time.monotonic(); from atp_viz import load_model; load_model({model!r}); "
    "print(time.monotonic() - t)"
)


def tree_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def timed_load(model: str, cache: Path) -> float:
    env = os.environ | {"ATP_VIZ_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD.format(model=model)], env=env, capture_output=True, text=True, check=True
    )
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    stamps = sorted(args.venv.glob(".atp-viz-installed-*"), key=lambda p: p.stat().st_mtime)
    created = (args.venv / "pyvenv.cfg").stat().st_mtime
    result: dict[str, object] = {
        "command": " ".join(["python", "bench/first_run.py", *sys.argv[1:]]),
        "date": dt.date.today().isoformat(),
        "venv_MB": round(tree_bytes(args.venv) / 1e6),
        "install_s": round(stamps[0].stat().st_mtime - created) if stamps else None,
        "install_note": "pyvenv.cfg creation to the first install stamp of scripts/setup.sh (pip cache state unknown)",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory() as cache:
        result["first_load_s"] = timed_load(args.model, Path(cache))  # dequantize the GGUF, write, load
        result["second_load_s"] = timed_load(args.model, Path(cache))  # read the cached safetensors folder
        result["cache_MB"] = round(tree_bytes(Path(cache)) / 1e6)
    result["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
