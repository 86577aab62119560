"""Exit codes that mean something: 2 for bad input (refused before anything is written), 1 with one line
for a run that failed (disk full, a dead Ray worker, anything unexpected); never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.cli import main as cli
from atp_viz.cli import sweeps
from atp_viz.experiment.executors import WorkerError
from atp_viz.store import ResultStore, StoreError


def tiny_args(store: Path) -> list[str]:
    model, corpus = str(shared_tiny_model("llama")), str(shared_corpus_file())
    return ["--model", model, "--corpus", corpus, "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4",
            "--store", str(store)]  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # a progress bar redraws its line with carriage returns: what is left of a line is after the last one
    return code, [line.split("\r")[-1] for line in err.splitlines() if "error:" in line]


def test_bad_input_exits_2_before_anything_is_written(capsys, tmp_path) -> None:
    store = tmp_path / "r.sqlite"
    code, errors = run(capsys, "prune", *tiny_args(store), "--method", "atp", "--sparsity", "0.5")  # no --beta
    assert code == cli.EXIT_BAD_INPUT == 2 and len(errors) == 1 and "needs --beta" in errors[0]
    assert not store.exists()


def test_a_store_that_cannot_be_used_is_bad_input(capsys, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, errors = run(capsys, "prune", *tiny_args(blocker / "r.sqlite"), "--method", "uniform", "--sparsity", "0.5")
    assert code == 2 and len(errors) == 1 and "store" in errors[0]


def test_disk_full_during_a_run_exits_1_with_one_line(capsys, tmp_path, monkeypatch) -> None:
    store = tmp_path / "r.sqlite"

    def full(self: ResultStore, *args: object, **kwargs: object) -> bool:
        raise StoreError(f"store {self.path}: database or disk is full")

    monkeypatch.setattr(ResultStore, "put", full)
    code, errors = run(capsys, "prune", *tiny_args(store), "--method", "uniform", "--sparsity", "0.5")
    assert code == cli.EXIT_FAILED == 1
    assert errors == [f"atp-viz: error: run failed: store {store}: database or disk is full"]


def test_a_dead_ray_worker_exits_1_with_one_line(capsys, tmp_path, monkeypatch) -> None:
    def dead(*args: object, **kwargs: object) -> None:
        raise WorkerError("point atp beta=0.02 failed on 2 workers: the actor died unexpectedly\n(raylet log ...)")

    monkeypatch.setattr(sweeps, "run_seeds", dead)
    code, errors = run(capsys, "sweep", *tiny_args(tmp_path / "r.sqlite"), "--sparsity", "0.5", "--step", "0.1")
    assert code == 1 and len(errors) == 1 and errors[0].endswith("the actor died unexpectedly"), errors


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 1),  # the machine: the run failed
        (OSError(errno.EIO, os.strerror(errno.EIO)), 1),
        (RuntimeError("CUDA error: an illegal memory access\nCUDA kernel errors might be reported later"), 1),
        (FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "nope.txt"), 2),  # a path the user gave
        (ValueError("sparsity must be in (0, 1), got 1.5"), 2),
    ],
)
def test_each_error_maps_to_one_code_and_one_line(capsys, monkeypatch, raised: Exception, code: int) -> None:
    def boom(_args: object) -> dict[str, object]:
        raise raised

    monkeypatch.setitem(cli.COMMANDS, "models", boom)
    got, errors = run(capsys, "models")
    assert got == code and len(errors) == 1
    assert errors[0].startswith("atp-viz: error: run failed: " if code == 1 else "atp-viz: error: ")
    assert str(raised).splitlines()[0] in errors[0]


def test_every_command_prints_its_help(capsys) -> None:
    """Help text passes through argparse's %-formatting: a method's prose ("at 70 %") must not break it."""
    parser = cli.build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(a.choices, dict))
    assert len(commands) > 5
    for name in [None, *commands]:
        code = cli.main(["--help"] if name is None else [name, "--help"])
        out = capsys.readouterr()
        assert code == 0 and "usage:" in out.out and "Traceback" not in out.err, name


def test_a_threads_traceback_is_written_without_parsing_source() -> None:
    """``plain_traceback`` never calls ``ast`` (Python 3.11.7 fails when two threads are in it at once)."""
    import ast

    from atp_viz.errors import plain_traceback

    def fails() -> None:
        raise KeyError("missing")

    try:
        fails()
    except KeyError as exc:
        original, calls = ast.parse, []
        ast.parse = lambda *a, **k: calls.append(a) or original(*a, **k)  # type: ignore[assignment]
        try:
            text = plain_traceback(exc)
        finally:
            ast.parse = original  # type: ignore[assignment]
    assert calls == [] and "in fails" in text and text.endswith("KeyError: 'missing'") and "^" not in text
