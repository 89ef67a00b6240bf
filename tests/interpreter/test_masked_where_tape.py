"""The tape discards a select's untaken case as the straight-line path does (`_discard`): no NaN
from ``jnp.where(x > 0, jnp.sqrt(x), 0)`` at x < 0 in a program long enough for the tape, in every
order, batched and under jit, where jax.jacfwd is finite (session 16: the tape had no discard)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _tape, _tape_products


@pytest.fixture
def force_tape(monkeypatch):
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)


def chained(x, p):
    """The untaken case's NaN partial passes a product and a sum before the select (a discard
    two vertices deep), beside a select whose predicate is a broadcast scalar."""
    y = jnp.sin(x) * p[0]
    root = jnp.sqrt(x) * y + y  # NaN partials at x < 0
    safe = jnp.where(x > 0, root, 0.0)
    scaled = jnp.where(p[1] > 0, jnp.log(p[1]) * x, x)  # the scalar predicate broadcast to x
    return safe * 2.0 + scaled


def safe_norm(x, p):
    """The usual safe norm: the sqrt at 0 is infinite, hidden by the inner where."""
    r2 = jnp.sum(x * x)
    r = jnp.where(r2 > 0, jnp.sqrt(jnp.where(r2 > 0, r2, 1.0)), 0.0)
    return jnp.stack([r * p[0], jnp.tanh(r) + p[1]])


def three_cases(x, p):
    """lax.select_n with an integer predicate of three cases (two of them NaN somewhere)."""
    which = jnp.where(x > 1, 2, jnp.where(x > 0, 1, 0))
    return lax.select_n(which, jnp.cos(x) * p[0], jnp.sqrt(x), jnp.log(x - 1.0)) + p[1]


def _jacfwd_and_orders(f, args, orders, argnums=0):
    """jax.jacfwd's Jacobian and every order's, compiled as one program (a compilation per order and
    jax.jacfwd op by op cost more than the checks)."""
    return jax.jit(lambda *a: (jax.jacfwd(f, argnums=argnums)(*a),
                               [interpreter.jacobian(f, order, argnums=argnums)(*a) for order in orders]))(*args)


X = np.array([0.7, -0.4, 2.5, -1.3, 1.2, 0.0])
P = np.array([1.3, 0.6])
M = np.array([[1.0, 2.0], [3.0, 4.0]])
CASES = {"chained": (chained, X), "safe_norm_zero": (safe_norm, np.zeros(4)), "safe_norm": (safe_norm, X[:4]),
         "three_cases": (three_cases, X)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tape_discards_the_untaken_case(force_tape, name):
    f, x = CASES[name]
    with jax.enable_x64(True):
        x, p = jnp.asarray(x), jnp.asarray(P)
        g = interpreter.graph_of(f, x, p, argnums=(0, 1))
        assert _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse"))).discard is not None  # it is the tape that runs
        expected, jacobians = _jacfwd_and_orders(f, (x, p), ("forward", "markowitz"), (0, 1))
        assert all(np.isfinite(e).all() for e in expected)
        for order, actual in zip(("forward", "markowitz"), jacobians):
            for a, e in zip(actual, expected):
                np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)
            assert interpreter.count_muls(f, order, x, p, argnums=(0, 1)) == graph.cost(g, order)


def test_tape_discards_per_example_under_vmap(force_tape):
    """Batched (the buffers' batch axis last), each example's predicate decides its own discard."""
    with jax.enable_x64(True):
        xs = jnp.asarray(np.stack([X, -X, np.abs(X) + 0.1]))
        p = jnp.asarray(P)
        expected, actual = jax.jit(lambda xs, p: (  # one program (vmap op by op took seconds)
            jax.vmap(jax.jacfwd(chained), in_axes=(0, None))(xs, p),
            jax.vmap(interpreter.jacobian(chained, "reverse"), in_axes=(0, None))(xs, p)))(xs, p)
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14)


def test_tape_discard_in_float32(force_tape):
    x, p = jnp.asarray(X, jnp.float32), jnp.asarray(P, jnp.float32)
    expected, [actual] = _jacfwd_and_orders(chained, (x, p), ("forward",))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def _with_dead_code(x):
    """A select whose result is never returned must not keep its case (jax.jacfwd never sees it)."""
    r = jnp.sqrt(x)
    unused = jnp.where(jnp.sum(x) < 10, jnp.sum(r), 0.0) * 2.0  # noqa: F841 - dead code, as users write it
    return jnp.where(x > 0, r, 0.0)


MOVED = {  # data moved between the untaken case's NaN partial and the select (session 16)
    "transpose": (lambda x: jnp.where(x.T > 0, jnp.sqrt(x).T, 0.0), X[:4].reshape(2, 2)),
    "broadcast": (lambda x: jnp.where(x[:, None] > 0, jnp.broadcast_to(jnp.sqrt(x)[:, None], (6, 3)), 0.0), X),
    "slice": (lambda x: jnp.where(x[:3] > 0, jnp.sqrt(x)[:3], 0.0), X),
    "concatenate": (lambda x: jnp.where(jnp.concatenate([x, x]) > 0, jnp.concatenate([jnp.sqrt(x), x]), 0.0), X),
    "gather": (lambda x: jnp.where(x[jnp.array([1, 0, 1])] > 0, jnp.sqrt(x)[jnp.array([1, 0, 1])], 0.0), X),
    "sum_behind_a_scalar_predicate": (lambda x: jnp.where(jnp.all(x > 0), jnp.sum(jnp.log(x) * x), -1.0), X),
    "dot_behind_a_scalar_predicate": (lambda x: jnp.where(jnp.all(x > 0), jnp.dot(jnp.arange(6.0), jnp.log(x)), -1.0),
                                      X),
    "matrix_product": (lambda x: jnp.where(x[:2] > 5, jnp.arange(12.0).reshape(2, 6) @ jnp.sqrt(x), 0.0), X),
    # The NaN is in the dot's partial with respect to x (log(x)), not in a partial below it.
    "dot_partial_holds_the_nan": (lambda x: jnp.where(jnp.all(x > 0), jnp.dot(x, jnp.log(x)), -1.0), X),
    "matrix_partial_holds_the_nan": (lambda x: jnp.where(x[:2] > 5, jnp.log(x).reshape(2, 3) @ x[:3], 0.0), X),
    # A value entry stands for several rows (constant along an output axis: a Kronecker tie).
    "kronecker_rows": (lambda x: jnp.where(x.reshape(3, 2).T > 5, M @ jnp.log(x.reshape(3, 2)).T, 0.0), X),
    "dead_select": (lambda x: _with_dead_code(x), X),
    "batched_matmul": (lambda x: jnp.where(x.reshape(1, 3, 2)[..., :1] > 5, jnp.einsum(
        "ijk,ilk->ijl", x.reshape(1, 3, 2), jnp.log(x.reshape(1, 3, 2))), 0.0), X),
}


#: The forms the tape also runs (its maps with run-time masks, valued patterns, row covers).
ON_THE_TAPE = ("gather", "sum_behind_a_scalar_predicate", "matrix_partial_holds_the_nan", "kronecker_rows",
               "dead_select")


@pytest.mark.parametrize("name, path", [(name, "straight_line") for name in sorted(MOVED)]
                         + [(name, "tape") for name in ON_THE_TAPE])
def test_discard_passes_through_data_movement(monkeypatch, name, path):
    """A transpose, broadcast, slice, concatenation, gather, sum, dot or matrix product between the
    NaN partial and the select, or the NaN in a product's partial itself: an entry is discarded
    where every entry that reads it is, and a value entry of a partial into it is zeroed where
    every row it stands for is discarded."""
    if path == "tape":
        monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
        monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
        monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)
    f, x = MOVED[name]
    with jax.enable_x64(True):
        x = jnp.asarray(x)
        g = interpreter.graph_of(f, x)
        if path == "tape":
            assert _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse"))).discard is not None
        expected, jacobians = _jacfwd_and_orders(f, (x,), ("forward", "reverse"))
        assert np.isfinite(expected).all()
        for order, actual in zip(("forward", "reverse"), jacobians):
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14)
            assert interpreter.count_muls(f, order, x) == graph.cost(g, order)


def _safe_step(c, x):
    return jnp.sin(jnp.where(c > 0, jnp.sqrt(c), 0.0) + x * c) * 0.9


def fori_with_where(c, xs):
    """A loop kept whole, whose dense partials are built by VJP rows (four outputs, 24 inputs)."""
    return lax.fori_loop(0, 40, lambda i, c: _safe_step(c, xs[i % 5]), c)


def test_rows_of_a_loop_with_a_where_follow_jacfwd():
    """Rows (a VJP) of a loop whose body selects give NaN where the untaken case's partial is
    infinite, as jax.jacrev does: those partials are built by columns instead, as jax.jacfwd."""
    with jax.enable_x64(True):
        c, xs = jnp.asarray([0.5, -0.3, 1.2, -0.01]), jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)
        cs = jnp.stack([c, -c])

        @jax.jit  # one program: the references, both orders and the batched Jacobians
        def all_of_them(c, xs, cs):
            return (jax.jacrev(fori_with_where)(c, xs), jax.jacfwd(fori_with_where, argnums=(0, 1))(c, xs),
                    [interpreter.jacobian(fori_with_where, order, argnums=(0, 1))(c, xs) for order in ("forward", "reverse")],
                    jax.vmap(interpreter.jacobian(fori_with_where, "reverse"), in_axes=(0, None))(cs, xs),
                    jax.vmap(jax.jacfwd(fori_with_where), in_axes=(0, None))(cs, xs))

        by_rows, expected, jacobians, batched, batched_expected = all_of_them(c, xs, cs)
        assert np.isnan(by_rows).any()
        for actual in jacobians:
            for a, e in zip(actual, expected):
                np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batched, batched_expected, rtol=1e-12, atol=1e-14)


_RANDOM_STEPS = (
    lambda a, b: jnp.where(a > 0, jnp.sqrt(a), 0.0),
    lambda a, b: jnp.where(a > b, jnp.log(a) * b, a - b),
    lambda a, b: jnp.where(jnp.all(a > 0), jnp.sum(jnp.log(a)) * jnp.ones_like(b), b),
    lambda a, b: jnp.where(a[::-1] > 0.1, jnp.sqrt(a)[::-1], a),
    lambda a, b: a * b + jnp.sin(a),
    lambda a, b: jnp.where(a > 0, a, 0.0) + jnp.sqrt(jnp.abs(b) + 1.0),
    lambda a, b: jnp.dot(a, jnp.log(jnp.abs(b) + 0.5)) * a,
    lambda a, b: jnp.where(a > 0, jnp.sqrt(a), 1.0) + jnp.where(b > 0, jnp.sqrt(a) * 0, 0.0),
    lambda a, b: jnp.where(a > 0, jnp.concatenate([jnp.sqrt(a)[:2], a[2:]]), b),
    lambda a, b: jnp.cumsum(jnp.where(a > 0, jnp.sqrt(a), 0.0)),
    lambda a, b: jnp.where(jnp.sum(a) > 0, jnp.outer(jnp.log(a), b).sum(0), a),
    lambda a, b: jnp.maximum(a, b) * jnp.where(b > -0.2, jnp.log(b + 0.2), 1.0),
    lambda a, b: jax.nn.relu(a) * jnp.where(a > 0, 1.0 / a, 0.0),
    lambda a, b: jnp.where(a > 0.3, jnp.arcsin(jnp.clip(a, -2, 2) / 2), jnp.sqrt(a) * 0 + b),
)


def _random_where_program(seed):
    """4-11 random steps over earlier values, most of them selects hiding NaN partials; unread
    values are dead code."""
    def f(x, y):
        rng = np.random.default_rng(seed)
        values = [x, y, x[::-1] * 0.5, jnp.tanh(y)]
        for _ in range(rng.integers(4, 12)):
            a, b = values[rng.integers(len(values))], values[rng.integers(len(values))]
            values.append(_RANDOM_STEPS[rng.integers(len(_RANDOM_STEPS))](a, b))
        return values[-1] + 0.1 * values[-2], jnp.sum(values[-3])
    return f


@pytest.mark.parametrize("seed", [3, 13, 20, 22])  # NaN at session 16's start, finite jacfwd
def test_random_where_programs_follow_jacfwd(seed):
    f = _random_where_program(seed)
    rng = np.random.default_rng(1000 + seed)
    with jax.enable_x64(True):
        x, y = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=5))
        expected, jacobians = _jacfwd_and_orders(f, (x, y), ("forward", "reverse"), (0, 1))
        assert all(np.isfinite(e).all() for e in jax.tree.leaves(expected))
        for actual in jacobians:
            for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
                np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-11)


def _masked_columns_after_pole(x, p):
    """A zero row's sqrt pole broadcast into columns that a constant mask then replaces by 0."""
    columns = jnp.array([True, True, True, False])
    return jnp.where(columns[None], jnp.sqrt(jnp.sum(x ** 2, 1, keepdims=True)) * p[0] * jnp.ones((1, 4)), 0.0)


def _masked_by_an_argument(x, p, columns):
    """The same with the mask an argument (not differentiated: known only at run time)."""
    return jnp.where(columns[None], jnp.sqrt(jnp.sum(x ** 2, 1, keepdims=True)) * p[0] * jnp.ones((1, 4)), 0.0)


def _masked_rank3(x, p):
    """Rank 3: a zero slice's norm over the last axis, broadcast along it and masked there, then
    summed with a product of the masked value (two paths into the select's case)."""
    mask = jnp.array([False, True, False, True])
    r = jnp.sqrt(jnp.sum(x * x, 2, keepdims=True)) * jnp.ones((1, 1, 4))
    return jnp.where(mask[None, None], r * p[1], jnp.tanh(p[0])) * (1.0 + 0.5 * x[..., :1])


_X2 = np.concatenate([np.array([[0.3, -1.2, 0.5], [0.8, 0.1, -0.4]]), np.zeros((1, 3))])
_X3 = np.concatenate([np.linspace(-1.0, 1.0, 9).reshape(1, 3, 3), np.zeros((1, 3, 3))]).copy()
_X3[0, 1] = 0.0  # a zero row beside non-zero ones in the first slice too
ORDERS = ("forward", "reverse", "markowitz")
POLE_CASES = {
    "constant_mask": (_masked_columns_after_pole, (_X2, P)),
    "mask_argument": (_masked_by_an_argument, (_X2, P, np.array([True, False, True, False]))),
    "rank3": (_masked_rank3, (_X3, P)),
}


def _on_the_tape(monkeypatch):
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)


