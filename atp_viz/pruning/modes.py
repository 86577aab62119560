"""Calibration modes: one registry, each mode one entry and its factory.

A factory builds the mode for a Workbench's ``ModeInputs``; ``evaluation`` is None for a model in memory,
or the ``offload.StreamedPerplexity`` of a model whose blocks stream from their files (the mode then keeps
what it holds per block off the device, and ``calibration_mode`` wraps it so that the prune pass also
carries the evaluation windows). Every mode implements ``calibration.CalibrationMode``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from atp_viz.pruning.cached import CachedMode
from atp_viz.pruning.calibration import CalibrationMode, ModeInputs, SequentialMode
from atp_viz.pruning.offload import StreamedMode, StreamedPerplexity, spilled_trajectory

ModeFactory = Callable[[ModeInputs, StreamedPerplexity | None], CalibrationMode]


@dataclass(frozen=True)
class ModeEntry:
    """One calibration mode: its name (``--calibration``), factory and a line of help."""

    name: str
    factory: ModeFactory
    help: str


def sequential(inputs: ModeInputs, evaluation: StreamedPerplexity | None) -> CalibrationMode:
    """Paper-faithful; streamed, its dense trajectory goes to host memory or disk (``offload.spilled_trajectory``)."""
    if evaluation is None:
        return SequentialMode(inputs)
    return SequentialMode(inputs, spilled_trajectory(len(inputs.blocks), evaluation.loaded.device))


def cached(inputs: ModeInputs, evaluation: StreamedPerplexity | None) -> CalibrationMode:
    """From the dense statistics; streamed, each block's masks are computed while it is on the device."""
    return CachedMode(inputs, keep_orders=evaluation is None)


CALIBRATION_MODES: dict[str, ModeEntry] = {
    e.name: e
    for e in (
        ModeEntry("sequential", sequential, "paper-faithful"),
        ModeEntry(
            "cached",
            cached,
            "dense statistics computed once, no per-point calibration forward, no reconstruction errors",
        ),  # fmt: skip
    )
}


def calibration_mode(name: str, inputs: ModeInputs, evaluation: StreamedPerplexity | None = None) -> CalibrationMode:
    """The mode ``name`` for these inputs, in memory (``evaluation`` None) or over streamed blocks."""
    mode = CALIBRATION_MODES[name].factory(inputs, evaluation)
    return mode if evaluation is None else StreamedMode(mode, evaluation)
