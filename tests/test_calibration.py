"""The sequential loop: the dense-trajectory cache changes nothing, and no hook or stub survives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import shared_tiny_model
from torch import nn

from atp_viz.models.loading import load_model
from atp_viz.pruning.cached import collect_dense_stats
from atp_viz.pruning.calibration import DenseTrajectory, capture_block_calls, prune_sequential, run_block
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import get_pruner
from atp_viz.schedules.published import atp

ERRORS = ("cumulative_error", "local_error", "cumulative_error_abs", "local_error_abs", "layer_sparsity")


def setup_model(family: str = "llama"):
    loaded = load_model(str(shared_tiny_model(family)))
    ids = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(3))
    calls = capture_block_calls(loaded.model, loaded.blocks, ids, batch_size=2)
    dense = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    return loaded, calls, dense


def restore(model: nn.Module, dense: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(dense[name])


def assert_no_hooks(model: nn.Module, blocks: nn.ModuleList) -> None:
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks
    for block in blocks:
        assert "forward" not in block.__dict__  # no stub left in place of the class's forward


@pytest.mark.slow  # many pruned models
@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("pruner", ["wanda", "sparsegpt"])
def test_dense_trajectory_gives_identical_errors(family: str, pruner: str) -> None:
    loaded, calls, dense = setup_model(family)
    strategy = get_pruner(pruner)
    plain = []
    for beta in (0.0, 0.1):
        restore(loaded.model, dense)
        plain.append(prune_sequential(loaded.blocks, calls, atp(loaded.num_blocks, 0.5, beta), strategy, batch_size=2))
    trajectory = DenseTrajectory.empty(loaded.num_blocks)
    cached = []
    for beta in (0.0, 0.1):  # first run fills the trajectory, the second reads it
        restore(loaded.model, dense)
        cached.append(
            prune_sequential(
                loaded.blocks, calls, atp(loaded.num_blocks, 0.5, beta), strategy, batch_size=2, dense=trajectory
            )
        )
        assert trajectory.complete
    for a, b in zip(plain, cached):
        for name in ERRORS:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert trajectory.nbytes() == loaded.num_blocks * calls.hidden.numel() * calls.hidden.element_size()


def test_trajectory_reads_skip_the_dense_forward() -> None:
    """Once complete, a sequential prune runs two block forwards per block, not three."""
    loaded, calls, dense = setup_model()
    trajectory = DenseTrajectory.empty(loaded.num_blocks)
    counts = {"n": 0}
    handles = [b.register_forward_pre_hook(lambda *_: counts.__setitem__("n", counts["n"] + 1)) for b in loaded.blocks]
    try:
        rates = atp(loaded.num_blocks, 0.5, 0.1)
        prune_sequential(loaded.blocks, calls, rates, get_pruner("wanda"), batch_size=4, dense=trajectory)
        first, counts["n"] = counts["n"], 0
        restore(loaded.model, dense)
        prune_sequential(loaded.blocks, calls, rates, get_pruner("wanda"), batch_size=4, dense=trajectory)
    finally:
        for h in handles:
            h.remove()
    assert first == 3 * loaded.num_blocks and counts["n"] == 2 * loaded.num_blocks


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "gemma3", "qwen2"])
def test_no_hooks_or_stubs_survive(family: str) -> None:
    loaded, calls, _ = setup_model(family)
    assert_no_hooks(loaded.model, loaded.blocks)
    prune_sequential(
        loaded.blocks,
        calls,
        [0.5] * loaded.num_blocks,
        get_pruner("wanda"),
        batch_size=2,
        dense=DenseTrajectory.empty(loaded.num_blocks),
    )
    collect_dense_stats(loaded.blocks, calls, ("hessian", "sum_sq"), batch_size=2)
    assert_no_hooks(loaded.model, loaded.blocks)


def test_hooks_removed_when_the_loop_raises() -> None:
    loaded, calls, _ = setup_model()

    class Boom(Exception):
        pass

    def explode(*_: object) -> None:
        raise Boom

    first = next(iter(prunable_linears(loaded.blocks[1]).values()))
    handle = first.register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            prune_sequential(loaded.blocks, calls, [0.5] * loaded.num_blocks, get_pruner("wanda"), batch_size=2)
    finally:
        handle.remove()
    assert_no_hooks(loaded.model, loaded.blocks)


def test_owl_outlier_ratios_from_dense_stats() -> None:
    """OWL's D_i from the stored dense statistics equals a direct dense pass with Wanda scores."""
    from atp_viz.models.hooks import input_hooks
    from atp_viz.pruning.cached import outlier_ratios_from_stats
    from atp_viz.pruning.layer_stats import outlier_ratio
    from atp_viz.pruning.pruners import ColumnNorms

    loaded = load_model(str(shared_tiny_model()))
    calls = capture_block_calls(loaded.model, loaded.blocks, torch.randint(0, 300, (4, 16)), batch_size=2)
    stats = collect_dense_stats(loaded.blocks, calls, ("sum_sq",), batch_size=2)
    expected, hidden = [], calls.hidden
    with torch.inference_mode():
        for i, block in enumerate(loaded.blocks):
            linears = prunable_linears(block)
            norms = {name: ColumnNorms(lin.in_features) for name, lin in linears.items()}
            with input_hooks(linears, lambda name, x: norms[name].add(x)):
                hidden = run_block(block, hidden, calls.args[i], 2)
            scores = torch.cat([(lin.weight.abs() * norms[name].result()).flatten() for name, lin in linears.items()])
            expected.append(outlier_ratio(scores, 3.0))
    np.testing.assert_allclose(outlier_ratios_from_stats(loaded.blocks, stats, 3.0), expected)


@pytest.mark.parametrize("mode", ["sequential", "cached"])
def test_rate_maps_give_bit_identical_pruning(mode: str) -> None:
    """A per-block schedule, the same rates as BlockRates, and every linear listed in LinearRates at its
    block's rate prune to identical weights and errors (the loops ask rate(block, linear))."""
    from atp_viz.pruning.cached import prune_cached, score_orders
    from atp_viz.schedules.published import BlockRates, LinearRates

    loaded = load_model(str(shared_tiny_model()))
    calls = capture_block_calls(loaded.model, loaded.blocks, torch.randint(0, 300, (4, 16)), batch_size=2)
    dense = {
        (i, n): lin.weight.detach().clone()
        for i, b in enumerate(loaded.blocks)
        for n, lin in prunable_linears(b).items()
    }
    rates = atp(loaded.num_blocks, 0.5, 0.1)
    table = {(i, name): float(rates[i]) for (i, name) in dense}
    stats = collect_dense_stats(loaded.blocks, calls, ("sum_sq",), batch_size=2) if mode == "cached" else None
    results = []
    for rate_map in (rates, BlockRates(rates), LinearRates(np.zeros_like(rates), table)):
        with torch.no_grad():
            for (i, name), weight in dense.items():
                prunable_linears(loaded.blocks[i])[name].weight.copy_(weight)
        if mode == "cached":
            orders = score_orders(loaded.blocks, stats, get_pruner("wanda"))
            report = prune_cached(loaded.blocks, rate_map, get_pruner("wanda"), stats, orders)
        else:
            report = prune_sequential(
                loaded.blocks, calls, rate_map, get_pruner("wanda"), batch_size=2
            ).cumulative_error_abs
        weights = [lin.weight.detach().clone() for b in loaded.blocks for lin in prunable_linears(b).values()]
        results.append((weights, np.asarray(report)))
    for weights, report in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(weights, results[0][0]))
        np.testing.assert_array_equal(report, results[0][1])
