"""The sequential pipeline and the workbench on tiny random models of every supported family."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import FAMILIES, shared_corpus_file, shared_tiny_model

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench, sweep_specs
from atp_viz.measure.perplexity import perplexity
from atp_viz.measure.points import best_point
from atp_viz.models.loading import load_model
from atp_viz.pruning.calibration import capture_block_calls, prune_sequential, run_block
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import PruneConfig, get_pruner
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.schedules.published import atp, beta_grid
from atp_viz.store import ResultStore

TINY_CALIB = CalibConfig(samples=4, seqlen=32, seed=0)
TINY_EVAL = EvalConfig(windows=4, seqlen=32)


def tiny_setup(family: str = "llama", pruner: str = "wanda", **kw) -> Setup:
    return Setup(
        model=str(shared_tiny_model(family)),
        corpus=str(shared_corpus_file()),
        calib=TINY_CALIB,
        evaluation=TINY_EVAL,
        prune=PruneConfig(pruner),
        **kw,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_block_replay_matches_full_forward(family: str) -> None:
    """Replaying captured block calls one block at a time reproduces the model's own forward."""
    loaded = load_model(str(shared_tiny_model(family)))
    ids = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    calls = capture_block_calls(loaded.model, loaded.blocks, ids, batch_size=2)
    hidden = calls.hidden
    for block, call in zip(loaded.blocks, calls.args):
        hidden = run_block(block, hidden, call, batch_size=2)
    with torch.inference_mode():
        out = loaded.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    # hidden_states[-1] has the final norm applied; compare the pre-norm output through that norm.
    body = loaded.model.base_model
    norm = (
        getattr(body, "norm", None)
        or getattr(body, "ln_f", None)
        or getattr(getattr(body, "decoder", None), "final_layer_norm", None)
    )
    expected = out.hidden_states[-1]
    got = norm(hidden) if norm is not None else hidden
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt", "magnitude"])
def test_sequential_prune_hits_every_block_rate(family: str, pruner: str) -> None:
    loaded = load_model(str(shared_tiny_model(family)))
    ids = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    calls = capture_block_calls(loaded.model, loaded.blocks, ids, batch_size=2)
    rates = atp(loaded.num_blocks, 0.5, 0.1)
    report = prune_sequential(loaded.blocks, calls, rates, get_pruner(pruner), batch_size=2)
    for block, rate in zip(loaded.blocks, rates):
        for linear in prunable_linears(block).values():
            rows, cols = linear.weight.shape
            zeros = int((linear.weight == 0).sum())
            # within one weight per row of the requested rate
            assert abs(zeros - rate * rows * cols) <= rows, (family, pruner, zeros, rate * rows * cols)
    assert np.all(np.abs(report.layer_sparsity - rates) <= 1 / 32)
    assert np.all(report.cumulative_error >= 0) and np.all(report.local_error >= 0)
    # the first block sees the dense input, so its cumulative and local errors coincide
    assert report.cumulative_error[0] == pytest.approx(report.local_error[0], rel=1e-6)


def test_hooks_and_stubs_are_removed() -> None:
    loaded = load_model(str(shared_tiny_model("llama")))
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    calls = capture_block_calls(loaded.model, loaded.blocks, ids, batch_size=2)
    prune_sequential(loaded.blocks, calls, atp(loaded.num_blocks, 0.5, 0.0), get_pruner("wanda"), batch_size=2)
    for module in loaded.model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
        assert "forward" not in module.__dict__


def test_cumulative_error_grows_with_depth_under_uniform() -> None:
    """The error explosion: block outputs drift further from the dense model the deeper they are."""
    wb = Workbench(tiny_setup())
    result = wb.run(ScheduleSpec("uniform", 0.6))
    assert result.cumulative_error[-1] > result.cumulative_error[0]


@pytest.mark.slow  # many pruned models
def test_workbench_restores_dense_weights_between_points() -> None:
    wb = Workbench(tiny_setup(pruner="sparsegpt"))
    first = wb.run(ScheduleSpec("atp", 0.5, beta=0.1))
    wb.run(ScheduleSpec("uniform", 0.7))
    wb._ledger.memory.clear()  # measure again instead of reading the first result back
    again = wb.run(ScheduleSpec("atp", 0.5, beta=0.1))
    assert not again.cached
    assert again.perplexity == pytest.approx(first.perplexity, rel=1e-9)
    np.testing.assert_allclose(again.cumulative_error, first.cumulative_error, rtol=1e-9)


def test_dense_perplexity_matches_reference_loss() -> None:
    wb = Workbench(tiny_setup())
    with torch.inference_mode():
        ids = wb.windows("evaluation")
        loss = wb.loaded_model.model(input_ids=ids, labels=ids).loss
    assert wb.dense_perplexity() == pytest.approx(float(torch.exp(loss)), rel=1e-5)
    assert perplexity(wb.loaded_model.model, ids, batch_size=1) == pytest.approx(float(torch.exp(loss)), rel=1e-5)


