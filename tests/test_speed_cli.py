"""`atp-viz speed` on a tiny model: JSON shape, the stored row per setting and machine, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli.main import main
from atp_viz.store import ResultStore

pytestmark = pytest.mark.slow  # the speed command and its bench script end to end

TIMING = ["--prefill-tokens", "16", "--decode-context", "8", "--repeats", "1", "--warmup", "0"]


def tiny_args(store: Path) -> list[str]:
    return [
        "--model", str(shared_tiny_model("llama")), "--corpus", str(shared_corpus_file()),
        "--calib-samples", "2", "--seqlen", "32", "--eval-windows", "1", "--store", str(store),
    ]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else None), err


def test_speed_json_is_stored_per_setting_and_read_back(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store = tmp_path / "results.sqlite"
    code, out, err = run(capsys, "speed", *tiny_args(store), "--nm", "2:4", *TIMING, "--json")
    assert code == 0, err
    assert "device: " in err and out is not None
    assert out["schedule"] == {"method": "uniform", "sparsity": 0.5} and out["nm"] == [2, 4]
    assert out["sparsity"] == pytest.approx(0.5)  # 2 of every 4 weights of every block linear
    assert out["prefill_speedup"] > 0 and out["decode_speedup"] > 0 and out["cached"] is False
    times = out["times"]
    assert times["prefill_speedup"] == pytest.approx(times["dense_prefill_s"] / times["sparse_prefill_s"])
    assert times["dense_prefill_tok_s"] == pytest.approx(16 / times["dense_prefill_s"])
    assert out["storage"]["nnz"] * 2 == out["storage"]["numel"] and out["storage"]["bitmask"] < out["storage"]["dense"]
    assert out["device"] and out["machine"]["threads"] >= 1
    rows = ResultStore(store).query(kind="speed")
    assert len(rows) == 1 and rows[0]["config"]["kernel"] == "csr"

    code, again, _ = run(capsys, "speed", *tiny_args(store), "--nm", "2:4", *TIMING, "--json")
    assert code == 0 and again is not None and again["cached"] is True
    assert again["prefill_speedup"] == out["prefill_speedup"]
    # another shape is another measurement
    code, other, _ = run(capsys, "speed", *tiny_args(store), "--nm", "2:4", *TIMING, "--kernel", "coo", "--json")
    assert code == 0 and other is not None and other["cached"] is False and other["kernel"] == "coo"
    assert len(ResultStore(store).query(kind="speed")) == 2


def test_speed_of_an_atp_schedule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["speed", *tiny_args(tmp_path / "r.sqlite"), "--method", "atp", "--sparsity", "0.6", "--beta", "0.1"]
    code, out, err = run(capsys, *argv, *TIMING, "--json")
    assert code == 0, err
    assert out is not None and out["schedule"]["beta"] == 0.1 and out["sparsity"] == pytest.approx(0.6, abs=0.02)


@pytest.mark.parametrize(
    "extra, needle",
    [
        ([], "give a schedule (--method METHOD"),
        (["--nm", "2:4", "--prefill-tokens", "0"], "prefill_tokens must be >= 1"),
        (["--nm", "2:4", "--threads", "0"], "--threads must be >= 1"),
        (["--method", "atp", "--sparsity", "0.6"], "needs --beta"),
        (["--nm", "2:4", "--kernel", "dense"], "invalid choice: 'dense'"),
        (["--nm", "3:2"], "N:M"),
    ],
)
def test_speed_bad_input_is_one_line_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], needle: str
) -> None:
    store = tmp_path / "results.sqlite"
    code, _, err = run(capsys, "speed", *tiny_args(store), *extra)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not store.exists()


def test_device_check_refuses_an_unknown_step_in_one_line() -> None:
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "device_check.sh"
    done = subprocess.run(["bash", str(script), "--tiny", "bogus"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "device_check.sh: unknown argument 'bogus'; allowed: --tiny, inference, cached, sequential"
    ]
