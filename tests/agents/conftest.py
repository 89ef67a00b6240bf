"""Fixtures of the search tests: small random graphs (scalar and tensor) and their brute-force optima."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
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


@pytest.fixture(scope="session")
def small_tensor_graph() -> graph.Graph:
    """A tensor graph of 8 intermediates (an explicit heat-equation step), scored by the env core."""

    def heat_step(u):
        return u[1:-1] + 0.1 * (u[2:] - 2.0 * u[1:-1] + u[:-2])

    return graph.jacobian_graph(heat_step, jnp.ones(16))
