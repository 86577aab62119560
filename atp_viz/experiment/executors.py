"""Where the points of a sweep, comparison or search run: in this process, or on a Ray cluster.

An executor takes jobs (a calibration seed and a schedule) and yields each finished point as soon as
it is stored. ``EXECUTORS`` holds one entry per executor; the CLI options and the dashboard's
sidebar read it.

- ``local``: the jobs run one after another on the driver's own ``Workbench`` (what every command
  did before executors existed).
- ``ray``: one Ray actor per worker holds a ``Workbench`` built from the driver's ``Setup`` (the model
  is loaded once per worker and then runs many points; ``num_gpus=1`` per actor on a CUDA device,
  ``threads`` CPUs otherwise). An actor has no results store: it runs the point against a ``Ledger``
  that only collects the rows it would have written (point row and metric rows) and returns them.
  The driver is the only writer of the store: it replays those rows into its own ledger, so resume
  works exactly as locally. Points already stored are read back on the driver and never sent out.
  Results arrive through ``ray.wait`` in the order they finish. A worker that dies mid-point
  (killed, out of host memory, node lost) is replaced by a new actor and its point is retried;
  finished points are already stored, and a row is written once (the store's first writer wins, and
  the driver skips rows it holds already).

Both give the same floats for the same settings: the same seeds, dtype and windows, and the actor
sets its torch thread count explicitly.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from atp_viz.config import check_choice, check_int
from atp_viz.errors import first_line
from atp_viz.experiment import classroom
from atp_viz.experiment.ledger import StoredRow
from atp_viz.experiment.workbench import Setup, Workbench, labelled, scaled
from atp_viz.measure.points import PointResult
from atp_viz.progress import Progress
from atp_viz.schedules.methods import ScheduleSpec

RAY_EXTRA = "pip install -e '.[ray]' in the atp-viz folder (or .venv/bin/pip install ray==2.60.0)"
RETRIES = 2  # a point whose worker dies is retried on a new worker at most this many times
RAY_LINE = 300  # characters of a worker's error kept in a message


class WorkerError(RuntimeError):
    """A point could not finish on any worker (each died), or a worker could not load the workbench."""


@dataclass(frozen=True)
class PointJob:
    """One point to run: a schedule under a calibration seed, measured on ``splits`` (None: all)."""

    seed: int
    spec: ScheduleSpec
    splits: tuple[str, ...] | None = None


# finished points as they are stored; closing it stops the executor (what is in flight is not stored)
Points = Generator[tuple[PointJob, PointResult], None, None]


@dataclass(frozen=True)
class ExecutorConfig:
    """Which executor, and its resources (validated here, before anything is loaded or written)."""

    name: str = "local"  # key of EXECUTORS
    workers: int = 1  # Ray actors (each loads the model once)
    address: str | None = None  # Ray cluster address ("host:port", "auto"); None starts a local instance
    threads: int | None = None  # torch threads per CPU worker (None: the cluster's CPUs / workers, at least 1)
    unrestricted: bool = field(default=False, compare=False, repr=False)  # code only: passes the classroom policy

    def __post_init__(self) -> None:
        check_choice("executor", self.name, tuple(EXECUTORS))
        check_int("--workers", self.workers, 1)
        if self.threads is not None:
            check_int("threads per worker", self.threads, 1)
        if self.name == "local" and (self.workers != 1 or self.address is not None):
            raise ValueError("--workers and --ray-address need --executor ray (local runs one point at a time)")
        if self.address is not None and not self.address.strip():
            raise ValueError("--ray-address must not be empty (omit it to start a local Ray instance)")
        classroom.policy().check_executor(self)


class Executor(Protocol):
    """Runs jobs on a driver Workbench's setup and yields (job, point) as each point is stored."""

    def points(self, wb: Workbench, jobs: Sequence[PointJob], progress: Progress | None = None) -> Points: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Every job in this process, one after another, on ``wb`` (each point stored as it ends)."""

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config

    def points(self, wb: Workbench, jobs: Sequence[PointJob], progress: Progress | None = None) -> Points:
        for index, job in enumerate(jobs):
            label = f"[{index + 1}/{len(jobs)}] seed {job.seed} {job.spec.describe()}"
            sub = labelled(scaled(progress, index / len(jobs), 1 / len(jobs)), label)
            yield job, wb.reseeded(job.seed).run(job.spec, sub, job.splits)

    def close(self) -> None:
        pass


# -- the Ray executor ---------------------------------------------------------------------------
def worker_setup(setup: Setup) -> Setup:
    """The setup a worker runs: the same, except that a GPU worker sees only its own device."""
    return replace(setup, device="cuda") if setup.device.startswith("cuda") else setup


class PointWorker:
    """Body of a Ray actor: a Workbench loaded once, running points without a store of its own."""

    def __init__(self, setup: Setup, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.wb = Workbench(worker_setup(setup), store=None)

    def ready(self) -> int:
        """The actor's process id, once the Workbench is loaded."""
        return os.getpid()

    def run(self, job: PointJob) -> tuple[PointResult, list[StoredRow]]:
        """Run one point and return it with the rows the driver must write (point row last)."""
        bench = self.wb.reseeded(job.seed)
        rows = bench.collecting()
        return bench.run(job.spec, splits=job.splits), rows


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(f"the ray executor needs Ray: {RAY_EXTRA}") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A quick TCP check of a ``host:port`` address (``ray.init`` alone can wait a long time)."""
    target = address.removeprefix("ray://")
    if target == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"cannot reach the Ray cluster at {address} ({exc}); start one with `ray start --head` there, "
            "or omit --ray-address to start a local instance"
        ) from None


def uses_gpu(setup: Setup, gpus_in_cluster: float) -> bool:
    return setup.device.startswith("cuda") or (setup.device == "auto" and gpus_in_cluster > 0)


class RayExecutor:
    """One actor per worker; the driver hands out jobs, collects rows with ``ray.wait`` and stores them."""

    def __init__(self, config: ExecutorConfig, setup: Setup) -> None:
        self.config, self.setup = config, setup
        self.ray = import_ray()
        self.started_ray = False
        started = time.perf_counter()
        self._connect()
        self.connect_seconds = time.perf_counter() - started
        resources = self.ray.cluster_resources()
        self.gpu = uses_gpu(setup, resources.get("GPU", 0.0))
        self.threads = self._threads(resources)
        self._check_resources(resources)
        self.actors: list[Any] = []  # Ray actor handles, one per worker slot
        self.pids: list[int] = []
        self.replaced = 0  # workers that died and were replaced
        self._running: dict[Any, tuple[int, PointJob, float]] = {}  # ObjectRef -> (slot, job, submitted at)

    def _connect(self) -> None:
        ray = self.ray
        if self.config.address is not None:
            check_reachable(self.config.address)
        if ray.is_initialized():  # this process is connected already (a dashboard job, a test session)
            return
        try:
            ray.init(address=self.config.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)  # fmt: skip
        except (ConnectionError, RuntimeError) as exc:
            where = self.config.address or "a new local instance"
            raise ValueError(f"cannot connect to Ray at {where}: {first_line(exc)}") from None
        self.started_ray = True

    def _threads(self, resources: dict[str, float]) -> int:
        if self.config.threads is not None:
            return self.config.threads
        per_node = max((n.get("Resources", {}).get("CPU", 0.0) for n in self.ray.nodes() if n.get("Alive")), default=1)
        return max(1, min(int(per_node), int(resources.get("CPU", 1.0)) // self.config.workers))

    def _check_resources(self, resources: dict[str, float]) -> None:
        workers = self.config.workers
        if self.gpu:
            gpus = resources.get("GPU", 0.0)
            if gpus < workers:
                raise ValueError(
                    f"--device {self.setup.device} with --workers {workers} needs {workers} GPUs (one per worker); "
                    f"the Ray cluster has {gpus:g} (allowed: --workers 1..{int(gpus)}, or --device cpu)"
                    if gpus >= 1
                    else f"--device {self.setup.device} needs a GPU per worker; the Ray cluster has none "
                    "(use --device cpu, or a cluster with GPUs)"
                )
            return
        cpus = resources.get("CPU", 0.0)
        if cpus < workers * self.threads:
            raise ValueError(
                f"--workers {workers} x {self.threads} threads needs {workers * self.threads} CPUs; the Ray cluster "
                f"has {cpus:g} (allowed: --workers 1..{max(1, int(cpus) // self.threads)})"
            )

    def _new_actor(self) -> Any:
        options = {"num_gpus": 1, "num_cpus": 1} if self.gpu else {"num_cpus": self.threads}
        actor_class = self.ray.remote(PointWorker).options(max_restarts=0, max_concurrency=1, **options)
        return actor_class.remote(self.setup, self.threads)

    def start(self) -> None:
        """Start the missing workers and wait until each has loaded its Workbench."""
        while len(self.actors) < self.config.workers:
            self.actors.append(self._new_actor())
            self.pids.append(0)
        waiting = [i for i, pid in enumerate(self.pids) if pid == 0]
        try:
            pids = self.ray.get([self.actors[i].ready.remote() for i in waiting])
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.OutOfMemoryError) as exc:
            raise WorkerError(f"a Ray worker could not load the workbench: {first_line(exc, RAY_LINE)}") from None
        for i, pid in zip(waiting, pids):
            self.pids[i] = pid

    def _replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor()
        self.pids[slot] = 0
        self.replaced += 1
        self.start()

    def assignments(self) -> list[tuple[int, PointJob]]:
        """(worker pid, job) of each point running now, the most recently sent last."""
        running = sorted(self._running.values(), key=lambda item: item[2])
        return [(self.pids[slot], job) for slot, job, _ in running]

    def points(self, wb: Workbench, jobs: Sequence[PointJob], progress: Progress | None = None) -> Points:
        todo: list[tuple[PointJob, int]] = []  # (job, tries so far)
        done = 0
        for job in jobs:  # stored points are read here and never sent out
            stored = wb.reseeded(job.seed).stored(job.spec, need=job.splits)
            if stored is not None:
                done += 1
                yield job, stored
            else:
                todo.append((job, 0))
        if not todo:
            return
        total = done + len(todo)
        if progress:
            progress(done / total, f"starting {self.config.workers} Ray workers")
        self.start()
        tries: dict[Any, int] = {}
        idle = list(range(len(self.actors)))
        try:
            while todo or self._running:
                while todo and idle:
                    slot, (job, count) = idle.pop(0), todo.pop(0)
                    ref = self.actors[slot].run.remote(job)
                    self._running[ref], tries[ref] = (slot, job, time.perf_counter()), count
                finished, _ = self.ray.wait(list(self._running), num_returns=1)
                ref = finished[0]
                slot, job, _ = self._running.pop(ref)
                count = tries.pop(ref)
                try:
                    point, rows = self.ray.get(ref)
                except (self.ray.exceptions.RayActorError, self.ray.exceptions.OutOfMemoryError) as exc:
                    if count >= RETRIES:
                        raise WorkerError(
                            f"{job.spec.describe()} (seed {job.seed}) failed on {count + 1} Ray workers; the last "
                            f"died with: {first_line(exc, RAY_LINE)}"
                        ) from None
                    if progress:
                        progress(done / total, f"worker {self.pids[slot]} died on {job.spec.describe()}: retrying")
                    self._replace(slot)
                    todo.insert(0, (job, count + 1))
                    idle.append(slot)
                    continue
                except self.ray.exceptions.RayTaskError as exc:  # the point raised: bad input as locally, else one line
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, ValueError):
                        raise cause from None
                    raise WorkerError(
                        f"{job.spec.describe()} (seed {job.seed}) failed on a Ray worker: "
                        f"{first_line(cause or exc, RAY_LINE)}"
                    ) from None
                idle.append(slot)
                point = self._store(wb.reseeded(job.seed), job, point, rows)
                done += 1
                if progress:
                    progress(done / total, f"[{done}/{total}] seed {job.seed} {job.spec.describe()}: done")
                yield job, point
        finally:
            for ref in list(self._running):  # interrupted: nothing of these is stored
                self._running.pop(ref, None)
                with contextlib.suppress(Exception):  # a worker that ignores it is killed by close()
                    self.ray.cancel(ref)

    @staticmethod
    def _store(bench: Workbench, job: PointJob, point: PointResult, rows: Sequence[StoredRow]) -> PointResult:
        """Write a worker's rows into the driver's ledger (metric rows first, the point row last)."""
        expected = bench.point_key(job.spec)
        if point.key != expected:
            raise WorkerError(
                f"a Ray worker computed point key {point.key[:12]} for {job.spec.describe()}, the driver "
                f"{expected[:12]}: the model files or the corpus differ between the machines"
            )
        for key, kind, config, record in rows:
            if bench.get(key) is None:
                bench.put(key, kind, config, record)
        stored = bench.get(point.key)  # the stored row wins over a recomputation of it
        metrics = bench.metrics_of(point.key)[0]
        return PointResult.from_record({**(stored or point.to_record()), "metrics": metrics}, point.key, cached=False)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors, self.pids = [], []
        if self.started_ray:
            self.ray.shutdown()


@dataclass(frozen=True)
class ExecutorEntry:
    """An executor: its factory, a label and what it is for (CLI help, dashboard sidebar)."""

    name: str
    label: str
    help: str
    make: Callable[[ExecutorConfig, Setup], Executor]


EXECUTORS: dict[str, ExecutorEntry] = {
    e.name: e
    for e in (
        ExecutorEntry(
            "local", "This process", "one point at a time in this process", lambda config, setup: LocalExecutor(config)
        ),  # fmt: skip
        ExecutorEntry(
            "ray",
            "Ray cluster",
            f"one Ray actor per worker, each with the model loaded ({RAY_EXTRA})",
            lambda config, setup: RayExecutor(config, setup),
        ),  # fmt: skip
    )
}


def make_executor(config: ExecutorConfig, setup: Setup) -> Executor:
    """The executor of ``config`` for ``setup``; Ray connects and checks resources here (before loading)."""
    return EXECUTORS[config.name].make(config, setup)


def run_seeds(
    wb: Workbench,
    seeds: Sequence[int],
    specs: Sequence[ScheduleSpec],
    executor: Executor | None = None,
    progress: Progress | None = None,
    on_point: Callable[[int, ScheduleSpec, PointResult], None] | None = None,
    splits: Sequence[str] | None = None,
) -> dict[ScheduleSpec, list[PointResult]]:
    """Every spec under every calibration seed (seed-major) on ``executor`` (default: this process), each
    point stored as it finishes (finished ones read back); ``on_point`` sees points in the order they
    finish; ``splits``: measure only these (``Workbench.run``). Returns spec -> its points in the order
    of ``seeds``."""
    executor = executor or LocalExecutor(ExecutorConfig())
    measured = tuple(splits) if splits is not None else None
    jobs = [PointJob(seed, spec, measured) for seed in seeds for spec in specs]
    found = {(job.seed, job.spec): point for job, point in _each(executor.points(wb, jobs, progress), on_point)}
    return {spec: [found[(seed, spec)] for seed in seeds] for spec in specs}


def _each(stream: Points, on_point: Callable[[int, ScheduleSpec, PointResult], None] | None) -> Points:
    for job, point in stream:
        if on_point:
            on_point(job.seed, job.spec, point)
        yield job, point
