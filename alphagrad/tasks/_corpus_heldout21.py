"""Corpus functions from the session-21 held-out rehearsal: kinds of code the earlier rehearsals did not write.

A probe of about 190 functions (message passing with edge features and scatter-max, mixture density networks,
masked autoregressive, Sylvester and radial flows, deep equilibrium layers with an implicit ``custom_vjp``, neural
ODEs, ALiBi and retention attention, Kolmogorov-Arnold spline layers, CLIP/VICReg/Barlow-twins losses; Kalman
filters and smoothers, unscented and ensemble updates, particle filters, single and multiple shooting, iLQR,
finite volumes with van Leer / MC limiters and an HLL Euler solver, Chebyshev and Fourier spectral methods,
state-vector and density-matrix quantum circuits, IIR filters by ``lax.scan`` and ``associative_scan``, quaternion
kinematics, soft rasterisers and signed distance fields, pharmacokinetic and epidemic ODEs, economics models;
QR/SVD/eigh/pinv/lstsq/matrix_power/expm/cho_solve compositions, rarely used ``lax`` primitives, gather and
scatter modes, soft sorting and ranking, pytree arguments and outputs, poles at padding rows, and three generated
program families of 1,000 and 10,000 equations) found the Jacobians equal to jax.jacfwd's except where the
session-21 report says otherwise. These twelve, cheap to test, stand for its groups: message passing with edge
features aggregated by ``.at[].max``, a masked autoregressive flow by ``solve_triangular``, a mixture density
network's likelihood, the VICReg loss, a two-compartment pharmacokinetic model (RK4 in a ``fori_loop``, read by
``jnp.interp``), a Kalman filter's log-likelihood in a ``lax.scan``, finite-volume advection with a van Leer
limiter, a three-qubit circuit on a complex state vector, a cascade of biquad filters by ``lax.scan``, quaternion
forward kinematics, a Gaussian-process posterior by ``cho_factor``/``cho_solve``, and NeuralSort's relaxed sort.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax import lax

_RNG = np.random.default_rng(2121)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


_SENDERS = np.array([0, 1, 2, 3, 4, 0, 2, 1, 3])
_RECEIVERS = np.array([1, 2, 3, 4, 0, 2, 0, 3, 1])


def edge_message_scatter_max(x, e, w_edge, w_node, w_update):
    """Message passing with edge features: ``relu([x_s, x_r, e] @ W)`` per edge, aggregated at the receivers by
    ``.at[].max`` into a -1e3 floor (nodes without messages read 0 through ``where``), a tanh node update."""
    m = jax.nn.relu(jnp.concatenate([x[_SENDERS], x[_RECEIVERS], e], -1) @ w_edge)
    agg = jnp.full((x.shape[0], m.shape[1]), -1e3).at[_RECEIVERS].max(m)
    agg = jnp.where(agg <= -1e3, 0.0, agg)
    return jnp.tanh(x @ w_node + agg @ w_update)


def masked_autoregressive_flow(x, w, b):
    """Affine autoregressive flow: ``z = L^{-1} (x - b)`` with L lower triangular (strict part of w, exp of its
    diagonal) by ``solve_triangular``, the Gaussian log-density plus the log-determinant."""
    lower = jnp.tril(w, -1) + jnp.diag(jnp.exp(jnp.diag(w)))
    z = jsl.solve_triangular(lower, (x - b).T, lower=True).T
    return -0.5 * jnp.sum(z ** 2, -1) - jnp.sum(jnp.diag(w)) - 0.5 * x.shape[-1] * jnp.log(2 * jnp.pi)


def mixture_density_nll(h, w, y):
    """Mixture density network: a linear head gives logits, means and log-scales of a 1-D Gaussian mixture; the
    mean negative log-likelihood by ``log_softmax`` and ``logsumexp``."""
    out = h @ w
    k = out.shape[1] // 3
    logit, mu, log_s = out[:, :k], out[:, k:2 * k], out[:, 2 * k:]
    lp = -0.5 * ((y[:, None] - mu) / jnp.exp(log_s)) ** 2 - log_s - 0.5 * jnp.log(2 * jnp.pi)
    return -jnp.mean(jax.nn.logsumexp(jax.nn.log_softmax(logit, -1) + lp, -1))


def vicreg_loss(za, zb):
    """VICReg: invariance (mean squared difference), variance (hinge on the square root of each feature's
    variance) and covariance (squared off-diagonal entries) terms of two embedding batches."""
    def variance(z):
        return jnp.mean(jax.nn.relu(1 - jnp.sqrt(z.var(0) + 1e-4)))

    def covariance(z):
        zc = z - z.mean(0)
        c = zc.T @ zc / (z.shape[0] - 1)
        return (jnp.sum(c ** 2) - jnp.sum(jnp.diag(c) ** 2)) / z.shape[1]
    return 25 * jnp.mean((za - zb) ** 2) + 25 * (variance(za) + variance(zb)) + covariance(za) + covariance(zb)


def two_compartment_pharmacokinetics(log_params, t_obs):
    """Two-compartment oral-dose model: RK4 on a fixed grid in a ``fori_loop`` writing the central concentration
    into a history by ``.at[].set``, read at the observation times by ``jnp.interp``."""
    ka, cl, v1, q, v2 = jnp.exp(log_params)

    def rate(y):
        gut, c1, c2 = y
        return jnp.stack([-ka * gut, ka * gut - (cl + q) / v1 * c1 + q / v2 * c2, q / v1 * c1 - q / v2 * c2])

    def step(i, carry):
        y, hist = carry
        k1 = rate(y)
        k2 = rate(y + 0.125 * k1)
        k3 = rate(y + 0.125 * k2)
        k4 = rate(y + 0.25 * k3)
        y = y + 0.25 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return y, hist.at[i + 1].set(y[1] / v1)
    _, hist = lax.fori_loop(0, 40, step, (jnp.array([100.0, 0.0, 0.0]), jnp.zeros(41)))
    return jnp.interp(t_obs, jnp.arange(41) * 0.25, hist)


def kalman_log_likelihood(f, h, q, r, ys):
    """Linear Kalman filter in a ``lax.scan``: predict, innovation covariance, gain by ``solve``, the Gaussian
    log-likelihood of each observation by ``solve`` and ``slogdet``, update."""
    n = f.shape[0]

    def step(carry, y):
        m, p = carry
        m, p = f @ m, f @ p @ f.T + q * jnp.eye(n)
        s = h @ p @ h.T + r * jnp.eye(h.shape[0])
        gain = jnp.linalg.solve(s, h @ p).T
        v = y - h @ m
        ll = -0.5 * (v @ jnp.linalg.solve(s, v) + jnp.linalg.slogdet(s)[1])
        return (m + gain @ v, (jnp.eye(n) - gain @ h) @ p), ll
    _, lls = lax.scan(step, (jnp.zeros(n), jnp.eye(n)), ys)
    return lls.sum()


def van_leer_advection(u, c):
    """Periodic finite-volume advection with a van Leer limiter ``(r + |r|) / (1 + |r|)`` (the ratio's
    denominator kept away from zero by ``where``), four forward-Euler steps of ``jnp.roll`` fluxes."""
    for _ in range(4):
        du_minus, du_plus = u - jnp.roll(u, 1), jnp.roll(u, -1) - u
        r = du_minus / jnp.where(jnp.abs(du_plus) > 1e-12, du_plus, 1e-12)
        flux = c * (u + 0.5 * (r + jnp.abs(r)) / (1 + jnp.abs(r)) * du_plus)
        u = u - 0.4 * (flux - jnp.roll(flux, 1))
    return u


def three_qubit_circuit(theta):
    """A 3-qubit state vector (complex): two layers of RY and RZ rotations by ``tensordot`` on one axis and CNOTs
    by axis moves and a flip; the expectations of Z0 Z1 and of Z2."""
    psi = jnp.zeros(8, jnp.complex128).at[0].set(1.0).reshape(2, 2, 2)

    def apply(psi, u, qubit):
        return jnp.moveaxis(jnp.tensordot(u, psi, axes=([1], [qubit])), 0, qubit)

    def cnot(psi, control, target):
        psi = jnp.moveaxis(psi, (control, target), (0, 1))
        return jnp.moveaxis(jnp.stack([psi[0], psi[1][::-1]]), (0, 1), (control, target))
    for layer in range(2):
        for qubit in range(3):
            c, s = jnp.cos(theta[layer, qubit, 0] / 2), jnp.sin(theta[layer, qubit, 0] / 2)
            psi = apply(psi, jnp.array([[c, -s], [s, c]]).astype(jnp.complex128), qubit)
            psi = apply(psi, jnp.diag(jnp.exp(jnp.array([-0.5j, 0.5j]) * theta[layer, qubit, 1])), qubit)
        psi = cnot(cnot(psi, 0, 1), 1, 2)
    p = jnp.abs(psi) ** 2
    z = np.array([1.0, -1.0])
    return jnp.einsum("abc,a,b->", p, z, z), jnp.einsum("abc,c->", p, z)


def biquad_cascade(x, coefficients):
    """Two biquad sections in cascade (direct form II transposed), each a ``lax.scan`` over the samples with
    traced coefficients (b0, b1, b2, a1, a2)."""
    for section in range(coefficients.shape[0]):
        b0, b1, b2, a1, a2 = coefficients[section]

        def step(state, xn, b0=b0, b1=b1, b2=b2, a1=a1, a2=a2):
            s1, s2 = state
            y = b0 * xn + s1
            return (b1 * xn - a1 * y + s2, b2 * xn - a2 * y), y
        _, x = lax.scan(step, (0.0 * x[0], 0.0 * x[0]), x)
    return x


def _quaternion_product(p, q):
    w1, x1, y1, z1 = p[0], p[1], p[2], p[3]
    w2, x2, y2, z2 = q[0], q[1], q[2], q[3]
    return jnp.stack([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                      w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def quaternion_chain_kinematics(joints, links):
    """Forward kinematics of a 4-link chain: normalised joint quaternions composed by the Hamilton product, each
    link vector rotated by ``q v q*``, the joint positions accumulated."""
    joints = joints / jnp.linalg.norm(joints, axis=-1, keepdims=True)
    rotation, position, positions = jnp.array([1.0, 0.0, 0.0, 0.0]), jnp.zeros(3), []
    for i in range(joints.shape[0]):
        rotation = _quaternion_product(rotation, joints[i])
        v = jnp.concatenate([jnp.zeros(1), links[i]])
        rotated = _quaternion_product(_quaternion_product(rotation, v), rotation * jnp.array([1.0, -1, -1, -1]))
        position = position + rotated[1:]
        positions.append(position)
    return jnp.stack(positions)


def gp_posterior_cho_solve(x, y, length, x_star):
    """Gaussian-process posterior mean and variance: an RBF kernel, ``cho_factor``/``cho_solve`` for the mean,
    ``solve_triangular`` with the factor for the variance."""
    def kernel(a, b):
        return jnp.exp(-0.5 * jnp.sum((a[:, None] - b[None]) ** 2, -1) / length ** 2)
    factor, lower = jsl.cho_factor(kernel(x, x) + 1e-2 * jnp.eye(x.shape[0]), lower=True)
    cross = kernel(x_star, x)
    v = jsl.solve_triangular(jnp.tril(factor), cross.T, lower=True)
    return cross @ jsl.cho_solve((factor, lower), y), 1.0 - jnp.sum(v ** 2, 0)


def neural_sort(s, tau):
    """NeuralSort's relaxed permutation matrix ``softmax(((n + 1 - 2i) s - |s_i - s_j| 1) / tau)`` and the
    relaxed sorted vector ``P s``."""
    n = s.shape[0]
    spread = jnp.abs(s[:, None] - s[None, :]) @ jnp.ones(n)
    scale = (n + 1 - 2 * (jnp.arange(n) + 1)).astype(s.dtype)
    return jax.nn.softmax((scale[:, None] * s[None, :] - spread[None, :]) / tau, -1) @ s


#: Functions whose reference Jacobian is jax.jacfwd (none: jax.jacrev differentiates all twelve).
JACFWD_REFERENCE = frozenset()


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    return [
        ("layers", edge_message_scatter_max, (_normal(5, 3), _normal(9, 2), _normal(8, 4), _normal(3, 3),
                                              _normal(4, 3)), (0, 1, 2, 3, 4)),
        ("layers", masked_autoregressive_flow, (_normal(5, 4), _normal(4, 4), _normal(4)), (0, 1, 2)),
        ("losses", mixture_density_nll, (_normal(6, 3), _normal(3, 9), _normal(6)), (0, 1, 2)),
        ("losses", vicreg_loss, (_normal(6, 3), _normal(6, 3)), (0, 1)),
        ("integrators", two_compartment_pharmacokinetics, (np.log(np.array([1.2, 0.5, 5.0, 0.8, 8.0])),
                                                           np.array([0.7, 2.3, 5.1, 9.6])), (0, 1)),
        ("other", kalman_log_likelihood, (np.array([[1.0, 0.1], [0.0, 0.95]]), np.array([[1.0, 0.0]]),
                                          np.array(0.05), np.array(0.2), _normal(6, 1)), (0, 1, 2, 3, 4)),
        ("stencils", van_leer_advection, (np.sin(np.linspace(0, 6, 12)) + _normal(12, scale=0.1), np.array(0.7)),
         (0, 1)),
        ("other", three_qubit_circuit, (_normal(2, 3, 2, scale=1.0),), 0),
        ("sort and scan", biquad_cascade, (_normal(10), np.array([[0.2, 0.4, 0.2, -0.5, 0.2],
                                                                  [0.3, 0.1, 0.3, 0.1, 0.05]])), (0, 1)),
        ("robotics", quaternion_chain_kinematics, (_normal(4, 4) + np.array([1.0, 0, 0, 0]), _normal(4, 3)), (0, 1)),
        ("linear algebra", gp_posterior_cho_solve, (_normal(5, 2), _normal(5), np.array(0.8), _normal(3, 2)),
         (0, 1, 2, 3)),
        ("sort and scan", neural_sort, (_normal(5), np.array(0.5)), (0, 1)),
    ]
