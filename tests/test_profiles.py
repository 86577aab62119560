"""Beyond one straight line: rates per linear type, curved profiles, 2-D sweeps, their CLI, page and export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench, stored_groups
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import PruneConfig
from atp_viz.schedules import methods, profiles, published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.speed.export import linear_targets, recipe_snippet
from atp_viz.store import ResultStore
from atp_viz.tuning import sweep2d

ROOT = Path(__file__).resolve().parents[1]
SMOLLM_COUNTS = np.tile([884_736.0, 2_654_208.0], (30, 1))  # SmolLM2-135M: attention, MLP weights per block


# -- pure math --------------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [-0.5, -0.2, -0.05, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.95])
def test_split_keeps_each_block_mean_and_stays_in_range(offset: float, sparsity: float) -> None:
    rates = published.atp(30, sparsity, published.beta_max(30, sparsity))  # the steepest line: ends at 0 or 1
    split = profiles.split_rates(rates, offset, SMOLLM_COUNTS)
    means = (split * SMOLLM_COUNTS).sum(axis=1) / SMOLLM_COUNTS.sum(axis=1)
    np.testing.assert_allclose(means, rates, atol=1e-12)
    assert split.min() >= 0 and split.max() <= 1
    gap = split[:, 1] - split[:, 0]
    assert np.all(np.sign(gap) * np.sign(offset) >= 0) and np.all(np.abs(gap) <= abs(offset) + 1e-12)
    low, high = profiles.offset_bounds(rates, SMOLLM_COUNTS)
    free = (low < offset) & (offset < high)  # blocks where nothing was clipped: the full offset
    np.testing.assert_allclose(gap[free], offset, atol=1e-12)


def test_clipping_moves_the_excess_to_the_other_type() -> None:
    counts = np.array([[1.0, 3.0]])  # a quarter attention
    (att, mlp), *_ = profiles.split_rates([0.9], 0.4, counts)  # MLP would reach 1.0 + 0.0; attention 0.6
    assert att == pytest.approx(0.6) and mlp == pytest.approx(1.0)
    (att, mlp), *_ = profiles.split_rates([0.95], 0.4, counts)  # MLP clipped at 1, attention takes the rest
    assert mlp == 1.0 and att == pytest.approx(0.8) and (att + 3 * mlp) / 4 == pytest.approx(0.95)
    (att, mlp), *_ = profiles.split_rates([0.1], -0.5, counts)  # MLP would go below 0
    assert mlp == 0.0 and att == pytest.approx(0.4)


def test_zero_offset_and_single_type_blocks_keep_the_block_rate_exactly() -> None:
    rates = published.atp(30, 0.7, 0.01)
    split = profiles.split_rates(rates, 0.0, SMOLLM_COUNTS)
    assert np.array_equal(split[:, 0], rates) and np.array_equal(split[:, 1], rates)
    only_mlp = profiles.split_rates([0.3, 0.6], 0.3, np.array([[0.0, 5.0], [2.0, 2.0]]))
    assert only_mlp[0, 1] == 0.3 and only_mlp[1] == pytest.approx([0.45, 0.75])


@pytest.mark.parametrize(
    "bad, needle",
    [((0.7, 0.6), "offset must be in [-0.5, 0.5]"), ((0.7, math.nan), "offset must be in"), ((1.2, 0.1), "[0, 1]")],
)
def test_split_rejects_bad_input(bad: tuple[float, float], needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        profiles.split_rates([bad[0]], bad[1], np.array([[1.0, 1.0]]))
    assert needle in str(info.value)
    with pytest.raises(ValueError, match="counts must be 1 rows"):
        profiles.split_rates([0.5], 0.1, np.array([[0.0, 0.0]]))


@pytest.mark.parametrize(
    "name, group",
    [
        ("self_attn.q_proj", "attention"),
        ("attn.c_attn", "attention"),
        ("attention.dense", "attention"),
        ("mlp.down_proj", "mlp"),
        ("fc1", "mlp"),
        ("mlp.c_proj", "mlp"),
    ],
)
def test_linear_groups(name: str, group: str) -> None:
    assert profiles.linear_group(name) == group


@pytest.mark.parametrize("power", [0.25, 0.5, 2.0, 3.0, 7.0])
@pytest.mark.parametrize("layers, sparsity", [(30, 0.7), (12, 0.5), (2, 0.3)])
def test_power_profiles_keep_the_mean_and_increase(power: float, layers: int, sparsity: float) -> None:
    bound = profiles.power_beta_max(layers, sparsity, power)
    for beta in (0.0, bound / 3, bound):
        rates = profiles.power_profile(layers, sparsity, beta, power)
        assert rates.mean() == pytest.approx(sparsity, abs=1e-12)
        assert np.all(np.diff(rates) >= -1e-15) and rates.min() >= 0 and rates.max() <= 1
        assert rates[-1] - rates[0] == pytest.approx(beta * (layers - 1), abs=1e-12)
    with pytest.raises(ValueError, match=r"beta must be in \[0, "):
        profiles.power_profile(layers, sparsity, bound * 1.01 + 1e-9, power)


def test_power_one_is_atp_bit_for_bit_and_curvature_changes_the_shape() -> None:
    for beta in published.beta_grid(30, 0.7):
        assert np.array_equal(profiles.power_profile(30, 0.7, beta, 1.0), published.atp(30, 0.7, beta))
    assert profiles.power_beta_max(30, 0.7, 1.0) == published.beta_max(30, 0.7)
    convex = profiles.power_profile(30, 0.7, 0.01, 2.0)
    line = published.atp(30, 0.7, 0.01)
    assert convex[0] > line[0] and convex[15] < line[15]  # p > 1: flatter early, steeper late
    with pytest.raises(ValueError, match=r"power p must be in \[0.1, 10\]"):
        profiles.power_profile(30, 0.7, 0.01, 0.0)


@pytest.mark.parametrize("prefix", [0, 1, 2, 5, 29])
def test_prefix_profile_protects_the_first_blocks(prefix: int) -> None:
    bound = profiles.prefix_beta_max(30, 0.7, prefix)
    rates = profiles.prefix_profile(30, 0.7, bound, prefix)
    assert rates.mean() == pytest.approx(0.7, abs=1e-12) and rates.min() >= -1e-15 and rates.max() <= 1 + 1e-15
    assert np.all(np.diff(rates) >= -1e-15)
    if prefix >= 1:
        assert np.all(rates[:prefix] == rates[0]) and rates[prefix] == pytest.approx(rates[0] + bound)
    if prefix <= 1:
        np.testing.assert_allclose(profiles.prefix_profile(30, 0.7, 0.01, prefix), published.atp(30, 0.7, 0.01))
    for bad in (-1, 30, 2.5):
        with pytest.raises(ValueError, match=r"prefix must be a whole number of blocks in \[0, 29\]"):
            profiles.prefix_profile(30, 0.7, 0.0, bad)


@pytest.mark.parametrize(
    ("method", "given", "bound"),
    [
        ("power", {"power": 0.5}, profiles.power_beta_max(30, 0.7, 0.5)),
        ("power", {}, profiles.power_beta_max(30, 0.7, profiles.POWER_DEFAULT)),
        ("prefix", {"prefix": 10.0}, profiles.prefix_beta_max(30, 0.7, 10)),
    ],
)
def test_a_given_shape_parameter_keeps_the_beta_grid_at_that_shape(method: str, given: dict, bound: float) -> None:
    """compare --power 0.5 searches beta at p = 0.5 (its own bound), and only --beta fixes the grid."""
    from atp_viz.experiment.workbench import compare_cells

    (cell,) = compare_cells(30, [method], [0.7], published.GRID_STEP, {method: given})
    betas = [dict(spec.args)["beta"] for spec in cell.specs]
    assert betas == pytest.approx(published.GRID_STEP * np.arange(1, len(betas) + 1))
    assert betas[-1] <= bound + published.BETA_TOL < betas[-1] + published.GRID_STEP
    assert all(dict(spec.args).items() >= given.items() for spec in cell.specs)
    for spec in cell.specs:  # every grid point is buildable at the given shape
        assert methods.build_schedule(spec, 30).mean() == pytest.approx(0.7, abs=1e-12)
    (fixed,) = compare_cells(30, [method], [0.7], published.GRID_STEP, {method: {**given, "beta": 0.004}})
    assert fixed.specs == (ScheduleSpec(method, 0.7, **given, beta=0.004),)


def test_offset_zero_leaves_atp_as_it_was() -> None:
    spec = ScheduleSpec("atp", 0.7, beta=0.01)
    assert spec.params() == {"method": "atp", "sparsity": 0.7, "beta": 0.01}  # stored keys unchanged
    assert spec == ScheduleSpec("atp", 0.7, beta=0.01, offset=0.0) and spec.describe() == "atp S=0.7 beta=0.01"
    assert np.array_equal(methods.build_schedule(spec, 30), published.atp(30, 0.7, 0.01))
    assert methods.linear_split(spec, published.atp(30, 0.7, 0.01), SMOLLM_COUNTS) is None
    shifted = ScheduleSpec("atp", 0.7, beta=0.01, offset=-0.1)
    assert shifted.params()["offset"] == -0.1 and "offset=-0.1" in shifted.describe()
    with pytest.raises(ValueError, match=r"atp offset must be in \[-0.5, 0.5\], got 0.8"):
        ScheduleSpec("atp", 0.7, beta=0.01, offset=0.8)
    assert "power" not in methods.method_names(comparable=True, peers=True)
    assert {"power", "prefix"} <= set(methods.method_names(comparable=True))


# -- 2-D grids --------------------------------------------------------------------------------------
def test_grid_cells_share_atp_points_and_skip_what_cannot_be_built() -> None:
    grid = sweep2d.build_grid(sweep2d.AXES["power"], 30, 0.7, [0.0, 0.01, 0.02], [0.5, 1.0, 2.0])
    assert grid.cells[(0, 0)] == ScheduleSpec("uniform", 0.7) == grid.cells[(0, 2)]
    assert grid.cells[(1, 1)] == ScheduleSpec("atp", 0.7, beta=0.01)
    assert (2, 2) not in grid.cells  # beta 0.02 > power_beta_max(p = 2) = 0.0157
    assert grid.specs()[0] == ScheduleSpec("uniform", 0.7) and len(grid.specs()) == len(set(grid.specs())) == 6
    with pytest.raises(ValueError, match=r"axes must be one of beta,offset, beta,power"):
        sweep2d.axis_pair("offset,beta")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 0.02069\]"):
        sweep2d.build_grid(sweep2d.AXES["offset"], 30, 0.7, [0.03], [0.0])
    with pytest.raises(ValueError, match=r"power must be in \[0.1, 10\]"):
        sweep2d.build_grid(sweep2d.AXES["power"], 30, 0.7, [0.01], [20.0])


TINY_CALIB = CalibConfig(samples=4, seqlen=32, seed=0)
TINY_EVAL = EvalConfig(windows=2, seqlen=32)


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def bench(store: ResultStore | None = None, mode: str = "cached") -> Workbench:
    setup = Setup(model=str(shared_tiny_model("llama")), corpus=str(shared_corpus_file()), calib=TINY_CALIB,
                  evaluation=TINY_EVAL, prune=PruneConfig("wanda"), calibration=mode, batch_size=2)  # fmt: skip
    return Workbench(setup, store)


@pytest.mark.parametrize("mode", ["cached", "sequential"])
def test_rates_per_linear_type_reach_the_right_linears(private_cache: Path, mode: str) -> None:
    wb = bench(mode=mode)
    spec = ScheduleSpec("atp", 0.5, beta=0.1, offset=0.3)
    rates, _ = wb.apply(spec)
    split = profiles.split_rates(rates, 0.3, wb._layout.group_counts)
    for i, block in enumerate(wb.loaded_model.blocks):
        for name, linear in prunable_linears(block).items():
            rows, cols = linear.weight.shape
            rate = split[i, profiles.LINEAR_GROUPS.index(profiles.linear_group(name))]
            zeros_per_row = (linear.weight == 0).sum(dim=1)
            assert zeros_per_row.tolist() == [math.floor(cols * rate)] * rows, (i, name, rate)
    assert split[:, 1].min() > split[:, 0].max() - 0.3  # the MLP is pruned harder in each block
    point = wb.run(spec)
    assert point.linear_rates == {"attention": split[:, 0].tolist(), "mlp": split[:, 1].tolist()}
    assert wb.run(ScheduleSpec("atp", 0.5, beta=0.1)).linear_rates == {}


def test_offset_zero_prunes_exactly_as_block_rates(private_cache: Path) -> None:
    wb = bench()
    wb.apply(ScheduleSpec("atp", 0.5, beta=0.1))
    block = [lin.weight.clone() for b in wb.loaded_model.blocks for lin in prunable_linears(b).values()]
    rates = published.atp(4, 0.5, 0.1)
    wb.calibration.prune(
        published.LinearRates(rates, profiles.linear_table(np.stack([rates, rates], 1), wb.linear_names))
    )
    linear = [lin.weight for b in wb.loaded_model.blocks for lin in prunable_linears(b).values()]
    assert all(bool((a == b).all()) for a, b in zip(block, linear))


@pytest.mark.slow  # a 2-D sweep, run twice
def test_2d_sweep_is_stored_at_once_and_resumes(private_cache: Path, tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "r.sqlite")
    grid = sweep2d.build_grid(sweep2d.AXES["offset"], 4, 0.5, [0.0, 0.1], [-0.1, 0.0])
    seen = []
    found = sweep2d.run_grid(bench(store), grid, [0], on_point=lambda s, spec, p: seen.append(p.cached))
    assert seen == [False] * 4 and store.count(kind="point") == 4
    summary = sweep2d.summarize(grid, found)
    assert summary.best in (summary.line_best, summary.off_best) and grid.on_line(summary.line_best)
    assert summary.off_best is not None and not grid.on_line(summary.off_best) and summary.within_noise is None
    rows = summary.table()
    assert len(rows) == 4 and sum(r["best"] for r in rows) == 1 and {r["offset"] for r in rows} == {-0.1, 0.0}
    assert all(np.isfinite(summary.mean[s]).all() for s in ("validation", "evaluation"))
    again = sweep2d.run_grid(bench(store), grid, [0])  # a new process: everything read back
    assert all(p.cached for points in again.values() for p in points)
    assert store.count(kind="point") == 4
    stored = stored_groups(bench(store), grid.specs(), [0], need=())[0]
    assert sweep2d.summarize(grid, stored).best == summary.best


# -- CLI ---------------------------------------------------------------------------------------------
def tiny_args(store: Path) -> list[str]:
    return ["--model", str(shared_tiny_model("llama")), "--corpus", str(shared_corpus_file()), "--calib-samples",
            "4", "--seqlen", "32", "--eval-windows", "2", "--store", str(store)]  # fmt: skip


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--axes", "beta,lambda"], "axes must be one of beta,offset, beta,power"),
        (["--values", "0.9"], "ATP offset must be in [-0.5, 0.5], got 0.9"),
        (["--axes", "beta,power", "--values", "0"], "power profile (x^p) power must be in [0.1, 10], got 0"),
        (["--betas=-0.1"], "--betas must each be a number >= 0"),
        (["--betas", "0.5"], "beta must be in [0, 0.33333] for 4 blocks at S = 0.5, got 0.5"),
        (["--step", "0"], "--step must be in (0, 1)"),
    ],
)
def test_sweep2d_bad_input_is_one_line_and_writes_nothing(
    capsys, tmp_path: Path, extra: list[str], needle: str
) -> None:
    store = tmp_path / "r.sqlite"
    code = main(["sweep2d", *tiny_args(store), "--sparsity", "0.5", *extra])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("atp-viz: error:")]  # the rest: loading logs
    assert code == 2 and len(errors) == 1 and needle in errors[0], err
    assert not store.exists()


@pytest.mark.slow  # a 2-D sweep through the CLI
def test_sweep2d_cli_json(capsys, tmp_path: Path, private_cache: Path) -> None:
    argv = ["sweep2d", *tiny_args(tmp_path / "r.sqlite"), "--sparsity", "0.5", "--axes", "beta,power", "--betas",
            "0.1", "--values", "1,2", "--evaluate", "best", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["axes"] == "beta,power" and out["values"] == [1.0, 2.0] and len(out["table"]) == 2
    assert out["best"]["seeds"] == 1 and math.isfinite(out["best"]["perplexity (evaluation)"])
    assert out["best_on_paper_line"]["schedule"] == "atp S=0.5 beta=0.1"
    assert out["best_off_paper_line"]["schedule"] == "power S=0.5 beta=0.1 power=2"
    assert [row["seeds"] for row in out["table"]] == [1, 1]


def test_schedule_recipe_and_saved_schedule_carry_rates_per_linear(capsys, tmp_path: Path, private_cache: Path) -> None:
    model = str(shared_tiny_model("llama"))
    code = main(["schedule", "--layers", "4", "--method", "atp", "--sparsity", "0.5", "--beta", "0.1", "--offset",
                 "0.2"])  # fmt: skip
    assert code == 2 and "--offset needs each block's attention and MLP sizes" in capsys.readouterr().err
    argv = ["schedule", "--model", model, "--corpus", str(shared_corpus_file()), "--method", "atp", "--sparsity",
            "0.5", "--beta", "0.1", "--offset", "0.2", "--recipe", "--json"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    import yaml

    recipe = yaml.safe_load(out["recipe"])["sparsity_stage"]
    groups = [next(iter(v.values())) for k, v in recipe.items() if k.endswith("_modifiers")]
    by_target = {g["targets"][0]: g["sparsity"] for g in groups}
    assert len(by_target) == 7  # q, k, v, o, gate, up, down
    q = by_target[r"re:model\.layers\.\d+\.self_attn\.q_proj$"]
    down = by_target[r"re:model\.layers\.\d+\.mlp\.down_proj$"]
    assert q == pytest.approx(out["linear_rates"]["attention"], abs=1e-6)
    assert down == pytest.approx(out["linear_rates"]["mlp"], abs=1e-6)
    np.testing.assert_allclose(np.subtract(down, q), 0.2, atol=1e-6)
    folder = tmp_path / "saved"
    argv = ["prune", *tiny_args(tmp_path / "r.sqlite"), "--method", "atp", "--sparsity", "0.5", "--beta", "0.1",
            "--offset", "0.2", "--save", str(folder), "--json"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((folder / "schedule.json").read_text())
    assert saved["params"]["offset"] == 0.2 and saved["linear_rates"]["mlp"] == pytest.approx(down, abs=1e-6)


def test_linear_targets_follow_model_order() -> None:
    names = [["self_attn.q_proj", "mlp.up_proj"], ["self_attn.q_proj", "mlp.up_proj"]]
    targets = linear_targets({"attention": [0.1, 0.2], "mlp": [0.3, 0.4]}, names, "model.layers")
    assert targets == {r"re:model\.layers\.\d+\.self_attn\.q_proj$": [0.1, 0.2],
                       r"re:model\.layers\.\d+\.mlp\.up_proj$": [0.3, 0.4]}  # fmt: skip
    assert "sparsity: [0.100000, 0.200000]" in recipe_snippet(targets, "WandaPruningModifier", "model.layers", "X")


# -- page --------------------------------------------------------------------------------------------
@pytest.fixture
def dashboard(dashboard_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, settle_jobs: None) -> None:
    for name, value in dashboard_env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.slow
def test_profile_shapes_page_runs_the_grid_and_draws_it(dashboard: None) -> None:
    at = AppTest.from_file(str(ROOT / "pages" / "7_Profile_shapes.py"), default_timeout=120)
    at.session_state["_sparsity"] = 0.5
    at.session_state["_p2d_step"] = 0.15
    at.session_state["_p2d_values_offset"] = "-0.1,0"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Run grid (6 missing)" in b.label for b in at.button)
    at.button(key="p2d_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [c["layout"]["title"]["text"] for c in charts]
    assert titles[:2] == ["validation perplexity", "evaluation perplexity"]
    heat = charts[0]["data"][0]
    assert heat["type"] == "heatmap" and np.isfinite(np.array(heat["customdata"], dtype=float)).all()
    assert any(t["name"].startswith("paper's line") for t in charts[0]["data"][1:])
    assert "rates per block and linear type" in titles[2] and titles[3].startswith("Curved profiles")
    assert any("Best cell" in s.value and "on the line: " in s.value for s in at.success)
    at.text_input(key="p2d_values_offset").input("0.9").run()
    assert any("offset must be in [-0.5, 0.5]" in e.value for e in at.error)
