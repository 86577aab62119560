"""Zero-shot with every item (items = 0): all items report on the evaluation part, none selects.

``atp-viz eval --tasks arc_easy --items 0`` died with ``KeyError`` in ``score_tasks`` because the
validation part of a task is empty when every item is in the evaluation part. On a tiny model.
"""

from __future__ import annotations

import math

import pytest
from tiny import shared_corpus_file, shared_tiny_model

from atp_viz.config import CalibConfig, EvalConfig
from atp_viz.experiment.workbench import Setup, Workbench
from atp_viz.measure import zeroshot
from atp_viz.measure.metrics import EVALUATION, VALIDATION
from atp_viz.measure.points import best_group, best_point
from atp_viz.measure.zeroshot import ZeroShotConfig
from atp_viz.models.loading import load_model
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.store import ResultStore
from atp_viz.tuning.findbest import find_best

TASK = "rte"
ROWS = {"rte": 6, "arc_challenge": 9, "arc_easy": 8}  # each task cut to its first rows: a small "all items"


@pytest.fixture(autouse=True)
def short_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task holds only its first ROWS rows (the split logic is what is tested, not the data size)."""
    full = zeroshot.load_task_data
    monkeypatch.setattr(zeroshot, "load_task_data", lambda name: full(name).select(range(ROWS.get(name, 5))))


def one_line(exc: pytest.ExceptionInfo[ValueError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_score_tasks_with_every_item_scores_all_rows_and_leaves_validation_empty() -> None:
    loaded = load_model(str(shared_tiny_model()))
    rows = ROWS[TASK]
    evaluation = zeroshot.score_tasks(loaded.model, loaded.tokenizer, [TASK], items=0, part=0)
    assert evaluation[TASK].items == rows and 0.0 <= evaluation[TASK].acc <= 1.0
    assert zeroshot.score_tasks(loaded.model, loaded.tokenizer, [TASK], items=0, part=1) == {}
    # a task list where one task has validation items and one has none: the empty one is left out
    both = zeroshot.score_tasks(loaded.model, loaded.tokenizer, [TASK, "arc_challenge"], items=rows, part=1)
    assert TASK not in both and both["arc_challenge"].items == ROWS["arc_challenge"] - rows


def test_selection_problem_names_the_cause_and_what_is_allowed() -> None:
    rows = ROWS[TASK]
    assert zeroshot.selection_problem([TASK], 2) is None
    message = zeroshot.selection_problem([TASK], 0)
    assert message is not None and "items = 0" in message and f"1..{rows - 1}" in message and "\n" not in message
    message = zeroshot.selection_problem([TASK, "arc_easy"], rows)
    assert message is not None and "rte" in message and "arc_easy" not in message
    with pytest.raises(ValueError, match="no validation item"):
        zeroshot.check_selectable([TASK], 0)
    zeroshot.check_selectable([TASK], 3)


def test_workbench_reports_all_items_and_refuses_selection_by_empty_validation(tmp_path) -> None:
    setup = Setup(
        model=str(shared_tiny_model()),
        corpus=str(shared_corpus_file()),
        calib=CalibConfig(samples=4, seqlen=32, seed=0),
        evaluation=EvalConfig(windows=4, seqlen=32),
        calibration="cached",
        metrics=("perplexity", "zeroshot"),
        zeroshot=ZeroShotConfig(tasks=(TASK,), items=0),
    )
    store = ResultStore(tmp_path / "r.sqlite")
    wb = Workbench(setup, store)
    point = wb.run(ScheduleSpec("uniform", 0.5))
    assert point.metrics[f"{EVALUATION}/zeroshot/{TASK}/items"] == ROWS[TASK]
    assert 0.0 <= point.value("zeroshot", EVALUATION) <= 1.0
    assert math.isnan(point.value("zeroshot", VALIDATION))  # no validation item: no value, no error
    assert math.isfinite(point.value("perplexity", VALIDATION))  # perplexity still selects
    assert best_point([point]) is point
    with pytest.raises(ValueError) as exc:
        best_point([point], "zeroshot")
    assert "items = 0" in one_line(exc)
    with pytest.raises(ValueError) as exc:
        best_group([[point], [point]], "zeroshot")
    assert "select by perplexity" in one_line(exc)
    before = store.count()
    grid = [ScheduleSpec("atp", 0.5, beta=beta) for beta in (0.02, 0.04, 0.06)]
    with pytest.raises(ValueError) as exc:  # refused before any grid point is computed
        find_best(wb, grid, metric="zeroshot")
    assert "no validation item" in one_line(exc)
    assert store.count() == before
