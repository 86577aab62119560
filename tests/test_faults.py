"""Faults with real processes: SIGKILL mid-sweep, concurrent sweeps on one store, damaged files.

Each test runs ``python -m atp_viz`` as a subprocess on a tiny random 8-block model (a sweep point
takes well under a second) and checks that no finished result is lost, none is recomputed, and the
results equal an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest
from reliability import (
    cli_command,
    cli_env,
    dense_rows,
    integrity,
    make_tiny_gguf,
    message_lines,
    point_rows,
    record,
    run_cli,
    run_main,
    sweep_args,
)
from tiny import make_corpus_file, make_tiny_model

SPARSITY = 0.5
STEP = 0.03  # 8 blocks at S = 0.5: beta_max = 1/7 -> 4 grid points + uniform = 5 points
POINT_LINE = re.compile(
    r"(uniform|atp) S=[\d.]+(?: beta=([\d.e-]+))?: ppl [\d.]+(?: \(validation [\d.]+\))?( \(stored\))?"
)

pytestmark = pytest.mark.slow  # SIGKILL and fault injection in subprocesses


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {
        "model": make_tiny_model(root / "tiny8", layers=8),
        "corpus": make_corpus_file(root / "corpus.txt"),
        "root": root,
    }


@pytest.fixture(scope="module")
def reference(assets: dict[str, Path]) -> dict[str, float]:
    """key -> perplexity of an uninterrupted sweep (its own store, its own process)."""
    store = assets["root"] / "reference.sqlite"
    done = run_cli(sweep_args(assets["model"], assets["corpus"], store, SPARSITY, STEP))
    assert done.returncode == 0, done.stderr[-2000:]
    points = json.loads(done.stdout)["points"]
    assert len(points) == 5 and not any(p["cached"] for p in points)
    rows = point_rows(store)
    assert len(rows) == len(points)
    return {key: rec["perplexity"] for key, rec in rows.items()}


def same_results(got: dict[str, dict], reference: dict[str, float]) -> None:
    assert set(got) == set(reference)
    for key, rec in got.items():
        assert rec["perplexity"] == pytest.approx(reference[key], rel=1e-9, abs=1e-9)


class Sweep:
    """A CLI sweep subprocess whose stderr is read line by line as it runs."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(cli_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        self.computed: list[str] = []  # labels of points finished (and stored) by this process
        self.stored: list[str] = []  # labels of points this process read back from the store
        self.stderr: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            with self.changed:
                self.stderr.append(line)
                if match := POINT_LINE.search(line):
                    (self.stored if match.group(3) else self.computed).append(match.group(0).split(": ppl")[0])
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_computed(self, count: int, timeout: float = 60) -> None:
        """Block until this process has finished ``count`` new points (or has exited)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.computed) < count and self.proc.poll() is None and time.monotonic() < deadline:
                self.changed.wait(0.05)

    def kill(self) -> bool:
        """SIGKILL; returns False when the process had already finished on its own."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGKILL)
        self.finish()
        return True

    def finish(self, timeout: float = 120) -> str:
        """Wait for the end; stdout is read here, stderr by the reader thread."""
        assert self.proc.stdout is not None
        stdout = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return stdout.decode()


@pytest.mark.parametrize("seed", [11, 23])
def test_sigkill_mid_sweep_loses_nothing_and_recomputes_nothing(assets, reference, tmp_path: Path, seed: int) -> None:
    """Kill a sweep twice at random points, rerun it to the end: same results as one clean run."""
    rng = random.Random(seed)
    store = tmp_path / "results.sqlite"
    args = sweep_args(assets["model"], assets["corpus"], store, SPARSITY, STEP)
    total = len(reference)
    kills, lost = 0, 0
    for _ in range(2):
        before = point_rows(store) if store.exists() else {}
        remaining = total - len(before)
        if remaining <= 2:
            break
        sweep = Sweep(args)
        sweep.wait_computed(rng.randint(0, remaining - 2))  # at least two points are still to come
        time.sleep(rng.uniform(0.0, 0.4))  # land anywhere inside the next point (or its commit)
        killed = sweep.kill()
        assert killed, "the sweep ended before the kill: " + "".join(sweep.stderr)[-500:]
        kills += killed
        after = point_rows(store) if store.exists() else {}
        # every point the process announced as finished is in the store, and nothing stored vanished
        assert set(before) <= set(after)
        assert len(after) >= len(before) + len(sweep.computed)
        lost += len(set(before) - set(after))
        assert integrity(store) == "ok" if store.exists() else True
    before = point_rows(store) if store.exists() else {}
    final = Sweep(args)
    stdout = final.finish()
    assert final.proc.returncode == 0, "".join(final.stderr)[-2000:]
    points = json.loads(stdout)["points"]
    # the rerun read back exactly the points that were stored and computed only the missing ones
    assert sum(p["cached"] for p in points) == len(before) == len(final.stored)
    assert len(final.computed) == total - len(before)
    after = point_rows(store)
    same_results(after, reference)
    assert integrity(store) == "ok"
    lost += len(set(before) - set(after))
    assert lost == 0 and kills >= 1
    record(
        "interruption",
        "CLI sweep SIGKILLed at a random point, then rerun (5-point grid)",
        kills,
        lost,
        "rerun prints `(stored)` for finished points, computes only the rest; results equal an uninterrupted run",
    )


