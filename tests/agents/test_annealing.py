"""Simulated annealing, and the batched scoring back ends it runs on."""

from __future__ import annotations

import time

import jax
import numpy as np

from alphagrad import graph
from alphagrad.agents import anneal
from alphagrad.agents._batch import evaluator
from alphagrad.agents.annealing import propose
from alphagrad.env import is_scalar_graph


def test_bitset_and_env_back_ends_score_like_the_cost_model(reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    assert is_scalar_graph(g) and not is_scalar_graph(reference_graphs["Perceptron"])
    rng = np.random.default_rng(0)
    batch = np.stack([rng.permutation(g.intermediates) for _ in range(8)])
    expected = [graph.cost(g, list(o)) for o in batch]
    assert list(evaluator(g, backend="bitset").order_costs(batch)) == expected
    assert list(evaluator(g, backend="env").order_costs(batch)) == expected


def test_propose_returns_a_permutation():
    order = np.arange(20, dtype=np.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), 64)
    for moved in np.asarray(jax.vmap(propose, in_axes=(0, None))(keys, order)):
        assert sorted(moved) == list(order)


def test_annealing_time_limit_and_cost(reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    start = time.perf_counter()
    r = anneal(g, seconds=2.0, chains=64)
    assert time.perf_counter() - start < 3.0
    assert r.method == "sa" and sorted(r.order) == g.intermediates
    assert r.cost == graph.cost(g, list(r.order)) <= graph.cost(g, "markowitz")
