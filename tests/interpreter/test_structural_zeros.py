"""Dense products keep their structural zeros: no NaN where jax.jacfwd is finite (issue 12).

Normalising rows by a clamped norm, ``x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True),
eps)``, at an all-zero row: sqrt's partial there is infinite. jax.jacfwd's NaN stays in that row's
own entries; another row's outputs never read it. A product of an index map (the norm's sum, a
broadcast) with a partial tied along rows comes out dense, and its zeros between rows, multiplied
by the infinite partial, were NaN in every row (reverse and Markowitz order; session 16). Such
products keep the support of such dense partials (`_structured._keeping_zeros`), and a product
of one with a partial that may be infinite multiplies the finite part and puts NaN back only
where the support meets the infinities (`_zeros_meeting_poles`, `_poles_kept`). The tape (long
programs) knows at plan time which edge slots hold structural zeros and which may be infinite, and
a multiplication of the two reads the zero slot instead of the infinity (`LaneSteps.guarded`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph as graph_lib, interpreter
from alphagrad.interpreter import _tape
from alphagrad.interpreter._tape_products import MUL, SELECT, ZERO, LaneSteps
from alphagrad.interpreter._structured import (
    INDEX_MAP, IndexMap, MultiplicationCounter, Partial, densify, multiply,
)


def normalise(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


FUNCTIONS = {
    "normalise_twice": lambda x: normalise(normalise(x)),
    "row_sums": lambda x: normalise(x).sum(-1),
    "row_sums_and_a_corner": lambda x: normalise(x).sum(-1) + x[0, 0],
    "cosine_of_reversed_rows": lambda x: (normalise(x) * normalise(x[::-1])).sum(-1),
}
ZERO_ROW = np.array([[0.0, 0.0, 0.0], [1.0, -1.0, 2.0], [0.5, 0.2, 0.1]])
# A batch of token vectors, token (0, 1) all zero; the similarity einsum contracts over the batch.
ZERO_TOKEN = np.array([[[1.0, 2.0], [0.0, 0.0]], [[0.5, -1.0], [1.0, 0.3]]])
FUNCTIONS["token_similarities"] = lambda x: jnp.einsum("btd,bsd->ts", normalise(x), normalise(x))
# Centred rows (a dense partial of a broadcast subtraction whose zeros are read off, on the tape)
# scaled by a row statistic of the reversed rows' normalisation.
def centred_times_reversed_scale(x):
    scaled = (x - x.mean(-1, keepdims=True)) * jnp.log1p(jnp.abs(normalise(x[::-1])).sum(-1, keepdims=True))
    return (scaled - scaled.mean(-1, keepdims=True)).sum(-1) + scaled[:, 0]


FUNCTIONS["centred_times_reversed_scale"] = centred_times_reversed_scale
# Values the bounds rules call finite (a comparison, a division by a constant, max with -inf)
# around a true pole (the zero row's norm): the guard must still keep the other rows finite.
FUNCTIONS["norm_after_a_select"] = lambda x: normalise(jnp.where(x > 0.3, 2 * x, x)).sum(-1)
FUNCTIONS["norm_after_a_division"] = lambda x: normalise(x / 2.0).sum(-1) + x[0, 0]
FUNCTIONS["log_softmax_of_norms"] = lambda x: jax.nn.log_softmax(normalise(x), -1).sum(-1)


def _jacfwd_and_orders(f, x, orders, argnums=0):
    """jax.jacfwd's Jacobian and every order's, compiled as one program (a compilation per order and
    jax.jacfwd op by op cost more than the checks)."""
    return jax.jit(lambda *a: (jax.jacfwd(f, argnums=argnums)(*a),
                               [interpreter.jacobian(f, order, argnums=argnums)(*a) for order in orders]))(*x)


def _assert_finite_where_jacfwd_is(f, x, orders):
    expected, jacobians = _jacfwd_and_orders(f, (x,), orders)
    expected = np.asarray(expected)
    assert np.isnan(expected).any()  # the zero row's own entries: jax.jacfwd's NaN
    finite = np.isfinite(expected)
    for order, got in zip(orders, jacobians):
        got = np.asarray(got)
        assert np.isfinite(got[finite]).all(), (order, np.argwhere(finite & ~np.isfinite(got))[:3])
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_a_zero_row_leaves_the_other_rows_finite_in_every_order(name):
    with jax.enable_x64(True):
        f = FUNCTIONS[name]
        x = jnp.asarray(ZERO_TOKEN if name == "token_similarities" else ZERO_ROW)
        _assert_finite_where_jacfwd_is(f, x, ("forward", "reverse", "markowitz"))


def test_products_of_provably_finite_partials_take_no_guard(monkeypatch):
    # A comparison (a select's predicate, a switch's index), a division by a constant without zeros
    # (jnp.gradient) and a product's partial in one factor (the other bounded) are finite wherever
    # the arguments are: no product of these corpus functions is guarded (burgers_upwind took 10
    # guards, spline_switch 8, before the bounds rules), and the Jacobians are jax.jacfwd's.
    from alphagrad import tasks
    from alphagrad.interpreter import _structured

    guarded = []
    original = _structured._poles_kept
    monkeypatch.setattr(_structured, "_poles_kept", lambda *a: guarded.append(1) or original(*a))
    corpus = tasks.corpus()
    with jax.enable_x64(True):
        for name in ("burgers_upwind", "spline_switch"):
            task = corpus[name]
            expected, jacobians = _jacfwd_and_orders(task.fn, task.args, ("forward", "reverse", "markowitz"),
                                                     task.argnums)
            for got in jacobians:
                for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
                    np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)
            assert not guarded, name


@pytest.mark.parametrize("name", ["row_sums", "centred_times_reversed_scale", "cosine_of_reversed_rows"])
def test_the_tape_keeps_structural_zeros_away_from_infinite_partials(name, monkeypatch):
    # The same functions on the tape (forced: they are short); a random order too.
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    with jax.enable_x64(True):
        f = FUNCTIONS[name]
        x = jnp.asarray(ZERO_TOKEN if name == "token_similarities" else ZERO_ROW)
        graph = interpreter.graph_of(f, x)
        _tape.build(graph, graph_lib.plan(graph, graph_lib.resolve_order(graph, "reverse")))  # in the tape's class
        shuffled = [int(v) for v in np.random.default_rng(0).permutation(list(graph.intermediates))]
        _assert_finite_where_jacfwd_is(f, x, ("reverse", "markowitz", shuffled))


def test_lane_steps_guard_a_structural_zero_against_a_possible_infinity():
    steps = LaneSteps(1)
    steps.forget(2, 6)  # slots 2..7: nothing known (possibly infinite)
    steps.forget(4, 2, pole=False)  # 4, 5: finite
    steps.emit(SELECT, [ZERO], [0], [6], [1])  # slot 6 := select(ONE, ZERO): a structural zero
    x, y = steps.guarded(np.array([6, 6, 2]), np.array([2, 4, 3]))
    np.testing.assert_array_equal(x, [6, 6, 2])
    np.testing.assert_array_equal(y, [ZERO, 4, 3])  # only the possibly infinite partner reads zero
    steps.emit(MUL, [6, 2], [2, 4], [7, 7], [1, 0])  # 7 := 6 * 2 (guarded: zero), += 2 * 4
    assert not steps.zero[7] and steps.pole[7]
    steps.emit(MUL, [6], [3], [7], [1])
    assert steps.zero[7] and not steps.pole[7]
    assert len(np.concatenate(steps.rows)) == 4  # every multiplication is still performed (counted)


def test_a_map_times_a_tied_partial_keeps_its_zeros_against_an_infinite_diagonal():
    # h = row sums of g, g[i, j] = a[i, j] * f[i]: (sum map) @ (rows tied) is dense [2, 2], zero off
    # the diagonal; times diag(inf, 1) the zero must stay zero.
    row_sum = Partial(INDEX_MAP, (2, 1), (2, 3), IndexMap(
        lambda t: t.sum(1, keepdims=True), lambda ct: jnp.broadcast_to(ct, (2, 3))))
    tied = Partial(2, (2, 3), (2, 1), jnp.arange(1.0, 7.0).reshape(2, 3, 1))

    def run(diagonal):
        counter = MultiplicationCounter()
        summed = multiply(row_sum, tied, 1, counter, jnp.float64)
        scaled = multiply(summed, Partial(6, (2, 1), (2, 1), diagonal), 1, counter, jnp.float64)
        return summed.support, densify(scaled, jnp.float64).reshape(2, 2), counter.total

    with jax.enable_x64(True):
        support, got, muls = jax.jit(run)(jnp.array([[np.inf], [1.0]]))
    np.testing.assert_array_equal(np.asarray(support).reshape(2, 2), np.eye(2))  # the map keeps rows apart
    np.testing.assert_array_equal(got[1], [0.0, 15.0])  # no NaN in the row that never reads inf
    assert np.isnan(got[0, 0]) and got[0, 1] == 0.0  # the pole's own entry: NaN, as jax.jacfwd's
    assert muls == 4  # a dense [2, 1] x [2, 1] block times a diagonal: still counted as planned


# Zeros known only at run time (`_structured.RunTimeSupport`): the branch a conditional takes
# ignores an entry whose partial is infinite (sqrt at 0). jax.jacfwd's tangent never reaches the
# ignored entry; the products made it 0 x inf = NaN in every order (found session 19).
SQRT_AT_ZEROS = np.array([0.0, 1.0, 4.0, 0.0, 9.0])
RUN_TIME_ZEROS = {
    "cond_takes_the_second_entry": lambda x: jax.lax.cond(
        x[1] > 5, lambda y: y[0] * 2, lambda y: y[1] * 3, jnp.sqrt(x)),
    "switch_takes_the_third_entry": lambda x: jax.lax.switch(
        jnp.argmax(x) // 2, [lambda y: y[0], lambda y: y[1], lambda y: y[2] * y[4]], jnp.sqrt(x)),
    "cond_then_elementwise": lambda x: jnp.tanh(jax.lax.cond(
        x[4] > 5, lambda y: y[1:3] * 2, lambda y: y[:2], jnp.sqrt(x)) * 3.0),
}


@pytest.mark.parametrize("name", sorted(RUN_TIME_ZEROS))
def test_zeros_known_only_at_run_time_stay_zero_against_infinite_partials(name):
    f = RUN_TIME_ZEROS[name]
    with jax.enable_x64(True):
        x = jnp.asarray(SQRT_AT_ZEROS)
        graph = interpreter.graph_of(f, x)
        shuffled = [int(v) for v in np.random.default_rng(1).permutation(list(graph.intermediates))]
        orders = ("forward", "reverse", shuffled)
        # Under vmap the supports are per example (the other branch is taken in the second).
        xs = jnp.stack([x, jnp.array([1.0, 6.0, 0.0, 0.0, 2.0])])
        # One program: jax.jacfwd's Jacobian and every order's, and both under vmap.
        expected, jacobians, batched, batched_expected = jax.jit(lambda x, xs: (
            jax.jacfwd(f)(x), [interpreter.jacobian(f, order)(x) for order in orders],
            jax.vmap(interpreter.jacobian(f, "reverse"))(xs), jax.vmap(jax.jacfwd(f))(xs)))(x, xs)
        expected = np.asarray(expected)
        assert np.isfinite(expected).all()
        for order, got in zip(orders, jacobians):
            np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=0, err_msg=str(order))
            assert interpreter.count_muls(f, order, x) == graph_lib.cost(graph, order)
        np.testing.assert_allclose(batched, batched_expected, rtol=1e-12, atol=0)


def _van_leer_step(u):
    """A limiter's safe divisions: by where(|d| > eps, d, eps) and by 1 + |r|."""
    du_m, du_p = u - jnp.roll(u, 1), jnp.roll(u, -1) - u
    r = du_m / jnp.where(jnp.abs(du_p) > 1e-12, du_p, 1e-12)
    phi = (r + jnp.abs(r)) / (1 + jnp.abs(r))
    flux = 0.7 * (u + 0.5 * phi * du_p)
    return u - 0.4 * (flux - jnp.roll(flux, 1))


