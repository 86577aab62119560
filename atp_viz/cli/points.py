"""``atp-viz schedule | prune | errors | eval | speed``: one schedule, or one model as it is."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from atp_viz.cli.options import (
    CliError,
    attach_store,
    json_option,
    load_workbench,
    log,
    name_list,
    open_store,
    point_json,
    safety_options,
    schedule_options,
    setup_from,
    setup_options,
    spec_from,
    tqdm_progress,
)
from atp_viz.config import CalibConfig, EvalConfig, check_sparsity, parse_nm
from atp_viz.experiment.workbench import Setup, zeroshot_table
from atp_viz.models.data import DEFAULT_CORPUS
from atp_viz.pruning.pruners import PRUNERS
from atp_viz.schedules import methods, published
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.speed.export import (
    EXPORT_FORMATS,
    LLAMA_BLOCKS,
    block_location,
    check_target,
    save_pruned,
    schedule_recipe,
)


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "schedule",
        help="print per-block rates of a schedule",
        parents=[schedule_options(), safety_options(), json_option()],
    )
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

    p = sub.add_parser(
        "prune",
        help="prune a model with one schedule and measure it",
        parents=[setup_options(), schedule_options(), json_option()],
    )
    p.add_argument("--save", default=None, help="export the pruned model (safetensors) + schedule.json to this folder")
    p.add_argument("--force", action="store_true", help="allow --save into a non-empty folder")
    p.add_argument(
        "--save-format",
        default=EXPORT_FORMATS[0],
        choices=EXPORT_FORMATS,
        help="safetensors (default; loads in transformers and vLLM) or compressed-tensors (sparse-bitmask "
        "archive, about 40 %% smaller at S = 0.5; read back with atp_viz.speed.export.load_compressed)",
    )

    p = sub.add_parser(
        "errors",
        help="per-block reconstruction errors of one or more schedules",
        parents=[setup_options(), schedule_options(method=False), json_option()],
    )
    p.add_argument(
        "--methods", type=name_list, default=["uniform", "atp"], help="comma-separated (default uniform,atp)"
    )

    p = sub.add_parser(
        "eval",
        help="measure a model (a named model, a folder, e.g. one saved by prune --save) as it is",
        parents=[setup_options(), json_option()],
    )
    p.set_defaults(metrics=["perplexity", "zeroshot"])

    add_speed_parser(sub)


def add_speed_parser(sub: Any) -> None:
    """``atp-viz speed``: dense vs sparse-kernel forward time of one pruned model (``speed/speedup.py``)."""
    from atp_viz.speed.kernels import CLOCKS, SpeedConfig
    from atp_viz.speed.speedup import CPU_KERNELS

    p = sub.add_parser(
        "speed",
        help="dense vs pruned (sparse kernel) forward speed of one pruned model, stored",
        parents=[setup_options(), schedule_options(method=False), json_option()],
    )
    p.add_argument(
        "--method",
        default=None,
        choices=methods.method_names(),
        help="schedule (as for prune); with --nm alone: uniform at N/M",
    )
    p.add_argument("--kernel", default=CPU_KERNELS[0], choices=CPU_KERNELS, help="sparse layout (default %(default)s)")
    p.add_argument("--prefill-tokens", type=int, default=SpeedConfig.prefill_tokens, help="default %(default)s")
    p.add_argument(
        "--decode-context", type=int, default=SpeedConfig.decode_context, help="cached tokens before the decoded one"
    )
    p.add_argument("--repeats", type=int, default=SpeedConfig.repeats, help="timed calls, fastest kept")
    p.add_argument("--warmup", type=int, default=SpeedConfig.warmup, help="untimed calls first")
    p.add_argument("--clock", default=SpeedConfig.clock, choices=tuple(CLOCKS), help="wall (default) or process cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


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
        weights, location, linear, names = None, LLAMA_BLOCKS, {}, []
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
        location, names = block_location(wb.loaded_model), wb.linear_names
        linear = wb.linear_rates(spec, rates)  # {} unless the attention-MLP offset is non-zero
    layers = len(rates)
    sparsity = spec.sparsity if spec.entry.takes_sparsity else published.weighted_mean(rates, weights)
    return {
        "method": args.method,
        "layers": layers,
        "sparsity": sparsity,
        "beta_max": published.beta_max(layers, check_sparsity(sparsity)) if 0 < sparsity < 1 else 0.0,
        "rates": rates.tolist(),
        "removed_blocks": methods.removed_blocks(rates),
        "mean": float(np.mean(rates)),
        "weighted_mean": published.weighted_mean(rates, weights),
        **({"linear_rates": linear} if linear else {}),
        **(
            {"recipe": schedule_recipe(rates.tolist(), args.pruner, location, parse_nm(args.nm), linear, names)}
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
            wb.loaded_model, args.save, {**setup.describe(), **out}, force=args.force, format=args.save_format
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
    about = speedup.machine(wb.loaded_model.device)
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


COMMANDS = {"schedule": cmd_schedule, "prune": cmd_prune, "errors": cmd_errors, "eval": cmd_eval, "speed": cmd_speed}
