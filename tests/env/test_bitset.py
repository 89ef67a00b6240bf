"""The bitset core's boundaries: which graphs it takes, padding, and illegal actions as no-ops.
(Its costs are checked against the Python engine in test_engine_equivalence.py.)"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from alphagrad import env, graph
from tests.conftest import scalar_graph


@pytest.fixture
def diamond() -> graph.Graph:
    """x1, x2 -> v1 -> (v2, v3) -> v4 (output), plus v3 -> v5 (output)."""
    return scalar_graph(2, 5, [(1, 3), (2, 3), (3, 4), (3, 5), (4, 6), (5, 6), (5, 7)], outputs=[4, 5])


def _same(a: env.BitsetState, b: env.BitsetState) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_scalar_graphs_only(reference_graphs):
    assert env.is_scalar_graph(reference_graphs["PropaneCombustion"])
    perceptron = reference_graphs["Perceptron"]
    assert not env.is_scalar_graph(perceptron)
    with pytest.raises(env.StateSizeError, match="not a scalar graph"):
        env.bitset_init(perceptron)


def test_state_size(diamond):
    state = env.bitset_init(diamond, max_vertices=40, max_inputs=3)
    assert state.succ.shape == (43, 2) and state.eliminable.shape == (40,)
    assert np.flatnonzero(state.eliminable).tolist() == [0, 1, 2]  # vertices 1, 2, 3
    with pytest.raises(env.StateSizeError, match="max_vertices >= 5"):
        env.bitset_init(diamond, max_vertices=4)


def test_illegal_actions_are_no_ops(diamond):
    state = env.bitset_init(diamond, max_vertices=8, max_inputs=2)
    after = env.bitset_step(state, 0)  # eliminates v1: 2 predecessors x 2 successors
    assert int(after.cost) == 4
    for action in (0, 3, 4, 6, 8, -1, 1000):  # eliminated, outputs, padding, out of range
        assert _same(env.bitset_step(after, action), after), action
