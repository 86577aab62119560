"""Export: the compressed-tensors sparse-bitmask folder round-trips exactly, the plain folder loads in
transformers, recipes parse as llm-compressor YAML, and bad input writes nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from tiny import shared_tiny_model

from atp_viz.models.loading import LoadedModel, load_model
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import magnitude
from atp_viz.speed.export import (
    EXPORT_FORMATS,
    bitmask_compress,
    bitmask_decompress,
    load_compressed,
    recipe_snippet,
    save_pruned,
    sparse_targets,
    sparsity_structure,
)

HALF = 0.5


@pytest.fixture(scope="module")
def pruned() -> LoadedModel:
    """The tiny llama with the lowest-|W| half of every block linear's rows zeroed."""
    loaded = load_model(str(shared_tiny_model()))
    with torch.no_grad():
        for block in loaded.blocks:
            for linear in prunable_linears(block).values():
                linear.weight[magnitude(linear.weight, HALF)] = 0
    return loaded


@pytest.fixture(scope="module")
def ct_folder(pruned: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pruned(
        pruned, tmp_path_factory.mktemp("ct") / "out", {"rates": [HALF] * 4}, format="compressed-tensors"
    )


def tokens() -> torch.Tensor:
    return torch.arange(3, 43).reshape(2, 20)


def pruned_weights(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    linears = {name: loaded.model.get_submodule(name) for name in sparse_targets(loaded)}
    return {
        f"{name}.weight": linear.weight.detach()
        for name, linear in linears.items()
        if isinstance(linear, torch.nn.Linear)
    }


def test_bitmask_layout_decompresses_exactly_with_compressed_tensors_own_helpers(
    pruned: LoadedModel, ct_folder: Path
) -> None:
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.utils import get_nested_weight_mappings, unpack_bitmasks
    from safetensors import safe_open

    config = json.loads((ct_folder / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    sparsity = SparsityCompressionConfig.load_from_registry(
        config["sparsity_config"]["format"], **config["sparsity_config"]
    )
    assert sparsity.format == "sparse-bitmask" and sparsity.sparsity_structure == "unstructured"
    assert sparsity.global_sparsity == pytest.approx(HALF)
    expected = pruned_weights(pruned)
    assert sorted(f"{t}.weight" for t in sparsity.targets) == sorted(expected)

    nested = get_nested_weight_mappings(str(ct_folder), ["shape", "compressed", "bitmask", "row_offsets"])
    assert sorted(f"{module}.weight" for module in nested) == sorted(expected)
    for module, parts in nested.items():
        with safe_open(parts["compressed"], framework="pt") as handle:
            shape = handle.get_tensor(f"{module}.shape").tolist()
            values = handle.get_tensor(f"{module}.compressed")
            mask = unpack_bitmasks(handle.get_tensor(f"{module}.bitmask"), shape)
            stored = set(handle.keys())
            assert f"{module}.weight" not in stored  # compressed, not dense
        dense = torch.zeros(shape, dtype=values.dtype)
        dense[mask] = values
        assert torch.equal(dense, expected[f"{module}.weight"])


def test_transformers_leaves_sparse_weights_missing_and_load_compressed_fills_them(
    pruned: LoadedModel, ct_folder: Path
) -> None:
    from transformers import AutoModelForCausalLM

    # transformers 5.x with compressed-tensors >= 0.15 has no sparse decompressor: the folder loads,
    # but every compressed weight is reported missing (randomly initialised). Documented in docs/serving.md.
    loaded: Any = AutoModelForCausalLM.from_pretrained(str(ct_folder), output_loading_info=True)
    info = loaded[1]
    assert set(info["missing_keys"]) == set(pruned_weights(pruned))

    model = load_compressed(ct_folder)
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, pruned.model(tokens()).logits)


def test_gpt2_conv1d_layout_round_trips(tmp_path: Path) -> None:
    loaded = load_model(str(shared_tiny_model("gpt2")))
    with torch.no_grad():
        for block in loaded.blocks:
            for linear in prunable_linears(block).values():
                linear.weight[magnitude(linear.weight, HALF)] = 0
        folder = save_pruned(loaded, tmp_path / "gpt2", {}, format="compressed-tensors")
        assert torch.equal(load_compressed(folder)(tokens()).logits, loaded.model(tokens()).logits)


def test_plain_safetensors_export_loads_in_transformers(pruned: LoadedModel, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folder = save_pruned(pruned, tmp_path / "plain", {"rates": [HALF] * 4})
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, pruned.model(tokens()).logits)
    assert json.loads((folder / "schedule.json").read_text()) == {"rates": [HALF] * 4}


def test_bad_format_is_one_line_and_writes_nothing(pruned: LoadedModel, tmp_path: Path) -> None:
    target = tmp_path / "never"
    with pytest.raises(ValueError) as err:
        save_pruned(pruned, target, {}, format="zip")
    message = str(err.value)
    assert "\n" not in message and all(name in message for name in EXPORT_FORMATS)
    assert not target.exists()


def test_bitmask_roundtrip_of_known_matrices() -> None:
    weight = torch.tensor(
        [[0.0, 1.5, 0.0, -2.0, 0.0, 0.0, 0.0, 0.0, 3.0], [4.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0]]
    )
    parts = bitmask_compress(weight)
    assert parts["compressed"].tolist() == [1.5, -2.0, 3.0, 4.0, 5.0]
    assert parts["row_offsets"].tolist() == [0, 3]
    assert parts["bitmask"].tolist() == [[0b00001010, 0b1], [0b00100001, 0]]  # little bit order, 9 cols -> 2 bytes
    assert torch.equal(bitmask_decompress(parts), weight)
    bf16 = torch.randn(8, 16).to(torch.bfloat16).masked_fill(torch.rand(8, 16) < HALF, 0)
    assert torch.equal(bitmask_decompress(bitmask_compress(bf16)), bf16)


def test_sparsity_structure_detects_two_four() -> None:
    two_four = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0]])
    assert sparsity_structure([two_four]) == "2:4"
    assert sparsity_structure([torch.tensor([[1.0, 2.0, 3.0, 0.0]])]) == "unstructured"


