"""Cases of helper corpus22's held-out rehearsal (session 22): what alphagrad got wrong (mended in the same
session: passing tests now), and a dozen of the new kinds it gets right as controls.
Report: /work/notes/corpus22_report.md.

1. NaN where jax.jacfwd is finite: rows of a zero-padded batch normalised by their norms *before* a run-time
   index map picks the rows that are not padding, so the padding rows' 0/0 is never read. jax.jacfwd is finite,
   jax.jacrev is NaN. Forward order is exact; reverse order keeps jax.jacrev's NaN in the forms
   ``(x / norms)[argmax(norms)]``, ``take_along_axis(x / norms, argsort(-norms)[:, None], 0)[:3]`` and a
   multi-operand ``lax.sort((-norms, u[:, 0], u[:, 1], u[:, 2]), num_keys=1)``; Markowitz order in those and in
   ``(x / norms)[top_k(norms)[1]] @ w * vals`` and ``dynamic_slice(u, (argmax, 0), (1, 3)) * norm``. (The
   session-21 mends cover ``x[i] / norms[i]``, dividing after the gather, and ``u[argsort(-norms)[:3]]``.)
   Repros: /work/notes/corpus22/repros/. Mended in session 22 (46f4dff: a run-time index map's support is kept
   through the index maps composed with it), whose test_run_time_map_supports holds the first three forms; the
   two Markowitz-only forms are here, passing tests in all three orders.

The controls: poles hidden by ``where`` in forms where jax.jacrev has NaN and jax.jacfwd is finite (single-where
unit rows, the log of a masked softmax, Coulomb sums with the diagonal masked, a Gaussian likelihood with zero
scales at padding, mean pooling over empty sequences, ``jnp.nan_to_num`` of 0/0, a scan over padded steps, edges
between padding nodes), ``jnp.nonzero(size=)`` gathers, ``jax.nn.dot_product_attention`` with a causal mask,
``jax.scipy.ndimage.map_coordinates`` and an entropy of a masked softmax.
"""

import jax
import jax.numpy as jnp
import jax.scipy.ndimage as jnd
import numpy as np
import pytest
from jax import lax

from alphagrad import interpreter

_PADDED = np.array([[0.3, -0.2, 0.5], [0.0, 0.0, 0.0], [-0.4, 0.1, 0.2], [0.0, 0.0, 0.0], [0.6, 0.3, -0.1]])
_W = np.array([[0.5, -1.0], [0.2, 0.3], [-0.7, 0.4]])


def _norms(x):
    return jnp.sqrt(jnp.sum(x * x, -1))


def _unit(x):
    return x / _norms(x)[:, None]


def _top_k_unit_rows_projected(x, w=_W):
    vals, idx = lax.top_k(_norms(x), 3)
    return _unit(x)[idx] @ w * vals[:, None]


def _dynamic_slice_at_argmax_times_norm(x):
    i = jnp.argmax(_norms(x))
    return lax.dynamic_slice(_unit(x), (i, 0), (1, 3))[0] * _norms(x)[i]


_ORDERS = ("forward", "reverse", "markowitz")


def _nan_free_where_jacfwd_is(f, args=(_PADDED,), argnums=0):
    with jax.enable_x64(True):
        args = tuple(map(jnp.asarray, args))
        # One program: jax.jacfwd's Jacobian (was op by op) and every order's (was a compile each).
        expected, jacobians = jax.jit(lambda *a: (jax.jacfwd(f, argnums=argnums)(*a), [
            interpreter.jacobian(f, order, argnums=argnums)(*a) for order in _ORDERS]))(*args)
    expected = jax.tree.leaves(expected)
    for order, actual in zip(_ORDERS, jacobians):
        for a, b in zip(jax.tree.leaves(actual), expected):
            assert np.all(np.isfinite(b))
            assert not np.any(np.isnan(a)), order
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12, err_msg=order)


def test_top_k_unit_rows_of_a_padded_batch_projected():
    # The weights an argument too (a constant weight matrix is exact in every order).
    _nan_free_where_jacfwd_is(_top_k_unit_rows_projected, (_PADDED, _W), (0, 1))


def test_a_dynamic_slice_at_argmax_times_the_norm():
    _nan_free_where_jacfwd_is(_dynamic_slice_at_argmax_times_norm)


# ---- controls: new kinds that are right ----

def _single_where_unit_rows(x):
    n = _norms(x)[:, None]
    return jnp.where(n > 0, x / n, 0.0)


def _log_masked_softmax(s, mask):
    p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), -1)
    return jnp.where(mask, jnp.log(p), 0.0)


def _coulomb_diagonal_masked(x, q):
    d = _norms(x[:, None, :] - x[None, :, :])
    return 0.5 * jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, q[:, None] * q[None, :] / d).sum()


def _gaussian_nll_zero_scales_at_padding(x, mu, sigma, mask):
    ll = -jnp.log(sigma) - 0.5 * ((x - mu) / sigma) ** 2
    return -jnp.sum(jnp.where(mask, ll, 0.0))


