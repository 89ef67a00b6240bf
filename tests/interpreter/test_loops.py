"""Loops through the interpreter: exact Jacobians and counted multiplications in every order, for scans
and fori_loops unrolled into the graph and for those kept as one dense vertex (above the threshold, or
by the unrolling rule; tests/interpreter/test_corpus.py runs the corpus's loops under the rule)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.graph import _loops
from alphagrad.interpreter import _jacobian, _structured

RNG = np.random.default_rng(3)


def rnn(w, c, xs):
    """Carry, per-step inputs, stacked outputs and a constant (w) entering every step."""
    return jax.lax.scan(lambda h, x: (jnp.tanh(w @ h + x), jnp.sum(h * h)), c, xs)


def reverse_scan(c, xs):
    final, ys = jax.lax.scan(lambda h, x: (h * jnp.sin(x) + 0.1, h + x), c, xs, reverse=True)
    return final, ys


def fori_integrator(state, k):
    """Explicit Euler steps with static bounds; x[i] picks a per-step coefficient."""
    return jax.lax.fori_loop(0, 3, lambda i, s: s + 0.1 * k[i] * jnp.cos(s[::-1]), state)


def nested(x, w):
    def outer(c, _):
        inner = jax.lax.scan(lambda d, _: (jnp.sin(d * w), None), c, None, length=3)[0]
        return inner + x, jnp.sum(inner)

    return jax.lax.scan(outer, x, None, length=2)


def long_rnn(w, c, xs):
    """A scan above the unrolling threshold: one dense vertex per output."""
    return jax.lax.scan(lambda h, x: (jnp.tanh(w * h + x), h[0]), c, xs)


CASES = {
    "rnn": (rnn, (RNG.normal(size=(3, 3)) / 3, RNG.normal(size=3), RNG.normal(size=(2, 3))), (0, 1, 2)),
    "reverse_scan": (reverse_scan, (RNG.normal(size=2), RNG.normal(size=(3, 2))), (0, 1)),
    "fori_integrator": (fori_integrator, (RNG.normal(size=3), RNG.normal(size=4)), (0, 1)),
    "nested": (nested, (RNG.normal(size=2), RNG.normal(size=2)), (0, 1)),
    "long_rnn": (long_rnn, (RNG.normal(size=2), RNG.normal(size=2), RNG.normal(size=(90, 2)) / 10), (0, 1, 2)),
}


def mapped(w, xs):
    """lax.map: a scan without carries."""
    return jax.lax.map(lambda x: jnp.sin(x) * w, xs)


def shared_operand(w, xs):
    """The same array is the initial carry and a constant of every step."""
    return jax.lax.scan(lambda c, x: (c * w + jnp.sin(x), c), w, xs)


def decay(h, xs):
    """No stacked outputs and many per-step inputs: the reverse chain is cheaper."""
    return jax.lax.scan(lambda c, x: (jnp.tanh(c * x), None), h, xs)[0]


def mixed_scan(w, h, xs):
    """A reverse scan with a constant, a differentiated carry, a float carry that is not (its start is
    a constant), an integer carry, per-step inputs and two stacked outputs (one integer)."""

    def step(c, x):
        h, g, i = c
        h = jnp.tanh(w @ h + x[0] * g)
        g = g * jnp.cos(x[1]) + 0.1 * jnp.sum(h)
        return (h, g, i + 1), (h[:2] * g, i)

    return jax.lax.scan(step, (h, jnp.asarray(0.5, h.dtype), 0), xs, reverse=True)


def reverse_history(h, w):
    """A reverse scan without per-step inputs: its chain runs forward with its iterations (stacked
    outputs in reverse order)."""
    return jax.lax.scan(lambda c, _: (jnp.sin(c) * w, c[0] * c[1]), h, None, length=4, reverse=True)


#: Loops kept as loops (the unrolling threshold set to 0): name -> (f, args, argnums, chain mode).
KEPT = {
    "rnn": (*CASES["rnn"], "forward"),
    "fori_integrator": (*CASES["fori_integrator"], "forward"),
    "nested": (*CASES["nested"], "forward"),
    "mapped": (mapped, (RNG.normal(size=2), RNG.normal(size=(3, 2))), (0, 1), "forward"),
    "shared_operand": (shared_operand, (RNG.normal(size=2), RNG.normal(size=(3, 2))), (0, 1), "forward"),
    "decay": (decay, (RNG.normal(size=2), RNG.normal(size=(5, 2))), (0, 1), "reverse"),
    "reverse_history": (reverse_history, (RNG.normal(size=2), RNG.normal(size=2)), (0, 1), "forward"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loop_jacobians_are_exact_and_counted_in_every_order(name, monkeypatch):
    monkeypatch.setattr(_loops, "UNROLL_ADVANTAGE", math.inf)  # every loop that fits unrolled
    f, args, argnums = CASES[name]
    g = check_exact_and_counted(f, args, argnums)
    unrolled = not any(v.primitive.startswith("scan") for v in g.vertices)
    assert unrolled == (name != "long_rnn"), [v.primitive for v in g.vertices]


@pytest.mark.parametrize("name", sorted(KEPT))
def test_loops_kept_as_loops_chain_their_local_jacobians(name, monkeypatch):
    monkeypatch.setattr(_loops, "UNROLL_MAX_EQUATIONS", 0)
    monkeypatch.setattr(_loops, "CHAIN_ADVANTAGE", 0.0)  # the chain wherever it applies
    f, args, argnums, mode = KEPT[name]
    g = check_exact_and_counted(f, args, argnums)
    plans = [e.loop for e in g.program.equations if e.loop is not None]
    assert [p.mode for p in plans] == [mode]
    # the loop's partials: counted as performed, the same in every order, outside graph.cost
    assert _loops.partial_muls(g) == plans[0].muls > 0
    with jax.enable_x64(True):
        counter = _structured.MultiplicationCounter()
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        jax.eval_shape(lambda *xs: _jacobian._eliminate_all(g, steps, list(xs), counter)[0],
                       *(jnp.asarray(a, jnp.float64) for a in args))
    assert counter.loops == plans[0].muls and counter.total == graph.cost(g, "reverse")


def test_a_value_returned_twice_has_its_jacobian_in_both_places():
    def twice(x):
        y = x * x
        return (y,), (y,)

    g = interpreter.graph_of(twice, 3.0)
    assert [v.primitive for v in g.vertices] == ["mul", "copy", "copy"] and g.outputs == (2, 3)
    assert interpreter.jacobian(twice, "forward")(3.0) == ((6.0,), (6.0,))


def test_a_kept_loop_whose_stacked_output_is_its_carry(monkeypatch):
    monkeypatch.setattr(_loops, "UNROLL_MAX_EQUATIONS", 0)
    monkeypatch.setattr(_loops, "CHAIN_ADVANTAGE", 0.0)

    def recorded(y0, b):
        def step(c, _):
            c = (c[0] * b + c[1], c[1] * c[0])
            return c, c[1]  # the same value is a carry and a stacked output of the body

        return jax.lax.scan(step, (y0[0], y0[1]), None, length=3)[1]

    check_exact_and_counted(recorded, (np.array([0.5, 0.7]), np.array(1.3)), (0, 1))


def test_a_loop_output_that_the_caller_drops_is_left_out_of_its_partials(monkeypatch):
    # flax's nn.RNN returns its scan's final carry from a jitted (inlined) call whose caller drops it:
    # the carry's vertex has no out-edge, and the whole loop's VJP pulls back only the 6 rows of the
    # stacked outputs (2 steps of 3 entries), not also the 4 of the carry (36 columns: by rows)
    monkeypatch.setattr(_loops, "UNROLL_MAX_EQUATIONS", 0)

    def f(w, u, h0):
        @jax.jit
        def run(w, u, h):
            def step(h, _):
                h = jnp.tanh(w @ h + u @ jnp.sin(h))
                return h, h[:3]

            return jax.lax.scan(step, h, None, length=2)

        return run(w, u, h0)[1]

    args = (RNG.normal(size=(4, 4)) / 3, RNG.normal(size=(4, 4)) / 3, RNG.normal(size=4))
    g = check_exact_and_counted(f, args, (0, 1, 2))
    assert [e.loop.mode for e in g.program.equations if e.loop is not None] == ["whole"]
    read = _jacobian._read_nodes(g)
    dropped = [v for v in g.vertices if g.node_id(v.number) not in read]
    assert [v.primitive for v in dropped] == ["scan[0]"]

    def axes(jaxpr) -> set[int]:
        found = {d for e in jaxpr.eqns for v in e.outvars for d in getattr(v.aval, "shape", ())}
        for e in jaxpr.eqns:
            for sub in jax.extend.core.jaxprs_in_params(e.params):
                found |= axes(sub)
        return found

    def rows_pulled_back() -> set[int]:
        jaxpr = jax.make_jaxpr(interpreter.jacobian(f, "reverse", argnums=(0, 1, 2)))(*args).jaxpr
        return axes(jaxpr) & {6, 10}

    assert rows_pulled_back() == {6}
    monkeypatch.setattr(_jacobian, "_read_nodes", lambda graph: {e.src for e in graph.edges} | set(range(99)))
    assert rows_pulled_back() == {6, 10}  # the dropped carry's rows too, where every node counts as read


def check_exact_and_counted(f, args, argnums):
    """jacobian(f, o) == jax.jacfwd(f) (1e-10 relative, float64) and count_muls == graph.cost for forward,
    reverse, Markowitz and a random order, compiled in one jit; returns the graph."""
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in args)
        g = interpreter.graph_of(f, *args, argnums=argnums)
        orders = ["forward", "reverse", "markowitz",
                  [int(v) for v in np.random.default_rng(0).permutation(g.intermediates)]]

        @jax.jit
        def reference_and_all_orders(*xs):
            return (jax.jacfwd(f, argnums=argnums)(*xs),
                    [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in orders])

        expected, jacobians = reference_and_all_orders(*args)
        for order, jac in zip(orders, jacobians):
            label = order if isinstance(order, str) else "random"
            assert jax.tree.structure(jac) == jax.tree.structure(expected), label
            for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12, err_msg=label)
            assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order), label
    return g


def test_a_loop_kept_whole_has_its_small_sums_written_out(monkeypatch):
    monkeypatch.setattr(_loops, "UNROLL_MAX_EQUATIONS", 0)

    def f(w, c):
        def step(h, _):
            inner = jax.lax.scan(lambda d, _: (jnp.sin(d) * jnp.sum(d * d), None), h, None, length=2)[0]
            return jnp.tanh(w @ inner), jnp.sum(h * inner)

        return jax.lax.scan(step, c, None, length=3)

    with jax.enable_x64(True):
        args = (jnp.asarray(RNG.normal(size=(3, 3)) / 3), jnp.asarray(RNG.normal(size=3)))
        g = interpreter.graph_of(f, *args, argnums=(0, 1))
        eqn = next(e for e in g.program.equations if e.loop is not None)
        assert eqn.loop.mode == "whole" and _loops.partial_muls(g) == 0  # JAX's products, not counted
        jac, expected = jax.jit(lambda *xs: (interpreter.jacobian(f, "reverse", argnums=(0, 1))(*xs),
                                             jax.jacfwd(f, argnums=(0, 1))(*xs)))(*args)
        for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
        fused = interpreter._loops.fused_body(eqn.params["jaxpr"])

    def primitives(jaxpr):
        inner = [primitives(e.params["jaxpr"].jaxpr) for e in jaxpr.eqns if e.primitive.name == "scan"]
        return {e.primitive.name for e in jaxpr.eqns}.union(*inner)

    assert "reduce_sum" in primitives(eqn.params["jaxpr"].jaxpr)
    assert "reduce_sum" not in primitives(fused.jaxpr)  # in the inner loop too (w @ inner, a matrix-vector
    # product, keeps its dot_general: `_structured.contract` fuses matrix-matrix products only)


def test_a_reverse_scan_whose_chain_is_split_between_forward_and_reverse(monkeypatch):
    # mixed_scan over 6 steps, w fixed: n = 4 float carries (3 differentiated), q = 2, m = 2; the
    # cheapest bracketing splits the chain at step 3 (forward over 3 steps, reverse over 3, meeting
    # at the carry): 1,728 multiplications against 2,160 forward and 2,304 reverse (taken here
    # without the margin a bracketed multiplication needs to run faster)
    monkeypatch.setattr(_loops, "UNROLL_MAX_EQUATIONS", 0)
    monkeypatch.setattr(_loops, "CHAIN_ADVANTAGE", 0.0)
    monkeypatch.setattr(_loops, "BRACKETED_ADVANTAGE", {"forward": 1.0, "reverse": 1.0})
    w = RNG.normal(size=(3, 3)) / 3
    f = lambda h, xs: mixed_scan(w, h, xs)  # noqa: E731
    with jax.enable_x64(True):
        args = (jnp.asarray(RNG.normal(size=3)), jnp.asarray(RNG.normal(size=(6, 2))))
        g = interpreter.graph_of(f, *args, argnums=(0, 1))
        (plan,) = [e.loop for e in g.program.equations if e.loop is not None]
        assert (plan.mode, plan.levels, plan.chain_muls) == ("bracketed", ((6, 3),), 1728)
        jac, expected = jax.jit(lambda *xs: (interpreter.jacobian(f, "reverse", argnums=(0, 1))(*xs),
                                             jax.jacfwd(f, argnums=(0, 1))(*xs)))(*args)
        for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    # the interpreter raises where it performs another count than `partial_muls`'s
    assert _loops.partial_muls(g) == plan.muls == 6 * plan.body_muls + 1728


def chain_reference(blocks, columns, reverse):
    """The loop's Jacobian from its stacked blocks by a plain forward recurrence in NumPy (float64)."""
    A, E, B, GA, GE, GB = (np.asarray(b, np.float64) for b in blocks)
    length, n, p, m, q, c = A.shape[0], A.shape[1], E.shape[2], B.shape[2], GA.shape[1], len(columns)
    T = np.zeros((n, c + p + length * m))
    T[columns, np.arange(c)] = 1.0
    Y = np.zeros((length, q, T.shape[1]))
    for k in (reversed(range(length)) if reverse else range(length)):
        local = np.zeros_like(T[:1].repeat(n + q, 0))
        local[:, c : c + p] = np.concatenate([E[k], GE[k]])
        local[:, c + p + k * m : c + p + (k + 1) * m] = np.concatenate([B[k], GB[k]])
        Y[k] = GA[k] @ T + local[n:]
        T = A[k] @ T + local[:n]
    return np.concatenate([T, Y.reshape(length * q, T.shape[1])])


