"""Corpus functions of control flow, indexing and linear algebra, as application code writes them.

Loops whose trip count depends on the values (``lax.while_loop`` to a tolerance), scans over 3-D
sequences with dict carries, ``fori_loop`` with tuple carries, ``lax.cond`` inside a scan; gathers
and scatters in their usual spellings (``x[rows, cols]``, ``.at[].mul``, ``take_along_axis``,
``segment_sum``, ``jnp.interp``, ``top_k``, dynamic slices at a loop index); and the linear algebra
of statistics and mechanics (``inv``, ``slogdet``, ``det``, ``qr``, ``cho_solve``, norms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_RNG = np.random.default_rng(56)


# ---- control flow ------------------------------------------------------------------------------


def cubic_root_newton(a, b):
    """The root of x^3 + a x - b by Newton's method to a tolerance: a while_loop whose trip count depends on a, b."""

    def cond(state):
        x, step, i = state
        return (jnp.max(jnp.abs(step)) > 1e-10) & (i < 50)

    def body(state):
        x, _, i = state
        step = (x**3 + a * x - b) / (3 * x**2 + a)
        return x - step, step, i + 1

    x, _, _ = jax.lax.while_loop(cond, body, (jnp.ones_like(b), jnp.ones_like(b), 0))
    return x


def lstm_sequence(params, xs):
    """An LSTM over a (time, batch, features) sequence: lax.scan with a dict carry {'h', 'c'} and stacked outputs."""
    batch, hidden = xs.shape[1], params["wh"].shape[0]
    carry = {"h": jnp.zeros((batch, hidden), xs.dtype), "c": jnp.zeros((batch, hidden), xs.dtype)}

    def cell(carry, x):
        gates = x @ params["wx"] + carry["h"] @ params["wh"] + params["b"]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * carry["c"] + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return {"h": h, "c": c}, h

    final, hs = jax.lax.scan(cell, carry, xs)
    return hs, final["c"]


def power_iteration(a):
    """The dominant eigenvalue of a symmetric matrix: eight normalised power iterations, fori_loop with a tuple carry."""
    s = a @ a.T

    def body(_, carry):
        v, _ = carry
        w = s @ v
        return w / jnp.linalg.norm(w), jnp.dot(v, w)

    _, value = jax.lax.fori_loop(0, 8, body, (jnp.ones(a.shape[0], a.dtype), jnp.zeros((), a.dtype)))
    return value


def bouncing_ball(height, restitution):
    """A ball under gravity with a bounce: lax.cond (reflect or fly) inside every step of a lax.scan."""

    def step(state, _):
        y, v = state
        y, v = y + 0.05 * v, v - 0.05 * 9.81
        y, v = jax.lax.cond(y < 0, lambda: (-y, -restitution * v), lambda: (y, v))
        return (y, v), y

    (_, v), ys = jax.lax.scan(step, (height, jnp.zeros_like(height)), None, length=12)
    return ys, v


def piecewise_activation(x, slope):
    """A piecewise activation chosen per entry by jnp.where (ELU below zero, a leaky slope above one, identity between)."""
    below = jnp.expm1(jnp.minimum(x, 0.0))
    above = 1.0 + slope * (x - 1.0)
    return jnp.where(x < 0, below, jnp.where(x > 1, above, x))


def regime_switch(x, rates):
    """A regime model: lax.switch on an index computed from the data (which bin the mean falls in)."""
    regime = jnp.clip(jnp.floor(jnp.mean(x) * 3).astype(jnp.int32), 0, 2)
    return jax.lax.switch(regime, [
        lambda: x * rates[0],
        lambda: jnp.tanh(x) * rates[1],
        lambda: jnp.exp(-rates[2] * x),
    ])


# ---- indexing ----------------------------------------------------------------------------------


def sparse_interactions(x, rows, cols):
    """A sparse quadratic form read off distinct pairs of a matrix: x[rows, cols] (a 2-D gather), x.at[rows, cols].mul."""
    pairs = x[rows, cols]
    damped = x.at[rows, cols].mul(0.5, unique_indices=True)
    return jnp.sum(damped * x, axis=1) + jnp.sum(pairs**2)


