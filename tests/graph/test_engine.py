"""The elimination engine: its plan against the cost model, and snapshots that stay independent."""

from __future__ import annotations

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from alphagrad import graph
from alphagrad.errors import OrderError

REFERENCE_NAMES = graph.reference_names()


def random_order(g: graph.Graph, seed: int) -> list[int]:
    return np.random.default_rng(seed).permutation(g.intermediates).tolist()


def edges_of(e: graph.Eliminator) -> dict[tuple[int, int], int]:
    """The engine's edges as {(src, dst): code}, checking that preds and succs agree."""
    out = {(p, c): code for p, succs in enumerate(e.succs) for c, code in succs.items()}
    assert out == {(p, c): code for c, preds in enumerate(e.preds) for p, code in preds.items()}
    return out


@pytest.mark.parametrize("name", ["PropaneCombustion", "RoeFlux_3d", "f", "Perceptron", "Encoder"])
def test_the_plan_follows_the_cost_model_product_by_product(name, reference_graphs):
    """Replaying the plan on a dict of codes, each product is what the cost model says it is."""
    g = reference_graphs[name]
    model = graph.cost_model(g.cost_model)
    src_shape, dst_shape = g.node_shapes()
    for order in (graph.forward(g), graph.reverse(g), random_order(g, 0)):
        edges = {(e.src, e.dst): e.code for e in g.edges}
        steps = graph.plan(g, order)
        assert [s.vertex for s in steps] == order
        assert [s.cost for s in steps] == graph.elimination_costs(g, order)
        for step in steps:
            node = g.node_id(step.vertex)
            assert sorted(step.preds) == sorted(p for p, c in edges if c == node)
            assert sorted(step.succs) == sorted(c for p, c in edges if p == node)
            assert [(p.succ, p.pred) for p in step.products] == [(c, p) for c in step.succs for p in step.preds]
            for product in step.products:
                p, v, c = product.pred, product.vertex, product.succ
                assert v == node
                assert (product.in_code, product.out_code) == (edges[(p, v)], edges[(v, c)])
                assert product.code == model.product_code(product.in_code, product.out_code)
                assert product.muls == model.pair_cost(
                    product.in_code, product.out_code, tuple(dst_shape[c]), tuple(src_shape[v]), tuple(src_shape[p]))
                old = edges.get((p, c))
                if old is None:
                    assert (product.old_code, product.sum_code) == (0, 0)
                    edges[(p, c)] = product.code
                else:
                    assert product.old_code == old
                    assert product.sum_code == model.sum_code(old, product.code)
                    edges[(p, c)] = product.sum_code
            edges = {(p, c): code for (p, c), code in edges.items() if node not in (p, c)}
        engine = graph.Eliminator(g)
        for k in order:
            engine.eliminate(k)
        assert edges == edges_of(engine)


@pytest.mark.parametrize("name", REFERENCE_NAMES)
def test_steps_cost_what_eliminate_returns(name, reference_graphs):
    g = reference_graphs[name]
    order = random_order(g, 1)
    recorded, plain = graph.Eliminator(g), graph.Eliminator(g)
    for k in order:
        assert recorded.step(k).cost == plain.eliminate(k)
        assert recorded.remaining == plain.remaining
    assert recorded.remaining == []
    assert edges_of(recorded) == edges_of(plain)


def test_plan_validates_the_order(diamond):
    with pytest.raises(OrderError, match="misses"):
        graph.plan(diamond, [1])


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["RoeFlux_3d", "f", "Encoder", "HumanHeartDipole"]), st.integers(0, 2**16), st.data())
def test_snapshots_are_independent(name, seed, data):
    """A copy and its original, eliminating different vertices, each end where a fresh engine
    eliminating the same vertices ends: equal edges, keys, costs and previews."""
    g = graph.load_reference()[name]
    order = random_order(g, seed)
    split = data.draw(st.integers(0, len(order) - 1))
    branches = data.draw(st.lists(st.permutations(order[split:]), min_size=2, max_size=3))
    base = graph.Eliminator(g)
    for k in order[:split]:
        base.eliminate(k)
    if data.draw(st.booleans()):
        base.edge_key()  # from now on base and its copies keep their keys up to date
    copies = [base.copy() for _ in branches]
    for copy, branch in zip(copies, branches):
        steps = data.draw(st.integers(0, len(branch)))
        for k in branch[:steps]:
            copy.eliminate(k)
        fresh = graph.Eliminator(g)
        for k in order[:split] + branch[:steps]:
            fresh.eliminate(k)
        assert edges_of(copy) == edges_of(fresh)
        assert copy.edge_key() == fresh.edge_key()
        assert copy.remaining == fresh.remaining
        for k in copy.remaining[:5]:
            assert copy.elimination_cost(k) == fresh.elimination_cost(k)
            assert copy.fill_in(k) == fresh.fill_in(k)
            assert copy.neighbour_change(k) == fresh.neighbour_change(k)
    # The original is untouched by its copies.
    fresh = graph.Eliminator(g)
    for k in order[:split]:
        fresh.eliminate(k)
    assert edges_of(base) == edges_of(fresh)


def test_edge_key_names_the_edges_and_codes(diamond):
    a, b = graph.Eliminator(diamond), graph.Eliminator(diamond)
    assert a.edge_key() == b.edge_key()
    a.eliminate(2)
    assert a.edge_key() != b.edge_key()
    b.copy().eliminate(3)  # copies do not change the original
    assert b.edge_key() == graph.Eliminator(diamond).edge_key()
    b.eliminate(2)
    assert a.edge_key() == b.edge_key()
    assert hash(a.edge_key()) == hash(b.edge_key())