def test_the_chain_is_exact_and_counted_in_every_kind_of_level():
    # runs all forward under a split top level (a forward scan), runs all reverse under a split top
    # level (a reverse scan); one level all forward or all reverse: the KEPT loops above, split: the
    # reverse scan above. Random blocks of a 6-step loop: n = 3 carries of which 2 differentiated,
    # q = 2 outputs, p = 2 constants, m = 1 input per step.
    cases = (((3, 3), (2, 1)), False), (((2, 0), (3, 2)), True)
    rng = np.random.default_rng(5)
    shapes = [(6, 3, 3), (6, 3, 2), (6, 3, 1), (6, 2, 3), (6, 2, 2), (6, 2, 1)]
    blocks = tuple(rng.normal(size=shape) for shape in shapes)
    columns = np.array([2, 0])
    with jax.enable_x64(True):
        counts = []

        @jax.jit
        def all_cases(*b):  # one compilation (run eagerly, each small op compiles alone)
            results = [interpreter._loops.chain_jacobian(b, levels, columns, reverse) for levels, reverse in cases]
            counts.extend(muls for _, muls in results)
            return [J for J, _ in results]

        for (levels, reverse), J in zip(cases, all_cases(*blocks)):
            np.testing.assert_allclose(np.asarray(J), chain_reference(blocks, columns, reverse), rtol=1e-10, atol=1e-12)
    assert counts == [_loops.bracketing_muls(levels, 6, n=3, q=2, carry_columns=2, p=2, m=1) for levels, _ in cases]


