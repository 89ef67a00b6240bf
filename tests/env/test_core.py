"""The pure JAX core: costs equal `graph.cost` exactly, one compilation, vmap, illegal actions."""

from __future__ import annotations

import dataclasses

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from alphagrad import env, graph, orders
from alphagrad.graph import Edge, Graph, Vertex
from tests.conftest import scalar_graph
from tests.env.conftest import REF_INPUTS, REF_VERTICES, jit_batch_rollout, jit_batch_step, jit_rollout, jit_step

ORDER_KINDS = ("forward", "reverse", "markowitz", "random")


def _order(g: Graph, kind: str, seed: int = 0) -> list[int]:
    if kind == "random":
        return [int(k) for k in np.random.default_rng(seed).permutation(g.intermediates)]
    return getattr(orders, kind)(g)


def _actions(order: list[int], length: int) -> np.ndarray:
    """The order as actions, padded with action 0 (a no-op once the episode is over)."""
    actions = np.zeros(length, dtype=np.int32)
    actions[: len(order)] = np.asarray(order) - 1
    return actions


def _same_state(a: env.State, b: env.State, *, but=()) -> bool:
    fields = [f.name for f in dataclasses.fields(env.State) if f.name not in but and f.name != "cost_model"]
    return a.cost_model == b.cost_model and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in fields)


@pytest.fixture(scope="module")
def reference_rollouts(reference_graphs, padded_reference_states):
    """All ten reference graphs x four orders, played by one compiled vmapped rollout."""
    cases = [(name, kind) for name in reference_graphs for kind in ORDER_KINDS]
    plays = {case: _order(reference_graphs[case[0]], case[1]) for case in cases}
    states = env.stack([padded_reference_states[name] for name, _ in cases])
    actions = np.stack([_actions(plays[case], REF_VERTICES) for case in cases])
    final, rewards, terminated = jit_batch_rollout(states, actions)
    out = {}
    for i, case in enumerate(cases):
        state = jax.tree.map(lambda x: x[i], final)
        out[case] = (plays[case], state, np.asarray(rewards[i]), np.asarray(terminated[i]))
    return out


@pytest.mark.parametrize("kind", ORDER_KINDS)
@pytest.mark.parametrize("name", graph.reference_names())
def test_episode_cost_equals_graph_cost(name, kind, reference_graphs, reference_rollouts):
    g = reference_graphs[name]
    order, final, rewards, terminated = reference_rollouts[(name, kind)]
    steps = graph.elimination_costs(g, order)
    n = len(order)
    assert rewards[:n].tolist() == [-float(c) for c in steps]
    assert int(final.cost) == graph.cost(g, order) == sum(steps)
    # Terminal states absorb: the padding actions afterwards are free no-ops, not illegal.
    assert (rewards[n:] == 0).all()
    assert not terminated[: n - 1].any() and terminated[n - 1:].all()
    assert env.order_of(final) == order
    assert int(final.step_count) == n == int(final.num_intermediates)
    assert not bool(final.illegal)


@pytest.mark.parametrize("name", graph.reference_names())
def test_golden_forward_and_reverse(name, reference_info, reference_rollouts):
    info = reference_info[name]
    assert int(reference_rollouts[(name, "forward")][1].cost) == info.forward
    assert int(reference_rollouts[(name, "reverse")][1].cost) == info.reverse


def test_one_compiled_step_serves_graphs_of_different_sizes(padded_reference_states, reference_graphs):
    traced_step = jax.jit(chex.assert_max_traces(env.step, n=1))
    for name in ("Perceptron", "RoeFlux_3d"):  # 39 and 146 vertices, 8 and 6 inputs
        g = reference_graphs[name]
        state = padded_reference_states[name]
        total = 0
        for k in orders.reverse(g):
            state, reward, _ = traced_step(state, jnp.int32(k - 1))
            total -= float(reward)
        assert total == graph.cost(g, "reverse")


def test_vmapped_rollout_equals_sequential_steps(padded_reference_states, reference_graphs):
    names = ("PropaneCombustion", "Perceptron", "HumanHeartDipole")
    rng = np.random.default_rng(1)
    plays = [_order(reference_graphs[n], "random", seed=i) for i, n in enumerate(names)]
    length = max(len(p) for p in plays) + 3
    actions = np.stack([_actions(p, length) for p in plays])
    actions[:, -3:] = rng.integers(-5, REF_VERTICES + 5, size=(len(names), 3))  # also after the end
    batch = env.stack([padded_reference_states[n] for n in names])
    for t in range(length):
        batch, batch_rewards, batch_done = jit_batch_step(batch, actions[:, t])
    for i, name in enumerate(names):
        state = padded_reference_states[name]
        rewards = []
        for t in range(length):
            state, reward, done = jit_step(state, actions[i, t])
            rewards.append(float(reward))
        assert _same_state(state, jax.tree.map(lambda x: x[i], batch))
        assert bool(done) == bool(batch_done[i])
        final, scanned, _ = jit_rollout(padded_reference_states[name], actions[i])
        assert np.asarray(scanned).tolist() == rewards
        assert _same_state(final, state)


