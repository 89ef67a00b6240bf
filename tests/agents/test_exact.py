"""The exact solver: optimum equals brute force; no other method beats it; bounds and limits."""

from __future__ import annotations

import time

from alphagrad import graph
from alphagrad.agents import (
    anneal,
    beam_search,
    cut_lower_bound,
    search_heuristics,
    solve_exact,
)
from alphagrad.env import is_scalar_graph
from tests.agents.conftest import brute_force


def test_exact_optimum_equals_brute_force_and_no_method_beats_it(small_graphs, diamond):
    for g in [*small_graphs, diamond]:
        optimum = brute_force(g)
        r = solve_exact(g, seconds=20)
        assert r.optimal and r.lower_bound == r.cost == optimum, g
        assert graph.cost(g, list(r.order)) == optimum
        assert cut_lower_bound(g) <= optimum
        assert search_heuristics(g, seconds=0.1).cost >= optimum
    # The batched searches compile per graph: one tensor graph (the env back end) keeps this fast;
    # the bitset back end of scalar graphs is scored against the cost model in test_annealing.py
    # (PropaneCombustion, the diamond) and test_beam.py (PropaneCombustion).
    g = next(g for g in small_graphs if not is_scalar_graph(g))
    optimum = brute_force(g)
    # Generous time limits (compilation on a loaded machine), bounded work instead.
    for r in (anneal(g, seconds=120, chains=16, max_iterations=40), beam_search(g, seconds=120, width=4, max_passes=1)):
        assert r.cost == graph.cost(g, list(r.order)) >= optimum
        assert sorted(r.order) == g.intermediates
        assert r.evaluations > 0


def test_exact_proves_the_published_optimum_of_propane(reference_graphs):
    r = solve_exact(reference_graphs["PropaneCombustion"], seconds=20)
    assert r.optimal and r.cost == 88 and r.info["stopped"] == "proved"


def test_exact_stops_at_its_time_limit_with_a_lower_bound(reference_graphs):
    g = reference_graphs["RoeFlux_1d"]
    start = time.perf_counter()
    r = solve_exact(g, seconds=2.0)
    assert time.perf_counter() - start < 3.0
    assert not r.optimal and r.info["stopped"] == "time"
    assert cut_lower_bound(g) <= r.lower_bound <= r.cost == graph.cost(g, list(r.order))
