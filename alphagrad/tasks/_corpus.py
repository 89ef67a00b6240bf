"""The corpus: real-looking functions of the kinds users differentiate, with example inputs.

This module holds the first part, small functions each built around a primitive without a
structural rule: loops (scan, fori_loop, while_loop), branches (cond, switch), sorts, cumulative
ops, products, clipping, integer-array indexing (gather), scatters, dynamic slices, linear algebra
(solve, triangular solve, Cholesky, eigh), log-softmax, an embedding lookup and fixed-key noise.
The rest is written by group, as application code: neural-network layers and losses
(`_corpus_nn`), scientific residuals, integrators, particles, robots and stencils
(`_corpus_science`), control flow, indexing and linear algebra (`_corpus_control`), and functions
in the styles of outside users (`_corpus_outsider`: pytrees, partials, mixed precision, special
functions, custom roots and solves, out-of-bounds index modes), and code written with libraries
(`_corpus_practice`: flax linen and nnx modules, optax losses and an optax step, a custom JVP rule
that mixes entries, nested and float-clocked while loops), and constructs the session-8 battery
added (`_corpus_wild`: a 2-D FFT filter, a minmod-limited MUSCL step, registered dataclasses and
equinox-style frozen modules, a 3-D convolution, scatter max/min at repeated indices, a tolerance
while loop, a batch axis inside an einsum operand), and functions of the session-16 held-out
rehearsal (`_corpus_heldout16`: normalisation by a clamped norm at a zero row, a -inf attention
mask, MGH residuals, a reverse scan, a while loop with a fixed trip count, ties), and of the
session-17 one (`_corpus_heldout17`: collectives inside `jax.vmap`, `lax.reduce_precision`, real
FFTs, scatter mode "drop", a value-dependent while loop, a dict of scanned
sequences, the polar decomposition, kinks at exact zeros), and of the session-18 one
(`_corpus_heldout18`: top-2 expert gating, a transposed then depthwise convolution, the MGH Watson
residuals, Gauss–Seidel sweeps, a straight-through histogram, an LU log-determinant), and of the
session-19 one, in float32 (`_corpus_heldout19`: float16 and bfloat16 arguments, a finfo.min attention
mask, Welford's scan, a registered-dataclass MLP, sinusoidal positions, global-norm clipping), and of the
session-20 one (`_corpus_heldout20`: sparsemax, a CRF likelihood, a selective scan, a Fourier layer, a
particle-in-cell deposit, NeRF rendering, the SO(3) log, periodic Lennard-Jones, finite-element assembly, a typed
PRNG key in a scan carry, `jnp.unique(size=)` groups, `lax.all_to_all` in `jax.vmap`), and of the
session-21 one (`_corpus_heldout21`: message passing with edge features and scatter-max, a masked
autoregressive flow, a mixture density network, VICReg, a pharmacokinetic RK4 model, a Kalman likelihood, van
Leer advection, a three-qubit circuit, a biquad cascade, quaternion kinematics, a GP posterior by cho_solve,
NeuralSort), and of the session-22 one (`_corpus_heldout22`: rotary and multi-query attention, top-2
mixture-of-experts routing, a CTC loss by scan, a masked softmax with all-masked rows, backward Euler with Newton
iterations, leapfrog in a fori loop, finite elements by segment_sum, an adaptive Heun while loop, searchsorted
interpolation on traced knots, a dynamic_update_slice ring buffer, expm of a rotation generator, a QR
log-determinant). The test suite
checks every function's Jacobian in several orders, under ``jax.jit``, and its counted
multiplications (tests/interpreter/test_corpus.py); docs/corpus.md is its table.

The corpus is kept out of `names()`: the paper's task table, ``alphagrad tasks`` and ``bench`` list
the registered tasks only. ``corpus()`` returns it; a TASK argument names an entry as
``corpus:NAME``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.tasks import (_corpus_control, _corpus_heldout16, _corpus_heldout17, _corpus_heldout18,
                             _corpus_heldout19, _corpus_heldout20, _corpus_heldout21, _corpus_heldout22, _corpus_nn,
                             _corpus_outsider, _corpus_practice, _corpus_science, _corpus_wild)
from alphagrad.tasks._registry import Task

__all__ = ["corpus", "corpus_groups"]

# Integer index constants (numpy, so importing alphagrad touches no device).
_IDX = np.array([2, 0, 3, 2], np.int32)


def euler_integrator(y0, k):
    """An ODE solver loop: ten explicit Euler steps of a damped oscillator, with lax.scan (one carry)."""

    def step(y, _):
        dy = jnp.stack([y[1], -k[0] * y[0] - k[1] * y[1]])
        return y + 0.1 * dy, y[0]

    final, trajectory = jax.lax.scan(step, y0, None, length=10)
    return final, trajectory


def rk_two_carries(x, v):
    """A symplectic (leapfrog) integrator, two carries (position, velocity) and a stacked energy, with lax.scan."""

    def step(carry, dt):
        q, p = carry
        p = p - 0.5 * dt * jnp.sin(q)
        q = q + dt * p
        p = p - 0.5 * dt * jnp.sin(q)
        return (q, p), jnp.sum(q * p)

    (q, p), energy = jax.lax.scan(step, (x, v), jnp.full(4, 0.1))
    return q, p, energy


def fori_static(x):
    """A fixed number of smoothing iterations (fori_loop with static bounds, i.e. a scan) of a logistic map."""
    return jax.lax.fori_loop(0, 4, lambda i, c: 0.9 * c * (1.0 - 0.1 * c) + 0.01 * i, x)


def fori_dynamic(x, n):
    """An iteration count given at run time (fori_loop with a traced bound, i.e. a while_loop)."""
    return jax.lax.fori_loop(0, n, lambda i, c: jnp.tanh(c) + c * 0.5, x)


def newton_sqrt(a):
    """A Newton solver: five iterations for sqrt(a) in a lax.while_loop."""

    def body(state):
        i, y = state
        return i + 1, 0.5 * (y + a / y)

    return jax.lax.while_loop(lambda s: s[0] < 5, body, (0, jnp.ones_like(a)))[1]


def branchy(x):
    """Data-dependent control flow: lax.cond on a value computed from x."""
    return jax.lax.cond(jnp.sum(x) > 0, lambda y: jnp.sin(y) * y, lambda y: jnp.cos(y), x)


def switched(x, i):
    """A model variant chosen at run time: lax.switch (which clamps its index) over three branches."""
    return jax.lax.switch(i, [jnp.sin, lambda y: y**2, lambda y: jnp.exp(-y)], x)


def sorted_weights(x):
    """A robust statistic (L-estimator): sorted values times fixed weights, with jnp.sort."""
    return jnp.sort(x) * jnp.linspace(0.1, 1.0, x.shape[0])


def cumulative(x):
    """Running totals and compound growth: jnp.cumsum plus jnp.cumprod."""
    return jnp.cumsum(x) + jnp.cumprod(1.0 + 0.1 * x)


def running_max(x):
    """Peak tracking (as in a drawdown): the running maximum of squares, with lax.cummax."""
    return jax.lax.cummax(x * x, axis=0)


def product(x):
    """A likelihood of independent factors: jnp.prod over all and over a slice."""
    return jnp.prod(x) + jnp.prod(x[:2] + 1.0)


def clipped(x):
    """Gradient-clipping-style saturation: jnp.clip times the input."""
    return jnp.clip(x, -0.5, 0.8) * x


def indexed(x):
    """A lookup by an integer index array (gather), as in a neighbour list."""
    return x[_IDX] * x[1]


def scattered(x):
    """Functional in-place updates: x.at[idx].set and .add (scatter, scatter-add), as in finite-element assembly."""
    y = x.at[jnp.array([0, 2])].set(x[1:3] ** 2)
    return y.at[_IDX].add(jnp.sin(x))


def window(x, start):
    """A sliding window at a run-time offset: dynamic_slice and dynamic_update_slice."""
    w = jax.lax.dynamic_slice(x, (start,), (2,))
    return jax.lax.dynamic_update_slice(x, w * 3.0, (start + 1,))


def linear_solve(a, b):
    """An implicit step solving A x = b: jnp.linalg.solve (lu, custom_linear_solve, triangular_solve)."""
    return jnp.linalg.solve(a, b)


def triangular(a, b):
    """Forward substitution with a lower-triangular factor: jax.scipy.linalg.solve_triangular."""
    return jax.scipy.linalg.solve_triangular(a, b, lower=True)


def cholesky(a):
    """A Gaussian-process covariance factor: the Cholesky factor of A A^T + I."""
    return jnp.linalg.cholesky(a @ a.T + jnp.eye(3))


def log_softmax(x):
    """A classifier head: softmax plus logsumexp (reduce_max) plus an argmax off the derivative path."""
    return jax.nn.softmax(x) + jax.scipy.special.logsumexp(x) + jnp.argmax(x)


def embedding(table, tokens):
    """A language-model input layer: an embedding lookup, mean pooling and a tied linear read-out."""
    rows = table[tokens]
    return jnp.mean(rows, axis=0) @ table[:2].T


def noisy(x):
    """Reproducible data augmentation: fixed-key multiplicative noise (key values flow through, without edges)."""
    return x * (1.0 + 0.1 * jax.random.normal(jax.random.key(0), x.shape))


def eigen_energy(a):
    """A ground-state energy: the smallest eigenvalue of a symmetric matrix plus its vector's norm (eigh)."""
    s = a + a.T
    vectors, values = jax.lax.linalg.eigh(s)
    return values[0] + jnp.sum(vectors[:, 0] ** 2)


