"""Corpus functions of scientific code: least-squares residuals, integrators, particles, robots, stencils.

Residuals of the Moré–Garbow–Hillstrom test set and MINPACK-2, ODE integrators (unrolled RK4,
``lax.scan`` with pytree carries, ``lax.fori_loop``), pairwise interactions by broadcasting,
forward kinematics and finite-difference stencils (rolls, slices, pads, ``jnp.convolve``), mostly in
float64 as such code runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_RNG = np.random.default_rng(34)


# ---- Moré–Garbow–Hillstrom and MINPACK-2 residuals ---------------------------------------------


def extended_rosenbrock(x):
    """MGH 21, the extended Rosenbrock residual: strided slices x[::2], x[1::2], interleaved by stack/reshape."""
    odd, even = x[::2], x[1::2]
    return jnp.stack([10.0 * (even - odd**2), 1.0 - odd], axis=1).reshape(-1)


def powell_singular(x):
    """MGH 13, Powell's singular function on blocks of four: the residual of a (blocks, 4) reshape."""
    x1, x2, x3, x4 = x.reshape(-1, 4).T
    r = jnp.stack([x1 + 10 * x2, np.sqrt(5.0) * (x3 - x4), (x2 - 2 * x3) ** 2, np.sqrt(10.0) * (x1 - x4) ** 2], axis=1)
    return r.reshape(-1)


def brown_almost_linear(x):
    """MGH 27, Brown's almost-linear function: sums plus a product (jnp.prod) written into the last entry with .at[].set."""
    n = x.shape[0]
    r = x + jnp.sum(x) - (n + 1)
    return r.at[-1].set(jnp.prod(x) - 1.0)


def broyden_tridiagonal(x):
    """MGH 30, the Broyden tridiagonal function: neighbours through jnp.pad with zero boundaries."""
    padded = jnp.pad(x, 1)
    return (3.0 - 2.0 * x) * x - padded[:-2] - 2.0 * padded[2:] + 1.0


def helical_valley(x):
    """MGH 7, the helical valley: an angle by arctan2 with a branch (jnp.where) on the quadrant."""
    theta = jnp.arctan2(x[1], x[0]) / (2 * np.pi)
    theta = jnp.where(theta < 0, theta + 0.5, theta)
    return jnp.stack([10 * (x[2] - 10 * theta), 10 * (jnp.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2]])


def chebyquad(x):
    """MGH 35, Chebyquad: shifted Chebyshev polynomials by their three-term recurrence, averaged over x."""
    n = x.shape[0]
    y = 2.0 * x - 1.0
    t_prev, t = jnp.ones_like(y), y
    rows = [t]
    for _ in range(1, n):
        t_prev, t = t, 2.0 * y * t - t_prev
        rows.append(t)
    i = np.arange(1, n + 1)
    exact = np.where(i % 2 == 0, -1.0 / np.maximum(i**2 - 1.0, 1.0), 0.0)
    return jnp.mean(jnp.stack(rows), axis=1) - exact


def minimal_surface(u, boundary):
    """MINPACK-2 dmsafg: the area of a surface over a grid from forward differences, boundary values by jnp.pad."""
    v = jnp.pad(u, 1) + boundary
    hx = 1.0 / (u.shape[0] + 1)
    dx = (v[1:, :-1] - v[:-1, :-1]) / hx
    dy = (v[:-1, 1:] - v[:-1, :-1]) / hx
    return hx * hx * jnp.sum(jnp.sqrt(1.0 + dx**2 + dy**2))


# ---- particles ---------------------------------------------------------------------------------


def lennard_jones(positions, sigma):
    """Lennard-Jones energy per atom: all pairs by broadcasting, the self-pair masked off (jnp.where, eye)."""
    diff = positions[:, None, :] - positions[None, :, :]
    r2 = jnp.sum(diff**2, axis=-1)
    n = positions.shape[0]
    r2 = jnp.where(jnp.eye(n, dtype=bool), 1.0, r2)
    s6 = (sigma**2 / r2) ** 3
    return 0.5 * jnp.sum(jnp.where(jnp.eye(n, dtype=bool), 0.0, 4.0 * (s6**2 - s6)), axis=1)


