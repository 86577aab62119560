"""What a Workbench is made of, and how a setup puts it together (``assemble``).

The model (loaded, or shared with another Workbench), its windows (cut from the corpus, or given), the
ledger of its results, the dense weights every point starts from, the dense model's statistics, the layout
of its linears, the calibration mode that prunes it (``modes.CALIBRATION_MODES``) and, for an offloaded
model, the perplexity measured block by block during each prune pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import torch

from atp_viz.experiment.ledger import Ledger
from atp_viz.experiment.rates import LinearLayout
from atp_viz.experiment.setup import OFFLOAD_METRICS, Setup, check_lengths, cut_windows, given_windows, load_for
from atp_viz.experiment.shipped import ShippedResults
from atp_viz.experiment.statistics import DenseStatistics, DenseWeights
from atp_viz.models.data import Corpus, load_corpus
from atp_viz.models.loading import LoadedModel
from atp_viz.progress import Progress
from atp_viz.pruning.calibration import CalibrationMode, ModeInputs
from atp_viz.pruning.modes import calibration_mode
from atp_viz.pruning.offload import FileWeights, OffloadedModel, StreamedPerplexity
from atp_viz.store import ResultStore

SHARED = ("model", "device", "dtype", "trust_remote_code", "allow_pickle", "offload")  # what variants share


class Parts(NamedTuple):
    """A Workbench's parts (``Workbench`` keeps them private)."""

    setup: Setup  # with ``offload`` set when the model was offloaded automatically
    loaded: LoadedModel
    corpus: Corpus
    windows: dict[str, torch.Tensor]  # calibration and each split of the setup
    ledger: Ledger
    dense: DenseWeights | FileWeights
    stats: DenseStatistics
    layout: LinearLayout
    mode: CalibrationMode
    evaluation: StreamedPerplexity | None  # offloaded: perplexity measured during the prune pass


class Given(NamedTuple):
    """What a Workbench may be given instead of making it: a loaded model, pre-cut windows, the dense weights
    of that model (another Workbench's), shipped results to read under the store's."""

    loaded: LoadedModel | None = None
    windows: Sequence[torch.Tensor] | None = None
    dense: DenseWeights | FileWeights | None = None
    shipped: ShippedResults | None = None


def assemble(setup: Setup, store: ResultStore | None, progress: Progress | None, given: Given) -> Parts:
    """The parts of a Workbench for ``setup``: what is ``given``, the rest made (the model loaded with ``progress``)."""
    loaded, windows, dense, shipped = given
    loaded = loaded or load_for(setup, progress)
    if isinstance(loaded, OffloadedModel) and not setup.offload:  # offloaded automatically
        setup = replace(setup, offload=True)
    check_lengths(loaded, setup)
    if windows is None:
        corpus = load_corpus(setup.corpus)
        cut = cut_windows(corpus, loaded.tokenizer, setup)
    else:
        corpus, cut = given_windows(setup.corpus, windows)
    ledger = Ledger(store, setup, loaded.fingerprint, corpus, cut)
    ledger.shipped = shipped
    dense = dense or (FileWeights(loaded) if setup.offload else DenseWeights(loaded.blocks))
    stats = DenseStatistics(loaded, setup, cut["calibration"], ledger.prune_identity(), dense)
    inputs = ModeInputs(dense.blocks, stats.calls, stats.pruner, setup.prune.nm, setup.batch_size, stats.linears,
                        dense.restore)  # fmt: skip
    evaluation = None
    if isinstance(dense, FileWeights):  # offloaded: blocks stream through the device
        evaluation = StreamedPerplexity(loaded, dense, cut, setup.splits, setup.evaluation.batch_size)
    mode = calibration_mode(setup.calibration, inputs, evaluation)
    return Parts(setup, loaded, corpus, cut, ledger, dense, stats, LinearLayout(loaded.blocks), mode, evaluation)


def variant_setup(base: Setup, setup: Setup) -> Setup:
    """``setup`` as a variant of ``base`` runs it: offloaded too when ``base`` was offloaded automatically;
    refused when it would not share ``base``'s loaded model (``SHARED``)."""
    if base.offload and not setup.offload and setup.auto_offload:  # this model was offloaded automatically
        if set(setup.metrics) - set(OFFLOAD_METRICS):
            raise ValueError(
                f"{setup.model} does not fit {setup.device} whole, so its blocks stream from its files, which "
                f"measures {', '.join(OFFLOAD_METRICS)} only; drop zero-shot or free memory"
            )
        setup = replace(setup, offload=True)
    if setup != base and any(getattr(setup, name) != getattr(base, name) for name in SHARED):
        raise ValueError(f"a variant shares the loaded model: {', '.join(SHARED)} must stay the same")
    return setup
