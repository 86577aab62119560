"""atp-viz: see and tune layer-wise sparsity of large language models.

Implements ATP (arXiv 2502.14770): per-block sparsity rising with depth as an arithmetic progression
whose mean is the target, beside uniform, OWL, AlphaPruning and DLP schedules and the magnitude, Wanda and
SparseGPT pruners.

The public API (documented in ``docs/library.md``) is re-exported here; scripts and notebooks import from
``atp_viz`` alone. ``import atp_viz`` stays cheap: each name is imported from its module on first use, so
the schedule functions never load torch and ``from atp_viz import Workbench`` loads it only then.

The package's folders are layers (``tests/test_layers.py`` keeps every import pointing down): the root
(``config``, ``store``, ``display``) < ``schedules`` < ``models`` < ``measure`` < ``pruning`` <
``experiment`` < ``tuning`` | ``search`` | ``speed`` < ``cli`` | ``dashboard``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    # settings and the results store
    "CalibConfig": "atp_viz.config",
    "EvalConfig": "atp_viz.config",
    "PruneConfig": "atp_viz.pruning.pruners",
    "ResultStore": "atp_viz.store",
    # schedules (pure numpy) and a validated request for one
    "uniform": "atp_viz.schedules.published",
    "atp": "atp_viz.schedules.published",
    "beta_max": "atp_viz.schedules.published",
    "beta_grid": "atp_viz.schedules.published",
    "owl": "atp_viz.schedules.published",
    "alphapruning": "atp_viz.schedules.published",
    "dlp": "atp_viz.schedules.published",
    "ScheduleSpec": "atp_viz.schedules.methods",
    # models, statistics and measurements
    "load_model": "atp_viz.models.loading",
    "block_alphas": "atp_viz.pruning.layer_stats",
    "perplexity": "atp_viz.measure.perplexity",
    "score_tasks": "atp_viz.measure.zeroshot",
    "best_point": "atp_viz.measure.points",
    # experiments: schedule -> prune -> measure -> store
    "Setup": "atp_viz.experiment.workbench",
    "Workbench": "atp_viz.experiment.workbench",
}

__all__ = [
    "__version__",
    "CalibConfig",
    "EvalConfig",
    "PruneConfig",
    "ResultStore",
    "uniform",
    "atp",
    "beta_max",
    "beta_grid",
    "owl",
    "alphapruning",
    "dlp",
    "ScheduleSpec",
    "load_model",
    "block_alphas",
    "perplexity",
    "score_tasks",
    "best_point",
    "Setup",
    "Workbench",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on first use
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup, Workbench
    from atp_viz.measure.perplexity import perplexity
    from atp_viz.measure.points import best_point
    from atp_viz.measure.zeroshot import score_tasks
    from atp_viz.models.loading import load_model
    from atp_viz.pruning.layer_stats import block_alphas
    from atp_viz.pruning.pruners import PruneConfig
    from atp_viz.schedules.methods import ScheduleSpec
    from atp_viz.schedules.published import alphapruning, atp, beta_grid, beta_max, dlp, owl, uniform
    from atp_viz.store import ResultStore


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'atp_viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
