"""Classroom mode: what a visitor of a dashboard served to a room may ask the server to do.

The teacher starts the server with ``ATP_VIZ_CLASSROOM=1`` (see docs/serving.md); the policy is read
once from the environment (``policy()``) and is the same for the CLI and the dashboard, because the
library's own validation calls it: ``Setup.__post_init__`` calls ``check_setup`` and
``ExecutorConfig.__post_init__`` calls ``check_executor``, so a setting that reaches the server by any
path (a widget, a forged widget value, a script) is refused before a file is opened or a job starts.
Without ``ATP_VIZ_CLASSROOM`` (local mode, the default) every check passes: nothing changes.

Environment (read once, at the first call of ``policy()``):

- ``ATP_VIZ_CLASSROOM=1``: classroom mode on.
- ``ATP_VIZ_CLASSROOM_MODELS`` / ``ATP_VIZ_CLASSROOM_CORPORA``: comma-separated names or paths the teacher
  allows besides the embedded ones (a student picks among them; nothing else is opened).
- ``ATP_VIZ_CLASSROOM_LIMITS``: bounds, e.g. ``calib_windows=16,eval_tokens=512,session_jobs=2``
  (the fields of ``Limits``; defaults suit a 2-core server).
- ``ATP_VIZ_TEACHER_KEY``: the key that unlocks the full controls for one session (``KeyGuard``);
  the dashboard also reads ``teacher_key`` from Streamlit's secrets file.

A setting built by code for the teacher's unlocked session carries ``unrestricted=True`` (a field of
``Setup`` and ``ExecutorConfig`` that no widget sets); the policy lets it through. This module never
imports streamlit.
"""

from __future__ import annotations

import functools
import hmac
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from atp_viz.config import check_int
from atp_viz.models.data import DEFAULT_CORPUS
from atp_viz.models.loading import EMBEDDED_MODELS

ENV_CLASSROOM = "ATP_VIZ_CLASSROOM"
ENV_MODELS = "ATP_VIZ_CLASSROOM_MODELS"
ENV_CORPORA = "ATP_VIZ_CLASSROOM_CORPORA"
ENV_LIMITS = "ATP_VIZ_CLASSROOM_LIMITS"
ENV_TEACHER_KEY = "ATP_VIZ_TEACHER_KEY"
SECRETS_KEY = "teacher_key"  # the entry in .streamlit/secrets.toml the dashboard reads when the variable is unset
EMBEDDED_MODEL_NAMES = tuple(EMBEDDED_MODELS)  # shipped inside pip packages: always allowed
EMBEDDED_CORPORA = (DEFAULT_CORPUS,)
DEVICE = "cpu"


@dataclass(frozen=True)
class Limits:
    """Bounds in classroom mode (defaults: a 2-core CPU server shared by a class)."""

    calib_windows: int = 16  # calibration windows (the dashboard's default: 8)
    calib_tokens: int = 512  # tokens per calibration window (default 256)
    eval_windows: int = 16  # evaluation (and validation) windows (default 8)
    eval_tokens: int = 512  # tokens per evaluation window (default 256)
    batch: int = 16  # calibration windows per block call, evaluation windows per forward, zero-shot requests
    seeds: int = 3  # calibration seeds per point
    zeroshot_items: int = 50  # zero-shot items per task (default 8)
    job_points: int = 40  # points one job may store (grid points x seeds; the paper's grid on 30 blocks: 11)
    session_jobs: int = 2  # jobs one session may have queued or running at once
    queued_jobs: int = 8  # jobs waiting in the whole server's queue (all sessions, all models)

    def __post_init__(self) -> None:
        for item in fields(self):
            check_int(f"classroom limit {item.name}", getattr(self, item.name), 1)


