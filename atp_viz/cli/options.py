"""Options every ``atp-viz`` command family shares, as argparse parents, and the settings built from them.

Each ``*_options()`` returns a fresh parent parser (``add_help=False``): a command that changes a default
(``search`` calibrates ``cached``) changes its own copy only, and its ``--help`` shows its own default.
All validation happens while settings are built from the arguments, before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from atp_viz.config import DTYPES, CalibConfig, EvalConfig, parse_nm, parse_seeds
from atp_viz.experiment.executors import EXECUTORS, Executor, ExecutorConfig, make_executor
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.measure.metrics import METRICS, VALIDATION
from atp_viz.measure.points import PointResult
from atp_viz.measure.zeroshot import TASKS, ZeroShotConfig, check_tasks
from atp_viz.models.data import DEFAULT_CORPUS, HUB_CORPORA
from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS
from atp_viz.progress import Progress
from atp_viz.pruning.modes import CALIBRATION_MODES
from atp_viz.pruning.pruners import PRUNERS, PruneConfig
from atp_viz.schedules import methods
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore, StoreError, default_store_path, to_jsonable

EXIT_BAD_INPUT = 2  # refused before anything was loaded or written
EXIT_FAILED = 1  # the run itself failed (disk full, a dead Ray worker); finished results stay stored


class CliError(Exception):
    """Bad input found by the CLI itself; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage + message; one line is easier to read in scripts and logs.
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def seed_list(text: str) -> tuple[int, ...]:
    try:
        return parse_seeds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def method_param_options(grid: bool = False) -> argparse.ArgumentParser:
    """One option per parameter of the registered schedule methods (``methods.METHODS``).

    ``grid``: the command searches a method's grid (``compare``), so a parameter a single schedule
    must be given (ATP's beta) defaults to that grid instead."""
    p = parent()
    seen: set[str] = set()
    for entry in methods.METHODS.values():
        for param in entry.params:
            if param.name in seen:
                continue
            seen.add(param.name)
            owners = ", ".join(m.name for m in methods.METHODS.values() if param.name in m.param_names)
            kind: dict[str, Any] = {"choices": param.choices} if param.choices else {"type": float}
            if param.text is not None:
                kind = {"type": str}
            if not param.required:
                default = f"default {param.default}"
            elif grid:
                default = "default: the method's grid, chosen on validation"
            else:
                default = "required by these methods"
            p.add_argument(
                f"--{param.name}",
                default=None,
                **kind,
                # argparse expands %-formats in help; a method's text is plain prose ("70 %")
                help=f"{param.label} for {owners}: {param.help or param.allowed()} ({default})".replace("%", "%%"),
            )
    return p


def schedule_options(method: bool = True) -> argparse.ArgumentParser:
    """One schedule: ``--method`` (optional), ``--sparsity``, the method parameters, ``--rates``."""
    p = argparse.ArgumentParser(add_help=False, parents=[method_param_options()])
    if method:
        p.add_argument("--method", default="atp", choices=methods.method_names(), help="schedule (default: atp)")
    p.add_argument("--sparsity", type=float, default=0.7, help="target mean sparsity S in (0, 1) (default 0.7)")
    p.add_argument(
        "--rates", type=float_list, default=None, help="custom schedule: comma-separated rates, one per block"
    )
    return p