def _same_nan_and_values(actual, straight, expected):
    """Finite wherever jax.jacfwd is; NaN exactly where the straight-line path in reverse order
    is (`straight`: jax.jacfwd's NaN where a taken entry reads the pole; not where the pole meets
    a structural zero, which the tape keeps 0 in every order); elsewhere jax.jacfwd's values."""
    assert any(np.isnan(s).any() for s in straight)  # a taken entry reads the pole
    for a, s, e in zip(actual, straight, expected):
        a, s, e = np.asarray(a), np.asarray(s), np.asarray(e)
        assert not np.any(np.isnan(a) & np.isfinite(e))
        np.testing.assert_array_equal(np.isnan(a), np.isnan(s))
        assert np.all(np.isnan(e)[np.isnan(s)])
        finite = np.isfinite(e)
        np.testing.assert_allclose(a[finite], e[finite], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a[~finite & ~np.isnan(a)], s[~finite & ~np.isnan(a)], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(POLE_CASES))
def test_tape_keeps_a_selected_constant_after_a_pole_finite(monkeypatch, name):
    """A select's untaken entries met by a NaN from further up (sqrt of a zero row's sum of
    squares, broadcast into columns a mask replaces): jax.jacfwd is finite there, and NaN where a
    taken entry reads the pole. The tape keeps both (the discard's zeroed entries as a run-time
    support of the products that read them), under jit and with count_muls the plan's cost."""
    f, args = POLE_CASES[name]
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in args)
        argnums = (0, 1)
        expected, [straight] = _jacfwd_and_orders(f, args, ("reverse",), argnums)
        _on_the_tape(monkeypatch)
        g = interpreter.graph_of(f, *args, argnums=argnums)
        for order in ORDERS:
            assert _tape.build(g, graph.plan(g, graph.resolve_order(g, order))).discard is not None
        # Every order on the tape, compiled as one program.
        jacobians = jax.jit(lambda *a: [interpreter.jacobian(f, order, argnums=argnums)(*a) for order in ORDERS])(*args)
        for order, actual in zip(ORDERS, jacobians):
            _same_nan_and_values(actual, straight, expected)
            assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)


