"""Corpus functions from the session-16 held-out rehearsal: code as outside users write it.

A probe of 98 functions written as a held-out corpus would be (flax modules, optax losses, jax.nn,
jax.scipy, pytrees, float32 and float64, keys and integer arguments, custom rules, batched
linear algebra, every control-flow and indexing form) found one class of wrong Jacobians: an
operand broadcast against an elementwise operation's output had a dense partial, whose structural
zeros met the infinite partial of a square root at a zero norm and gave NaN in the Jacobian of the
other rows, where jax.jacfwd has 0 (``cosine_similarity_zero_row``, ``padded_token_normalise``).
The others here stand for the probe's groups: an attention with a padding mask of ``-inf`` on
4-D arrays, a triplet loss with a safe norm, the Moré–Garbow–Hillstrom Osborne 2 and discrete
integral equation residuals, SPH densities by a ``jnp.where`` kernel, generalised advantage
estimation by a reverse scan, a cube root by bisection in a while loop with a fixed trip count, a
piecewise cubic by ``lax.switch`` on ``jnp.digitize``, a graph's segment mean, a Kepler orbit with a
NamedTuple state, ties in max and maximum, and ISTA with a custom-JVP soft threshold whose
threshold is a non-differentiable argument.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_RNG = np.random.default_rng(1616)


def _normal(*shape, dtype=np.float64, scale=0.5):
    return (scale * _RNG.normal(size=shape)).astype(dtype)


def cosine_similarity_zero_row(x, y):
    """Pairwise cosine similarities with eps-clamped norms (``x / max(||x||, eps)``), x holding an
    all-zero (padding) row whose similarities are masked to 0 by ``jnp.where``: jax.jacfwd is finite
    everywhere (NaN in the other rows' blocks before session 16: dense broadcast partials)."""
    xn = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    yn = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-8)
    return jnp.where(jnp.any(x != 0, axis=-1)[:, None], xn @ yn.T, 0.0)


def padded_token_normalise(table, tokens):
    """Token embeddings [batch, time, features] from a table whose padding row is zero, l2-normalised
    per token, then mean-pooled over the unpadded tokens (``jnp.where`` on the padding mask)."""
    e = table[tokens]
    e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    mask = (tokens != 0)[..., None]
    return jnp.sum(jnp.where(mask, e, 0.0), axis=1) / jnp.maximum(mask.sum(1), 1)


def masked_attention(q, k, v, lengths):
    """Multi-head attention by einsum on [batch, heads, time, dim], keys past each sequence's length
    masked to -inf before the softmax (``lengths`` an integer argument)."""
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(q.shape[-1])
    valid = jnp.arange(k.shape[2])[None, :] < lengths[:, None]
    s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
    return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(s, axis=-1), v)


def triplet_margin(anchor, positive, negative):
    """Triplet margin loss with a safe norm (double ``jnp.where``: zero distance included) and a
    hinge that is exactly at zero for one triplet."""

    def safe_norm(v):
        sq = jnp.sum(v * v, axis=-1)
        ok = sq > 0
        return jnp.where(ok, jnp.sqrt(jnp.where(ok, sq, 1.0)), 0.0)

    return jnp.maximum(safe_norm(anchor - positive) - safe_norm(anchor - negative) + 0.2, 0.0)


_T_OSBORNE2 = np.arange(65) / 10.0
_Y_OSBORNE2 = 1.366 * np.exp(-0.6 * _T_OSBORNE2) + 0.3 * np.exp(-0.8 * (_T_OSBORNE2 - 1.2) ** 2)


def osborne2(x):
    """Moré–Garbow–Hillstrom problem 19, Osborne 2: 65 residuals of a sum of an exponential and three
    Gaussians in 11 parameters."""
    t = _T_OSBORNE2
    model = (x[0] * jnp.exp(-t * x[4]) + x[1] * jnp.exp(-(t - x[8]) ** 2 * x[5])
             + x[2] * jnp.exp(-(t - x[9]) ** 2 * x[6]) + x[3] * jnp.exp(-(t - x[10]) ** 2 * x[7]))
    return _Y_OSBORNE2 - model


