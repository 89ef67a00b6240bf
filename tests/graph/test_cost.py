"""The cost model: golden costs on the reference graphs, worked examples, and a property test."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import jax.numpy as jnp
import pytest
from hypothesis import given, settings

from alphagrad import graph, orders
from alphagrad.errors import AlphagradError, OrderError
from tests.conftest import scalar_graph

REFERENCE_NAMES = graph.reference_names()


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_forward_and_reverse_match_the_published_costs(name, reference_graphs, reference_info):
    g, info = reference_graphs[name], reference_info[name]
    assert graph.cost(g, orders.forward(g)) == info.forward
    assert graph.cost(g, orders.reverse(g)) == info.reverse


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_reference_markowitz_order_costs_what_the_reference_says(name, reference_graphs, reference_info):
    g, info = reference_graphs[name], reference_info[name]
    assert graph.cost(g, list(info.minimal_markowitz_order)) == info.minimal_markowitz


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_reference_sizes(name, reference_graphs):
    g = reference_graphs[name]
    assert sorted(g.intermediates + list(g.outputs)) == list(range(1, g.num_vertices + 1))
    assert g.cost_model == "alphagrad-2024"


def test_worked_example_scalar():
    def f(x, y):
        v1 = x * y
        return jnp.sin(v1), v1 + jnp.exp(y)

    g = graph.trace(f, 1.0, 2.0)
    assert (g.num_inputs, g.num_intermediates, g.num_outputs) == (2, 2, 2)
    assert graph.cost(g, "forward") == 5
    assert graph.cost(g, "reverse") == 5
    assert graph.elimination_costs(g, [1, 3]) == [4, 1]


def test_worked_example_matrix_vector():
    def loss(W, x):
        return jnp.sum(jnp.tanh(W @ x) ** 2)

    g = graph.trace(loss, jnp.ones((3, 4)), jnp.ones(4))
    edges = {(e.src, e.dst): (e.code, *e.out_shape, *e.in_shape) for e in g.edges}
    assert edges[(1, 3)] == (-2, 3, 1, 3, 4)
    assert edges[(2, 3)] == (1, 3, 1, 4, 1)
    assert edges[(5, 6)] == (1, 1, 1, 3, 1)
    assert graph.elimination_costs(g, [1, 2, 3]) == [24, 24, 24]
    assert graph.cost(g, "forward") == 72
    assert graph.cost(g, "reverse") == 30
    assert graph.cost(g, "markowitz") == 30


def test_worked_example_elementwise():
    g = graph.trace(lambda x: jnp.sin(x) * jnp.cos(x), jnp.ones(5))
    assert sorted(e.code for e in g.edges) == [2, 2, 6, 6]
    assert graph.cost(g, "forward") == 10
    assert graph.cost(g, "reverse") == 10


def test_cost_model_tables():
    model = graph.cost_model("alphagrad-2024")
    assert model.mask.shape == (22, 22, 6)
    assert model.pair_cost(1, 1, (2, 3), (4, 5), (6, 7)) == 2 * 3 * 4 * 5 * 6 * 7
    assert model.pair_cost(6, 6, (5, 1), (5, 1), (5, 1)) == 5
    assert model.pair_cost(10, 10, (3, 3), (3, 3), (3, 3)) == 1
    assert model.pair_cost(-6, 1, (3, 3), (3, 3), (3, 3)) == 0  # identity factors are free
    assert model.product_code(11, 1) == 1
    with pytest.raises(AlphagradError, match="unknown cost model 'nope'.*alphagrad-2024"):
        graph.cost_model("nope")


# --- property test: cost == an independent naive count on random scalar DAGs ----------------------


def naive_scalar_cost(num_inputs, num_vertices, edges, order):
    """Eliminating v costs |preds| * |succs| and connects every pred to every succ."""
    preds = {n: set() for n in range(1, num_inputs + num_vertices + 1)}
    succs = {n: set() for n in range(1, num_inputs + num_vertices + 1)}
    for s, d in edges:
        preds[d].add(s)
        succs[s].add(d)
    total = 0
    for k in order:
        v = num_inputs + k
        total += len(preds[v]) * len(succs[v])
        for p, c in itertools.product(preds[v], succs[v]):
            succs[p].add(c)
            preds[c].add(p)
        for p in preds[v]:
            succs[p].discard(v)
        for c in succs[v]:
            preds[c].discard(v)
        preds[v], succs[v] = set(), set()
    return total


@st.composite
def scalar_dags_with_orders(draw):
    num_inputs = draw(st.integers(1, 4))
    num_vertices = draw(st.integers(2, 12))
    edges = set()
    for k in range(1, num_vertices + 1):
        node = num_inputs + k
        candidates = list(range(1, node))
        parents = draw(st.lists(st.sampled_from(candidates), min_size=0, max_size=3, unique=True))
        edges.update((p, node) for p in parents)
    # Vertices nobody reads are outputs; make sure at least one output exists.
    read = {s for s, _ in edges}
    outputs = [k for k in range(1, num_vertices + 1) if num_inputs + k not in read]
    extra = draw(st.lists(st.integers(1, num_vertices), max_size=2, unique=True))
    outputs = sorted(set(outputs) | set(extra))
    intermediates = [k for k in range(1, num_vertices + 1) if k not in outputs]
    order = draw(st.permutations(intermediates))
    return num_inputs, num_vertices, sorted(edges), outputs, list(order)


@settings(max_examples=150, deadline=None)
@given(scalar_dags_with_orders())
def test_cost_equals_naive_markowitz_count(case):
    num_inputs, num_vertices, edges, outputs, order = case
    g = scalar_graph(num_inputs, num_vertices, edges, outputs)
    assert graph.cost(g, order) == naive_scalar_cost(num_inputs, num_vertices, edges, order)


# --- bad orders -----------------------------------------------------------------------------


def test_repeated_vertex_is_named(diamond):
    with pytest.raises(OrderError, match="vertex 1 appears twice"):
        graph.cost(diamond, [1, 1, 3])


def test_missing_vertices_are_listed(diamond):
    with pytest.raises(OrderError, match=r"misses 1 of the 3 intermediate vertices.*: 3"):
        graph.cost(diamond, [1, 2])


def test_output_vertex_is_refused(diamond):
    with pytest.raises(OrderError, match="vertex 4.*an output vertex"):
        graph.cost(diamond, [1, 2, 3, 4])


@pytest.mark.parametrize("entry", [0, 6, 99, -1])
def test_number_that_is_not_a_vertex(diamond, entry):
    with pytest.raises(OrderError, match=rf"is {entry}, which is not a vertex.*1 to 5"):
        graph.cost(diamond, [1, 2, entry])


@pytest.mark.parametrize("entry", ["2", 2.0, True, None])
def test_entry_that_is_not_an_int(diamond, entry):
    with pytest.raises(OrderError, match="not a vertex number"):
        graph.cost(diamond, [1, entry, 3])


def test_unknown_order_name(diamond):
    with pytest.raises(OrderError, match="unknown order name 'sideways'"):
        graph.cost(diamond, "sideways")


def test_order_errors_are_alphagrad_errors(diamond):
    with pytest.raises(AlphagradError):
        graph.cost(diamond, [])
