"""Corpus functions from the session-7 outsider probe battery: code as users write it with libraries.

New kinds of code beside the other groups: real flax modules (linen attention, an ``nn.scan`` LSTM,
BatchNorm with mutable statistics, an nnx module split into graph and state), optax losses and an
optax Adam step with ``jax.grad`` inside, a function with a custom JVP rule that mixes entries
(a pointwise primal whose partials are not diagonal: it got the diagonal, wrong numbers, before
session 7), Moré–Garbow–Hillstrom Kowalik–Osborne and Osborne 1 residuals, the MINPACK-2
Chandrasekhar H-equation, an implicit Euler step with Newton iterations on ``jax.jacfwd`` inside a
scan, a while loop with a float clock, two-link arm dynamics by a solve, quaternion rotations,
leapfrog n-body with ``vmap``, nested while loops, a while loop over a dict state, a switch inside
a scan, weighted ``bincount``, fixed-size ``nonzero``, LU and SVD reconstructions, and the
multivariate normal log-density. The flax modules are built and their parameters shaped on demand
(``import alphagrad`` does not import flax).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_RNG = np.random.default_rng(707)


def _normal(*shape, dtype=np.float64, scale=0.5):
    return (scale * _RNG.normal(size=shape)).astype(dtype)


# ---- flax modules (imported on first use) -------------------------------------------------------


@functools.cache
def _flax_modules() -> dict:
    import flax.linen as nn
    from flax import nnx

    class Attention(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=2)(x, x)

    class LSTM(nn.Module):
        @nn.compact
        def __call__(self, xs):
            cell = nn.OptimizedLSTMCell(3)
            carry = jax.tree.map(lambda c: c.astype(xs.dtype),
                                 cell.initialize_carry(jax.random.key(0), xs[:, 0].shape))
            scan = nn.scan(lambda c, carry, x: c(carry, x), variable_broadcast="params",
                           split_rngs={"params": False}, in_axes=1, out_axes=1)
            return scan(cell, carry, xs)[1]

    class DenseBatchNorm(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.BatchNorm(use_running_average=False)(nn.Dense(3)(x))

    class NnxMLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 2, rngs=rngs)
            self.norm = nnx.LayerNorm(2, rngs=rngs)
            self.l2 = nnx.Linear(2, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.gelu(self.norm(self.l1(x))))

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: NnxMLP(nnx.Rngs(0))))
    return {"attention": Attention(), "lstm": LSTM(), "batchnorm": DenseBatchNorm(), "nnx_graphdef": graphdef,
            "nnx_state": lambda: nnx.split(nnx.eval_shape(lambda: NnxMLP(nnx.Rngs(0))))[1]}


def _random_like(tree):
    """Random float32 values in the shapes of `tree` (abstract values), as flax would initialise them."""
    return jax.tree.map(lambda a: _normal(*a.shape, dtype=np.float32), tree)


def flax_attention(params, x):
    """flax.linen MultiHeadDotProductAttention (2 heads of 1) on a (batch, time, features) input: linen params."""
    return _flax_modules()["attention"].apply(params, x)


def flax_lstm_scan(params, xs):
    """A flax.linen OptimizedLSTMCell run over time by nn.scan (a lax.scan with broadcast params)."""
    return _flax_modules()["lstm"].apply(params, xs)


def flax_batchnorm(params, batch_stats, x):
    """flax.linen Dense + BatchNorm in training mode: batch statistics, mutable=['batch_stats'] discarded."""
    y, _ = _flax_modules()["batchnorm"].apply({"params": params, "batch_stats": batch_stats}, x,
                                              mutable=["batch_stats"])
    return y


def nnx_mlp(state, x):
    """A flax.nnx module (Linear, LayerNorm, gelu, Linear) split into graph and state, merged in the function."""
    from flax import nnx

    return nnx.merge(_flax_modules()["nnx_graphdef"], state)(x)


# ---- optax ----------------------------------------------------------------------------------------


def optax_losses(logits, targets):
    """optax losses on one batch: integer-label cross-entropy, sigmoid BCE, Huber and cosine distance."""
    import optax

    labels = jnp.array([0, 2, 1])
    return (optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            + optax.sigmoid_binary_cross_entropy(logits, jax.nn.one_hot(labels, 4)).sum(-1)
            + optax.huber_loss(logits, targets, delta=0.5).sum(-1) + optax.cosine_distance(logits, targets))


def optax_adam_step(params, x):
    """One optax Adam step from fresh state: jax.grad of a loss inside, the updated params as output."""
    import optax

    def loss(p):
        return jnp.sum(jnp.tanh(x @ p["w"] + p["b"]) ** 2)

    opt = optax.adam(0.1)
    updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
    return optax.apply_updates(params, updates)


# ---- custom rules, residuals, integrators, robotics, particles ------------------------------------


@jax.custom_jvp
def _sin_mixed_tangent(x):
    return jnp.sin(x)


@_sin_mixed_tangent.defjvp
def _sin_mixed_tangent_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _sin_mixed_tangent(x), jnp.cos(x) * t + 0.5 * t[::-1]


def custom_jvp_mixing(x):
    """A pointwise primal (sin) whose custom JVP rule mixes tangent entries (t[::-1]): dense partials."""
    return 2.0 * _sin_mixed_tangent(x) * x[0]


def kowalik_osborne(x):
    """The Moré–Garbow–Hillstrom Kowalik–Osborne residual: rational in x over 11 data points."""
    y = jnp.array([.1957, .1947, .1735, .1600, .0844, .0627, .0456, .0342, .0323, .0235, .0246])
    u = jnp.array([4, 2, 1, .5, .25, .167, .125, .1, .0833, .0714, .0625])
    return y - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def osborne1(x):
    """The Moré–Garbow–Hillstrom Osborne 1 residual: two exponential decays at 11 times."""
    t = 30.0 * jnp.arange(11)
    y = 0.8 * jnp.exp(-t / 50)
    return y - (x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4]))


def chandrasekhar_h(x):
    """The MINPACK-2 Chandrasekhar H-equation residual (c = 0.9) by midpoint quadrature, dense in x."""
    n = x.shape[0]
    mu = (jnp.arange(1, n + 1) - 0.5) / n
    kernel = mu[:, None] / (mu[:, None] + mu[None, :])
    return x - 1 / (1 - 0.9 / (2 * n) * (kernel * x[None, :]).sum(1))


def implicit_euler_newton(y0, k):
    """Implicit Euler on a cubic oscillator in lax.scan: three Newton steps each, jax.jacfwd and a solve inside."""
    def rhs(y):
        return jnp.stack([y[1], -k * y[0] ** 3 - 0.1 * y[1]])

    def step(y, _):
        z = y
        for _ in range(3):
            jac = jnp.eye(2) - 0.1 * jax.jacfwd(rhs)(z)
            z = z - jnp.linalg.solve(jac, z - y - 0.1 * rhs(z))
        return z, z[0]

    return jax.lax.scan(step, y0, None, length=3)


def float_clock_while(y, a):
    """Explicit Euler to t = 1 in a lax.while_loop on a float clock (trip count found at run time)."""
    def body(state):
        t, y, h = state
        return t + h, y + h * jnp.stack([y[1], -a * y[0]]), h

    return jax.lax.while_loop(lambda s: s[0] < 1.0, body, (0.0, y, 0.25))[1]


def two_link_dynamics(q, qd):
    """Forward dynamics of a two-link arm: mass matrix, Coriolis and gravity terms, jnp.linalg.solve."""
    m1, m2, l1, l2 = 1.0, 0.8, 1.0, 0.7
    c2 = jnp.cos(q[1])
    mass = jnp.array([[m1 * l1**2 + m2 * (l1**2 + 2 * l1 * l2 * c2 + l2**2), m2 * (l1 * l2 * c2 + l2**2)],
                      [m2 * (l1 * l2 * c2 + l2**2), m2 * l2**2]])
    h = -m2 * l1 * l2 * jnp.sin(q[1])
    coriolis = jnp.array([[h * qd[1], h * (qd[0] + qd[1])], [-h * qd[0], 0.0]])
    gravity = 9.81 * jnp.array([(m1 + m2) * l1 * jnp.cos(q[0]) + m2 * l2 * jnp.cos(q[0] + q[1]),
                                m2 * l2 * jnp.cos(q[0] + q[1])])
    return jnp.linalg.solve(mass, -coriolis @ qd - gravity)


def quaternion_rotate(q, points):
    """Points rotated by a normalised quaternion (the two-cross-product formula), as in a pose estimator."""
    q = q / jnp.linalg.norm(q)
    t = 2 * jnp.cross(q[1:], points)
    return points + q[0] * t + jnp.cross(q[1:], t)


def leapfrog_vmap(x, v):
    """One softened-gravity leapfrog step, accelerations by jax.vmap over the bodies."""
    def acceleration(xi):
        d = x - xi
        return jnp.sum(d / (jnp.sum(d**2, -1, keepdims=True) + 0.1) ** 1.5, 0)

    v = v + 0.05 * jax.vmap(acceleration)(x)
    return x + 0.1 * v


# ---- control flow, indexing, linear algebra --------------------------------------------------------


def nested_while(x):
    """A while loop inside a while loop, both with integer counters."""
    def inner(state):
        j, v = state
        return j + 1, v * 0.9 + 0.05

    def outer(state):
        i, v = state
        v = jax.lax.while_loop(lambda s: s[0] < 2, inner, (0, v))[1]
        return i + 1, jnp.sin(v) + v

    return jax.lax.while_loop(lambda s: s[0] < 3, outer, (0, x))[1]


def while_dict_state(x):
    """A lax.while_loop over a dict state: a counter, a vector, and a history written with .at[i].set."""
    def body(s):
        return {"i": s["i"] + 1, "v": s["v"] * jnp.cos(s["v"]), "hist": s["hist"].at[s["i"]].set(s["v"][0])}

    s = jax.lax.while_loop(lambda s: s["i"] < 3, body, {"i": 0, "v": x, "hist": jnp.zeros(3, x.dtype)})
    return s["v"], s["hist"]


def switch_in_scan(x):
    """lax.switch inside lax.scan: the branch of each step is given by the scanned integer sequence."""
    def step(c, k):
        return jax.lax.switch(k, [jnp.sin, jnp.cos, lambda v: v * 0.5], c), c[0]

    return jax.lax.scan(step, x, jnp.array([0, 2, 1, 0]))


def weighted_bincount(w, idx):
    """A weighted histogram (jnp.bincount with weights and a fixed length), squared: a scatter-add."""
    return jnp.bincount(idx, weights=w, length=5) ** 2


def sized_nonzero(x):
    """Rows selected by jnp.nonzero with a static size (fill value 0), as a jit-compatible boolean mask."""
    (rows,) = jnp.nonzero(x[:, 0] > 0, size=3, fill_value=0)
    return x[rows] * 2.0


def lu_svd_reconstruct(a):
    """P L U from jax.scipy.linalg.lu and U S V^T from jnp.linalg.svd, plus the top singular vector."""
    p, lower, upper = jax.scipy.linalg.lu(a)
    u, s, vt = jnp.linalg.svd(a)
    return p @ lower @ upper + (u * s) @ vt + s[0] * jnp.abs(u[:, 0])


def mvn_logpdf(cov, mean):
    """jax.scipy.stats.multivariate_normal.logpdf at a fixed point (a Cholesky factor and a triangular solve)."""
    return jax.scipy.stats.multivariate_normal.logpdf(jnp.array([0.1, 0.2, -0.3]), mean, cov)


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module: float32 for
    the flax modules and the optax losses (flax's default parameter dtype), float64 for the others."""
    f32 = np.float32
    modules = _flax_modules()
    x_attention = _normal(1, 2, 3, dtype=f32)
    x_lstm = _normal(2, 3, 2, dtype=f32)
    x_bn = _normal(4, 2, dtype=f32)
    key = jax.random.key(0)
    attention = _random_like(jax.eval_shape(modules["attention"].init, key, x_attention))
    lstm = _random_like(jax.eval_shape(modules["lstm"].init, key, x_lstm))
    bn = jax.eval_shape(modules["batchnorm"].init, key, x_bn)
    bn_stats = jax.tree.map(lambda a: np.ones(a.shape, f32), bn["batch_stats"])
    nnx_state = _random_like(modules["nnx_state"]())
    spd = _normal(3, 3)
    spd = spd @ spd.T + 3 * np.eye(3)
    return [
        ("layers", flax_attention, (attention, x_attention), (0, 1)),
        ("layers", flax_lstm_scan, (lstm, x_lstm), (0, 1)),
        # float64: the normalisation cancels to zero in some blocks, where float32 references carry
        # rounding noise of up to 1e-4 (CI saw 7e-5 against an exact 0)
        ("layers", flax_batchnorm, jax.tree.map(lambda a: np.asarray(a, np.float64),
                                                (_random_like(bn["params"]), bn_stats, x_bn)), (0, 2)),
        ("layers", nnx_mlp, (nnx_state, _normal(2, 3, dtype=f32)), (0, 1)),
        ("losses", optax_losses, (_normal(3, 4, dtype=f32), _normal(3, 4, dtype=f32)), (0, 1)),
        ("other", optax_adam_step, ({"w": _normal(3, 2), "b": _normal(2)}, _normal(4, 3)), 0),
        ("other", custom_jvp_mixing, (_normal(3),), 0),
        ("residuals", kowalik_osborne, (np.array([0.25, 0.39, 0.415, 0.39]),), 0),
        ("residuals", osborne1, (np.array([0.5, 1.5, -1.0, 0.01, 0.02]),), 0),
        ("residuals", chandrasekhar_h, (np.ones(5),), 0),
        ("integrators", implicit_euler_newton, (np.array([1.0, 0.5]), np.float64(2.0)), (0, 1)),
        ("integrators", float_clock_while, (np.array([1.0, 0.5]), np.float64(0.7)), (0, 1)),
        ("robotics", two_link_dynamics, (np.array([0.2, 0.4]), np.array([0.1, -0.2])), (0, 1)),
        ("robotics", quaternion_rotate, (np.array([0.9, 0.1, -0.3, 0.2]), _normal(2, 3)), (0, 1)),
        ("particles", leapfrog_vmap, (_normal(3, 2), _normal(3, 2)), (0, 1)),
        ("control flow", nested_while, (_normal(2),), 0),
        ("control flow", while_dict_state, (_normal(3),), 0),
        ("control flow", switch_in_scan, (_normal(3),), 0),
        ("indexing", weighted_bincount, (_normal(6), np.array([0, 2, 2, 4, 1, 0], np.int32)), 0),
        ("indexing", sized_nonzero, (np.array([[0.5, 1.0], [-0.2, 0.3], [0.7, -0.4], [0.1, 0.2]]),), 0),
        ("linear algebra", lu_svd_reconstruct, (_normal(2, 2) + 2 * np.eye(2),), 0),
        ("linear algebra", mvn_logpdf, (spd, _normal(3)), (0, 1)),
    ]


#: Reference Jacobian jax.jacfwd: while loops whose trip count reverse mode cannot see.
JACFWD_REFERENCE = frozenset({"float_clock_while", "nested_while", "while_dict_state"})
