"""Results store: round trips, first-writer-wins, queries, fingerprints, recovery, concurrency."""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atp_viz import store as store_module
from atp_viz.store import (
    SCHEMA_VERSION,
    ResultStore,
    StoreError,
    StoreRecoveredWarning,
    default_store_path,
    fingerprint,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "results.sqlite")


def integrity(path: Path) -> str:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def corrupt_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.iterdir() if ".corrupt-" in p.name)


# ------------------------------------------------------------------------------ basic behaviour


def test_put_get_round_trip(store: ResultStore) -> None:
    record = {"ppl": 12.5, "errors": [0.1, 0.2], "nested": {"a": [1, 2]}, "ok": True, "none": None}
    assert store.put("k1", "experiment", "tiny", {"beta": 0.25}, record) is True
    assert store.get("k1") == record
    assert store.get("missing") is None
    assert len(store) == 1 and "k1" in store and "missing" not in store


def test_inf_and_nan_round_trip(store: ResultStore) -> None:
    store.put("k", "experiment", "tiny", {}, {"ppl": math.inf, "bad": math.nan, "neg": -math.inf})
    got = store.get("k")
    assert got is not None
    assert got["ppl"] == math.inf and got["neg"] == -math.inf and math.isnan(got["bad"])


def test_numpy_values_are_converted(store: ResultStore) -> None:
    np = pytest.importorskip("numpy")
    schedule = np.linspace(0.5, 0.7, 3)
    record = {"schedule": schedule, "ppl": np.float32(3.5), "n": np.int64(7), "shape": (2, 3)}
    store.put("k", "experiment", "tiny", {"beta": np.float64(0.25)}, record)
    assert store.get("k") == {"schedule": schedule.tolist(), "ppl": 3.5, "n": 7, "shape": [2, 3]}
    assert store.query(beta=0.25)[0]["config"] == {"beta": 0.25}


def test_unserialisable_values_are_rejected(store: ResultStore) -> None:
    with pytest.raises(TypeError, match="record"):
        store.put("k", "experiment", "tiny", {}, {"x": object()})
    with pytest.raises(TypeError, match="config"):
        store.put("k", "experiment", "tiny", [1, 2], {})  # type: ignore[arg-type]
    assert len(store) == 0


def test_first_writer_wins_without_duplicates(store: ResultStore) -> None:
    assert store.put("k", "experiment", "tiny", {"beta": 1}, {"ppl": 1.0}) is True
    assert store.put("k", "experiment", "tiny", {"beta": 2}, {"ppl": 2.0}) is False
    assert store.get("k") == {"ppl": 1.0}
    assert store.count() == 1
    assert store.query()[0]["config"] == {"beta": 1}


def test_query_filters(store: ResultStore) -> None:
    store.put("a", "experiment", "m1", {"beta": 0.1, "method": "atp", "nm": [2, 4]}, {"ppl": 1.0})
    store.put("b", "experiment", "m1", {"beta": 0.2, "method": "atp"}, {"ppl": 2.0})
    store.put("c", "experiment", "m2", {"beta": 0.1, "method": "owl"}, {"ppl": 3.0})
    before = time.time()
    store.put("d", "compare", "m1", {"beta": 0.1, "method": "atp"}, {"ppl": 4.0})
    after = time.time()

    assert [r["key"] for r in store.query()] == ["a", "b", "c", "d"]
    assert {r["key"] for r in store.query(kind="experiment")} == {"a", "b", "c"}
    assert {r["key"] for r in store.query(model="m1")} == {"a", "b", "d"}
    assert {r["key"] for r in store.query("experiment", "m1", beta=0.1)} == {"a"}
    assert {r["key"] for r in store.query(method="atp")} == {"a", "b", "d"}
    assert {r["key"] for r in store.query(nm=(2, 4))} == {"a"}  # tuple filter matches stored list
    assert store.query(nm=None) == []  # a row without the field never matches
    assert store.query(model="nope") == []

    row = store.query(kind="compare")[0]
    assert set(row) == {"key", "kind", "model", "config", "record", "created"}
    assert row["record"] == {"ppl": 4.0} and row["model"] == "m1"
    assert before <= row["created"] <= after  # the Unix time of the put, however slow the machine


