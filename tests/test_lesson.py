"""The Lesson's computations on a tiny random model: the error budget against an independent computation
(prune one block alone, measure the last block's output by a plain forward pass of the whole model), the
stepper against the sequential loop, the dense-input variant, results stored and read back, and the checks
of link parameters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment import lesson
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.models.hooks import input_hooks
from atp_viz.pruning.calibration import prune_sequential, run_block
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import recorder
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore

UNIFORM = ScheduleSpec("uniform", 0.6)
ATP = ScheduleSpec("atp", 0.6, beta=0.2)


def tiny_bench(store: ResultStore | None = None, family: str = "llama") -> Workbench:
    setup = Setup(model=str(shared_tiny_model(family)), corpus=str(shared_corpus_file()),
                  calib=CalibConfig(3, 32), evaluation=EvalConfig(2, 32), batch_size=2)  # fmt: skip
    return Workbench(setup, store)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def bench(request: pytest.FixtureRequest) -> Workbench:
    """A tiny LLaMA, and a tiny Gemma-3 (its blocks alternate sliding-window and global attention, each with its
    own mask and rotary tables: the lesson replays each block with its own arguments)."""
    return tiny_bench(family=request.param)


def block_names(model: torch.nn.Module, blocks: torch.nn.ModuleList) -> list[str]:
    by_id = {id(module): name for name, module in model.named_modules()}
    return [by_id[id(block)] for block in blocks]


def last_block_output(model: torch.nn.Module, blocks: torch.nn.ModuleList, ids: torch.Tensor) -> torch.Tensor:
    """The last decoder block's output by a plain forward pass of the whole model (a forward hook)."""
    captured: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _args: tuple, out: object) -> None:
        captured.append((out[0] if isinstance(out, tuple) else out).detach().clone())

    handle = blocks[-1].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("spec", [UNIFORM, ATP])
def test_budget_matches_pruning_one_block_alone_in_a_plain_forward(bench: Workbench, spec: ScheduleSpec) -> None:
    result = lesson.budget(bench, spec)
    bench.restore()
    model, blocks = bench.loaded_model.model, bench.loaded_model.blocks
    ids = bench.windows("calibration")
    dense_last = last_block_output(model, blocks, ids)
    rates = bench.schedule(spec)
    pruner = bench.pruner
    for i in range(bench.num_blocks):
        copied = copy.deepcopy(model)
        copied_blocks = bench.loaded_model.blocks.__class__(  # the same blocks, in the copy
            [dict(copied.named_modules())[name] for name in block_names(model, blocks)]
        )
        linears = prunable_linears(copied_blocks[i])
        stats = {name: pruner.new_stats(lin.in_features) for name, lin in linears.items()}
        with input_hooks(linears, recorder(stats)), torch.no_grad():
            copied(input_ids=ids, use_cache=False)  # the dense model's own inputs of block i
        for name, lin in linears.items():
            pruner.prune_(lin, stats[name], float(rates[i]))
        pruned_last = last_block_output(copied, copied_blocks, ids)
        final = float(((dense_last.double() - pruned_last.double()) ** 2).sum())
        assert result.final_abs[i] == pytest.approx(final, rel=1e-3, abs=1e-9)
        assert result.final[i] == pytest.approx(final / float((dense_last.double() ** 2).sum()), rel=1e-3)
    assert np.allclose(result.rates, rates)
    assert np.all(result.local_abs > 0) and np.allclose(result.amplification, result.final_abs / result.local_abs)
    # the budget's blocks got their dense weights back
    assert all(torch.equal(lin.weight, bench._dense.weights[(i, n)]) for i, b in enumerate(blocks)
               for n, lin in prunable_linears(b).items())  # fmt: skip


def test_stepper_equals_the_sequential_loop(bench: Workbench) -> None:
    bench.restore()
    loop = prune_sequential(bench.blocks, bench.block_calls(), bench.schedule(ATP), bench.pruner,
                            batch_size=bench.setup.batch_size)  # fmt: skip
    stepper = lesson.Stepper(bench, ATP)
    stored: list[int] = []
    first = stepper.advance(2, stored=lambda: stored.append(stepper.done))
    assert len(first) == 2 and stored == [1, 2]  # told as each block's row is stored
    steps = stepper.advance(bench.num_blocks)
    for field, name in (("local_error", "local_error"), ("cumulative_error", "cumulative_error"),
                        ("local_error_abs", "local_error_abs"), ("cumulative_error_abs", "cumulative_error_abs"),
                        ("sparsity", "layer_sparsity")):  # fmt: skip
        assert [s[field] for s in steps] == pytest.approx(getattr(loop, name).tolist(), rel=1e-5)
    with pytest.raises(ValueError, match=f"blocks to prune must be in 0..{bench.num_blocks}"):
        stepper.advance(bench.num_blocks + 1)
    with pytest.raises(ValueError, match=f"all {bench.num_blocks} blocks are pruned already"):
        stepper.step()


