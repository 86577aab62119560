"""Export a pruned model (plain safetensors or compressed-tensors sparse-bitmask) and llm-compressor recipes.

Formats (``EXPORT_FORMATS``):
- ``safetensors``: an ordinary Hugging Face folder; the zeros are stored densely. Every loader reads
  it (transformers, vLLM ``vllm serve FOLDER``); this is the folder to serve.
- ``compressed-tensors``: the ``sparse-bitmask`` layout of compressed-tensors. Each pruned linear
  ``W`` (R x C) is stored as ``<name>.compressed`` (its non-zero values, row-major),
  ``<name>.bitmask`` (uint8, R x ceil(C / 8), bit j of byte k = W[r, 8k + j] != 0, little bit
  order), ``<name>.row_offsets`` (int64, index of each row's first value) and ``<name>.shape``;
  ``config.json`` carries ``quantization_config.sparsity_config`` as compressed-tensors' own
  ``ModelCompressor.update_config`` wrote it. compressed-tensors removed its sparse compressors in
  0.15.0 (0.14.0.1 is the last release that decompresses this layout); transformers and vLLM
  dropped sparse compressed-tensors checkpoints too, so this is a compact storage/archive form,
  not a serving form. ``load_sparse_bitmask`` reads it back with compressed-tensors' remaining
  helpers. See docs/serving.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from atp_viz.config import check_choice, check_nm
from atp_viz.models.loading import LoadedModel, blocks_path, swap_conv1d
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import PRUNERS
from atp_viz.schedules.methods import removed_note
from atp_viz.store import to_jsonable

SCHEDULE_FILE = "schedule.json"
CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
EXPORT_FORMATS = ("safetensors", "compressed-tensors")
# The llm-compressor release whose recipe schema recipe_snippet follows (checked by bench/llmcompressor_recipe.py).
LLMCOMPRESSOR_VERSION = "0.14.0.1"
# sparse-bitmask layout: compressed-tensors wrote and read it up to this release (removed in 0.15.0).
SPARSE_BITMASK_FORMAT = "sparse-bitmask"
SPARSE_BITMASK_VERSION = "0.14.0.1"
BITMASK_PARTS = ("shape", "compressed", "bitmask", "row_offsets")
BITS_PER_BYTE = 8
NM_GROUP, NM_KEEP = 4, 2  # a 2:4 pattern keeps at most 2 non-zeros in each group of 4 inputs
MODIFIER_NAME = re.compile(r"[A-Za-z_]\w*")

Rates = Sequence[float] | Mapping[str, float | Sequence[float]]


class ExportError(ValueError):
    """An export that cannot be written or read back as asked; the message says why and how to proceed."""


def check_target(folder: Path, force: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"export target {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise ExportError(f"export folder {folder} is not empty; pass --force to overwrite it")


def save_pruned(
    loaded: LoadedModel,
    folder: str | Path,
    schedule: dict[str, Any],
    force: bool = False,
    format: str = "safetensors",
) -> Path:
    """Save the (already pruned) model, its tokenizer and ``schedule`` (rates, settings, results).

    ``format`` is one of ``EXPORT_FORMATS``; with ``compressed-tensors`` the decoder blocks' linear
    weights are stored in the sparse-bitmask layout (module docstring). Nothing is written when the
    format or the target is refused.
    """
    check_choice("export format", format, EXPORT_FORMATS)
    folder = Path(folder).expanduser()
    check_target(folder, force)
    folder.mkdir(parents=True, exist_ok=True)
    # GPT-2 was converted to nn.Linear for pruning; its checkpoints expect the Conv1D layout.
    swapped = swap_conv1d(loaded.model, to_linear=False)
    try:
        loaded.model.save_pretrained(str(folder), safe_serialization=True)  # type: ignore[operator]
    finally:
        if swapped:
            swap_conv1d(loaded.model, to_linear=True)
    loaded.tokenizer.save_pretrained(str(folder))  # type: ignore[attr-defined]
    if format == "compressed-tensors":
        compress_folder(folder, sparse_targets(loaded))
    (folder / SCHEDULE_FILE).write_text(json.dumps(to_jsonable(schedule), indent=2, allow_nan=True))
    return folder


def sparse_targets(loaded: LoadedModel) -> list[str]:
    """Qualified names of the pruned linears (every ``nn.Linear`` of every decoder block)."""
    prefix = blocks_path(loaded)
    return [f"{prefix}.{i}.{name}" for i, block in enumerate(loaded.blocks) for name in prunable_linears(block)]


def bitmask_compress(weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """compressed-tensors' sparse-bitmask parts of a 2-D weight: non-zero values (row-major), the
    packed mask (little bit order), each row's offset into the values, and the dense shape."""
    from compressed_tensors.utils import pack_bitmasks

    mask = weight != 0  # (R, C)
    row_counts = mask.sum(dim=-1)
    return {
        "shape": torch.tensor(list(weight.shape)),
        "compressed": weight[mask].contiguous(),  # (nnz,)
        "bitmask": pack_bitmasks(mask.cpu()),  # (R, ceil(C / 8)) uint8
        "row_offsets": torch.cumsum(row_counts, 0) - row_counts,  # (R,)
    }


