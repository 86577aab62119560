"""The Lesson page's computations (no streamlit): the error budget, the dense-input variant and the stepper.

All three start from the dense model and the calibration batch of a ``Workbench`` and write their results
to its results store like any point (``Workbench.put``), so a reload or a second student reads them back
and ``scripts/ship_results.py`` ships them at the dashboard defaults.

- **Error budget** of a schedule: for each block i alone, prune it at its rate s_i (every other block dense;
  its input is the dense one, so it is calibrated on the dense statistics, as the sequential loop would),
  then run the dense blocks after it and measure the last block's error:
  ``final_i = ||h_{L-1}(dense) - h_{L-1}(only block i pruned)||_F^2``. Its own (local) error is
  ``local_i = ||h_i(dense) - fhat_i(h_{i-1})||_F^2`` and its amplification ``final_i / local_i``. The share
  ``final_i / final_joint`` compares it with the error of the model pruned everywhere (the sequential
  point's last cumulative error); the shares need not add to 1 (errors interact).
- **Dense-input variant** ("masked forward" off): the sequential loop with every block calibrated on the
  dense model's inputs instead of the pruned model's (Wanda issue #38); the errors are measured along the
  pruned model as usual.
- **Stepper**: the sequential loop one block at a time (``calibration.prune_block``), keeping the pruned and
  dense inputs of the next block in memory (per server process, keyed by the model setting and schedule), so a
  step costs three block forwards (two once the dense outputs are known) and the Wanda pruning of the block's
  linears, whatever the block's depth. The page keeps ``AHEAD`` block computed and stored beyond the ones
  shown (``step_target``): a press then only redraws.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atp_viz.experiment.workbench import Workbench
from atp_viz.measure.points import PointResult
from atp_viz.progress import Progress, counted
from atp_viz.pruning.cached import linear_stats
from atp_viz.pruning.calibration import (
    BlockCalls,
    DenseTrajectory,
    PruneReport,
    SequentialMode,
    prune_block,
    prune_sequential,
    run_block,
    squared_norm,
)
from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import Pruner, check_rate, row_prune_mask
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.schedules.published import RateMap, as_rate_map
from atp_viz.store import fingerprint

BUDGET_KIND, DENSE_INPUT_KIND, STEP_KIND = "lesson-budget", "lesson-dense-input", "lesson-step"
# the masked-forward toggle: what each block is calibrated on
INPUTS = {"pruned": "the pruned model's inputs (sequential, the paper)", "dense": "the dense model's inputs"}
CHAPTERS = {
    1: "One block",
    2: "Predict, then reveal",
    3: "Step through",
    4: "Where the error comes from",
    5: "Tilt the line",
    6: "Guess the best beta",
    7: "Where the straight line is not the whole story",
}


# ------------------------------------------------------------------ the error budget
@dataclass
class Budget:
    """Per block (one entry each): what pruning that block alone does to the last block's output."""

    rates: np.ndarray  # s_i the block was pruned at
    local_abs: np.ndarray  # ||h_i - fhat_i(h_{i-1})||^2, the block's own error on its dense input
    local: np.ndarray  # local_abs / ||h_i||^2
    final_abs: np.ndarray  # ||h_{L-1} - h_{L-1}(only block i pruned)||^2
    final: np.ndarray  # final_abs / ||h_{L-1}||^2
    dense_norm: np.ndarray  # ||h_i(dense)||^2: the hidden-state size after block i
    seconds: float = 0.0

    @property
    def amplification(self) -> np.ndarray:
        """final_abs / local_abs: how much block i's own error grows (> 1) or shrinks (< 1) on its way out."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.local_abs > 0, self.final_abs / self.local_abs, np.nan)

    def shares(self, joint_abs: float) -> np.ndarray:
        """final_abs / the error of the model pruned everywhere (the sequential point's last cumulative error)."""
        return self.final_abs / joint_abs if joint_abs > 0 else np.full(self.final_abs.size, np.nan)

    def to_record(self) -> dict[str, Any]:
        fields = ("rates", "local_abs", "local", "final_abs", "final", "dense_norm")
        return {name: getattr(self, name).tolist() for name in fields} | {"seconds": self.seconds}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Budget:
        def array(name: str) -> np.ndarray:
            return np.asarray(record[name], dtype=np.float64)

        return cls(
            array("rates"),
            array("local_abs"),
            array("local"),
            array("final_abs"),
            array("final"),
            array("dense_norm"),
            float(record.get("seconds", 0.0)),
        )


def dense_outputs(blocks: torch.nn.ModuleList, calls: BlockCalls, batch_size: int) -> list[torch.Tensor]:
    """h_0 .. h_{L-1} of the dense model on the calibration batch (the blocks must hold dense weights)."""
    outputs, hidden = [], calls.hidden
    for i, block in enumerate(blocks):
        hidden = run_block(block, hidden, calls.args[i], batch_size)
        outputs.append(hidden)
    return outputs


@torch.inference_mode()
def error_budget(
    blocks: torch.nn.ModuleList,
    calls: BlockCalls,
    rates: RateMap | Sequence[float] | np.ndarray,
    pruner: Pruner,
    stats: Callable[[int, str], Any],
    nm: tuple[int, int] | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> Budget:
    """Prune each block alone (``stats(i, name)``: its linears' statistics on the dense input), measure its
    local error and the last block's error, and put its dense weights back. About L^2 / 2 block forwards."""
    rate_map = as_rate_map(rates)
    n = len(blocks)
    if rate_map.num_blocks != n:
        raise ValueError(f"schedule has {rate_map.num_blocks} rates but the model has {n} blocks")
    dense = dense_outputs(blocks, calls, batch_size)
    inputs = [calls.hidden, *dense[:-1]]
    local_abs, final_abs = np.zeros(n), np.zeros(n)
    for i, block in enumerate(blocks):
        linears = prunable_linears(block)
        saved = {name: lin.weight.detach().clone() for name, lin in linears.items()}
        try:
            for name, lin in linears.items():
                pruner.prune_(lin, stats(i, name), rate_map.rate(i, name), nm)
            out = run_block(block, inputs[i], calls.args[i], batch_size)
        finally:
            for name, lin in linears.items():
                lin.weight.copy_(saved[name])
        local_abs[i] = squared_norm(dense[i] - out)
        for j in range(i + 1, n):
            out = run_block(blocks[j], out, calls.args[j], batch_size)
        final_abs[i] = squared_norm(dense[-1] - out)
        if progress:
            progress(i + 1, n)
    norms = np.array([squared_norm(h) for h in dense])
    block_rates = np.array(
        [float(np.mean([rate_map.rate(i, name) for name in prunable_linears(b)])) for i, b in enumerate(blocks)]
    )
    return Budget(block_rates, local_abs, local_abs / norms, final_abs, final_abs / norms[-1], norms)


def dense_stats_source(bench: Workbench, progress: Progress | None = None) -> Callable[[int, str], Any]:
    """The pruner's statistics of each linear on the dense model's inputs (one dense pass, cached per machine)."""
    pruner = bench.pruner
    stats = bench.dense_stats(progress) if pruner.needs_inputs else None
    return lambda i, name: linear_stats(stats, pruner, (i, name))


def lesson_key(bench: Workbench, kind: str, spec: ScheduleSpec, **extra: Any) -> str:
    """The store key of a lesson result: what decides the pruned model (as a point's key) plus ``extra``."""
    return fingerprint(kind=kind, **bench.identity(), schedule=spec.params(), **extra)


def stored_budget(bench: Workbench, spec: ScheduleSpec) -> Budget | None:
    record = bench.get(lesson_key(bench, BUDGET_KIND, spec))
    return None if record is None else Budget.from_record(record)


def check_in_memory(bench: Workbench) -> None:
    if bench.setup.offload:
        raise ValueError(
            f"the lesson's computations need the whole model in memory; {bench.setup.model} is streamed from its "
            "files (offloaded): choose a model that fits"
        )


def prepared(
    bench: Workbench, spec: ScheduleSpec, progress: Progress | None
) -> tuple[RateMap, Callable[[int, str], Any]]:
    """``spec``'s rates and the dense statistics of every linear, with the dense weights in place."""
    check_in_memory(bench)
    rates = bench.rate_map(spec, bench.schedule(spec))
    stats = dense_stats_source(bench, progress)
    bench.restore()
    return rates, stats


def budget(bench: Workbench, spec: ScheduleSpec, progress: Progress | None = None) -> Budget:
    """The error budget of ``spec`` on ``bench``'s model: read back, or computed and stored."""
    if (found := stored_budget(bench, spec)) is not None:
        return found
    rates, stats = prepared(bench, spec, progress)
    started = time.perf_counter()
    result = error_budget(
        bench.blocks,
        bench.block_calls(),
        rates,
        bench.pruner,
        stats,
        bench.setup.prune.nm,
        bench.setup.batch_size,
        counted(progress, "error budget: block"),
    )
    result.seconds = time.perf_counter() - started
    bench.put(
        lesson_key(bench, BUDGET_KIND, spec), BUDGET_KIND, {"lesson": "budget", **spec.params()}, result.to_record()
    )
    return result


# ------------------------------------------------------------------ one block's weight scores
SCORE_BINS = 60  # histogram bins over log10 of the scores


@dataclass
class ScoreHistogram:
    """The pruner's scores of one block's dense weights (Wanda: |W_jk| ||X_k||, X the dense model's own inputs of
    that linear), binned on a log scale per linear and split into the weights pruned at ``rate`` (each row's lowest
    floor(in * rate), as the pruner does) and the kept ones."""

    block: int
    rate: float
    score: str  # what is binned, e.g. "Wanda |W| x ||X||"
    edges: np.ndarray  # (bins + 1,) log10 of the score; zero scores fall in the first bin
    pruned: dict[str, np.ndarray]  # per linear: (bins,) counts of the weights pruned at ``rate``
    kept: dict[str, np.ndarray]  # per linear: (bins,) counts of the others

    @property
    def linears(self) -> list[str]:
        return list(self.pruned)


def score_stats_ready(bench: Workbench) -> bool:
    """Whether the dense statistics the scores need are there without a dense pass (loaded, or a cache file)."""
    return not bench.pruner.needs_inputs or bench.stats_source != "" or bench.stats_file().exists()


def score_histogram(
    bench: Workbench, block: int, rate: float, progress: Progress | None = None, bins: int = SCORE_BINS
) -> ScoreHistogram:
    """``block``'s weight scores from its dense weights and the dense statistics (one dense pass if not cached),
    binned; ``rate`` in [0, 1] splits each linear's rows into pruned and kept (the model is not touched)."""
    check_in_memory(bench)
    if not 0 <= block < bench.num_blocks:
        raise ValueError(f"block must be in 0..{bench.num_blocks - 1}, got {block}")
    rate = check_rate(rate, "rate")
    pruner, stats = bench.pruner, dense_stats_source(bench, progress)
    scores: dict[str, torch.Tensor] = {}
    for name in prunable_linears(bench.blocks[block]):
        found = pruner.scores(bench.dense_weight(block, name), stats(block, name))
        if found is None:
            raise ValueError(f"{pruner.name} prunes by no per-weight score; allowed: magnitude, wanda")
        scores[name] = found.float()
    logs = {name: torch.log10(s.clamp_min(torch.finfo(torch.float32).tiny)) for name, s in scores.items()}
    positive = [lg[s > 0] for lg, s in zip(logs.values(), scores.values())]
    low = min(float(lg.min()) for lg in positive if lg.numel())
    high = max(float(lg.max()) for lg in positive if lg.numel())
    edges = np.linspace(low, max(high, low + 1e-6), bins + 1)
    pruned, kept = {}, {}
    for name, s in scores.items():
        mask = row_prune_mask(s, rate)
        values = logs[name].clamp_min(low).numpy()
        pruned[name] = np.histogram(values[mask.numpy()], edges)[0]
        kept[name] = np.histogram(values[~mask.numpy()], edges)[0]
    return ScoreHistogram(block, rate, pruner.label, edges, pruned, kept)


# ------------------------------------------------------------------ calibrated on dense inputs
REPORT_FIELDS = ("layer_sparsity", "cumulative_error", "local_error", "cumulative_error_abs", "local_error_abs")


def report_record(report: PruneReport) -> dict[str, list[float]]:
    return {name: np.asarray(getattr(report, name)).tolist() for name in REPORT_FIELDS}


def report_from(record: Mapping[str, Any]) -> PruneReport:
    return PruneReport(*(np.asarray(record[name], dtype=np.float64) for name in REPORT_FIELDS))


def stored_dense_input(bench: Workbench, spec: ScheduleSpec) -> PruneReport | None:
    record = bench.get(lesson_key(bench, DENSE_INPUT_KIND, spec))
    return None if record is None else report_from(record)


def dense_input_errors(bench: Workbench, spec: ScheduleSpec, progress: Progress | None = None) -> PruneReport:
    """The errors of ``spec`` pruned with every block calibrated on dense inputs: read back, or computed and
    stored (the model is left pruned, as after any point; the next job restores it)."""
    if (found := stored_dense_input(bench, spec)) is not None:
        return found
    rates, stats = prepared(bench, spec, progress)
    report = prune_sequential(
        bench.blocks,
        bench.block_calls(),
        rates,
        bench.pruner,
        bench.setup.prune.nm,
        bench.setup.batch_size,
        counted(progress, "dense-input calibration: block"),
        fixed_stats=stats,
    )
    bench.put(
        lesson_key(bench, DENSE_INPUT_KIND, spec),
        DENSE_INPUT_KIND,
        {"lesson": "dense-input", **spec.params()},
        report_record(report),
    )
    return report


def errors_of(point: PointResult | None) -> PruneReport | None:
    """A stored point's per-block errors (None: not stored, or stored without errors, as in cached mode)."""
    if point is None or not np.isfinite(point.cumulative_error).all():
        return None
    return PruneReport(
        point.layer_sparsity,
        point.cumulative_error,
        point.local_error,
        point.cumulative_error_abs,
        point.local_error_abs,
    )


# ------------------------------------------------------------------ the stepper
STEP_FIELDS = ("local_error", "cumulative_error", "local_error_abs", "cumulative_error_abs", "sparsity")


def step_key(bench: Workbench, spec: ScheduleSpec, block: int) -> str:
    return lesson_key(bench, STEP_KIND, spec, block=block)


def known_steps(bench: Workbench, spec: ScheduleSpec) -> list[dict[str, float]]:
    """The per-block errors the stepper can show without computing: all of them when the sequential point is
    stored (its errors are the stepper's), else the steps stored so far (blocks 0, 1, ... in order)."""
    if (errors := errors_of(bench.stored(spec))) is not None:
        columns = (
            errors.local_error,
            errors.cumulative_error,
            errors.local_error_abs,
            errors.cumulative_error_abs,
            errors.layer_sparsity,
        )
        return [dict(zip(STEP_FIELDS, (float(c[i]) for c in columns))) for i in range(len(errors.local_error))]
    steps: list[dict[str, float]] = []
    while len(steps) < bench.num_blocks and (row := bench.get(step_key(bench, spec, len(steps)))) is not None:
        steps.append({name: float(row[name]) for name in STEP_FIELDS})
    return steps


class Stepper:
    """The sequential loop of one schedule, one block per ``step``: block i is calibrated on the pruned model's
    inputs (kept in memory from the step before), pruned, measured, stored, and given its dense weights back
    (the model is shared with every other job)."""

    def __init__(self, bench: Workbench, spec: ScheduleSpec) -> None:
        check_in_memory(bench)
        self.bench, self.spec = bench, spec
        self.rates = bench.rate_map(spec, bench.schedule(spec))
        self.calls = bench.block_calls()
        self.pruned_in = self.dense_in = self.calls.hidden
        # the dense outputs h_i: shared with the Workbench's sequential points (filled by whoever runs first)
        mode = bench.calibration
        self.trajectory = (
            mode.trajectory if isinstance(mode, SequentialMode) else DenseTrajectory.empty(len(bench.blocks))
        )
        self.steps: list[dict[str, float]] = []
        self.lock = threading.Lock()

    @property
    def done(self) -> int:
        return len(self.steps)

    def step(self) -> dict[str, float]:
        """Prune the next block; its errors are stored at once and returned."""
        bench, i = self.bench, len(self.steps)
        if i >= bench.num_blocks:
            raise ValueError(f"all {bench.num_blocks} blocks are pruned already (allowed: reset, then step)")
        block = bench.blocks[i]
        with torch.no_grad():
            bench.restore(i)  # whatever the last job left there
            try:
                result = prune_block(
                    block,
                    i,
                    self.pruned_in,
                    self.dense_in,
                    self.calls.args[i],
                    self.rates,
                    bench.pruner,
                    bench.setup.prune.nm,
                    bench.setup.batch_size,
                    self.trajectory.outputs[i],  # known: one block forward fewer
                )
            finally:
                bench.restore(i)
        self.pruned_in, self.dense_in = result.pruned_out, result.dense_out
        self.trajectory.outputs[i] = result.dense_out
        row = {name: float(getattr(result, name)) for name in STEP_FIELDS}
        self.steps.append(row)
        bench.put(step_key(bench, self.spec, i), STEP_KIND, {"lesson": "step", "block": i, **self.spec.params()}, row)
        return row

    def advance(
        self, target: int, progress: Progress | None = None, stored: Callable[[], object] | None = None
    ) -> list[dict[str, float]]:
        """Step until ``target`` blocks are pruned (replaying earlier blocks after a restart of the server);
        ``stored`` is called as each block's row is stored (a page redraws then, while the next one computes)."""
        check_step_target(target, self.bench.num_blocks)
        with self.lock:
            start = self.done
            while self.done < target:
                self.step()
                if stored:
                    stored()
                if progress:
                    progress((self.done - start) / max(target - start, 1), f"pruned block {self.done - 1}")
            return list(self.steps)


class Steppers:
    """The server's steppers, one per (model setting, schedule); the last ``keep`` are kept."""

    def __init__(self, keep: int = 2) -> None:
        self.keep, self._lock, self._items = keep, threading.Lock(), {}  # type: ignore[var-annotated]

    def get(self, bench: Workbench, spec: ScheduleSpec) -> Stepper:
        key = (bench.setup, spec)
        with self._lock:
            stepper = self._items.pop(key, None) or Stepper(bench, spec)
            self._items[key] = stepper
            while len(self._items) > self.keep:
                self._items.pop(next(iter(self._items)))
            return stepper


AHEAD = 1  # blocks the stepper computes and stores beyond the ones shown, while the student looks at the last one


def step_target(shown: int, num_blocks: int, ahead: int = AHEAD) -> int:
    """How many blocks the stepper should have stored when ``shown`` are on screen: ``ahead`` more, so that the
    next press only redraws (its block was computed while the student read the last one); none before the first
    press (nothing is computed unless asked)."""
    check_step_target(shown, num_blocks)
    return min(num_blocks, shown + ahead) if shown else 0


# ------------------------------------------------------------------ chapter 7: measured elsewhere, shipped
STORY_PATH = Path(__file__).resolve().parent / "shipped" / "lesson_story.json"  # scripts/lesson_story.py


def measured_story(model: str, sparsity: float, path: Path = STORY_PATH) -> dict[str, Any] | None:
    """The curved profiles and the seed band measured on ``model`` at ``sparsity`` under their own settings (see
    ``story["settings"]``), shipped for chapter 7; None for another model or sparsity."""
    story = json.loads(path.read_text(encoding="utf-8"))
    if story["settings"]["model"] != model or not math.isclose(float(story["sparsity"]), sparsity, abs_tol=1e-9):
        return None
    return story


def story_rates(story: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Each curved profile's rates s_i (the registry's schedules, as measured)."""
    from atp_viz.schedules.methods import build_schedule

    return {
        row["label"]: build_schedule(
            ScheduleSpec(row["method"], float(story["sparsity"]), **row["params"]), int(story["num_blocks"])
        )  # fmt: skip
        for row in story["curved"]
    }


def story_text(story: Mapping[str, Any]) -> tuple[str, str]:
    """What the curved profiles and the seed band show, from their numbers: (profiles, band)."""
    line = next(r for r in story["curved"] if r["method"] == "atp")
    best = min(story["curved"], key=lambda r: r["validation"])
    seeds = listed([str(s) for s in story["seed_list"]])
    parts = [
        f"At beta = {line['params']['beta']:g} (the same total rise over the blocks), the profile {best['label']} "
        f"has the lowest validation perplexity ({best['validation']:.1f}, the line {line['validation']:.1f})."
    ]
    a, b = best.get("evaluation_per_seed") or [], line.get("evaluation_per_seed") or []
    if best is not line and best["evaluation"] is not None and len(a) == len(b) > 1:
        every = all(x < y for x, y in zip(a, b))
        parts.append(
            f"Reported on evaluation over calibration seeds {seeds}: {best['evaluation']:.1f} +- "
            f"{best['evaluation_std']:.1f} against the line's {line['evaluation']:.1f} +- {line['evaluation_std']:.1f}"
            + (", lower at every seed." if every else "; not lower at every seed.")
        )
    others = [r for r in story["curved"] if r is not best and r is not line]
    parts += [
        f"{r['label']}: validation {r['validation']:.1f} ({r['seeds']} seed{'s' * (r['seeds'] > 1)})." for r in others
    ]
    band = story["seed_band"]
    spread = ", ".join(
        f"{r['label']} {r['evaluation']:.1f} +- {r['evaluation_std']:.1f} "
        f"(+-{100 * r['evaluation_std'] / r['evaluation']:.0f} %)"
        for r in band
    )
    high, low = max(band, key=lambda r: r["evaluation"]), min(band, key=lambda r: r["evaluation"])
    band_text = (
        f"Over calibration seeds {seeds}, evaluation perplexity: {spread}. At {100 * float(story['sparsity']):.0f} % "
        "a single point is chaotic (one near-tie swapped in an early block can move uniform by about a hundred "
        "points), so a difference of a few percent at one seed is noise; the factor "
        f"{high['evaluation'] / low['evaluation']:.2g} between {high['label']} and {low['label']} is not."
    )
    return " ".join(parts), band_text


# ------------------------------------------------------------------ checks of lesson settings (query parameters)
def check_step_target(target: int, num_blocks: int) -> int:
    if not 0 <= target <= num_blocks:
        raise ValueError(f"blocks to prune must be in 0..{num_blocks}, got {target}")
    return target


def share_link(chapter: int, beta: float, block: int, inputs: str, presenter: bool, quiz: bool) -> str:
    """The page path with the query parameters that reopen this view (``parse_*`` read them back);
    chapter 0 (all chapters) and the defaults are left out."""
    from urllib.parse import urlencode

    params = {
        "chapter": chapter or None,
        "beta": f"{beta:g}" if beta else None,
        "block": block,
        "inputs": inputs if inputs != "pruned" else None,
        "presenter": "1" if presenter else None,
        "quiz": "1" if quiz else None,
    }
    return "Lesson?" + urlencode({k: v for k, v in params.items() if v is not None})


def parse_chapter(value: str) -> int:
    try:
        chapter = int(value)
    except ValueError:
        chapter = -1
    if chapter not in CHAPTERS:
        raise ValueError(f"chapter must be one of {', '.join(map(str, CHAPTERS))}, got {value!r}")
    return chapter


def parse_block(value: str, num_blocks: int) -> int:
    try:
        block = int(value)
    except ValueError:
        block = -1
    if not 0 <= block < num_blocks:
        raise ValueError(f"block must be an integer in 0..{num_blocks - 1}, got {value!r}")
    return block


def parse_beta(value: str, grid: Sequence[float]) -> float:
    """A beta of the lesson's grid (0 = uniform); other values are refused with the grid."""
    try:
        beta = float(value)
    except ValueError:
        beta = math.nan
    for b in grid:
        if math.isclose(beta, b, abs_tol=1e-9):
            return float(b)
    shown = ", ".join(f"{b:g}" for b in grid)
    raise ValueError(f"beta must be a grid point at these settings ({shown}), got {value!r}")


def parse_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def parse_flag(name: str, value: str) -> bool:
    return parse_choice(name, value, ("0", "1")) == "1"


# ------------------------------------------------------------------ what the curves show (said in the page's text)
STEP = 1.25  # a block where the relative cumulative error grows by this factor or more is a step of the staircase


def jumps(curve: Sequence[float] | np.ndarray, factor: float = STEP) -> list[int]:
    """Blocks where a positive per-block curve grows by at least ``factor`` over the block before (a staircase's
    steps)."""
    values = np.asarray(curve, dtype=np.float64)
    return [i for i in range(1, values.size) if values[i - 1] > 0 and values[i] / values[i - 1] >= factor]


def norm_jumps(norms: Sequence[float] | np.ndarray, factor: float = 2.0) -> list[tuple[int, float]]:
    """(block, ratio) where the squared hidden-state norm ||h_i||^2 (the relative error's denominator) changes by
    ``factor`` or more (up or down) from the block before."""
    values = np.asarray(norms, dtype=np.float64)
    out = []
    for i in range(1, values.size):
        ratio = values[i] / values[i - 1] if values[i - 1] > 0 else math.inf
        if ratio >= factor or ratio <= 1 / factor:
            out.append((i, float(ratio)))
    return out


def listed(items: Sequence[object]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = [str(x) for x in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1] if words else "none"


def curve_text(curve: Sequence[float] | np.ndarray) -> str:
    """What a relative cumulative error curve shows, from its numbers: its growth and its steps."""
    values = np.asarray(curve, dtype=np.float64)
    if values.size < 2 or not np.isfinite(values).all() or values[0] <= 0:
        return "not enough measured blocks to describe the curve"
    steps = jumps(values)
    growth = values[-1] / values[0]
    shape = (
        f"a staircase with jumps at blocks {listed(steps)} (each step at least {STEP:g}x the block before) and "
        "nearly flat stretches between them"
        if steps and len(steps) <= max(3, values.size // 6)
        else "a steady climb"
        if growth > 1
        else "no climb"
    )
    return f"grows {growth:.3g}x from block 0 to block {values.size - 1}, as {shape}"


def budget_table(budget: Budget, joint_abs: float) -> list[dict[str, float | int]]:
    """One row per block: rate, local error (pruned alone), final error it causes, its share and amplification."""
    shares, amp = budget.shares(joint_abs), budget.amplification
    norms = np.sqrt(budget.dense_norm)
    return [
        {
            "block": i,
            "rate s_i": float(budget.rates[i]),
            "local error (relative)": float(budget.local[i]),
            "final error caused (relative)": float(budget.final[i]),
            "share of the joint final error (%)": float(100 * shares[i]),
            "amplification final/local (x)": float(amp[i]),
            "||h_i|| (dense)": float(norms[i]),
        }
        for i in range(budget.rates.size)
    ]


def budget_text(budget: Budget, joint_abs: float) -> str:
    """The budget's headline, from its numbers: the largest shares, their sum, where the norm jumps."""
    shares = budget.shares(joint_abs)
    order = np.argsort(-shares)
    top = [f"block {i} ({100 * shares[i]:.0f} %)" for i in order[:2]]
    amp = budget.amplification
    shrinks = [int(i) for i in np.flatnonzero(amp < 1)]
    others = np.delete(amp[:-1], [i for i in shrinks if i < amp.size - 1])  # the last block's is 1 by definition
    norm = norm_jumps(budget.dense_norm)
    parts = [
        f"Pruned alone, {listed(top)} cause the largest shares of the final error; the other blocks "
        f"{100 * np.sort(shares)[0]:.2g}-{100 * shares[order[2]]:.2g} % each. The shares add up to "
        f"{100 * shares.sum():.0f} % of the error of the model pruned everywhere."
    ]
    if shrinks:
        parts.append(
            f"The error of block{'s' * (len(shrinks) > 1)} {listed(shrinks)} shrinks on its way to the last "
            f"block (amplification below 1); every other block's grows {np.nanmin(others):.3g}-"
            f"{np.nanmax(others):.3g}x before it reaches the last block."
        )
    if norm:
        moves = [f"{ratio:.3g}x at block {i}" for i, ratio in norm]
        parts.append(
            f"The dense model's squared hidden-state norm ||h_i||^2 (the denominator of every relative error) "
            f"changes {listed(moves)}: absolute errors grow and shrink with it, and the relative curve steps where "
            "the error does not follow the norm."
        )
    return " ".join(parts)


def spans(blocks: Sequence[int]) -> str:
    """Block indices as runs: [1, 2, 3, 7] -> 'blocks 1-3 and 7'."""
    runs: list[list[int]] = []
    for b in sorted(blocks):
        if runs and b == runs[-1][-1] + 1:
            runs[-1].append(b)
        else:
            runs.append([b])
    return (
        "no block" if not runs else "blocks " + listed([f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs])
    )


def variants_text(pruned: PruneReport, dense: PruneReport) -> str:
    """How the two calibration inputs compare, from the numbers: where each gives the lower cumulative error."""
    a, b = np.asarray(pruned.cumulative_error), np.asarray(dense.cumulative_error)
    better = [i for i in range(a.size) if a[i] < b[i] * (1 - 1e-6)]  # block 0 is the same either way
    mid = int(np.argmax(np.abs(a - b)))
    return (
        f"Calibrated on the pruned model's inputs (the masked forward), the cumulative error is lower after "
        f"{spans(better)} ({len(better)} of {a.size}) than calibrated on dense inputs. The largest difference is "
        f"after block {mid}: {a[mid]:.4g} vs {b[mid]:.4g}; at the last block {a[-1]:.4g} vs {b[-1]:.4g}. With "
        "pruned inputs each block's mask is chosen for the already-corrupted input it will really receive."
    )
