"""``atp-viz sweep | sweep2d | predict-beta | compare``: ATP's beta over its grid, and the methods compared."""

from __future__ import annotations

import argparse
import contextlib
import math
from typing import Any

from atp_viz.cli.options import (
    CliError,
    attach_store,
    check_find_best,
    check_step,
    executor_from,
    executor_options,
    float_list,
    found_in_seed,
    given_params,
    json_option,
    load_workbench,
    log,
    log_point,
    method_param_options,
    name_list,
    point_json,
    seeds_of,
    setup_from,
    setup_options,
    tqdm_progress,
)
from atp_viz.config import check_sparsity
from atp_viz.experiment.executors import run_seeds
from atp_viz.experiment.workbench import (
    Workbench,
    compare_cells,
    compare_rows,
    stored_groups,
    summarize_sweep,
    sweep_specs,
    zeroshot_table,
)
from atp_viz.measure.metrics import EVALUATION
from atp_viz.measure.points import seed_spread
from atp_viz.schedules import methods, published
from atp_viz.tuning.findbest import atp_grid, fast_compare, find_best
from atp_viz.tuning.predict import AMPLIFICATIONS, PredictConfig, check_request, predict_for


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="beta grid search: uniform (beta=0) plus every beta of the grid",
        parents=[setup_options(), executor_options(), json_option()],
    )
    p.add_argument("--sparsity", type=float, default=0.7, help="target mean sparsity S in (0, 1) (default 0.7)")
    p.add_argument("--step", type=float, default=published.GRID_STEP, help="grid step (default %(default)s)")
    p.add_argument(
        "--find-best",
        action="store_true",
        help="search the grid for the best beta (Fibonacci/golden-section on validation, ~log(n) points) instead "
        "of running all of it; probes are stored and a later full sweep reuses them",
    )

    p = sub.add_parser(
        "sweep2d",
        help="2-D sweep around ATP's line: beta x attention-MLP offset or beta x curvature p",
        parents=[setup_options(), executor_options(), json_option()],
    )
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

    p = sub.add_parser(
        "predict-beta",
        help="predict ATP's best beta without a sweep (error-propagation model)",
        parents=[setup_options(), json_option()],
    )
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

    p = sub.add_parser(
        "compare",
        help="methods x sparsities table (ATP at its best beta, chosen on validation)",
        parents=[setup_options(), method_param_options(grid=True), executor_options(), json_option()],
    )
    p.add_argument(
        "--methods",
        type=name_list,
        default=list(methods.method_names(comparable=True, peers=True)),
        help=f"comma-separated, of: {', '.join(methods.method_names(comparable=True))} (default: "
        f"{','.join(methods.method_names(comparable=True, peers=True))})",
    )
    p.add_argument("--sparsities", type=float_list, default=[0.5, 0.6, 0.7, 0.8])
    p.add_argument(
        "--step", type=float, default=published.GRID_STEP, help="grid step of methods with a grid (ATP's beta)"
    )
    p.add_argument(
        "--find-best",
        action="store_true",
        help="fast: a method with a grid searches it (as sweep --find-best) and a one-schedule method is measured on "
        "the evaluation split only; add --calibration cached for the dashboard's fast default",
    )


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
            summary = sweep2d.summarize(
                grid, stored_groups(wb, grid.specs(), seeds, need=())[0], select=setup.select_split
            )
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


def cmd_compare(args: argparse.Namespace) -> dict[str, Any]:
    setup = setup_from(args)
    sparsities = [check_sparsity(s) for s in args.sparsities]
    check_step(args.step)
    for name in args.methods:
        if name not in methods.method_names(comparable=True):
            raise CliError(f"unknown method {name!r}; allowed: {', '.join(methods.method_names(comparable=True))}")
    fixed = {name: given_params(args, name) for name in args.methods}
    # a method with a grid is searched at the parameters given unless its grid parameter is given (--beta)
    fixed = {name: values for name, values in fixed.items() if values}
    for name, values in fixed.items():  # a parameter outside its range is refused before the model loads
        for s in sparsities:
            methods.ScheduleSpec(name, s, **values)
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
    rows = methods.with_removed(compare_rows(cells, found, select=setup.select_split, extra=("zeroshot",)))
    for row in rows:
        std = f" +- {row['perplexity_std']:.3f}" if len(seeds) > 1 else ""
        whole = f"; {methods.removed_note(row['rates'])}" if row["removed_blocks"] else ""
        log(f"{row['method']} S={row['sparsity']:g}: ppl {row['perplexity']:.3f}{std} {row['params'] or ''}{whole}")
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


COMMANDS = {"sweep": cmd_sweep, "sweep2d": cmd_sweep2d, "predict-beta": cmd_predict_beta, "compare": cmd_compare}