def test_tape_keeps_a_selected_constant_after_a_pole_under_vmap(monkeypatch):
    """Batched, each example's mask and zero rows decide its own support."""
    with jax.enable_x64(True):
        xs = jnp.asarray(np.stack([_X2, _X2[::-1], np.zeros_like(_X2)]))
        masks = jnp.asarray(np.array([[True, False, True, False], [False, False, True, True],
                                      [True, True, True, True]]))
        p = jnp.asarray(P)
        def batched():
            return jax.vmap(interpreter.jacobian(_masked_by_an_argument, "reverse"), in_axes=(0, None, 0))

        expected, straight = jax.jit(lambda *a: (  # one program (vmap op by op took seconds)
            jax.vmap(jax.jacfwd(_masked_by_an_argument), in_axes=(0, None, 0))(*a), batched()(*a)))(xs, p, masks)
        _on_the_tape(monkeypatch)
        # A jacobian of its own: one object keeps the plan (straight-line) it traced first.
        g = interpreter.graph_of(_masked_by_an_argument, xs[0], p, masks[0])
        assert _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse"))).discard is not None
        _same_nan_and_values([jax.jit(batched())(xs, p, masks)], [straight], [expected])


def _taken_nan_times_a_discarded_zero(x, y):
    """A taken entry's own NaN (log of a negative tanh) times a select's output whose other case
    (sqrt of the reversed negative y, discarded: its partial zeroed) is read crosswise: jax.jacfwd
    multiplies the NaN by that case's exact 0 tangent (NaN), and so must the tape."""
    v = jnp.where(y[::-1] > 0.1, jnp.sqrt(y)[::-1], y)
    t = jnp.tanh(y)
    return jnp.where(t > v, jnp.log(t) * v, v - t) + x


