"""The two jitted cores (`env.step`, `env.bitset_step`) eliminate exactly like the Python engine.

On random graphs (generated, traced from random programs, and hand-drawn scalar DAGs) under
both cost models, a random complete order costs the same in every engine, step by step. All
states are padded to one size (SLOTS_V, SLOTS_I) and all orders to SLOTS_V actions (illegal
padding actions are no-ops), so each jitted function compiles once per cost model.
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax
import numpy as np
from hypothesis import assume, given, settings

from alphagrad import env, graph, tasks
from alphagrad.graph import Edge, Graph, Vertex
from tests.env.conftest import jit_rollout

#: The one state size of this module (W = 1 word per bitset row).
SLOTS_V = 32
SLOTS_I = 16

MODELS = st.sampled_from(graph.cost_models())
SETTINGS = settings(max_examples=40, deadline=None)


@jax.jit
def _bitset_play(state: env.BitsetState, actions) -> tuple[env.BitsetState, jax.Array]:
    """Plays ``actions`` (int32[T]); returns the final state and the cost after each step (int32[T])."""

    def body(s, a):
        s = env.bitset_step(s, a)
        return s, s.cost

    return jax.lax.scan(body, state, actions)


def _actions(order: list[int]) -> np.ndarray:
    """int32[SLOTS_V]: the order as actions, padded with -1 (an illegal action: a no-op)."""
    actions = np.full(SLOTS_V, -1, dtype=np.int32)
    actions[: len(order)] = np.asarray(order, dtype=np.int32) - 1
    return actions


def engine_costs(g: Graph, order: list[int]) -> list[int]:
    """Per-step multiplications of the Python engine."""
    eliminator = graph.Eliminator(g)
    return [eliminator.eliminate(k) for k in order]


def env_costs(g: Graph, order: list[int]) -> list[int]:
    """Per-step multiplications of the table-driven core (`env.init_state` + `env.rollout`)."""
    state = env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
    final, rewards, terminated = jit_rollout(state, _actions(order))
    total = int(final.cost)
    assert total < 2**24  # rewards are float32: exact below 2**24
    steps = (-np.asarray(rewards)).astype(np.int64)
    assert (steps[len(order) :] == 0).all()  # the padding actions were no-ops
    assert steps.sum() == total
    assert env.order_of(final) == order and bool(terminated[-1])
    return steps[: len(order)].tolist()


def bitset_costs(g: Graph, order: list[int]) -> list[int]:
    """Per-step multiplications of the bitset core (scalar graphs only)."""
    state = env.bitset_init(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
    final, cumulative = _bitset_play(state, _actions(order))
    steps = np.diff(np.asarray(cumulative, dtype=np.int64), prepend=0)
    assert (steps[len(order) :] == 0).all()
    assert not np.asarray(final.eliminable).any()
    return steps[: len(order)].tolist()


def check_engines_agree(g: Graph, order: list[int], *, bitset: bool) -> None:
    """The Python engine, `graph.cost`, the env core and (with `bitset`) the bitset core agree."""
    expected = engine_costs(g, order)
    assert graph.elimination_costs(g, order) == expected
    assert graph.cost(g, order) == sum(expected)
    assert env_costs(g, order) == expected
    if bitset:
        assert env.is_scalar_graph(g)
        assert bitset_costs(g, order) == expected


@functools.cache
def _generator(cost_model: str, tensor_fraction: float) -> env.RandomGraphGenerator:
    return env.RandomGraphGenerator(
        num_inputs=(1, 8),
        num_vertices=(2, 30),
        tensor_fraction=tensor_fraction,
        max_dim=5,
        extra_outputs=(0, 2),
        cost_model=cost_model,
    )


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), model=MODELS, tensor_fraction=st.sampled_from([0.0, 0.5, 1.0]), data=st.data())
def test_generated_graphs(seed, model, tensor_fraction, data):
    g = _generator(model, tensor_fraction)(seed)
    order = data.draw(st.permutations(g.intermediates), label="order")
    check_engines_agree(g, order, bitset=env.is_scalar_graph(g))


@SETTINGS
@given(
    seed=st.integers(0, 10**6),
    kind=st.sampled_from(["scalar", "tensor"]),
    statements=st.integers(2, 12),
    model=MODELS,
    data=st.data(),
)
def test_traced_random_programs(seed, kind, statements, model, data):
    task = tasks.random_program(seed, kind, num_statements=statements)
    g = graph.trace(task.fn, *task.args, cost_model=model)
    assume(g.num_vertices <= SLOTS_V and g.num_inputs <= SLOTS_I)
    order = data.draw(st.permutations(g.intermediates), label="order")
    check_engines_agree(g, order, bitset=env.is_scalar_graph(g))


@st.composite
def scalar_graphs(draw) -> Graph:
    """Scalar DAGs with code-1 edges: every sink is an output, and so are a few vertices with
    successors (outputs are never eliminated but still pass products on)."""
    num_inputs = draw(st.integers(1, 8))
    num_vertices = draw(st.integers(2, 30))
    edges = []
    for k in range(1, num_vertices + 1):
        node = num_inputs + k
        preds = draw(st.sets(st.integers(1, node - 1), max_size=4))
        edges += [Edge(p, node, 1, (1, 1), (1, 1)) for p in preds]
    sources = {e.src for e in edges}
    sinks = {k for k in range(1, num_vertices + 1) if num_inputs + k not in sources}
    extra = draw(st.sets(st.integers(1, num_vertices), max_size=2))
    return Graph(
        num_inputs=num_inputs,
        input_shapes=((1, 1),) * num_inputs,
        vertices=tuple(Vertex(k) for k in range(1, num_vertices + 1)),
        edges=tuple(edges),
        outputs=tuple(sorted(sinks | extra)),
        cost_model=draw(MODELS),
    )


@SETTINGS
@given(g=scalar_graphs(), data=st.data())
def test_scalar_graphs_in_all_three_engines(g, data):
    order = data.draw(st.permutations(g.intermediates), label="order")
    check_engines_agree(g, order, bitset=True)