def setup_options() -> argparse.ArgumentParser:
    """What decides a result besides the schedule (``Setup``), and where it is stored."""
    p = argparse.ArgumentParser(add_help=False, parents=[zeroshot_options(), safety_options()])
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"named model ({', '.join(EMBEDDED_MODELS)}), HF folder, .gguf file or hub id",
    )
    p.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help=f"{DEFAULT_CORPUS}, {', '.join(HUB_CORPORA)}, or a .txt/.json/.jsonl/.parquet file",
    )
    p.add_argument("--pruner", default="wanda", choices=tuple(PRUNERS))
    p.add_argument("--nm", default=None, help="N:M semi-structured pattern such as 2:4 instead of a rate")
    p.add_argument(
        "--calib-samples", type=int, default=CalibConfig.samples, help="calibration windows (default %(default)s)"
    )
    p.add_argument(
        "--seqlen",
        type=int,
        default=CalibConfig.seqlen,
        help="tokens per calibration window, and per evaluation window unless --eval-seqlen (default %(default)s)",
    )
    p.add_argument(
        "--eval-windows", type=int, default=EvalConfig.windows, help="evaluation windows, 0 = all (default %(default)s)"
    )
    p.add_argument(
        "--eval-seqlen", type=int, default=None, help="tokens per evaluation and validation window (default: --seqlen)"
    )
    p.add_argument(
        "--val-windows",
        type=int,
        default=None,
        help="validation windows (selection reads these; 0 = all; default: --eval-windows)",
    )
    p.add_argument(
        "--metrics",
        type=name_list,
        default=list(Setup.metrics),
        help=f"comma-separated, of: {', '.join(METRICS)} (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="calibration seed (default 0)")
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="comma-separated calibration seeds such as 0,1,2 (sweep, compare): every point runs under each seed and "
        "the results give mean and std over them (default: --seed)",
    )
    p.add_argument(
        "--calibration",
        default="sequential",
        choices=tuple(CALIBRATION_MODES),
        help=" or ".join(f"{e.name} ({e.help})" for e in CALIBRATION_MODES.values()) + "; default %(default)s",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward call (memory only)")
    p.add_argument(
        "--offload",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="weights stay in their safetensors files and one decoder block at a time moves to the device (same "
        "results; perplexity only). Default: only when the model does not fit the device whole; --no-offload "
        "refuses such a model instead",
    )
    p.add_argument("--store", default=None, help=f"results store (default {default_store_path()})")
    p.add_argument("--no-store", action="store_true", help="neither read nor write the results store")
    return p


def executor_options() -> argparse.ArgumentParser:
    """Where the points run (``executors.EXECUTORS``)."""
    p = parent()
    p.add_argument(
        "--executor",
        default="local",
        choices=tuple(EXECUTORS),
        help="; ".join(f"{e.name}: {e.help}" for e in EXECUTORS.values()) + " (default local)",
    )
    p.add_argument("--workers", type=int, default=None, help="Ray workers, one model copy each (default 1)")
    p.add_argument(
        "--ray-address", default=None, help="Ray cluster address such as head-node:6379 (default: start a local Ray)"
    )
    return p


def zeroshot_options() -> argparse.ArgumentParser:
    p = parent()
    p.add_argument(
        "--tasks",
        type=name_list,
        default=list(ZeroShotConfig.tasks),
        help=f"zero-shot tasks, of: {', '.join(TASKS)} (default: the paper's seven)",
    )
    p.add_argument(
        "--items",
        type=int,
        default=ZeroShotConfig.items,
        help="zero-shot items per task and split, seeded (0 = all; default %(default)s)",
    )
    return p


def safety_options() -> argparse.ArgumentParser:
    p = parent()
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow a model's own Python code to run (off by default)"
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle weights (.bin/.pt), which can run code (off by default)",
    )
    return p


def json_option() -> argparse.ArgumentParser:
    p = parent()
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    return p


def check_step(step: float) -> None:
    """A grid step (``--step``) is a fraction strictly inside (0, 1)."""
    if not (math.isfinite(step) and 0 < step < 1):
        raise CliError(f"--step must be in (0, 1), got {step}")


def check_find_best(args: argparse.Namespace) -> None:
    """``--find-best`` runs its probes in this process: it cannot be spread over an executor."""
    if args.find_best and args.executor != "local":
        raise CliError("--find-best runs its probes one after another in this process; drop --executor ray")


def executor_from(args: argparse.Namespace, setup: Setup) -> Executor:
    """Validate the executor options and, for Ray, connect and check resources (before any load or write)."""
    workers = 1 if args.workers is None else args.workers
    return make_executor(ExecutorConfig(args.executor, workers, args.ray_address), setup)


