"""Corpus functions from the session-23 held-out rehearsal: kinds of code the earlier rehearsals did not write.

A probe of about 150 functions (library code paths: ``jax.scipy.special``, ``jax.scipy.signal``, ``jax.scipy.fft``
and ``jnp.fft`` real pairs, ``jnp.linalg`` norms of every order, pinv/lstsq/eigh/SVD values, ``jax.nn``'s
activations, ``jax.random`` with fixed keys inside the function, ``jax.scipy.stats`` log-densities; weak types,
float32 inputs, NamedTuple/dict/tuple pytrees in and out, zero-size and rank-0 outputs, argnums variants; nested
``jit``/``vmap``/``checkpoint``/``custom_jvp``/``custom_vjp``/``custom_root`` inside the function, ``while_loop``
with fixed trip counts, nested and reversed/unrolled scans, ``associative_scan``, ``reduce_window`` variants,
``segment_*``, cumulative ops, ``lax.map``, ``select_n`` with many cases, integer powers; piecewise physics and
implicit integrators; exact ties of max/min/clip/sort; poles behind ``where`` inside loops, windows, segments and
cumulative ops; index modes; two generated program families of 1,000 and 10,000 equations) found the Jacobians
equal to jax.jacfwd's except where the session-23 report (/work/notes/corpus23_report.md) says otherwise. These
fifteen, cheap to test, stand for its groups.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.fft as jsfft
import jax.scipy.signal as jsig
import jax.scipy.special as jss
import numpy as np
from jax import lax

_RNG = np.random.default_rng(2323)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def special_erf_family(x):
    """Error-function family of ``jax.scipy.special``: erf, erfc, the normal CDF and its log, erfinv of a
    squashed argument and the normal quantile of a sigmoid, concatenated."""
    return jnp.concatenate([jss.erf(x), jss.erfc(x), jss.ndtr(x), jss.log_ndtr(x), jss.erfinv(jnp.tanh(x) * 0.9),
                            jss.ndtri(jax.nn.sigmoid(x))])


def signal_convolve2d_correlate(img, k):
    """``jax.scipy.signal.convolve2d`` (mode "same", column sums) and ``correlate2d`` (mode "valid") of an image
    with a learned kernel."""
    a = jsig.convolve2d(img, k, mode="same")
    b = jsig.correlate2d(img, k, mode="valid")
    return a.sum(0), b


def dct_lowpass(x):
    """Orthonormal DCT-II, an exponential low-pass on the coefficients, inverse DCT (``jax.scipy.fft``)."""
    c = jsfft.dct(x, type=2, norm="ortho")
    c = c * jnp.exp(-0.1 * jnp.arange(x.shape[-1]))
    return jsfft.idct(c, type=2, norm="ortho")


def linalg_norm_orders(A, v):
    """``jnp.linalg.norm`` of every order: Frobenius, nuclear, spectral, smallest singular value, 1 and inf matrix
    norms; vector 3-, inf-, 0.5- and -inf-norms."""
    return jnp.stack([jnp.linalg.norm(A, "fro"), jnp.linalg.norm(A, "nuc"), jnp.linalg.norm(A, 2),
                      jnp.linalg.norm(A, -2), jnp.linalg.norm(A, 1), jnp.linalg.norm(A, jnp.inf),
                      jnp.linalg.norm(v, 3), jnp.linalg.norm(v, jnp.inf), jnp.linalg.norm(v, 0.5),
                      jnp.linalg.norm(v, -jnp.inf)])


def activation_zoo(x):
    """Fifteen ``jax.nn`` activations (celu, selu, soft_sign, log_sigmoid, hard_tanh, relu6, squareplus, mish,
    hard_swish, hard_sigmoid, elu, leaky_relu, exact gelu, sparse_plus, sparse_sigmoid) stacked."""
    acts = [jax.nn.celu, jax.nn.selu, jax.nn.soft_sign, jax.nn.log_sigmoid, jax.nn.hard_tanh, jax.nn.relu6,
            jax.nn.squareplus, jax.nn.mish, jax.nn.hard_swish, jax.nn.hard_sigmoid, jax.nn.elu,
            lambda t: jax.nn.leaky_relu(t, 0.1), lambda t: jax.nn.gelu(t, approximate=False), jax.nn.sparse_plus,
            jax.nn.sparse_sigmoid]
    return jnp.stack([a(x) for a in acts])


def fixed_key_noise_layer(x, w):
    """A layer with noise drawn inside from fixed keys: Gaussian input noise, a uniform offset and Gumbel noise
    per row (``jax.random.split`` of ``jax.random.key(7)``)."""
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    eps = jax.random.normal(k1, x.shape)
    u = jax.random.uniform(k2, x.shape, minval=-1.0, maxval=1.0)
    g = jax.random.gumbel(k3, (x.shape[0],))
    return jnp.tanh((x + 0.1 * eps) @ w + u.sum(1, keepdims=True)) + g[:, None]


class State(NamedTuple):
    pos: jnp.ndarray
    vel: jnp.ndarray
    t: jnp.ndarray


class Out(NamedTuple):
    energy: jnp.ndarray
    state: State


def namedtuple_oscillator_step(s, k):
    """One symplectic Euler step of a spring system: a NamedTuple state in, a NamedTuple (energy, state) out,
    with a rank-0 time leaf."""
    acc = -k * s.pos
    vel = s.vel + 0.1 * acc
    pos = s.pos + 0.1 * vel
    e = 0.5 * jnp.sum(vel ** 2) + 0.5 * k * jnp.sum(pos ** 2)
    return Out(e, State(pos, vel, s.t + 0.1))


def rank0_and_zero_size_outputs(x):
    """A dict output with a rank-0 sum, zero-size slices of 1 and 2 dimensions, a vector and one entry."""
    return {"scalar": jnp.sum(x ** 2), "empty": x[:0] * 2.0, "empty2d": jnp.zeros((0, 3)) + x[:0, None],
            "vec": jnp.cos(x), "r0": x[1]}


@jax.custom_jvp
def _softclip(x):
    return jnp.where(x > 3.0, 3.0 + jnp.log1p(x - 3.0), x)


@_softclip.defjvp
def _softclip_jvp(primals, tangents):
    x, = primals
    dx, = tangents
    return _softclip(x), jnp.where(x > 3.0, 1.0 / (x - 2.0), 1.0) * dx


def custom_jvp_softclip(x):
    """A ``jax.custom_jvp`` soft clip (identity below 3, logarithmic above) whose rule is the true derivative,
    squared."""
    return _softclip(x * 4.0) ** 2


def scan_reverse_unrolled(xs, a):
    """A linear recurrence by ``lax.scan`` with ``reverse=True`` and ``unroll=2``: final carry and per-step
    outputs."""
    def step(c, x):
        c = a * c + jnp.sin(x)
        return c, c * x
    return lax.scan(step, jnp.zeros(()), xs, reverse=True, unroll=2)


def associative_linear_recurrence(a, b):
    """``h_t = a_t h_{t-1} + b_t`` by ``lax.associative_scan`` over (a, b) pairs (a parallel prefix)."""
    def op(e1, e2):
        a1, b1 = e1
        a2, b2 = e2
        return a1 * a2, a2 * b1 + b2
    return lax.associative_scan(op, (a, b))[1]


def reduce_window_variants(x):
    """``lax.reduce_window``: max with SAME padding and strides, sum with explicit padding, min with window
    dilation, combined."""
    mx = lax.reduce_window(x, -jnp.inf, lax.max, (2, 2), (1, 2), "SAME")
    sm = lax.reduce_window(x, 0.0, lax.add, (3, 1), (1, 1), ((1, 1), (0, 0)))
    mn = lax.reduce_window(x, jnp.inf, lax.min, (2, 2), (1, 1), "VALID", window_dilation=(1, 2))
    return mx.sum() * sm[0] + mn.ravel()[:3].sum()


def cumulative_family(x):
    """cumprod, cummax, reversed cummin, cumlogsumexp, nancumsum and a reversed ``lax.cumprod``, concatenated."""
    return jnp.concatenate([jnp.cumprod(x), lax.cummax(x), lax.cummin(x, reverse=True),
                            lax.cumlogsumexp(x), jnp.nancumsum(x), lax.cumprod(x, reverse=True)])


def select_n_six_cases(x):
    """``lax.select_n`` with six cases picked per entry by a clipped floor of the input."""
    which = jnp.clip(jnp.floor(x * 3 + 3), 0, 5).astype(jnp.int32)
    return lax.select_n(which, x, x ** 2, jnp.sin(x), jnp.exp(x), -x, x ** 3)


def butler_volmer_newton(v, i0, alpha):
    """Electrode current from the Butler-Volmer equation with an ohmic drop, solved by eight unrolled Newton
    steps."""
    r = 0.5
    i = jnp.zeros_like(v)
    for _ in range(8):
        eta = v - i * r
        g = i - i0 * (jnp.exp(alpha * eta) - jnp.exp(-(1 - alpha) * eta))
        dg = 1 + i0 * r * (alpha * jnp.exp(alpha * eta) + (1 - alpha) * jnp.exp(-(1 - alpha) * eta))
        i = i - g / dg
    return i


def segment_mean_empty_segments(x):
    """Segment means by ``segment_sum`` with empty segments guarded by a single ``where`` (0/0 never taken)."""
    ids = jnp.array([0, 0, 2, 2, 4])
    s = jax.ops.segment_sum(x, ids, 5)
    c = jax.ops.segment_sum(jnp.ones_like(x), ids, 5)
    return jnp.where(c > 0, s / c, 0.0)


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    state = State(_normal(3), _normal(3), np.array(0.0))
    return [
        ("library", special_erf_family, (_normal(5),), 0),
        ("library", signal_convolve2d_correlate, (_normal(5, 6), _normal(3, 3)), (0, 1)),
        ("library", dct_lowpass, (_normal(6),), 0),
        ("linear algebra", linalg_norm_orders, (_normal(3, 4), _normal(5)), (0, 1)),
        ("layers", activation_zoo, (_normal(7, scale=2.0) + 0.013,), 0),
        ("layers", fixed_key_noise_layer, (_normal(4, 3), _normal(3, 2)), (0, 1)),
        ("pytrees", namedtuple_oscillator_step, (state, np.array(1.3)), (0, 1)),
        ("pytrees", rank0_and_zero_size_outputs, (_normal(4),), 0),
        ("control flow", custom_jvp_softclip, (_normal(5, scale=1.5),), 0),
        ("control flow", scan_reverse_unrolled, (_normal(5), np.array(0.6)), (0, 1)),
        ("control flow", associative_linear_recurrence, (_normal(7), _normal(7)), (0, 1)),
        ("indexing", reduce_window_variants, (_normal(4, 6),), 0),
        ("indexing", cumulative_family, (_normal(6),), 0),
        ("control flow", select_n_six_cases, (_normal(9, scale=1.0),), 0),
        ("residuals", butler_volmer_newton, (_normal(4, scale=0.3), np.array(0.8), np.array(0.5)), (0, 1, 2)),
        ("other", segment_mean_empty_segments, (_normal(5),), 0),
    ]