@pytest.mark.slow  # many pruned models
def test_sweep_stores_each_point_and_resumes(tmp_path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    wb = Workbench(tiny_setup(), store=store)
    specs = sweep_specs(wb.num_blocks, 0.5, step=0.05)
    assert [s.method for s in specs] == ["uniform"] + ["atp"] * len(beta_grid(wb.num_blocks, 0.5, 0.05))
    first = list(wb.run_many(sweep_specs(wb.num_blocks, 0.5, 0.05)))
    assert store.count(kind="point") == len(specs)
    assert store.count(kind="metric") == 2 * len(specs)  # perplexity on validation and on evaluation
    assert not any(p.cached for p in first)
    again = list(Workbench(tiny_setup(), store=store).run_many(sweep_specs(wb.num_blocks, 0.5, 0.05)))
    assert all(p.cached for p in again)
    assert [p.perplexity for p in again] == [p.perplexity for p in first]
    best = best_point(first[1:])  # chosen on validation
    assert best.method == "atp" and best.value("perplexity", "validation") == min(
        p.value("perplexity", "validation") for p in first[1:]
    )
    assert all(np.isfinite(p.value("perplexity", "evaluation")) for p in first)


def test_owl_and_alphapruning_schedules_on_a_model() -> None:
    wb = Workbench(tiny_setup())
    for spec in (
        ScheduleSpec("owl", 0.6, lam=0.05),
        ScheduleSpec("alphapruning", 0.6, eps=0.2),
        ScheduleSpec("dlp", 0.6),
    ):
        rates = wb.schedule(spec)
        assert rates.shape == (wb.num_blocks,)
        weights = wb.param_counts if spec.method == "alphapruning" else None  # OWL and DLP keep the plain mean
        assert np.average(rates, weights=weights) == pytest.approx(0.6, abs=1e-9)
    assert wb._stats.outlier_ratios(5.0).shape == (wb.num_blocks,)


def test_nm_pruning_keeps_the_pattern() -> None:
    wb = Workbench(
        Setup(
            model=str(shared_tiny_model("llama")),
            corpus=str(shared_corpus_file()),
            calib=TINY_CALIB,
            evaluation=TINY_EVAL,
            prune=PruneConfig("wanda", (2, 4)),
        )
    )
    wb.apply(ScheduleSpec("uniform", 0.5))
    for block in wb.loaded_model.blocks:
        for linear in prunable_linears(block).values():
            groups = (linear.weight == 0).reshape(linear.weight.shape[0], -1, 4).sum(-1)
            assert torch.all(groups == 2)


def test_records_written_before_metrics_were_a_mapping_still_read(tmp_path) -> None:
    """A store written by the previous code (perplexity as a field, beta in the record) reads back."""
    from atp_viz.measure.metrics import upgrade_metrics
    from atp_viz.measure.points import PointResult

    legacy = {  # the exact field set PointResult.to_record wrote before this change
        "method": "atp", "sparsity": 0.7, "beta": 0.01, "rates": [0.55, 0.7, 0.85], "perplexity": 246.3,
        "layer_sparsity": [0.55, 0.7, 0.85], "cumulative_error": [0.1, 0.2, 0.4], "local_error": [0.1, 0.1, 0.1],
        "cumulative_error_abs": [1.0, 2.0, 4.0], "local_error_abs": [1.0, 1.0, 1.0], "achieved_sparsity": 0.7,
        "wall_time": 30.0, "params": {"method": "atp", "sparsity": 0.7, "beta": 0.01},
    }  # fmt: skip
    store = ResultStore(tmp_path / "old.sqlite")
    store.put("old-point", "point", "smollm2-135m", {"method": "atp"}, legacy)
    store.put("old-dense", "dense", "smollm2-135m", {"method": "dense"}, {"perplexity": 14.18})
    point = PointResult.from_record(store.get("old-point"), "old-point")
    assert point.perplexity == 246.3 and point.metrics == {"evaluation/perplexity": 246.3}
    assert point.beta == 0.01 and point.rates.tolist() == [0.55, 0.7, 0.85] and point.cached
    assert upgrade_metrics(store.get("old-dense")) == {"evaluation/perplexity": 14.18}
    assert PointResult.from_record(point.to_record()).metrics == point.metrics  # the new shape round-trips


def test_a_method_declares_its_statistic_and_the_parameters_it_is_computed_with() -> None:
    """The registry entry names the statistic (needs) and which of its parameters it is computed with
    (stat_params); the workbench passes them on without knowing the method."""
    from atp_viz.pruning.layer_stats import block_alphas
    from atp_viz.schedules.methods import Method, Param, registered
    from atp_viz.schedules.published import uniform

    seen: dict[str, np.ndarray] = {}

    def build(n: int, s: float, p: dict, stats: dict, w: object) -> np.ndarray:
        seen["alphas"] = np.asarray(stats["alphas"])
        return uniform(n, s)

    method = Method(
        "needs_alphas", "Needs alphas", "#010101", build, needs=("alphas",), stat_params=("estimator",),
        params=(Param("estimator", "estimator", "official", choices=("official", "window")),),
    )  # fmt: skip
    wb = Workbench(tiny_setup())
    official, window = block_alphas(wb.loaded_model.blocks, "official"), block_alphas(wb.loaded_model.blocks, "window")
    assert not np.array_equal(official, window)  # the two estimators differ on this model
    with registered(method):
        wb.schedule(ScheduleSpec("needs_alphas", 0.5, estimator="window"))
        np.testing.assert_array_equal(seen["alphas"], window)
        wb.schedule(ScheduleSpec("needs_alphas", 0.5))
        np.testing.assert_array_equal(seen["alphas"], official)
