"""DSA (lliai/DSA) as its code computes it: graph parsing, each operation, the rate mapping, non-finite values."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_workbench

from atp_viz.pruning.layer_stats import prunable_linears
from atp_viz.pruning.pruners import wanda_scores
from atp_viz.schedules import dsa
from atp_viz.schedules.methods import ScheduleSpec, build_schedule
from atp_viz.schedules.published import ScheduleClipWarning

RNG = np.random.default_rng(0)
X = np.concatenate([RNG.normal(size=200), [0.0, 0.0, -3.0]])  # zeros and negatives: the ops' special cases
POSITIVE = np.abs(RNG.normal(size=300)) + 0.01


# ------------------------------------------------------------------------------------------ parsing
def test_default_graph_parses_into_its_groups() -> None:
    graph = dsa.parse_graph(dsa.DEFAULT_GRAPH)
    assert graph == dsa.Graph(("ABSLOG",), ("VAR",), ("ATAN", "ASIN"), 7)
    assert str(graph) == dsa.DEFAULT_GRAPH


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("W:(ABS)-(VAR)-(SIN)", "W:(ABS)-(VAR)-(SIN)"),  # three groups: the code draws an unused lambda
        (" w:( abs , log )-( mean )-( tanh )-( 9 ) ", "W:(ABS,LOG)-(MEAN)-(TANH)-(9)"),
        ("W:()-(VAR)-()", "W:()-(VAR)-()"),  # empty groups: no operation of that kind
    ],
)
def test_graph_forms_are_written_canonically(text: str, canonical: str) -> None:
    assert dsa.check_graph(text) == canonical
    assert ScheduleSpec("dsa", 0.7, graph=text).get("graph") == canonical


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("W:(ABS)-(FOO)-(SIN)", "unknown deform operation 'FOO'"),
        ("W:(ABS,BAR)-(VAR)-(SIN)", "unknown stick operation 'BAR'"),
        ("W:(ABS)-(VAR)-(ASINH)", "unknown post operation 'ASINH'"),
        ("W:(ABS)-(VAR)", "malformed"),
        ("W:(ABS)-(VAR)-(SIN)-(7)-(8)", "malformed"),
        ("(ABS)-(VAR)-(SIN)", "malformed"),
        ("W:(ABS)-((VAR))-(SIN)", "malformed"),
        ("", "malformed"),
        ("W:(ABS)-(VAR)-(SIN)-(7.5)", "whole number"),
        ("W:(ABS)-(VAR)-(SIN)-(-7)", "whole number"),
        ("W:(ABS)-(DETERMINANT)-(SIN)", "needs a matrix"),
        ("W:(ABS)-(CORREF)-(SIN)", "needs a matrix"),
        ("W:(ABS)-(MEAN,VAR)-(SIN)", "VAR needs a vector"),
        ("W:(ABS)-(L1_NORM,GRAM)-(SIN)", "GRAM needs a vector"),
    ],
)
def test_bad_graphs_are_refused_in_one_line_naming_the_allowed_operations(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"stick ops: NO_OP, ABS") as caught:
        dsa.parse_graph(text)
    message = str(caught.value)
    assert says in message and "\n" not in message
    with pytest.raises(ValueError, match="deform ops: NO_OP, GRAM"):
        ScheduleSpec("dsa", 0.7, graph=text)


# ------------------------------------------------------------------------------------------ operations
def value(graph: str, x: np.ndarray = X, nonfinite: str = "authors") -> float:
    return dsa.graph_value(graph, x, nonfinite)


def _fixed(x: np.ndarray, where: np.ndarray, to: float) -> np.ndarray:
    y = x.copy()
    y[where] = to
    return y


STICK = {
    "NO_OP": lambda x: x,
    "ABS": np.abs,
    "LOG": lambda x: np.log(_fixed(x, x <= 0, 1.0) + 1e-6),
    "ABSLOG": lambda x: np.log(np.abs(_fixed(x, x == 0, 1.0))),
    "POW": lambda x: x**2,
    "EXP": np.exp,
    "NORMALIZE": lambda x: (x - x.mean()) / x.std(ddof=1),
    "SIGMOID": lambda x: 1 / (1 + np.exp(-x)),
    "TANH": np.tanh,
    "MMS": lambda x: (x - x.min()) / (x.max() - x.min() + 1e-9),
}


@pytest.mark.parametrize("op", sorted(dsa.STICK_OPS))
def test_each_stick_op_is_its_elementwise_formula(op: str) -> None:
    assert value(f"W:({op})-(NO_OP)-(NO_OP)") == pytest.approx(float(np.mean(STICK[op](X))), rel=1e-12, abs=1e-12)


def test_stick_ops_leave_the_scores_unchanged() -> None:
    x = X.copy()
    value("W:(ABSLOG)-(VAR)-(NO_OP)", x)
    value("W:(LOG)-(VAR)-(NO_OP)", x)
    np.testing.assert_array_equal(x, X)  # the code's x[x == 0] = 1 is in place; here it works on a copy


def test_normalize_of_constant_scores_is_zero() -> None:
    assert value("W:(NORMALIZE)-(NO_OP)-(NO_OP)", np.ones(10)) == 0.0  # 0/0 -> NaN -> 0, as the torch branch


DEFORM = {
    "NO_OP": lambda x: np.mean(x),
    "GRAM": lambda x: float(x @ x),
    "FROBENIUS_NORM": lambda x: math.sqrt(float(np.sum(x * x))),
    "L1_NORM": lambda x: float(np.sum(np.abs(x)) / x.size),
    "GEOMETRIC_MEAN": lambda x: float(np.prod(x) ** (1 / x.size)),
    "MEAN": np.mean,
    "VAR": lambda x: float(np.sum((x - x.mean()) ** 2) / (x.size - 1)),
    "STD": lambda x: math.sqrt(float(np.sum((x - x.mean()) ** 2) / (x.size - 1))),
    "ENTROPY": lambda x: float(-np.sum((x / x.sum()) * np.log(x / x.sum()))),
}


@pytest.mark.parametrize("op", sorted(dsa.DEFORM_OPS))
def test_each_deform_op_is_its_reduction(op: str) -> None:
    small = np.linspace(0.9, 1.1, 40)  # a product that neither under- nor overflows
    x = small if op == "GEOMETRIC_MEAN" else POSITIVE
    assert value(f"W:(NO_OP)-({op})-(NO_OP)", x) == pytest.approx(DEFORM[op](x), rel=1e-10)


def test_entropy_drops_negative_and_nan_scores() -> None:
    x = np.array([0.5, -1.0, math.nan, 0.5, 0.0])
    assert value("W:(NO_OP)-(ENTROPY)-(NO_OP)", x) == pytest.approx(math.log(2))


def test_geometric_mean_of_many_scores_underflows_as_in_the_code() -> None:
    assert value("W:(NO_OP)-(GEOMETRIC_MEAN)-(NO_OP)", np.full(200_000, 0.01)) == 0.0


POST = {
    "NO_OP": lambda v: v,
    "SIN": math.sin,
    "COS": math.cos,
    "TAN": math.tan,
    "ASIN": math.asin,
    "ACOS": math.acos,
    "ATAN": math.atan,
    "EXP": math.exp,
    "LOG": math.log,
    "ABS": abs,
    "SIGMOID": lambda v: 1 / (1 + math.exp(-v)),
    "TANH": math.tanh,
    "SOFTPLUS": lambda v: math.log1p(math.exp(v)),
}


@pytest.mark.parametrize("op", sorted(dsa.POST_OPS))
def test_each_post_op_is_its_scalar_function(op: str) -> None:
    x = np.array([0.2, 0.3, 0.4, 0.5])  # mean 0.35: inside every post op's domain
    assert value(f"W:(NO_OP)-(MEAN)-({op})", x) == pytest.approx(POST[op](0.35), rel=1e-12)


def test_softplus_is_the_identity_above_its_threshold() -> None:
    assert value("W:(NO_OP)-(MEAN)-(SOFTPLUS)", np.array([30.0])) == 30.0


def test_a_graph_that_keeps_a_vector_gives_its_mean() -> None:
    assert value("W:(ABS)-(NO_OP)-(SIN)", X) == pytest.approx(float(np.mean(np.sin(np.abs(X)))))


def test_published_function_is_asin_atan_of_the_variance_of_log_scores() -> None:
    logs = np.log(POSITIVE)
    assert value(dsa.DEFAULT_GRAPH, POSITIVE) == pytest.approx(math.asin(math.atan(np.var(logs, ddof=1))))


def test_published_function_is_nan_past_tan_1_unless_clamped() -> None:
    wide = np.exp(RNG.normal(scale=2.0, size=1000))  # var(log) ~ 4 > tan(1) = 1.557: atan > 1, asin undefined
    assert math.isnan(value(dsa.DEFAULT_GRAPH, wide))
    assert value(dsa.DEFAULT_GRAPH, wide, "clamp") == pytest.approx(math.pi / 2)


# ------------------------------------------------------------------------------------------ rates
def authors_rates(importance: list[float], sparsity: float, lamda: float) -> np.ndarray:
    """test_prune_wanda_outlier_use_var's lines, transcribed (lib/prune_all.py of lliai/DSA)."""
    all_layer_ratio = np.array(importance)
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) / (all_layer_ratio.max() - all_layer_ratio.min())
    all_layer_ratio = np.array([1 - item for item in all_layer_ratio])
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) * (
        1 / (all_layer_ratio.max() - all_layer_ratio.min()) * lamda * 2
    )
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - sparsity)
    rates = []
    for i in range(len(all_layer_ratio)):
        layer_sparsity_ratio = 1 - all_layer_ratio[i]
        if layer_sparsity_ratio <= 0:
            layer_sparsity_ratio = 0.01
        rates.append(layer_sparsity_ratio)
    return np.array(rates)