def bitmask_decompress(parts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The dense weight back from its sparse-bitmask parts (compressed-tensors' ``unpack_bitmasks``)."""
    from compressed_tensors.utils import unpack_bitmasks

    shape = [int(n) for n in parts["shape"].tolist()]
    mask = unpack_bitmasks(parts["bitmask"], shape)
    dense = torch.zeros(shape, dtype=parts["compressed"].dtype)
    dense[mask] = parts["compressed"]
    return dense


def sparsity_structure(weights: Sequence[torch.Tensor]) -> str:
    """``2:4`` when every group of 4 consecutive inputs of every weight holds at most 2 non-zeros,
    else ``unstructured`` (compressed-tensors' ``sparsity_structure`` values)."""
    for weight in weights:
        if weight.shape[-1] % NM_GROUP:
            return "unstructured"
        groups = (weight != 0).reshape(-1, NM_GROUP).sum(dim=-1)
        if bool((groups > NM_KEEP).any()):
            return "unstructured"
    return f"{NM_KEEP}:{NM_GROUP}"


def compress_folder(folder: Path, targets: Sequence[str]) -> dict[str, Any]:
    """Rewrite the safetensors files of a saved folder in the sparse-bitmask layout and add the
    compression config to ``config.json``; returns that sparsity config."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    wanted = {f"{name}.weight": name for name in targets}
    key_file: dict[str, str] = {}
    found: list[torch.Tensor] = []
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            tensors = {key: handle.get_tensor(key) for key in names}
            metadata = handle.metadata() or {}
        out: dict[str, torch.Tensor] = {}
        for key, tensor in tensors.items():
            if key in wanted:
                found.append(tensor)
                out.update({f"{wanted[key]}.{part}": value for part, value in bitmask_compress(tensor).items()})
            else:
                out[key] = tensor
        save_file(out, str(path), metadata={**metadata, "format": "pt"})
        key_file.update({key: path.name for key in out})
    missing = sorted(set(wanted) - {f"{name}.weight" for name in _compressed_names(key_file)})
    if missing:
        raise ExportError(f"{len(missing)} pruned weights are not in the saved files (first: {missing[0]})")
    index = folder / INDEX_FILE
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = dict(sorted(key_file.items()))
        index.write_text(json.dumps(data, indent=2))
    total = sum(w.numel() for w in found)
    sparsity = {
        "format": SPARSE_BITMASK_FORMAT,
        "global_sparsity": sum(int((w == 0).sum()) for w in found) / total,  # over the compressed weights
        "ignore": [],
        "registry_requires_subclass": False,
        "sparsity_structure": sparsity_structure(found),
        "targets": list(targets),
    }
    config_path = folder / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "sparsity_config": sparsity,
        "transform_config": {},
        "version": SPARSE_BITMASK_VERSION,
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return sparsity


def _compressed_names(keys: Mapping[str, str]) -> set[str]:
    suffix = ".bitmask"
    return {key[: -len(suffix)] for key in keys if key.endswith(suffix)}


def load_sparse_bitmask(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a sparse-bitmask folder, the compressed weights decompressed (``<name>.weight``).

    Reads the layout with compressed-tensors' ``get_nested_weight_mappings`` and ``unpack_bitmasks``.
    """
    from compressed_tensors.utils import get_nested_weight_mappings
    from safetensors import safe_open

    nested, others = get_nested_weight_mappings(str(folder), BITMASK_PARTS, return_unmatched_params=True)
    result: dict[str, torch.Tensor] = {}
    for module, parts in nested.items():
        values = {}
        for part, path in parts.items():
            with safe_open(path, framework="pt") as handle:
                values[part] = handle.get_tensor(f"{module}.{part}")
        result[f"{module}.weight"] = bitmask_decompress(values)
    for key, path in others.items():
        with safe_open(path, framework="pt") as handle:
            result[key] = handle.get_tensor(key)
    return result


def load_compressed(folder: str | Path, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A causal LM from a sparse-bitmask folder, in eval mode.

    transformers no longer decompresses sparse compressed-tensors checkpoints (checked: 5.23 with
    compressed-tensors 0.20.0 loads the folder but leaves every compressed weight missing, randomly
    initialised; 5.17 refuses compressed-tensors 0.14.0.1, the last release with the decompressor).
    This builds the model with transformers, then fills exactly those weights from
    ``load_sparse_bitmask``; any other missing weight is an error.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the compressed weights as missing: filled below
    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(  # (model, loading info) with output_loading_info
            str(folder), dtype=dtype, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    model: torch.nn.Module = loaded[0]
    info: dict[str, Any] = loaded[1]
    tensors = load_sparse_bitmask(folder)
    unfilled = sorted(set(info["missing_keys"]) - set(tensors))
    if unfilled:
        raise ExportError(f"{folder}: {len(unfilled)} weights are in neither form (first: {unfilled[0]})")
    missing = {key: tensors[key].to(dtype) for key in info["missing_keys"]}
    model.load_state_dict(missing, strict=False)
    return model.eval()


def _yaml_quote(text: str) -> str:
    """A YAML single-quoted scalar: backslashes stay literal, a quote is doubled."""
    return "'" + text.replace("'", "''") + "'"


def _check_rate(rate: object, where: str) -> float:
    try:
        value = float(rate)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a sparsity in [0, 1], got {rate!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{where} must be a sparsity in [0, 1], got {rate!r}")
    return value


def _sparsity_yaml(value: float | Sequence[float], where: str) -> str:
    if not isinstance(value, Iterable):  # a scalar (float, int, numpy scalar)
        return f"{_check_rate(value, where):.6f}"
    rates = [_check_rate(r, where) for r in value]
    if not rates:
        raise ValueError(f"{where} needs at least one rate, got an empty list")
    return "[" + ", ".join(f"{r:.6f}" for r in rates) + "]"


def _modifier_lines(modifier: str, note: str, sparsity: str, target: str, comment: str, mask: str) -> list[str]:
    head = f"    {modifier}:" + (f"  # {note}" if note else "")
    return [
        head,
        f"      sparsity: {sparsity}{comment}",
        f'      mask_structure: "{mask}"',
        f"      targets: [{_yaml_quote(target)}]",
        "      ignore: ['re:.*lm_head']",
    ]


def linear_targets(
    linear_rates: Mapping[str, Sequence[float]], linear_names: Sequence[Sequence[str]], blocks_path: str
) -> dict[str, list[float]]:
    """Rates per linear type as ``recipe_snippet``'s mapping form: one target per linear name within a
    block (``re:model\\.layers\\.\\d+\\.self_attn\\.q_proj$``), its rate in every block that has it, in
    model order (the order llm-compressor pairs a sparsity list with the modules a target matches).

    ``linear_rates``: ``{"attention": [...], "mlp": [...]}`` (or one list per linear name), one rate per block each
    (``Workbench.linear_rates``); ``linear_names``: each block's linear names (``Workbench.linear_names``).
    """
    from atp_viz.schedules.profiles import linear_group

    names = list(dict.fromkeys(name for block in linear_names for name in block))
    out: dict[str, list[float]] = {}
    for name in names:
        target = "re:" + re.escape(blocks_path) + r"\.\d+\." + re.escape(name) + "$"
        group = linear_rates[name] if name in linear_rates else linear_rates[linear_group(name)]  # LSA: per linear
        out[target] = [float(group[i]) for i, block in enumerate(linear_names) if name in block]
    return out


# Where decoder blocks live in LLaMA-style checkpoints: a recipe's targets when no model is loaded.
LLAMA_BLOCKS = ("model.layers", "LlamaDecoderLayer")


def block_location(loaded: LoadedModel) -> tuple[str, str]:
    """(path of the decoder blocks, their class name): what a recipe's targets name."""
    return blocks_path(loaded), type(loaded.blocks[0]).__name__


def schedule_recipe(
    rates: Sequence[float],
    pruner: str,
    location: tuple[str, str] = LLAMA_BLOCKS,
    nm: tuple[int, int] | None = None,
    linear_rates: Mapping[str, Sequence[float]] | None = None,
    linear_names: Sequence[Sequence[str]] = (),
) -> str:
    """The llm-compressor oneshot recipe of one schedule with ``pruner``'s modifier (``PRUNERS``): one
    sparsity per decoder block, or one per linear type when ``linear_rates`` gives them their own
    (``Workbench.linear_rates``, with ``Workbench.linear_names``). The CLI's ``schedule --recipe`` and the
    Schedules page both print this; a first comment line names the blocks it prunes whole (rate 1)."""
    entry = PRUNERS[pruner]
    targets = linear_targets(linear_rates, linear_names, location[0]) if linear_rates else [float(r) for r in rates]
    recipe = recipe_snippet(targets, entry.recipe_modifier, *location, note=entry.recipe_note, nm=nm)
    whole = removed_note(rates)
    return f"# this schedule {whole}\n{recipe}" if whole else recipe


def recipe_snippet(
    rates: Rates,
    modifier: str,
    blocks_path: str,
    block_class: str,
    note: str = "",
    nm: tuple[int, int] | None = None,
) -> str:
    """An llm-compressor oneshot recipe (schema of llm-compressor ``LLMCOMPRESSOR_VERSION``).

    ``modifier`` is the llm-compressor class (``WandaPruningModifier``, ``SparseGPTModifier``);
    ``note`` becomes a comment on its line. ``rates`` is either
    - a sequence, one sparsity per decoder block: llm-compressor pairs a list of sparsities with the
      modules ``targets`` matches, in model order, so the target is the block list itself
      (``blocks_path`` such as ``model.layers``, regex ``model\\.layers\\.\\d+$``); or
    - a mapping ``{target: rate}``, a target being a compressed-tensors target (``re:`` regex or a
      module name) and a rate a float or a list with one value per matched module (in model order).
      Its ``sparsity`` field takes a float or a list only, never a dict, so each entry becomes its
      own ``<name>_modifiers`` group holding one modifier.

    ``nm``: an N:M pattern becomes ``mask_structure: "N:M"`` (unstructured: ``"0:0"``).

    ``block_class`` is not a modifier field (the modifiers forbid extra fields such as
    ``sequential_targets``): the recipe names it in a comment, for ``oneshot(...,
    sequential_targets=[block_class])``; llm-compressor otherwise infers the same unit.
    """
    if not MODIFIER_NAME.fullmatch(modifier):
        raise ValueError(
            f"modifier must be an llm-compressor class name such as WandaPruningModifier, got {modifier!r}"
        )
    note = " ".join(note.lstrip("# ").split())
    check_nm(nm)
    mask = f"{nm[0]}:{nm[1]}" if nm else "0:0"
    header = [
        f"# llm-compressor {LLMCOMPRESSOR_VERSION} oneshot recipe; calibration unit: oneshot(..., "
        + f"sequential_targets=[{block_class!r}])",
        "sparsity_stage:",
        "  run_type: oneshot",
    ]
    if isinstance(rates, Mapping):
        if not rates:
            raise ValueError("rates mapping needs at least one {target: rate} entry, got an empty mapping")
        lines = list(header)
        for i, (target, rate) in enumerate(rates.items()):
            lines.append(f"  sparsity_{i}_modifiers:")
            lines += _modifier_lines(modifier, note, _sparsity_yaml(rate, f"rate of {target!r}"), target, "", mask)
        return "\n".join(lines) + "\n"
    pattern = "re:" + re.escape(blocks_path) + r"\.\d+$"
    sparsity = _sparsity_yaml(list(rates), "block rate")
    body = _modifier_lines(modifier, note, sparsity, pattern, "  # block 0 first", mask)
    return "\n".join([*header, "  sparsity_modifiers:", *body]) + "\n"