def test_the_page_keeps_one_block_computed_ahead_after_the_first_press() -> None:
    assert [lesson.step_target(shown, 4) for shown in range(5)] == [0, 2, 3, 4, 4]  # nothing before a press
    assert lesson.step_target(1, 4, ahead=0) == 1
    with pytest.raises(ValueError, match="blocks to prune must be in 0..4, got 5"):
        lesson.step_target(5, 4)


def test_gemma_blocks_keep_their_own_attention_arguments() -> None:
    """Gemma-3 alternates sliding-window and global attention: the stepper and the budget replay each block with its
    own captured mask and rotary tables (a block given another block's arguments computes something else)."""
    wb = tiny_bench(family="gemma3")
    calls = wb.block_calls()
    masks = [kwargs["attention_mask"] for _, kwargs in calls.args]
    assert masks[0] is not None and masks[1] is None and masks[2] is not None  # sliding (a band) vs global (causal)
    wb.restore()
    with torch.no_grad():
        own = run_block(wb.blocks[0], calls.hidden, calls.args[0], wb.setup.batch_size)
        other = run_block(wb.blocks[0], calls.hidden, calls.args[1], wb.setup.batch_size)
    assert not torch.allclose(own, other)
    stepper = lesson.Stepper(wb, UNIFORM)
    steps = stepper.advance(lesson.step_target(1, wb.num_blocks))  # a first press and the block ahead
    loop = prune_sequential(wb.blocks, calls, wb.schedule(UNIFORM), wb.pruner,
                            batch_size=wb.setup.batch_size)  # fmt: skip
    assert [s["cumulative_error"] for s in steps] == pytest.approx(loop.cumulative_error[:2].tolist(), rel=1e-5)
    result = lesson.budget(wb, UNIFORM)
    assert result.final_abs.size == wb.num_blocks and np.isfinite(result.amplification).all()


def test_results_are_stored_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = ResultStore(tmp_path / "r.sqlite")
    wb = tiny_bench(store)
    assert lesson.stored_budget(wb, UNIFORM) is None and lesson.known_steps(wb, UNIFORM) == []
    computed = lesson.budget(wb, UNIFORM)
    dense_input = lesson.dense_input_errors(wb, UNIFORM)
    lesson.Stepper(wb, UNIFORM).advance(2)
    again = tiny_bench(store)  # a second student, or a reload: read back, nothing computed
    assert np.array_equal(lesson.stored_budget(again, UNIFORM).final_abs, computed.final_abs)
    assert np.array_equal(lesson.stored_dense_input(again, UNIFORM).cumulative_error, dense_input.cumulative_error)
    assert len(lesson.known_steps(again, UNIFORM)) == 2
    point = again.run(UNIFORM)  # once the point is stored, the stepper reads all its blocks from it
    steps = lesson.known_steps(again, UNIFORM)
    assert [s["cumulative_error"] for s in steps] == pytest.approx(point.cumulative_error.tolist())
    assert lesson.stored_budget(again, ATP) is None  # another schedule is another key


