"""SQLite results store: one row per finished result, keyed by a fingerprint of its inputs.

A sweep computes ``key = fingerprint(model=..., schedule=..., prune=..., ...)`` for each point,
``get``s the rows already finished, and ``put``s each new result as soon as it exists (a point
row and one metric row per metric and split, see ``experiment.Workbench``).
Many writers may share one store: two CLI sweeps, two dashboard tabs, Streamlit's script threads.

Design:
- Every operation opens its own short-lived connection (never shared across threads or
  processes), with a 30 s busy timeout plus a retry with backoff on "database is locked".
- WAL journal, ``synchronous=FULL``: a committed result survives a killed process and a power
  loss. (Results arrive minutes apart, so the extra fsync costs nothing that matters.)
- ``put`` is INSERT OR IGNORE: the first writer of a key wins, later writers change nothing.
- ``changes()`` is the one exception to short-lived connections: a read-only connection kept open for
  ``PRAGMA data_version``, a number that moves whenever any other connection (in this process or
  another) commits. Dashboard pages poll it to know that what they drew may be stale.
- A file that is not a healthy store of a schema this code knows is moved aside to
  ``<name>.corrupt-<timestamp>`` (with its ``-wal``/``-shm``), one ``StoreRecoveredWarning`` names
  it, and a fresh store starts. A healthy SQLite file that is not an atp-viz store is never
  touched: opening it raises ``StoreError``.

JSON columns are written by Python's ``json`` with ``allow_nan=True``: a perplexity of ``inf`` or
``nan`` round-trips, but is stored as the non-standard tokens ``Infinity``/``NaN`` (read the
columns with Python's ``json``, not SQLite's JSON functions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import math
import os
import random
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path, PurePath
from typing import Any, TypeVar

import platformdirs

try:  # POSIX only; elsewhere concurrent recoveries of one damaged file are not serialised.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CODE_VERSION",
    "SCHEMA_VERSION",
    "ResultStore",
    "StoreError",
    "StoreRecoveredWarning",
    "default_store_path",
    "fingerprint",
]

CODE_VERSION = "1"  # bump when measurement code changes: every fingerprint (and cached result) changes
SCHEMA_VERSION = 1  # layout of the SQLite file; a file with a newer one is moved aside
FINGERPRINT_CHARS = 20  # hex characters of sha256 kept (80 bits)
FLOAT_DIGITS = 12  # significant digits kept for floats in fingerprints
BUSY_TIMEOUT_S = 30.0  # SQLite waits this long for a lock before reporting "locked"
LOCK_PATIENCE_S = 120.0  # then we retry with backoff for at most this long in total
KEYS_PER_QUERY = 500  # bound parameters per ``IN (...)`` (SQLite's old limit is 999)

_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

T = TypeVar("T")


class StoreError(RuntimeError):
    """The store cannot be used (unwritable place, foreign database, persistent lock, damage)."""


class StoreRecoveredWarning(UserWarning):
    """A damaged store file was moved aside and a fresh store started."""


def default_store_path() -> Path:
    """``$ATP_VIZ_STORE`` if set, else ``<user data dir>/atp-viz/results.sqlite``."""
    env = os.environ.get("ATP_VIZ_STORE")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("atp-viz")) / "results.sqlite"


# ---------------------------------------------------------------- JSON conversion and fingerprints


def to_jsonable(obj: Any, *, float_digits: int | None = None) -> Any:
    """Plain JSON types from ``obj``: numpy/torch arrays and scalars via ``tolist()``, tuples and
    sets as lists (sets sorted), dataclasses and mappings as dicts with ``str`` keys, enums by
    value, paths as strings. With ``float_digits`` floats are rounded to that many significant
    digits and ``-0.0`` becomes ``0.0``. Anything else raises ``TypeError``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return _round_float(float(obj), float_digits)
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, float_digits=float_digits)
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return to_jsonable(fields, float_digits=float_digits)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, float_digits=float_digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, float_digits=float_digits) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v, float_digits=float_digits) for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if hasattr(obj, "dtype") and callable(getattr(obj, "tolist", None)):  # numpy / torch
        return to_jsonable(obj.tolist(), float_digits=float_digits)
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON: {obj!r:.80}")


def _round_float(x: float, digits: int | None) -> float:
    if digits is None or not math.isfinite(x):
        return x
    rounded = float(f"{x:.{digits}g}")
    return 0.0 if rounded == 0.0 else rounded


def _dumps(obj: Any, what: str, *, float_digits: int | None = None) -> str:
    try:
        plain = to_jsonable(obj, float_digits=float_digits)
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None
    return json.dumps(plain, sort_keys=True, allow_nan=True, separators=(",", ":"))


