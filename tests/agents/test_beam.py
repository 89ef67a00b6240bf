"""Beam search with incumbent completion."""

from __future__ import annotations

import time

import jax

from alphagrad import graph, orders
from alphagrad.agents import beam_search


def test_beam_time_limit_and_cost(reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    start = time.perf_counter()
    r = beam_search(g, seconds=2.0, width=4, init_order=orders.forward(g))
    assert time.perf_counter() - start < 3.0
    assert r.method == "beam" and sorted(r.order) == g.intermediates
    assert r.cost == graph.cost(g, list(r.order)) <= graph.cost(g, "forward")


def test_beam_improves_on_its_incumbent(reference_graphs):
    g = reference_graphs["HumanHeartDipole"]
    r = beam_search(g, seconds=120, width=8, max_passes=1, init_order=orders.forward(g))
    assert r.cost == graph.cost(g, list(r.order)) < graph.cost(g, "forward")
    assert r.info["passes"] == 1 and r.evaluations > 0


def test_beam_with_x64(small_tensor_graph):
    """Issue 14, item 5: the beam's jitted expansion and completion work with jax_enable_x64."""
    g = small_tensor_graph
    with jax.enable_x64(True):
        r = beam_search(g, seconds=300, width=4, per_state=2, max_passes=1)
    assert r.info["passes"] == 1
    assert r.cost == graph.cost(g, list(r.order)) <= graph.cost(g, "reverse")