def _primitive_entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for the functions of this module: float32, at most
    five entries (3x3 matrices for the linear algebra, a 4x3 embedding table)."""
    x4 = jnp.array([0.3, -0.7, 1.1, 0.5], jnp.float32)
    x5 = jnp.array([0.9, -0.2, 0.4, 1.3, -1.0], jnp.float32)
    m3 = jnp.array([[2.0, 0.3, -0.1], [0.4, 1.5, 0.2], [-0.3, 0.1, 1.8]], jnp.float32)
    b3 = jnp.array([0.5, -1.0, 0.25], jnp.float32)
    return [
        ("integrators", euler_integrator, (x4[:2], jnp.array([2.0, 0.3], jnp.float32)), (0, 1)),
        ("integrators", rk_two_carries, (x4[:3], x5[:3]), (0, 1)),
        ("control flow", fori_static, (x4,), 0),
        ("control flow", fori_dynamic, (x4, 3), 0),
        ("control flow", newton_sqrt, (jnp.array([2.0, 3.0, 0.5], jnp.float32),), 0),
        ("control flow", branchy, (x4,), 0),
        ("control flow", switched, (x4, 1), 0),
        ("sort and scan", sorted_weights, (x5,), 0),
        ("sort and scan", cumulative, (x4,), 0),
        ("sort and scan", running_max, (x5,), 0),
        ("sort and scan", product, (x4,), 0),
        ("control flow", clipped, (x5,), 0),
        ("indexing", indexed, (x4,), 0),
        ("indexing", scattered, (x4,), 0),
        ("indexing", window, (x5, 1), 0),
        ("linear algebra", linear_solve, (m3, b3), (0, 1)),
        ("linear algebra", triangular, (m3, b3), (0, 1)),
        ("linear algebra", cholesky, (m3,), 0),
        ("losses", log_softmax, (x5,), 0),
        ("layers", embedding, (jnp.arange(12.0, dtype=jnp.float32).reshape(4, 3) / 10, jnp.asarray(_IDX[:3])), 0),
        ("linear algebra", eigen_energy, (m3,), 0),
        ("other", noisy, (x4,), 0),
    ]


# Reverse mode needs a static trip count: jax.jacrev refuses these while loops.
_FORWARD_ONLY = frozenset({"fori_dynamic", "newton_sqrt", "cubic_root_newton"})


#: Functions whose reference Jacobian is jax.jacfwd (see `corpus`).
_JACFWD_REFERENCE = (_FORWARD_ONLY | _corpus_outsider.JACFWD_REFERENCE | _corpus_practice.JACFWD_REFERENCE
                     | _corpus_wild.JACFWD_REFERENCE | _corpus_heldout16.JACFWD_REFERENCE
                     | _corpus_heldout17.JACFWD_REFERENCE | _corpus_heldout18.JACFWD_REFERENCE
                     | _corpus_heldout19.JACFWD_REFERENCE | _corpus_heldout20.JACFWD_REFERENCE
                     | _corpus_heldout21.JACFWD_REFERENCE | _corpus_heldout22.JACFWD_REFERENCE)


def _entries() -> list[tuple]:
    return (_primitive_entries() + _corpus_nn.entries() + _corpus_science.entries()
            + _corpus_control.entries() + _corpus_outsider.entries() + _corpus_practice.entries()
            + _corpus_wild.entries() + _corpus_heldout16.entries() + _corpus_heldout17.entries()
            + _corpus_heldout18.entries() + _corpus_heldout19.entries() + _corpus_heldout20.entries()
            + _corpus_heldout21.entries() + _corpus_heldout22.entries())


def corpus() -> dict[str, Task]:
    """The corpus by name, each entry a `Task` with its example inputs, built on each call.

    ``Task.argnums`` names the floating-point arguments, the ones differentiated (the others are
    integer trip counts, branch indices, offsets, tokens and index arrays, and the batch
    statistics of ``flax_batchnorm``; an int when there is one). ``Task.reference_jacobian`` is
    ``"jacfwd"`` for the while loops (``fori_dynamic``, ``newton_sqrt``, ``cubic_root_newton``,
    ``float_clock_while``, ``nested_while``, ``while_dict_state``, ``tolerance_while``,
    ``bisection_cube_root``, ``armijo_backtracking``), which ``jax.jacrev`` cannot differentiate, for the normalisations by
    a clamped norm at a zero row (``cosine_similarity_zero_row``, ``padded_token_normalise``: jax.jacrev
    has NaN where jax.jacfwd is finite), and for ``mixed_precision_dense`` (float32 parameters
    in a float64 model: jax.jacrev rounds the blocks to float32, jax.jacfwd and alphagrad keep
    float64), ``"jacrev"`` for the others.

    Example arguments are small (at most a few dozen entries per array). Functions written for
    float64 (most residuals, integrators and the linear algebra) take numpy float64 arrays:
    run them under ``jax.enable_x64(True)`` to keep float64 (without it JAX computes them in
    float32). The groups are `corpus_groups`.

    Returns:
      A dict from name (``corpus:NAME`` as a TASK argument) to `Task`, in group-module order
      (the primitive corpus first).
    """
    return {
        fn.__name__: Task(
            fn, args, fn.__name__, fn.__doc__.splitlines()[0], argnums,
            "jacfwd" if fn.__name__ in _JACFWD_REFERENCE else "jacrev",
        )
        for _, fn, args, argnums in _entries()
    }


def corpus_groups() -> dict[str, str]:
    """The group of every corpus function by name: layers, losses, residuals, integrators, particles,
    robotics, stencils, control flow, indexing, sort and scan, linear algebra, other."""
    return {fn.__name__: group for group, fn, _, _ in _entries()}
