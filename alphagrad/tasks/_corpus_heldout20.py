"""Corpus functions from the session-20 held-out rehearsal: kinds of code the earlier rehearsals did not write.

A probe of about 200 functions (Fourier neural operator layers, Mamba-style selective scans, graph attention by
segment softmax, neural-spline flows by ``searchsorted``, sparsemax and entmax, Sinkhorn, soft-DTW, CRF and HMM
recursions, optax losses and optimizer steps, flax linen modules (BatchNorm in eval, ConvLocal, nn.RNN with
sequence lengths, Bidirectional GRUs, ConvLSTM, WeightNorm, lifted vmap/remat); lattice Boltzmann, shallow water,
FDTD, finite-element assembly by scatter-add, particle-in-cell deposits, Hodgkin-Huxley, Heston, thin films,
adaptive Runge-Kutta in a ``while_loop``, LQR and extended Kalman filters with ``jax.jacfwd`` inside, SO(3) and
quaternion maps, NeRF rendering, Gaussian splatting, B-splines; ``jax.scipy.special``/``stats``/``signal``,
``jnp.fft``, ``jnp.gradient``/``unwrap``/``interp(period=)``/``pad`` modes, sparse solvers and BCOO, ``lax.map``
with ``batch_size``, ``custom_vmap``, collectives inside ``jax.vmap``, typed PRNG keys in carries, and three
generated program families of 1,000 and 10,000 equations) found the Jacobians equal to jax.jacfwd's except where
the session-20 report says otherwise. These twelve, cheap to test, stand for its groups: sparsemax by sort and
cumsum, a CRF negative log-likelihood (forward algorithm in a scan, gathers of the gold path), a Mamba-like
selective scan, a Fourier neural operator layer, a particle-in-cell cloud-in-cell deposit solved by FFT, NeRF
volume rendering, the SO(3) log map with its small-angle branch, Lennard-Jones in a periodic box by the minimum
image, P1 finite-element assembly by scatter-add, a scan carrying a typed PRNG key, per-group means by
``jnp.unique(size=)``, and ``lax.all_to_all`` inside ``jax.vmap``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_RNG = np.random.default_rng(2020)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def sparsemax(z):
    """Sparsemax of each row: sort descending, cumulative sums, the support size k(z), the threshold tau read by
    ``take_along_axis`` at k - 1, then ``maximum(z - tau, 0)``."""
    zs = jnp.sort(z, axis=-1)[..., ::-1]
    k = jnp.arange(1, z.shape[-1] + 1)
    cs = jnp.cumsum(zs, -1)
    kz = jnp.sum(1 + k * zs > cs, -1, keepdims=True)
    tau = (jnp.take_along_axis(cs, kz - 1, -1) - 1) / kz
    return jnp.maximum(z - tau, 0)


_TAGS = np.array([0, 2, 1, 1, 3, 0])


def crf_neg_log_likelihood(emissions, transitions):
    """Linear-chain CRF: the forward algorithm (``logsumexp`` in a ``lax.scan``) minus the gold path's score,
    gathered from the emissions and the transition matrix at the tag sequence."""
    def step(alpha, e):
        return jax.nn.logsumexp(alpha[:, None] + transitions, 0) + e, None
    alpha, _ = lax.scan(step, emissions[0], emissions[1:])
    gold = emissions[jnp.arange(_TAGS.size), _TAGS].sum() + transitions[_TAGS[:-1], _TAGS[1:]].sum()
    return jax.nn.logsumexp(alpha) - gold


def selective_scan(x, dt, a, b, c):
    """Mamba-like selective state space: ``softplus(dt)`` step sizes, ``exp(dt * a)`` decays, the recurrence
    ``h = decay * h + dt * b * x`` in a ``lax.scan``, read out by ``h @ c_t``."""
    delta = jax.nn.softplus(dt)
    decay = jnp.exp(delta[:, :, None] * a[None])
    drive = delta[:, :, None] * b[:, None, :] * x[:, :, None]

    def step(h, inputs):
        d, u, ct = inputs
        h = d * h + u
        return h, h @ ct

    _, ys = lax.scan(step, jnp.zeros(decay.shape[1:]), (decay, drive, c))
    return ys


def fourier_layer(x, w_real, w_imag):
    """Fourier neural operator layer: ``rfft2``, complex weights on the lowest 3 x 3 modes (``.at[].set`` into
    a zero spectrum), ``irfft2``, residual and gelu."""
    xf = jnp.fft.rfft2(x, axes=(0, 1))
    w = w_real + 1j * w_imag
    out = jnp.zeros(xf.shape[:2] + (w.shape[-1],), xf.dtype)
    out = out.at[:3, :3].set(jnp.einsum("xyi,xyio->xyo", xf[:3, :3], w))
    return jax.nn.gelu(jnp.fft.irfft2(out, s=x.shape[:2], axes=(0, 1)) + x)


def cloud_in_cell(positions, charges):
    """Particle-in-cell: cloud-in-cell deposit onto 16 periodic cells (``floor`` indices, two ``.at[].add``),
    the field by an FFT Poisson solve, interpolated back to the particles."""
    cells, dx = 16, 1.0 / 16
    s = positions / dx
    i0 = jnp.floor(s).astype(jnp.int32)
    w1 = s - i0
    rho = jnp.zeros(cells).at[i0 % cells].add(charges * (1 - w1)).at[(i0 + 1) % cells].add(charges * w1)
    k = 2 * np.pi * np.fft.fftfreq(cells, dx)
    phi = jnp.where(k == 0, 0, jnp.fft.fft(rho - rho.mean()) / np.where(k == 0, 1.0, k ** 2))
    field = jnp.real(jnp.fft.ifft(-1j * k * phi))
    return field[i0 % cells] * (1 - w1) + field[(i0 + 1) % cells] * w1


def nerf_render(sigma, rgb, deltas):
    """NeRF volume rendering: ``alpha = 1 - exp(-relu(sigma) delta)``, transmittance as an exclusive product by
    a cumulative sum of logs, colour, depth and accumulated opacity per ray."""
    alpha = 1 - jnp.exp(-jax.nn.relu(sigma) * deltas)
    log_t = jnp.cumsum(jnp.log(1 - alpha + 1e-10), -1)
    weights = alpha * jnp.exp(jnp.concatenate([jnp.zeros_like(log_t[:, :1]), log_t[:, :-1]], -1))
    colour = jnp.einsum("rs,rsc->rc", weights, jax.nn.sigmoid(rgb))
    return colour, jnp.sum(weights * jnp.cumsum(deltas, -1), -1), weights.sum(-1)


def so3_log(r):
    """The SO(3) logarithm: ``arccos`` of the clipped ``(trace - 1) / 2``, the axis from the skew part, and a
    small-angle series behind a double ``where``."""
    theta = jnp.arccos(jnp.clip((jnp.trace(r) - 1) / 2, -1.0, 1.0))
    small = theta < 1e-4
    safe = jnp.where(small, 1.0, theta)
    scale = jnp.where(small, 0.5 + theta ** 2 / 12, safe / (2 * jnp.sin(safe)))
    return scale * jnp.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])


def periodic_lennard_jones(positions, box):
    """Lennard-Jones energy in a periodic box: minimum image by ``round(d / box)``, the diagonal kept off the
    pole by ``where(eye, 1, r2)``, a smooth cutoff by ``where``; the box length differentiated too."""
    d = positions[:, None, :] - positions[None, :, :]
    d = d - box * jnp.round(d / box)
    r2 = jnp.sum(d ** 2, -1)
    eye = jnp.eye(positions.shape[0], dtype=bool)
    r2 = jnp.where(eye, 1.0, r2)
    inv6 = 1 / r2 ** 3
    cutoff = jnp.where(r2 < 6.25, (1 - r2 / 6.25) ** 2, 0.0)
    return 0.5 * jnp.sum(jnp.where(eye, 0.0, 4 * (inv6 ** 2 - inv6) * cutoff))


_TRIANGLES = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])


def p1_stiffness_energy(nodes, u):
    """P1 finite elements on four triangles: gradients of the barycentric basis by a batched ``inv``, areas by
    ``det``, element matrices assembled by ``.at[rows, cols].add`` (duplicate indices), the energy u K u."""
    m = jnp.concatenate([jnp.ones((4, 3, 1)), nodes[_TRIANGLES]], -1)
    grads = jnp.linalg.inv(m)[:, 1:, :]
    area = 0.5 * jnp.abs(jnp.linalg.det(m))
    element = area[:, None, None] * jnp.einsum("eki,ekj->eij", grads, grads)
    k = jnp.zeros((5, 5)).at[_TRIANGLES[:, :, None], _TRIANGLES[:, None, :]].add(element)
    return u @ k @ u, k


def noisy_scan_typed_key(x):
    """A ``lax.scan`` whose carry holds a typed PRNG key (``jax.random.key``), split every step to add noise."""
    def step(carry, _):
        key, s = carry
        key, sub = jax.random.split(key)
        s = jnp.tanh(s) + 0.1 * jax.random.normal(sub, s.shape, s.dtype)
        return (key, s), s.sum()

    (_, s), sums = lax.scan(step, (jax.random.key(7), x), None, length=4)
    return s, sums


def grouped_means_unique(x, w):
    """Per-group weighted sums divided by counts, the groups from ``jnp.unique(return_inverse, return_counts,
    size=6)`` of the rounded values, summed by ``segment_sum``."""
    keys = jnp.round(x * 2) / 2
    uniq, inverse, counts = jnp.unique(keys, return_inverse=True, return_counts=True, size=6, fill_value=99.0)
    sums = jax.ops.segment_sum(w, inverse.ravel(), num_segments=6)
    return sums / jnp.maximum(counts, 1), uniq * (counts > 0)


def all_to_all_in_vmap(x):
    """``lax.all_to_all`` inside ``jax.vmap(axis_name=...)``: the mapped axis swapped with a data axis."""
    return jax.vmap(lambda v: lax.all_to_all(v, "i", 0, 0, tiled=False) * jnp.sin(v), axis_name="i")(x)


#: Functions whose reference Jacobian is jax.jacfwd (none: jax.jacrev differentiates all twelve).
JACFWD_REFERENCE = frozenset()


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    triangle_nodes = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]]) + _normal(5, 2, scale=0.05)
    box_positions = np.array([[0.1, 0.2, 0.3], [1.3, 0.2, 0.4], [0.5, 1.5, 2.6], [2.8, 2.9, 0.2], [1.6, 1.4, 1.5]])
    axis, angle = np.array([0.1, 0.2, 0.3]) / np.linalg.norm([0.1, 0.2, 0.3]), np.linalg.norm([0.1, 0.2, 0.3])
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew  # Rodrigues, float64
    return [
        ("losses", sparsemax, (np.array([[1.0, 0.5, -0.3, 0.9], [0.1, 0.2, 0.3, 0.05], [2.0, -1.0, 0.0, 0.4]]),), 0),
        ("losses", crf_neg_log_likelihood, (_normal(6, 4), _normal(4, 4)), (0, 1)),
        ("control flow", selective_scan, (_normal(6, 3), _normal(6, 3), -np.abs(_normal(3, 4)) - 0.1, _normal(6, 4),
                                          _normal(6, 4)), (0, 1, 2, 3, 4)),
        ("layers", fourier_layer, (_normal(8, 8, 2), _normal(3, 3, 2, 2), _normal(3, 3, 2, 2)), (0, 1, 2)),
        ("indexing", cloud_in_cell, (np.array([0.03, 0.21, 0.47, 0.55, 0.71, 0.98]),
                                     np.array([1.0, -1.0, 0.5, 1.0, -0.5, -1.0])), (0, 1)),
        ("layers", nerf_render, (_normal(3, 6, scale=2.0), _normal(3, 6, 3), 0.2 + np.abs(_normal(3, 6, scale=0.05))),
         (0, 1, 2)),
        ("other", so3_log, (rotation,), 0),
        ("other", periodic_lennard_jones, (box_positions, 3.0), (0, 1)),
        ("indexing", p1_stiffness_energy, (triangle_nodes, _normal(5)), (0, 1)),
        ("control flow", noisy_scan_typed_key, (_normal(3),), 0),
        ("indexing", grouped_means_unique, (np.array([0.1, 0.6, 0.2, -0.7, 1.3, 0.55]), _normal(6)), (0, 1)),
        ("other", all_to_all_in_vmap, (_normal(3, 3),), 0),
    ]
