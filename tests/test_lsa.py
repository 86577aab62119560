"""LSA (BeiYazi0/LSA) as its code computes it: the greedy reconstruction error, both granularities, per-linear
rates through the rate map, and the blocks x projections heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_workbench

from atp_viz.dashboard import figures
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.lsa_stats import reconstruction_error
from atp_viz.schedules import lsa
from atp_viz.schedules.methods import ScheduleSpec, build_schedule
from atp_viz.schedules.published import LinearRates, ScheduleClipWarning, weighted_mean
from atp_viz.speed.export import linear_targets


def data(rows: int = 6, cols: int = 16, tokens: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) * torch.linspace(
        0.2, 3.0, cols, dtype=torch.float64
    )
    return w, x


def greedy_by_hand(w: torch.Tensor, h: torch.Tensor, group: int, fraction: float) -> tuple[float, list[set[int]]]:
    """Per row, one column at a time: the column adding the least error e_j = S_jj + 2 sum_{i in P} S_ij
    (S = H * w w^T), restricted to the current group; the total and each row's pruned set."""
    total, pruned = 0.0, []
    cols = w.shape[1]
    for k in range(w.shape[0]):
        s = h * torch.outer(w[k], w[k])
        chosen: set[int] = set()
        for start in range(0, cols, group):
            candidates = list(range(start, min(start + group, cols)))
            for _ in range(min(int(group * fraction), len(candidates))):
                added = {j: float(s[j, j] + 2 * sum(s[i, j] for i in chosen)) for j in candidates if j not in chosen}
                j = min(added, key=lambda c: (added[c], c))
                total += added[j]
                chosen.add(j)
        pruned.append(chosen)
    return total, pruned


@pytest.mark.parametrize(("group", "fraction"), [(16, 0.5), (4, 0.5), (8, 0.25), (5, 0.5)])
def test_greedy_error_matches_the_hand_greedy_and_the_true_reconstruction_error(group: int, fraction: float) -> None:
    w, x = data()
    h = x.T @ x
    got = reconstruction_error(w, h, group, fraction)
    expected, pruned = greedy_by_hand(w, h, group, fraction)
    assert got == pytest.approx(expected, rel=1e-5)
    # the sum of the increments is the error of removing those weights: sum_k ||X_P w_kP||^2
    true = sum(float((x[:, sorted(p)] @ w[k, sorted(p)]).square().sum()) for k, p in enumerate(pruned))
    assert got == pytest.approx(true, rel=1e-5)


def test_a_narrow_last_group_prunes_all_its_columns() -> None:
    w, x = data(cols=10)
    h = x.T @ x
    # groups of 8: 4 columns of the first, then both columns of the last (int(8 * 0.5) = 4 > 2)
    expected, pruned = greedy_by_hand(w, h, 8, 0.5)
    assert all({8, 9} <= p for p in pruned)
    assert reconstruction_error(w, h, 8, 0.5) == pytest.approx(expected, rel=1e-5)


def blk_score(errors: np.ndarray, final_s: float, alpha: float) -> np.ndarray:
    """layersp/blk.py blk_score's mapping, transcribed."""
    all_layer_ratio = np.abs(errors.mean(axis=1))
    layer_imp = 1 - all_layer_ratio / np.sum(all_layer_ratio)
    layer_imp = (layer_imp - layer_imp.min()) / (layer_imp.max() - layer_imp.min()) * alpha * 2
    return final_s + np.mean(layer_imp) - layer_imp


def blk_score_global(errors: np.ndarray, numel: np.ndarray, final_s: float, lamda: float) -> np.ndarray:
    """layersp/blk.py blk_score_global's mapping (--layer lsac), transcribed."""
    layer_imp = 1 - errors / np.sum(errors)
    layer_imp = (layer_imp - layer_imp.min()) / (layer_imp.max() - layer_imp.min()) * lamda * 2
    layer_prune_numel = numel * final_s + (np.mean(layer_imp) - layer_imp) * np.mean(numel)
    return layer_prune_numel / numel


ERRORS = np.abs(np.random.default_rng(1).normal(size=(5, 7))) + 0.1
SIZES = np.tile([16.0, 12.0, 12.0, 16.0, 24.0, 24.0, 24.0], (5, 1))


def test_layer_granularity_follows_blk_score_with_the_codes_spread_table() -> None:
    assert lsa.layer_alpha(0.7) == 0.15 and lsa.layer_alpha(0.5) == 0.04 and lsa.layer_alpha(0.6) == 0.1
    assert lsa.layer_alpha(0.05, 0.3) == 0.3  # only index 0 reads --Lamda
    np.testing.assert_allclose(lsa.layer_rates(ERRORS, 0.7), blk_score(ERRORS, 0.7, 0.15), atol=1e-12)
    rates = build_schedule(ScheduleSpec("lsa", 0.7), 5, {"lsa_errors": ERRORS, "linear_sizes": SIZES})
    np.testing.assert_allclose(rates, blk_score(ERRORS, 0.7, 0.15), atol=1e-12)
    assert np.mean(rates) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="below 0.9 only"):
        lsa.layer_rates(ERRORS, 0.95)


