"""Fixtures of the search tests: small random graphs (scalar and tensor) and their brute-force optima."""

from __future__ import annotations

import itertools

import pytest

from alphagrad import graph
from alphagrad.env import RandomGraphGenerator


def brute_force(g: graph.Graph) -> int:
    """The cheapest cost over all orders (only for a handful of intermediates)."""
    return min(graph.cost(g, list(p)) for p in itertools.permutations(g.intermediates))


@pytest.fixture(scope="session")
def small_graphs() -> list[graph.Graph]:
    """Random graphs of 2..7 intermediates, half of them tensor graphs (fixed seeds)."""
    gen = RandomGraphGenerator(num_inputs=(1, 4), num_vertices=(4, 10), tensor_fraction=0.5, max_dim=4)
    graphs = []
    seed = 0
    while len(graphs) < 12:
        g = gen(seed)
        seed += 1
        if 2 <= g.num_intermediates <= 7:
            graphs.append(g)
    return graphs