def test_list_recipe_parses_and_matches_llmcompressor_schema() -> None:
    rates = [0.4, 0.5, 0.6]
    text = recipe_snippet(
        rates, "WandaPruningModifier", "model.layers", "LlamaDecoderLayer", note="closest to magnitude"
    )
    recipe = yaml.safe_load(text)
    assert "sequential_targets" not in json.dumps(recipe)  # a forbidden extra field (named only in a comment)
    modifier = recipe["sparsity_stage"]["sparsity_modifiers"]["WandaPruningModifier"]
    assert modifier["sparsity"] == rates
    assert modifier["targets"] == [r"re:model\.layers\.\d+$"]
    assert set(modifier) == {"sparsity", "mask_structure", "targets", "ignore"}  # fields the modifier accepts
    assert "# closest to magnitude" in text and "LlamaDecoderLayer" in text


def test_recipe_carries_the_nm_pattern() -> None:
    text = recipe_snippet([0.5, 0.5], "SparseGPTModifier", "model.layers", "LlamaDecoderLayer", nm=(2, 4))
    modifier = yaml.safe_load(text)["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]
    assert modifier["mask_structure"] == "2:4"
    unstructured = recipe_snippet([0.5, 0.5], "SparseGPTModifier", "model.layers", "LlamaDecoderLayer")
    assert (
        yaml.safe_load(unstructured)["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]["mask_structure"]
        == "0:0"
    )
    with pytest.raises(ValueError, match="0 < N < M"):
        recipe_snippet([0.5], "SparseGPTModifier", "model.layers", "LlamaDecoderLayer", nm=(4, 4))


def test_recipe_accepts_numpy_rates_up_to_one() -> None:
    import numpy as np

    rates: Any = np.array([0.0, 0.5, 1.0])  # ATP at beta_max reaches 1.0 in the last block
    recipe = yaml.safe_load(recipe_snippet(rates, "WandaPruningModifier", "model.layers", "LlamaDecoderLayer"))
    assert recipe["sparsity_stage"]["sparsity_modifiers"]["WandaPruningModifier"]["sparsity"] == [0.0, 0.5, 1.0]
    mapping: dict[str, Any] = {"re:.*mlp.*": np.float32(0.25)}
    recipe = yaml.safe_load(recipe_snippet(mapping, "WandaPruningModifier", "model.layers", "LlamaDecoderLayer"))
    assert recipe["sparsity_stage"]["sparsity_0_modifiers"]["WandaPruningModifier"]["sparsity"] == 0.25


def test_mapping_recipe_has_one_group_per_target() -> None:
    rates: dict[str, float | list[float]] = {r"re:.*self_attn\.[qkvo]_proj$": 0.5, r"re:.*mlp\.down_proj$": [0.4, 0.6]}
    recipe = yaml.safe_load(recipe_snippet(rates, "SparseGPTModifier", "model.layers", "LlamaDecoderLayer"))
    groups = recipe["sparsity_stage"]
    found = {
        g["SparseGPTModifier"]["targets"][0]: g["SparseGPTModifier"]["sparsity"]
        for k, g in groups.items()
        if k.endswith("_modifiers")
    }
    assert found == rates


@pytest.mark.parametrize(
    ("rates", "modifier"),
    [
        ([], "WandaPruningModifier"),
        ([1.2], "WandaPruningModifier"),
        (["half"], "WandaPruningModifier"),
        ([0.5], "Wanda: x"),
        ({}, "WandaPruningModifier"),
        ([float("nan")], "WandaPruningModifier"),
    ],
)
def test_recipe_rejects_bad_input(rates: list[float], modifier: str) -> None:
    with pytest.raises(ValueError):
        recipe_snippet(rates, modifier, "model.layers", "LlamaDecoderLayer")