def _clamped_normalise_masked(x):
    """A division by jnp.maximum(sum of squares, eps), columns masked after a broadcast."""
    y = x / jnp.maximum(jnp.sum(x ** 2, axis=-1, keepdims=True), 1e-6)
    return jnp.where(jnp.arange(3)[None, :] < 2, y * 2.0, 0.0).sum(0)


@pytest.mark.parametrize("f, x", [(lambda u: _van_leer_step(_van_leer_step(u)), np.sin(np.linspace(0, 6, 8))),
                                  (_clamped_normalise_masked, np.arange(12.0).reshape(4, 3) / 5)],
                         ids=["van_leer", "clamped_normalise"])
def test_divisions_bounded_away_from_zero_take_no_nan_guard(monkeypatch, f, x):
    # A divisor at least a positive constant in magnitude (a maximum with eps, a safe where, 1 + |r|)
    # has no pole: its partials are finite, and no product after it is guarded (a traced select's
    # support would otherwise guard every one: 204 kernels against 83 for four limiter steps).
    from alphagrad.interpreter import _structured

    guarded = []
    original = _structured._zeros_meeting_poles

    def counting(out, inp, supports):
        held = original(out, inp, supports)
        guarded.append(held is not None)
        return held

    monkeypatch.setattr(_structured, "_zeros_meeting_poles", counting)
    with jax.enable_x64(True):
        x = jnp.asarray(x)
        expected, jacobians = _jacfwd_and_orders(f, (x,), ("forward", "reverse", "markowitz"))
        for got in jacobians:
            np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert guarded and not any(guarded)