def test_a_blocks_weight_score_histogram(bench: Workbench) -> None:
    """Wanda's |W| x ||X|| of block 1's dense weights, ||X|| from the dense model's own inputs (checked against a
    plain forward pass with input hooks), split into pruned and kept at the block's rate."""
    from atp_viz.dashboard.lesson_figures import score_histogram_figure

    bench.restore()
    block, rate = 1, 0.6
    hist = lesson.score_histogram(bench, block, rate)
    linears = prunable_linears(bench.blocks[block])
    assert hist.linears == list(linears) and hist.score.startswith("Wanda")
    stats = {name: bench.pruner.new_stats(lin.in_features) for name, lin in linears.items()}
    with input_hooks(linears, recorder(stats)), torch.no_grad():
        bench.loaded_model.model(input_ids=bench.windows("calibration"), use_cache=False)
    pooled = []
    for name, lin in linears.items():
        out, inp = lin.weight.shape
        pruned, kept = hist.pruned[name], hist.kept[name]
        assert pruned.sum() == out * int(inp * rate) and pruned.sum() + kept.sum() == out * inp  # per row, as Wanda
        scores = (lin.weight.abs() * stats[name].result().reshape(1, -1)).flatten().double()
        logs = np.log10(scores.numpy())
        pooled.append(logs)
        counts = np.histogram(np.clip(logs, hist.edges[0], hist.edges[-1]), hist.edges)[0]
        assert np.abs(counts - (pruned + kept)).sum() <= 2  # the same scores (a value on a bin edge may move)
    fig = score_histogram_figure(hist)
    assert [t.name for t in fig.data] == ["kept", f"pruned at s = {rate:.3f}"]
    assert sum(fig.data[1].y) == sum(int(p.sum()) for p in hist.pruned.values())
    width = hist.edges[1] - hist.edges[0]
    assert fig.layout.shapes[0].x0 == pytest.approx(np.quantile(np.concatenate(pooled), rate), abs=width)
    name = hist.linears[-1]
    single = score_histogram_figure(hist, name)
    assert sum(single.data[0].y) + sum(single.data[1].y) == linears[name].weight.numel()
    with pytest.raises(ValueError, match="linear must be one of"):
        score_histogram_figure(hist, "nope")
    with pytest.raises(ValueError, match=f"block must be in 0..{bench.num_blocks - 1}"):
        lesson.score_histogram(bench, bench.num_blocks, rate)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got 1.5"):
        lesson.score_histogram(bench, 0, 1.5)
    assert lesson.score_stats_ready(bench)  # the statistics are loaded now


def test_pool_quantile_reads_binned_counts() -> None:
    from atp_viz.dashboard.lesson_figures import pool_quantile

    assert pool_quantile([0.0, 1.0, 2.0], [1, 3], 0.25) == pytest.approx(1.0)
    assert pool_quantile([0.0, 1.0, 2.0], [1, 3], 0.5) == pytest.approx(1 + 0.25 / 0.75)
    assert pool_quantile([0.0, 1.0, 2.0], [0, 0], 0.5) == pytest.approx(0.0)


def test_chapter_7_reads_the_shipped_measurements() -> None:
    from atp_viz.dashboard.lesson_figures import band_figure

    story = lesson.measured_story("smollm2-135m", 0.7)
    assert story is not None and lesson.measured_story("smollm2-135m", 0.6) is None
    assert lesson.measured_story("gemma3-270m", 0.7) is None
    rates = lesson.story_rates(story)
    assert list(rates) == ["p = 0.5", "p = 1 (ATP's line)", "p = 2"]
    for r in rates.values():
        assert r.size == 30 and r.mean() == pytest.approx(0.7)  # the same mean sparsity
    assert rates["p = 0.5"][0] < rates["p = 1 (ATP's line)"][0]  # concave: steeper over the first blocks
    profiles, band = lesson.story_text(story)
    assert "p = 0.5 has the lowest validation perplexity (235.0, the line 260.9)" in profiles
    assert "217.0 +- 5.9 against the line's 237.4 +- 1.9, lower at every seed" in profiles
    assert "uniform 688.3 +- 126.1 (+-18 %)" in band and "factor 2.7" in band
    fig = band_figure(story["curved"], "evaluation", "t")  # p = 2 has no evaluation value: left out
    assert list(fig.data[0].x) == ["p = 0.5", "p = 1 (ATP's line)"] and len(fig.data[1].y) == 6  # 3 seeds each
    assert list(fig.data[0].error_y.array) == pytest.approx([5.946, 1.927], abs=1e-3)
    seeds = band_figure(story["seed_band"], "evaluation", "t")
    assert len(seeds.data) == 1 and list(seeds.data[0].y) == pytest.approx([688.27, 256.55], abs=0.01)


def test_dense_inputs_change_the_masks_but_not_the_first_block(bench: Workbench) -> None:
    bench.restore()
    loop = prune_sequential(bench.blocks, bench.block_calls(), bench.schedule(UNIFORM), bench.pruner,
                            batch_size=bench.setup.batch_size)  # fmt: skip
    dense = lesson.dense_input_errors(bench, UNIFORM)
    # block 0 sees the same (dense) input either way; later blocks are calibrated on different inputs
    assert dense.cumulative_error[0] == pytest.approx(loop.cumulative_error[0], rel=1e-5)
    assert not np.allclose(dense.cumulative_error[1:], loop.cumulative_error[1:], rtol=1e-6)


