"""The atp-viz command: JSON output, exit codes, store behaviour, export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.schedules.published import beta_grid
from atp_viz.store import ResultStore

pytestmark = pytest.mark.slow  # CLI subprocesses

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


def tiny_args(store: Path) -> list[str]:
    return [
        "--model",
        str(shared_tiny_model("llama")),
        "--corpus",
        str(shared_corpus_file()),
        "--calib-samples",
        "4",
        "--seqlen",
        "32",
        "--eval-windows",
        "4",
        "--store",
        str(store),
    ]


def test_schedule_json(capsys) -> None:
    code, out, _ = run_cli(
        capsys, "schedule", "--method", "atp", "--layers", "30", "--sparsity", "0.7", "--beta", "0.01", "--json"
    )
    assert code == 0
    assert (
        len(out["rates"]) == 30 and out["rates"][0] == pytest.approx(0.555) and out["rates"][-1] == pytest.approx(0.845)
    )
    assert out["mean"] == pytest.approx(0.7) and out["beta_max"] == pytest.approx(0.6 / 29)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["schedule", "--method", "atp", "--layers", "30", "--sparsity", "0.7", "--beta", "0.05"],
            "beta must be in [0, 0.02069]",
        ),
        (
            ["schedule", "--method", "atp", "--layers", "30", "--sparsity", "1.2", "--beta", "0"],
            "sparsity must be in (0, 1)",
        ),
        (["schedule", "--method", "owl", "--layers", "30"], "needs layer statistics"),
        (["schedule", "--method", "nope", "--layers", "3"], "invalid choice"),
        (["prune", "--method", "atp", "--nm", "4:2", "--beta", "0"], "N:M needs integers 0 < N < M"),
        (["prune", "--method", "atp"], "needs --beta"),
        (["prune", "--model", "/does/not/exist", "--method", "uniform"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, needle) -> None:
    code, _, err = (
        run_cli(capsys, *argv, "--store", str(tmp_path / "r.sqlite")) if argv[0] == "prune" else run_cli(capsys, *argv)
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_prune_json_store_and_resume(capsys, tmp_path) -> None:
    store = tmp_path / "r.sqlite"
    argv = ["prune", *tiny_args(store), "--method", "atp", "--sparsity", "0.5", "--beta", "0.1", "--json"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    for key in ("perplexity", "dense_perplexity", "rates", "layer_sparsity", "cumulative_error", "local_error"):
        assert key in out
    assert len(out["rates"]) == 4 and out["cached"] is False
    assert ResultStore(store).count(kind="point") == 1
    code, again, _ = run_cli(capsys, *argv)
    assert again["cached"] is True and again["perplexity"] == out["perplexity"]


def test_bad_beta_writes_nothing(capsys, tmp_path) -> None:
    store = tmp_path / "r.sqlite"
    code, _, err = run_cli(capsys, "prune", *tiny_args(store), "--method", "atp", "--sparsity", "0.5", "--beta", "0.9")
    assert code == 2 and "beta must be in" in err
    assert not store.exists()


def test_sweep_json(capsys, tmp_path) -> None:
    code, out, _ = run_cli(
        capsys, "sweep", *tiny_args(tmp_path / "r.sqlite"), "--sparsity", "0.5", "--step", "0.05", "--json"
    )
    assert code == 0
    betas = [p["beta"] for p in out["points"]]
    assert betas[0] == 0 and betas[1:] == pytest.approx(beta_grid(4, 0.5, 0.05).tolist())
    assert out["best_beta"] in betas[1:]
    # chosen on validation, reported on evaluation
    best = min(out["points"][1:], key=lambda p: p["metrics"]["validation/perplexity"])
    assert out["selected_on"] == "validation" and out["best_beta"] == best["beta"]
    assert out["best_perplexity"] == best["metrics"]["evaluation/perplexity"] == best["perplexity"]


def test_compare_and_errors(capsys, tmp_path) -> None:
    store = tmp_path / "r.sqlite"
    code, out, _ = run_cli(
        capsys,
        "compare",
        *tiny_args(store),
        "--sparsities",
        "0.5",
        "--methods",
        "uniform,owl,alphapruning,atp",
        "--beta",
        "0.1",
        "--json",
    )
    assert code == 0 and [r["method"] for r in out["rows"]] == ["uniform", "owl", "alphapruning", "atp"]
    code, out, _ = run_cli(capsys, "errors", *tiny_args(store), "--sparsity", "0.5", "--beta", "0.1", "--json")
    assert code == 0 and [s["method"] for s in out["schedules"]] == ["uniform", "atp"]
    assert len(out["schedules"][0]["cumulative_error"]) == 4


def test_export_roundtrip(capsys, tmp_path) -> None:
    from atp_viz.models.loading import load_model

    target = tmp_path / "pruned"
    code, out, _ = run_cli(
        capsys,
        "prune",
        *tiny_args(tmp_path / "r.sqlite"),
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        "--save",
        str(target),
        "--json",
    )
    assert code == 0
    schedule = json.loads((target / "schedule.json").read_text())
    assert schedule["method"] == "uniform" and schedule["rates"] == out["rates"]
    reloaded = load_model(str(target))
    weight = reloaded.blocks[0].self_attn.q_proj.weight
    assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    code, _, err = run_cli(
        capsys,
        "prune",
        *tiny_args(tmp_path / "r.sqlite"),
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        "--save",
        str(target),
    )
    assert code == 2 and "--force" in err
    compact = tmp_path / "compact"
    argv = ("prune", *tiny_args(tmp_path / "r.sqlite"), "--method", "uniform", "--sparsity", "0.5")
    code, out, _ = run_cli(capsys, *argv, "--save", str(compact), "--save-format", "compressed-tensors", "--json")
    assert code == 0 and out["cached"]  # read back from the store, pruned again for the export
    from atp_viz.speed.export import load_compressed

    weight = load_compressed(compact).model.layers[0].self_attn.q_proj.weight  # type: ignore[union-attr]
    assert torch.equal(weight, reloaded.blocks[0].self_attn.q_proj.weight)


def test_module_entry_point_subprocess(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atp_viz",
            "schedule",
            "--layers",
            "4",
            "--sparsity",
            "0.5",
            "--method",
            "uniform",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0 and json.loads(proc.stdout)["rates"] == [0.5] * 4


def test_seeds_give_mean_and_spread(capsys, tmp_path) -> None:
    """--seeds runs every point under each calibration seed; tables give mean and std over them."""
    store = tmp_path / "r.sqlite"
    argv = ("sweep", *tiny_args(store), "--sparsity", "0.5", "--step", "0.1", "--seeds", "0,1", "--json")
    code, out, err = run_cli(capsys, *argv)
    assert code == 0 and out is not None and out["seeds"] == [0, 1]
    assert "seed 1: atp S=0.5 beta=0.1: ppl" in err
    first, second = out["by_seed"]["0"], out["by_seed"]["1"]
    assert [p["beta"] for p in first] == [p["beta"] for p in second] and first != second
    row = next(r for r in out["table"] if r["beta"] == out["best_beta"])
    pair = [p["perplexity"] for p in first + second if p["beta"] == out["best_beta"]]
    assert row["seeds"] == 2 and row["perplexity (evaluation)"] == pytest.approx(sum(pair) / 2)
    assert row["std (evaluation)"] == pytest.approx(abs(pair[0] - pair[1]) / 2**0.5)
    assert isinstance(out["within_noise"], bool) and out["runner_up_beta"] in [p["beta"] for p in first[1:]]
    assert ResultStore(store).count(kind="point") == 2 * len(first)
    code, out, _ = run_cli(
        capsys, "compare", *tiny_args(store), "--sparsities", "0.5", "--step", "0.1", "--seeds", "0,1", "--json"
    )
    assert code == 0 and out is not None and all(r["seeds"] == 2 and r["perplexity_std"] >= 0 for r in out["rows"])
    code, _, err = run_cli(capsys, "sweep", *tiny_args(store), "--seeds", "0,0")
    assert code == 2 and "distinct integers >= 0" in err


def test_zeroshot_metric_added_later_keeps_the_stored_point(capsys, tmp_path) -> None:
    """--metrics perplexity,zeroshot: accuracy rows beside the perplexity rows; the point is not re-stored."""
    store = tmp_path / "r.sqlite"
    base = ("prune", *tiny_args(store), "--method", "uniform", "--sparsity", "0.5", "--json")
    code, first, _ = run_cli(capsys, *base)
    assert code == 0 and first is not None and ResultStore(store).count(kind="metric") == 4  # point + dense, 2 splits
    zeroshot = ("--metrics", "perplexity,zeroshot", "--tasks", "boolq,arc_easy", "--items", "3")
    code, out, _ = run_cli(capsys, *base, *zeroshot)
    assert code == 0 and out is not None
    assert out["perplexity"] == first["perplexity"]  # read back, not measured again
    assert ResultStore(store).count(kind="point") == 1 and ResultStore(store).count(kind="metric") == 8
    for split in ("validation", "evaluation"):
        assert 0.0 <= out["metrics"][f"{split}/zeroshot"] <= 1.0
        assert out["metrics"][f"{split}/zeroshot/boolq/items"] == 3
    code, table, _ = run_cli(capsys, "eval", *tiny_args(store), *zeroshot[2:], "--json")
    assert code == 0 and table is not None and table["zeroshot_table"][0]["method"] == "dense"
    assert set(table["zeroshot_table"][0]) >= {"boolq", "arc_easy", "mean", "stderr"}
    for argv, needle in (
        (("--metrics", "zeroshot", "--tasks", "boolq,squad"), "allowed: boolq, rte"),
        (("--metrics", "zeroshot", "--items", "-1"), ">= 0"),
    ):
        before = ResultStore(store).count()
        code, _, err = run_cli(capsys, *base, *argv)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
        assert ResultStore(store).count() == before