def test_projection_granularity_follows_blk_score_global_and_keeps_the_parameter_weighted_mean() -> None:
    table = lsa.projection_rates(ERRORS, SIZES, 0.7, 0.07)
    np.testing.assert_allclose(table, blk_score_global(ERRORS, SIZES, 0.7, 0.07), atol=1e-12)
    assert float((table * SIZES).sum() / SIZES.sum()) == pytest.approx(0.7)
    spec = ScheduleSpec("lsa", 0.7, granularity="projection", lam=0.07)
    rates = build_schedule(spec, 5, {"lsa_errors": ERRORS, "linear_sizes": SIZES})
    np.testing.assert_allclose(rates, (table * SIZES).sum(axis=1) / SIZES.sum(axis=1))
    assert weighted_mean(rates, SIZES.sum(axis=1)) == pytest.approx(0.7)


def test_rates_outside_zero_one_are_clipped_with_a_warning() -> None:
    sizes = np.tile([16.0, 1.0, 1.0, 16.0, 48.0, 48.0, 48.0], (5, 1))  # tiny linears: mean(n)/n = 25
    with pytest.warns(ScheduleClipWarning, match="LSA rates left"):
        table = lsa.projection_rates(ERRORS, sizes, 0.7, 0.07)
    np.testing.assert_allclose(table, np.clip(blk_score_global(ERRORS, sizes, 0.7, 0.07), 0, 1))
    with pytest.raises(ValueError, match="allowed: layer, projection"):
        ScheduleSpec("lsa", 0.7, granularity="head")


def test_heatmap_has_one_row_per_projection() -> None:
    per_linear = {f"p{j}": list(np.linspace(0.5, 0.9, 5) + j / 100) for j in range(7)}
    fig = figures.linear_rates_figure(per_linear, "LSA")
    heat = fig.data[0]
    assert list(heat.y) == list(per_linear) and np.array(heat.z).shape == (7, 5)
    assert fig.layout.yaxis.title.text == "linear (projection)"
    assert fig.layout.yaxis.type == "category"  # a linear axis has no place for a name: the heatmap drew empty


def test_projection_rates_reach_each_linear_on_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    wb = tiny_workbench("cached")
    spec = ScheduleSpec("lsa", 0.6, granularity="projection", lam=0.05)
    rates = wb.schedule(spec)
    table = wb._layout.per_linear(spec, lambda: wb.statistics(spec))
    assert table is not None and table.shape == (wb.num_blocks, len(wb.linear_names[0]))
    rate_map = wb.rate_map(spec, rates)
    assert isinstance(rate_map, LinearRates)
    wb.apply(spec)
    for i, block in enumerate(wb.loaded_model.blocks):
        for j, (name, lin) in enumerate(prunable_linears(block).items()):
            assert rate_map.rate(i, name) == table[i, j]
            zeros = float((lin.weight == 0).float().mean())
            assert abs(zeros - table[i, j]) <= 1.0 / lin.weight.shape[1] + 1e-9
    per_type = wb.linear_rates(spec, rates)
    assert set(per_type) == set(wb.linear_names[0])
    targets = linear_targets(per_type, wb.linear_names, "model.layers")
    assert len(targets) == len(wb.linear_names[0]) and all(len(v) == wb.num_blocks for v in targets.values())
    layer = ScheduleSpec("lsa", 0.6)
    assert (
        wb._layout.per_linear(layer, lambda: wb.statistics(layer)) is None
        and wb.linear_rates(layer, wb.schedule(layer)) == {}
    )


@pytest.mark.slow  # two Workbenches on the tiny model
def test_lsa_errors_are_cached_beside_the_dense_statistics_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from atp_viz.experiment import statistics
    from atp_viz.pruning.cached import load_stats
    from atp_viz.pruning.lsa_stats import ERROR_KIND

    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    first = tiny_workbench("cached")
    errors = first.statistics(ScheduleSpec("lsa", 0.6))["lsa_errors"]
    path = first._stats.path((ERROR_KIND,))
    assert first._stats.lsa_source == "computed" and path.parent == first._stats.path().parent  # one cache folder
    assert path.parent.parent == tmp_path / "cache" and load_stats(path, kinds=(ERROR_KIND,)) is not None

    def recomputed(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("LSA errors recomputed instead of read from the cache file")

    monkeypatch.setattr(statistics, "block_errors", recomputed)
    second = tiny_workbench("cached")
    again = second.statistics(ScheduleSpec("lsa", 0.6))["lsa_errors"]
    assert second._stats.lsa_source == "file" and second._stats._calls is None  # no calibration forward at all
    np.testing.assert_array_equal(again, errors)
    rates = build_schedule(ScheduleSpec("lsa", 0.6), 4, second.statistics(ScheduleSpec("lsa", 0.6)))
    np.testing.assert_array_equal(rates, first.schedule(ScheduleSpec("lsa", 0.6)))
    path.write_bytes(b"not safetensors")  # a damaged file is recomputed, never trusted
    monkeypatch.undo()
    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    third = tiny_workbench("cached")
    np.testing.assert_array_equal(third.statistics(ScheduleSpec("lsa", 0.6))["lsa_errors"], errors)
    assert third._stats.lsa_source == "computed"