def fingerprint(**parts: Any) -> str:
    """Stable key of a result: sha256 of the canonical JSON of ``parts`` and ``CODE_VERSION``.

    Canonical = sorted keys, tuples/arrays as lists, numpy scalars as Python numbers, floats
    rounded to ``FLOAT_DIGITS`` significant digits (so ``0.1 + 0.2`` and ``0.3`` give one key;
    float32 rounding noise is larger and is *not* absorbed: pass float64 schedules). Ints and
    floats stay distinct (``1`` != ``1.0``).
    """
    payload = {"code_version": CODE_VERSION, "parts": parts}
    text = _dumps(payload, "fingerprint", float_digits=FLOAT_DIGITS)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]


# ------------------------------------------------------------------------------ SQLite helpers


def _error_code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(exc).lower()
    if "not a database" in text:
        return _SQLITE_NOTADB
    if "malformed" in text:
        return _SQLITE_CORRUPT
    if "locked" in text or "busy" in text:
        return _SQLITE_BUSY
    return -1


def _is_busy(exc: sqlite3.Error) -> bool:
    return _error_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _is_damage(exc: sqlite3.Error) -> bool:
    return _error_code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _fetch_all(con: sqlite3.Connection, sql: str, args: list[str]) -> list[Any]:
    return con.execute(sql, args).fetchall()


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _Damaged(Exception):
    """Internal: the file must be moved aside (reason in args[0])."""


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS results ("
    " key TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL,"
    " config TEXT NOT NULL, record TEXT NOT NULL, created REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS results_kind_model ON results (kind, model)",
)