def test_stacked_outputs_summed_inside_the_loop_are_exact(monkeypatch):
    """`graph._loops.fold_step_sums` (forced on a short scan): a mean of squared misfits to data
    per step and a sum over the steps of a reverse scan, accumulated in extra carries; the stacked
    output also read elsewhere stays stacked."""
    monkeypatch.setattr(_loops, "FOLD_STEP_SUMS_MIN_ENTRIES", 0)
    data = RNG.normal(size=4)

    def f(c, xs):
        final, (states, weighted) = jax.lax.scan(
            lambda h, x: (h * jnp.cos(x[0]), (h * x[1], h[0] * x[1])), c, xs, reverse=True)
        return final, jnp.mean(0.5 * (weighted - data) ** 2), jnp.sum(states, axis=0) + states[2]

    check_exact_and_counted(f, (RNG.normal(size=2), RNG.normal(size=(4, 2))), (0, 1))


def test_loops_fused_with_what_feeds_and_reads_their_stacked_outputs_are_exact(monkeypatch):
    """`graph._loops.fuse_large_spans` (forced on a short scan): the forcing computed from a
    parameter, the scan and the stacked outputs' readers (a weighted sum, a maximum, a slice) become
    one dense vertex; the final carry is read apart."""
    monkeypatch.setattr(_loops, "FOLD_STEP_SUMS_MIN_ENTRIES", 0)
    weights = RNG.normal(size=6)

    def f(p, c):
        ts = jnp.arange(6) * 0.3
        final, ys = jax.lax.scan(lambda h, x: (h * jnp.cos(x) + 0.1 * c, h[0] * h[1] * x), p[1:], jnp.sin(p[0] * ts))
        return ys @ weights + jnp.max(ys), ys[::2], jnp.tanh(final)

    g = graph.jacobian_graph(f, RNG.normal(size=3), RNG.normal(size=2), argnums=(0, 1))
    assert any(v.primitive.startswith("large_span") for v in g.vertices)
    check_exact_and_counted(f, (RNG.normal(size=3), RNG.normal(size=2)), (0, 1))


