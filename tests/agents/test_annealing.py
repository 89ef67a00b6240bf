"""Simulated annealing, and the batched scoring back ends it runs on."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
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


def test_annealing_and_both_cores_keep_int32_costs_with_x64(diamond, small_tensor_graph):
    """Issue 14, item 5: under jax_enable_x64 the cores' costs became int64 (reductions default
    to the wide integer) while the scans of the batched scoring and of annealing carried int32."""
    with jax.enable_x64(True):
        for g, backend in ((diamond, "bitset"), (small_tensor_graph, "env")):
            ev = evaluator(g)
            assert ev.backend == backend
            batch = np.stack([g.intermediates, g.intermediates[::-1]])
            costs = ev.order_costs_fn(jnp.asarray(batch - 1, jnp.int32))
            assert costs.dtype == jnp.int32, (backend, costs.dtype)
            assert list(np.asarray(costs)) == [graph.cost(g, list(o)) for o in batch]
        r = anneal(small_tensor_graph, seconds=300, chains=8, max_iterations=8)
        assert r.info["compiled_in_time"] and r.evaluations == 64
        assert r.cost == graph.cost(small_tensor_graph, list(r.order))
