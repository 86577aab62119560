"""The ``atp-viz`` command: the same library calls the dashboard makes, with JSON output.

Results go to stdout (``--json``: exactly one JSON object), progress to stderr. Bad input exits with
code 2 and one line on stderr, before anything is written to the store.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from atp_viz.config import DTYPES, CalibConfig, EvalConfig, check_sparsity, parse_nm, parse_seeds
from atp_viz.experiment.executors import EXECUTORS, Executor, ExecutorConfig, WorkerError, make_executor, run_seeds
from atp_viz.experiment.workbench import (
    CALIBRATION_MODES,
    MEASURES,
    Progress,
    Setup,
    Workbench,
    compare_cells,
    compare_rows,
    summarize_sweep,
    sweep_specs,
    zeroshot_table,
)
from atp_viz.measure.metrics import EVALUATION, VALIDATION
from atp_viz.measure.points import PointResult, seed_spread
from atp_viz.measure.zeroshot import TASKS, ZeroShotConfig, check_tasks
from atp_viz.models.data import DEFAULT_CORPUS, HUB_CORPORA
from atp_viz.models.loading import DEFAULT_MODEL, EMBEDDED_MODELS, blocks_path
from atp_viz.pruning.pruners import PRUNERS, PruneConfig
from atp_viz.schedules import methods, published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.search.space import SAMPLERS
from atp_viz.speed.export import EXPORT_FORMATS, check_target, linear_targets, recipe_snippet, save_pruned
from atp_viz.store import ResultStore, StoreError, default_store_path, to_jsonable
from atp_viz.tuning.findbest import atp_grid, fast_compare, find_best
from atp_viz.tuning.predict import AMPLIFICATIONS, PredictConfig, check_request, predict_for

EXIT_BAD_INPUT = 2


class CliError(Exception):
    """Bad input found by the CLI itself; printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage + message; one line is easier to read in scripts and logs.
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


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


def add_method_params(p: argparse.ArgumentParser) -> None:
    """One option per parameter of the registered schedule methods (``methods.METHODS``)."""
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
            default = "required" if param.required else f"default {param.default}"
            p.add_argument(
                f"--{param.name}",
                default=None,
                **kind,
                help=f"{param.label} for {owners}: {param.help or param.allowed()} ({default})",
            )


def add_schedule_args(p: argparse.ArgumentParser, method: bool = True) -> None:
    if method:
        p.add_argument("--method", default="atp", choices=methods.method_names(), help="schedule (default: atp)")
    p.add_argument("--sparsity", type=float, default=0.7, help="target mean sparsity S in (0, 1) (default 0.7)")
    add_method_params(p)
    p.add_argument(
        "--rates", type=float_list, default=None, help="custom schedule: comma-separated rates, one per block"
    )


def add_setup_args(p: argparse.ArgumentParser) -> None:
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
        help=f"comma-separated, of: {', '.join(MEASURES)} (default %(default)s)",
    )
    add_zeroshot_args(p)
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
        help="sequential (paper-faithful, default) or cached: dense statistics computed once, no per-point "
        "calibration forward, no reconstruction errors",
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
    add_safety_args(p)


def add_executor_args(p: argparse.ArgumentParser) -> None:
    """Where the points run (``executors.EXECUTORS``)."""
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


def add_zeroshot_args(p: argparse.ArgumentParser) -> None:
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


