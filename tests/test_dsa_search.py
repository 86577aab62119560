"""DSA's evolutionary search over graphs: valid draws, crossover and mutation, determinism and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiny import tiny_workbench

from atp_viz.schedules.dsa import DEFAULT_GRAPH, parse_graph
from atp_viz.schedules.methods import ScheduleSpec
from atp_viz.search import dsa_search
from atp_viz.search.study import dsa_graph_search


def fitness(graph: str) -> float:
    """A synthetic fitness with structure: fewer operations and a VAR reduction are better."""
    g = parse_graph(graph)
    return len(g.stick) + len(g.post) + (0.0 if "VAR" in g.deform else 2.0) + (sum(map(ord, graph)) % 7) / 10


def test_random_graphs_parse_and_follow_the_codes_shape() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        g = dsa_search.random_graph(rng)
        assert 1 <= len(g.stick) <= 2 and len(g.deform) == 1 and 1 <= len(g.post) <= 2
        assert parse_graph(str(g)) == g and g.lam is None


def test_crossover_takes_each_group_from_a_parent_and_mutation_changes_one_operation() -> None:
    rng = np.random.default_rng(1)
    a, b = parse_graph("W:(ABS)-(VAR)-(SIN)"), parse_graph("W:(LOG,EXP)-(MEAN)-(ATAN,TANH)")
    for _ in range(50):
        child = dsa_search.crossover(a, b, rng)
        assert child.stick in (a.stick, b.stick) and child.deform in (a.deform, b.deform)
        assert child.post in (a.post, b.post)
        mutated = dsa_search.mutate(b, rng)
        changes = sum(
            x != y
            for old, new in zip((b.stick, b.deform, b.post), (mutated.stick, mutated.deform, mutated.post))
            for x, y in zip(old, new)
        )
        assert changes <= 1 and parse_graph(str(mutated)) == mutated


def test_evolve_starts_from_the_published_graph_spends_the_budget_on_distinct_graphs_and_is_seeded() -> None:
    done = dsa_search.evolve(fitness, 20, seed=3)
    assert done[0].graph == DEFAULT_GRAPH and len(done) == 20
    keys = [str(parse_graph(e.graph)).split("-(")[0:3] for e in done]
    assert len({"-(".join(k) for k in keys}) == 20
    assert [e.graph for e in dsa_search.evolve(fitness, 20, seed=3)] == [e.graph for e in done]
    assert [e.graph for e in dsa_search.evolve(fitness, 20, seed=4)] != [e.graph for e in done]
    assert dsa_search.best(done).fitness == min(e.fitness for e in done)
    assert max(e.generation for e in done) >= 2  # children were bred from the best


def test_a_stopped_search_resumes_with_the_same_graphs_and_nothing_recomputed() -> None:
    stored: dict[str, float] = {}
    calls: list[str] = []

    def stops_after_seven(graph: str) -> float:
        if graph not in stored:
            if len(stored) == 7:
                raise KeyboardInterrupt
            calls.append(graph)
            stored[graph] = fitness(graph)
        return stored[graph]

    with pytest.raises(KeyboardInterrupt):
        dsa_search.evolve(stops_after_seven, 15, seed=5)

    def resumed(graph: str) -> float:
        if graph not in stored:
            calls.append(graph)
            stored[graph] = fitness(graph)
        return stored[graph]

    again = dsa_search.evolve(resumed, 15, seed=5)
    assert [e.graph for e in again] == [e.graph for e in dsa_search.evolve(fitness, 15, seed=5)]
    assert len(calls) == len(set(calls)) == 15  # each graph computed once over both runs


def test_non_finite_fitness_ranks_last_and_bad_settings_are_refused() -> None:
    done = dsa_search.evolve(lambda g: math.nan if "ASIN" in g else fitness(g), 10, seed=0)
    assert math.isinf(done[0].fitness)  # the published graph has ASIN here
    assert dsa_search.best(done).graph != DEFAULT_GRAPH
    with pytest.raises(ValueError, match="budget >= 1"):
        dsa_search.evolve(fitness, 0)
    with pytest.raises(ValueError, match="parents <= population"):
        dsa_search.evolve(fitness, 5, parents=9, population=4)


def test_graph_search_on_a_model_stores_each_graph_as_a_dsa_point() -> None:
    wb = tiny_workbench("cached")
    done = dsa_graph_search(wb, 0.6, budget=3, seed=0)
    assert len(done) == 3
    for entry in done:
        point = wb.stored(ScheduleSpec("dsa", 0.6, graph=entry.graph), need=())
        assert point is not None and point.metrics["validation/perplexity"] == entry.fitness
    pruned = []
    wb.apply = lambda *a, **k: pruned.append(a)  # type: ignore[method-assign]
    assert [e.graph for e in dsa_graph_search(wb, 0.6, budget=3, seed=0)] == [e.graph for e in done]
    assert pruned == []  # every point read back


def test_cli_search_space_dsa_prints_the_graphs_and_the_best(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tiny import shared_corpus_file, shared_tiny_model

    from atp_viz.cli import main as cli

    model, corpus = str(shared_tiny_model("llama")), str(shared_corpus_file())
    argv = ["search", "--space", "dsa", "--model", model, "--corpus", corpus, "--calib-samples", "2", "--seqlen", "32",
            "--eval-windows", "1", "--sparsity", "0.6", "--no-store", "--json", "--trials"]  # fmt: skip
    assert cli.main([*argv, "0"]) == 2  # refused in one line
    assert "--trials must be >= 1" in capsys.readouterr().err
    assert cli.main([*argv, "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["budget"] == 2 and out["graphs"][0]["graph"] == DEFAULT_GRAPH
    assert out["best"]["graph"] in {g["graph"] for g in out["graphs"]} and len(out["best"]["rates"]) == 4


def test_evolve_stops_between_graphs_when_asked() -> None:
    calls: list[str] = []

    def counted(graph: str) -> float:
        calls.append(graph)
        return fitness(graph)

    done = dsa_search.evolve(counted, 10, seed=1, should_stop=lambda: len(calls) >= 3)
    assert len(done) == len(calls) == 3
    assert [e.graph for e in done] == [e.graph for e in dsa_search.evolve(fitness, 10, seed=1)][:3]


def test_graph_search_beside_atp_stops_resumes_and_a_revisit_replays_the_store(tmp_path) -> None:
    from atp_viz.search import study
    from atp_viz.store import ResultStore

    wb = tiny_workbench("cached")
    wb.store = ResultStore(tmp_path / "r.sqlite")
    asked = [0]

    def stop_after_two() -> bool:  # checked before each graph not stored yet
        asked[0] += 1
        return asked[0] > 2

    halted = study.GraphSearch(wb, 0.6, budget=4).run(should_stop=stop_after_two)
    assert len(halted.trials) == 2 and study.GraphSearch(wb, 0.6, budget=4).stored().trials == halted.trials
    comparison = study.versus_atp(wb, 0.6, [study.DSA], step=0.1)  # the budget: ATP's sweep
    dsa = comparison.methods[study.DSA]
    assert dsa.label == study.DSA_LABEL
    assert len(dsa.trials) == comparison.budget == len(comparison.methods["atp"].trials)
    assert dsa.trials[:2] == halted.trials  # resumed: the two finished graphs read back, the sequence continued
    assert all(t.spec is not None and t.spec.method == "dsa" for t in dsa.trials)
    assert all(math.isfinite(t.evaluation) for t in dsa.trials)
    revisit = study.stored_comparison(wb, 0.6, [study.DSA], step=0.1)
    assert revisit.methods[study.DSA].trials == dsa.trials
    best = dsa.winner()
    assert best is not None and best.spec is not None
    assert study.winner_notes(revisit) == [f"{study.DSA_LABEL}: winner {best.spec.describe()}"]
    with pytest.raises(ValueError, match="search must be one of .*dsa"):
        study.versus_atp(wb, 0.6, ["nope"], step=0.1)