def discrete_integral_equation(x):
    """Moré–Garbow–Hillstrom problem 30, the discrete integral equation: its triangular sums as a
    cumulative sum and a reversed cumulative sum."""
    n = x.shape[0]
    h = 1.0 / (n + 1)
    t = jnp.arange(1, n + 1) * h
    c = (x + t + 1.0) ** 3
    left = jnp.cumsum(t * c)
    right = jnp.cumsum((1 - t)[::-1] * c[::-1])[::-1]
    right = jnp.concatenate([right[1:], jnp.zeros(1)])
    return x + h / 2 * ((1 - t) * left + t * right)


def sph_density(positions, h):
    """Smoothed-particle densities with the poly6 kernel ``jnp.where(r^2 < h^2, (h^2 - r^2)^3, 0)``, a
    particle out of everyone's reach included; the smoothing length is differentiated too."""
    d = positions[:, None, :] - positions[None, :, :]
    r2 = jnp.sum(d ** 2, -1)
    w = jnp.where(r2 < h ** 2, (h ** 2 - r2) ** 3, 0.0)
    return 315.0 / (64 * jnp.pi * h ** 9) * w.sum(1)


def gae_reverse_scan(rewards, values, gamma):
    """Generalised advantage estimation (reinforcement learning): a ``lax.scan(..., reverse=True)``
    over time; advantages and returns."""
    deltas = rewards + gamma * values[1:] - values[:-1]

    def step(advantage, delta):
        advantage = delta + gamma * 0.95 * advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(step, jnp.zeros(()), deltas, reverse=True)
    return advantages, advantages + values[:-1]


def bisection_cube_root(a):
    """Cube roots by 20 bisection steps: a ``lax.while_loop`` on a counter (a fixed trip count), the
    bracket chosen by ``jnp.where``; its derivative is that of ``0 * a`` (the bracket is piecewise
    constant in a)."""

    def body(state):
        i, lo, hi = state
        mid = 0.5 * (lo + hi)
        too_big = mid ** 3 > a
        return i + 1, jnp.where(too_big, lo, mid), jnp.where(too_big, mid, hi)

    _, lo, hi = jax.lax.while_loop(lambda s: s[0] < 20, body, (0, jnp.zeros_like(a), jnp.full_like(a, 4.0)))
    return 0.5 * (lo + hi) + 0.0 * a


def spline_switch(x, coefs):
    """A piecewise cubic: ``lax.switch`` on the interval index from ``jnp.digitize`` (knots hit
    exactly), vmapped over the points; coefficients differentiated."""
    knots = jnp.array([-1.0, 0.0, 1.0])

    def piece(k):
        return lambda t: coefs[k, 0] + t * (coefs[k, 1] + t * (coefs[k, 2] + t * coefs[k, 3]))

    def one(t):
        index = jnp.clip(jnp.digitize(t, knots), 0, 3)
        return jax.lax.switch(index, [piece(k) for k in range(4)], t)

    return jax.vmap(one)(x)


_SENDERS = np.array([0, 1, 2, 2, 3, 0], np.int32)
_RECEIVERS = np.array([1, 2, 0, 3, 3, 3], np.int32)


def segment_mean_messages(node_features, edge_weights):
    """A graph layer: weighted messages gathered from senders, ``segment_sum`` to receivers, divided
    by each node's in-degree (node 4 receives none)."""
    messages = node_features[_SENDERS] * edge_weights[:, None]
    total = jax.ops.segment_sum(messages, _RECEIVERS, num_segments=5)
    count = jax.ops.segment_sum(jnp.ones_like(edge_weights), _RECEIVERS, num_segments=5)
    return total / jnp.maximum(count, 1.0)[:, None]


class Orbit(NamedTuple):
    """Position and momentum of a body in a plane."""

    q: jax.Array
    p: jax.Array


def kepler_energy_drift(state, gm):
    """Five symplectic Euler steps of a Kepler orbit over a NamedTuple state (``lax.scan``), and the
    drift of the softened energy: a NamedTuple and a scalar out."""

    def energy(s):
        return 0.5 * jnp.sum(s.p ** 2) - gm / jnp.sqrt(jnp.sum(s.q ** 2) + 1e-9)

    def step(s, _):
        r = jnp.sqrt(jnp.sum(s.q ** 2))
        p = s.p - 0.05 * gm * s.q / r ** 3
        return Orbit(s.q + 0.05 * p, p), None

    final, _ = jax.lax.scan(step, state, None, length=5)
    return final, energy(final) - energy(state)