class ResultStore:
    """One SQLite file of finished results; safe to share between threads and processes.

    Rows are ``{"key", "kind", "model", "config", "record", "created"}``: ``kind`` names what was
    measured (e.g. ``"experiment"``), ``config`` the inputs (top-level fields are queryable),
    ``record`` the measured values, ``created`` a Unix time.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create store directory {self.path.parent}: {exc}") from None
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"store path {self.path} exists and is not a file")
        if not os.access(self.path.parent, os.W_OK | os.X_OK):
            raise StoreError(f"store directory {self.path.parent} is not writable")
        self._watch: sqlite3.Connection | None = None  # ``changes()``'s own connection, opened on first use
        self._watch_lock = threading.Lock()
        self._open()

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r})"

    # -------------------------------------------------------------------------- opening

    def _open(self) -> None:
        try:
            self._probe()
        except _Damaged as first:
            with self._recovery_lock():
                try:  # another process may have recovered it while we waited for the lock
                    self._probe()
                except _Damaged as again:
                    self._move_aside(str(again.args[0] if again.args else first.args[0]))
                self._retry(self._create_schema)
            return
        self._retry(self._create_schema)

    def _probe(self) -> None:
        """Raise ``_Damaged`` unless the file is missing, empty, or a healthy store we can read."""
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from None
        if header and header != _SQLITE_HEADER:  # checked before SQLite touches any -wal file
            raise _Damaged("not an SQLite file")
        self._retry(self._check_file, probing=True)

    def _check_file(self, con: sqlite3.Connection) -> None:
        """Raise ``_Damaged`` unless the file is empty, or a healthy store this code can read."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        problems = [row[0] for row in con.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise _Damaged(f"integrity check: {problems[0] if problems else 'no answer'}")
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return
        if "meta" not in tables:
            raise StoreError(
                f"{self.path} is an SQLite database but not an atp-viz store "
                f"(tables: {', '.join(sorted(tables))}); choose another store path"
            )
        row = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return  # meta created but version not yet written: _create_schema fills it in
        try:
            version = int(row[0])
        except ValueError:
            raise _Damaged(f"unreadable schema version {row[0]!r}") from None
        if version > SCHEMA_VERSION:
            raise _Damaged(f"schema version {version} is newer than this code's {SCHEMA_VERSION}")

    def _create_schema(self, con: sqlite3.Connection) -> None:
        con.execute("PRAGMA journal_mode=WAL")  # persistent; stays 'delete' where WAL can't work
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                con.execute(statement)
            con.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            version = int(con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} was just created by newer code (schema {version}); upgrade atp-viz")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _recovery_lock(self) -> Iterator[None]:
        """Serialise recoveries of one file between processes (POSIX advisory lock)."""
        if fcntl is None:  # pragma: no cover - Windows
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _move_aside(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(self.path, target)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    os.replace(side, target.with_name(target.name + suffix))
        except OSError as exc:
            raise StoreError(f"cannot move damaged store {self.path} aside: {exc}") from None
        warnings.warn(
            f"atp-viz store {self.path} was unusable ({_one_line(reason)}); "
            f"moved it to {target} and started a fresh store",
            StoreRecoveredWarning,
            stacklevel=4,
        )

    # ---------------------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA synchronous=FULL")
        except BaseException:
            con.close()
            raise
        return con

    def _retry(self, op: Callable[[sqlite3.Connection], T], *, probing: bool = False) -> T:
        """Run ``op`` on a fresh connection; on "database is locked" retry with backoff.
        With ``probing``, a damaged file raises ``_Damaged`` instead of ``StoreError``.
        """
        deadline = time.monotonic() + LOCK_PATIENCE_S
        delay = 0.01
        while True:
            try:
                with contextlib.closing(self._connect()) as con:
                    return op(con)
            except sqlite3.Error as exc:
                if _is_busy(exc) and time.monotonic() < deadline:
                    time.sleep(delay * (1.0 + random.random()))
                    delay = min(delay * 2.0, 1.0)
                    continue
                if probing and _is_damage(exc):
                    raise _Damaged(str(exc)) from None
                if _is_busy(exc):
                    raise StoreError(f"store {self.path} stayed locked for {LOCK_PATIENCE_S:.0f} s") from exc
                hint = "; open a new ResultStore to recover it" if _is_damage(exc) else ""
                raise StoreError(f"store {self.path}: {_one_line(str(exc))}{hint}") from exc

    # -------------------------------------------------------------------------- public API

    def get(self, key: str) -> dict[str, Any] | None:
        """The record stored under ``key``, or ``None``."""
        row = self._retry(lambda con: con.execute("SELECT record FROM results WHERE key=?", (key,)).fetchone())
        return None if row is None else json.loads(row[0])

    def put(self, key: str, kind: str, model: str, config: Mapping[str, Any], record: Mapping[str, Any]) -> bool:
        """Commit one result now. The first writer of ``key`` wins: returns ``False`` (and changes
        nothing) when ``key`` is already stored. ``config`` and ``record`` must be JSON-able (see
        ``to_jsonable``); ``inf``/``nan`` are allowed.
        """
        for name, value in (("key", key), ("kind", kind), ("model", model)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty str, got {value!r}")
        for part, mapping in (("config", config), ("record", record)):
            if not isinstance(mapping, Mapping):
                raise TypeError(f"{part} must be a dict, got {type(mapping).__name__}")
        row = (key, kind, model, _dumps(config, "config"), _dumps(record, "record"), time.time())

        def insert(con: sqlite3.Connection) -> bool:
            cursor = con.execute(
                "INSERT OR IGNORE INTO results (key, kind, model, config, record, created) VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )
            return cursor.rowcount == 1

        return self._retry(insert)

    def query(self, kind: str | None = None, model: str | None = None, **config_filters: Any) -> list[dict[str, Any]]:
        """Rows (oldest first) matching ``kind``/``model`` and, exactly, the given top-level config
        fields (a row without the field never matches). Filter values are normalised like stored
        configs, so a tuple matches a stored list.
        """
        where, args = [], []
        for column, value in (("kind", kind), ("model", model)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        sql = "SELECT key, kind, model, config, record, created FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, key"
        rows = self._retry(lambda con: con.execute(sql, args).fetchall())
        wanted = {name: json.loads(_dumps(value, f"filter {name}")) for name, value in config_filters.items()}
        missing = object()
        out = []
        for key, row_kind, row_model, config_text, record_text, created in rows:
            config = json.loads(config_text)
            if all(config.get(name, missing) == value for name, value in wanted.items()):
                out.append(
                    {
                        "key": key,
                        "kind": row_kind,
                        "model": row_model,
                        "config": config,
                        "record": json.loads(record_text),
                        "created": created,
                    }
                )
        return out

    def count(self, model: str | None = None, kind: str | None = None) -> int:
        """Number of stored results, optionally of one model and/or kind."""
        where, args = [], []
        for column, value in (("model", model), ("kind", kind)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        sql = "SELECT COUNT(*) FROM results" + (" WHERE " + " AND ".join(where) if where else "")
        return int(self._retry(lambda con: con.execute(sql, args).fetchone()[0]))

    def __len__(self) -> int:
        return self.count()

    def changes(self) -> int:
        """A number that moves whenever a result is committed to this store by any connection, in this process or
        another (never for reads): SQLite's ``PRAGMA data_version`` on one connection kept open for it, which
        never writes, so every commit counts. Cheap enough to poll every second: it reads no table. Compare
        two values for equality only; when that connection fails it is reopened (one spurious change)."""
        with self._watch_lock:
            for _attempt in range(2):
                try:
                    if self._watch is None:
                        self._watch = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                    return int(self._watch.execute("PRAGMA data_version").fetchone()[0])
                except sqlite3.Error:
                    if self._watch is not None:
                        self._watch.close()
                    self._watch = None
            return -1

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.keys_done([key]))

    def delete(self, key: str) -> bool:
        """Remove one result; returns whether it existed."""
        return self._retry(lambda con: con.execute("DELETE FROM results WHERE key=?", (key,)).rowcount == 1)

    def keys_done(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` already stored (one query per ``KEYS_PER_QUERY`` keys)."""
        wanted = list(dict.fromkeys(keys))
        done: set[str] = set()
        for start in range(0, len(wanted), KEYS_PER_QUERY):
            chunk = wanted[start : start + KEYS_PER_QUERY]
            sql = f"SELECT key FROM results WHERE key IN ({','.join('?' * len(chunk))})"
            rows = self._retry(partial(_fetch_all, sql=sql, args=chunk))
            done.update(row[0] for row in rows)
        return done