def add_safety_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-remote-code", action="store_true", help="allow a model's own Python code to run (off by default)"
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow pickle weights (.bin/.pt), which can run code (off by default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="atp-viz", description="Layer-wise sparsity for LLMs: ATP, OWL, AlphaPruning, uniform.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("schedule", help="print per-block rates of a schedule")
    add_schedule_args(p)
    p.add_argument("--layers", type=int, default=None, help="number of decoder blocks (instead of --model)")
    p.add_argument(
        "--recipe", action="store_true", help="print an llm-compressor oneshot recipe (YAML) with these rates"
    )
    p.add_argument("--pruner", default="wanda", choices=tuple(PRUNERS), help="modifier of the --recipe (default wanda)")
    p.add_argument("--nm", default=None, help="N:M pattern of the --recipe such as 2:4 (default: unstructured)")
    p.add_argument(
        "--model", default=None, help="read the block count (and OWL/AlphaPruning statistics) from this model"
    )
    p.add_argument("--corpus", default=DEFAULT_CORPUS)
    add_safety_args(p)
    p.add_argument("--json", action="store_true")

    for name, text in (
        ("prune", "prune a model with one schedule and measure it"),
        ("errors", "per-block reconstruction errors of one or more schedules"),
    ):
        p = sub.add_parser(name, help=text)
        add_setup_args(p)
        add_schedule_args(p, method=(name == "prune"))
        if name == "errors":
            p.add_argument(
                "--methods", type=name_list, default=["uniform", "atp"], help="comma-separated (default uniform,atp)"
            )
        else:
            p.add_argument(
                "--save", default=None, help="export the pruned model (safetensors) + schedule.json to this folder"
            )
            p.add_argument("--force", action="store_true", help="allow --save into a non-empty folder")
            p.add_argument(
                "--save-format",
                default=EXPORT_FORMATS[0],
                choices=EXPORT_FORMATS,
                help="safetensors (default; loads in transformers and vLLM) or compressed-tensors (sparse-bitmask "
                "archive, about 40 %% smaller at S = 0.5; read back with atp_viz.speed.export.load_compressed)",
            )
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep", help="beta grid search: uniform (beta=0) plus every beta of the grid")
    add_setup_args(p)
    p.add_argument("--sparsity", type=float, default=0.7)
    p.add_argument("--step", type=float, default=published.GRID_STEP, help="grid step (default %(default)s)")
    add_executor_args(p)
    p.add_argument(
        "--find-best",
        action="store_true",
        help="search the grid for the best beta (Fibonacci/golden-section on validation, ~log(n) points) instead "
        "of running all of it; probes are stored and a later full sweep reuses them",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep2d", help="2-D sweep around ATP's line: beta x attention-MLP offset or beta x curvature p")
    add_setup_args(p)
    add_executor_args(p)
    p.add_argument(
        "--axes", default="beta,offset", help="beta,offset (rates per linear type) or beta,power (curved profiles)"
    )
    p.add_argument("--sparsity", type=float, default=0.7, help="target mean sparsity S in (0, 1) (default 0.7)")
    p.add_argument("--betas", type=float_list, default=None, help="slopes in [0, beta_max] (default: 0 and ATP's grid)")
    p.add_argument(
        "--values",
        type=float_list,
        default=None,
        help="second-axis values (default offset -0.1,-0.05,0,0.05,0.1; power 0.5,1,2,3)",
    )
    p.add_argument("--step", type=float, default=published.GRID_STEP, help="grid step of the default betas")
    p.add_argument(
        "--evaluate",
        default="all",
        choices=("all", "best"),
        help="measure every cell on both splits (all, default), or every cell on validation and the best cells on "
        "and off the paper's line on both (best)",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict-beta", help="predict ATP's best beta without a sweep (error-propagation model)")
    add_setup_args(p)
    p.add_argument("--sparsity", type=float, default=0.7, help="target mean sparsity S in (0, 1) (default 0.7)")
    p.add_argument("--step", type=float, default=published.GRID_STEP, help="grid step (default %(default)s)")
    p.add_argument(
        "--predict-windows",
        type=int,
        default=PredictConfig.windows,
        help="calibration windows the profile is measured on (default %(default)s)",
    )
    p.add_argument(
        "--anchors",
        type=int,
        default=PredictConfig.anchors,
        help="blocks whose error is carried to the end (default %(default)s)",
    )
    p.add_argument(
        "--amplification",
        default=PredictConfig.amplification,
        choices=tuple(AMPLIFICATIONS),
        help="how a block's error grows to the last block (default %(default)s)",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compare", help="methods x sparsities table (ATP at its best beta, chosen on validation)")
    add_setup_args(p)
    p.add_argument(
        "--methods",
        type=name_list,
        default=list(methods.method_names(comparable=True, peers=True)),
        help=f"comma-separated, of: {', '.join(methods.method_names(comparable=True))} (default: "
        f"{','.join(methods.method_names(comparable=True, peers=True))})",
    )
    p.add_argument("--sparsities", type=float_list, default=[0.5, 0.6, 0.7, 0.8])
    add_method_params(p)
    p.add_argument(
        "--step", type=float, default=published.GRID_STEP, help="grid step of methods with a grid (ATP's beta)"
    )
    add_executor_args(p)
    p.add_argument(
        "--find-best",
        action="store_true",
        help="fast: a method with a grid searches it (as sweep --find-best) and a one-schedule method is measured on "
        "the evaluation split only; add --calibration cached for the dashboard's fast default",
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("search", help="search per-block rates (Optuna TPE / CMA-ES, evolutionary), optionally vs ATP")
    add_setup_args(p)
    p.set_defaults(calibration="cached")  # every trial is a point: no per-point calibration forward
    p.add_argument(
        "--sampler",
        type=name_list,
        default=["tpe"],
        help=f"comma-separated, of: {', '.join(SAMPLERS)} (default tpe)",
    )
    p.add_argument(
        "--trials", type=int, default=None, help="trials per search (default with --versus-atp: ATP's sweep size)"
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per search, checked between trials")
    p.add_argument("--search-seed", type=int, default=0, help="sampler seed (default %(default)s)")
    p.add_argument("--max-delta", type=float, default=None, help="bound on |s_i - S| (default: only 0 <= s_i <= 1)")
    p.add_argument("--sparsity", type=float, default=0.7, help="target mean sparsity S in (0, 1) (default 0.7)")
    p.add_argument("--versus-atp", action="store_true", help="also run ATP's beta sweep; the same budget for each")
    p.add_argument(
        "--space",
        default="rates",
        choices=("rates", "dsa"),
        help="rates: per-block rates (--sampler); dsa: DSA's evolutionary search over allocation graphs, each graph "
        "a dsa point (default budget: ATP's sweep size)",
    )
    p.add_argument(
        "--evaluate",
        default="all",
        choices=("all", "winners"),
        help="measure the evaluation split for every point (all, default) or for the winners only (half the cost)",
    )
    p.add_argument("--step", type=float, default=published.GRID_STEP, help="ATP grid step (default %(default)s)")
    add_executor_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "eval", help="measure a model (a named model, a folder, e.g. one saved by prune --save) as it is"
    )
    add_setup_args(p)
    p.set_defaults(metrics=["perplexity", "zeroshot"])
    p.add_argument("--json", action="store_true")

    add_speed_parser(sub)

    for name, text in (("models", "named models and whether they are installed"), ("corpora", "available corpora")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--json", action="store_true")
    return parser


def add_speed_parser(sub: Any) -> None:
    """``atp-viz speed``: dense vs sparse-kernel forward time of one pruned model (``speed/speedup.py``)."""
    from atp_viz.speed.kernels import CLOCKS, SpeedConfig
    from atp_viz.speed.speedup import CPU_KERNELS

    p = sub.add_parser("speed", help="dense vs pruned (sparse kernel) forward speed of one pruned model, stored")
    add_setup_args(p)
    p.add_argument(
        "--method",
        default=None,
        choices=methods.method_names(),
        help="schedule (as for prune); with --nm alone: uniform at N/M",
    )
    add_schedule_args(p, method=False)
    p.add_argument("--kernel", default=CPU_KERNELS[0], choices=CPU_KERNELS, help="sparse layout (default %(default)s)")
    p.add_argument("--prefill-tokens", type=int, default=SpeedConfig.prefill_tokens, help="default %(default)s")
    p.add_argument(
        "--decode-context", type=int, default=SpeedConfig.decode_context, help="cached tokens before the decoded one"
    )
    p.add_argument("--repeats", type=int, default=SpeedConfig.repeats, help="timed calls, fastest kept")
    p.add_argument("--warmup", type=int, default=SpeedConfig.warmup, help="untimed calls first")
    p.add_argument("--clock", default=SpeedConfig.clock, choices=tuple(CLOCKS), help="wall (default) or process cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")


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
    return None if args.no_store else ResultStore(args.store)


def tqdm_progress() -> Progress:
    """A bar on stderr driven by the library's (fraction, message) callbacks."""
    from tqdm import tqdm

    bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}", leave=False)

    def update(fraction: float, message: str) -> None:
        bar.n = int(round(1000 * min(max(fraction, 0.0), 1.0)))
        bar.set_description_str(message[:70], refresh=False)
        bar.refresh()

    return update


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
    """A point as JSON: its record, ``beta`` and ``perplexity`` (evaluation) at the top for scripts."""
    return to_jsonable(point.to_record() | {"beta": point.beta, "perplexity": point.perplexity, "cached": point.cached})


# -- commands -------------------------------------------------------------------------------------
# Where decoder blocks live in LLaMA-style checkpoints: the recipe's targets without --model.
LLAMA_BLOCKS = ("model.layers", "LlamaDecoderLayer")


def cmd_schedule(args: argparse.Namespace) -> dict[str, Any]:
    spec = spec_from(args, args.method)
    if args.model is None:
        if args.layers is None:
            raise CliError("give --layers N or --model NAME")
        if spec.entry.needs:
            raise CliError(f"--method {args.method} needs layer statistics: give --model NAME instead of --layers")
        if float(spec.get(methods.OFFSET.name, 0.0)) != 0.0:
            raise CliError("--offset needs each block's attention and MLP sizes: give --model NAME instead of --layers")
        rates = methods.build_schedule(spec, args.layers)
        weights, location, linear = None, LLAMA_BLOCKS, {}
    else:
        setup = Setup(
            model=args.model,
            corpus=args.corpus,
            calib=CalibConfig(),
            evaluation=EvalConfig(windows=1, seqlen=CalibConfig.seqlen),  # as prune: eval seqlen = --seqlen
            trust_remote_code=args.trust_remote_code,
            allow_pickle=args.allow_pickle,
        )
        wb = load_workbench(setup)
        rates, weights = wb.schedule(spec), wb.param_counts
        location = (blocks_path(wb.loaded), type(wb.loaded.blocks[0]).__name__)
        linear = wb.linear_rates(spec, rates)  # {} unless the attention-MLP offset is non-zero
    layers = len(rates)
    sparsity = spec.sparsity if spec.entry.takes_sparsity else published.weighted_mean(rates, weights)
    return {
        "method": args.method,
        "layers": layers,
        "sparsity": sparsity,
        "beta_max": published.beta_max(layers, check_sparsity(sparsity)) if 0 < sparsity < 1 else 0.0,
        "rates": rates.tolist(),
        "mean": float(np.mean(rates)),
        "weighted_mean": published.weighted_mean(rates, weights),
        **({"linear_rates": linear} if linear else {}),
        **(
            {
                "recipe": recipe_snippet(
                    linear_targets(linear, wb.linear_names, location[0]) if linear else rates.tolist(),
                    PRUNERS[args.pruner].recipe_modifier,
                    *location,
                    note=PRUNERS[args.pruner].recipe_note,
                    nm=parse_nm(args.nm),
                )
            }
            if args.recipe
            else {}
        ),
    }


def cmd_prune(args: argparse.Namespace) -> dict[str, Any]:
    setup, spec = setup_from(args), spec_from(args, args.method)
    if args.save and setup.offload:
        raise CliError("--save needs the whole pruned model in memory and --offload never holds it; drop one of them")
    if args.save:
        check_target(Path(args.save).expanduser(), args.force)
    wb = load_workbench(setup)
    if args.save and wb.setup.offload:
        raise CliError(
            f"--save needs the whole pruned model in memory, and {setup.model} does not fit {setup.device} whole "
            "(it was offloaded); free memory, use --dtype bfloat16, or drop --save"
        )
    wb = attach_store(wb, args, [spec])
    progress = tqdm_progress()
    dense = wb.dense_perplexity(progress)
    point = wb.run(spec, progress)
    out = point_json(point) | {"dense_perplexity": dense, "dense_metrics": wb.dense_metrics()}
    if args.save:
        if point.cached:  # the stored result has no pruned weights in memory: prune again
            wb.apply(spec, progress)
        saved = save_pruned(
            wb.loaded, args.save, {**setup.describe(), **out}, force=args.force, format=args.save_format
        )
        out["saved"] = str(saved)
    return out


def cmd_errors(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_from(args)
    specs = [spec_from(args, method) for method in args.methods]
    wb = attach_store(load_workbench(setup), args, specs)
    results = list(wb.run_many(specs, tqdm_progress()))
    return {
        "schedules": [
            {
                "label": spec.describe(),
                **{
                    k: v
                    for k, v in point_json(point).items()
                    if k
                    in (
                        "method",
                        "beta",
                        "sparsity",
                        "rates",
                        "perplexity",
                        "metrics",
                        "cumulative_error",
                        "local_error",
                        "cumulative_error_abs",
                        "local_error_abs",
                    )
                },
            }
            for spec, point in zip(specs, results)
        ]
    }


def cmd_sweep(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_from(args)
    sparsity = check_sparsity(args.sparsity)
    check_step(args.step)
    seeds = seeds_of(args)
    check_find_best(args)
    with contextlib.closing(executor_from(args, setup)) as executor:
        wb = load_workbench(setup)
        specs = sweep_specs(wb.num_blocks, sparsity, args.step)
        if args.find_best:
            return sweep_find_best(wb, args, sparsity, seeds)
        attach_store(wb, args, specs)
        progress = tqdm_progress()
        dense = wb.dense_perplexity(progress)
        found = run_seeds(wb, seeds, specs, executor, progress, on_point=log_point(len(seeds)))
    summary = summarize_sweep(specs, found, setup.select_split)
    best = summary.best if summary.best is not None else 0
    return {
        "sparsity": sparsity,
        "beta_max": published.beta_max(wb.num_blocks, sparsity),
        "dense_perplexity": dense,
        "seeds": list(seeds),
        "uniform_perplexity": seed_spread(summary.uniform).mean,
        "selected_on": setup.select_split,
        "reported_on": EVALUATION,
        "best_beta": summary.betas[best] if summary.betas else 0.0,
        "best_perplexity": summary.evaluation[best].mean if summary.betas else seed_spread(summary.uniform).mean,
        "best_perplexity_std": summary.evaluation[best].std if summary.betas else None,
        "best_validation_perplexity": summary.validation[best].mean if summary.betas else None,
        "runner_up_beta": summary.betas[summary.runner_up] if summary.runner_up is not None else None,
        "within_noise": summary.within_noise,
        "table": summary.table(),
        "points": [point_json(p) for p in found_in_seed(found, specs, 0)],
        "by_seed": {str(seed): [point_json(p) for p in found_in_seed(found, specs, i)] for i, seed in enumerate(seeds)},
    }


def cmd_sweep2d(args: argparse.Namespace) -> dict[str, Any]:
    from atp_viz.tuning import sweep2d

    setup = setup_from(args)
    sparsity = check_sparsity(args.sparsity)
    check_step(args.step)
    axis = sweep2d.axis_pair(args.axes)
    values = sweep2d.check_values(axis, axis.values if args.values is None else args.values)
    if args.betas is not None and not args.betas:
        raise CliError("--betas needs at least one slope >= 0")
    if any(not (math.isfinite(b) and b >= 0) for b in args.betas or ()):
        raise CliError(f"--betas must each be a number >= 0 (and <= beta_max), got {args.betas}")
    seeds = seeds_of(args)
    with contextlib.closing(executor_from(args, setup)) as executor:
        wb = load_workbench(setup)
        grid = sweep2d.build_grid(axis, wb.num_blocks, sparsity, args.betas, values, args.step)
        attach_store(wb, args, grid.specs())
        progress = tqdm_progress()
        dense = wb.dense_perplexity(progress)
        splits = (setup.select_split,) if args.evaluate == "best" else None
        found = sweep2d.run_grid(wb, grid, seeds, progress, splits, log_point(len(seeds)), executor)
        summary = sweep2d.summarize(grid, found, select=setup.select_split)
        if args.evaluate == "best":
            chosen = list(dict.fromkeys(grid.cells[c] for c in (summary.line_best, summary.off_best) if c is not None))
            run_seeds(wb, seeds, chosen, executor, progress, log_point(len(seeds)))
            summary = sweep2d.summarize(grid, sweep2d.stored_groups(wb, grid.specs(), seeds), select=setup.select_split)
    return {
        "axes": f"beta,{axis.name}",
        "sparsity": sparsity,
        "dense_perplexity": dense,
        "seeds": list(seeds),
        "selected_on": setup.select_split,
        "reported_on": EVALUATION,
    } | summary.report()


def cmd_predict_beta(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_from(args)
    sparsity = check_sparsity(args.sparsity)
    check_step(args.step)
    config = PredictConfig(args.predict_windows, args.amplification, args.anchors)
    wb = load_workbench(setup)
    check_request(wb.num_blocks, sparsity, args.step)
    attach_store(wb, args, [])
    prediction = predict_for(wb, sparsity, args.step, config, tqdm_progress())
    log(f"predicted beta {prediction.beta:g} (grid index {prediction.index}) in {prediction.seconds:.1f} s")
    return {"model": setup.model, "beta_max": published.beta_max(wb.num_blocks, sparsity)} | prediction.summary()


def sweep_find_best(wb: Workbench, args: argparse.Namespace, sparsity: float, seeds: tuple[int, ...]) -> dict[str, Any]:
    """``sweep --find-best``: which betas were evaluated (in order) and which was chosen."""
    specs = atp_grid(wb.num_blocks, sparsity, args.step)
    attach_store(wb, args, specs)
    progress = tqdm_progress()
    dense = wb.dense_perplexity(progress)
    search = find_best(wb, specs, seeds, progress=progress, on_point=log_point(len(seeds)))
    assert search is not None  # computing, never a stored-only replay
    summary = search.summary()
    best = search.points[search.best]
    return {
        "mode": "find-best",
        "sparsity": sparsity,
        "beta_max": published.beta_max(wb.num_blocks, sparsity),
        "dense_perplexity": dense,
        "seeds": list(seeds),
        "selected_on": search.select,
        "reported_on": EVALUATION,
        "grid": summary["grid"],
        "evaluated": summary["evaluated"],
        "validation_perplexity": summary[f"{search.select}_perplexity"],
        "evaluations": summary["evaluations"],
        "scanned": summary["scanned"],
        "best_beta": summary["chosen"],
        "best_perplexity": summary["chosen_perplexity"],
        "best_perplexity_std": seed_spread(best).std,
        "best_validation_perplexity": summary[f"chosen_{search.select}_perplexity"],
        "points": [point_json(search.points[spec][0]) for spec in search.evaluated],
    }


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


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_from(args)
    sparsities = [check_sparsity(s) for s in args.sparsities]
    check_step(args.step)
    for name in args.methods:
        if name not in methods.method_names(comparable=True):
            raise CliError(f"unknown method {name!r}; allowed: {', '.join(methods.method_names(comparable=True))}")
    fixed = {name: given_params(args, name) for name in args.methods}
    # a method with a grid is searched unless its grid parameter is given (e.g. --beta)
    fixed = {name: values for name, values in fixed.items() if values}
    check_find_best(args)
    with contextlib.closing(executor_from(args, setup)) as executor:
        wb = load_workbench(setup)
        cells = compare_cells(wb.num_blocks, args.methods, sparsities, args.step, fixed)
        flat = list(dict.fromkeys(spec for cell in cells for spec in cell.specs))
        attach_store(wb, args, flat)
        progress = tqdm_progress()
        dense = wb.dense_perplexity(progress)
        seeds = seeds_of(args)
        searches: dict[str, Any] = {}
        if args.find_best:
            fast = fast_compare(wb, cells, seeds, progress)
            found = fast.found
            searches = {
                "find_best": [{"method": m, "sparsity": s} | f.summary() for (m, s), f in fast.searches.items()]
            }
        else:
            found = run_seeds(wb, seeds, flat, executor, progress)
    rows = compare_rows(cells, found, select=setup.select_split, extra=("zeroshot",))
    for row in rows:
        std = f" +- {row['perplexity_std']:.3f}" if len(seeds) > 1 else ""
        log(f"{row['method']} S={row['sparsity']:g}: ppl {row['perplexity']:.3f}{std} {row['params'] or ''}")
    dense_metrics = wb.dense_metrics()
    zeroshot = {}
    if "zeroshot" in setup.metrics:
        zeroshot = {"zeroshot_table": zeroshot_table(rows, dense_metrics, setup.zeroshot.tasks)}
    zeroshot |= searches
    return {
        "dense_perplexity": dense,
        "dense_metrics": dense_metrics,
        "seeds": list(seeds),
        "selected_on": setup.select_split,
        "reported_on": EVALUATION,
        "rows": rows,
    } | zeroshot


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    from atp_viz.search import space as search
    from atp_viz.search import study as searching

    setup = setup_from(args)
    if args.space == "dsa":
        return dsa_search_with(args, setup)
    for name in args.sampler:
        search.check_sampler(name)
    if not args.sampler:
        raise CliError(f"--sampler needs at least one of {', '.join(search.SAMPLERS)}")
    if args.trials is None and not args.versus_atp:
        raise CliError("give --trials N (N >= 1), or --versus-atp for ATP's sweep size")
    check_step(args.step)
    budget = 1 if args.trials is None else args.trials
    configs = [
        searching.SearchConfig(name, budget, args.sparsity, args.search_seed, args.timeout, args.max_delta)
        for name in dict.fromkeys(args.sampler)
    ]  # validates trials, timeout, S, seed and max_delta before the model loads
    with contextlib.closing(executor_from(args, setup)) as executor:
        return search_with(args, setup, configs, budget, executor)


def search_with(
    args: argparse.Namespace, setup: Setup, configs: list[Any], budget: int, executor: Executor
) -> dict[str, Any]:
    """``cmd_search`` once its input is checked: trials asked --workers at a time, run on ``executor``."""
    from atp_viz.search import space as search
    from atp_viz.search import study as searching

    batch = 1 if args.workers is None else args.workers
    wb = load_workbench(setup)
    wb.store = open_store(args)
    progress = tqdm_progress()
    dense = wb.dense_perplexity(progress)

    def finished(method: str, trial: searching.TrialRecord) -> None:
        log(f"{method} trial {trial.number}: validation ppl {trial.validation:.4f}, evaluation ppl "
            f"{trial.evaluation:.4f} at {trial.seconds:.1f} s")  # fmt: skip

    every = args.evaluate == "all"
    try:
        if args.versus_atp:
            comparison = searching.versus_atp(wb, args.sparsity, args.sampler, args.trials, seed=args.search_seed,
                                              timeout_s=args.timeout, max_delta=args.max_delta, step=args.step,
                                              progress=progress, on_trial=finished, every_split=every,
                                              executor=executor, batch=batch)  # fmt: skip
            out = comparison.summary()
        else:
            results = {c.sampler: searching.run_one(wb, c, progress, finished, every_split=every, executor=executor,
                                                    batch=batch) for c in configs}  # fmt: skip
            out = {"sparsity": args.sparsity, "budget": budget, "selected_on": VALIDATION, "reported_on": EVALUATION,
                   "methods": {name: r.summary() for name, r in results.items()}}  # fmt: skip
    except search.SearchBusyError as exc:
        raise CliError(str(exc)) from None
    for name, row in out["methods"].items():
        log(f"{name}: validation ppl {row['validation_perplexity']:.4f}, evaluation ppl "
            f"{row['evaluation_perplexity']:.4f}, {row['seconds']:.0f} s, Spearman {row['spearman']:.3f}, "
            f"{row['inversions']} inversions")  # fmt: skip
    return {"dense_perplexity": dense, **out}


def dsa_search_with(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """``search --space dsa``: DSA's graph search (``searching.dsa_graph_search``), its best graph measured on
    evaluation; with --versus-atp also ATP's sweep, the same number of points for each."""
    from atp_viz.search import study as searching

    check_sparsity(args.sparsity)
    check_step(args.step)
    if args.trials is not None and args.trials < 1:
        raise CliError(f"--trials must be >= 1, got {args.trials}")
    wb = load_workbench(setup)
    wb.store = open_store(args)
    progress = tqdm_progress()
    dense = wb.dense_perplexity(progress)
    done = searching.dsa_graph_search(wb, args.sparsity, args.trials, args.search_seed, args.step, progress)
    for entry in done:
        log(f"dsa graph {entry.index} (generation {entry.generation}): {entry.graph}: validation ppl "
            f"{entry.fitness:.4f}")  # fmt: skip
    best = searching.dsa_search.best(done)
    point = wb.run(ScheduleSpec("dsa", args.sparsity, graph=best.graph))
    out: dict[str, Any] = {
        "dense_perplexity": dense,
        "sparsity": args.sparsity,
        "budget": len(done),
        "graphs": [dataclasses.asdict(entry) for entry in done],
        "best": {"graph": best.graph, "validation_perplexity": best.fitness,
                 "evaluation_perplexity": point.value("perplexity", EVALUATION), "rates": point.rates.tolist()},
    }  # fmt: skip
    log(f"dsa best: {best.graph}: validation ppl {best.fitness:.4f}, evaluation ppl "
        f"{out['best']['evaluation_perplexity']:.4f}")  # fmt: skip
    if args.versus_atp:
        specs = searching.atp_specs(wb.num_blocks, args.sparsity, args.step)
        points = list(wb.run_many(specs, progress, splits=(VALIDATION,)))
        pick = min(range(len(points)), key=lambda i: points[i].value("perplexity", VALIDATION))
        winner = wb.run(specs[pick])
        out["atp"] = {"points": len(points), "params": specs[pick].params(),
                      "validation_perplexity": winner.value("perplexity", VALIDATION),
                      "evaluation_perplexity": winner.value("perplexity", EVALUATION)}  # fmt: skip
        log(f"atp best of {len(points)}: {specs[pick].describe()}: evaluation ppl "
            f"{out['atp']['evaluation_perplexity']:.4f}")  # fmt: skip
    return out


def cmd_eval(args: argparse.Namespace) -> dict[str, Any]:
    """Every metric of the model as loaded (dense, or pruned and saved), on both splits; stored."""
    setup = setup_from(args)
    wb = load_workbench(setup)
    wb.store = open_store(args)
    metrics = wb.dense_metrics(tqdm_progress())
    out: dict[str, Any] = {"model": setup.model, "metrics": metrics}
    if "zeroshot" in setup.metrics:
        out["zeroshot_table"] = zeroshot_table([], metrics, setup.zeroshot.tasks)
    return out


def cmd_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Prune with one schedule (or uniform N:M), time dense vs sparse-kernel forwards, store the result."""
    import torch

    from atp_viz.speed import speedup
    from atp_viz.speed.kernels import SpeedConfig

    setup = setup_from(args)
    if args.method is None:
        if setup.prune.nm is None:
            raise CliError("give a schedule (--method METHOD and its parameters, as for prune) or --nm N:M such as 2:4")
        n, m = setup.prune.nm
        spec = ScheduleSpec("uniform", n / m)
    else:
        spec = spec_from(args, args.method)
    config = SpeedConfig(args.prefill_tokens, args.decode_context, 1, args.repeats, args.warmup, args.clock)
    if args.threads is not None:
        if args.threads < 1:
            raise CliError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    wb = attach_store(load_workbench(setup), args, [spec])
    about = speedup.machine(wb.loaded.device)
    log(f"device: {speedup.machine_label(about)} (torch {about['torch']})")
    result = speedup.measure_speedup(wb, spec, args.kernel, config, tqdm_progress())
    times = result.times
    log(f"prefill {config.prefill_tokens} tokens: dense {times['dense_prefill_tok_s']:.1f} tok/s, {args.kernel} "
        f"{times['sparse_prefill_tok_s']:.1f} tok/s (x{result.prefill_speedup:.2f}); decode after "
        f"{config.decode_context}: dense {times['dense_decode_tok_s']:.1f} tok/s, {args.kernel} "
        f"{times['sparse_decode_tok_s']:.1f} tok/s (x{result.decode_speedup:.2f})")  # fmt: skip
    return {
        "device": speedup.machine_label(about),
        "machine": result.machine,
        "schedule": result.spec,
        "nm": list(setup.prune.nm) if setup.prune.nm else None,
        "kernel": result.kernel,
        "config": result.config,
        "sparsity": result.sparsity,
        "prefill_speedup": result.prefill_speedup,
        "decode_speedup": result.decode_speedup,
        "times": times,
        "storage": result.storage,
        "seconds": result.seconds,
        "cached": result.cached,
    }


def cmd_models(_args: argparse.Namespace) -> dict[str, Any]:
    from atp_viz.models.loading import EmbeddedModel, package_dir

    def installed(entry: EmbeddedModel) -> bool:
        return all(package_dir(p) is not None for p in entry.packages)

    return {
        "models": [
            {"name": name, "installed": installed(e), "install": e.pip, "default": name == DEFAULT_MODEL}
            for name, e in EMBEDDED_MODELS.items()
        ]
    }


def cmd_corpora(_args: argparse.Namespace) -> dict[str, Any]:
    from atp_viz.models.data import WIKI_PACKAGE
    from atp_viz.models.loading import package_dir

    return {
        "corpora": [
            {
                "name": DEFAULT_CORPUS,
                "installed": package_dir(WIKI_PACKAGE) is not None,
                "source": "embedded Wikipedia lead extracts (CC BY-SA 4.0)",
                "default": True,
            },
            *(
                {
                    "name": name,
                    "installed": None,
                    "source": f"hub dataset {spec.path} (needs the hub, or {name}:/local/dir)",
                    "default": False,
                }
                for name, spec in HUB_CORPORA.items()
            ),
            {
                "name": "PATH.txt|.json|.jsonl|.parquet",
                "installed": None,
                "source": "a local file ('text' field for json/parquet)",
                "default": False,
            },
        ]
    }


COMMANDS = {
    "schedule": cmd_schedule,
    "prune": cmd_prune,
    "errors": cmd_errors,
    "sweep": cmd_sweep,
    "sweep2d": cmd_sweep2d,
    "predict-beta": cmd_predict_beta,
    "compare": cmd_compare,
    "search": cmd_search,
    "eval": cmd_eval,
    "speed": cmd_speed,
    "models": cmd_models,
    "corpora": cmd_corpora,
}


def human(result: dict[str, Any]) -> str:
    """A readable summary when --json is not given."""
    lines = []
    for key, value in result.items():
        if isinstance(value, list) and value and isinstance(value[0], float):
            value = "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            value = "\n  " + "\n  ".join(
                json.dumps({k: v for k, v in row.items() if not isinstance(v, list)}) for row in value
            )
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


SHOW_WARNING = warnings.showwarning


def one_line_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any, **kwargs: Any
) -> None:
    """atp-viz's own warnings (recovered store, rebuilt cache, clipped schedule) as one line each."""
    if "atp_viz" not in Path(filename).parts:
        SHOW_WARNING(message, category, filename, lineno, *args, **kwargs)
        return
    text = str(message).strip().splitlines()
    print(f"atp-viz: warning: {text[0] if text else category.__name__}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    try:
        with warnings.catch_warnings():  # a recovered store or rebuilt cache is reported in one line
            warnings.showwarning = one_line_warning
            result = COMMANDS[args.command](args)
    except (ValueError, CliError, StoreError, OSError, WorkerError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"atp-viz: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("atp-viz: interrupted; finished results are in the store", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(to_jsonable(result), allow_nan=True))
    elif "recipe" in result:
        print(result["recipe"], end="")
    else:
        print(human(result))
    return 0