def _mean_pool_empty_sequence(h, lengths):
    m = (jnp.arange(h.shape[1])[None, :] < lengths[:, None]).astype(h.dtype)
    mean = jnp.sum(h * m[..., None], 1) / jnp.sum(m, 1)[:, None]
    return jnp.where(lengths[:, None] > 0, mean, 0.0)


def _scan_over_padded_steps(x, w):
    def step(h, xt):
        v = xt + 0.5 * jnp.tanh(h @ w) * (xt @ xt > 0)
        nv = jnp.sqrt(v @ v)
        u = jnp.where(nv > 0, v / nv, v)
        return h + u, u
    return lax.scan(step, jnp.zeros(3), x)


def _nan_to_num_unit_rows(x):
    return jnp.nan_to_num(_unit(x))


def _edges_between_padding_nodes(x):
    senders, receivers = jnp.array([0, 1, 2, 3, 0]), jnp.array([1, 2, 0, 4, 2])
    r = _norms(x[senders] - x[receivers])
    e = jnp.where((senders < 3) & (receivers < 3), 1.0 / r, 0.0)
    return jax.ops.segment_sum(e, receivers, 5)


def _nonzero_size_unit_rows(x):
    return _unit(x)[jnp.nonzero(_norms(x) > 0, size=3, fill_value=0)[0]]


def _masked_entropy(logits, mask):
    p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), -1)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)


def _causal_dot_product_attention(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")


def _map_coordinates_warp(img, flow):
    yy, xx = jnp.meshgrid(jnp.arange(img.shape[0], dtype=img.dtype), jnp.arange(img.shape[1], dtype=img.dtype),
                          indexing="ij")
    return jnd.map_coordinates(img, jnp.stack([yy + flow[0], xx + flow[1]]), order=1, mode="nearest")


_R = np.random.default_rng(2222)
_MASK = np.array([[True, True, False, True], [True, False, False, False], [False, True, True, True]])
_CONTROLS = {
    "single_where_unit_rows": (_single_where_unit_rows, (_PADDED,), 0),
    "log_masked_softmax": (_log_masked_softmax, (_R.normal(size=(3, 4)), _MASK), 0),
    "coulomb_diagonal_masked": (_coulomb_diagonal_masked, (_R.normal(size=(4, 3)), _R.normal(size=4)), (0, 1)),
    "gaussian_nll_zero_scales": (_gaussian_nll_zero_scales_at_padding,
                                 (_R.normal(size=5), _R.normal(size=5), np.array([0.5, 1.0, 0.8, 0.0, 0.0]),
                                  np.array([True, True, True, False, False])), (0, 1, 2)),
    "mean_pool_empty_sequence": (_mean_pool_empty_sequence, (_R.normal(size=(3, 4, 2)), np.array([2, 0, 4])), 0),
    "scan_over_padded_steps": (_scan_over_padded_steps, (_PADDED, 0.5 * _R.normal(size=(3, 3))), (0, 1)),
    "nan_to_num_unit_rows": (_nan_to_num_unit_rows, (_PADDED,), 0),
    "edges_between_padding_nodes": (_edges_between_padding_nodes,
                                    (np.concatenate([_R.normal(size=(3, 2)), np.zeros((2, 2))]),), 0),
    "nonzero_size_unit_rows": (_nonzero_size_unit_rows, (_PADDED,), 0),
    "masked_entropy": (_masked_entropy, (_R.normal(size=(3, 4)), _MASK), 0),
    "causal_dot_product_attention": (_causal_dot_product_attention,
                                     tuple(0.5 * _R.normal(size=(1, 5, 2, 4)) for _ in range(3)), (0, 1, 2)),
    "map_coordinates_warp": (_map_coordinates_warp, (_R.normal(size=(4, 5)), 0.3 * _R.normal(size=(2, 4, 5))),
                             (0, 1)),
}


_FLOAT64 = dict(rtol=1e-8, atol=1e-10)
# jax.nn.dot_product_attention computes its softmax in float32 (convert_element_type inside): float32 rounding.
_TOLERANCE = {"causal_dot_product_attention": dict(rtol=2e-6, atol=1e-7)}


@pytest.mark.parametrize("name", list(_CONTROLS))
def test_new_kinds_equal_jax_jacfwd_in_three_orders_under_jit(name):
    f, args, argnums = _CONTROLS[name]
    with jax.enable_x64(True):
        args = jax.tree.map(jnp.asarray, args)

        @jax.jit
        def reference_and_orders(*xs):
            return jax.jacfwd(f, argnums=argnums)(*xs), [interpreter.jacobian(f, o, argnums=argnums)(*xs)
                                                         for o in ("forward", "reverse", "markowitz")]

        expected, actual = reference_and_orders(*args)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(expected))
    tolerance = _TOLERANCE.get(name, _FLOAT64)
    for jac in actual:  # jax.tree.map insists on the same structure, assert_allclose on the same shapes
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tolerance), jac, expected)