# -- building settings from arguments (all validation happens here, before any I/O) -------------
def setup_from(args: argparse.Namespace) -> Setup:
    return Setup(
        model=args.model,
        corpus=args.corpus,
        calib=CalibConfig(args.calib_samples, args.seqlen, args.seed),
        evaluation=EvalConfig(args.eval_windows, args.eval_seqlen or args.seqlen, validation_windows=args.val_windows),
        prune=PruneConfig(args.pruner, parse_nm(args.nm)),
        metrics=tuple(args.metrics),
        zeroshot=zeroshot_from(args),
        calibration=args.calibration,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        offload=args.offload is True,
        auto_offload=args.offload is not False,
    )


def zeroshot_from(args: argparse.Namespace) -> ZeroShotConfig:
    """The zero-shot settings; when zero-shot is measured, the task data is checked now (before any write)."""
    config = ZeroShotConfig(tuple(args.tasks), args.items)
    if "zeroshot" in args.metrics:
        check_tasks(config.tasks)
    return config


def given_params(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The parameters of ``method`` given on the command line (others take the registry default)."""
    return {
        name: getattr(args, name)
        for name in methods.get_method(method).param_names
        if getattr(args, name, None) is not None
    }


def spec_from(args: argparse.Namespace, method: str) -> ScheduleSpec:
    entry = methods.get_method(method)
    for param in entry.params:
        if param.required and getattr(args, param.name, None) is None:
            raise CliError(
                f"--method {method} needs --{param.name} ({param.allowed()}; `atp-viz schedule --method {method} "
                "--layers L "
                f"--sparsity S` prints the bound, `atp-viz sweep` searches it)"
            )
    return ScheduleSpec(method, args.sparsity, tuple(args.rates or ()), **given_params(args, method))


def open_store(args: argparse.Namespace) -> ResultStore | None:
    """The results store of ``--store`` (None with ``--no-store``); a store that cannot be used is bad input."""
    if args.no_store:
        return None
    try:
        return ResultStore(args.store)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def tqdm_progress() -> Progress:
    """A bar on stderr driven by the library's (fraction, message) callbacks."""
    from tqdm import tqdm

    bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}", leave=False)

    def update(fraction: float, message: str) -> None:
        bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        bar.set_description_str(message[:70], refresh=False)
        bar.refresh()

    return update


def close_bars() -> None:
    """Clear any progress bar still drawn, so that a final message starts at the beginning of its line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_workbench(setup: Setup) -> Workbench:
    """Load the model and corpus (this validates lengths); no store is attached yet."""
    return Workbench(setup, store=None, progress=lambda _f, message: log(message))


def attach_store(wb: Workbench, args: argparse.Namespace, specs: Sequence[ScheduleSpec]) -> Workbench:
    """Check every schedule against the loaded model, then open the store: bad input writes nothing."""
    for spec in specs:
        if not spec.entry.needs:  # statistics need a pass over the model; parameters were checked already
            wb.schedule(spec)
    wb.store = open_store(args)
    return wb


def point_json(point: PointResult) -> dict[str, Any]:
    """A point as JSON: its record, ``beta`` and ``perplexity`` (evaluation) at the top for scripts, and the blocks
    its schedule prunes whole (``removed_blocks``)."""
    return to_jsonable(point.to_record() | {"beta": point.beta, "perplexity": point.perplexity, "cached": point.cached,
                                            "removed_blocks": methods.removed_blocks(point.rates)})  # fmt: skip


def seeds_of(args: argparse.Namespace) -> tuple[int, ...]:
    """The calibration seeds of a command: --seeds, or --seed alone."""
    return tuple(args.seeds) if args.seeds else (args.seed,)


def found_in_seed(
    found: dict[ScheduleSpec, list[PointResult]], specs: Sequence[ScheduleSpec], index: int
) -> list[PointResult]:
    return [found[spec][index] for spec in specs]


def log_point(seeds: int) -> Callable[[int, ScheduleSpec, PointResult], None]:
    """One stderr line per finished point (scripts and the fault tests read these)."""

    def show(seed: int, spec: ScheduleSpec, point: PointResult) -> None:
        prefix = f"seed {seed}: " if seeds > 1 else ""
        stored = " (stored)" if point.cached else ""
        validation = point.value("perplexity", VALIDATION)
        log(f"{prefix}{spec.describe()}: ppl {point.perplexity:.3f} (validation {validation:.3f}){stored}")

    return show
