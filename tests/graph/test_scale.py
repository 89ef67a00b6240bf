"""Orders at scale: the heap-driven greedy loop (`Eliminator.greedy`) gives exactly the orders of
the straightforward scans it replaced, and its work grows with the edges, not with V².

The references below are the former O(V²) loops, kept here verbatim in spirit: at every step
score every remaining vertex and take the smallest (score, vertex number).
"""

from __future__ import annotations

import functools

import hypothesis.strategies as st
import jax.numpy as jnp
import pytest
from hypothesis import given, settings

from alphagrad import env, graph, tasks
from alphagrad.agents import heuristics
from alphagrad.agents.heuristics import FILTERS, _Context

MODELS = st.sampled_from(graph.cost_models())
SETTINGS = settings(max_examples=30, deadline=None)
DEGREES = ("cost", "components")
#: Chains the heap runs (every chain not ending in random), compared with the filter scan.
HEAP_CHAINS = (
    "forward",
    "reverse",
    "markowitz>relative_markowitz>reverse",
    "momr>lmmd>fill_in>reverse",
    *heuristics.DEFAULT_CHAINS,
)


def reference_markowitz(g: graph.Graph, degree: str) -> list[int]:
    """The former implementation: a scan of every remaining vertex per step (O(V²) degrees)."""
    if degree == "cost":
        return scan_order(g, lambda eliminator: eliminator.markowitz_key)
    return scan_order(g, lambda eliminator: functools.partial(graph.markowitz_degree, eliminator))


def scan_order(g: graph.Graph, measure_of) -> list[int]:
    """At every step, eliminate the remaining vertex of smallest (measure(k), k), where
    ``measure = measure_of(eliminator)`` scores a vertex number in the current state."""
    eliminator = graph.Eliminator(g)
    measure = measure_of(eliminator)
    remaining = list(g.intermediates)
    order = []
    while remaining:
        best = min(remaining, key=lambda k: (measure(k), k))
        eliminator.eliminate(best)
        remaining.remove(best)
        order.append(best)
    return order


def reference_chain(g: graph.Graph, chain: str) -> tuple[list[int], int]:
    """The former heuristic loop: every filter of the chain over every remaining vertex per step."""
    filters = [FILTERS[n] for n in heuristics._parse_chain(chain)]
    ctx = _Context(g, None, 1.0)
    remaining = ctx.state.remaining
    order, total = [], 0
    while remaining:
        cands = remaining
        for f in filters:
            cands = f(ctx, cands)
            if len(cands) == 1:
                break
        total += ctx.state.eliminate(cands[0])
        remaining.remove(cands[0])
        order.append(cands[0])
    return order, total


def check_same_orders(g: graph.Graph) -> None:
    for degree in DEGREES:
        order = graph.markowitz(g, degree=degree)
        assert order == reference_markowitz(g, degree), degree
    for chain in HEAP_CHAINS:
        order, cost = heuristics.heuristic_order(g, chain)
        assert (order, cost) == reference_chain(g, chain), chain
        assert cost == graph.cost(g, order)


@functools.cache
def _generator(cost_model: str, tensor_fraction: float) -> env.RandomGraphGenerator:
    return env.RandomGraphGenerator(
        num_inputs=(1, 8), num_vertices=(2, 40), tensor_fraction=tensor_fraction, max_dim=5,
        extra_outputs=(0, 2), cost_model=cost_model,
    )


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), model=MODELS, tensor_fraction=st.sampled_from([0.0, 0.5, 1.0]))
def test_heap_orders_equal_scans_on_generated_graphs(seed, model, tensor_fraction):
    check_same_orders(_generator(model, tensor_fraction)(seed))


@SETTINGS
@given(seed=st.integers(0, 10**6), kind=st.sampled_from(["scalar", "tensor"]), statements=st.integers(2, 30),
       model=MODELS)
def test_heap_orders_equal_scans_on_traced_random_programs(seed, kind, statements, model):
    task = tasks.random_program(seed, kind, num_statements=statements)
    check_same_orders(graph.trace(task.fn, *task.args, cost_model=model))


@pytest.mark.parametrize("name", graph.reference_names())
def test_heap_orders_equal_scans_on_reference_graphs(name):
    check_same_orders(graph.load_reference()[name])


@pytest.mark.parametrize("name", tasks.names())
def test_heap_orders_equal_scans_on_tasks(name):
    check_same_orders(tasks.resolve(name).graph())


def lorenz(steps: int):
    """An unrolled explicit Euler integrator of the Lorenz system (14 equations per step)."""

    def f(x, y, z, s, r, b):
        for _ in range(steps):
            x, y, z = x + 0.01 * (s * (y - x)), y + 0.01 * (x * (r - z) - y), z + 0.01 * (x * y - b * z)
        return x, y, z

    return f


def test_greedy_work_grows_with_the_edges():
    """A 2,800-vertex straight-line graph: key evaluations stay within a few per edge (the scan
    evaluated about V²/2 = 4 million)."""
    g = graph.trace(lorenz(200), *(jnp.float32(v) for v in (1.0, 1.0, 1.0, 10.0, 28.0, 2.6)))
    assert g.num_intermediates > 2500
    eliminator = graph.Eliminator(g)
    calls = 0

    def key(k):
        nonlocal calls
        calls += 1
        return eliminator.elimination_cost(k)

    order, total = eliminator.greedy(key)
    assert calls <= 4 * len(g.edges)
    assert order == graph.markowitz(g)
    assert total == graph.cost(g, order)