def test_tape_keeps_a_taken_nan_times_a_discarded_zero(monkeypatch):
    """The discard's flag guards a product only where it is on the out factor (the path into the
    select's case is dropped, whatever reaches it); on the in factor the zero is a tangent that
    jax.jacfwd multiplies by the out factor's NaN (11a8d82 guarded both: 4 of these 9 NaN lost in
    reverse and Markowitz order)."""
    with jax.enable_x64(True):
        x, y = jnp.linspace(0.1, 0.5, 5), -jnp.linspace(0.3, 1.5, 5)
        f = _taken_nan_times_a_discarded_zero
        expected, [straight] = _jacfwd_and_orders(f, (x, y), ("reverse",), 1)
        assert np.isnan(straight).sum() == 9  # the diagonal and the anti-diagonal
        _on_the_tape(monkeypatch)
        g = interpreter.graph_of(f, x, y, argnums=1)
        for order in ORDERS:
            assert _tape.build(g, graph.plan(g, graph.resolve_order(g, order))).discard is not None
        # Every order on the tape, compiled as one program.
        jacobians = jax.jit(lambda *a: [interpreter.jacobian(f, order, argnums=1)(*a) for order in ORDERS])(x, y)
        for actual in jacobians:
            _same_nan_and_values([actual], [straight], [expected])


