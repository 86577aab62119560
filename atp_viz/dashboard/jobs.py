"""One process-wide registry of long jobs: one running job per model, followers attach, the rest queue.

A job is named by its ``key``: the model setting plus the job's own settings (any hashable value).
Submitting a key that is already queued or running attaches the caller to that job (it *follows*)
instead of starting a second copy. Each model runs at most one job at a time, in a background
thread; a job for a busy model waits in that model's queue (user jobs first, then background
warm-up jobs, each in submission order) and starts by itself when the model is free.

Ownership: a queued job belongs to the sessions that submitted or followed it (its owners). The
dashboard passes ``alive(owner)`` in (Streamlit's own session registry, see ``ui.session_alive``); an
owner that is gone is dropped whenever the queue is looked at or the model frees up, and a queued job
with no owner left is cancelled. A running job always finishes: its work function stores every
result as it ends, and reports each stored one through ``Job.point_stored`` so viewers redraw.

An operator can put the queue on hold (``pause``/``resume``; the dashboard does it while the file named by
``$ATP_VIZ_HOLD_JOBS`` exists): sessions still submit, follow and cancel, but no session's job starts until
``resume``; the server's own jobs (loading the model, the dense model's metrics) still run.

Caps (classroom mode, see atp_viz/experiment/classroom.py): a ``Caps`` bounds the jobs one session may have queued
or running, the jobs waiting in the whole queue and the results one job may store. A submission over a
cap is refused with one ValueError line before anything is queued; following a job is never refused,
and no other job is touched.

The manager knows nothing about Streamlit or models: a job's work is any ``Callable[[Job], object]``.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atp_viz.errors import first_line, plain_traceback

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
USER, BACKGROUND = 0, 1  # queue priorities: a student's job goes before a warm-up job
SERVER = "server"  # owner of warm-up jobs (model loading, the dense perplexity): always alive
KEEP_FINISHED = 256  # finished jobs remembered by key (their result or error); oldest dropped first

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caps:
    """Bounds on what sessions may queue (None: no manager-wide bound, the local default)."""

    session_jobs: int  # jobs one owner may have queued or running
    queued_jobs: int  # jobs of sessions waiting in all queues together
    job_points: int  # results one job may store (its ``total``)


class Job:
    """One unit of work on one model; its fields are read by viewers while the thread runs it."""

    def __init__(
        self,
        ident: int,
        key: Hashable,
        model: str,
        label: str,
        work: Callable[[Job], object],
        priority: int,
        owner: str,
        total: int,
        on_change: Callable[[str], None],
    ) -> None:
        self.id, self.key, self.model, self.label, self.work = ident, key, model, label, work
        self.priority, self.total = priority, total  # total: results it will store (0 when unknown)
        self.owners: set[str] = {owner}
        self.state = QUEUED
        self.fraction, self.message = 0.0, "queued"
        self.stored = 0  # results stored so far
        self.error: str | None = None
        self.result: object = None
        self.submitted, self.started, self.ended = time.monotonic(), 0.0, 0.0
        self._on_change = on_change
        self.outranked: Callable[[], bool] = lambda: False  # set by the manager: a higher-priority job waits

    @property
    def active(self) -> bool:
        return self.state in (QUEUED, RUNNING)

    def report(self, fraction: float, message: str) -> None:
        """Progress of the running job (an ``experiment.Progress``); viewers read it, nothing reruns."""
        self.fraction, self.message = min(max(float(fraction), 0.0), 1.0), message

    def point_stored(self) -> None:
        """Call after each result is committed to the store: every viewer of the model redraws."""
        self.stored += 1
        self._on_change(self.model)

    def __repr__(self) -> str:
        return f"Job({self.id}, {self.label!r}, {self.state}, owners={sorted(self.owners)})"


class JobManager:
    """The registry: at most one running job per model, a queue per model, finished jobs by key."""

    def __init__(
        self, alive: Callable[[str], bool] | None = None, audit: Path | None = None, caps: Caps | None = None
    ) -> None:
        """``alive(owner)``: whether a session is still there; ``audit``: a file that gets one JSON line per
        job that ran (model, label, owners, start and end time, outcome) for operators and load tests;
        ``caps``: classroom bounds on what sessions may queue (None: none)."""
        self.alive = alive or (lambda _owner: True)
        self.audit = audit
        self.caps = caps
        self._cond = threading.Condition()
        self._active: dict[Hashable, Job] = {}  # queued or running, by key
        self._running: dict[str, Job] = {}
        self._queues: dict[str, list[Job]] = {}
        self._finished: OrderedDict[Hashable, Job] = OrderedDict()
        self._versions: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._paused = False
        # (model, job id, started, ended) of the last KEEP_FINISHED jobs that ran: tests check no two overlapped
        self.history: deque[tuple[str, int, float, float]] = deque(maxlen=KEEP_FINISHED)

    # ------------------------------------------------------------------ submit, follow, cancel
    def submit(
        self,
        owner: str,
        model: str,
        key: Hashable,
        label: str,
        work: Callable[[Job], object],
        *,
        priority: int = USER,
        total: int = 0,
        validate: Callable[[], object] | None = None,
        capped: bool = True,
    ) -> Job:
        """Start ``work`` on ``model`` now if it is free, else queue it; a key already queued or running
        is followed instead (``owner`` joins its owners). ``validate`` runs first, in the caller's
        thread: its ValueError (one line, what is wrong and what is allowed) refuses the job, and so does
        a cap (``caps``; not for the server's own jobs nor when ``capped`` is False: the teacher)."""
        with self._cond:
            if (job := self._active.get(key)) is not None:
                job.owners.add(owner)
                return job
        if self.caps is not None and capped and owner != SERVER and total > self.caps.job_points:
            raise ValueError(
                f"a job of {total} points is above the classroom limit; allowed: 1..{self.caps.job_points}"
            )
        if validate is not None:
            validate()  # may raise ValueError: nothing is queued
        with self._cond:
            if (job := self._active.get(key)) is not None:  # submitted meanwhile by another session
                job.owners.add(owner)
                return job
            if self.caps is not None and capped and owner != SERVER:
                self._check_caps_locked(owner, self.caps)
            job = Job(next(self._ids), key, model, label, work, priority, owner, total, self._bump)
            job.outranked = lambda: self._outranked(job)
            self._active[key] = job
            self._queues.setdefault(model, []).append(job)
            self._bump_locked(model)
            self._start_next_locked(model)
            return job

    def cancel(self, job: Job, owner: str) -> bool:
        """``owner`` leaves a queued job; the job is dropped when no owner is left. A running job is never
        stopped (it stores its results for everyone). True when the job was dropped."""
        with self._cond:
            if job.state != QUEUED:
                return False
            job.owners.discard(owner)
            if job.owners:
                return False
            self._drop_locked(job)
            return True

    def drop(self, job: Job) -> bool:
        """Cancel a queued job whoever owns it (the teacher's Cancel); a running job is never stopped mid-point.
        True when the job was dropped."""
        with self._cond:
            if job.state != QUEUED:
                return False
            self._drop_locked(job, "cancelled by the teacher")
            return True

    def leave(self, owner: str) -> int:
        """Drop ``owner`` from every queued job (a closed session); returns how many jobs were dropped."""
        with self._cond:
            dropped = 0
            for queue in list(self._queues.values()):
                for job in list(queue):
                    job.owners.discard(owner)
                    if not job.owners:
                        self._drop_locked(job)
                        dropped += 1
            return dropped

    def pause(self) -> None:
        """Hold the queue: sessions' jobs are still accepted (and followed), but none starts until ``resume``; the
        server's own jobs (owner ``SERVER``) still do."""
        with self._cond:
            if not self._paused:
                self._paused = True
                for model in list(self._queues):
                    self._bump_locked(model)

    def resume(self) -> None:
        """Release the queue: every free model starts its next job."""
        with self._cond:
            if self._paused:
                self._paused = False
                for model in list(self._queues):
                    self._bump_locked(model)
                    self._start_next_locked(model)

    @property
    def paused(self) -> bool:
        with self._cond:
            return self._paused

    def forget(self, job: Job) -> None:
        """Drop a finished job from memory (a failed load is retried only after this)."""
        with self._cond:
            if not job.active and self._finished.get(job.key) is job:
                del self._finished[job.key]

    # ------------------------------------------------------------------ what viewers read
    def find(self, key: Hashable) -> Job | None:
        """The queued or running job with ``key``."""
        with self._cond:
            return self._active.get(key)

    def last(self, key: Hashable) -> Job | None:
        """The latest job with ``key``: active, or else finished (done, failed or cancelled)."""
        with self._cond:
            return self._active.get(key) or self._finished.get(key)

    def active(self) -> list[Job]:
        """Every running and queued job on every model (running first, then in submission order)."""
        with self._cond:
            for model in list(self._queues):
                self._prune_locked(model)
            return sorted(self._active.values(), key=lambda job: (job.state != RUNNING, job.id))

    def running(self, model: str) -> Job | None:
        with self._cond:
            return self._running.get(model)

    def queue(self, model: str) -> list[Job]:
        """The jobs waiting for ``model`` in the order they will start (owners that are gone dropped first)."""
        with self._cond:
            self._prune_locked(model)
            return list(self._queues.get(model, ()))

    def position(self, job: Job) -> int:
        """0 while running, 1 for the next job to start, ...; -1 when it is not active."""
        if job.state == RUNNING:
            return 0
        queue = self.queue(job.model)
        return queue.index(job) + 1 if job in queue else -1

    def busy(self, model: str) -> bool:
        with self._cond:
            return model in self._running or bool(self._queues.get(model))

    def version(self, model: str) -> int:
        """Changes whenever a job on ``model`` starts, ends, is queued or dropped, or stores a result."""
        with self._cond:
            return self._versions.get(model, 0)

    def epoch(self) -> int:
        """Changes whenever any model's ``version`` does."""
        with self._cond:
            return sum(self._versions.values())

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job runs or waits anywhere (scripts and tests); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._active:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _outranked(self, job: Job) -> bool:
        """Whether a job of a higher priority waits for ``job``'s model: a background job's work checks
        this between its units and returns early, so a student's job does not wait for a warm-up."""
        return any(other.priority < job.priority for other in self.queue(job.model))

    # ------------------------------------------------------------------ internals (lock held)
    def _bump(self, model: str) -> None:
        with self._cond:
            self._bump_locked(model)

    def _bump_locked(self, model: str) -> None:
        self._versions[model] = self._versions.get(model, 0) + 1
        self._cond.notify_all()

    def _prune_locked(self, model: str) -> None:
        for job in list(self._queues.get(model, ())):
            job.owners = {owner for owner in job.owners if owner == SERVER or self.alive(owner)}
            if not job.owners:
                self._drop_locked(job)

    def _check_caps_locked(self, owner: str, caps: Caps) -> None:
        for model in list(self._queues):
            self._prune_locked(model)
        mine = sum(1 for job in self._active.values() if owner in job.owners)
        if mine >= caps.session_jobs:
            raise ValueError(
                f"this session already has {mine} job(s) queued or running; allowed: {caps.session_jobs} at once "
                "(wait for one to end or cancel a queued one)"
            )
        waiting = sum(1 for queue in self._queues.values() for job in queue if job.owners != {SERVER})
        if waiting >= caps.queued_jobs:
            raise ValueError(
                f"the server's queue is full ({waiting} jobs waiting); allowed: {caps.queued_jobs} (try again when "
                "one has started)"
            )

    def _drop_locked(self, job: Job, why: str = "cancelled: no session is waiting for it") -> None:
        self._queues[job.model].remove(job)
        del self._active[job.key]
        job.state, job.message = CANCELLED, why
        self._remember_locked(job)

    def _remember_locked(self, job: Job) -> None:
        self._finished[job.key] = job
        self._finished.move_to_end(job.key)
        while len(self._finished) > KEEP_FINISHED:
            self._finished.popitem(last=False)
        self._bump_locked(job.model)

    def _audit_locked(self, job: Job) -> None:
        if self.audit is None:
            return
        now, clock = time.time(), time.monotonic()  # wall-clock times, so other processes can line them up
        line = {"model": job.model, "id": job.id, "label": job.label, "state": job.state, "owners": len(job.owners),
                "stored": job.stored, "started": now - (clock - job.started), "ended": now - (clock - job.ended),
                "error": job.error}  # fmt: skip
        with self.audit.open("a") as out:
            out.write(json.dumps(line) + "\n")

    def _start_next_locked(self, model: str) -> None:
        if model in self._running:
            return
        self._prune_locked(model)
        queue = [j for j in self._queues.get(model, []) if not self._paused or SERVER in j.owners]
        if not queue:
            return
        job = min(queue, key=lambda j: (j.priority, j.id))
        self._queues[model].remove(job)
        job.state, job.message, job.started = RUNNING, "starting", time.monotonic()
        self._running[model] = job
        self._bump_locked(model)
        threading.Thread(target=self._run, args=(job,), name=f"atp-viz job {job.id}", daemon=True).start()

    def _run(self, job: Job) -> None:
        result: Any = None
        error: str | None = None
        try:
            result = job.work(job)
        except Exception as exc:  # reported to every viewer as one line; the next job still starts
            error = first_line(exc)
            if not isinstance(exc, ValueError):
                log.error("job %s (%s) failed\n%s", job.id, job.label, plain_traceback(exc))
        with self._cond:
            job.ended = time.monotonic()
            job.result, job.error = result, error
            job.state = FAILED if error else DONE
            job.fraction, job.message = (job.fraction, error or "") if error else (1.0, "done")
            self.history.append((job.model, job.id, job.started, job.ended))
            self._audit_locked(job)
            del self._running[job.model]
            del self._active[job.key]
            self._remember_locked(job)
            self._start_next_locked(job.model)