def test_graph_derived_sets_are_cached_and_safe():
    g = graph.load_reference()[graph.reference_names()[0]]
    first = g.intermediates
    first.append(-1)  # the caller's list is its own
    assert -1 not in g.intermediates
    assert all(g.is_output(k) for k in g.outputs)
    assert not any(g.is_output(k) for k in g.intermediates)
    assert g.num_intermediates == len(g.intermediates)


@pytest.mark.parametrize("counted", [False, True], ids=["per edge", "per edge class"])
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), model=MODELS, tensor_fraction=st.sampled_from([0.0, 0.5, 1.0]),
       data=st.data())
def test_cached_costs_updated_in_place_equal_recomputed_ones(counted, seed, model, tensor_fraction, data):
    """The engine updates cached neighbour costs by the changed terms (per edge, or per class of
    edges once `count_edge_classes` is on); they equal a fresh sum, also in a snapshot taken
    midway (copies keep their own caches and price per edge)."""
    g = _generator(model, tensor_fraction)(seed)
    order = data.draw(st.permutations(g.intermediates), label="order")
    state = graph.Eliminator(g)
    if counted:
        state.count_edge_classes()
    snapshot = None
    for n, k in enumerate(order):
        for u in state.remaining:
            state.elimination_cost(u)  # cache every cost, so every neighbour is updated in place
        state.eliminate(k)
        if n == len(order) // 2:
            snapshot = state.copy()
        for s in (state, snapshot):
            if s is None:
                continue
            for u in s.remaining:
                node = g.num_inputs + u
                assert s.elimination_cost(u) == s._cost_with(node, s.preds[node], s.succs[node])
                per_edge = graph.Eliminator.copy(s)  # copies price per edge
                assert s.edge_classes(u) == per_edge.edge_classes(u)  # counted == recounted
                assert s.neighbour_change(u) == per_edge.neighbour_change(u)


def brute_force_markowitz(g: graph.Graph) -> list[int]:
    """Markowitz (degree "cost") from first principles: at every step every remaining vertex is
    priced by summing `CostModel.pair_cost` over its current edges (no cached or counted costs),
    a free one by its number of products."""
    model = graph.cost_model(g.cost_model)

    def pricer(state: graph.Eliminator):
        src, dst = state.src_shape, state.dst_shape

        def price(k: int) -> tuple[int, int]:
            node = g.num_inputs + k
            cost = sum(model.pair_cost(ic, oc, dst[c], src[node], src[p])
                       for c, oc in state.succs[node].items() for p, ic in state.preds[node].items())
            return cost, 0 if cost else len(state.preds[node]) * len(state.succs[node])

        return price

    return scan_order(g, pricer)


def ring(steps: int, size: int = 6):
    """A ring of `size` FitzHugh-Nagumo oscillators, explicit Euler, jnp.roll coupling: a tensor
    program whose Markowitz order fills in (the vector form of benchmarks/scale.py, small)."""

    def f(v, w, a, b, eps, k):
        for _ in range(steps):
            dv = v - v * v * v / 3.0 - w + k * (jnp.roll(v, 1) + jnp.roll(v, -1) - 2.0 * v)
            v, w = v + 0.05 * dv, w + 0.05 * eps * (v + a - b * w)
        return v, w

    return f


RING_ARGS = (jnp.linspace(-1.0, 1.0, 6), jnp.linspace(-0.5, 0.5, 6)) + tuple(jnp.float32(p) for p in (0.7, 0.8, 0.08, 0.1))


@pytest.mark.parametrize("model", graph.cost_models())
def test_markowitz_equals_first_principles_on_a_filling_tensor_program(model):
    """The counted (per edge class) Markowitz gives the order of pricing every vertex from its
    edges at every step, on a tensor program where fill-in gives vertices dozens of edges."""
    g = graph.jacobian_graph(ring(12), *RING_ARGS, argnums=tuple(range(6)), cost_model=model)
    order = graph.markowitz(g)
    assert order == brute_force_markowitz(g)
    assert graph.cost(g, order) == sum(s.cost for s in graph.plan(g, order))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), model=MODELS, tensor_fraction=st.sampled_from([0.0, 0.5, 1.0]),
       inputs=st.sampled_from([(1, 3), (8, 32)]))
def test_markowitz_equals_first_principles_on_generated_graphs(seed, model, tensor_fraction, inputs):
    gen = env.RandomGraphGenerator(num_inputs=inputs, num_vertices=(20, 80), tensor_fraction=tensor_fraction,
                                   max_dim=5, cost_model=model)
    g = gen(seed)
    assert graph.markowitz(g) == brute_force_markowitz(g)


@pytest.mark.parametrize("name", tasks.names())
def test_markowitz_equals_first_principles_on_tasks(name):
    g = tasks.resolve(name).graph()
    assert graph.markowitz(g) == brute_force_markowitz(g)
