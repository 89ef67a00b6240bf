"""The eight closed-form benchmark functions of the AlphaGrad paper, with their example inputs.

Each task is a plain JAX function plus the example arguments it is traced with. The elimination
graph is built from the jaxpr, so the operation structure follows REFERENCE.md section 6 to the
letter: constants are Python literals (so they become jaxpr literals, not graph vertices),
products are spelled out term by term where the reference spells them out, and ``vmap`` with a
batch of 1 is used where the reference uses it. Every jaxpr stays at most 2-D and uses only the
primitives the graph builder has edge rules for.

Registered, in this order: RoeFlux_1d, RoeFlux_3d, RobotArm_6DOF, HumanHeartDipole,
PropaneCombustion, BlackScholes_Jacobian, Perceptron, Encoder.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from alphagrad.tasks._registry import Task, register

__all__ = [
    "roeflux_1d",
    "roeflux_3d",
    "robot_arm_6dof",
    "human_heart_dipole",
    "propane_combustion",
    "black_scholes",
    "black_scholes_jacobian",
    "perceptron",
    "encoder",
]

_F32 = jnp.float32

# Ratio of specific heats of the Roe flux benchmarks. The paper's value 0.5 is unphysical, but it
# keeps the squared sound speed positive at the example states, so it is kept as published.
_GAMMA = 0.5


def _f32(*values):
    """Returns the values as float32 arrays of the shape given by nesting (scalars stay 0-D)."""
    return tuple(jnp.asarray(v, dtype=_F32) for v in values)


# --------------------------------------------------------------------------------------------
# RoeFlux_1d
# --------------------------------------------------------------------------------------------


def _pressure_1d(u0, u1, u2):
    return (_GAMMA - 1.0) * (u2 - 0.5 * u1**2 / u0)


def _enthalpy_1d(u0, u2, p):
    return (u2 + p) / u0


def _flux_1d(u0, u1, u2, p):
    v = u1 / u0
    return u1, p + u1 * v, v * (p + u2)


def roeflux_1d(ul0, ul1, ul2, ur0, ur1, ur2):
    """Roe's approximate Riemann flux of the 1-D Euler equations.

    Args:
      ul0, ul1, ul2: left state (density, momentum, energy), each a float32 scalar, shape ().
      ur0, ur1, ur2: right state, same shapes.

    Returns:
      (phi0, phi1, phi2): the three flux components, each shape ().
    """
    du0 = ur0 - ul0
    ulr0 = jnp.sqrt(ul0 * ur0)
    w1 = jnp.sqrt(ul0) + jnp.sqrt(ur0)

    vl = ul1 / ul0
    pl = _pressure_1d(ul0, ul1, ul2)
    hl = _enthalpy_1d(ul0, ul2, pl)

    vr = ur1 / ur0
    pr = _pressure_1d(ur0, ur1, ur2)
    hr = _enthalpy_1d(ur0, ur2, pr)

    dp = pr - pl
    dv = vr - vl

    # Roe averages.
    u = (jnp.sqrt(ul0) * vl + jnp.sqrt(ur0) * vr) / w1
    h = (jnp.sqrt(ul0) * hl + jnp.sqrt(ur0) * hr) / w1
    q2 = u**2
    a2 = (_GAMMA - 1.0) * (h - 0.5 * q2)
    a = jnp.sqrt(a2)

    # Eigenvalues; the reference uses |u| for both l and ln.
    lp = jnp.abs(u + a)
    l = jnp.abs(u)
    ln = jnp.abs(u)
    n = a * ulr0

    c0 = (du0 - dp / a2) * l
    c1 = (dv + dp / n) * lp
    c2 = (dv - dp / n) * ln

    Fl0, Fl1, Fl2 = _flux_1d(ul0, ul1, ul2, pl)
    Fr0, Fr1, Fr2 = _flux_1d(ur0, ur1, ur2, pr)
    F0 = Fl0 + Fr0
    F1 = Fl1 + Fr1
    F2 = Fl2 + Fr2

    c = 0.5 * ulr0 / a
    dF0 = c0 + c * c1 - c * c2
    dF1 = c0 * u + c * c1 * (u + a) - c * c2 * (u - a)
    dF2 = c0 * 0.5 * q2 + c * c1 * (h + u * a) - c * c2 * (h - u * a)

    phi0 = 0.5 * (F0 - dF0)
    phi1 = 0.5 * (F1 - dF1)
    phi2 = 0.5 * (F2 - dF2)
    return phi0, phi1, phi2


def _roeflux_1d_task() -> Task:
    return Task(
        roeflux_1d,
        _f32(0.01, 0.02, 0.02, 0.01, 0.03, 0.03),
        "RoeFlux_1d",
        "Roe flux of the 1-D Euler equations: 6 scalar states -> 3 scalar flux components.",
    )


# --------------------------------------------------------------------------------------------
# RoeFlux_3d
# --------------------------------------------------------------------------------------------


def _pressure_3d(u0, u, u4):
    return (_GAMMA - 1.0) * (u4 - 0.5 * jnp.sum(u**2) / u0)


def _enthalpy_3d(u0, u4, p):
    return (u4 + p) / u0


def _flux_3d(u0, u, v, u4, p):
    v1 = v[0:1]
    # Only the first momentum component carries the pressure term.
    p_vec = jnp.concatenate([p, jnp.zeros(2, dtype=_F32)])
    return u[0:1], p_vec + u * v, v1 * (p + u4)


def roeflux_3d(ul0, ul, ul4, ur0, ur, ur4):
    """Roe's approximate Riemann flux of the 3-D Euler equations, for one cell interface.

    The length-1 axis of the scalar states is the batch of 1 of the reference benchmark.

    Args:
      ul0: left density, shape (1,).
      ul: left momentum, shape (3,).
      ul4: left energy, shape (1,).
      ur0, ur, ur4: right state, same shapes.

    Returns:
      (phi0, phi, phi4): density flux (1,), momentum flux (3,), energy flux (1,).
    """
    du0 = ur0 - ul0
    du = ur - ul
    du1 = du[0:1]
    du2 = du[1:2]
    du3 = du[2:3]
    du4 = ur4 - ul4

    vl = ul / ul0
    vr = ur / ur0
    w1 = jnp.sqrt(ul0) + jnp.sqrt(ur0)

    # Roe averages.
    uvw = (jnp.sqrt(ul0) * vl + jnp.sqrt(ur0) * vr) / w1
    u = uvw[0:1]
    v = uvw[1:2]
    w = uvw[2:3]

    pl = _pressure_3d(ul0, ul, ul4)
    hl = _enthalpy_3d(ul0, ul4, pl)
    pr = _pressure_3d(ur0, ur, ur4)
    hr = _enthalpy_3d(ur0, ur4, pr)
    h = (jnp.sqrt(ul0) * hl + jnp.sqrt(ur0) * hr) / w1

    q2 = jnp.sum(uvw**2)
    a2 = (_GAMMA - 1.0) * (h - 0.5 * q2)
    a = jnp.sqrt(a2)

    # Eigenvalues; unlike the 1-D flux there are no absolute values here.
    lp = u + a
    l = u
    lm = u - a

    c3 = ((_GAMMA - 1.0) / a2 * ((h - q2) * du0 + jnp.dot(uvw, du) - du4)) * l
    c2 = (du3 / w - du1) * l
    c1 = (du2 / v - du0) * l
    k1 = du0 - c3
    k2 = (du1 - u * du0) / a
    c0 = 0.5 * (k1 - k2) * lm
    c4 = 0.5 * (k1 + k2) * lp

    Fl0, Fl, Fl4 = _flux_3d(ul0, ul, vl, ul4, pl)
    Fr0, Fr, Fr4 = _flux_3d(ur0, ur, vr, ur4, pr)
    F0 = Fl0 + Fr0
    F = Fl + Fr
    F4 = Fl4 + Fr4

    dF0 = c0 + c3 + c4 * lp
    dF1 = c0 * lm + c3 * u + c4 * lp
    dF2 = c0 * v + c1 * v + c3 * v + c4 * v
    dF3 = c0 * w + c2 * w + c3 * w + c4 * w
    dF4 = c0 * (h - u * a) + c1 * v**2 + c2 * w**2 + c3 * 0.5 * q2 + c4 * (h + u * a)
    dF = jnp.concatenate([dF1, dF2, dF3])

    phi0 = 0.5 * (F0 - dF0)
    phi = 0.5 * (F - dF)
    phi4 = 0.5 * (F4 - dF4)
    return phi0, phi, phi4


def _roeflux_3d_task() -> Task:
    return Task(
        roeflux_3d,
        _f32([0.1], [0.1, 0.2, 0.3], [0.5], [0.2], [0.2, 0.2, 0.4], [0.6]),
        "RoeFlux_3d",
        "Roe flux of the 3-D Euler equations: states (1,),(3,),(1,) left and right -> "
        "fluxes (1,),(3,),(1,).",
    )


# --------------------------------------------------------------------------------------------
# RobotArm_6DOF
# --------------------------------------------------------------------------------------------


def robot_arm_6dof(t1, t2, t3, t4, t5, t6):
    """Forward kinematics of a 6-axis robot arm: end-effector position and Tait-Bryan angles.

    Args:
      t1, ..., t6: joint angles, each a float32 scalar, shape ().

    Returns:
      (px, py, pz, z, y, zz): position and orientation angles, each shape ().
    """
    c1 = jnp.cos(t1)
    s1 = jnp.sin(t1)
    c2 = jnp.cos(t2)
    s2 = jnp.sin(t2)
    c4 = jnp.cos(t4)
    s4 = jnp.sin(t4)
    c5 = jnp.cos(t5)
    s5 = jnp.sin(t5)
    c6 = jnp.cos(t6)
    s6 = jnp.sin(t6)
    # Written out as products (not angle-sum identities) because the graph follows the jaxpr.
    c23 = jnp.cos(t2) * jnp.cos(t3) - jnp.sin(t2) * jnp.sin(t3)
    s23 = jnp.cos(t2) * jnp.sin(t3) + jnp.sin(t2) * jnp.cos(t3)

    ax = s5 * (c1 * c23 * c4 + s1 * s4) + c1 * s23 * c5
    ay = s5 * (s1 * c23 * c4 - c1 * s4) + s1 * s23 * c5
    az = s23 * c4 * s5 - c23 * c5
    nz = c6 * (c23 * s5 + s23 * c4 * c5) - s23 * s4 * s6
    oz = -s6 * (c23 * s5 + s23 * c4 * c5) - s23 * s4 * c6

    z = jnp.arctan2(ay, ax)
    y = jnp.arctan2(jnp.sqrt(1.0 - az**2), az)
    zz = jnp.arctan2(oz, -nz)

    px = 185.0 * (s5 * (c1 * c23 * c4 + s1 * s4) + c1 * s23 * c5) + c1 * (
        175.0 + 890.0 * c2 + 50.0 * c23 + 1035.0 * s23
    )
    # "+ c1*s4" (not "- c1*s4" as in ay) is how the benchmark is published.
    py = 185.0 * (s5 * (s1 * c23 * c4 + c1 * s4) + s1 * s23 * c5) + s1 * (
        175.0 + 890.0 * c2 + 50.0 * c23 + 1035.0 * s23
    )
    pz = (
        890.0 * s2
        + 575.0
        + 50.0 * s23
        - 1035.0 * c23
        + 185.0 * (s23 * c4 * s5 - c23 * c5)
    )
    return px, py, pz, z, y, zz


def _robot_arm_task() -> Task:
    return Task(
        robot_arm_6dof,
        _f32(*([0.02] * 6)),
        "RobotArm_6DOF",
        "Forward kinematics of a 6-DOF arm (a1=175, a2=890, a3=50, d1=575, d4=1035, d6=185): "
        "6 joint angles -> position and Tait-Bryan angles.",
    )


# --------------------------------------------------------------------------------------------
# HumanHeartDipole
# --------------------------------------------------------------------------------------------


def human_heart_dipole(x1, x2, x3, x4, x5, x6, x7, x8):
    """MINPACK-2 human heart dipole residuals, with all measured moments sigma = 1.

    Args:
      x1, ..., x8: float32 scalars, shape ().

    Returns:
      (f1, ..., f8): the eight residuals, each shape ().
    """
    f1 = x1 + x2 - 1.0
    f2 = x3 + x4 - 1.0
    f3 = x5 * x1 + x6 * x2 - x7 * x3 - x8 * x4 - 1.0
    f4 = x7 * x1 + x8 * x2 + x5 * x3 + x6 * x4 - 1.0

    x57 = x5**2 - x7**2
    x68 = x6**2 - x8**2
    f5 = x1 * x57 - 2.0 * x3 * x5 * x7 + x2 * x68 - 2.0 * x4 * x6 * x8 - 1.0
    f6 = x3 * x57 - 2.0 * x1 * x5 * x7 + x4 * x68 - 2.0 * x2 * x6 * x8 - 1.0

    x557 = x5 * (x5**2 - 3.0 * x7**2)
    x775 = x7 * (x7**2 - 3.0 * x5**2)
    x668 = x6 * (x6**2 - 3.0 * x8**2)
    x886 = x8 * (x8**2 - 3.0 * x6**2)
    f7 = x1 * x557 + x3 * x775 + x2 * x668 + x4 * x886 - 1.0
    f8 = x3 * x557 - x1 * x775 + x4 * x668 - x2 * x886 - 1.0
    return f1, f2, f3, f4, f5, f6, f7, f8


def _human_heart_dipole_task() -> Task:
    return Task(
        human_heart_dipole,
        _f32(*([0.15] * 8)),
        "HumanHeartDipole",
        "MINPACK-2 human heart dipole problem: 8 scalars -> 8 residuals.",
    )


# --------------------------------------------------------------------------------------------
# PropaneCombustion
# --------------------------------------------------------------------------------------------


def propane_combustion(x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11):
    """MINPACK-2 propane combustion residuals (pressure p = 40, ratio R = 10).

    Args:
      x1, ..., x11: float32 scalars, shape ().

    Returns:
      (f1, ..., f11): the eleven residuals, each shape ().
    """
    px11 = jnp.sqrt(40.0 / x11)
    f1 = x1 + x4 - 3.0
    f2 = 2.0 * x1 + x2 + x4 + x7 + x8 + x9 + 2.0 * x10 - 10.0
    f3 = 2.0 * x2 + 2.0 * x5 + x6 + x7 - 8.0
    f4 = 2.0 * x3 + x9 - 40.0
    f5 = x2 * x4 - x1 * x5
    f6 = jnp.sqrt(x2 * x4) - jnp.sqrt(x1) * px11 * x6
    f7 = jnp.sqrt(x1 * x2) - jnp.sqrt(x4) * x7 * px11
    f8 = x1 - x4 * x8 * 40.0 / x11
    f9 = x1 * jnp.sqrt(x3) - x4 * x9 * px11
    f10 = x1**2 - x4**2 * x10 * 40.0 / x11
    f11 = x11 - x1 - x2 - x3 - x4 - x5 - x6 - x7 - x8 - x9 - x10
    return f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11


def _propane_combustion_task() -> Task:
    return Task(
        propane_combustion,
        _f32(*([0.15] * 11)),
        "PropaneCombustion",
        "MINPACK-2 propane combustion problem: 11 scalars -> 11 residuals.",
    )


# --------------------------------------------------------------------------------------------
# BlackScholes_Jacobian
# --------------------------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)


def _normal_cdf(z):
    return (1.0 + jax.lax.erf(z / _SQRT2)) / 2.0


def _black76(F, K, r, sigma, T):
    d1 = (jnp.log(F / K) + sigma**2 / 2.0 * T) / (sigma * jnp.sqrt(T))
    d2 = d1 - sigma * jnp.sqrt(T)
    return jnp.exp(-r * T) * (F * _normal_cdf(d1) - K * _normal_cdf(d2))


def black_scholes(S, K, r, sigma, T):
    """Black-Scholes price of a European call, written through the Black-76 forward price.

    Args:
      S, K, r, sigma, T: spot, strike, rate, volatility, maturity; float32 scalars, shape ().

    Returns:
      The call price, shape ().
    """
    return _black76(jnp.exp(r * T) * S, K, r, sigma, T)


_black_scholes_grad = jax.grad(black_scholes, argnums=(0, 1, 2, 3, 4))


def black_scholes_jacobian(S, K, r, sigma, T):
    """First derivatives (delta, dK, rho, vega, dT) of the Black-Scholes price, batch of 1.

    The reference traces Graphax's reverse-mode ``jacve`` of the price; here the derivative
    program is ``jax.grad`` of `black_scholes` with respect to all five inputs, vmapped over the
    batch. The task's Jacobian is therefore the matrix of second-order Greeks.

    Args:
      S, K, r, sigma, T: float32 arrays of shape (1,) (a batch of one option).

    Returns:
      A tuple of 5 arrays of shape (1,): d price / d S, K, r, sigma, T.
    """
    return jax.vmap(_black_scholes_grad)(S, K, r, sigma, T)


def _black_scholes_task() -> Task:
    ones = jnp.ones((1,), dtype=_F32)
    return Task(
        black_scholes_jacobian,
        (ones, ones, ones, ones, ones),
        "BlackScholes_Jacobian",
        "Gradient (jax.grad) of the Black-Scholes call price w.r.t. S, K, r, sigma, T; "
        "batch of 1.",
    )


# --------------------------------------------------------------------------------------------
# Perceptron
# --------------------------------------------------------------------------------------------


def _layer_norm_1d(h, gamma, beta):
    n = h.shape[0]
    mu = jnp.sum(h) / n
    var = jnp.sum((h - mu) ** 2) / n
    return (h - mu) / jnp.sqrt(var + 1e-6) * gamma + beta


def _perceptron_one(x, y, W1, b1, W2, b2, gamma, beta):
    h = jnp.tanh(W1 @ x + b1)
    h = _layer_norm_1d(h, gamma, beta)
    o = jnp.tanh(W2 @ h + b2)
    return -jnp.sum(y * jnp.log(jax.nn.softmax(o)))


def perceptron(x, y, W1, b1, W2, b2, gamma, beta):
    """Two-layer perceptron with a layer norm and a softmax cross-entropy loss.

    Vmapped over x and y (the batch, here of size 1); weights and the layer-norm scale and
    shift are shared.

    Args:
      x: inputs, shape (1, 4).
      y: targets, shape (1, 4).
      W1: shape (8, 4); b1: shape (8,).
      W2: shape (4, 8); b2: shape (4,).
      gamma, beta: layer-norm scale and shift, Python floats (traced as 0-D inputs).

    Returns:
      The loss per example, shape (1,).
    """
    return jax.vmap(_perceptron_one, in_axes=(0, 0, None, None, None, None, None, None))(
        x, y, W1, b1, W2, b2, gamma, beta
    )


def _perceptron_task() -> Task:
    # Key 1234, split once per random array, in argument order (y, W1, b1, W2, b2).
    key = jax.random.PRNGKey(1234)
    arrays = []
    for shape in [(1, 4), (8, 4), (8,), (4, 8), (4,)]:
        key, sub = jax.random.split(key)
        arrays.append(jax.random.normal(sub, shape, dtype=_F32))
    y, W1, b1, W2, b2 = arrays
    x = jnp.ones((1, 4), dtype=_F32)
    return Task(
        perceptron,
        (x, y, W1, b1, W2, b2, 0.0, 1.0),
        "Perceptron",
        "Two-layer tanh perceptron with layer norm and softmax cross-entropy; batch of 1.",
    )


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


def _encoder_block(x, WQ, WK, WV, W, b, gamma, beta):
    q = WQ @ x
    k = WK @ x
    v = WV @ x
    attention = jax.nn.softmax(q.T @ k, axis=1) @ v
    a = x + attention
    # The published layer norm takes the mean over the last axis, shape (n,), and subtracts it
    # broadcast along the last axis (a[i, j] - mu[j]) instead of per row; kept on purpose.
    n = a.shape[-1]
    mu = jnp.sum(a, axis=-1) / n
    var = jnp.sum((a - mu) ** 2, axis=-1) / n
    c = (a - mu) / jnp.sqrt(var + 1e-6) * gamma + beta
    z = W @ c + b
    return z / (1.0 + jnp.exp(-z))


def encoder(x, y, WQ1, WQ2, WK1, WK2, WV1, WV2, W1, W2, b1, b2, gamma0, beta0, gamma1, beta1):
    """Two self-attention encoder blocks followed by a softmax cross-entropy loss.

    Args:
      x: input, shape (4, 4).
      y: targets, shape (2, 4).
      WQ1, WQ2, WK1, WK2, WV1, WV2: attention projections, shape (4, 4).
      W1: first block's output weights, shape (4, 4); W2: second block's, shape (2, 4).
      b1: first block's bias, shape (4,), broadcast along the last axis.
      b2: second block's bias, shape (2, 1).
      gamma0, beta0, gamma1, beta1: layer-norm scales and shifts, Python floats (0-D inputs).

    Returns:
      The loss per row of y, shape (2,).

    The registered example draws y and the weights as standard normals from
    ``jax.random.PRNGKey(42)``, split once per array in argument order (the reference does not
    publish its key); x is ones and the layer-norm scales and shifts are 0, 1, 0, 1.
    """
    z1 = _encoder_block(x, WQ1, WK1, WV1, W1, b1, gamma0, beta0)
    z2 = _encoder_block(z1, WQ2, WK2, WV2, W2, b2, gamma1, beta1)
    return -jnp.sum(y * jnp.log(jax.nn.softmax(z2, axis=-1)), axis=-1)


# The reference does not publish the Encoder's random key; this one is ours.
_ENCODER_KEY = 42


def _encoder_task() -> Task:
    # Key 42, split once per random array, in argument order (y, WQ1, ..., b2).
    key = jax.random.PRNGKey(_ENCODER_KEY)
    shapes = [(2, 4)] + [(4, 4)] * 7 + [(2, 4), (4,), (2, 1)]
    arrays = []
    for shape in shapes:
        key, sub = jax.random.split(key)
        arrays.append(jax.random.normal(sub, shape, dtype=_F32))
    x = jnp.ones((4, 4), dtype=_F32)
    return Task(
        encoder,
        (x, *arrays, 0.0, 1.0, 0.0, 1.0),
        "Encoder",
        "Two-block self-attention encoder with layer norm, SiLU and softmax cross-entropy; "
        "random inputs from PRNGKey(42).",
    )


register("RoeFlux_1d", _roeflux_1d_task)
register("RoeFlux_3d", _roeflux_3d_task)
register("RobotArm_6DOF", _robot_arm_task)
register("HumanHeartDipole", _human_heart_dipole_task)
register("PropaneCombustion", _propane_combustion_task)
register("BlackScholes_Jacobian", _black_scholes_task)
register("Perceptron", _perceptron_task)
register("Encoder", _encoder_task)
