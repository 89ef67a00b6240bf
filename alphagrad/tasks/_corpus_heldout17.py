"""Corpus functions from the session-17 held-out rehearsal: constructs the earlier corpora lacked.

A probe of 174 functions written as outside users write them (jax.nn activations and initialisers,
jax.scipy.special and stats, ``jnp.vectorize``, ``jax.vmap`` with an axis name inside the
function, remat, ``jax.named_call``, ``lax.reduce_precision``, real FFTs, ``jnp.piecewise`` and
``jnp.select``, out-of-bounds scatter modes, ``tril_indices`` packing, value-dependent while loops,
pytree carries and xs, array-API linear algebra, the polar decomposition, kinks and zeros at the
inputs) found them exact in forward, reverse, Markowitz, a random order and ``"auto"`` under
``jax.jit``, except where a sort, top_k, max pool or ``lax.cond`` drops an entry whose partial is
infinite (a square root at 0) and a contraction follows: NaN where jax.jacfwd is finite, in
reverse order (in every order after the cond; jax.jacrev has the same NaN). These eight stand for
its groups: batch normalisation by ``lax.pmean`` inside ``jax.vmap(axis_name=...)``, a simulated
bfloat16 matmul (``lax.reduce_precision``), a spectral heat step by ``rfft``/``irfft``,
``.at[].set(mode="drop")`` with an out-of-bounds and a negative index, Armijo backtracking (a while
loop whose trip count depends on the values), a scan over a dict of sequences with a tuple carry,
the polar decomposition, and functions at their kinks (abs, relu, clip at its bounds, a square
root behind ``jnp.where`` at exactly 0, ties in minimum).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np

_RNG = np.random.default_rng(1717)


def _normal(*shape, dtype=np.float64, scale=0.5):
    return (scale * _RNG.normal(size=shape)).astype(dtype)


def batchnorm_by_collectives(x):
    """Batch normalisation written per example and mapped by ``jax.vmap(axis_name="b")``: the batch
    mean and variance by ``lax.pmean``, plus a ``lax.psum`` term."""

    def per_example(xi):
        mu = jax.lax.pmean(xi, "b")
        var = jax.lax.pmean((xi - mu) ** 2, "b")
        return (xi - mu) / jnp.sqrt(var + 1e-5) + 0.01 * jax.lax.psum(xi, "b")

    return jax.vmap(per_example, axis_name="b")(x)


def bf16_rounded_dense(w, x):
    """A float32 matmul in simulated bfloat16: ``lax.reduce_precision(exponent_bits=8,
    mantissa_bits=7)`` on both inputs and the output. Its partial is the identity (jax.jacrev's
    straight-through derivative); jax.jacfwd rounds the tangents as well, which changes nothing here
    (every Jacobian entry is a rounded input, exact in bfloat16)."""

    def rounded(a):
        return jax.lax.reduce_precision(a, exponent_bits=8, mantissa_bits=7)

    return rounded(rounded(x) @ rounded(w))


def spectral_heat_rfft(u, nu):
    """One exact step of the periodic heat equation in Fourier space: ``rfft``, multiply by
    ``exp(-nu k**2 dt)``, ``irfft`` (complex intermediates, real arguments and result)."""
    n = u.shape[0]
    k = 2 * np.pi * jnp.fft.rfftfreq(n, d=1.0 / n)
    return jnp.fft.irfft(jnp.fft.rfft(u) * jnp.exp(-nu * k ** 2 * 0.01), n=n)


def at_set_mode_drop(x, v):
    """``x.at[[0, 7, -1]].set(v, mode="drop")``: index 7 is out of bounds and dropped with its
    update, -1 counts from the end."""
    return x.at[jnp.array([0, 7, -1])].set(v, mode="drop") * 2.0


def armijo_backtracking(x):
    """A gradient step with Armijo backtracking: ``t`` halves in a ``while_loop`` until the
    sufficient-decrease condition holds, so the trip count depends on the values."""

    def f(z):
        return jnp.sum((z - 1.0) ** 4) + jnp.sum(z ** 2)

    g = 4 * (x - 1.0) ** 3 + 2 * x
    t = jax.lax.while_loop(lambda t: f(x - t * g) > f(x) - 0.5 * t * jnp.dot(g, g), lambda t: 0.5 * t, 1.0)
    return x - t * g


def scan_over_pytree_xs(k, xs):
    """A driven pendulum by symplectic Euler in a ``lax.scan`` whose xs is a dict of sequences
    (``{"u": [t, 2], "dt": [t]}``) and whose carry is a (q, p) tuple; returns the q trajectory."""

    def step(carry, inp):
        q, p = carry
        p = p - inp["dt"] * (k * jnp.sin(q) - inp["u"])
        q = q + inp["dt"] * p
        return (q, p), q

    return jax.lax.scan(step, (jnp.zeros(2), jnp.ones(2)), xs)[1]


def polar_decomposition(a):
    """``jax.scipy.linalg.polar`` (by SVD): the orthogonal factor and the positive semidefinite one."""
    return jsp.linalg.polar(a, method="svd")


def kinks_at_zero(x):
    """Functions at their kinks, x holding exact zeros and ties: abs, relu, a square root behind
    ``jnp.where`` at 0, clip at its bounds, maximum with 0, minimum of x and its reverse (ties), sign * x."""
    safe = jnp.where(x > 0, x, 1.0)
    return jnp.stack([jnp.abs(x), jax.nn.relu(x), jnp.where(x > 0, jnp.sqrt(safe), 0.0), jnp.clip(x, -1.0, 1.0),
                      jnp.maximum(x, 0.0), jnp.minimum(x, x[::-1]), jnp.sign(x) * x])


#: Functions whose reference Jacobian is jax.jacfwd: jax.jacrev cannot differentiate the while loop of
#: ``armijo_backtracking``.
JACFWD_REFERENCE = frozenset({"armijo_backtracking"})


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    f32 = np.float32
    return [
        ("layers", batchnorm_by_collectives, (_normal(4, 3),), 0),
        ("layers", bf16_rounded_dense, (_normal(3, 2, dtype=f32), _normal(2, 3, dtype=f32)), (0, 1)),
        ("integrators", spectral_heat_rfft, (_normal(8), np.float64(0.3)), (0, 1)),
        ("indexing", at_set_mode_drop, (_normal(5), _normal(3)), (0, 1)),
        ("control flow", armijo_backtracking, (np.array([2.0, -1.0, 0.5]),), 0),
        ("control flow", scan_over_pytree_xs, (_normal(2), {"u": _normal(4, 2), "dt": np.full(4, 0.1)}), (0, 1)),
        ("linear algebra", polar_decomposition, (_normal(3, 3) + np.eye(3),), 0),
        ("other", kinks_at_zero, (np.array([0.0, -1.0, 1.0, 0.5, -0.5, 0.0]),), 0),
    ]
