"""Corpus functions from the session-8 outsider probe battery: constructs the earlier groups lacked.

A 2-D FFT low-pass filter (a complex span over a whole image), a MUSCL step with a minmod limiter
(finite-volume fluxes chosen by ``jnp.where``, ``sign``, ``minimum``, ``abs``, periodic rolls), a
symplectic Euler step over a state registered with ``jax.tree_util.register_dataclass`` (a static field
beside the arrays; a dataclass in and out), an equinox-style MLP (frozen dataclass modules holding
their weights, called as pure functions), a 3-D convolution over a video (rank-5 arrays), scatter
max and min at repeated indices with traced updates, a while loop with several carries whose trip
count depends on the values (a tolerance test), and a batched product whose batch axis is not the
leading axis of an operand (``einsum("ibj,bjk->bik")``).

From the session-9 battery (flax, jax.scipy, windows and grouped convolutions, segment ops, scans
of branches): a flax ``nn.RNN`` of a ``GRUCell`` applied with its parameter dict, a Cholesky solve by
jax.scipy, a linear recurrence by ``lax.associative_scan``, a grouped and dilated convolution into a
padded, strided max pool (``lax.reduce_window``), ``segment_max`` with an empty segment, a
``lax.switch`` inside a scan with branch indices computed from the data, an RK4 integrator in a
``fori_loop``, and ``jnp.interp`` with traced grid and values.

From the session-10 battery: a Crank-Nicolson step by ``lax.linalg.tridiagonal_solve``, a bilinear
``jax.image.resize`` (``scale_and_translate``), traces and diagonals by einsum with repeated indices
(``bii->b``, ``iij->j``), and a dense layer's loss differentiated in its weight (a Kronecker-tied
partial, read off the input).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import jax.scipy.linalg as sla
import numpy as np

_RNG = np.random.default_rng(808)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ParticleState:
    """Positions and velocities of a particle chain; ``mass`` is static (part of the tree structure)."""

    pos: jax.Array
    vel: jax.Array
    mass: float = dataclasses.field(default=2.0, metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Linear:
    """An equinox-style layer: a frozen dataclass holding its weights, called as a pure function."""

    weight: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return self.weight @ x + self.bias


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MLP:
    """Layers applied in turn, tanh between them, scaled by the static ``gain``."""

    layers: tuple
    gain: float = dataclasses.field(default=1.0, metadata=dict(static=True))

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x)) * self.gain
        return self.layers[-1](x)


def fft2_lowpass(image):
    """A low-pass filter of a [4, 4] image: fft2, keep the lowest frequencies, the real part of ifft2."""
    spectrum = jnp.fft.fft2(image)
    keep = jnp.zeros(image.shape).at[:2, :2].set(1.0)
    return jnp.fft.ifft2(spectrum * keep).real


def muscl_minmod_step(u):
    """One MUSCL step of periodic Burgers' flow with positive speeds: minmod-limited slopes, upwind
    fluxes of the reconstructed left states, [6] -> [6]."""
    left = u - jnp.roll(u, 1)
    right = jnp.roll(u, -1) - u
    slope = jnp.where(left * right > 0, jnp.sign(left) * jnp.minimum(jnp.abs(left), jnp.abs(right)), 0.0)
    flux = 0.5 * (u + 0.5 * slope) ** 2
    return u - 0.1 * (flux - jnp.roll(flux, 1))


def dataclass_symplectic_step(state: ParticleState, dt):
    """A symplectic Euler step of a pendulum chain held in a registered dataclass; returns the new state."""
    force = 0.3 * (jnp.roll(state.pos, 1) - state.pos) - jnp.sin(state.pos)
    vel = state.vel + dt * force / state.mass
    return ParticleState(state.pos + dt * vel, vel, state.mass)


def frozen_dataclass_mlp(model: MLP, xs):
    """An equinox-style MLP over a batch ([3, 3] -> [3, 2]) by vmap, with its weights decayed by tree.map."""
    decayed = jax.tree.map(lambda w: 0.99 * w, model)
    return jax.vmap(decayed)(xs)


def conv3d_video(video, kernel):
    """A 3-D convolution of a video [N=1, T=3, H=3, W=3, C=1] by a [2, 2, 2, 1, 2] kernel, then tanh."""
    out = jax.lax.conv_general_dilated(video, kernel, (1, 1, 1), "VALID",
                                       dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    return jnp.tanh(out)


def scatter_max_min_duplicates(x, updates):
    """Scatter max and min of traced updates at repeated indices (2 twice, 0 twice) into x."""
    index = np.array([2, 2, 0, 0])
    return x.at[index].max(updates) + x.at[index].min(2.0 * updates)


def tolerance_while(x, tol):
    """Heron's square root of |x| + 1 in a while loop stopping on a tolerance: three carries and a trip
    count that depends on the values (jax.jacrev cannot differentiate it; jax.jacfwd is the reference)."""

    def keep_going(state):
        step, _, change = state
        return (change > tol) & (step < 20)

    def body(state):
        step, y, _ = state
        new = 0.5 * (y + (jnp.abs(x) + 1.0) / y)
        return step + 1, new, jnp.max(jnp.abs(new - y))

    return jax.lax.while_loop(keep_going, body, (0, jnp.abs(x) + 1.0, jnp.ones((), x.dtype)))[1]


def batch_axis_inside(a, b):
    """A batched product whose batch axis is not the leading axis of the first operand:
    ``einsum("ibj,bjk->bik")`` over [3, 2, 4] and [2, 4, 2], then a softplus."""
    return jax.nn.softplus(jnp.einsum("ibj,bjk->bik", a, b))


_GRU = nn.RNN(nn.GRUCell(2, param_dtype=jnp.float64))


def flax_gru_sequence(params, xs, h0):
    """A flax ``nn.RNN(nn.GRUCell(2))`` over a [1, 2, 2] sequence from the state h0 [1, 2], applied
    with its parameter dict (flax's own layout: cell/{ir,iz,in,hr,hz,hn}/kernel, bias): [1, 2, 2]."""
    return _GRU.apply({"params": params}, xs, initial_carry=h0)


def cho_solve_spd(a, b):
    """A Cholesky solve with a symmetric positive definite [3, 3] matrix (jax.scipy's ``cho_factor``
    and ``cho_solve``) of b [3, 2]."""
    return sla.cho_solve(sla.cho_factor(a, lower=True), b)


def associative_recurrence(decay, inputs):
    """h[t] = decay[t] * h[t-1] + inputs[t] over 4 steps by ``lax.associative_scan`` (a parallel scan)."""
    def combine(left, right):
        return right[0] * left[0], right[0] * left[1] + right[1]
    return jax.lax.associative_scan(combine, (decay, inputs))[1]


def grouped_conv_pool(image, kernel):
    """A convolution with two feature groups and kernel dilation 2 ([1, 2, 5, 5] NCHW by [2, 1, 2, 2]),
    then a 3x3 max pool with stride 2 and SAME padding (``lax.reduce_window``)."""
    y = jax.lax.conv_general_dilated(image, kernel, (1, 1), "SAME", rhs_dilation=(2, 2), feature_group_count=2)
    return jax.lax.reduce_window(jnp.tanh(y), -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), "SAME")


