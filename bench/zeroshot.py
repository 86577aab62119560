"""Zero-shot scoring speed against the dense forward floor, then dense accuracy, on the embedded model.

1. Speed (``--items`` per task, default ``zeroshot.DEFAULT_ITEMS``, the seven default tasks):
   scoring tokens/s = tokens fed to the model (distinct inputs, unpadded) / seconds of ``score_tasks``;
   floor tokens/s = the same number of tokens cut into full ``--floor-window`` windows, through the
   dense ``perplexity()`` (the batched, chunked evaluation path). Floor and scoring are timed twice,
   interleaved, and the faster of each is kept. ratio = scoring / floor (1 = no overhead beyond the
   forward passes). The time of the point on an idle machine is estimated as
   tokens / (ratio x REFERENCE_FLOOR_TOK_S); process CPU seconds are recorded too (on a busy machine
   they include the threads' spin-waits). Written to bench/results/zeroshot.json.
2. Accuracy (``--dense-items`` per task, seed 0, all eight tasks): acc and acc_norm with stderr per
   task and the mean over the paper's seven. Written to docs/results/zeroshot-dense.json.

The load average at start and end is recorded: on a shared machine both numbers slow down together,
so the ratio stays meaningful while absolute times do not.

    .venv/bin/python bench/zeroshot.py                      # both parts
    .venv/bin/python bench/zeroshot.py --dense-items 0      # speed only
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from atp_viz.measure import zeroshot  # noqa: E402
from atp_viz.measure.perplexity import perplexity  # noqa: E402
from atp_viz.models.loading import load_model  # noqa: E402

FLOOR_WINDOW = 1024  # tokens per window of the floor (the notes' reference forward measurement)
FLOOR_BATCH = 4  # perplexity()'s default batch
DENSE_ITEMS = 200
REFERENCE_FLOOR_TOK_S = 470.0  # dense fp32 forward on an idle 2-core CPU (docs/notes: 460-480 tok/s)
T = TypeVar("T")
CPU_SECONDS: list[float] = []
REPEATS = 2  # each measurement is taken twice, interleaved; the faster is kept


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(wall seconds, value); the CPU seconds of the call are kept in CPU_SECONDS[-1]."""
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    CPU_SECONDS.append(time.process_time() - cpu)
    return time.perf_counter() - start, value


def fed_tokens(tokenizer: object, tasks: tuple[str, ...], items: int, seed: int, max_length: int) -> list[int]:
    """The token ids the scorer feeds to the model: every distinct input row, concatenated."""
    requests = [r for name in tasks for item in zeroshot.task_items(name, items, seed) for r in item.requests]
    rows, _ = zeroshot.model_inputs([zeroshot.encode_pair(tokenizer, c, x) for c, x in requests], max_length)
    return [token for row in rows for token in row.tokens]


def speed(loaded: object, items: int, batch_size: int, window: int) -> dict[str, object]:
    model, tokenizer = loaded.model, loaded.tokenizer  # type: ignore[attr-defined]
    tasks = zeroshot.DEFAULT_TASKS
    tokens = fed_tokens(tokenizer, tasks, items, 0, zeroshot.context_length(model, tokenizer))
    windows = torch.tensor(tokens[: len(tokens) // window * window]).view(-1, window)
    # floor, scoring, floor, scoring: the faster of each pair (contention only ever slows a run down)
    floor_s, score_s, score_cpu_s = math.inf, math.inf, math.inf
    for _ in range(REPEATS):
        floor_s = min(floor_s, timed(lambda: perplexity(model, windows, FLOOR_BATCH))[0])
        seconds, scores = timed(lambda: zeroshot.score_tasks(model, tokenizer, tasks, items, 0, batch_size))
        score_s, score_cpu_s = min(score_s, seconds), min(score_cpu_s, CPU_SECONDS[-1])
    score_rate, floor_rate = len(tokens) / score_s, windows.numel() / floor_s
    mean, stderr = zeroshot.mean_accuracy(scores)
    return {
        "tasks": list(tasks), "items_per_task": items, "batch_size": batch_size,
        "scored_tokens": len(tokens), "score_s": round(score_s, 2), "score_tok_s": round(score_rate, 1),
        "floor_window": window, "floor_tokens": windows.numel(), "floor_s": round(floor_s, 2),
        "floor_tok_s": round(floor_rate, 1), "ratio": round(score_rate / floor_rate, 3),
        "score_s_at_reference_floor": round(len(tokens) / (score_rate / floor_rate * REFERENCE_FLOOR_TOK_S), 1),
        "score_cpu_s": round(score_cpu_s, 1), "score_cpu_s_per_thread": round(score_cpu_s / torch.get_num_threads(), 1),
        "mean_acc": round(mean, 4), "mean_acc_stderr": round(stderr, 4),
    }  # fmt: skip


def dense(loaded: object, items: int, batch_size: int) -> dict[str, object]:
    model, tokenizer = loaded.model, loaded.tokenizer  # type: ignore[attr-defined]
    tasks = tuple(zeroshot.TASKS)
    start = time.perf_counter()
    scores = zeroshot.score_tasks(model, tokenizer, tasks, items, 0, batch_size)
    seconds = time.perf_counter() - start
    paper = {name: scores[name] for name in zeroshot.DEFAULT_TASKS}
    mean, stderr = zeroshot.mean_accuracy(paper)
    mean_norm, stderr_norm = zeroshot.mean_accuracy(paper, "acc_norm")
    return {
        "items_per_task": items, "seed": 0, "seconds": round(seconds, 1),
        "data_fingerprint": zeroshot.data_fingerprint(tasks, items, 0),
        "tasks": {
            name: {"acc": s.acc, "acc_stderr": s.acc_stderr, "acc_norm": s.acc_norm,
                   "acc_norm_stderr": s.acc_norm_stderr, "items": s.items, "split": zeroshot.TASKS[name].split,
                   "lm_eval_split": zeroshot.TASKS[name].lm_eval_split, "chance": 1 / zeroshot.TASKS[name].num_choices}
            for name, s in scores.items()
        },
        "mean_of_paper_seven": {"acc": mean, "acc_stderr": stderr, "acc_norm": mean_norm,
                                "acc_norm_stderr": stderr_norm},
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", type=int, default=zeroshot.DEFAULT_ITEMS, help="items per task of the speed run")
    parser.add_argument(
        "--dense-items", type=int, default=DENSE_ITEMS, help="items per task of the accuracy run (0: skip)"
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--floor-window", type=int, default=FLOOR_WINDOW)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "zeroshot.json")
    parser.add_argument("--dense-json", type=Path, default=ROOT / "docs" / "results" / "zeroshot-dense.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python bench/zeroshot.py " + " ".join(sys.argv[1:])
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    loaded = load_model(args.model)
    common = {"command": command.strip(), "date": started, "model": args.model, "dtype": "float32",
              "threads": args.threads, "machine": platform.processor() or platform.machine()}  # fmt: skip
    if not args.no_speed:
        load_before = os.getloadavg()[0]
        result = {**common, **speed(loaded, args.items, args.batch_size, args.floor_window)}
        result["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(result, indent=1))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.dense_items:
        load_before = os.getloadavg()[0]
        accuracy = {**common, **dense(loaded, args.dense_items, args.batch_size)}
        accuracy["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(json.dumps(accuracy, indent=1))
        args.dense_json.parent.mkdir(parents=True, exist_ok=True)
        args.dense_json.write_text(json.dumps(accuracy, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
