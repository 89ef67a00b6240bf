"""Corpus functions from the session-18 held-out rehearsal: model and science code as outsiders write it.

A probe of 230 functions (rotary multi-head attention with causal and key-padding masks,
grouped-query and sliding-window attention, RMSNorm, SwiGLU, mixture-of-experts routing by
``lax.top_k`` and by capacity, strided, dilated, grouped, depthwise and transposed convolutions,
pooling by ``lax.reduce_window``, optax losses (CTC among them), flax linen modules applied with
their parameters as the argument, ``odeint``, Runge–Kutta tableaux, symplectic and implicit
integrators, MUSCL and superbee limiters, spectral derivatives, MGH residuals, splines, quadrature,
``lax.switch``/``cond``/``scan``/``fori_loop``/``while_loop`` nested in one another, segment
reductions, scatter max/min, linear algebra from Cholesky to ``expm``, pytree, scalar, float32,
zero-size and integer arguments, generated programs of up to 10,351 equations) found every
Jacobian equal to jax.jacfwd's in every order, no NaN where jax.jacfwd is finite and every count
equal to ``graph.cost``; the only differences were near-ties of ``jnp.minimum``/``maximum`` whose
side XLA's rounding flips between compilations (``jax.jit(jax.jacfwd)`` and eager jax.jacfwd disagree
there too). These six, cheap to test, stand for its groups:
top-2 expert gating, a transposed convolution followed by a depthwise one, the MGH Watson
residuals, Gauss–Seidel sweeps as a scan inside a ``fori_loop``, a straight-through soft
histogram, and a log-determinant by ``jax.scipy.linalg.lu``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy as jsp
import numpy as np

_RNG = np.random.default_rng(1818)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def top2_expert_gating(x, w_gate, experts):
    """Mixture of experts: ``lax.top_k`` picks two experts per token, a softmax over their logits
    gives the gates, spread back over all experts by ``one_hot``; every expert runs densely."""
    values, index = jax.lax.top_k(x @ w_gate, 2)
    gates = jax.nn.softmax(values, axis=-1)
    combine = jnp.sum(jax.nn.one_hot(index, w_gate.shape[1]) * gates[..., None], axis=1)
    return jnp.einsum("ne,nek->nk", combine, jnp.tanh(jnp.einsum("nd,edk->nek", x, experts)))


def watson_residuals(x):
    """The Watson function's 31 residuals (Moré, Garbow and Hillstrom no. 20) for n = 6, written
    with broadcast powers of 29 sample points instead of loops."""
    n = x.shape[0]
    t = jnp.arange(1, 30) / 29.0
    j = jnp.arange(n)
    s1 = jnp.sum((j[1:] * x[1:])[None, :] * t[:, None] ** (j[1:] - 1)[None, :], axis=1)
    s2 = jnp.sum(x[None, :] * t[:, None] ** j[None, :], axis=1)
    return jnp.concatenate([s1 - s2 ** 2 - 1, jnp.array([x[0], x[1] - x[0] ** 2 - 1])])


def gauss_seidel_sweeps(a, x):
    """Three Gauss–Seidel sweeps for ``a x = 1``: a ``fori_loop`` over sweeps, each a ``lax.scan``
    over rows that updates one entry with ``.at[i].set``."""
    a = jnp.asarray(a)

    def sweep(_, x):
        def row(x, i):
            return x.at[i].set((1.0 - a[i] @ x + a[i, i] * x[i]) / a[i, i]), None

        return jax.lax.scan(row, x, jnp.arange(x.shape[0]))[0]

    return jax.lax.fori_loop(0, 3, sweep, x)


def soft_histogram_straight_through(x, centres):
    """A soft histogram (softmax of negative squared distances to the bin centres) and a hard one
    by ``one_hot(argmax)`` with the straight-through trick (``hard + w - stop_gradient(w)``)."""
    w = jax.nn.softmax(-(x[:, None] - centres[None, :]) ** 2 / 0.1, axis=1)
    hard = jax.nn.one_hot(jnp.argmax(w, 1), centres.shape[0])
    return (hard + w - jax.lax.stop_gradient(w)).sum(0), w.sum(0)


def logdet_by_lu(a):
    """``log |det a|`` from the U factor of ``jax.scipy.linalg.lu`` (permutation, L, U)."""
    _, _, u = jsp.linalg.lu(a)
    return jnp.sum(jnp.log(jnp.abs(jnp.diag(u))))


def upsample_depthwise(x, w_up, w_depth):
    """A decoder stage: ``lax.conv_transpose`` with stride 2 and SAME padding (NHWC), then a
    depthwise 3x3 convolution (``feature_group_count`` = channels, two filters per channel) and
    a leaky relu."""
    y = jax.lax.conv_transpose(x, w_up, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.lax.conv_general_dilated(y, w_depth, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=y.shape[-1])
    return jax.nn.leaky_relu(y, 0.1)


#: Functions whose reference Jacobian is jax.jacfwd (none: jax.jacrev differentiates them all).
JACFWD_REFERENCE = frozenset()


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    return [
        ("layers", top2_expert_gating, (_normal(5, 3), _normal(3, 4), _normal(4, 3, 2)), (0, 1, 2)),
        ("layers", upsample_depthwise, (_normal(1, 3, 3, 2), _normal(3, 3, 2, 3), _normal(3, 3, 1, 6)), (0, 1, 2)),
        ("residuals", watson_residuals, (_normal(6),), 0),
        ("control flow", gauss_seidel_sweeps, (np.eye(4) * 4 + _normal(4, 4), _normal(4)), (0, 1)),
        ("indexing", soft_histogram_straight_through, (_normal(6), np.array([-0.5, 0.0, 0.5])), (0, 1)),
        ("linear algebra", logdet_by_lu, (_normal(4, 4) + 2 * np.eye(4),), 0),
    ]
