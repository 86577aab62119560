"""Prove that the recipes ``atp_viz.speed.export.recipe_snippet`` emits run in llm-compressor itself.

llm-compressor pins a transformers release other than the project's, so it runs in its own virtual
environment (created on first use, ``--venv``). This script, run with the project's interpreter:
1. writes an ATP recipe (S, beta; one Wanda sparsity per decoder block) with ``recipe_snippet``, and
   with ``--form both`` also a mapping-form recipe ({target regex: rate});
2. runs ``oneshot(model=FOLDER, recipe=..., dataset=<calibration text>)`` in the other environment
   (a subprocess), on the dequantized embedded model folder and the embedded corpus's calibration
   split;
3. reports the sparsity llm-compressor achieved in each block (and each linear type) against the
   requested rates.

Usage (not run in CI; the first run installs llmcompressor, a few minutes):
    .venv/bin/python bench/llmcompressor_recipe.py [MODEL_FOLDER] [--venv /tmp/llmc-venv]
MODEL_FOLDER defaults to the cached folder of the embedded model (``load_model("smollm2-135m").source``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from atp_viz.models.loading import DEFAULT_MODEL, find_blocks, resolve_source  # noqa: E402
from atp_viz.schedules.published import atp  # noqa: E402
from atp_viz.speed.export import LLMCOMPRESSOR_VERSION, recipe_snippet  # noqa: E402

MODIFIER = "WandaPruningModifier"
INSTALL_TIMEOUT_S = 1200
RUN_TIMEOUT_S = 1800
REPORT_DIGITS = 4
ATTENTION_TARGET = r"re:.*self_attn\.[qkvo]_proj$"  # mapping form: one scalar rate for attention
DOWN_TARGET = r"re:.*mlp\.down_proj$"  # mapping form: one rate per block (matched in model order)

# Runs inside the llm-compressor environment: no atp_viz import there.
INNER = r"""
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
import llmcompressor
from llmcompressor import oneshot

job = json.loads(open(sys.argv[1]).read())
tokenizer = AutoTokenizer.from_pretrained(job["model"])
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
dataset = Dataset.from_dict({"text": job["texts"]})
start = time.perf_counter()
oneshot(model=model, tokenizer=tokenizer, dataset=dataset, recipe=job["recipe"],
        num_calibration_samples=len(job["texts"]), max_seq_length=job["seq_len"])
seconds = time.perf_counter() - start
blocks = model.get_submodule(job["blocks_path"])
per_block, per_linear = [], {}
for i, block in enumerate(blocks):
    zeros = total = 0
    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Linear):
            z, n = int((module.weight == 0).sum()), module.weight.numel()
            zeros, total = zeros + z, total + n
            per_linear.setdefault(name, []).append(z / n)
    per_block.append(zeros / total)
print(json.dumps({"llmcompressor": llmcompressor.__version__, "transformers": __import__("transformers").__version__,
                  "oneshot_s": seconds, "per_block": per_block, "per_linear": per_linear}))
"""


def ensure_venv(venv: Path, torch_spec: str) -> str:
    """The llmcompressor version in ``venv``, creating the venv and installing it when missing."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import llmcompressor; print(llmcompressor.__version__)"]
    if python.is_file():
        done = subprocess.run(probe, check=False, capture_output=True, text=True)
        if done.returncode == 0 and last_line(done.stdout) == LLMCOMPRESSOR_VERSION:
            return LLMCOMPRESSOR_VERSION
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(torch_spec + "\n")  # keep the machine's torch build (a CPU wheel here)
    install = [
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "-c",
        str(constraints),
        f"llmcompressor=={LLMCOMPRESSOR_VERSION}",
    ]
    subprocess.run(install, check=True, timeout=INSTALL_TIMEOUT_S)
    return last_line(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)


def last_line(text: str) -> str:
    """The last non-empty line (importing llmcompressor logs warnings to stdout first)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def model_layout(folder: Path) -> tuple[int, str, str]:
    """(number of blocks, dotted path of the block list, block class) from the config alone (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    blocks = find_blocks(model)
    path = next(name for name, module in model.named_modules() if module is blocks)
    return len(blocks), path, type(blocks[0]).__name__


def calibration_texts(samples: int) -> list[str]:
    from atp_viz.models.data import load_corpus

    documents = [d for d in load_corpus().calibration_text.split("\n\n") if d.strip()]
    return documents[:samples]


def run_recipe(venv: Path, job: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    (workdir / "inner.py").write_text(INNER)
    (workdir / f"{name}.json").write_text(json.dumps(job))
    done = subprocess.run(
        [str(venv / "bin" / "python"), str(workdir / "inner.py"), str(workdir / f"{name}.json")],
        check=False,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rounded(values: list[float]) -> list[float]:
    return [round(v, REPORT_DIGITS) for v in values]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("model", nargs="?", default=None, help="dequantized model folder (default: the embedded model)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/llmc-venv"))
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.01)
    parser.add_argument("--samples", type=int, default=16, help="calibration documents")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--form", choices=("list", "both"), default="both", help="also run the mapping form")
    parser.add_argument("--torch-spec", default=None, help="pip constraint for torch (default: this torch's version)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report here (JSON)")
    args = parser.parse_args(argv)

    import torch

    folder = Path(args.model) if args.model else Path(resolve_source(DEFAULT_MODEL))
    started = time.perf_counter()
    version = ensure_venv(args.venv, args.torch_spec or f"torch=={torch.__version__}")
    install_s = time.perf_counter() - started
    layers, path, block_class = model_layout(folder)
    rates = atp(layers, args.sparsity, args.beta)
    recipes = {"list": recipe_snippet(rates.tolist(), MODIFIER, path, block_class)}
    if args.form == "both":
        mapping = {ATTENTION_TARGET: args.sparsity, DOWN_TARGET: rates.tolist()}
        recipes["mapping"] = recipe_snippet(mapping, MODIFIER, path, block_class)
    texts = calibration_texts(args.samples)
    report: dict[str, Any] = {
        "llmcompressor": version,
        "venv_ready_s": round(install_s, 1),
        "model": str(folder),
        "sparsity": args.sparsity,
        "beta": args.beta,
        "requested": rounded(rates.tolist()),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, recipe in recipes.items():
            job = {"model": str(folder), "recipe": recipe, "texts": texts, "seq_len": args.seq_len, "blocks_path": path}
            result = run_recipe(args.venv, job, Path(tmp), name)
            if "per_block" in result:
                result["per_block"] = rounded(result["per_block"])
                result["per_linear"] = {k: rounded(v) for k, v in result["per_linear"].items()}
                result["oneshot_s"] = round(result["oneshot_s"], 1)
            report[name] = {"recipe": recipe, **result}
    if "per_block" in report["list"]:
        gap = max(abs(a - r) for a, r in zip(report["list"]["per_block"], rates.tolist()))
        report["list"]["max_abs_gap_to_requested"] = round(gap, REPORT_DIGITS)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if all("error" not in report[name] for name in recipes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
