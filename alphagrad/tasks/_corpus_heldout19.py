"""Corpus functions from the session-19 held-out rehearsal: float32 code as users who never enable x64 write it.

A probe of 280 functions in float32 with ``jax_enable_x64`` off (JAX's default: the whole corpus, 34 new
numerically touchy functions: saturated softmax, cancellation in variances and layer norms of large means, long
sums, ill-conditioned solves, float16 and bfloat16 arguments, bfloat16 matmuls inside; 78 functions of the
session-18 rehearsal and 5 generated programs), each compared with jax.jacfwd in float32 and with a float64
reference at the same inputs, found every Jacobian as close to the float64 truth as jax.jacfwd's own (within a
factor 4.4 of jacfwd's error where it is above 1e-7 of max|J|), no NaN where
jax.jacfwd is finite and every count equal to ``graph.cost``; the exception is ``lax.reduce_precision``, whose
JAX rule rounds tangents (jax.jacfwd and jax.jacrev disagree there; alphagrad takes the straight-through
derivative). These seven, cheap to test, stand for its forms: a float16 argument computed in float32, bfloat16
weights upcast for a matmul, causal attention masked by ``jnp.finfo(jnp.float32).min``, Welford's running
variance as a ``lax.scan`` with a float32 counter in its carry, a parameter pytree registered by
``jax.tree_util.register_dataclass`` with a static field, sinusoidal positions from integer ``arange`` with a
parity ``where``, and global-norm gradient clipping of two arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

_RNG = np.random.default_rng(1919)


def _normal(*shape, scale=1.0):
    return (scale * _RNG.normal(size=shape)).astype(np.float32)


def float16_argument_upcast(x, w):
    """A layer whose input arrives in float16 and is computed in float32: ``tanh(x.astype(f32) @ w)``."""
    return jnp.tanh(x.astype(jnp.float32) @ w)


def bfloat16_weights_matmul(x, w):
    """Weights stored in bfloat16, cast up to float32 for the matmul, then a relu."""
    return jax.nn.relu(x @ w.astype(jnp.float32))


def attention_finfo_min_mask(q, k, v):
    """Causal attention whose masked scores are ``jnp.finfo(jnp.float32).min`` (not -inf), as many
    float32 codebases write it."""
    s = q @ k.T / jnp.sqrt(jnp.float32(q.shape[-1]))
    mask = jnp.tril(jnp.ones((q.shape[0], k.shape[0]), bool))
    s = jnp.where(mask, s, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(s, -1) @ v


def welford_scan(x):
    """Welford's running mean and variance over rows: a ``lax.scan`` whose carry is (count, mean, M2),
    the count a float32 scalar; returns the variance and the last three running means."""

    def step(carry, row):
        count, mean, m2 = carry
        count = count + 1.0
        delta = row - mean
        mean = mean + delta / count
        m2 = m2 + delta * (row - mean)
        return (count, mean, m2), mean

    init = (jnp.float32(0.0), jnp.zeros(x.shape[1], x.dtype), jnp.zeros(x.shape[1], x.dtype))
    (_, _, m2), means = jax.lax.scan(step, init, x)
    return m2 / (x.shape[0] - 1), means[-3:]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class MLPParams:
    """Parameters of a weight-tied MLP as a registered dataclass; ``depth`` is a static field."""

    w: jax.Array
    b: jax.Array
    depth: int = dataclasses.field(metadata=dict(static=True), default=2)


def dataclass_params_mlp(params, x):
    """``depth`` tanh layers sharing one weight matrix, the parameters a `MLPParams` pytree."""
    for _ in range(params.depth):
        x = jnp.tanh(x @ params.w + params.b)
    return x


def sinusoidal_positions(x):
    """Sinusoidal position encodings from integer ``arange`` (sin on even, cos on odd features, by
    ``where`` on the parity), added to the input, then a gated output."""
    pos = jnp.arange(x.shape[0])[:, None]
    i = jnp.arange(x.shape[1])[None, :]
    angle = pos / jnp.power(10000.0, (2 * (i // 2)) / x.shape[1])
    encoding = jnp.where(i % 2 == 0, jnp.sin(angle), jnp.cos(angle))
    return jnp.tanh(x + encoding) * x


def clip_by_global_norm(g1, g2):
    """optax-style clipping of two gradient arrays to global norm 1 (``minimum(1, 1/norm)``)."""
    norm = jnp.sqrt(jnp.sum(g1 ** 2) + jnp.sum(g2 ** 2))
    scale = jnp.minimum(1.0, 1.0 / norm)
    return g1 * scale, g2 * scale


#: Functions whose reference Jacobian is jax.jacfwd: a float16 or bfloat16 argument feeding a float32 output
#: gets float32 blocks (the wider dtype, as jax.jacfwd), where jax.jacrev's are the argument's dtype.
JACFWD_REFERENCE = frozenset({"float16_argument_upcast", "bfloat16_weights_matmul"})


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    return [
        ("layers", float16_argument_upcast, (_normal(3, 4).astype(np.float16), _normal(4, 5)), (0, 1)),
        ("layers", bfloat16_weights_matmul, (_normal(3, 4), jnp.asarray(_normal(4, 5), dtype=jnp.bfloat16)), (0, 1)),
        ("layers", attention_finfo_min_mask, (_normal(5, 4), _normal(5, 4), _normal(5, 3)), (0, 1, 2)),
        ("control flow", welford_scan, (3.0 + _normal(12, 3),), 0),
        ("layers", dataclass_params_mlp, (MLPParams(_normal(3, 3, scale=0.5), _normal(3, scale=0.1)), _normal(2, 3)), (0, 1)),
        ("indexing", sinusoidal_positions, (_normal(6, 8),), 0),
        ("losses", clip_by_global_norm, (_normal(4, 3), _normal(5)), (0, 1)),
    ]
