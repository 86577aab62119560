"""Bytes on disk of a pruned model saved as a plain safetensors folder and as compressed-tensors.

The embedded model pruned by magnitude per row at one uniform rate (default 0.5), saved both ways with
``export.save_pruned``; each folder's total size is summed over its files, and the compressed folder is
read back with ``export.load_compressed`` and compared weight by weight.

    python bench/export_size.py            # writes bench/results/export_size.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import torch

from atp_viz.models.loading import load_model
from atp_viz.speed.export import load_compressed, save_pruned
from atp_viz.speed.kernels import magnitude_prune_

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "export_size.json"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    loaded = load_model(args.model)
    magnitude_prune_(loaded.blocks, args.sparsity)
    schedule = {"method": "uniform", "sparsity": args.sparsity, "pruner": "magnitude"}
    result: dict[str, object] = {
        "command": "python bench/export_size.py",
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "sparsity": args.sparsity,
        "pruner": "magnitude (per row)",
        "dtype": "float32",
    }
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("safetensors", "compressed-tensors"):
            started = time.monotonic()
            folder = save_pruned(loaded, Path(tmp) / fmt, schedule, format=fmt)
            result[fmt] = {"bytes": folder_bytes(folder), "MB": round(folder_bytes(folder) / 1e6, 1),
                           "write_s": round(time.monotonic() - started, 1)}  # fmt: skip
        back = load_compressed(Path(tmp) / "compressed-tensors")
        original = loaded.model.state_dict()
        result["read_back_identical"] = all(
            torch.equal(value, original[name]) for name, value in back.state_dict().items() if name in original
        )
    result["compressed_over_plain"] = round(
        result["compressed-tensors"]["bytes"] / result["safetensors"]["bytes"],  # type: ignore[index]
        3,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
