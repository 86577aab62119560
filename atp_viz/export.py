"""Export a pruned model as a safetensors Hugging Face folder with its ``schedule.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
