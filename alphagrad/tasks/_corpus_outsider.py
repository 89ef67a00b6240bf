"""Corpus functions written the way an outside user writes them, from the session-6 probe battery.

Each is a style or a corner the other groups do not have, and several found a bug: float32
parameters in a float64 model (flax's default ``param_dtype`` under x64), special functions whose
JVP rules refuse tangents for their constant operands (``polygamma``, ``betainc``, ``gammainc``), a
generic ``lax.reduce`` over an operand tuple, ``odeint`` (a custom VJP rule with a while loop);
besides NamedTuple and nested-dict parameters, ``functools.partial`` keyword arguments, pytree
``lax.cond`` branches, ``lax.custom_root`` and ``custom_linear_solve``, ``associative_scan``, gather
and scatter modes, masked softmax, the Moré–Garbow–Hillstrom Gulf research and Watson residuals,
the MINPACK-2 Bratu stencil, rotations, and checkpoint/vmap/named_call inside a function.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.ode import odeint

_RNG = np.random.default_rng(606)


def _normal(*shape, dtype=np.float64, scale=0.5):
    return (scale * _RNG.normal(size=shape)).astype(dtype)


# ---- layers and losses -------------------------------------------------------------------------


def mixed_precision_dense(params, x):
    """A flax-style Dense + tanh with float32 parameters on float64 data (flax's default param_dtype under x64)."""
    kernel, bias = (jnp.asarray(params[k], x.dtype) for k in ("kernel", "bias"))
    return jnp.tanh(x @ kernel + bias)


class LSTMParams(NamedTuple):
    """Input and recurrent weights [features|hidden, 4 hidden] and bias [4 hidden]."""

    wx: jax.Array
    wh: jax.Array
    b: jax.Array


def lstm_cell_namedtuple(params: LSTMParams, carry, x):
    """One LSTM cell step with NamedTuple parameters and a (c, h) tuple carry; returns the new carry."""
    c, h = carry
    i, f, g, o = jnp.split(x @ params.wx + h @ params.wh + params.b, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return c, jax.nn.sigmoid(o) * jnp.tanh(c)


def grouped_strided_conv(kernel, x):
    """A grouped (feature_group_count=2), strided, SAME-padded NHWC convolution, as flax.linen.Conv builds it."""
    y = jax.lax.conv_general_dilated(x, kernel, window_strides=(2, 2), padding="SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
    return jax.nn.silu(y)


def padded_attention(w, x):
    """Self-attention over padded sequences (lengths 3 and 2): a key-padding mask filled with finfo.min."""
    mask = jnp.arange(x.shape[1])[None, :] < jnp.array([3, 2])[:, None]
    q, k, v = x @ w["q"], x @ w["k"], x @ w["v"]
    scores = jnp.einsum("btd,bsd->bts", q, k) / jnp.sqrt(q.shape[-1])
    scores = jnp.where(mask[:, None, :], scores, jnp.finfo(scores.dtype).min)
    return jnp.einsum("bts,bsd->btd", jax.nn.softmax(scores, axis=-1), v)


def gelu_block_partial(params, x):
    """A two-layer block whose activations are functools.partial objects with keyword arguments."""
    exact_gelu = functools.partial(jax.nn.gelu, approximate=False)
    leaky = functools.partial(jax.nn.leaky_relu, negative_slope=0.2)
    return leaky(exact_gelu(x @ params["l1"]["w"]) @ params["l2"]["w"]) + jax.nn.gelu(x, approximate=True).sum()


def masked_softmax_losses(logits):
    """A masked softmax (where=), logsumexp with weights b= and a one-hot label-smoothed cross-entropy."""
    mask = np.array([[True, False, True, True], [True, True, True, False]])
    probs = jax.nn.softmax(logits, axis=-1, where=mask)
    weighted = jax.nn.logsumexp(logits, axis=-1, b=jnp.array([1.0, 0.5, 0.25, 2.0]))
    targets = 0.9 * jax.nn.one_hot(jnp.array([2, 0]), 4) + 0.1 / 4
    smoothed = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    return probs, weighted + smoothed


def gamma_regression_nll(x):
    """A negative log-likelihood with special functions: gammaln, digamma, polygamma, betainc, gammainc."""
    from jax.scipy import special

    shape = jnp.exp(x)
    return (special.gammaln(shape) - (shape - 1) * special.digamma(shape) + special.polygamma(1, shape)
            + special.betainc(2.0, 3.0, jax.nn.sigmoid(x)) + special.gammainc(1.5, shape))


# ---- residuals, integrators, robotics ----------------------------------------------------------


def gulf_research(x):
    """The Moré–Garbow–Hillstrom Gulf research residual: |y_i - x_1| ** x_2 with both operands varying."""
    t = jnp.arange(1, 6) / 100.0
    y = 25 + (-50 * jnp.log(t)) ** (2 / 3)
    return jnp.exp(-jnp.abs(y - x[1]) ** x[2] / x[0]) - t


def watson(x):
    """The Moré–Garbow–Hillstrom Watson residual: sums of powers of t over Python loops, plus two extra rows."""
    rows = []
    for i in range(1, 30, 10):
        t = i / 29.0
        s1 = sum(j * x[j] * t ** (j - 1) for j in range(1, x.shape[0]))
        s2 = sum(x[j] * t**j for j in range(x.shape[0]))
        rows.append(s1 - s2**2 - 1)
    return jnp.stack(rows + [x[0], x[1] - x[0] ** 2 - 1])


def bratu_residual(u):
    """The MINPACK-2 solid-fuel-ignition (Bratu) residual on a 4x4 interior grid, zero boundary by jnp.pad."""
    h = 1.0 / (u.shape[0] + 1)
    up = jnp.pad(u, 1)
    laplacian = (4 * u - up[2:, 1:-1] - up[:-2, 1:-1] - up[1:-1, 2:] - up[1:-1, :-2]) / h**2
    return laplacian - 6.0 * jnp.exp(u)


def odeint_oscillator(y0, k):
    """A damped oscillator's state at t = 0, 0.5 by jax.experimental.ode.odeint (a custom VJP: an adjoint solve)."""
    def rhs(y, t, k):
        return jnp.stack([y[1], -k * y[0] - 0.1 * y[1]])

    return odeint(rhs, y0, jnp.array([0.0, 0.5]), k, rtol=1e-9, atol=1e-9)


def fori_history(x0):
    """Five damped steps in lax.fori_loop writing each state into a history buffer with .at[i].set."""
    def body(i, carry):
        x, history = carry
        x = x - 0.1 * jnp.sin(x)
        return x, history.at[i].set(x)

    return jax.lax.fori_loop(0, 5, body, (x0, jnp.zeros((5, x0.shape[0]), x0.dtype)))[1]


def rodrigues_rotation(w):
    """The SO(3) exponential map (Rodrigues' formula) of a rotation vector, applied to a fixed vector."""
    theta = jnp.sqrt(jnp.sum(w**2))
    k = jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    r = jnp.eye(3) + jnp.sin(theta) / theta * k + (1 - jnp.cos(theta)) / theta**2 * k @ k
    return r @ jnp.array([1.0, 2.0, 3.0])


# ---- control flow, indexing, scans, linear algebra ---------------------------------------------


def cond_pytree_branches(p, x):
    """lax.cond on a value, with a dict of parameters as operand and a dict as result in both branches."""
    return jax.lax.cond(jnp.sum(x) > 0,
                        lambda q, y: {"a": q["w"] @ y, "b": y * q["s"]},
                        lambda q, y: {"a": -q["w"] @ y, "b": y + q["s"]}, p, x)


def switch_by_value(x):
    """lax.switch on a branch index computed from the input (floor, clip, integer cast)."""
    index = jnp.clip(jnp.floor(x[0] + 1.5).astype(jnp.int32), 0, 2)
    return jax.lax.switch(index, [lambda y: y**2, jnp.sin, lambda y: jnp.exp(-y)], x)


def cubic_custom_root(a):
    """The root of x^3 + a x - 1 by lax.custom_root (Newton iterations, implicit derivative)."""
    def residual(x):
        return x**3 + a * x - 1.0

    def newton(g, x0):
        x = x0
        for _ in range(30):
            x = x - g(x) / (3 * x**2 + a)
        return x

    return jax.lax.custom_root(residual, jnp.ones_like(a), newton, lambda g, y: y / g(jnp.ones_like(y)))


def custom_linear_solve_pair(a, b):
    """A x = b through lax.custom_linear_solve with explicit solve and transpose_solve."""
    return jax.lax.custom_linear_solve(lambda x: a @ x, b, lambda _, y: jnp.linalg.solve(a, y),
                                       transpose_solve=lambda _, y: jnp.linalg.solve(a.T, y))


def linear_recurrence(a, b):
    """h_t = a_t h_{t-1} + b_t by lax.associative_scan over (multiplier, offset) pairs."""
    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    return jax.lax.associative_scan(combine, (a, b))[1]


def gather_scatter_modes(x, u):
    """Out-of-bounds gathers (clip, fill, wrap) and scatters (.min, .max, unique .mul, .add with mode=drop)."""
    idx = np.array([0, 5, -1, 2])
    dup = np.array([0, 2, 2, 1])
    gathered = x.at[idx].get(mode="clip") + x.at[idx].get(mode="fill", fill_value=7.0) + jnp.take(x, idx, mode="wrap")
    scattered = (x.at[np.array([0, 2, 3, 1])].mul(u, unique_indices=True) + x.at[dup].min(u)
                 + x.at[dup].max(u) + x.at[idx].add(u**2, mode="drop"))
    return gathered + scattered


def paired_reduce(x):
    """A generic lax.reduce over an operand pair (x, x**2) with a custom computation, and a product reduce."""
    sums = jax.lax.reduce((x, x**2), (0.0, 0.0), lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))
    return sums[0] * sums[1] + jax.lax.reduce(x, 1.0, jax.lax.mul, (0,))


def checkpointed_vmap_block(w, xs):
    """A rematerialised (jax.checkpoint) block, vmapped over rows inside a nested jit and a named_call."""
    @jax.checkpoint
    def block(x):
        return jnp.tanh(w @ x) * x[:2]

    inner = jax.jit(jax.named_call(jax.vmap(block), name="block"))
    return inner(xs) + inner(jnp.sin(xs))


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module: float64
    except the float32 parameters of `mixed_precision_dense` and the float32 conv and LSTM."""
    f32 = np.float32
    spd = _normal(3, 3)
    spd = spd @ spd.T + 3 * np.eye(3)
    lstm = LSTMParams(_normal(2, 8, dtype=f32), _normal(2, 8, dtype=f32), _normal(8, dtype=f32))
    return [
        ("layers", mixed_precision_dense, ({"kernel": _normal(3, 2, dtype=f32), "bias": _normal(2, dtype=f32)},
                                           _normal(4, 3)), (0, 1)),
        ("layers", lstm_cell_namedtuple, (lstm, (_normal(2, 2, dtype=f32), _normal(2, 2, dtype=f32)),
                                          _normal(2, 2, dtype=f32)), (0, 1, 2)),
        ("layers", grouped_strided_conv, (_normal(3, 3, 1, 4, dtype=f32), _normal(1, 5, 5, 2, dtype=f32)), (0, 1)),
        ("layers", padded_attention, ({"q": _normal(3, 2), "k": _normal(3, 2), "v": _normal(3, 2)}, _normal(2, 4, 3)),
         (0, 1)),
        ("layers", gelu_block_partial, ({"l1": {"w": _normal(3, 4)}, "l2": {"w": _normal(4, 2)}}, _normal(2, 3)), (0, 1)),
        ("losses", masked_softmax_losses, (_normal(2, 4, scale=1.0),), 0),
        ("losses", gamma_regression_nll, (_normal(4),), 0),
        ("residuals", gulf_research, (np.array([5.0, 2.5, 0.15]),), 0),
        ("residuals", watson, (_normal(3, scale=0.3),), 0),
        ("stencils", bratu_residual, (_normal(4, 4, scale=0.1),), 0),
        ("integrators", odeint_oscillator, (np.array([1.0, 0.0]), np.float64(2.0)), (0, 1)),
        ("integrators", fori_history, (_normal(2),), 0),
        ("robotics", rodrigues_rotation, (_normal(3),), 0),
        ("control flow", cond_pytree_branches, ({"w": _normal(2, 3), "s": np.float64(1.5)}, _normal(3)), (0, 1)),
        ("control flow", switch_by_value, (np.array([0.2, -0.4, 1.1]),), 0),
        ("control flow", cubic_custom_root, (np.abs(_normal(3)) + 1,), 0),
        ("linear algebra", custom_linear_solve_pair, (spd, _normal(3)), (0, 1)),
        ("sort and scan", linear_recurrence, (_normal(4), _normal(4)), (0, 1)),
        ("indexing", gather_scatter_modes, (_normal(4), _normal(4)), (0, 1)),
        ("sort and scan", paired_reduce, (_normal(3, 2),), 0),
        ("other", checkpointed_vmap_block, (_normal(2, 3), _normal(4, 3)), (0, 1)),
    ]


#: Reference Jacobian jax.jacfwd: float32 parameters in a float64 model, whose float64 blocks
#: (the output's dtype, every digit) jax.jacrev rounds to the parameters' float32.
JACFWD_REFERENCE = frozenset({"mixed_precision_dense"})