def test_rates_follow_the_authors_mapping() -> None:
    importance = [0.3, 1.2, 0.7, 0.9, 1.5, 0.2]
    np.testing.assert_allclose(dsa.dsa(importance, 0.7, 0.08), authors_rates(importance, 0.7, 0.08), atol=1e-12)
    np.testing.assert_allclose(dsa.dsa(importance, 0.5, 0.2), authors_rates(importance, 0.5, 0.2), atol=1e-12)
    # by hand: s_i = S + 2 lam (n_i - mean n); the most important block is pruned the most
    n = (np.array(importance) - 0.2) / 1.3
    np.testing.assert_allclose(dsa.dsa(importance, 0.7, 0.08), 0.7 + 0.16 * (n - n.mean()), atol=1e-12)


def test_the_graphs_lambda_does_not_move_the_rates() -> None:
    values = np.array([0.3, 1.2, 0.7])
    a = build_schedule(ScheduleSpec("dsa", 0.7, graph="W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(7)"), 3, {"dsa_values": values})
    b = build_schedule(ScheduleSpec("dsa", 0.7, graph="W:(ABSLOG)-(VAR)-(ATAN,ASIN)-(10)"), 3, {"dsa_values": values})
    c = build_schedule(ScheduleSpec("dsa", 0.7, lam=0.2), 3, {"dsa_values": values})
    np.testing.assert_array_equal(a, b)
    assert np.ptp(c) > np.ptp(a)


