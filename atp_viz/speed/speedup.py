"""Measured inference speedup of a Workbench's pruned models on this machine, stored per setting and machine.

``measure_speedup`` prunes the dense weights with a schedule (the Workbench's pruner, calibration
mode and N:M pattern), times one forward at a prefill and a decode shape with dense kernels and
with a sparse kernel on the same pruned weights (``speed.measure_speed``), counts the compressed
storage, restores the dense weights and stores the result under a key made of the point's key, the
kernel, the timing shapes and the machine (``machine()``: device name, cores, threads, torch). The
same pruned model timed on another machine, or with other shapes, is another row.

``speed_columns`` joins stored speedups onto ``experiment.compare_rows`` rows (the Compare page's
"measured speedup on this machine" column); ``atp-viz speed`` prints one measurement.

Timings on a shared machine are noisy: each time is the fastest of ``SpeedConfig.repeats`` calls,
and a speedup is a ratio measured in one run.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from atp_viz.config import check_choice
from atp_viz.experiment.workbench import Workbench, labelled, scaled
from atp_viz.progress import Progress
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.speed import kernels
from atp_viz.store import fingerprint

SPEED_KIND = "speed"
# The Compare page measures every cell: shorter shapes and fewer repeats than the CLI's defaults.
DASHBOARD_SPEED = kernels.SpeedConfig(prefill_tokens=128, decode_context=128, repeats=3, warmup=1)
CPU_KERNELS = tuple(kernels.KERNELS)  # sparse layouts timed against dense kernels (PyTorch CSR, COO)


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """What a timing depends on besides the model and the shapes: device name, cores, threads, torch."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    return {
        "device": device.type,
        "name": name,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def machine_label(about: Mapping[str, Any]) -> str:
    """``Intel(R) Xeon(R) Processor, 2 cores, 2 threads`` (a GPU: its name)."""
    if about.get("device") == "cuda":
        return str(about["name"])
    return f"{about['name']}, {about['cores']} cores, {about['threads']} threads"


def check_kernel(kernel: str) -> str:
    check_choice("sparse kernel", kernel, CPU_KERNELS)
    return kernel


@dataclass(frozen=True)
class SpeedResult:
    """One pruned model timed with dense and with sparse kernels."""

    spec: dict[str, Any]  # the schedule's parameters
    kernel: str
    machine: dict[str, Any]
    config: dict[str, Any]  # the SpeedConfig
    times: dict[str, float]  # speed.measure_speed's seconds, tokens/s and speedups
    storage: dict[str, int]  # speed.storage_bytes of the pruned block linears
    sparsity: float  # achieved: 1 - nnz / numel of the block linears
    seconds: float  # wall time of the whole measurement
    cached: bool = False  # read back from the store

    @property
    def prefill_speedup(self) -> float:
        return float(self.times["prefill_speedup"])

    @property
    def decode_speedup(self) -> float:
        return float(self.times["decode_speedup"])

    def to_record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cached"}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SpeedResult:
        return cls(**{**record, "cached": True})


def speed_key(wb: Workbench, spec: ScheduleSpec, kernel: str, config: kernels.SpeedConfig) -> str:
    """The store key of a speed row: the pruned model (its point key), the kernel, the shapes, the machine."""
    point, where = wb.point_key(spec), machine(wb.loaded_model.device)
    return fingerprint(kind=SPEED_KIND, point=point, kernel=kernel, config=asdict(config), machine=where)


def stored_speedup(
    wb: Workbench, spec: ScheduleSpec, kernel: str = "csr", config: kernels.SpeedConfig = DASHBOARD_SPEED
) -> SpeedResult | None:
    """The stored measurement of ``spec`` on this machine, or None; never measures."""
    record = wb.get(speed_key(wb, spec, kernel, config))
    return None if record is None else SpeedResult.from_record(record)


def measure_speedup(
    wb: Workbench,
    spec: ScheduleSpec,
    kernel: str = "csr",
    config: kernels.SpeedConfig = DASHBOARD_SPEED,
    progress: Progress | None = None,
) -> SpeedResult:
    """Prune with ``spec``, time dense vs ``kernel`` forwards, store the result (or read it back)."""
    check_kernel(kernel)
    key = speed_key(wb, spec, kernel, config)
    if (record := wb.get(key)) is not None:
        return SpeedResult.from_record(record)
    started = time.perf_counter()
    wb.apply(spec, scaled(progress, 0.0, 0.5))
    try:
        if progress:
            progress(0.5, f"timing dense vs {kernel} forwards")
        model_config: Any = wb.loaded_model.model.config
        vocab = int(model_config.vocab_size)
        times = kernels.measure_speed(wb.loaded_model.model, wb.loaded_model.blocks, kernel, config, vocab)
        storage = kernels.storage_bytes(wb.loaded_model.blocks)
    finally:
        wb.restore()
    result = SpeedResult(
        spec=spec.params(),
        kernel=kernel,
        machine=machine(wb.loaded_model.device),
        config=asdict(config),
        times=times,
        storage=storage,
        sparsity=1.0 - storage["nnz"] / storage["numel"],
        seconds=time.perf_counter() - started,
    )
    about = {k: v for k, v in spec.params().items() if k != "rates"}
    wb.put(key, SPEED_KIND, {**about, "kernel": kernel, "device": result.machine["name"]}, result.to_record())
    if progress:
        progress(1.0, f"prefill x{result.prefill_speedup:.2f}, decode x{result.decode_speedup:.2f}")
    return result


def chosen_spec(row: Mapping[str, Any]) -> ScheduleSpec:
    """The schedule a ``compare_rows`` row reports (its method, sparsity and chosen parameters)."""
    return ScheduleSpec(str(row["method"]), float(row["sparsity"]), **dict(row["params"]))


def speed_columns(
    wb: Workbench,
    rows: Sequence[Mapping[str, Any]],
    kernel: str = "csr",
    config: kernels.SpeedConfig = DASHBOARD_SPEED,
) -> list[dict[str, Any]]:
    """``compare_rows`` rows with the stored speedups of their chosen schedules on this machine:
    ``prefill_speedup`` and ``decode_speedup`` (dense-kernel time / sparse-kernel time; NaN where
    not measured yet) and ``speed_device``."""
    label = machine_label(machine(wb.loaded_model.device))
    out = []
    for row in rows:
        found = stored_speedup(wb, chosen_spec(row), kernel, config)
        nan = float("nan")
        out.append({
            **row,
            "prefill_speedup": found.prefill_speedup if found else nan,
            "decode_speedup": found.decode_speedup if found else nan,
            "speed_device": label,
        })  # fmt: skip
    return out


def measure_rows(
    wb: Workbench,
    rows: Sequence[Mapping[str, Any]],
    kernel: str = "csr",
    config: kernels.SpeedConfig = DASHBOARD_SPEED,
    progress: Progress | None = None,
) -> list[SpeedResult]:
    """Measure (or read back) the chosen schedule of every ``compare_rows`` row, each stored at once."""
    specs = list(dict.fromkeys(chosen_spec(row) for row in rows))
    results = []
    for index, spec in enumerate(specs):
        label = f"[{index + 1}/{len(specs)}] {spec.describe()}"
        sub = labelled(scaled(progress, index / len(specs), 1 / len(specs)), label)
        results.append(measure_speedup(wb, spec, kernel, config, sub))
    return results
