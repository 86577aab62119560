"""DSA's search over allocation functions: an evolutionary search over graph strings (pure; numpy only).

The paper (Li et al., NeurIPS 2024) evolves graphs by crossover and mutation with the pruned model's
perplexity as fitness. Its public code (lliai/DSA) holds the graph space (``LayerEngine.generate_random_graph``:
0-2 stick ops, "NO_OP" when none, one deform op, 1-2 post ops, a lambda of 7-10) but not the graph search
itself (``lib/evo_lib.py`` evolves per-layer rates against a proxy), so the loop here is this project's,
from the paper's description:

- generation 0: the published function plus random graphs up to ``population`` (a graph the parser refuses,
  e.g. a matrix operation, is drawn again);
- each later generation: the ``parents`` best graphs so far (lowest fitness; ties by first evaluation) breed
  ``population`` children: a crossover (each of the three groups from either parent) then, with probability
  ``mutation``, one operation of one group replaced by a random one of that group;
- every distinct graph is evaluated once (``objective(graph) -> fitness``; a non-finite fitness ranks last).

The random draws of generation g come from ``numpy.random.default_rng([seed, g])`` and depend only on the
fitnesses of earlier generations, so a run that stops and starts again (its evaluations read back from the
results store) replays the same graphs and loses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from atp_viz.schedules.dsa import DEFAULT_GRAPH, DEFORM_OPS, POST_OPS, STICK_OPS, Graph, parse_graph

POPULATION = 8
PARENTS = 3
MUTATION = 0.5
MAX_DRAWS = 1000  # random graphs drawn before giving up on one valid graph (the space has many)
GROUP_OPS = (tuple(STICK_OPS), tuple(DEFORM_OPS), tuple(POST_OPS))


@dataclass(frozen=True)
class Evaluated:
    """One evaluated graph: its canonical string, fitness, generation and order of evaluation."""

    graph: str
    fitness: float
    generation: int
    index: int


def _valid(groups: Sequence[Sequence[str]]) -> Graph | None:
    """The graph of these groups, without the lambda (it never moves the rates, so graphs differing only there are
    one function), or None when the parser refuses it."""
    try:
        return parse_graph(f"W:({','.join(groups[0])})-({','.join(groups[1])})-({','.join(groups[2])})")
    except ValueError:
        return None


def random_graph(rng: np.random.Generator) -> Graph:
    """A graph drawn as ``generate_random_graph`` draws it (stick 0-2 ops or NO_OP, deform 1, post 1-2; its
    lambda is dropped), drawn again while the parser refuses it."""
    for _ in range(MAX_DRAWS):
        stick = [str(op) for op in rng.choice(GROUP_OPS[0], size=int(rng.integers(0, 3)))] or ["NO_OP"]
        deform = [str(rng.choice(GROUP_OPS[1]))]
        post = [str(op) for op in rng.choice(GROUP_OPS[2], size=int(rng.integers(1, 3)))]
        rng.integers(7, 11)  # the code's lambda draw, kept so the draws follow it; never used
        graph = _valid((stick, deform, post))
        if graph is not None:
            return graph
    raise RuntimeError("no valid random DSA graph in 1000 draws")  # not reached: most draws are valid


def crossover(a: Graph, b: Graph, rng: np.random.Generator) -> Graph:
    """Each group (stick, deform, post) from either parent."""
    for _ in range(MAX_DRAWS):
        picks = rng.integers(0, 2, size=3)
        groups = [(a, b)[int(p)] for p in picks]
        child = _valid((groups[0].stick, groups[1].deform, groups[2].post))
        if child is not None:
            return child
    return a


def mutate(graph: Graph, rng: np.random.Generator) -> Graph:
    """One operation of one non-empty group replaced by a random operation of that group."""
    groups = [list(graph.stick), list(graph.deform), list(graph.post)]
    for _ in range(MAX_DRAWS):
        which = int(rng.choice([i for i, g in enumerate(groups) if g]))
        changed = [list(g) for g in groups]
        changed[which][int(rng.integers(0, len(changed[which])))] = str(rng.choice(GROUP_OPS[which]))
        child = _valid(changed)
        if child is not None:
            return child
    return graph


def _rank(done: Sequence[Evaluated]) -> list[Evaluated]:
    return sorted(done, key=lambda e: (not math.isfinite(e.fitness), e.fitness, e.index))


def evolve(
    objective: Callable[[str], float],
    budget: int,
    seed: int = 0,
    population: int = POPULATION,
    parents: int = PARENTS,
    mutation: float = MUTATION,
    start: Sequence[str] = (DEFAULT_GRAPH,),
    progress: Callable[[int, int, Evaluated], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Evaluated]:
    """Evaluate up to ``budget`` distinct graphs, generation by generation; returns them in evaluation order.

    ``objective(graph)``: the fitness (lower is better, e.g. validation perplexity of the pruned model).
    ``start``: graphs of generation 0 before the random ones (the published function by default).
    ``should_stop()``: checked before each evaluation; the graphs evaluated so far are returned."""
    if budget < 1 or population < 1 or not 1 <= parents <= population or not 0 <= mutation <= 1:
        raise ValueError(
            f"a DSA graph search needs budget >= 1, population >= 1, 1 <= parents <= population and mutation in "
            f"[0, 1], got {budget}, {population}, {parents}, {mutation:g}"
        )
    seen: dict[str, Evaluated] = {}
    done: list[Evaluated] = []
    generation = 0
    stale = 0
    while len(done) < budget and stale < MAX_DRAWS:
        rng = np.random.default_rng([seed, generation])
        if generation == 0:
            wanted = [parse_graph(g) for g in start] + [random_graph(rng) for _ in range(population)]
            wanted = wanted[: max(population, len(start))]
        else:
            best = _rank(done)[:parents]
            graphs = [parse_graph(e.graph) for e in best]
            wanted = []
            for _ in range(population):
                a, b = (graphs[int(i)] for i in rng.integers(0, len(graphs), size=2))
                child = crossover(a, b, rng)
                wanted.append(mutate(child, rng) if rng.random() < mutation else child)
        fresh = 0
        for graph in wanted:
            text = str(graph)
            key = str(replace(graph, lam=None))  # the lambda never moves the rates: one function, one evaluation
            if key in seen or len(done) >= budget:
                continue
            if should_stop is not None and should_stop():
                return done
            value = float(objective(text))
            entry = Evaluated(text, value if not math.isnan(value) else math.inf, generation, len(done))
            seen[key] = entry
            done.append(entry)
            fresh += 1
            if progress:
                progress(len(done), budget, entry)
        stale = 0 if fresh else stale + 1
        generation += 1
    return done


def best(done: Sequence[Evaluated]) -> Evaluated:
    """The lowest fitness (the first evaluated among equals)."""
    if not done:
        raise ValueError("no evaluated graph")
    return _rank(done)[0]