def test_long_programs_run_fused_spans_on_the_tape(monkeypatch):
    """A long program (the tape's class) holding a large span (a scan fused with what feeds and reads its stacked values) and a span of complex arithmetic:
    both calls are bound whole by the tape (not the straight-line path, whose compilation grows
    quadratically with the program), exact and counted."""
    from alphagrad.graph import _trace
    from alphagrad.interpreter import _tape

    monkeypatch.setattr(_loops, "FOLD_STEP_SUMS_MIN_ENTRIES", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)

    def f(p):
        smooth = jnp.fft.irfft(jnp.fft.rfft(p * p) * jnp.array([1.0, 0.5, 0.25]), n=4)
        _, ys = jax.lax.scan(lambda h, x: (h * jnp.cos(x) + 0.1, h * x), p[0], jnp.sin(p[1] * jnp.arange(5.0)))
        return jnp.max(ys) * smooth + ys[::2].sum()

    with jax.enable_x64(True):
        p = jnp.asarray(RNG.normal(size=4))
        g = interpreter.graph_of(f, p)
        assert {v.primitive.split("[")[0] for v in g.vertices if "span" in v.primitive} == {"complex_span", "large_span"}
        order = graph.resolve_order(g, "reverse")
        assert _tape.build(g, graph.plan(g, order)).muls == graph.cost(g, order)
        np.testing.assert_allclose(np.asarray(jax.jit(interpreter.jacobian(f, "reverse"))(p)),
                                   np.asarray(jax.jacfwd(f)(p)), rtol=1e-10, atol=1e-12)


