"""Cases of helper corpus24's held-out rehearsal (session 24): what alphagrad gets wrong (strict xfails while
open), and new kinds it gets right (the functions of alphagrad/tasks/_corpus_heldout24.py) as controls. Report:
/work/notes/corpus24_report.md.

1. NaN where jax.jacfwd is finite: a pole behind ``jnp.where`` (``sqrt``/``log``/``1/x`` at 0, the other branch
   selected) whose value has a second use that does not read the pole (a slice ``s[0]``, a gather, a
   ``dynamic_slice``, a second output): NaN at the pole's own entry, every order, eager and under jit. Natural
   forms: rows normalised by a guarded norm with the first norm returned too, a thin-plate-spline kernel with a
   guarded log on the zero diagonal plus the distances to one point.
   Repro: /work/notes/corpus24/repros/where_guard_plus_second_use_nan.py. Mended in dcdbe9e where the other use
   reaches an output through data movement, and where it is the pole's value itself as an output (unit vectors
   and their lengths) or a read inside a ``lax.cond``: the select's zeros are its support when its case is read
   elsewhere or its pole came through a value read elsewhere (a guarded product of two poles, one reused: a
   cosine similarity with a norm penalty) (the lead's follow-ups to dcdbe9e; passing tests now).
2. NaN where jax.jacfwd is finite: a pole feeding a loop carry whose entries stay apart (a ``while_loop`` with any
   body, a ``scan``/``fori_loop`` whose body permutes the carry) and ``segment_max`` / ``.at[].max`` of a pole
   (corpus23's finding 2, dense partials with exact zeros, through loops and scatter-max). The scan mended in
   e148db6; the while loop (the loop run as it is where its trip count is known while tracing, else the reach
   probed at run time) and the scatter-max (its JVP's gathers and scatter-adds by known segment ids) in session
   25 (passing tests now).
   Repro: /work/notes/corpus24/repros/loop_carry_after_sqrt_nan.py.
3. A crash where JAX differentiates: ``jax.debug.print`` / ``jax.debug.callback`` inside the function (an
   equation without outputs): IndexError in every order; mended in 760b67b (passing tests now).
   Repro: /work/notes/corpus24/repros/debug_print_inside_crash.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import interpreter
from alphagrad.tasks import _corpus_heldout24 as corpus

_ORDERS = ("forward", "reverse", "markowitz")
_X2 = np.array([0.3, 0.0])  # sqrt's derivative is infinite at x[1], which the where does not select
_X6 = np.array([0.3, 0.0, 0.4, 0.0, 0.6, 0.2])
_ROWS = np.array([[0.3, 0.4], [0.0, 0.0], [1.0, 2.0]])  # a zero row
_POINTS = np.array([[0.0, 0.0], [1.0, 0.5], [0.3, 1.2], [1.5, 1.0]])


def _nan_free_where_jacfwd_is(f, orders, args, argnums=0, jit=False):
    # Equal to jax.jacfwd wherever jax.jacfwd is finite (no NaN there), in each order (all under one jax.jit
    # with jit=True); jax.jacfwd must be finite somewhere.
    orders = (orders,) if isinstance(orders, str) else orders
    with jax.enable_x64(True):
        args = jax.tree.map(jnp.asarray, args)
        expected = jax.jit(jax.jacfwd(f, argnums=argnums))(*args)

        def all_orders(*xs):
            return [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in orders]
        jacobians = (jax.jit(all_orders) if jit else all_orders)(*args)
    for actual in jacobians:
        assert jax.tree.structure(actual) == jax.tree.structure(expected)
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            a, b = np.asarray(a), np.asarray(b)
            finite = np.isfinite(b)
            assert a.shape == b.shape and finite.any()
            np.testing.assert_allclose(a[finite], b[finite], rtol=1e-10, atol=1e-12)


# ---- finding 1: a guarded pole used a second time ----

def _first_entry_plus_guarded(x):
    s = jnp.sqrt(x)
    return s[0] + jnp.where(x > 0.25, s, 0.0)


def _direction_and_magnitude(V):
    r = jnp.linalg.norm(V, axis=-1)
    return V / jnp.where(r > 0, r, 1.0)[:, None], r


def _normalised_rows_and_first_norm(X):
    r = jnp.sqrt(jnp.sum(X ** 2, 1))
    return X / jnp.where(r > 0, r, 1.0)[:, None], r[0]


def _thin_plate_spline_and_distances(P):
    eye = jnp.eye(P.shape[0], dtype=bool)
    D = jnp.sqrt(jnp.sum((P[:, None] - P[None]) ** 2, -1))  # zero diagonal
    phi = jnp.where(eye, 0.0, D ** 2 * jnp.log(jnp.where(eye, 1.0, D)))
    return (phi @ jnp.ones(P.shape[0]))[1:] + D[0, 1:]


def _guarded_and_read_in_a_cond(x):
    s = jnp.sqrt(x)
    return jnp.where(x > 0.25, s, 0.0) + lax.cond(x[0] > 0, lambda: s[0], lambda: 0.0)


# Mended in dcdbe9e (the other use reaches an output through data movement): the minimal form in every order,
# the others in reverse order (the budget of this file).
_MENDED = [(_first_entry_plus_guarded, _X2, o) for o in _ORDERS] + [
    (_normalised_rows_and_first_norm, _ROWS, "reverse"), (_thin_plate_spline_and_distances, _POINTS, "reverse")]


@pytest.mark.parametrize("f, x, order", _MENDED, ids=[f"{f.__name__[1:]}-{o}" for f, _, o in _MENDED])
def test_a_guarded_pole_used_twice(f, x, order):
    _nan_free_where_jacfwd_is(f, order, (x,))


# The other use is the pole's value itself as an output, or a read inside a lax.cond: the select keeps its
# zeros as a support (`_jacobian.SHARED_CASE_SUPPORT`).
_SHARED = [(_direction_and_magnitude, _ROWS), (_guarded_and_read_in_a_cond, _X2)]


@pytest.mark.parametrize("f, x", _SHARED, ids=[f.__name__[1:] for f, _ in _SHARED])
def test_a_guarded_pole_returned_or_read_in_a_cond(f, x):
    _nan_free_where_jacfwd_is(f, "reverse", (x,))


def _guarded_product_of_two_poles_one_reused(x):
    # x[:3] and x[3:] stand for two arguments; the where guards sqrt(a) * sqrt(b), sqrt(a) is returned too
    a, b = x[:3], x[3:]
    s = jnp.sqrt(a)
    return jnp.where((a > 0) & (b > 0), s * jnp.sqrt(b), 0.0), s


def test_a_guarded_product_of_two_poles_one_reused():
    # (open at 4bfba7d; the select's support now also where its case's pole came through a shared vertex)
    _nan_free_where_jacfwd_is(_guarded_product_of_two_poles_one_reused, "reverse",
                              (np.array([0.3, 0.0, 0.5, 0.2, 0.4, 0.0]),))


def test_a_guarded_pole_used_once_control():
    # The same where without the second use is exact (the guard works alone).
    _nan_free_where_jacfwd_is(lambda x: x + jnp.where(x > 0.25, jnp.sqrt(x), 0.0), "reverse", (_X2,))


# ---- finding 2: loop carries and scatter-max after a pole ----

def _while_halving(x):
    return lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] * 0.5), (0, jnp.sqrt(x)))[1][::2]


def _scan_rolling(x):
    return lax.scan(lambda h, _: (jnp.roll(h, 2) * 1.1, None), jnp.sqrt(x), None, length=2)[0][::2]


def _segment_max_of_sqrt(x):
    return jax.ops.segment_max(jnp.sqrt(x), jnp.array([0, 1, 1, 2, 2, 3]), 4)[jnp.array([0, 3])]


def _while_rolling(x):
    # the carry's entries move each step: which output entries a pole reaches depends on the trip count
    return lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, jnp.roll(c[1], 1) * 0.5), (0, jnp.sqrt(x)))[1][::2]


def _while_rolling_to_a_computed_bound(x):
    # the trip count is known only at run time (computed from x): the reach is probed at run time
    bound = jnp.int32(x[4] * 5)
    return lax.while_loop(lambda c: c[0] < bound, lambda c: (c[0] + 1, jnp.roll(c[1], 1) * 0.5),
                          (0, jnp.sqrt(x)))[1][::2]


_WHILE = [(f, o) for f in (_while_halving, _while_rolling, _while_rolling_to_a_computed_bound) for o in _ORDERS]


@pytest.mark.parametrize("f, order", _WHILE, ids=[f"{f.__name__[1:]}-{o}" for f, o in _WHILE])
def test_a_pole_through_a_while_loop_carry(f, order):
    # Mended in session 25: a while loop's dense partial holds the entries a NaN tangent reaches, while tracing
    # where its trip count is known then (`_jacobian._trip_count_known`), else at run time (`_COUNTED_AT_RUN_TIME`).
    _nan_free_where_jacfwd_is(f, order, (_X6,))


def test_a_pole_through_a_scatter_max():
    # Mended in session 25: the scatter-max's partial holds the entries a NaN tangent reaches through its JVP's
    # gathers and scatter-adds by segment ids known while tracing (`_jacobian._REACH_INDEXED`).
    _nan_free_where_jacfwd_is(_segment_max_of_sqrt, "reverse", (_X6,))


def test_a_pole_through_a_permuting_scan_carry():
    # Mended in e148db6 (nanprobe24: a scan kept as a loop holds the entries a NaN tangent reaches, while tracing).
    _nan_free_where_jacfwd_is(_scan_rolling, _ORDERS, (_X6,))


# ---- controls: the corpus module's functions, exact under one jit (forward, reverse, Markowitz) ----

_CHEAP = ("tridiagonal_solve", "gradient_of_loss")


def _entry(name):
    return next(e for e in corpus.entries() if e[1].__name__ == name)


@pytest.mark.parametrize("name", _CHEAP)
def test_corpus_function_exact_in_every_order(name):
    _, f, args, argnums = _entry(name)
    _nan_free_where_jacfwd_is(f, _ORDERS, args, argnums, jit=True)


def test_every_entry_is_described():
    names = [e[1].__name__ for e in corpus.entries()]
    assert len(names) == len(set(names)) >= 15
    assert all(e[1].__doc__ for e in corpus.entries())


# ---- finding 3 (mended in 760b67b): jax.debug.print inside the function (an equation without outputs) ----

def _debug_print_inside(x):
    y = jnp.sin(x) * 2.0
    jax.debug.print("y = {y}", y=y)
    return y * x


def _debug_print_in_a_scan(x):
    def body(c, xi):
        jax.debug.print("c = {c}", c=c)
        return c * 0.5 + jnp.sin(xi), c
    return lax.scan(body, 0.0, x)[1]


@pytest.mark.parametrize("f", [_debug_print_inside, _debug_print_in_a_scan], ids=["top_level", "in_a_scan"])
def test_debug_print_inside(f):
    # IndexError in _discard.plan_discard before 760b67b, every order.
    _nan_free_where_jacfwd_is(f, "reverse", (np.array([0.3, -0.2, 0.5]),))