def test_rates_at_or_below_zero_become_one_percent_as_in_the_code() -> None:
    with pytest.warns(ScheduleClipWarning):
        rates = dsa.dsa([0.0, 1.0, 1.0, 1.0], 0.1, 0.5)
    np.testing.assert_allclose(rates, authors_rates([0.0, 1.0, 1.0, 1.0], 0.1, 0.5))
    assert rates[0] == 0.01


def test_non_finite_values_count_as_the_code_counts_them_and_are_named() -> None:
    raw = [0.4, math.nan, 1.1, math.inf, 0.8]
    with pytest.warns(dsa.NonFiniteImportanceWarning, match=r"not finite for blocks 1, 3: .* 0 \(NaN\)"):
        rates = dsa.dsa(raw, 0.7, 0.08, graph=dsa.DEFAULT_GRAPH)
    np.testing.assert_allclose(rates, authors_rates([0.4, 0.0, 1.1, -1.0, 0.8], 0.7, 0.08), atol=1e-12)
    with pytest.raises(ValueError, match="not finite for blocks 1, 3 even with"):
        dsa.dsa(raw, 0.7, 0.08, nonfinite="clamp")


def test_finite_values_warn_nothing_and_equal_values_give_uniform() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dsa.dsa([0.1, 0.2, 0.3], 0.7)
        np.testing.assert_array_equal(dsa.dsa([0.5, 0.5], 0.6), [0.6, 0.6])


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda: dsa.dsa([0.1, 0.2], 1.5), "sparsity"),
        (lambda: dsa.dsa([0.1, 0.2], 0.7, lam=2.0), "lam must be in"),
        (lambda: dsa.dsa([0.1, 0.2], 0.7, nonfinite="ignore"), "allowed: authors, clamp"),
        (lambda: ScheduleSpec("dsa", 0.7, nonfinite="zero"), "allowed: authors, clamp"),
        (lambda: dsa.graph_value(dsa.DEFAULT_GRAPH, []), "at least one score"),
    ],
)
def test_bad_parameters_are_refused(call, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        call()


# ------------------------------------------------------------------------------------------ on a model
def test_statistic_is_the_graph_of_each_blocks_dense_wanda_scores(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ATP_VIZ_CACHE", str(tmp_path / "cache"))
    wb = tiny_workbench()
    graph = "W:(ABSLOG)-(MEAN)-(ATAN)"  # not scale-free: the 1/sqrt(sequences) factor of the code shows
    values = wb._stats.dsa_values(graph, "authors")
    dense = wb.dense_stats()
    for i, block in enumerate(wb.loaded_model.blocks):
        scores = torch.cat(
            [
                wanda_scores(lin.weight, dense.accumulator("sum_sq", (i, name)).result()).flatten() / 2.0  # sqrt(4)
                for name, lin in prunable_linears(block).items()
            ]
        )
        assert values[i] == pytest.approx(math.atan(float(scores.double().log().mean())), rel=1e-6)
    rates = wb.schedule(ScheduleSpec("dsa", 0.7, graph=graph))
    np.testing.assert_allclose(rates, authors_rates(list(values), 0.7, 0.08), atol=1e-12)
    assert wb._stats.dsa_values(graph, "authors") is values  # computed once per setting