def test_link_parameters_are_checked() -> None:
    assert lesson.parse_chapter("5") == 5
    with pytest.raises(ValueError, match=r"chapter must be one of 1, 2, 3, 4, 5, 6, 7, got '9'"):
        lesson.parse_chapter("9")
    assert lesson.parse_block("11", 30) == 11
    with pytest.raises(ValueError, match=r"block must be an integer in 0..29, got '30'"):
        lesson.parse_block("30", 30)
    assert lesson.parse_beta("0.012", [0.0, 0.006, 0.012]) == 0.012
    with pytest.raises(ValueError, match="beta must be a grid point"):
        lesson.parse_beta("0.5", [0.0, 0.006, 0.012])
    with pytest.raises(ValueError, match="presenter must be one of 0, 1"):
        lesson.parse_flag("presenter", "yes")


def test_curve_text_says_where_the_steps_are() -> None:
    stairs = [1.0, 1.1, 2.0, 2.1, 2.2, 2.2, 2.3, 2.3, 2.3, 2.4, 2.4, 5.0, 5.1, 5.1]
    assert lesson.jumps(stairs) == [2, 11]
    assert "staircase with jumps at blocks 2 and 11" in lesson.curve_text(stairs)
    assert lesson.norm_jumps([1.0, 1.0, 100.0, 10.0]) == [(2, 100.0), (3, 0.1)]  # squared norms
    assert lesson.spans([1, 2, 3, 7]) == "blocks 1-3 and 7"


def test_a_share_link_reads_back_to_the_same_view() -> None:
    from urllib.parse import parse_qs, urlparse

    link = lesson.share_link(5, 0.012, 11, "dense", True, False)
    assert link == "Lesson?chapter=5&beta=0.012&block=11&inputs=dense&presenter=1"
    query = {k: v[0] for k, v in parse_qs(urlparse(link).query).items()}
    assert lesson.parse_chapter(query["chapter"]) == 5 and lesson.parse_beta(query["beta"], [0.0, 0.012]) == 0.012
    assert lesson.parse_block(query["block"], 30) == 11 and lesson.parse_flag("presenter", query["presenter"])
    assert lesson.share_link(0, 0.0, 0, "pruned", False, False) == "Lesson?block=0"


def test_lesson_figures_draw_the_numbers() -> None:
    from atp_viz.dashboard import lesson_figures

    budget = lesson.Budget(
        rates=np.array([0.5, 0.6, 0.7]),
        local_abs=np.array([1.0, 2.0, 4.0]),
        local=np.array([0.1, 0.2, 0.4]),
        final_abs=np.array([10.0, 1.0, 4.0]),
        final=np.array([0.5, 0.05, 0.2]),
        dense_norm=np.array([10.0, 1000.0, 20.0]),
    )
    fig = lesson_figures.budget_figure(budget, joint_abs=20.0, selected=1)
    assert list(fig.data[0].y) == pytest.approx([50.0, 5.0, 20.0])  # shares of the joint final error, %
    assert list(fig.data[1].y) == pytest.approx([10.0, 0.5, 1.0])  # amplification final / local
    assert fig.layout.shapes[0].x0 == 0.5 and fig.layout.yaxis2.type == "log"  # block 1 shaded
    strip = lesson_figures.strip_figure(budget.rates, budget.local, budget.final, selected=None)
    assert [t.name for t in strip.data] == ["cumulative error", "local error"]
    assert list(strip.data[0].marker.color) == [0.5, 0.6, 0.7] and strip.layout.yaxis.type == "log"
    steps = [{"local_error": 0.1, "cumulative_error": 0.1}, {"local_error": 0.05, "cumulative_error": 0.3}]
    stepper = lesson_figures.stepper_figure(steps, 3)
    assert stepper.layout.title.text == "2 of 3 blocks pruned" and list(stepper.layout.xaxis.range) == [-0.5, 2.5]
    text = lesson.budget_text(budget, 20.0)
    assert "block 0 (50 %) and block 2 (20 %)" in text and "shares add up to 75 %" in text
    assert "block 1 shrinks" in text and "100x at block 1" in text