def message_passing(nodes, edge_weights, senders, receivers):
    """A graph neural network layer: gather senders, jax.ops.segment_sum onto receivers (scatter-add), tanh update."""
    messages = nodes[senders] * edge_weights[:, None]
    aggregated = jax.ops.segment_sum(messages, receivers, num_segments=nodes.shape[0])
    return jnp.tanh(nodes + aggregated)


def sorted_by_key(values, keys):
    """Reordering by another array: argsort of the keys, take_along_axis per row, then a row-wise top_k."""
    order = jnp.argsort(keys, axis=1)
    reordered = jnp.take_along_axis(values, order, axis=1)
    top, _ = jax.lax.top_k(values * keys, 2)
    return reordered * jnp.arange(1, values.shape[1] + 1), top


def one_hot_lookup(weights, labels, x):
    """A one-hot encoding (jax.nn.one_hot) times a weight matrix, and a column lookup by jnp.take(axis=1)."""
    encoded = jax.nn.one_hot(labels, weights.shape[0], dtype=weights.dtype) @ weights
    return encoded * jnp.take(x, labels, axis=1).T


def moving_average(x):
    """A moving average whose windows are dynamic_slices at the fori_loop index, written with dynamic_update_slice."""
    width = 3
    out = jnp.zeros(x.shape[0] - width + 1, x.dtype)

    def body(i, out):
        window = jax.lax.dynamic_slice(x, (i,), (width,))
        return jax.lax.dynamic_update_slice(out, jnp.mean(window, keepdims=True), (i,))

    return jax.lax.fori_loop(0, out.shape[0], body, out)


def interpolate_table(xq, ys):
    """A lookup table read by linear interpolation: jnp.interp (searchsorted, clipped gathers)."""
    grid = jnp.linspace(0.0, 1.0, ys.shape[0])
    return jnp.interp(xq, grid, ys) * jnp.cumprod(1.0 + 0.1 * ys)[-1]


# ---- linear algebra ----------------------------------------------------------------------------


def inverse_trace(a, b):
    """A sensitivity computation: jnp.linalg.inv, its product with a load vector and the trace of the inverse."""
    inv = jnp.linalg.inv(a)
    return inv @ b, jnp.trace(inv)


def gaussian_log_likelihood(mean, cov_factor, x):
    """A multivariate normal log-density: covariance L L^T + I, slogdet and solve, plus the det of a 2x2 block."""
    cov = cov_factor @ cov_factor.T + jnp.eye(mean.shape[0], dtype=mean.dtype)
    diff = x - mean
    sign, logdet = jnp.linalg.slogdet(cov)
    maha = jnp.sum(diff * jnp.linalg.solve(cov, diff.T).T, axis=-1)
    return -0.5 * (maha + logdet + mean.shape[0] * np.log(2 * np.pi)) + jnp.linalg.det(cov[:2, :2])


def qr_projection(a, y):
    """Least squares by a reduced QR (jnp.linalg.qr): the fitted values Q Q^T y and the diagonal of R."""
    q, r = jnp.linalg.qr(a)
    return q @ (q.T @ y), jnp.abs(jnp.diag(r))


def gp_posterior_mean(x_train, y_train, x_test, lengthscale):
    """A Gaussian-process posterior mean: RBF kernel by broadcasting, Cholesky and cho_solve (two triangular solves)."""

    def kernel(a, b):
        return jnp.exp(-0.5 * jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1) / lengthscale**2)

    k = kernel(x_train, x_train) + 1e-2 * jnp.eye(x_train.shape[0], dtype=x_train.dtype)
    factor = jax.scipy.linalg.cho_factor(k, lower=True)
    alpha = jax.scipy.linalg.cho_solve(factor, y_train)
    return kernel(x_test, x_train) @ alpha