def nbody_accelerations(positions, masses):
    """Softened gravitational accelerations of n bodies: (n, n, 3) pair vectors, einsum with the masses."""
    diff = positions[None, :, :] - positions[:, None, :]
    inv_r3 = (jnp.sum(diff**2, axis=-1) + 0.01) ** -1.5
    return jnp.einsum("ijk,ij,j->ik", diff, inv_r3, masses)


# ---- integrators -------------------------------------------------------------------------------


def lorenz_rk4(state, params):
    """Two classical RK4 steps of the Lorenz system, unrolled by a Python loop (sigma, rho, beta as one array)."""
    sigma, rho, beta = params[0], params[1], params[2]

    def f(s):
        x, y, z = s[0], s[1], s[2]
        return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

    h = 0.01
    for _ in range(2):
        k1 = f(state)
        k2 = f(state + 0.5 * h * k1)
        k3 = f(state + 0.5 * h * k2)
        k4 = f(state + h * k3)
        state = state + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return state


def pendulum_scan(state, params, dts):
    """A damped pendulum by semi-implicit Euler in lax.scan: a dict carry {'q', 'p'}, per-step dt as xs, energies out."""

    def step(s, dt):
        p = s["p"] - dt * (params["g"] * jnp.sin(s["q"]) + params["damping"] * s["p"])
        q = s["q"] + dt * p
        return {"q": q, "p": p}, 0.5 * p**2 + params["g"] * (1 - jnp.cos(q))

    final, energy = jax.lax.scan(step, state, dts)
    return final["q"], energy


def sir_epidemic(y0, beta, gamma):
    """An SIR epidemic model: RK2 steps in lax.scan over 8 days, a (S, I, R) tuple carry, infections recorded."""

    def rhs(s, i, r):
        new = beta * s * i
        return -new, new - gamma * i, gamma * i

    def step(carry, _):
        s, i, r = carry
        ds, di, dr = rhs(s, i, r)
        ds2, di2, dr2 = rhs(s + 0.5 * ds, i + 0.5 * di, r + 0.5 * dr)
        carry = (s + ds2, i + di2, r + dr2)
        return carry, carry[1]

    (s, i, r), infected = jax.lax.scan(step, (y0[0], y0[1], y0[2]), None, length=8)
    return infected, s + i + r


def heat_fori(u, kappa):
    """Explicit heat-equation steps on a periodic 1-D rod: jnp.roll in a lax.fori_loop body."""

    def step(_, v):
        return v + kappa * (jnp.roll(v, 1) - 2.0 * v + jnp.roll(v, -1))

    return jax.lax.fori_loop(0, 5, step, u)


# ---- robotics ----------------------------------------------------------------------------------


def planar_arm(angles, lengths):
    """Forward kinematics of a planar serial arm: joint angles accumulate (cumsum), link tips accumulate."""
    absolute = jnp.cumsum(angles)
    tips = jnp.cumsum(jnp.stack([lengths * jnp.cos(absolute), lengths * jnp.sin(absolute)], axis=1), axis=0)
    return tips


def dh_chain(thetas, link):
    """A spatial serial arm: Denavit-Hartenberg transforms (n, 4, 4) chained by matrix products in lax.scan."""
    a, alpha, d = link[:, 0], link[:, 1], link[:, 2]
    ct, st, ca, sa = jnp.cos(thetas), jnp.sin(thetas), jnp.cos(alpha), jnp.sin(alpha)
    zero, one = jnp.zeros_like(thetas), jnp.ones_like(thetas)
    transforms = jnp.stack([
        jnp.stack([ct, -st * ca, st * sa, a * ct], -1),
        jnp.stack([st, ct * ca, -ct * sa, a * st], -1),
        jnp.stack([zero, sa, ca, d], -1),
        jnp.stack([zero, zero, zero, one], -1),
    ], axis=1)
    pose, frames = jax.lax.scan(lambda t, m: (t @ m, (t @ m)[:3, 3]), jnp.eye(4, dtype=thetas.dtype), transforms)
    return pose[:3, 3], frames


# ---- finite differences ------------------------------------------------------------------------