def test_concurrent_sweeps_share_one_store(assets, reference, tmp_path: Path) -> None:
    """Two processes sweep the same configuration and a third a different one, at once."""
    store = tmp_path / "shared.sqlite"
    same_a = Sweep(sweep_args(assets["model"], assets["corpus"], store, SPARSITY, STEP))
    same_b = Sweep(sweep_args(assets["model"], assets["corpus"], store, SPARSITY, STEP))
    other = Sweep(sweep_args(assets["model"], assets["corpus"], store, 0.6, 0.03))
    outs = [p.finish(timeout=240) for p in (same_a, same_b, other)]
    for proc in (same_a, same_b, other):
        text = "".join(proc.stderr)
        assert proc.proc.returncode == 0, text[-2000:]
        assert "locked" not in text.lower() and "Traceback" not in text
    import sqlite3

    con = sqlite3.connect(store)
    try:
        keys = [row[0] for row in con.execute("SELECT key FROM results")]
    finally:
        con.close()
    dense = dense_rows(store)
    other_points = json.loads(outs[2])["points"]
    # a point row and a metric row per split for every point, plus the dense metric rows
    assert len(keys) == len(set(keys)) == 3 * (len(reference) + len(other_points)) + dense
    assert dense == 2  # both sparsities share the one dense measurement (validation and evaluation)
    assert integrity(store) == "ok"
    rows = point_rows(store)
    same_results({k: v for k, v in rows.items() if k in reference}, reference)
    for out in outs[:2]:  # both same-config processes report the reference perplexities
        assert sorted(p["perplexity"] for p in json.loads(out)["points"]) == pytest.approx(
            sorted(reference.values()), rel=1e-9
        )
    lost = len(set(reference) - set(rows))
    assert lost == 0
    record(
        "concurrency",
        "2 processes sweep the same config + 1 a different config, one store, at once",
        1,
        lost,
        "all exit 0, no `database is locked`, rows = distinct keys, integrity_check ok",
    )


# ------------------------------------------------------------------------------------ damaged state


def damage_truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def damage_garbage(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(3000))


def damage_newer_schema(path: Path) -> None:
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()


@pytest.mark.parametrize(
    "damage, label, real_process",
    [
        (damage_truncate, "store file truncated to half its size", True),
        (damage_garbage, "store file overwritten with random bytes", False),
        (damage_newer_schema, "store written by newer code (schema 99)", False),
    ],
)
def test_damaged_store_is_moved_aside_and_rebuilt(
    assets, reference, tmp_path: Path, damage, label: str, real_process: bool
) -> None:
    """The CLI rerun of a sweep on a damaged store (one case as a real process, two in-process)."""
    store = tmp_path / "results.sqlite"
    shutil.copy(assets["root"] / "reference.sqlite", store)
    damage(store)
    damaged_bytes = store.read_bytes()
    args = sweep_args(assets["model"], assets["corpus"], store, SPARSITY, STEP)
    if real_process:
        done = run_cli(args)
        code, stderr = done.returncode, done.stderr
    else:
        code, _, stderr = run_main(args)
    assert code == 0, stderr[-2000:]
    messages = message_lines(stderr)
    assert len(messages) == 1 and "moved it to" in messages[0] and "started a fresh store" in messages[0], messages
    aside = sorted(tmp_path.glob("results.sqlite.corrupt-*"))
    assert len(aside) >= 1 and aside[0].read_bytes() == damaged_bytes  # kept for the user, not deleted
    same_results(point_rows(store), reference)  # rebuilt, not silently reused
    assert integrity(store) == "ok"
    record(
        "damaged state", label, 1, 0, "one warning line naming the moved-aside copy; fresh store rebuilt by the rerun"
    )


