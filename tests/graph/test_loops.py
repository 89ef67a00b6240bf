"""Loops in `graph.trace`: small scans and fori_loops unrolled as a Python loop would be where that
costs no more than keeping the loop whole, the others kept."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, tasks
from alphagrad.graph import _loops, _trace


@pytest.fixture
def unrolled(monkeypatch):
    """Every scan that fits under `UNROLL_MAX_EQUATIONS` unrolled, whatever it costs."""
    monkeypatch.setattr(_loops, "UNROLL_ADVANTAGE", math.inf)


def cell(c, x):
    h = jnp.tanh(c * x + 1.0)
    return h, h * c


def scanned(c, xs):
    return jax.lax.scan(cell, c, xs)


def python_loop(c, xs):
    ys = []
    for k in range(xs.shape[0]):
        c, y = cell(c, xs[k])
        ys.append(y)
    return c, jnp.stack(ys)


def test_a_small_scan_is_the_graph_of_the_python_loop(unrolled):
    c, xs = jnp.ones(3), jnp.ones((4, 3))
    g, expected = graph.trace(scanned, c, xs), graph.trace(python_loop, c, xs)
    assert [v.primitive for v in g.vertices] == [v.primitive for v in expected.vertices]
    assert g.fingerprint == expected.fingerprint
    assert "scan" not in {v.primitive for v in g.vertices}
    for order in ("forward", "reverse", "markowitz"):
        assert graph.cost(g, order) == graph.cost(expected, order)


def test_a_reverse_scan_runs_the_iterations_backwards_and_stacks_in_place(unrolled):
    def backwards(c, xs):
        return jax.lax.scan(cell, c, xs, reverse=True)

    def python_backwards(c, xs):
        ys = [None] * xs.shape[0]
        for k in reversed(range(xs.shape[0])):
            c, ys[k] = cell(c, xs[k])
        return c, jnp.stack(ys)

    c, xs = jnp.ones(2), jnp.ones((3, 2))
    assert graph.trace(backwards, c, xs).fingerprint == graph.trace(python_backwards, c, xs).fingerprint


def test_fori_loop_counters_and_index_arithmetic_are_folded(unrolled):
    def f(x):
        return jax.lax.fori_loop(0, 3, lambda i, c: c * jnp.sin(x[i]), x)

    g = graph.trace(f, jnp.ones(4))
    primitives = [v.primitive for v in g.vertices]
    # per iteration: x[i] at a known i (a dynamic_slice and a squeeze), sin, mul; no integer vertices
    assert primitives == ["dynamic_slice", "squeeze", "sin", "mul"] * 3
    assert graph.cost(g, "forward") == graph.cost(graph.trace(python_fori, jnp.ones(4)), "forward")


def python_fori(x):
    c = x
    for i in range(3):
        c = c * jnp.sin(x[i])
    return c


def test_consts_a_length_without_xs_and_nested_loops(unrolled):
    def f(x, w):
        def outer(c, _):
            inner = jax.lax.scan(lambda d, _: (jnp.sin(d * w), None), c, None, length=2)[0]
            return inner + x, None

        return jax.lax.scan(outer, x, None, length=3)[0]

    g = graph.trace(f, jnp.ones(2), jnp.ones(2))
    assert [v.primitive for v in g.vertices] == ["mul", "sin", "mul", "sin", "add"] * 3
    assert not any(e.code == 1 for e in g.edges)


def test_a_loop_above_the_threshold_stays_one_dense_vertex(unrolled, monkeypatch):
    def f(c, xs):
        return jax.lax.scan(cell, c, xs)[0]

    size = _loops.UNROLL_MAX_EQUATIONS  # iterations of at least 3 equations each: too many to unroll
    # By default its partials are JAX's differentiation of the whole loop: a chain of local Jacobians
    # would not save 3/4 of its multiplications (`CHAIN_ADVANTAGE` 4).
    dense = graph.trace(f, jnp.ones(2), jnp.ones((size, 2)))
    assert dense.program.equations[0].primitive.name == "scan" and dense.program.equations[0].loop.mode == "whole"
    assert _loops.partial_muls(dense) == 0  # JAX's multiplications, not counted
    monkeypatch.setattr(_loops, "CHAIN_ADVANTAGE", 0.0)  # the chain wherever it applies
    g = graph.trace(f, jnp.ones(2), jnp.ones((size, 2)))
    assert [v.primitive for v in g.vertices] == ["scan[0]", "scan[1]"]  # the carry and the stacked ys
    assert {e.code for e in g.edges} == {1}
    # its partials: a chain of local Jacobians (carry: n = 2, ys: q = 2, xs: m = 2, sources c and xs)
    plan = g.program.equations[0].loop
    assert (plan.length, plan.float_carries, plan.carry_sources, plan.x_sources) == (size, (0,), (0,), (0,))
    chains = {mode: _loops.chain_muls(mode, size, n=2, q=2, carry_columns=2, p=0, m=2)
              for mode in ("forward", "reverse")}
    assert chains["forward"] == chains["reverse"] == size * 4 * 2 * (2 + 2 * size)  # a tie: forward
    assert (plan.mode, plan.levels, plan.chain_muls) == ("forward", ((size, size),), chains["forward"])
    # the dynamic programme's cheapest bracketing: 128 = 8 x 16, runs of 8 split at 4, then 16
    # super-steps split at 8, 2.2x fewer multiplications: too few to run faster (`BRACKETED_ADVANTAGE`)
    dims = dict(n=2, q=2, carry_columns=2, p=0, m=2)
    assert _loops.cheapest_bracketing(size, **dims) == (16 * _loops.split_muls(8, 4, **dims) + _loops.split_muls(
        16, 8, n=2, q=16, carry_columns=2, p=0, m=16), ((8, 4), (16, 8))) == (122_120, ((8, 4), (16, 8)))
    assert _loops.partial_muls(g) == size * plan.body_muls + plan.chain_muls
    assert graph.cost(g, "forward") == sum(graph.elimination_costs(g, graph.forward(g)))  # outside the cost
    small = graph.trace(f, jnp.ones(2), jnp.ones((4, 2)))
    assert "scan[0]" not in [v.primitive for v in small.vertices]


def test_the_unrolled_size_counts_nested_loops_and_calls(unrolled):
    def f(x):
        inner = lambda c: jax.lax.fori_loop(0, 4, lambda i, d: jnp.sin(d), c)  # noqa: E731
        return jax.lax.fori_loop(0, 5, lambda i, c: jax.jit(inner)(c), x)

    jaxpr = jax.make_jaxpr(f)(1.0).jaxpr
    from alphagrad.graph._trace import _INLINED

    # outer: 5 x (its counter's add + inner: 4 x (add, sin)) = 45
    assert _loops.unrolled_size(jaxpr, _INLINED) == 45
    g = graph.trace(f, 1.0)
    assert [v.primitive for v in g.vertices] == ["sin"] * 20
    np.testing.assert_equal(graph.cost(g, "forward"), 19)  # the chain of 20 diagonal scalars


def test_whole_loop_estimate_takes_the_cheaper_of_columns_and_rows():
    # 10 iterations, carry n = 2, no ys, constants p = 3, xs m = 1 per step: 2 + 3 + 10 = 15 columns
    # or 2 rows through each iteration, at the body's cost per column or per row.
    dims = dict(length=10, n=2, q=0, carry_columns=2, p=3, m=1)
    assert _loops.whole_loop_muls(column=10, row=20, **dims) == min(10 * 15 * 10, 10 * 2 * 20)
    assert _loops.whole_loop_muls(column=1, row=1000, **dims) == 10 * 15 * 1


def test_a_seed_prices_the_first_equations_products_with_the_tangents():
    # One bilinear equation: its elimination multiplies nothing, but a JVP column multiplies each
    # operand's tangent by the other operand (64 + 64 for 4 x 4 matrices), a VJP row likewise.
    g = graph.trace(lambda a, b: a @ b, jnp.ones((4, 4)), jnp.ones((4, 4)), argnums=(0, 1), cost_model="exact")
    assert [graph.cost(g, o) for o in ("forward", "reverse", "markowitz")] == [0, 0, 0]
    assert graph.cost(_loops.seeded_graph(g, "columns"), "forward") == 128
    assert graph.cost(_loops.seeded_graph(g, "rows"), "reverse") == 128
    # sin then a scaling: the elimination multiplies the two diagonals once (3); a column or a row
    # multiplies the tangent by each (3 + 3).
    g = graph.trace(lambda x: jnp.sin(x) * 2.0, jnp.ones(3), cost_model="exact")
    assert graph.cost(g, "forward") == 3
    assert graph.cost(_loops.seeded_graph(g, "columns"), "forward") == 6
    assert graph.cost(_loops.seeded_graph(g, "rows"), "reverse") == 6


#: The corpus's heat_fori (jnp.roll, index maps, beside diagonals: its unrolled products cost more than
#: JAX's whole-loop tangents) and power_iteration (its unrolled elimination beats JAX's 9 tangent
#: columns through the loop), whose numbers docs/cost-model.md quotes.
heat, power = (tasks.corpus()[name].fn for name in ("heat_fori", "power_iteration"))


def compared(monkeypatch) -> dict:
    """Records the two numbers `_loops.unrolls` compares for the (one) scan traced next."""
    seen: dict = {}
    unrolled_muls, analyse = _loops.unrolled_muls, _loops.analyse

    def record_unrolled(*args):
        return seen.setdefault("unrolled", unrolled_muls(*args))

    def record_kept(*args):
        body = analyse(*args)
        seen.setdefault("kept", body.kept_muls())
        return body

    monkeypatch.setattr(_loops, "unrolled_muls", record_unrolled)
    monkeypatch.setattr(_loops, "analyse", record_kept)
    return seen


def test_a_loop_whose_unrolled_elimination_is_cheaper_is_unrolled(monkeypatch):
    a = jnp.ones((3, 3)) + jnp.eye(3)
    seen = compared(monkeypatch)
    g = graph.trace(power, a)
    # unrolled: the cheapest elimination of the 8 iterations from s to the eigenvalue (the final v,
    # which nothing reads, is no output); kept: 8 iterations x 4 cotangent rows (the carries: v and
    # the value) at one VJP row of the body (34), fewer than its 9 tangent columns (s)
    assert seen["unrolled"] == 205 and seen["kept"] == 8 * 4 * 34
    assert not any(v.primitive.startswith("scan") for v in g.vertices)
    monkeypatch.setattr(_loops, "UNROLL_ADVANTAGE", math.inf)
    assert g.fingerprint == graph.trace(power, a).fingerprint


def test_a_loop_whose_unrolled_elimination_costs_more_stays_whole(monkeypatch):
    u, kappa = jnp.ones(6), jnp.asarray(0.1)
    seen = compared(monkeypatch)
    g = graph.trace(heat, u, kappa)
    # unrolled: forward elimination through 5 steps' diagonals and index maps; kept: 5 iterations
    # x 6 cotangent rows (the rod) at one VJP row of the body (24), fewer than its 7 tangent columns.
    # Unrolled costs 541 > 720 / 4: kept (unrolled it ran 6x slower)
    assert seen == {"unrolled": 541, "kept": 5 * 6 * 24}
    assert [v.primitive for v in g.vertices] == ["scan[1]"]  # the rod; the counter has no vertex
    assert g.program.equations[0].loop.mode == "whole"  # its partials: JAX's tangents through the whole loop
    monkeypatch.setattr(_loops, "UNROLL_ADVANTAGE", math.inf)  # forced, it is the Python loop
    forced = graph.trace(heat, u, kappa, cost_model="exact")
    assert "scan[1]" not in [v.primitive for v in forced.vertices]
    assert min(graph.cost(forced, o) for o in ("forward", "reverse", "markowitz")) == seen["unrolled"]


def test_a_loop_of_one_bilinear_equation_is_priced_by_its_tangents(monkeypatch):
    # dh_chain: 3 chained 4 x 4 matrix products, the transforms (per-step inputs) differentiated.
    # The body's elimination costs 0; keeping the loop pulls 16 + 3 x 3 cotangent rows through 3
    # iterations at 256 per row (the body computes t @ m twice, for the carry and for the frame: a
    # VJP row multiplies the cotangent by m and by t in each, 4 x 64), against 2,304 unrolled:
    # unrolled (it ran 3x faster at batch 32,768).
    dh = tasks.corpus()["dh_chain"]
    seen = compared(monkeypatch)
    g = graph.trace(dh.fn, *dh.args, argnums=dh.argnums)
    assert seen == {"unrolled": 2304, "kept": 3 * (16 + 3 * 3) * 256}
    assert not any(v.primitive.startswith("scan") for v in g.vertices)


def test_a_loop_with_nothing_differentiated_is_unrolled():
    def f(x, w):
        y = jax.lax.fori_loop(0, 3, lambda i, c: jnp.sin(c) * 2.0, jnp.ones(2))  # constant: no edges either way
        return y * x + w

    g = graph.trace(f, jnp.ones(2), jnp.ones(2), argnums=(0, 1))
    assert [v.primitive for v in g.vertices] == ["broadcast_in_dim", *["sin", "mul"] * 3, "mul", "add"]


def _factorisations(length: int):
    """Every ordered factorisation of `length` into factors > 1 (() for 1)."""
    if length == 1:
        yield ()
    for b in range(2, length + 1):
        if length % b == 0:
            yield from ((b, *rest) for rest in _factorisations(length // b))


@pytest.mark.parametrize("dims", [
    dict(length=12, n=4, q=1, carry_columns=4, p=2, m=1),  # large carry: segments and splits
    dict(length=8, n=1, q=4, carry_columns=1, p=0, m=4),  # small carry, many inputs and outputs
    dict(length=6, n=3, q=1, carry_columns=2, p=2, m=0),  # no per-step inputs: forward
    dict(length=6, n=2, q=0, carry_columns=2, p=1, m=3),  # no outputs: reverse
    dict(length=7, n=3, q=2, carry_columns=3, p=0, m=2),  # prime: one level
])
def test_the_chain_plan_is_the_cheapest_bracketing_of_equal_runs(dims):
    # brute force over every ordered factorisation of the length and every split of every level
    import itertools

    length = dims["length"]
    best = min(_loops.bracketing_muls(tuple(zip(bs, splits)), **dims)
               for bs in _factorisations(length) for splits in itertools.product(*(range(b + 1) for b in bs)))
    muls, levels = _loops.cheapest_bracketing(**dims)
    assert muls == best == _loops.bracketing_muls(levels, **dims)
    assert muls <= min(_loops.chain_muls(mode, **dims) for mode in ("forward", "reverse"))
    # the pure modes are its one-level ends
    assert _loops.bracketing_muls(((length, length),), **dims) == _loops.chain_muls("forward", **dims)
    assert _loops.bracketing_muls(((length, 0),), **dims) == _loops.chain_muls("reverse", **dims)


def test_the_chain_plan_saves_most_where_the_carry_is_large():
    # derivation in `cheapest_bracketing`: what a bracketing can save is the n^2 (carry transfer)
    # terms; the cross blocks q·n·m·L(L-1)/2 of the output itself stay
    large = dict(length=64, n=10, q=1, carry_columns=10, p=0, m=1)
    small = dict(length=64, n=1, q=8, carry_columns=1, p=0, m=8)
    for dims, ratio in ((large, 0.4), (small, 0.75)):
        pure = min(_loops.chain_muls(mode, **dims) for mode in ("forward", "reverse"))
        muls, levels = _loops.cheapest_bracketing(**dims)
        assert muls < ratio * pure and len(levels) > 1 and _loops.chain_mode(64, levels) == "bracketed"
        # taken only where it multiplies 1/5 of the forward chain and 1/2 of the reverse one
        assert _loops.chain_plan(**dims) == (pure, ((64, 64),))
    rnn = dict(length=256, n=16, q=1, carry_columns=16, p=0, m=1)  # ran 1.3x faster than forward
    assert _loops.chain_plan(**rnn) == _loops.cheapest_bracketing(**rnn) == (3_330_048, ((16, 8), (16, 8)))
    assert _loops.chain_muls("forward", **rnn) == 18_939_904
    assert _loops.chain_plan(length=1000, n=3, q=0, carry_columns=3, p=3, m=0) == (
        _loops.chain_muls("forward", 1000, 3, 0, 3, 3, 0), ((1000, 1000),))  # an integrator's final state: forward


def forced(c, xs):
    """A scan with per-step inputs and outputs; its stacked outputs summed over the steps."""
    final, (per_step, weighted) = jax.lax.scan(
        lambda h, x: (h + 0.1 * jnp.tanh(h[::-1] * x[0]), (h * x[1], h[0] * x[1])), c, xs)
    return final, jnp.mean(0.5 * weighted**2), jnp.sum(per_step, axis=0)


def test_long_scans_accumulate_stacked_outputs_that_only_a_sum_over_the_steps_reads():
    """The partial of `weighted` with respect to xs would be 3,000 x 6,000 entries as one loop
    vertex; summed inside the loop, the largest partial is that of the carries."""
    xs = jnp.asarray(RNG_FOLD.normal(size=(3000, 2)))
    g = graph.jacobian_graph(forced, jnp.ones(2), xs, argnums=(0, 1))
    largest = max(math.prod(e.out_shape) * math.prod(e.in_shape) for e in g.edges)
    assert largest <= 3 * 6000
    final_only = graph.jacobian_graph(lambda c, xs: forced(c, xs)[0], jnp.ones(2), xs, argnums=(0, 1))
    assert max(math.prod(e.out_shape) * math.prod(e.in_shape) for e in final_only.edges) <= 2 * 6000
    short = jax.make_jaxpr(forced)(jnp.ones(2), xs[:50])
    assert _loops.fold_step_sums(short) is short  # small: left as it is


def test_only_sums_over_the_step_axis_of_outputs_read_once_are_folded(monkeypatch):
    monkeypatch.setattr(_loops, "FOLD_STEP_SUMS_MIN_ENTRIES", 0)

    def carries(closed):
        return [e.params["num_carry"] for e in closed.jaxpr.eqns if e.primitive.name == "scan"]

    xs = jnp.ones((4, 2))
    assert carries(_loops.fold_step_sums(jax.make_jaxpr(forced)(jnp.ones(2), xs))) == [1 + 2]
    read_twice = lambda c, xs: (lambda ys: jnp.sum(ys[1]) + ys[1][0])(forced_ys(c, xs))  # noqa: E731
    within_steps = lambda c, xs: jnp.sum(forced_ys(c, xs)[0], axis=1)  # noqa: E731
    for f in (read_twice, within_steps):
        assert carries(_loops.fold_step_sums(jax.make_jaxpr(f)(jnp.ones(2), xs))) == [1]
    jitted = _loops.fold_step_sums(jax.make_jaxpr(jax.jit(forced))(jnp.ones(2), xs))
    assert carries(jitted.jaxpr.eqns[0].params["jaxpr"]) == [1 + 2]  # inside the jitted call


def forced_ys(c, xs):
    return jax.lax.scan(lambda h, x: (h + 0.1 * jnp.tanh(h[::-1] * x[0]), (h * x[1], h[0] * x[1])), c, xs)[1]


RNG_FOLD = np.random.default_rng(14)


def forcing_response(p, weights):
    """A scan driven by a forcing computed from a parameter, its stacked outputs read by a weighted
    sum over the steps, a maximum and a strided slice (not a plain sum: not folded)."""
    ts = jnp.arange(weights.shape[0]) * 0.01
    _, ys = jax.lax.scan(lambda h, x: (h + 0.01 * jnp.stack([h[1] + x, -jnp.sin(h[0])]), h[0] * h[1]),
                         p[1:], jnp.sin(p[0] * ts))
    return ys @ weights, jnp.max(ys), ys[:: weights.shape[0] // 5]


def test_long_scans_with_stacked_outputs_read_otherwise_become_one_vertex_with_what_feeds_and_reads_them():
    """As one loop vertex the partial of ys w.r.t. the forcing would be 3,000 x 3,000 entries; fused
    with the forcing's equations and ys's readers (`_loops.fuse_large_spans`), the vertex's partials
    are those of its outputs (7 entries) w.r.t. p (3)."""
    p = jnp.array([1.0, 0.1, 0.2])
    weights = jnp.asarray(RNG_FOLD.normal(size=3000))
    g = graph.jacobian_graph(forcing_response, p, weights, argnums=0)
    assert max(math.prod(e.out_shape) * math.prod(e.in_shape) for e in g.edges) <= 7 * 3
    assert sum(v.primitive.startswith("large_span") for v in g.vertices) == 3
    short = jax.make_jaxpr(forcing_response)(p, weights[:50]).jaxpr
    assert _loops.fuse_large_spans(short, _trace._INLINED) is short  # small: left as it is
    # The stacked values are the function's own input and output: nothing to fuse with.
    passthrough = jax.make_jaxpr(lambda xs: jax.lax.scan(lambda h, x: (h + x, h * x), 0.0, xs)[1])(weights).jaxpr
    assert _loops.fuse_large_spans(passthrough, _trace._INLINED) is passthrough


def test_equations_with_large_dense_partials_become_one_vertex_with_their_large_neighbours():
    """jnp.cumprod of 4,096 entries and a convolution of a 4,096-entry signal: their partials would
    hold 4,096^2 values; fused with the equations that compute and read their large values, the
    vertices' partials are those of the few entries read after them."""
    def f(u):
        grown = jnp.cumprod(1 + 1e-4 * jnp.sin(u))
        smooth = jnp.convolve(u * u, jnp.array([1.0, -2.0, 1.0]), mode="same")
        return jnp.stack([grown[-1], grown[7], jnp.max(smooth)])

    u = jnp.linspace(0.0, 1.0, 4096)
    g = graph.jacobian_graph(f, u)
    assert max(math.prod(e.out_shape) * math.prod(e.in_shape) for e in g.edges) <= 3 * 4096
    assert any(v.primitive.startswith("large_span") for v in g.vertices)
    small = jax.make_jaxpr(f)(u[:64]).jaxpr
    assert _loops.fuse_large_spans(small, _trace._INLINED) is small


def test_calls_the_graph_inlines_never_start_a_span():
    """jnp.roll of a 4,096-entry vector is a jitted call (an index map once inlined): 4,096^2 entries
    between its operand and result, but no dense partial, so the graph keeps every equation."""
    def f(u):
        return jnp.sum((jnp.roll(u, 1) - 2 * u + jnp.roll(u, -1)) ** 2)

    g = graph.jacobian_graph(f, jnp.linspace(0.0, 1.0, 4096))
    assert not any(v.primitive.startswith("large_span") for v in g.vertices)
    assert len(g.vertices) >= 8
