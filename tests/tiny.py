"""Tiny random causal LMs saved as ordinary Hugging Face folders, so tests take the real loading path."""

from __future__ import annotations

import os
from pathlib import Path

import torch

VOCAB = 384
FAMILIES = ("llama", "gpt2", "opt", "gemma3", "qwen2")


def sample_text(paragraphs: int = 400) -> str:
    """Deterministic English-like text with enough variety for a BPE tokenizer and perplexity."""
    import random

    rng = random.Random(0)
    words = (
        "the model layer weight sparse prune error grows with depth attention token block "
        "rate beta uniform schedule outlier alpha heavy tail matrix norm hidden input output "
        "calibration window perplexity dense network signal noise early late deep"
    ).split()
    return "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "." for _ in range(paragraphs))


def make_tokenizer(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(text.split("\n\n"), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def tiny_config(family: str = "llama", layers: int = 4, hidden: int = 64):
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=4)
    if family == "llama":
        return tf.LlamaConfig(
            **common,
            intermediate_size=2 * hidden,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=True,
        )
    if family == "qwen2":
        return tf.Qwen2Config(
            **common, intermediate_size=2 * hidden, num_key_value_heads=2, max_position_embeddings=512
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **common,
            intermediate_size=2 * hidden,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=512,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        )
    if family == "opt":
        return tf.OPTConfig(
            vocab_size=VOCAB,
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=4,
            ffn_dim=2 * hidden,
            word_embed_proj_dim=hidden,
            max_position_embeddings=512,
        )
    if family == "gpt2":
        return tf.GPT2Config(
            vocab_size=VOCAB, n_layer=layers, n_embd=hidden, n_head=4, n_positions=512, bos_token_id=1, eos_token_id=2
        )
    raise ValueError(family)


def make_tiny_model(folder: Path, family: str = "llama", layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    """Save a random tiny causal LM of ``family`` with a BPE tokenizer into ``folder``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, layers, hidden))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    make_tokenizer(sample_text()).save_pretrained(str(folder))
    return folder


def make_corpus_file(path: Path, paragraphs: int = 400) -> Path:
    path.write_text(sample_text(paragraphs), encoding="utf-8")
    return path


def shared_tiny_model(family: str = "llama", layers: int = 4, hidden: int = 64) -> Path:
    """A tiny model folder built once per machine and reused by every test file (atomic rename)."""
    import shutil
    import tempfile

    root = Path(tempfile.gettempdir()) / "atp-viz-tests"
    folder = root / f"{family}-{layers}x{hidden}-v1"
    if not (folder / "config.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder.name}-"))
        make_tiny_model(building, family, layers, hidden)
        try:
            os.rename(building, folder)
        except OSError:  # another process finished first; theirs is identical
            shutil.rmtree(building, ignore_errors=True)
    return folder


def shared_corpus_file() -> Path:
    import tempfile

    path = Path(tempfile.gettempdir()) / "atp-viz-tests" / "tiny-corpus-v1.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        make_corpus_file(partial)
        partial.replace(path)
    return path


def tiny_workbench(calibration: str = "sequential"):
    """A Workbench on the shared tiny llama and corpus (4 calibration windows of 32 tokens, no store)."""
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup, Workbench

    setup = Setup(
        model=str(shared_tiny_model("llama")),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(samples=4, seqlen=32, seed=0),
        evaluation=EvalConfig(windows=2, seqlen=32),
        calibration=calibration,
        batch_size=2,
    )
    return Workbench(setup, None)


def make_bad_inputs(root: Path) -> dict[str, Path]:
    """Things a user could type that cannot be used: a non-causal model, a folder without weights,
    and empty, blank, binary and non-UTF-8 corpus files."""
    import transformers as tf

    root.mkdir(parents=True, exist_ok=True)
    bert = root / "bert"
    tf.BertModel(
        tf.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(str(bert))
    (root / "no-weights").mkdir(exist_ok=True)
    (root / "no-weights" / "config.json").write_text('{"model_type": "llama"}')
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n\n   \n\n")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary\xff" * 50)
    (root / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    return {
        "bert": bert,
        "no-weights": root / "no-weights",
        **{name: root / f"{name}.txt" for name in ("empty", "blank", "binary", "latin1")},
    }