@dataclass(frozen=True)
class Policy:
    """What the server may be asked to do; ``classroom=False`` (local mode) allows everything."""

    classroom: bool = False
    models: tuple[str, ...] = EMBEDDED_MODEL_NAMES  # exact names a student may choose (embedded + the teacher's)
    corpora: tuple[str, ...] = EMBEDDED_CORPORA
    limits: Limits = field(default_factory=Limits)
    teacher_key: str | None = field(default=None, repr=False)  # never printed

    def check_setup(self, setup: Any) -> None:
        """Raise ValueError (one line: what is wrong, what is allowed) for a setup a student may not run.
        ``setup``: a ``workbench.Setup`` (typed ``Any``: its module imports this one)."""
        if not self.classroom or setup.unrestricted:
            return
        check_name("model", setup.model, self.models)
        check_name("corpus", setup.corpus, self.corpora)
        if setup.device != DEVICE:
            raise ValueError(f"device {setup.device!r} is not allowed in classroom mode; allowed: {DEVICE}")
        if setup.trust_remote_code:
            raise ValueError("trust_remote_code is not allowed in classroom mode; allowed: the model's own code only")
        if setup.allow_pickle:
            raise ValueError("pickle weights are not allowed in classroom mode; allowed: safetensors only")
        limits, ev = self.limits, setup.evaluation
        check_bound("calibration windows", setup.calib.samples, limits.calib_windows)
        check_bound("calibration tokens", setup.calib.seqlen, limits.calib_tokens)
        check_bound("evaluation windows", ev.windows, limits.eval_windows, zero_is_all=True)
        check_bound("validation windows", ev.windows_of("validation"), limits.eval_windows, zero_is_all=True)
        check_bound("evaluation tokens", ev.seqlen, limits.eval_tokens)
        check_bound("calibration batch", setup.batch_size, limits.batch)
        check_bound("evaluation batch", ev.batch_size, limits.batch)
        if "zeroshot" in setup.metrics:
            check_bound("zero-shot items per task", setup.zeroshot.items, limits.zeroshot_items, zero_is_all=True)
            check_bound("zero-shot batch", setup.zeroshot.batch_size, limits.batch)

    def check_executor(self, config: Any) -> None:
        """Points run in this process, one at a time: no Ray cluster, no address, one worker (``config``: an
        ``executors.ExecutorConfig``)."""
        if not self.classroom or config.unrestricted:
            return
        if config.name != "local" or config.address is not None or config.workers != 1:
            raise ValueError(
                f"executor {config.name!r} (workers {config.workers}, address {config.address!r}) is not allowed in "
                "classroom mode; allowed: local, 1 worker, no Ray address"
            )

    def check_seeds(self, count: int) -> None:
        if self.classroom:
            check_bound("seeds per point", count, self.limits.seeds)

    def check_points(self, count: int, what: str = "points in one job") -> None:
        """A job that stores ``count`` results (0: not known in advance)."""
        if self.classroom:
            check_bound(what, count, self.limits.job_points)

    @property
    def job_caps(self) -> tuple[int, int, int] | None:
        """(jobs per session, jobs waiting in the whole queue, points per job) for the job manager
        (``dashboard.jobs.Caps``); None in local mode."""
        limits = self.limits
        return (limits.session_jobs, limits.queued_jobs, limits.job_points) if self.classroom else None


def describe_name(value: str) -> str:
    """Why a model or corpus name is not one of the allowed names: what it looks like."""
    if not value:
        return "empty"
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    if posix.is_absolute() or windows.is_absolute() or value.startswith("~"):
        return "an absolute path on the server"
    if ".." in posix.parts or ".." in windows.parts:
        return "a path that climbs out of a folder"
    if "/" in value or "\\" in value or value.endswith(".gguf") or "." in PurePosixPath(value).suffix:
        return "a path or a hub id"
    if ":" in value:
        return "a hub corpus with a local folder"
    return "not on the list"


def check_name(what: str, value: str, allowed: tuple[str, ...]) -> None:
    """``value`` must be exactly one of ``allowed`` (a teacher's entry may be a path; nothing else is)."""
    if value not in allowed:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise ValueError(
            f"{what} {shown!r} is not allowed in classroom mode ({describe_name(value)}); allowed: {', '.join(allowed)}"
        )