# -- illegal actions -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def midgame(padded_reference_states, perceptron):
    """Perceptron (39 vertices, padded to 146) after eliminating vertex 1."""
    state, _, _ = jit_step(padded_reference_states["Perceptron"], 0)
    assert int(state.step_count) == 1 and not bool(state.illegal)
    return state


@pytest.mark.parametrize(
    "case, action",
    [
        ("eliminated vertex", 0),  # vertex 1, eliminated by the fixture
        ("output vertex", 38),  # vertex 39 is Perceptron's output
        ("padding vertex", 100),  # vertex 101 > 39: a padding slot
        ("out of range (negative)", -1),
        ("out of range (too large)", REF_VERTICES),
        ("out of range (far)", 10**6),
    ],
)
def test_illegal_action_is_a_flagged_no_op(midgame, perceptron, case, action):
    assert perceptron.is_output(39)
    state, reward, terminated = jit_step(midgame, action)
    assert bool(state.illegal), case
    assert float(reward) == 0.0 and not bool(terminated)
    assert _same_state(state, midgame, but=("illegal",))
    # The flag only describes the last step: a legal move clears it.
    after, reward, _ = jit_step(state, 1)
    assert not bool(after.illegal) and int(after.step_count) == 2


def test_legal_actions_are_the_eliminable_vertices(midgame, perceptron):
    legal = np.asarray(env.legal_actions(midgame))
    expected = np.zeros(REF_VERTICES, dtype=bool)
    expected[[k - 1 for k in perceptron.intermediates if k != 1]] = True
    assert (legal == expected).all()


def test_terminal_state_absorbs_without_illegal_flag(reference_rollouts):
    _, final, _, _ = reference_rollouts[("Perceptron", "reverse")]
    assert bool(env.is_terminal(final))
    assert not np.asarray(env.legal_actions(final)).any()
    for action in (0, 38, 200, -3):
        state, reward, terminated = jit_step(final, action)
        assert float(reward) == 0.0 and bool(terminated) and not bool(state.illegal)
        assert _same_state(state, final)


# -- encoding --------------------------------------------------------------------------------


def test_observation_layout(midgame, perceptron):
    obs = env.observe(midgame)
    V, N = REF_VERTICES, REF_VERTICES + REF_INPUTS
    assert {k: (v.shape, v.dtype) for k, v in obs.items()} == {
        "codes": ((N, V), jnp.int8),
        "shapes": ((N, 4), jnp.int32),
        "node_type": ((N,), jnp.int8),
        "action_mask": ((V,), jnp.int8),
    }
    types = np.asarray(obs["node_type"])
    assert types[0] == env.NODE_ELIMINATED and types[1] == env.NODE_INTERMEDIATE
    assert types[38] == env.NODE_OUTPUT and (types[39:V] == env.NODE_PADDING).all()
    assert (types[V : V + 8] == env.NODE_INPUT).all() and (types[V + 8 :] == env.NODE_PADDING).all()
    # Input 3 of Perceptron is an (8, 4) matrix; vertex 23 a (4, 1) vector.
    assert np.asarray(obs["shapes"])[V + 2].tolist() == [8, 4, 8, 4]
    assert np.asarray(obs["shapes"])[22].tolist() == [4, 1, 4, 1]
    codes = np.asarray(obs["codes"])
    assert not codes[0].any() and not codes[:, 0].any()  # vertex 1 is gone


@pytest.mark.parametrize("capacity", [1, 7, 64, 4000])
def test_edge_list_is_the_code_matrix_in_row_major_order(midgame, capacity):
    """edge_list lists the nonzero codes as np.flatnonzero does (the first `capacity` of them),
    padded with index 0 and code 0; it is jittable and vmaps over a batch."""
    codes = np.asarray(midgame.codes)
    V = codes.shape[1]
    nonzero = np.flatnonzero(codes)[:capacity]
    expected = np.zeros(capacity, np.int64), np.zeros(capacity, np.int8)
    expected[0][: len(nonzero)], expected[1][: len(nonzero)] = nonzero, codes.reshape(-1)[nonzero]
    edges, edge_codes = jax.jit(env.edge_list, static_argnums=1)(midgame.codes, capacity)
    np.testing.assert_array_equal(edges, expected[0])
    np.testing.assert_array_equal(edge_codes, expected[1])
    assert edges.dtype == jnp.int32 and edge_codes.dtype == jnp.int8
    if capacity == 64:  # src = edges // V, dst = edges % V, node layout of the state
        src, dst = np.divmod(np.asarray(edges)[: len(nonzero)], V)
        assert (codes[src, dst] != 0).all()
        batch = jax.vmap(lambda c: env.edge_list(c, capacity))(jnp.stack([midgame.codes, jnp.zeros_like(midgame.codes)]))
        np.testing.assert_array_equal(batch[0][0], expected[0])
        assert not np.asarray(batch[1][1]).any()


