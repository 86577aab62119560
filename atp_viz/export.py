"""Export a pruned model as a safetensors Hugging Face folder with its ``schedule.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .models import LoadedModel, swap_conv1d
from .store import to_jsonable

SCHEDULE_FILE = "schedule.json"


class ExportError(ValueError):
    """An export target that would overwrite something; the message says how to proceed."""


def check_target(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"export target {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ExportError(f"export folder {folder} is not empty; pass --force to overwrite it")


def save_pruned(loaded: LoadedModel, folder: str | Path, schedule: dict[str, Any], force: bool = False) -> Path:
    """Save the (already pruned) model, its tokenizer and ``schedule`` (rates, settings, results)."""
    folder = Path(folder).expanduser()
    check_target(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2 was converted to nn.Linear for pruning; its checkpoints expect the Conv1D layout.
    swapped = swap_conv1d(loaded.model, to_linear=False)
    try:
        loaded.model.save_pretrained(str(folder), safe_serialization=True)
    finally:
        if swapped:
            swap_conv1d(loaded.model, to_linear=True)
    loaded.tokenizer.save_pretrained(str(folder))  # type: ignore[attr-defined]
    (folder / SCHEDULE_FILE).write_text(json.dumps(to_jsonable(schedule), indent=2, allow_nan=True))
    return folder


def recipe_snippet(rates: Sequence[float], pruner: str, blocks_path: str, block_class: str) -> str:
    """An llm-compressor oneshot recipe with one sparsity per decoder block.

    llm-compressor matches a list of sparsities to the layers ``targets`` selects, in order, so
    the targets are the decoder blocks themselves (``blocks_path`` such as ``model.layers``).
    """
    modifier = "SparseGPTModifier" if pruner == "sparsegpt" else "WandaPruningModifier"
    note = "  # llm-compressor has no oneshot magnitude modifier; Wanda is the closest" if pruner == "magnitude" else ""
    values = ", ".join(f"{r:.6f}" for r in rates)
    pattern = "re:" + blocks_path.replace(".", "\\.") + "\\.\\d+$"  # YAML single quotes keep backslashes
    lines = [
        "sparsity_stage:",
        "  run_type: oneshot",
        "  sparsity_modifiers:",
        f"    {modifier}:{note}",
        f"      sparsity: [{values}]  # block 0 first",
        '      mask_structure: "0:0"',
        f'      sequential_targets: ["{block_class}"]',
        f"      targets: ['{pattern}']",
        '      ignore: ["re:.*lm_head"]',
    ]
    return "\n".join(lines) + "\n"