def test_equations_with_large_dense_partials_fused_with_their_neighbours_are_exact(monkeypatch):
    """`graph._loops.fuse_large_spans` (forced on small arrays): a cumprod and a convolution with
    the equations computing and reading their values as one dense vertex each."""
    monkeypatch.setattr(_loops, "DENSE_SPAN_MIN_ENTRIES", 16)

    def f(u, k):
        grown = jnp.cumprod(1 + 0.1 * jnp.sin(u))
        smooth = jnp.convolve(u * k[0], k, mode="same")
        return jnp.stack([grown[-1], grown[2], jnp.max(smooth)]), jnp.tanh(u[:2])

    g = graph.jacobian_graph(f, RNG.normal(size=8), RNG.normal(size=3), argnums=(0, 1))
    assert any(v.primitive.startswith("large_span") for v in g.vertices)
    check_exact_and_counted(f, (RNG.normal(size=8), RNG.normal(size=3)), (0, 1))


def test_a_large_span_before_a_scalar_output_is_one_span_with_its_tail():
    """A large span whose outputs reach only a scalar loss (a CNN's convolutions and dense layer, then
    the squared error) is fused with that tail (`_loops.narrow_tail_span`, as a kept loop is): its
    partial is one VJP row, as jax.jacrev runs, where the span alone had a row per entry of its
    output (the wide CNN of session 26: 40 rows, 7-35x slower than jax.jacrev; 1-2x after)."""
    def f(u):
        smooth = jnp.convolve(u * u, jnp.array([1.0, -2.0, 1.0]), mode="same")[::512]  # a span of 8 outputs
        return jnp.sum(jnp.tanh(smooth) ** 2)

    u = jnp.linspace(0.0, 1.0, 4096)
    g = graph.jacobian_graph(f, u)
    assert [v.primitive for v in g.vertices] == ["large_span"]  # the span is the whole function
    with jax.enable_x64(True):  # (one program: ours and jax.jacrev's)
        ours, expected = jax.jit(lambda u: (interpreter.jacobian(f, "reverse")(u), jax.jacrev(f)(u)))(
            jnp.linspace(0.0, 1.0, 4096, dtype=jnp.float64))
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
