"""ANGEL heuristics: valid orders, costs that match the cost model, time limits."""

from __future__ import annotations

import time

import pytest

from alphagrad import graph, orders
from alphagrad.agents import SearchError, heuristic_order, search_heuristics
from alphagrad.agents.heuristics import DEFAULT_CHAINS, FILTERS, RANDOM_CHAINS


@pytest.mark.parametrize("chain", DEFAULT_CHAINS + RANDOM_CHAINS)
def test_every_chain_gives_a_valid_order_with_the_cost_model_cost(chain, reference_graphs):
    g = reference_graphs["Perceptron"]  # tensor graph: degrees are cost-model costs
    order, c = heuristic_order(g, chain, seed=3)
    assert sorted(order) == g.intermediates
    assert c == graph.cost(g, order)


def test_markowitz_chain_reproduces_the_markowitz_order(reference_graphs):
    for name in ("PropaneCombustion", "Perceptron"):
        g = reference_graphs[name]
        assert heuristic_order(g, "markowitz>forward")[0] == orders.markowitz(g)


def test_forward_and_reverse_filters(diamond):
    assert heuristic_order(diamond, "forward")[0] == orders.forward(diamond)
    assert heuristic_order(diamond, ["reverse"])[0] == orders.reverse(diamond)


def test_lmmd_and_momr_see_the_neighbours(diamond):
    # In the diamond, eliminating v1 first (2 x 2) is worse than the leaves; every filter agrees
    # with the cost model on the total.
    for name in FILTERS:
        order, c = heuristic_order(diamond, name, seed=0)
        assert c == graph.cost(diamond, order)


def test_unknown_filter_is_a_clear_error(diamond):
    with pytest.raises(SearchError, match="unknown heuristic filter"):
        heuristic_order(diamond, "markowitz>nope")


def test_search_heuristics_honours_its_time_limit_and_beats_markowitz(reference_graphs):
    g = reference_graphs["RoeFlux_1d"]
    start = time.perf_counter()
    r = search_heuristics(g, seconds=2.0)
    assert time.perf_counter() - start < 3.0
    assert r.cost == graph.cost(g, list(r.order)) <= graph.cost(g, "markowitz")
    assert r.method == "heuristics" and r.info["chain"]
