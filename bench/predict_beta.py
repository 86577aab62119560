"""Predicted beta (no sweep) against the swept best beta, on the embedded models.

For each (model, S): the full ATP beta grid is swept in cached mode and every point's validation
perplexity is stored (the swept best is chosen there); ``atp_viz.tuning.predict.predict_beta`` predicts
beta from the dense statistics alone; the evaluation perplexity of the swept best and of the
predicted beta is measured (that is what is reported). Every point is a results-store row, so a
rerun reads the sweep back (its seconds are the stored ones) and only re-times the prediction.

    .venv/bin/python bench/predict_beta.py                       # all six cases, JSON to docs/results
    .venv/bin/python bench/predict_beta.py --cases smollm2-135m:0.7 --sweep-only

The sweep walks the grid upwards and stops on the right arm of the U (``--patience`` points in a row
worse than the best before them, the last by more than ``--margin``), so its time is a lower bound
of a full-grid sweep's (the shared CPU is slow). Sweep time: the sum of the swept points' stored
seconds (prune + validation perplexity), plus the one dense statistics pass both approaches share
(reported apart). Prediction time: the whole
``predict_beta`` call after the dense statistics exist (its own forwards included).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CASES = "smollm2-135m:0.5,0.6,0.7,0.8;gemma3-270m:0.6,0.7"
DEFAULT_STORE = Path("~/.local/share/atp-viz/predict-beta.sqlite").expanduser()


def parse_cases(text: str) -> list[tuple[str, list[float]]]:
    """'model:0.5,0.6;other:0.7' -> [(model, [0.5, 0.6]), (other, [0.7])]."""
    cases = []
    for part in text.split(";"):
        model, _, sparsities = part.partition(":")
        cases.append((model.strip(), [float(s) for s in sparsities.split(",")]))
    return cases


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def past_minimum(values: list[float], patience: int, margin: float) -> bool:
    """Early stop of the sweep on the right arm of the U: the last ``patience`` points are all worse
    than the best before them, and the last one by more than ``margin`` (relative)."""
    if len(values) <= patience:
        return False
    best = min(values[:-patience])
    return all(v > best for v in values[-patience:]) and values[-1] > best * (1 + margin)


def make_setup(args: argparse.Namespace, model: str) -> Any:
    from atp_viz.config import CalibConfig, EvalConfig
    from atp_viz.experiment.workbench import Setup
    from atp_viz.pruning.pruners import PruneConfig

    return Setup(
        model=model,
        calib=CalibConfig(args.calib_samples, args.calib_seqlen),
        evaluation=EvalConfig(args.eval_windows, args.eval_seqlen, args.eval_batch, args.val_windows),
        prune=PruneConfig(args.pruner),
        calibration="cached",
    )


def point_of(wb: Any, spec: Any, splits: list[str] | None, stored_only: bool) -> Any:
    """The point of ``spec`` measured on ``splits`` (all when None): computed and stored, or with
    ``stored_only`` read back as far as it is stored (None when its row is missing)."""

    if not stored_only:
        return wb.run(spec, splits=splits)
    return wb.stored(spec, need=())


def run_case(wb: Any, sparsity: float, args: argparse.Namespace) -> dict[str, Any]:
    import math

    from atp_viz.measure.metrics import EVALUATION, VALIDATION
    from atp_viz.measure.points import best_point
    from atp_viz.schedules import methods
    from atp_viz.schedules.methods import ScheduleSpec
    from atp_viz.tuning.predict import AMPLIFICATIONS, predict_for, predict_from_profile, stored_prediction

    specs = methods.sweep_grid("atp", wb.num_blocks, sparsity, args.step)
    points, complete = [], False
    for index, spec in enumerate(specs):
        point = point_of(wb, spec, [VALIDATION], args.stored_only)
        if point is None or math.isnan(value := point.value("perplexity", VALIDATION)):
            break
        points.append(point)
        log(f"  S={sparsity} [{index + 1}/{len(specs)}] beta={point.beta:.3f} {value:.3f} ({point.wall_time:.0f} s)")
        if past_minimum([p.value("perplexity", VALIDATION) for p in points], args.patience, args.margin):
            complete = True
            break
    complete = complete or len(points) == len(specs)
    out: dict[str, Any] = {
        "model": wb.setup.model,
        "sparsity": sparsity,
        "num_blocks": wb.num_blocks,
        "grid": [p.beta for p in points],
        "validation_perplexity": [p.value("perplexity", VALIDATION) for p in points],
        "grid_points": len(specs),
        "swept_points": len(points),
        "sweep_complete": complete,  # False: stopped by the deadline before the right arm of the U
        "sweep_s": float(sum(p.wall_time for p in points)),
    }
    if not points:
        return out
    best = best_point(points, split=VALIDATION)
    out["swept_best_beta"] = best.beta
    if args.sweep_only:
        return out
    started = time.perf_counter()
    prediction = (
        stored_prediction(wb, sparsity, args.step) if args.stored_only else predict_for(wb, sparsity, args.step)
    )
    if prediction is None:
        return out
    predict_s = prediction.seconds if prediction.cached else time.perf_counter() - started  # as first measured
    by_model = {}
    for name in AMPLIFICATIONS:
        other = predict_from_profile(prediction.profile, sparsity, args.step, name)
        by_model[name] = {"beta": other.beta, "steps_apart": round(abs(other.beta - best.beta) / args.step)}
    chosen = {}
    for name, beta in (("swept", best.beta), ("predicted", prediction.beta)):
        spec = ScheduleSpec("atp", sparsity, beta=beta) if beta > 0 else ScheduleSpec("uniform", sparsity)
        point = point_of(wb, spec, None, args.stored_only)
        chosen[name] = {
            "beta": beta,
            "validation_perplexity": point.value("perplexity", VALIDATION) if point else math.nan,
            "evaluation_perplexity": point.value("perplexity", EVALUATION) if point else math.nan,
        }
    return out | {
        "predicted_beta": prediction.beta,
        "predicted_index": prediction.index,
        "predicted_error": prediction.predicted_error.tolist(),
        "amplification": prediction.amplification,
        "by_model": by_model,
        "steps_apart": round(abs(prediction.beta - best.beta) / args.step),
        "predict_s": predict_s,
        "prediction_forwards": prediction.forwards,
        "swept": chosen["swept"],
        "predicted": chosen["predicted"],
        "ppl_lost": chosen["predicted"]["evaluation_perplexity"] - chosen["swept"]["evaluation_perplexity"],
        "time_ratio": predict_s / out["sweep_s"],
    }


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and value != value) else format(value, spec)


def markdown_table(cases: list[dict[str, Any]]) -> str:
    """The README / docs table: one row per case, every amplification model's beta and its distance."""
    head = ("| model, S | grid (swept) | swept best (val) | predicted, residual | chain | direct | ppl (eval) "
            "swept -> predicted | predict s / sweep s |")  # fmt: skip
    rows = [head, "|" + "---|" * 8]
    for c in cases:
        swept = f"{c['grid_points']} ({c['swept_points']}{'' if c['sweep_complete'] else ', unfinished'})"
        models = c.get("by_model", {})
        cells = [f"{fmt(models[m]['beta'], '.3f')} ({models[m]['steps_apart']})" if m in models else "-"
                 for m in ("residual", "chain", "direct")]  # fmt: skip
        ppl = f"{fmt(c.get('swept', {}).get('evaluation_perplexity'), '.2f')} -> "
        ppl += fmt(c.get("predicted", {}).get("evaluation_perplexity"), ".2f")
        seconds = f"{fmt(c.get('predict_s'), '.0f')} / {c['sweep_s']:.0f}"
        rows.append(f"| {c['model']}, {c['sparsity']} | {swept} | {fmt(c.get('swept_best_beta'), '.3f')} | "
                    f"{' | '.join(cells)} | {ppl} | {seconds} |")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES)
    parser.add_argument("--pruner", default="wanda")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-seqlen", type=int, default=256)
    parser.add_argument("--val-windows", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--step", type=float, default=0.002)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patience", type=int, default=3, help="stop the sweep after this many worse points")
    parser.add_argument("--margin", type=float, default=0.05, help="... the last worse than the best by this much")
    parser.add_argument("--store", default=str(DEFAULT_STORE))
    parser.add_argument("--sweep-only", action="store_true", help="sweep and store the grid, no prediction")
    parser.add_argument("--stored-only", action="store_true", help="report what the store holds; compute nothing")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "predict-beta.json"))
    args = parser.parse_args()

    import torch

    from atp_viz.experiment.workbench import Workbench
    from atp_viz.store import ResultStore

    torch.set_num_threads(args.threads)
    store = ResultStore(args.store)
    results = []
    for model, sparsities in parse_cases(args.cases):
        started = time.perf_counter()
        wb = Workbench(make_setup(args, model), store=store)
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        if not args.stored_only:
            wb.dense_stats()
        stats_s, stats_source = time.perf_counter() - started, wb.stats_source
        print(f"{model}: loaded in {load_s:.1f} s, dense statistics ({stats_source}) {stats_s:.1f} s", file=sys.stderr)
        for sparsity in sparsities:
            case = run_case(wb, sparsity, args)
            results.append(case | {"load_s": load_s, "stats_s": stats_s, "stats_source": stats_source})
            print(json.dumps({k: v for k, v in case.items() if k not in ("predicted_error",)}), file=sys.stderr)
    if args.sweep_only:
        return
    payload = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/predict_beta.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "threads": args.threads,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "store", "sweep_only", "stored_only")},
        "cases": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    print(markdown_table(results))


if __name__ == "__main__":
    main()