def test_count_and_delete(store: ResultStore) -> None:
    store.put("a", "experiment", "m1", {}, {})
    store.put("b", "experiment", "m2", {}, {})
    store.put("c", "compare", "m2", {}, {})
    assert (store.count(), store.count("m2"), store.count("m2", kind="compare")) == (3, 2, 1)
    assert store.delete("b") is True and store.delete("b") is False
    assert store.count() == 2 and store.get("b") is None
    assert store.put("b", "experiment", "m2", {}, {"again": 1}) is True


def test_keys_done(store: ResultStore) -> None:
    for i in range(0, 1200, 10):
        store.put(f"k{i}", "experiment", "tiny", {}, {})
    asked = [f"k{i}" for i in range(1200)] + ["k0", "k0"]  # more than one query's worth, repeats
    assert store.keys_done(asked) == {f"k{i}" for i in range(0, 1200, 10)}
    assert store.keys_done(iter(["k1", "k10"])) == {"k10"}
    assert store.keys_done([]) == set()


def test_reopen_keeps_results_and_does_not_warn(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultStore(path).put("k", "experiment", "tiny", {}, {"ppl": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ResultStore(path).get("k") == {"ppl": 1.0}
    assert corrupt_files(path) == []
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == "1"
    finally:
        con.close()


def test_store_is_safe_across_threads(store: ResultStore) -> None:
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(40):
                store.put(f"k{offset + i}", "experiment", "tiny", {}, {"t": offset})
                store.get(f"k{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(20 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.count() == 20 * 3 + 40  # keys k0..k99


# ------------------------------------------------------------------------------- paths


def test_default_store_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATP_VIZ_STORE", str(tmp_path / "x.sqlite"))
    assert default_store_path() == tmp_path / "x.sqlite"
    assert ResultStore().path == tmp_path / "x.sqlite"
    monkeypatch.delenv("ATP_VIZ_STORE")
    path = default_store_path()
    assert path.name == "results.sqlite" and "atp-viz" in path.parent.as_posix()


def test_unwritable_location_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create store directory"):
        ResultStore(blocker / "sub" / "results.sqlite")
    with pytest.raises(StoreError, match="not a file"):
        ResultStore(tmp_path)


# ------------------------------------------------------------------------------ fingerprints


def test_fingerprint_ignores_key_order() -> None:
    a = fingerprint(model="m", prune={"sparsity": 0.7, "pruner": "wanda"}, beta=0.1)
    b = fingerprint(beta=0.1, prune={"pruner": "wanda", "sparsity": 0.7}, model="m")
    assert a == b and len(a) == store_module.FINGERPRINT_CHARS
    assert all(c in "0123456789abcdef" for c in a)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.integers() | st.floats(allow_nan=False) | st.text(), max_size=6))
def test_fingerprint_key_order_property(parts: dict) -> None:
    reordered = dict(reversed(list(parts.items())))
    assert fingerprint(config=parts) == fingerprint(config=reordered)


def test_fingerprint_float_noise_is_rounded_deliberately() -> None:
    assert 0.1 + 0.2 != 0.3
    assert fingerprint(beta=0.1 + 0.2) == fingerprint(beta=0.3)
    assert fingerprint(beta=-0.0) == fingerprint(beta=0.0)
    assert fingerprint(beta=0.3) != fingerprint(beta=0.30000001)  # real differences remain
    assert fingerprint(beta=1) != fingerprint(beta=1.0)  # ints and floats stay distinct
    assert fingerprint(ppl=math.inf) != fingerprint(ppl=-math.inf)


def test_fingerprint_normalises_containers_and_numpy() -> None:
    assert fingerprint(nm=(2, 4)) == fingerprint(nm=[2, 4])
    assert fingerprint(x=1) != fingerprint(y=1)
    np = pytest.importorskip("numpy")
    schedule = [0.5, 0.6, 0.7]
    assert fingerprint(s=np.array(schedule)) == fingerprint(s=schedule)
    # float32 noise (~1e-8) is far above the 12 significant digits kept: a different input
    assert fingerprint(s=np.array(schedule, dtype=np.float32)) != fingerprint(s=schedule)
    assert fingerprint(n=np.int64(3), f=np.float64(0.1)) == fingerprint(n=3, f=0.1)
    with pytest.raises(TypeError):
        fingerprint(x=object())


def test_fingerprint_includes_code_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = fingerprint(beta=0.1)
    monkeypatch.setattr(store_module, "CODE_VERSION", "999")
    assert fingerprint(beta=0.1) != before


# ------------------------------------------------------------------------------ damaged files


def open_expecting_recovery(path: Path) -> ResultStore:
    with pytest.warns(StoreRecoveredWarning) as caught:
        store = ResultStore(path)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and ".corrupt-" in message
    return store


def test_garbage_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    garbage = os.urandom(4096)
    path.write_bytes(garbage)
    Path(f"{path}-wal").write_bytes(b"stale wal")
    store = open_expecting_recovery(path)
    moved = [p for p in corrupt_files(path) if not p.name.endswith("-wal")]
    assert len(moved) == 1 and moved[0].read_bytes() == garbage
    assert Path(f"{moved[0]}-wal").read_bytes() == b"stale wal"
    assert store.put("k", "experiment", "tiny", {}, {"ppl": 1.0}) and store.get("k") == {"ppl": 1.0}
    assert integrity(path) == "ok"


def test_truncated_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    store = ResultStore(path)
    for i in range(200):
        store.put(f"k{i}", "experiment", "tiny", {"i": i}, {"errors": [float(i)] * 50})
    assert not Path(f"{path}-wal").exists()  # the last connection checkpointed and closed
    size = path.stat().st_size
    os.truncate(path, size // 2)
    store = open_expecting_recovery(path)
    assert len(store) == 0
    (moved,) = corrupt_files(path)
    assert moved.stat().st_size == size // 2


def test_newer_schema_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultStore(path).put("k", "experiment", "tiny", {}, {})
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.close()
    with pytest.warns(StoreRecoveredWarning, match="newer"):
        store = ResultStore(path)
    assert len(store) == 0 and len(corrupt_files(path)) == 1


def test_foreign_database_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE users (name TEXT)")
    con.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an atp-viz store"):
        ResultStore(path)
    assert path.read_bytes() == before and corrupt_files(path) == []


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.touch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = ResultStore(path)
    assert store.put("k", "experiment", "tiny", {}, {}) is True


# ------------------------------------------------------------------------------ processes

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from atp_viz.store import ResultStore

    path, go, writer, first, last = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    deadline = time.monotonic() + 20
    while not go.exists():  # start together, including opening (and creating) the store
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.005)
    store = ResultStore(path)
    won = [f"k{i}" for i in range(first, last) if store.put(f"k{i}", "experiment", "tiny", {"i": i}, {"w": writer})]
    print(json.dumps(won))
    """
)


@pytest.mark.slow
def test_concurrent_processes_never_corrupt_or_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"  # not created yet: the workers race to create it
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    ranges = [(0, 250), (150, 400), (300, 550)]  # overlapping key sets
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(go), str(n), str(first), str(last)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for n, (first, last) in enumerate(ranges)
    ]
    time.sleep(0.3)  # let the interpreters start so the writes overlap
    go.touch()
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err

    won = [set(json.loads(out)) for out, _ in outputs]
    distinct = {f"k{i}" for first, last in ranges for i in range(first, last)}
    assert sum(len(w) for w in won) == len(distinct)  # each key inserted by exactly one writer
    assert set().union(*won) == distinct

    store = ResultStore(path)
    assert store.count() == len(distinct)
    for row in store.query():
        assert row["key"] in won[row["record"]["w"]]  # the stored record is the winner's
    assert integrity(path) == "ok"


RECOVERER = textwrap.dedent(
    """
    import sys, time, warnings
    from pathlib import Path
    from atp_viz.store import ResultStore

    path, go, writer = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    while not go.exists():
        time.sleep(0.005)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = ResultStore(path)
    store.put("k" + writer, "experiment", "tiny", {}, {})
    print(len(caught))
    """
)


@pytest.mark.slow
def test_concurrent_processes_recover_a_damaged_file_once(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    path.write_bytes(b"garbage" * 1000)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RECOVERER, str(path), str(go), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        for n in range(3)
    ]
    time.sleep(0.3)
    go.touch()
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    assert sum(int(out) for out, _ in outputs) == 1  # one process moved it and warned
    assert len(corrupt_files(path)) == 1
    assert ResultStore(path).count() == 3  # nobody's write went into a file that was moved aside