def norms(x, m):
    """Regularisers: the vector 2-norm, row 1-norms, the Frobenius norm and the spectral norm (ord=2, an SVD)."""
    return (jnp.linalg.norm(x) + jnp.sum(jnp.linalg.norm(m, ord=1, axis=1))
            + jnp.linalg.norm(m, "fro") + jnp.linalg.norm(m, 2))


def symmetric_eigen_energy(h):
    """The two lowest energies of a symmetric Hamiltonian (jnp.linalg.eigh) and the weight of the ground state's first site."""
    values, vectors = jnp.linalg.eigh(0.5 * (h + h.T))
    return values[:2], vectors[0, 0] ** 2


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    f32, f64 = np.float32, np.float64
    lstm = {"wx": _RNG.normal(size=(2, 12)).astype(f32) * 0.5, "wh": _RNG.normal(size=(3, 12)).astype(f32) * 0.5,
            "b": np.zeros(12, f32)}
    spd = _RNG.normal(size=(3, 3)) + 3 * np.eye(3)
    return [
        ("control flow", cubic_root_newton, (np.array([1.0, 2.0, 0.5], f64), np.array([2.0, -1.0, 0.3], f64)), (0, 1)),
        ("control flow", lstm_sequence, (lstm, _RNG.normal(size=(4, 2, 2)).astype(f32)), (0, 1)),
        ("control flow", power_iteration, (spd,), 0),
        ("control flow", bouncing_ball, (f64(1.0), f64(0.8)), (0, 1)),
        ("control flow", piecewise_activation, (np.array([-1.5, -0.2, 0.3, 0.9, 1.4, 2.5], f32), f32(0.1)), (0, 1)),
        ("control flow", regime_switch, (np.array([0.2, 0.5, 0.6], f64), np.array([2.0, 3.0, 0.5], f64)), (0, 1)),
        ("indexing", sparse_interactions, (_RNG.normal(size=(4, 4)), np.array([0, 2, 3, 1]), np.array([1, 2, 0, 1])), 0),
        ("indexing", message_passing, (_RNG.normal(size=(4, 3)).astype(f32), _RNG.uniform(size=5).astype(f32),
                           np.array([0, 1, 2, 3, 1], np.int32), np.array([1, 2, 3, 0, 0], np.int32)), (0, 1)),
        ("indexing", sorted_by_key, (_RNG.normal(size=(2, 4)), _RNG.normal(size=(2, 4))), (0, 1)),
        ("indexing", one_hot_lookup, (_RNG.normal(size=(4, 3)).astype(f32), np.array([2, 0, 3], np.int32),
                          _RNG.normal(size=(3, 4)).astype(f32)), (0, 2)),
        ("indexing", moving_average, (np.sin(np.linspace(0.0, 3.0, 7)),), 0),
        ("indexing", interpolate_table, (np.array([0.05, 0.4, 0.77, 0.99], f64), np.array([0.0, 1.0, 0.5, 2.0, 1.5], f64)),
         (0, 1)),
        ("linear algebra", inverse_trace, (spd, np.array([1.0, -0.5, 0.25], f64)), (0, 1)),
        ("linear algebra", gaussian_log_likelihood, (np.array([0.1, -0.2, 0.3], f64), _RNG.normal(size=(3, 3)) * 0.5,
                                   _RNG.normal(size=(2, 3))), (0, 1, 2)),
        ("linear algebra", qr_projection, (_RNG.normal(size=(4, 3)), _RNG.normal(size=4)), (0, 1)),
        ("linear algebra", gp_posterior_mean, (_RNG.uniform(size=(4, 2)), _RNG.normal(size=4), _RNG.uniform(size=(2, 2)), f64(0.7)),
         (0, 1, 2, 3)),
        ("linear algebra", norms, (np.array([0.3, -1.2, 0.8], f32), _RNG.normal(size=(3, 3)).astype(f32)), (0, 1)),
        ("linear algebra", symmetric_eigen_energy, (_RNG.normal(size=(3, 3)) + np.diag([0.0, 1.0, 2.5]),), 0),
    ]