# ------------------------------------------------------------------------------------ model cache


@pytest.fixture(scope="module")
def tiny_gguf(assets) -> Path:
    return make_tiny_gguf(assets["root"] / "gguf" / "tiny.gguf")


def cache_states():
    """(label, how to damage a valid cache folder)."""

    def no_marker(folder: Path) -> None:  # what a copy interrupted half-way leaves
        (folder / "atp_viz_cache.json").unlink()
        (folder / "model.safetensors").write_bytes(b"half")

    def old_format(folder: Path) -> None:
        marker = folder / "atp_viz_cache.json"
        info = json.loads(marker.read_text())
        marker.write_text(json.dumps(info | {"format": "1"}))

    def missing_weights(folder: Path) -> None:
        (folder / "model.safetensors").unlink()

    def garbage_marker(folder: Path) -> None:
        (folder / "atp_viz_cache.json").write_bytes(b"\x00{not json")

    return [
        ("model cache folder without its completion marker (half-written)", no_marker),
        ("model cache marker from an older CACHE_FORMAT", old_format),
        ("model cache marker listing a deleted weight file", missing_weights),
        ("model cache marker that is not JSON", garbage_marker),
    ]


@pytest.mark.parametrize("label, damage", cache_states())
def test_damaged_model_cache_is_rebuilt(tiny_gguf: Path, tmp_path: Path, monkeypatch, label: str, damage) -> None:
    from atp_viz.models import loading as models

    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    folder = models.dequantize_gguf_to_cache(tiny_gguf)
    good = (folder / "model.safetensors").read_bytes()
    damage(folder)
    assert not models.cached_folder_is_valid(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = models.dequantize_gguf_to_cache(tiny_gguf)
    messages = [str(w.message) for w in caught if "model cache" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and "rebuil" in messages[0], messages
    assert rebuilt == folder and models.cached_folder_is_valid(folder)
    assert (folder / "model.safetensors").read_bytes() == good  # rebuilt from the GGUF, not reused
    assert sorted(p.name for p in folder.parent.iterdir() if p.suffix != ".lock") == [
        folder.name
    ]  # stale copy discarded, as the message says
    record("damaged state", label, 1, 0, "one warning line; folder discarded and rebuilt from the GGUF")


def test_half_built_cache_through_cli(tiny_gguf: Path, assets, tmp_path: Path) -> None:
    """A real process finds the leftovers of one killed while dequantizing, and rebuilds."""
    from atp_viz.models import loading as models

    cache = tmp_path / "cache"
    os.environ["ATP_VIZ_CACHE"] = str(cache)
    try:
        folder = models.gguf_cache_folder(tiny_gguf)
    finally:
        del os.environ["ATP_VIZ_CACHE"]
    # a killed build leaves its scratch folder, and a copied-in folder may lack the marker
    scratch = folder.with_name(folder.name + ".building")
    for half in (scratch, folder):
        half.mkdir(parents=True)
        (half / "config.json").write_text("{")
        (half / "model.safetensors").write_bytes(b"\0" * 10)
    args = [
        "schedule",
        "--model",
        str(tiny_gguf),
        "--corpus",
        str(assets["corpus"]),
        "--method",
        "uniform",
        "--sparsity",
        "0.5",
        "--json",
    ]
    done = run_cli(args, ATP_VIZ_CACHE=str(cache))
    assert done.returncode == 0, done.stderr[-2000:]
    messages = message_lines(done.stderr)
    assert len(messages) == 1 and "model cache" in messages[0] and "rebuil" in messages[0], messages
    assert models.cached_folder_is_valid(folder)
    assert json.loads(done.stdout)["layers"] == 4
    again = run_cli(args, ATP_VIZ_CACHE=str(cache))  # the rebuilt cache is now used silently
    assert again.returncode == 0 and message_lines(again.stderr) == []
    record(
        "damaged state",
        "half-written model cache + scratch folder of a killed build, through the CLI",
        1,
        0,
        "one `atp-viz: warning:` line; rebuilt; next run uses the cache silently",
    )
