"""Model loading and corpora: named defaults, folders, errors; windows and splits."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import FAMILIES, shared_tiny_model

from atp_viz.models.data import (
    HUB_CORPORA,
    SPLIT_EVERY,
    VALIDATION_OFFSET,
    CorpusError,
    calibration_windows,
    evaluation_windows,
    hub_corpus,
    load_corpus,
    split_documents,
)
from atp_viz.models.loading import ModelLoadError, find_blocks, load_model, resolve_device


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_found_for_every_family(family: str) -> None:
    loaded = load_model(str(shared_tiny_model(family)))
    assert loaded.num_blocks == 4
    assert find_blocks(loaded.model) is loaded.blocks
    # GPT-2's Conv1D is converted to nn.Linear so every pruner sees (out, in) rows
    assert not [m for m in loaded.model.modules() if type(m).__name__ == "Conv1D"]
    assert any(isinstance(m, torch.nn.Linear) for m in loaded.blocks[0].modules())


def test_missing_path_and_folder_without_weights(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no weights"):
        load_model(str(tmp_path / "empty"))


def test_non_causal_model_is_refused(tmp_path) -> None:
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=100)
    ).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="causal"):
        load_model(str(tmp_path))


def test_device_and_dtype_choices() -> None:
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="allowed"):
        resolve_device("tpu")
    loaded = load_model(str(shared_tiny_model("llama")), dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="allowed: float32, bfloat16, float16"):
        load_model(str(shared_tiny_model("llama")), dtype="int3")


def test_split_is_disjoint_and_deterministic() -> None:
    docs = [f"document number {i}" for i in range(50)]
    corpus = split_documents("x", docs)
    evaluation = corpus.evaluation_text.split("\n\n")
    validation = corpus.validation_text.split("\n\n")
    calibration = corpus.calibration_text.split("\n\n")
    assert evaluation == docs[::SPLIT_EVERY] and validation == docs[VALIDATION_OFFSET::SPLIT_EVERY]
    assert (
        not set(evaluation) & set(calibration)
        and not set(validation) & set(calibration)
        and not set(validation) & set(evaluation)
    )
    assert len(evaluation) + len(validation) + len(calibration) == len(docs)
    again = split_documents("x", docs)
    assert all(
        again.split_fingerprint(s) == corpus.split_fingerprint(s) for s in ("calibration", "validation", "evaluation")
    )
    assert len({corpus.split_fingerprint(s) for s in ("calibration", "validation", "evaluation")}) == 3


def test_windows_are_seeded_and_bounded() -> None:
    ids = torch.arange(1000)
    a = calibration_windows(ids, 5, 64, seed=3)
    assert a.shape == (5, 64) and torch.equal(a, calibration_windows(ids, 5, 64, seed=3))
    assert not torch.equal(a, calibration_windows(ids, 5, 64, seed=4))
    assert torch.all(a[:, 1:] - a[:, :-1] == 1)  # contiguous text
    ev = evaluation_windows(ids, 3, 100)
    assert torch.equal(ev.flatten(), ids[:300])
    assert evaluation_windows(ids, 0, 100).shape == (10, 100)
    with pytest.raises(CorpusError, match=r"allowed: 1..10"):
        evaluation_windows(ids, 11, 100)
    with pytest.raises(CorpusError, match="need more"):
        calibration_windows(ids, 2, 1000, seed=0)


def test_local_files(tmp_path) -> None:
    rows = [{"text": f"row {i} " * 5} for i in range(30)]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    corpus = load_corpus(str(tmp_path / "c.jsonl"))
    assert corpus.evaluation_text.startswith("row 0")
    (tmp_path / "bin.txt").write_bytes(b"\0\1\2" * 100)
    with pytest.raises(CorpusError, match="binary"):
        load_corpus(str(tmp_path / "bin.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="at least 6"):
        load_corpus(str(tmp_path / "empty.txt"))
    with pytest.raises(CorpusError, match="allowed"):
        load_corpus("imagenet")


def test_wikitext2_loader_on_a_local_fixture(tmp_path) -> None:
    """The wikitext2 code path (train -> calibration, validation -> validation, test -> evaluation)."""
    import pandas as pd

    pd.DataFrame({"text": [" = Title = \n", " some train text \n", ""]}).to_parquet(tmp_path / "train.parquet")
    pd.DataFrame({"text": [" test line one \n", " test line two \n"]}).to_parquet(tmp_path / "test.parquet")
    pd.DataFrame({"text": [" valid line \n"]}).to_parquet(tmp_path / "validation.parquet")
    corpus = load_corpus(f"wikitext2:{tmp_path}")
    assert corpus.calibration_text == " = Title = \n\n\n some train text \n\n\n"
    assert corpus.evaluation_text == " test line one \n\n\n test line two \n"
    assert corpus.validation_text == " valid line \n"
    assert hub_corpus("wikitext2", HUB_CORPORA["wikitext2"], tmp_path) == corpus


@pytest.mark.slow
@pytest.mark.integration
def test_embedded_model_and_corpus() -> None:
    loaded = load_model("smollm2-135m")
    assert loaded.num_blocks == 30 and type(loaded.model).__name__ == "LlamaForCausalLM"
    corpus = load_corpus()
    assert len(corpus.evaluation_text) > 100_000 and len(corpus.validation_text) > 100_000
    assert len(corpus.calibration_text) > 7 * len(corpus.evaluation_text)
