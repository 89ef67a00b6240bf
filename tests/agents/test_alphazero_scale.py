"""The agent on a graph of a few hundred vertices: states are stored and read as edge lists.

The 2,000- and 3,000-vertex runs are in benchmarks/train_at_scale.py (docs/benchmarks.md
"Training at scale"); this test keeps the same program family small enough for the suite.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alphagrad import graph
from alphagrad.agents import alphazero
from alphagrad.agents.alphazero._core import init_train_state
from alphagrad.agents.alphazero._network import edge_capacity
from alphagrad.agents.alphazero._tasks import make_tasks

SMALL = alphazero.AlphaZeroConfig(
    embed_dim=8, edge_dim=4, num_layers=1, num_heads=1, num_simulations=1, max_num_considered_actions=2,
    num_games=1, num_policy_games=0, batch_size=4, updates_per_iteration=1, replay_size=1024, min_replay=4,
    demo_fraction=0.0, iterations=2, seed=0, xla_opt_level=0,
)  # fmt: skip


def lorenz(x, y, z, s, r, b):
    """10 explicit Euler steps of the Lorenz system: 140 vertices, 6 inputs, 3 outputs."""
    for _ in range(10):
        x, y, z = x + 0.01 * s * (y - x), y + 0.01 * (x * (r - z) - y), z + 0.01 * (x * y - b * z)
    return x, y, z


def test_train_runs_two_iterations_on_a_long_program_with_edge_list_states():
    g = graph.trace(lorenz, *(jnp.float32(v) for v in (1.0, 1.0, 1.0, 10.0, 28.0, 2.6)))
    assert g.num_vertices >= 140
    N, V = g.num_vertices + g.num_inputs, g.num_vertices
    # A stored transition holds 16 edge slots per node, not the N x V code matrix.
    tasks, _ = make_tasks([g])
    state = init_train_state(SMALL, tasks, jax.random.PRNGKey(0))
    E = edge_capacity(N, V, SMALL.edges_per_node)
    assert E == 16 * N < N * V
    assert state.buffer.data.edges.shape == (SMALL.replay_size, E)

    result = alphazero.train(g, SMALL)
    assert result.iterations == 2 and len(result.history) == 2
    assert sorted(result.best_order) == g.intermediates
    assert result.best_cost == graph.cost(g, result.best_order)
    assert any(row["loss"] > 0 for row in result.history)
