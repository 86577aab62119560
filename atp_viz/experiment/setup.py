"""What decides a result besides the schedule (``Setup``), and how a setup becomes a loaded model and windows.

``load_for`` loads the model of a setup (offloaded when it asks for it or does not fit the device whole:
``offload_needed``); ``cut_windows`` draws its calibration, validation and evaluation windows from the
corpus, or ``given_windows`` takes pre-cut ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atp_viz.config import CalibConfig, EvalConfig, check_choice, check_int
from atp_viz.experiment import classroom
from atp_viz.measure.metrics import EVALUATION, METRICS, SPLITS, VALIDATION
from atp_viz.measure.zeroshot import ZeroShotConfig
from atp_viz.models.data import DEFAULT_CORPUS, Corpus, calibration_windows, evaluation_windows, token_ids
from atp_viz.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    load_model,
    memory_shortfall,
    resolve_device,
    resolve_source,
    torch_dtype,
)
from atp_viz.progress import Progress
from atp_viz.pruning.modes import CALIBRATION_MODES
from atp_viz.pruning.offload import CALIBRATION_COPIES, EVALUATION_COPIES, load_offloaded
from atp_viz.pruning.pruners import PruneConfig


@dataclass(frozen=True)
class Setup:
    """Everything except the schedule that decides a result (plus where to run it)."""

    model: str = DEFAULT_MODEL
    corpus: str = DEFAULT_CORPUS
    calib: CalibConfig = field(default_factory=CalibConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    calibration: str = "sequential"
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8  # calibration windows per block call (memory, not results)
    metrics: tuple[str, ...] = ("perplexity",)  # keys of metrics.METRICS
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # used when "zeroshot" is a metric
    splits: tuple[str, ...] = SPLITS  # measured on; without validation, selection reads evaluation (benchmarks)
    trust_remote_code: bool = False  # load options: they decide what may run, not the results
    allow_pickle: bool = False
    offload: bool = False  # blocks stream from their files through the device one at a time (same results)
    auto_offload: bool = True  # offload when the whole model does not fit the device (and offload can run)
    # set by code only (the teacher's unlocked dashboard session): the classroom policy lets it through
    unrestricted: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("calibration mode", self.calibration, tuple(CALIBRATION_MODES))
        check_int("batch size", self.batch_size, 1)
        if not self.metrics:
            raise ValueError(f"choose at least one metric; allowed: {', '.join(METRICS)}")
        for name in self.metrics:
            check_choice("metric", name, tuple(METRICS))
        if EVALUATION not in self.splits:
            raise ValueError(f"the evaluation split is always measured; splits allowed: {', '.join(SPLITS)}")
        for split in self.splits:
            check_choice("split", split, SPLITS)
        if self.offload and set(self.metrics) - set(OFFLOAD_METRICS):
            raise ValueError(
                f"--offload measures {', '.join(OFFLOAD_METRICS)} only (zero-shot scoring runs whole-model forwards); "
                f"drop --offload or use --metrics {','.join(OFFLOAD_METRICS)}"
            )
        if self.offload and self.allow_pickle:
            raise ValueError("--offload reads safetensors files only; drop --allow-pickle or --offload")
        classroom.policy().check_setup(self)  # classroom mode: allowed names and bounds (local mode: nothing)

    @property
    def select_split(self) -> str:
        """Where the best of several points is chosen: validation when it is measured."""
        return VALIDATION if VALIDATION in self.splits else EVALUATION

    def describe(self) -> dict[str, Any]:
        """Flat, JSON-friendly settings: store rows are filtered on these fields."""
        zeroshot = (
            {"tasks": list(self.zeroshot.tasks), "items": self.zeroshot.items} if "zeroshot" in self.metrics else {}
        )
        return zeroshot | {
            "model": self.model,
            "corpus": self.corpus,
            "pruner": self.prune.pruner,
            "nm": list(self.prune.nm) if self.prune.nm else None,
            "calib_samples": self.calib.samples,
            "calib_seqlen": self.calib.seqlen,
            "seed": self.calib.seed,
            "eval_windows": self.evaluation.windows,
            "val_windows": self.evaluation.validation_windows,
            "eval_seqlen": self.evaluation.seqlen,
            "calibration": self.calibration,
            "dtype": self.dtype,
        }


OFFLOAD_METRICS = tuple(name for name, m in METRICS.items() if m.streams)  # measurable block by block


def offload_needed(setup: Setup, report: Callable[[str], None] | None = None) -> bool:
    """Whether ``auto_offload`` streams this model: it is a local safetensors folder that does not fit the device
    whole, and the setup can run offloaded (perplexity only, no pickle). Otherwise the in-memory load decides
    (and refuses a model that does not fit with its own line)."""
    if setup.offload or not setup.auto_offload or setup.allow_pickle or set(setup.metrics) - set(OFFLOAD_METRICS):
        return False
    source = resolve_source(setup.model, report)
    if not isinstance(source, Path):
        return False
    shortfall = memory_shortfall(source, torch_dtype(setup.dtype), resolve_device(setup.device))
    if shortfall is not None and report:
        report(f"{shortfall}: its blocks stream from the weight files instead (as --offload; --no-offload refuses)")
    return shortfall is not None


def load_for(setup: Setup, progress: Progress | None = None) -> LoadedModel:
    """The model of ``setup`` on its device and dtype, with its load options; offloaded when the setup asks for
    it or when it does not fit whole (``offload_needed``)."""
    report = (lambda message: progress(0.0, message)) if progress else None
    if setup.offload or offload_needed(setup, report):  # its budget counts the calibration and evaluation tokens
        ev = setup.evaluation
        tokens = setup.calib.samples * setup.calib.seqlen * CALIBRATION_COPIES
        tokens += sum(ev.windows_of(split) for split in setup.splits) * ev.seqlen * EVALUATION_COPIES
        return load_offloaded(setup.model, setup.device, setup.dtype, tokens,
                              trust_remote_code=setup.trust_remote_code, progress=report)  # fmt: skip
    return load_model(setup.model, setup.device, setup.dtype, trust_remote_code=setup.trust_remote_code,
                      allow_pickle=setup.allow_pickle, progress=report)  # fmt: skip


def check_lengths(loaded: LoadedModel, setup: Setup) -> None:
    limit = loaded.max_length
    for what, seqlen in (("calibration", setup.calib.seqlen), ("evaluation", setup.evaluation.seqlen)):
        if seqlen > limit:
            raise ValueError(
                f"{what} seqlen {seqlen} exceeds the model's context of {limit} tokens (allowed: 2..{limit})"
            )


def cut_windows(corpus: Corpus, tokenizer: object, setup: Setup) -> dict[str, torch.Tensor]:
    """Calibration windows (seeded, random) and validation / evaluation windows (first N, in order)."""
    ev = setup.evaluation
    out = {
        "calibration": calibration_windows(
            token_ids(tokenizer, corpus.calibration_text), setup.calib.samples, setup.calib.seqlen, setup.calib.seed
        )
    }
    for split in setup.splits:
        out[split] = evaluation_windows(
            token_ids(tokenizer, corpus.text(split)), ev.windows_of(split), ev.seqlen, split
        )
    return out


def given_windows(name: str, windows: Sequence[torch.Tensor]) -> tuple[Corpus, dict[str, torch.Tensor]]:
    """Pre-cut windows (calibration, evaluation) or (calibration, validation, evaluation); benchmarks
    on random-weight models have no tokenizer. With two, validation reuses the evaluation windows."""
    parts = dict(zip(("calibration", *SPLITS), windows if len(windows) == 3 else (windows[0], windows[1], windows[1])))
    digests = {
        k: f"token ids {hashlib.sha256(v.cpu().numpy().tobytes()).hexdigest()[:20]}:{tuple(v.shape)}"
        for k, v in parts.items()
    }
    return Corpus(name, digests["calibration"], digests[VALIDATION], digests[EVALUATION]), parts
