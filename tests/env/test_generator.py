"""Graph generators: valid graphs, reproducible draws, codes as the graph builder makes them."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

from alphagrad import env, graph
from alphagrad.errors import AlphagradError


def check_valid(g: graph.Graph, gen: env.RandomGraphGenerator) -> None:
    lo_i, hi_i = gen.num_inputs
    lo_v, hi_v = gen.num_vertices
    assert lo_i <= g.num_inputs <= hi_i and lo_v <= g.num_vertices <= hi_v
    assert [v.number for v in g.vertices] == list(range(1, g.num_vertices + 1))
    n = g.num_inputs + g.num_vertices
    for e in g.edges:
        assert 1 <= e.src < e.dst <= n and e.dst > g.num_inputs  # a DAG in node-id order
        assert e.code != 0 and graph.normalise_shape(e.out_shape) == e.out_shape
    as_source, as_destination = g.node_shapes()  # consistent shapes per node
    assert (as_source == as_destination).all()
    for v in g.vertices:
        assert as_source[g.node_id(v.number)].tolist() == list(v.shape)
        assert max(v.shape) <= gen.max_dim or v.shape == (1, 1)
    # Outputs: the vertices nobody reads (a vertex read only by stop_gradient has no out-edge
    # but is no output, as in a traced program), plus copies of read values.
    outputs = set(g.outputs)
    assert len(outputs) == len(g.outputs)
    sources = {e.src for e in g.edges}
    gradient_stops = any(v.primitive == "stop_gradient" for v in g.vertices)
    for v in g.vertices:
        node = g.node_id(v.number)
        if v.number in outputs:
            assert node not in sources, f"output {v.number} has successors"
        elif node not in sources:
            assert gradient_stops, f"vertex {v.number} is a dead end but no output"
        if v.primitive == "copy":
            assert v.number in outputs
            (edge,) = [e for e in g.edges if e.dst == node]
            assert edge.in_shape == edge.out_shape == v.shape
    if g.num_vertices - len(outputs) == 0:
        assert g.num_vertices < 2 or gen.num_vertices[0] < 2
    # The graph can be scored.
    assert graph.cost(g, "forward") >= 0 and graph.cost(g, "reverse") >= 0


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tensor_fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_generated_graphs_are_valid(seed, tensor_fraction):
    gen = env.RandomGraphGenerator(num_inputs=(1, 10), num_vertices=(2, 60), tensor_fraction=tensor_fraction, max_dim=6)
    g = gen(seed)
    check_valid(g, gen)
    assert g.num_intermediates >= 1
    if tensor_fraction == 0.0:
        assert all(v.shape == (1, 1) for v in g.vertices) and all(e.code in (1, -1, 8) for e in g.edges)


def test_codes_come_from_the_graph_builder_rules():
    """Every (primitive, shapes) pair of a drawn tensor graph gets the code `graph.trace` gives it."""
    gen = env.RandomGraphGenerator(num_inputs=(3, 6), num_vertices=(60, 80), tensor_fraction=1.0, max_dim=5)
    seen = set()
    for seed in range(20):
        g = gen(seed)
        for e in g.edges:
            seen.add(g.vertices[e.dst - g.num_inputs - 1].primitive)
        check_valid(g, gen)
    assert {"dot_general", "broadcast_in_dim", "reduce_sum", "transpose", "reshape", "mul", "copy"} <= seen
    codes = {e.code for seed in range(20) for e in gen(seed).edges}
    assert {1, 6, -2, -7, 11} <= codes


def test_same_seed_same_graph():
    gen = env.RandomGraphGenerator()
    assert gen(5).fingerprint == gen(5).fingerprint
    assert gen(5).fingerprint != gen(6).fingerprint
    key = jax.random.key(3)
    assert gen(key).fingerprint == gen(jax.random.key(3)).fingerprint
    assert gen(jax.random.PRNGKey(3)).fingerprint == gen(jax.random.PRNGKey(3)).fingerprint
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    assert [gen(a).fingerprint for _ in range(3)] == [gen(b).fingerprint for _ in range(3)]


def test_sizes_bound_the_state():
    gen = env.RandomGraphGenerator(num_inputs=4, num_vertices=(10, 20), extra_outputs=(1, 3))
    assert (gen.max_inputs, gen.max_vertices) == (4, 20)
    for seed in range(10):
        g = gen(seed)
        assert g.num_inputs == 4 and 10 <= g.num_vertices <= 20
        env.init_state(g, max_vertices=gen.max_vertices, max_inputs=gen.max_inputs)


def test_choice_generator(reference_graphs):
    gen = env.ChoiceGenerator(list(reference_graphs.values()))
    assert (gen.max_vertices, gen.max_inputs) == (146, 16)
    drawn = {gen(seed).name for seed in range(60)}
    assert drawn == {g.name for g in reference_graphs.values()}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_inputs": 0}, "num_inputs"),
        ({"num_vertices": (10, 5)}, "num_vertices"),
        ({"tensor_fraction": 2.0}, "tensor_fraction"),
        ({"max_dim": 1}, "max_dim"),
        ({"num_vertices": (3, 9), "extra_outputs": (3, 5)}, "extra_outputs"),
        ({"cost_model": "nope"}, "unknown cost model"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(AlphagradError, match=message):
        env.RandomGraphGenerator(**kwargs)


def test_bad_seed():
    gen = env.RandomGraphGenerator()
    for seed in (-1, 1.5, "x", True):
        with pytest.raises(AlphagradError, match="seed"):
            gen(seed)


def test_exact_model_graphs_use_the_exact_rules():
    """Under the exact model, sums and broadcasts are index maps, as `graph.trace(..., cost_model="exact")` makes them."""
    gen = env.RandomGraphGenerator(num_inputs=(3, 6), num_vertices=(60, 80), tensor_fraction=1.0, max_dim=5,
                                   cost_model="exact")
    codes = {
        e.code
        for seed in range(10)
        for g in [gen(seed)]
        for e in g.edges
        if g.vertices[e.dst - g.num_inputs - 1].primitive in ("reduce_sum", "broadcast_in_dim") and e.in_shape != e.out_shape
    }
    assert codes == {graph.INDEX_MAP}