def max_ties(x, y):
    """Ties everywhere: ``jnp.max`` over a vector and over rows with repeated maxima, ``jnp.maximum``
    of equal entries, relu and abs at their kinks, and the entry ``argmax`` picks."""
    return (jnp.max(x), jnp.max(x.reshape(2, 3), axis=1), jnp.maximum(x, y), jax.nn.relu(x - 0.5),
            jnp.abs(x - y), x[jnp.argmax(x)])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _soft_threshold(x, lam):
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - lam, 0.0)


@_soft_threshold.defjvp
def _soft_threshold_jvp(lam, primals, tangents):
    (x,), (t,) = primals, tangents
    return _soft_threshold(x, lam), jnp.where(jnp.abs(x) > lam, t, 0.0)


def ista_lasso(a, b):
    """Four ISTA steps for the lasso in a ``lax.scan``, the soft threshold a custom-JVP function
    whose threshold is a non-differentiable argument (``nondiff_argnums``)."""

    def body(x, _):
        return _soft_threshold(x - 0.25 * a.T @ (a @ x - b), 0.05), None

    x, _ = jax.lax.scan(body, jnp.zeros(a.shape[1]), None, length=4)
    return x


#: Functions whose reference Jacobian is jax.jacfwd: jax.jacrev cannot differentiate the while loop of
#: ``bisection_cube_root``, and gives NaN where jax.jacfwd has finite numbers behind a masked zero
#: norm (its VJP multiplies the zero cotangent of the masked rows by the square root's infinite
#: derivative).
JACFWD_REFERENCE = frozenset({"bisection_cube_root", "cosine_similarity_zero_row", "padded_token_normalise"})


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    f32 = np.float32
    table = np.concatenate([np.zeros((1, 3)), _normal(4, 3)])
    return [
        ("layers", cosine_similarity_zero_row,
         (np.array([[0.1, 0.2, 0.0], [0.0, 0.0, 0.0], [1.0, -1.0, 2.0]]), _normal(2, 3)), (0, 1)),
        ("layers", padded_token_normalise, (table, np.array([[1, 3, 0], [2, 0, 0]], np.int32)), 0),
        ("layers", masked_attention, (_normal(2, 2, 3, 2, dtype=f32), _normal(2, 2, 4, 2, dtype=f32),
                                      _normal(2, 2, 4, 2, dtype=f32), np.array([4, 2], np.int32)), (0, 1, 2)),
        ("losses", triplet_margin, (np.array([[0.1, 0.2], [0.3, 0.3], [1.0, 0.0]]),
                                    np.array([[0.1, 0.2], [0.0, 0.4], [0.0, 1.0]]),
                                    np.array([[0.5, 0.2], [0.3, 0.3], [2.0, 0.0]])), (0, 1, 2)),
        ("residuals", osborne2, (np.array([1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5]),), 0),
        ("residuals", discrete_integral_equation, (np.linspace(0.1, -0.3, 5),), 0),
        ("particles", sph_density, (np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.6], [2.0, 2.0]]), np.float64(1.0)),
         (0, 1)),
        ("control flow", gae_reverse_scan, (_normal(5), _normal(6), np.float64(0.99)), (0, 1, 2)),
        ("control flow", bisection_cube_root, (np.array([2.0, 8.0, 0.5]),), 0),
        ("control flow", spline_switch, (np.array([-1.5, -1.0, -0.3, 0.0, 0.4, 1.2]), _normal(4, 4)), (0, 1)),
        ("indexing", segment_mean_messages, (_normal(5, 2), _normal(6)), (0, 1)),
        ("integrators", kepler_energy_drift, (Orbit(np.array([1.0, 0.0]), np.array([0.0, 1.1])), np.float64(1.0)),
         (0, 1)),
        ("other", max_ties, (np.array([0.5, 0.2, 0.5, 0.0, 0.5, -1.0]), np.array([0.5, 0.1, 0.6, 0.0, 0.2, -1.0])),
         (0, 1)),
        ("control flow", ista_lasso, (_normal(4, 3), _normal(4)), (0, 1)),
    ]