def segment_max_empty(x):
    """``segment_max`` of 6 values into 5 segments, one of them (3) empty: its -inf is masked out."""
    m = jax.ops.segment_max(x * x, np.array([2, 0, 1, 0, 2, 4]), num_segments=5)
    return jnp.where(jnp.isfinite(m), m, 0.0) * np.arange(1.0, 6.0)


def switch_scan(x):
    """A scan whose step picks one of three branches by an index computed from the input."""
    def step(carry, v):
        k = jnp.int32(jnp.abs(v) * 3) % 3
        carry = jax.lax.switch(k, [lambda c: c * 2.0, lambda c: jnp.sin(c) + v, lambda c: c * v], carry)
        return carry, carry
    return jax.lax.scan(step, 0.3, x)[1]


def rk4_lotka_volterra(theta, y0):
    """Four RK4 steps of a Lotka-Volterra system in a ``fori_loop``; rates theta [2], state y0 [2]."""
    def rate(y):
        return jnp.stack([theta[0] * y[0] - y[0] * y[1], y[0] * y[1] - theta[1] * y[1]])

    def step(_, y):
        h = 0.05
        k1 = rate(y)
        k2 = rate(y + h / 2 * k1)
        k3 = rate(y + h / 2 * k2)
        k4 = rate(y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return jax.lax.fori_loop(0, 4, step, y0)


def interp_traced_grid(xp, fp):
    """``jnp.interp`` at 3 fixed points of a traced increasing grid xp [4] with traced values fp [4]
    (both differentiated; one query point left of the grid takes ``left``)."""
    return jnp.interp(np.array([-0.5, 0.2, 2.5]), jnp.cumsum(jnp.exp(xp)) - 1.0, fp, left=-1.0)


def crank_nicolson_tridiagonal(u0, source):
    """A Crank-Nicolson step of 1-D diffusion on 4 points with a source term: its tridiagonal system
    solved by ``lax.linalg.tridiagonal_solve``."""
    r = 0.3
    lower = np.concatenate([[0.0], np.full(3, -r)])
    upper = np.concatenate([np.full(3, -r), [0.0]])
    diagonal = np.full(4, 1 + 2 * r)
    rhs = (1 - 2 * r) * u0 + r * (jnp.roll(u0, 1) + jnp.roll(u0, -1)) + 0.1 * source
    return jax.lax.linalg.tridiagonal_solve(lower, diagonal, upper, rhs[:, None])[:, 0]


def bilinear_resize(image):
    """A [1, 3, 3, 1] image resized bilinearly to [1, 4, 5, 1] by ``jax.image.resize``, then tanh."""
    return jnp.tanh(jax.image.resize(image, (1, 4, 5, 1), "bilinear"))


def einsum_traces(a, b):
    """Batched traces and diagonals by einsum with repeated indices: ``bii->b`` of a [2, 3, 3], and
    ``iij->j`` of b [3, 3, 2], combined."""
    return jnp.einsum("bii->b", a)[:, None] * jnp.einsum("iij->j", b)[None, :] + jnp.einsum("bii->bi", a)[:, :2]


def dense_weight_loss(weight, x):
    """A dense layer's mean squared tanh over a batch x [3, 5] by its weight [5, 4]: the partial of
    x @ weight by the weight is x itself (a Kronecker tie on the weight's output axis)."""
    return jnp.mean(jnp.tanh(x @ weight) ** 2, axis=0)


#: Functions whose reference Jacobian is jax.jacfwd (jax.jacrev cannot differentiate their while loop).
JACFWD_REFERENCE = frozenset({"tolerance_while"})


def _gru_params() -> dict:
    """Parameters of `_GRU` in flax's layout (input and hidden size 2), drawn like the other arguments."""
    dense = {"kernel": (2, 2), "bias": (2,)}
    shapes = {"cell": {"ir": dense, "iz": dense, "in": dense, "hr": {"kernel": (2, 2)}, "hz": {"kernel": (2, 2)},
                       "hn": dense}}
    return jax.tree.map(lambda shape: _normal(*shape), shapes, is_leaf=lambda x: isinstance(x, tuple))


def _spd(n: int) -> np.ndarray:
    a = _normal(n, n)
    return a @ a.T + n * np.eye(n)


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module, float64."""
    mlp = MLP((Linear(_normal(3, 3), _normal(3)), Linear(_normal(2, 3), _normal(2))), 1.5)
    return [
        ("other", fft2_lowpass, (_normal(4, 4),), 0),
        ("stencils", muscl_minmod_step, (1.0 + 0.5 * np.sin(np.arange(6.0)) + _normal(6, scale=0.1),), 0),
        ("integrators", dataclass_symplectic_step, (ParticleState(_normal(3), _normal(3)), np.float64(0.1)), (0, 1)),
        ("layers", frozen_dataclass_mlp, (mlp, _normal(3, 3)), (0, 1)),
        ("layers", conv3d_video, (_normal(1, 3, 3, 3, 1), _normal(2, 2, 2, 1, 2)), (0, 1)),
        ("indexing", scatter_max_min_duplicates, (_normal(4), _normal(4)), (0, 1)),
        ("control flow", tolerance_while, (_normal(3), np.float64(1e-6)), 0),
        ("linear algebra", batch_axis_inside, (_normal(3, 2, 4), _normal(2, 4, 2)), (0, 1)),
        ("layers", flax_gru_sequence, (_gru_params(), _normal(1, 2, 2), _normal(1, 2)), (0, 1, 2)),
        ("linear algebra", cho_solve_spd, (_spd(3), _normal(3, 2)), (0, 1)),
        ("sort and scan", associative_recurrence, (0.9 + 0.05 * _normal(4), _normal(4)), (0, 1)),
        ("layers", grouped_conv_pool, (_normal(1, 2, 5, 5), _normal(2, 1, 2, 2)), (0, 1)),
        ("indexing", segment_max_empty, (_normal(6),), 0),
        ("control flow", switch_scan, (_normal(6),), 0),
        ("integrators", rk4_lotka_volterra, (1.0 + 0.1 * _normal(2), 1.0 + 0.1 * _normal(2)), (0, 1)),
        ("indexing", interp_traced_grid, (_normal(4), _normal(4)), (0, 1)),
        ("integrators", crank_nicolson_tridiagonal, (_normal(4, scale=0.2), _normal(4)), (0, 1)),
        ("layers", bilinear_resize, (_normal(1, 3, 3, 1),), 0),
        ("linear algebra", einsum_traces, (_normal(2, 3, 3), _normal(3, 3, 2)), (0, 1)),
        ("layers", dense_weight_loss, (_normal(5, 4), _normal(3, 5)), (0, 1)),
    ]
