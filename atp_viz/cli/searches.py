"""``atp-viz search``: searches over per-block rates, optionally against ATP's sweep at the same budget."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from typing import Any

from atp_viz.cli.options import (
    CliError,
    check_step,
    executor_from,
    executor_options,
    json_option,
    load_workbench,
    log,
    name_list,
    open_store,
    setup_from,
    setup_options,
    tqdm_progress,
)
from atp_viz.config import check_sparsity
from atp_viz.experiment.executors import Executor
from atp_viz.experiment.workbench import Setup
from atp_viz.measure.metrics import EVALUATION, VALIDATION
from atp_viz.measure.points import PointResult
from atp_viz.schedules import published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.search import space, study
from atp_viz.search.space import SAMPLERS


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "search",
        help="search per-block rates (Optuna TPE / CMA-ES, evolutionary), optionally vs ATP",
        parents=[setup_options(), executor_options(), json_option()],
    )
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


def cmd_search(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_from(args)
    if args.space == "dsa":
        return dsa_search_with(args, setup)
    for name in args.sampler:
        space.check_sampler(name)
    if not args.sampler:
        raise CliError(f"--sampler needs at least one of {', '.join(space.SAMPLERS)}")
    if args.trials is None and not args.versus_atp:
        raise CliError("give --trials N (N >= 1), or --versus-atp for ATP's sweep size")
    check_step(args.step)
    budget = 1 if args.trials is None else args.trials
    configs = [
        study.SearchConfig(name, budget, args.sparsity, args.search_seed, args.timeout, args.max_delta)
        for name in dict.fromkeys(args.sampler)
    ]  # validates trials, timeout, S, seed and max_delta before the model loads
    with contextlib.closing(executor_from(args, setup)) as executor:
        return search_with(args, setup, configs, budget, executor)


def search_with(
    args: argparse.Namespace, setup: Setup, configs: list[Any], budget: int, executor: Executor
) -> dict[str, Any]:
    """``cmd_search`` once its input is checked: trials asked --workers at a time, run on ``executor``."""
    batch = 1 if args.workers is None else args.workers
    wb = load_workbench(setup)
    wb.store = open_store(args)
    progress = tqdm_progress()
    dense = wb.dense_perplexity(progress)

    def finished(method: str, trial: study.TrialRecord) -> None:
        log(f"{method} trial {trial.number}: validation ppl {trial.validation:.4f}, evaluation ppl "
            f"{trial.evaluation:.4f} at {trial.seconds:.1f} s")  # fmt: skip

    every = args.evaluate == "all"
    try:
        if args.versus_atp:
            comparison = study.versus_atp(wb, args.sparsity, args.sampler, args.trials, seed=args.search_seed,
                                              timeout_s=args.timeout, max_delta=args.max_delta, step=args.step,
                                              progress=progress, on_trial=finished, every_split=every,
                                              executor=executor, batch=batch)  # fmt: skip
            out = comparison.summary()
        else:
            results = {c.sampler: study.run_one(wb, c, progress, finished, every_split=every, executor=executor,
                                                    batch=batch) for c in configs}  # fmt: skip
            out = {"sparsity": args.sparsity, "budget": budget, "selected_on": VALIDATION, "reported_on": EVALUATION,
                   "methods": {name: r.summary() for name, r in results.items()}}  # fmt: skip
    except space.SearchBusyError as exc:
        raise CliError(str(exc)) from None
    for name, row in out["methods"].items():
        log(f"{name}: validation ppl {row['validation_perplexity']:.4f}, evaluation ppl "
            f"{row['evaluation_perplexity']:.4f}, {row['seconds']:.0f} s, Spearman {row['spearman']:.3f}, "
            f"{row['inversions']} inversions")  # fmt: skip
    return {"dense_perplexity": dense, **out}


def dsa_search_with(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """``search --space dsa``: DSA's graph search (``study.dsa_graph_search``), its best graph measured on
    evaluation; with --versus-atp also ATP's sweep, the same number of points for each."""
    check_sparsity(args.sparsity)
    check_step(args.step)
    if args.trials is not None and args.trials < 1:
        raise CliError(f"--trials must be >= 1, got {args.trials}")
    wb = load_workbench(setup)
    wb.store = open_store(args)
    progress = tqdm_progress()
    dense = wb.dense_perplexity(progress)

    def finished(entry: study.dsa_search.Evaluated, point: PointResult) -> None:  # one line per graph, as it ends
        log(f"dsa graph {entry.index} (generation {entry.generation}): {entry.graph}: validation ppl "
            f"{entry.fitness:.4f}{' (stored)' if point.cached else ''}")  # fmt: skip

    done = study.dsa_graph_search(wb, args.sparsity, args.trials, args.search_seed, args.step, progress, finished)
    best = study.dsa_search.best(done)
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
        specs = study.atp_specs(wb.num_blocks, args.sparsity, args.step)
        points = list(wb.run_many(specs, progress, splits=(VALIDATION,)))
        pick = min(range(1, len(points)), key=lambda i: points[i].value("perplexity", VALIDATION))  # uniform: baseline
        winner = wb.run(specs[pick])
        out["atp"] = {"points": len(points), "params": specs[pick].params(),
                      "validation_perplexity": winner.value("perplexity", VALIDATION),
                      "evaluation_perplexity": winner.value("perplexity", EVALUATION)}  # fmt: skip
        log(f"atp best of {len(points)}: {specs[pick].describe()}: evaluation ppl "
            f"{out['atp']['evaluation_perplexity']:.4f}")  # fmt: skip
    return out


COMMANDS = {"search": cmd_search}
