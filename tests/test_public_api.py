"""The public API: everything a script needs comes from ``atp_viz`` alone, and ``import atp_viz`` stays cheap.

A tiny end-to-end run goes through the public names only: schedule -> prune -> perplexity -> store.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from tiny import shared_corpus_file, shared_tiny_model

import atp_viz
from atp_viz import (
    CalibConfig,
    EvalConfig,
    PruneConfig,
    ResultStore,
    ScheduleSpec,
    Setup,
    Workbench,
    alphapruning,
    atp,
    best_point,
    beta_grid,
    beta_max,
    block_alphas,
    dlp,
    load_model,
    owl,
    perplexity,
    score_tasks,
    uniform,
)

NAMES = {
    "Setup", "Workbench", "ScheduleSpec", "CalibConfig", "EvalConfig", "PruneConfig", "ResultStore", "load_model",
    "perplexity", "score_tasks", "block_alphas", "uniform", "atp", "beta_max", "beta_grid", "owl", "alphapruning",
    "dlp", "best_point",
}  # fmt: skip


def test_every_public_name_is_exported_and_listed() -> None:
    assert set(atp_viz.__all__) == NAMES | {"__version__"} and NAMES <= set(dir(atp_viz))
    for name in atp_viz.__all__:
        assert getattr(atp_viz, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        atp_viz.nope  # noqa: B018


def test_importing_the_package_and_the_schedules_does_not_load_torch() -> None:
    code = (
        "import sys, atp_viz; light = 'torch' not in sys.modules and 'numpy' not in sys.modules; "
        "from atp_viz import atp; print(light, 'torch' not in sys.modules, atp(4, 0.5, 0.1).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[:2] == ["True", "True"], out
    assert out[2:] == ["[0.35,", "0.45,", "0.55,", "0.65]"]


def test_schedule_functions_keep_the_target_mean() -> None:
    n, s = 8, 0.6
    assert np.allclose(uniform(n, s), s)
    grid = beta_grid(n, s)
    assert grid[0] > 0 and grid[-1] <= beta_max(n, s) + 1e-12
    for rates in (
        atp(n, s, float(grid[-1])),
        owl(np.linspace(1, 3, n), s),
        alphapruning(np.linspace(2, 6, n), s),
        dlp(np.linspace(1, 2, n), s),
    ):
        assert rates.shape == (n,) and rates.mean() == pytest.approx(s) and ((rates >= 0) & (rates <= 1)).all()
    assert np.all(np.diff(atp(n, s, float(grid[-1]))) > 0)  # sparsity rises with depth


@pytest.mark.slow  # the whole beta grid of a 4-block model: 167 pruned models
def test_end_to_end_schedule_prune_perplexity_store(tmp_path) -> None:
    setup = Setup(
        model=str(shared_tiny_model("llama")),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(samples=4, seqlen=32, seed=0),
        evaluation=EvalConfig(windows=4, seqlen=32),
        prune=PruneConfig("wanda"),
    )
    store = ResultStore(tmp_path / "results.sqlite")
    wb = Workbench(setup, store=store)
    n = wb.num_blocks
    specs = [ScheduleSpec("uniform", 0.5), *(ScheduleSpec("atp", 0.5, beta=float(b)) for b in beta_grid(n, 0.5))]
    points = [wb.run(spec) for spec in specs]
    assert np.allclose(points[1].rates, atp(n, 0.5, float(beta_grid(n, 0.5)[0])))
    assert store.count(kind="point") == len(specs) and not any(p.cached for p in points)
    best = best_point(points)  # chosen on validation
    assert best.value("perplexity", "validation") == min(p.value("perplexity", "validation") for p in points)

    # the stored evaluation perplexity is what perplexity() measures on the same pruned weights
    wb.apply(specs[0])
    assert points[0].value("perplexity", "evaluation") == pytest.approx(
        perplexity(wb.loaded_model.model, wb.windows("evaluation"), setup.evaluation.batch_size), rel=1e-6
    )
    # a second workbench on the same store reads every point back without pruning
    again = [Workbench(setup, store=ResultStore(tmp_path / "results.sqlite")).run(spec) for spec in specs]
    assert all(p.cached for p in again)
    assert [p.perplexity for p in again] == [p.perplexity for p in points]


def test_model_statistics_and_zero_shot_through_the_api() -> None:
    loaded = load_model(str(shared_tiny_model("llama")))
    alphas = block_alphas(loaded.blocks)
    assert alphas.shape == (loaded.num_blocks,) and np.isfinite(alphas).all()
    scores = score_tasks(loaded.model, loaded.tokenizer, ("rte",), items=4, seed=0)
    assert set(scores) == {"rte"} and 0.0 <= scores["rte"].acc <= 1.0