def allen_cahn_step(u, eps):
    """One explicit Allen-Cahn step on a periodic 2-D grid: the five-point Laplacian by jnp.roll along both axes."""
    lap = jnp.roll(u, 1, 0) + jnp.roll(u, -1, 0) + jnp.roll(u, 1, 1) + jnp.roll(u, -1, 1) - 4.0 * u
    return u + 0.1 * (eps**2 * lap + u - u**3)


def burgers_upwind(u, nu):
    """Viscous Burgers by first-order upwinding: edge-padded (jnp.pad mode='edge') slices and jnp.gradient."""
    v = jnp.pad(u, 1, mode="edge")
    backward, forward = v[1:-1] - v[:-2], v[2:] - v[1:-1]
    advection = jnp.where(u > 0, u * backward, u * forward)
    return u - 0.2 * advection + nu * jnp.gradient(jnp.gradient(u))


def smooth_and_integrate(signal, kernel):
    """Signal smoothing by jnp.convolve (mode 'same') then integration by the trapezoid rule (jnp.trapezoid)."""
    smoothed = jnp.convolve(signal, kernel, mode="same")
    return smoothed, jnp.trapezoid(smoothed**2, dx=0.1)


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    f64 = np.float64
    return [
        ("residuals", extended_rosenbrock, (np.array([-1.2, 1.0, 0.5, -0.3, 0.8, 0.9], f64),), 0),
        ("residuals", powell_singular, (np.array([3.0, -1.0, 0.0, 1.0, 0.5, 0.2, -0.4, 1.1], f64),), 0),
        ("residuals", brown_almost_linear, (np.linspace(0.4, 1.3, 5),), 0),
        ("residuals", broyden_tridiagonal, (-np.linspace(0.5, 1.2, 6),), 0),
        ("residuals", helical_valley, (np.array([-1.0, 0.3, 0.4], f64),), 0),
        ("residuals", chebyquad, (np.linspace(0.1, 0.9, 5),), 0),
        ("residuals", minimal_surface, (_RNG.uniform(size=(3, 3)), _RNG.uniform(size=(5, 5))), (0, 1)),
        ("particles", lennard_jones, (np.array([[0.0, 0.0, 0.0], [1.1, 0.1, 0.0], [0.1, 1.2, 0.2], [1.0, 1.0, 0.9]], f64),
                         f64(1.0)), (0, 1)),
        ("particles", nbody_accelerations, (_RNG.normal(size=(4, 3)), _RNG.uniform(0.5, 2.0, size=4)), (0, 1)),
        ("integrators", lorenz_rk4, (np.array([1.0, 1.0, 1.0], f64), np.array([10.0, 28.0, 8.0 / 3.0], f64)), (0, 1)),
        ("integrators", pendulum_scan, ({"q": np.array([0.5, 1.0], np.float32), "p": np.zeros(2, np.float32)},
                         {"g": np.float32(9.8), "damping": np.float32(0.1)}, np.full(5, 0.05, np.float32)),
         (0, 1, 2)),
        ("integrators", sir_epidemic, (np.array([0.99, 0.01, 0.0], f64), f64(0.4), f64(0.1)), (0, 1, 2)),
        ("integrators", heat_fori, (_RNG.uniform(size=6), f64(0.2)), (0, 1)),
        ("robotics", planar_arm, (np.array([0.3, -0.5, 0.8, 0.1], f64), np.array([1.0, 0.8, 0.5, 0.3], f64)), (0, 1)),
        ("robotics", dh_chain, (np.array([0.1, 0.7, -0.4], np.float32),
                    np.array([[0.0, np.pi / 2, 0.3], [0.4, 0.0, 0.0], [0.3, -np.pi / 2, 0.1]], np.float32)),
         (0, 1)),
        ("stencils", allen_cahn_step, (_RNG.uniform(-1, 1, size=(4, 4)), f64(0.5)), (0, 1)),
        ("stencils", burgers_upwind, (np.sin(np.linspace(0, 2 * np.pi, 7)), f64(0.05)), (0, 1)),
        ("stencils", smooth_and_integrate, (np.cos(np.linspace(0, 3, 8)).astype(np.float32),
                                np.array([0.25, 0.5, 0.25], np.float32)), (0, 1)),
    ]
