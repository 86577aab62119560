"""Cached calibration: dense statistics stored once, masks as prefixes of precomputed orders."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.measure.points import PointResult
from atp_viz.pruning.cached import compact_index, load_stats, zero_prefix_
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import PruneConfig, mask_from_order, order_by_score, wanda
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
TINY_CALIB = CalibConfig(samples=4, seqlen=32, seed=0)
TINY_EVAL = EvalConfig(windows=4, seqlen=32)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def bench(
    mode: str = "cached", pruner: str = "wanda", family: str = "llama", store: ResultStore | None = None
) -> Workbench:
    setup = Setup(
        model=str(shared_tiny_model(family)),
        corpus=str(shared_corpus_file()),
        calib=TINY_CALIB,
        evaluation=TINY_EVAL,
        prune=PruneConfig(pruner),
        calibration=mode,
        batch_size=2,
    )
    return Workbench(setup, store)


def assert_rates_hit(wb: Workbench, rates: np.ndarray) -> None:
    """Every linear of block i has floor(in * s_i) zeros per row on average (within one per row)."""
    for block, rate in zip(wb.loaded_model.blocks, rates):
        for linear in prunable_linears(block).values():
            rows, cols = linear.weight.shape
            zeros = int((linear.weight == 0).sum())
            assert abs(zeros - rows * math.floor(cols * rate + 1e-9)) <= rows


@pytest.mark.slow  # both calibration modes over every rate of a schedule
@pytest.mark.parametrize("pruner", ["wanda", "magnitude", "sparsegpt"])
def test_cached_and_sequential_prune_at_the_same_rates(pruner: str) -> None:
    spec = ScheduleSpec("atp", 0.5, beta=0.1)
    results = {}
    for mode in ("sequential", "cached"):
        wb = bench(mode, pruner)
        point = wb.run(spec)
        assert_rates_hit(wb, point.rates)
        results[mode] = point
    np.testing.assert_array_equal(results["cached"].rates, results["sequential"].rates)
    np.testing.assert_allclose(results["cached"].layer_sparsity, results["sequential"].layer_sparsity, atol=0.02)
    assert np.isfinite(results["cached"].perplexity)
    assert np.isnan(results["cached"].cumulative_error).all()  # not measured in cached mode
    assert np.isfinite(results["sequential"].cumulative_error).all()


def test_cached_masks_equal_direct_wanda_masks_on_dense_stats() -> None:
    wb = bench("cached")
    stats = wb.dense_stats()
    dense = {key: w.clone() for key, w in wb._dense.weights.items()}
    rates = wb.schedule(ScheduleSpec("atp", 0.6, beta=0.08))
    wb.apply(ScheduleSpec("atp", 0.6, beta=0.08))
    for i, block in enumerate(wb.loaded_model.blocks):
        for name, linear in prunable_linears(block).items():
            expected = wanda(dense[(i, name)], stats.accumulator("sum_sq", (i, name)).result(), float(rates[i]))
            assert torch.equal(linear.weight == 0, expected | (dense[(i, name)] == 0))
            assert torch.equal(linear.weight[~expected], dense[(i, name)][~expected])


def test_prefix_of_compact_order_equals_mask_from_order() -> None:
    scores = torch.rand(6, 50, generator=torch.Generator().manual_seed(0))
    order = order_by_score(scores)
    for rate in (0.0, 0.13, 0.5, 0.98, 1.0):
        weight = torch.ones(6, 50)
        zero_prefix_(weight, compact_index(order), rate)
        assert torch.equal(weight == 0, mask_from_order(order, rate))


@pytest.mark.slow  # dense statistics passes written, read back and reused
def test_stats_file_round_trip_and_reuse(private_cache: Path) -> None:
    first = bench("cached", "sparsegpt")
    stats = first.dense_stats()
    assert first.stats_source == "computed" and first.stats_file().is_file()
    assert first.stats_file().parent.parent == private_cache
    again = load_stats(first.stats_file())
    assert again is not None and again.tokens == stats.tokens == TINY_CALIB.samples * TINY_CALIB.seqlen
    assert set(again.states) == set(stats.states) == {"hessian", "sum_sq"}
    for kind, table in stats.states.items():
        assert again.states[kind].keys() == table.keys()
        assert all(torch.equal(again.states[kind][key], value) for key, value in table.items())
    second = bench("cached", "sparsegpt")
    second.dense_stats()
    assert second.stats_source == "file" and second._stats._calls is None  # no calibration forward at all
    spec = ScheduleSpec("uniform", 0.5)
    np.testing.assert_array_equal(first.run(spec).layer_sparsity, second.run(spec).layer_sparsity)
    # a damaged file is recomputed, not trusted
    first.stats_file().write_bytes(b"not safetensors")
    third = bench("cached", "sparsegpt")
    third.dense_stats()
    assert third.stats_source == "computed"


def test_cached_points_store_under_their_own_key(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results.sqlite")
    spec = ScheduleSpec("atp", 0.5, beta=0.1)
    cached = bench("cached", store=store)
    sequential = bench("sequential", store=store)
    assert cached.point_key(spec) != sequential.point_key(spec)
    point = cached.run(spec)
    back = cached.stored(spec)
    assert back is not None and back.cached and back.perplexity == point.perplexity
    assert np.isnan(back.local_error).all()
    assert PointResult.from_record(point.to_record()).method == "atp"


def test_cached_owl_uses_the_stored_dense_pass() -> None:
    cached, sequential = bench("cached"), bench("sequential")
    np.testing.assert_allclose(cached._stats.outlier_ratios(5.0), sequential._stats.outlier_ratios(5.0))
    assert cached.stats_file() == sequential.stats_file()  # one dense pass per machine, whichever mode asks first


@pytest.mark.slow
def test_gpu_sweep_tiny_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_sweep.py"), "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    report = json.loads(out.read_text())
    assert report["points"] == 9 and report["sweep_s"] > 0 and report["floor_s"] > 0
    assert "ratio" in done.stdout