def check_bound(what: str, value: int, high: int, zero_is_all: bool = False) -> None:
    if zero_is_all and value == 0:
        raise ValueError(f"{what} 0 (all) is not allowed in classroom mode; allowed: 1..{high}")
    if value > high:
        raise ValueError(f"{what} {value} is above the classroom limit; allowed: 1..{high}")


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_limits(text: str) -> Limits:
    """'calib_windows=16,session_jobs=2' -> Limits (unknown names and non-integers refused)."""
    names = {item.name for item in fields(Limits)}
    values: dict[str, int] = {}
    for part in split_list(text):
        name, _, number = part.partition("=")
        name = name.strip()
        if name not in names:
            raise ValueError(f"unknown classroom limit {name!r} in {ENV_LIMITS}; allowed: {', '.join(sorted(names))}")
        try:
            values[name] = int(number)
        except ValueError:
            raise ValueError(f"classroom limit {name} must be an integer, got {number.strip()!r}") from None
    return Limits(**values)


def from_environment(env: Mapping[str, str]) -> Policy:
    """The policy the environment describes (local mode unless ``ATP_VIZ_CLASSROOM`` is 1/true/yes/on)."""
    on = env.get(ENV_CLASSROOM, "").strip().lower() in ("1", "true", "yes", "on")
    key = env.get(ENV_TEACHER_KEY) or None
    if not on:
        return Policy(teacher_key=key)
    models = tuple(dict.fromkeys((*EMBEDDED_MODEL_NAMES, *split_list(env.get(ENV_MODELS, "")))))
    corpora = tuple(dict.fromkeys((*EMBEDDED_CORPORA, *split_list(env.get(ENV_CORPORA, "")))))
    return Policy(True, models, corpora, parse_limits(env.get(ENV_LIMITS, "")), key)


@functools.cache
def policy() -> Policy:
    """This process's policy, read once from the environment (tests call ``policy.cache_clear()``)."""
    return from_environment(os.environ)


# ------------------------------------------------------------------------------------ the teacher key
TRIES = 5  # wrong keys one session may enter; then it is locked out
SERVER_TRIES_PER_MINUTE = 20  # wrong keys all sessions together may enter per minute (new tabs reset nothing here)
LOCKED_OUT = f"{TRIES} wrong teacher keys: this tab is locked out (allowed: {TRIES} tries per tab)"


class KeyGuard:
    """Checks a teacher key in constant time and rate-limits wrong ones: a session is locked out after
    ``TRIES`` wrong keys, and the whole server accepts at most ``SERVER_TRIES_PER_MINUTE`` wrong keys a
    minute (a refused try is not compared at all). The key is never logged, returned or stored here."""

    def __init__(self, key: str | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = key.encode() if key else None
        self._clock = clock
        self._lock = threading.Lock()
        self._wrong: dict[str, int] = {}
        self._recent: deque[float] = deque()

    @property
    def configured(self) -> bool:
        return self._key is not None

    def tries_left(self, session: str) -> int:
        with self._lock:
            return TRIES - self._wrong.get(session, 0)

    def check(self, session: str, given: str) -> bool:
        """True when ``given`` is the key; raises ValueError (one line) when this session or the server is
        locked out, or when no key is configured."""
        if self._key is None:
            raise ValueError(
                f"no teacher key is configured on this server; allowed: set {ENV_TEACHER_KEY} or '{SECRETS_KEY}' in "
                "Streamlit's secrets file, then restart it"
            )
        with self._lock:
            now = self._clock()
            while self._recent and now - self._recent[0] > 60:
                self._recent.popleft()
            if self._wrong.get(session, 0) >= TRIES:
                raise ValueError(LOCKED_OUT)
            if len(self._recent) >= SERVER_TRIES_PER_MINUTE:
                raise ValueError(
                    "too many wrong teacher keys on this server in the last minute "
                    f"(allowed: {SERVER_TRIES_PER_MINUTE} a minute); try again later"
                )
            if hmac.compare_digest(given.encode(), self._key):
                return True
            self._wrong[session] = self._wrong.get(session, 0) + 1
            self._recent.append(now)
            return False