def test_tape_guards_run_packed_bit_for_bit(monkeypatch):
    """A batch large enough for packed steps (`_tape_products.PACKED_MIN_BATCH`): the guards'
    selections and their scratch slots keep every example's Jacobian bit for bit that of the
    one-operation steps (batch 1), NaN positions included."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        xs = np.repeat(_X2[None], _tape_products.PACKED_MIN_BATCH, 0) * rng.uniform(0.5, 2.0, (16, 1, 1))
        xs[::3, 0] = 0.0  # zero rows in other places
        masks = jnp.asarray(rng.uniform(size=(16, 4)) > 0.4)
        xs, p = jnp.asarray(xs), jnp.asarray(P)
        _on_the_tape(monkeypatch)
        g = interpreter.graph_of(_masked_by_an_argument, xs[0], p, masks[0])
        tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "forward")))
        assert tape.discard.flags >= 0 and _tape_products.packed_lanes(np.asarray(tape.prod_steps), len(xs)) > 1
        jac = interpreter.jacobian(_masked_by_an_argument, "forward")
        packed = jax.jit(jax.vmap(jac, in_axes=(0, None, 0)))(xs, p, masks)
        single = np.asarray(jax.jit(lambda xs, masks: lax.map(lambda a: jac(a[0], p, a[1]), (xs, masks)))(xs, masks))
        np.testing.assert_array_equal(np.asarray(packed), single)
        expected = jax.jit(jax.vmap(jax.jacfwd(_masked_by_an_argument), in_axes=(0, None, 0)))(xs, p, masks)
        assert not np.any(np.isnan(single) & np.isfinite(np.asarray(expected)))


def _where_chain(x, p, steps):
    """A select per step whose case the next step's select reads (discards chained through every
    step) and a scalar every step reads (a vertex whose uses grow with the program)."""
    for _ in range(steps):
        x = jnp.where(x > 0.5, jnp.sqrt(x - 0.5) * p[0], x * p[1])
    return x


def test_discard_work_grows_linearly_with_the_program(force_tape):
    """The discard settles its entries in one pass, a depth of uses after another: its sweeps hold
    about as many cells as it has terms, whatever the depth (a sweep over every entry per depth,
    with a term slot per entry for the widest vertex's uses, was cubic in the steps: 1,860 sweeps
    of [49,780 x 81] at 80 steps of a generated MD program)."""
    cells = {}
    with jax.enable_x64(True):
        x, p = jnp.asarray(np.linspace(-1.0, 2.0, 4)), jnp.asarray(P)
        for steps in (5, 20):
            g = interpreter.graph_of(lambda x, p: _where_chain(x, p, steps), x, p, argnums=(0, 1))
            discard = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse"))).discard
            terms = len(discard.entry) - 1
            assert discard.terms.size <= 3 * terms  # the sweeps' padding
            cells[steps] = discard.terms.size
    assert cells[20] <= 5 * cells[5]


@pytest.mark.parametrize("path", ["straight_line", "tape"])
def test_a_masked_norm_over_flattened_axes_follows_jacfwd(monkeypatch, path):
    """``where(mask, x / max(norm(x, axis=-1, keepdims=True), eps), 0)`` of [batch, tokens, features]
    embeddings whose padding row is zero, in the 2-D codes that programs past LABELLED_MAX_EQUATIONS
    get: the division's partial by the [b, s, 1] norm is dense over (s*d) x s per row. The
    straight-line path keeps the broadcast's pattern as its support (`_jacobian._broadcast_support`),
    so neither the other tokens' rows (forward) nor the products after the select's support (reverse)
    meet the zero norm's infinite sqrt partial; the tape's sums keep the flag of their terms that are
    not structural zeros (`_tape_products.LaneSteps`). Before session 26: 32 to 160 NaN in every
    order where jax.jacfwd is finite."""
    from alphagrad.tasks._corpus_heldout16 import padded_token_normalise

    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)
    if path == "tape":
        monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
        monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    tokens = np.array([[1, 3, 0], [2, 0, 0]], np.int32)
    with jax.enable_x64(True):
        table = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4))).at[0].set(0.0)
        f = lambda t, k: jnp.tanh(padded_token_normalise(t, k))  # noqa: E731
        expected = jax.jacfwd(f)(table, tokens)
        assert np.isfinite(expected).all()
        g = interpreter.graph_of(f, table, tokens)
        # (The orders that gave NaN on each path; the straight-line path's forward order too.)
        for order in ("reverse", "markowitz") if path == "tape" else ("forward", "reverse"):
            if path == "tape":  # it is the tape that runs
                assert _tape.build(g, graph.plan(g, graph.resolve_order(g, order))) is not None
            np.testing.assert_allclose(interpreter.jacobian(f, order)(table, tokens), expected, rtol=1e-12, atol=1e-14)


def test_a_masked_norm_of_many_tokens_follows_jacfwd_in_forward_order():
    """The same masked normalisation of [8, 16, 16] embeddings (labelled structures): the select's
    case partial has 2,048 entries, so its support ([v, v]: 2^22 entries) was not held, nor the
    gathers' (128 x 800), and in forward order every entry of the Jacobian was NaN (jax.jacfwd: none).
    The select now keeps its diagonal alone (`_jacobian._select_support`), which zeroes the rows of
    the partials it multiplies (`_structured._rows_taken`). (Reverse order still gives NaN in 2,048
    entries at this size: the Placed pattern of the mean's index map past PATTERN_AT_TRACE_TIME_MAX
    is traced, so its support is unknown; session 26 note.)"""
    from alphagrad.tasks._corpus_heldout16 import padded_token_normalise

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50, size=(8, 16)).astype(np.int32)
    tokens[:, 8:] = 0
    with jax.enable_x64(True):
        table = jnp.asarray(rng.normal(size=(50, 16))).at[0].set(0.0)
        f = lambda t, k: jnp.tanh(padded_token_normalise(t, k))  # noqa: E731
        expected = jax.jacfwd(f)(table, tokens)
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(interpreter.jacobian(f, "forward")(table, tokens), expected, rtol=1e-12, atol=1e-14)