def test_init_state_layout():
    g = scalar_graph(2, 3, [(1, 3), (2, 3), (3, 4), (2, 5), (4, 5)], outputs=[3])
    state = env.init_state(g, max_vertices=5, max_inputs=3)
    codes = np.asarray(state.codes)
    assert codes.shape == (8, 5)
    # vertex k -> index k - 1; input i -> index 5 + i - 1
    assert codes[5, 0] == codes[6, 0] == codes[0, 1] == codes[6, 2] == codes[1, 2] == 1
    assert int((codes != 0).sum()) == 5
    assert np.asarray(state.eliminable).tolist() == [True, True, False, False, False]
    assert np.asarray(state.vertex_mask).tolist() == [True, True, True, False, False]
    assert np.asarray(state.input_mask).tolist() == [True, True, False]
    assert int(state.num_intermediates) == 2 and state.cost_model == "alphagrad-2024"
    assert np.asarray(state.order).tolist() == [-1] * 5


def test_code_zero_edges_are_no_edges():
    g = scalar_graph(1, 3, [(1, 2), (2, 3), (3, 4)], outputs=[3])
    zero = dataclasses.replace(g, edges=g.edges + (Edge(1, 4, 0, (1, 1), (1, 1)),))
    for order in ([1, 2], [2, 1]):
        final, _, _ = env.rollout(env.init_state(zero), np.asarray(order) - 1)
        assert int(final.cost) == graph.cost(zero, order) == graph.cost(g, order)


def test_graph_that_does_not_fit_is_rejected(perceptron):
    with pytest.raises(env.StateSizeError, match="max_vertices >= 39"):
        env.init_state(perceptron, max_vertices=30)
    with pytest.raises(ValueError, match="max_inputs >= 8"):
        env.init_state(perceptron, max_inputs=4)


def test_cyclic_graph_is_rejected():
    g = scalar_graph(1, 2, [(1, 2), (2, 3), (3, 2)], outputs=[2])
    with pytest.raises(env.StateSizeError, match="cycle"):
        env.init_state(g)


def test_edge_into_an_input_is_rejected():
    g = Graph(1, ((1, 1),), (Vertex(1),), (Edge(2, 1, 1, (1, 1), (1, 1)),), (1,))
    with pytest.raises(env.StateSizeError, match="end at a vertex"):
        env.init_state(g)


# -- property test: generated graphs, random orders, both cost models --------------------------

GENERATED_VERTICES, GENERATED_INPUTS = 40, 6


@pytest.mark.parametrize("model", graph.cost_models())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), order_seed=st.integers(0, 2**31 - 1), prefix=st.floats(0.0, 1.0))
def test_random_graphs_random_orders(model, seed, order_seed, prefix):
    gen = env.RandomGraphGenerator(
        num_inputs=(1, GENERATED_INPUTS), num_vertices=(3, GENERATED_VERTICES), max_dim=5, cost_model=model
    )
    g = gen(seed)
    order = [int(k) for k in np.random.default_rng(order_seed).permutation(g.intermediates)]
    state = env.init_state(g, max_vertices=GENERATED_VERTICES, max_inputs=GENERATED_INPUTS)
    final, rewards, _ = jit_rollout(state, _actions(order, GENERATED_VERTICES))
    assert (-np.asarray(rewards[: len(order)])).tolist() == graph.elimination_costs(g, order)
    assert int(final.cost) == graph.cost(g, order)
    # A prefix of the order, then illegal no-ops (-1): the cost stops at the prefix's.
    k = int(prefix * len(order))
    actions = np.full(GENERATED_VERTICES, -1, dtype=np.int32)
    actions[:k] = np.asarray(order[:k], dtype=np.int32) - 1
    part, rewards, done = jit_rollout(state, actions)
    assert int(part.cost) == sum(graph.elimination_costs(g, order[:k], complete=False))
    assert (np.asarray(rewards[k:]) == 0).all()
    assert env.order_of(part) == order[:k]
    assert bool(done[-1]) == (k == len(order)) and bool(part.illegal) == (k < len(order))


def test_vertices_with_many_predecessors_batched_with_few():
    """Several passes over predecessor rows (8 per pass), batched with a state that needs one."""
    wide = scalar_graph(30, 3, [(i, 31) for i in range(1, 31)] + [(31, 32), (32, 33), (5, 32)], outputs=[3])
    narrow = scalar_graph(2, 3, [(1, 3), (2, 3), (3, 4), (4, 5)], outputs=[3])
    states = [env.init_state(g, max_vertices=3, max_inputs=30) for g in (wide, narrow)]
    for order in ([1, 2], [2, 1]):
        actions = np.asarray(order, dtype=np.int32) - 1
        batch, rewards, _ = jit_batch_rollout(env.stack(states), np.stack([actions, actions]))
        for i, g in enumerate((wide, narrow)):
            assert (-np.asarray(rewards[i])).tolist() == graph.elimination_costs(g, order)
            final, _, _ = jit_rollout(states[i], actions)
            assert _same_state(final, jax.tree.map(lambda x: x[i], batch))
