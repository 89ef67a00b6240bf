"""Corpus functions from the session-25 held-out rehearsal (helper corpus25): kinds of code the nine rehearsals
before it did not write.

A probe of about 230 functions (equinox/haiku/flax-style layers in plain JAX: grouped-query attention with rotary
embeddings, ALiBi, sliding windows, T5 relative buckets, key-padding masks, conv-transpose, depthwise and
batch-grouped convolutions; optax losses, schedules and optimiser steps (AdamW with masks, LAMB, Adafactor, Lion);
normalising flows (RealNVP, rational-quadratic splines, planar/radial, Glow); Kalman/EKF/UKF filters and smoothers,
HMC and NUTS-style trajectories, particle filters, HMMs, sparse GPs; brax/mujoco-like kinematics and dynamics, jax-md
potentials over neighbour lists, FEM elasticity, Navier-Stokes, shallow-water, reaction-diffusion and spectral
residuals, hand-written Tsit5/Dormand-Prince/Gauss-Legendre integrators and a neural-ODE adjoint; sphere tracing and
soft rasterisation; STFT, lfilter/filtfilt by scan, Goertzel, wavelets; CSR/COO sparse products, graph attention by
segment softmax; RL losses; the numpy-2 array-API spellings and rarer lax primitives; guarded poles at exact zeros
before new consumers; float32 with x64 off; three generated program families of 1,000 and 10,000 equations) found
the Jacobians equal to jax.jacfwd's except where the session-25 report (/work/notes/corpus25_report.md) says
otherwise. These eighteen stand for its groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_RNG = np.random.default_rng(2525)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def cross_attention_key_padding(q, kv, lengths):
    """Cross-attention with a key-padding mask by lengths (one batch entry of length zero: a finite large negative
    fill, its output zeroed by ``jnp.where``)."""
    # keys beyond length masked; a batch entry with length 0 gets uniform attention via -1e30 not -inf
    B, S, d = kv.shape
    valid = jnp.arange(S)[None] < lengths[:, None]
    s = jnp.einsum("bqd,bsd->bqs", q, kv) / np.sqrt(d)
    s = jnp.where(valid[:, None], s, -1e30)
    p = jax.nn.softmax(s, -1)
    out = jnp.einsum("bqs,bsd->bqd", p, kv)
    return jnp.where((lengths > 0)[:, None, None], out, 0.0)


def t5_relative_bias_attention(q, k, table):
    """T5's bucketed relative-position bias: integer buckets by a log of the distance, a learned table gathered by
    them, added to the attention logits."""
    T = q.shape[0]
    rel = jnp.arange(T)[None, :] - jnp.arange(T)[:, None]
    n = jnp.abs(rel)
    max_exact = 2
    large = max_exact + (jnp.log(jnp.maximum(n, 1) / max_exact) / np.log(8 / max_exact) * 2).astype(jnp.int32)
    bucket = jnp.where(n < max_exact, n, jnp.minimum(large, 3)) + 4 * (rel > 0)
    bias = table[bucket]
    return jax.nn.softmax(q @ k.T + bias, -1)


def ce_ignore_index(logits, labels):
    """Cross-entropy with PyTorch's ``ignore_index=-100`` convention: the ignored labels replaced by 0 for the gather,
    masked out, averaged over ``max(count, 1)``."""
    valid = labels != -100
    safe = jnp.where(valid, labels, 0)
    lp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(lp, safe[:, None], 1)[:, 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(valid.sum(), 1)


def sinkhorn_log_domain(x, y, eps):
    """Entropic optimal transport: 20 log-domain Sinkhorn iterations under ``lax.fori_loop``, then the transport
    cost."""
    C = jnp.sum((x[:, None] - y[None]) ** 2, -1)
    n, m = C.shape
    la, lb = -jnp.log(n) * jnp.ones(n), -jnp.log(m) * jnp.ones(m)

    def body(i, fg):
        f, g = fg
        f = -eps * jax.nn.logsumexp((g[None] - C) / eps + lb[None], 1)
        g = -eps * jax.nn.logsumexp((f[:, None] - C) / eps + la[:, None], 0)
        return f, g
    f, g = lax.fori_loop(0, 20, body, (jnp.zeros(n), jnp.zeros(m)))
    P = jnp.exp((f[:, None] + g[None] - C) / eps + la[:, None] + lb[None])
    return jnp.sum(P * C)


def rq_spline_flow(x, w_logits, h_logits, d_logits):
    """A rational-quadratic spline flow (Durkan et al. 2019) with identity tails: the bin of each input by
    ``jnp.searchsorted`` over cumulative widths that depend on the parameters, the transform and its log-
    determinant."""
    # neural spline flow (Durkan et al.) on [-B, B], identity tails; bins by searchsorted on cumulative widths
    B = 3.0; K = w_logits.shape[-1]
    w = jax.nn.softmax(w_logits) * 2 * B
    h = jax.nn.softmax(h_logits) * 2 * B
    d = jnp.concatenate([jnp.ones(1), jax.nn.softplus(d_logits) + 1e-3, jnp.ones(1)])
    cw = jnp.concatenate([jnp.zeros(1), jnp.cumsum(w)]) - B
    ch = jnp.concatenate([jnp.zeros(1), jnp.cumsum(h)]) - B
    inside = jnp.abs(x) < B
    xc = jnp.clip(x, -B + 1e-6, B - 1e-6)
    k = jnp.clip(jnp.searchsorted(cw, xc, side="right") - 1, 0, K - 1)
    xk, wk, yk, hk = cw[k], w[k], ch[k], h[k]
    dk, dk1 = d[k], d[k + 1]
    sk = hk / wk
    xi = (xc - xk) / wk
    num = hk * (sk * xi ** 2 + dk * xi * (1 - xi))
    den = sk + (dk1 + dk - 2 * sk) * xi * (1 - xi)
    y = yk + num / den
    dnum = sk ** 2 * (dk1 * xi ** 2 + 2 * sk * xi * (1 - xi) + dk * (1 - xi) ** 2)
    logdet = jnp.log(dnum) - 2 * jnp.log(den)
    return jnp.where(inside, y, x), jnp.where(inside, logdet, 0.0)


def lamb_trust_ratio(params, grads, nu):
    """One LAMB update of a parameter dict: Adam-like direction, then the layer-wise trust ratio ``|p| / |u|`` guarded
    by ``jnp.where`` (a parameter leaf of zeros)."""
    out = {}
    for k in params:
        v = 0.999 * nu[k] + 0.001 * grads[k] ** 2
        u = grads[k] / (jnp.sqrt(v) + 1e-6) + 0.01 * params[k]
        pn, un = jnp.linalg.norm(params[k]), jnp.linalg.norm(u)
        ratio = jnp.where((pn > 0) & (un > 0), pn / un, 1.0)
        out[k] = params[k] - 0.1 * ratio * u
    return out


def kalman_filter_rts_smoother(ys, F, q, r):
    """A Kalman filter (Joseph-form covariance update, ``jnp.linalg.solve``) by ``lax.scan``, then the Rauch-Tung-
    Striebel smoother by a reversed scan with ``jnp.linalg.inv``."""
    n = F.shape[0]
    H = jnp.eye(1, n)
    Q = q ** 2 * jnp.eye(n); Rm = r ** 2 * jnp.eye(1)

    def fwd(carry, y):
        m, P = carry
        mp = F @ m; Pp = F @ P @ F.T + Q
        S = H @ Pp @ H.T + Rm
        K = jnp.linalg.solve(S, H @ Pp).T
        m = mp + K @ (y - H @ mp)
        IKH = jnp.eye(n) - K @ H
        P = IKH @ Pp @ IKH.T + K @ Rm @ K.T      # Joseph form
        return (m, P), (m, P, mp, Pp)
    _, (ms, Ps, mps, Pps) = lax.scan(fwd, (jnp.zeros(n), jnp.eye(n)), ys[:, None])

    def bwd(carry, xs):
        ms_next, Ps_next = carry
        m, P, mp, Pp = xs
        G = P @ F.T @ jnp.linalg.inv(Pp)
        m = m + G @ (ms_next - mp)
        P = P + G @ (Ps_next - Pp) @ G.T
        return (m, P), m
    _, sm = lax.scan(bwd, (ms[-1], Ps[-1]), (ms[:-1], Ps[:-1], mps[1:], Pps[1:]), reverse=True)
    return jnp.concatenate([sm, ms[-1:]])


def neural_ode_adjoint(theta, y0):
    """A neural ODE's adjoint written by hand: RK4 forward by ``fori_loop``, then the augmented system backwards with
    ``jax.vjp`` inside the loop; the output is dL/dtheta."""
    # forward RK4 by scan, then the adjoint backwards with jax.vjp inside: the output is dL/dtheta
    f = lambda y, th: jnp.tanh(th @ y)
    dt, n = 0.1, 6

    def rk4(y, th, h):
        k1 = f(y, th); k2 = f(y + h / 2 * k1, th); k3 = f(y + h / 2 * k2, th); k4 = f(y + h * k3, th)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    yT = lax.fori_loop(0, n, lambda i, y: rk4(y, theta, dt), y0)
    a = 2 * yT  # dL/dyT for L = |yT|^2

    def aug(s, th):
        y, a, g = s
        fy, vjp = jax.vjp(f, y, th)
        ay, ath = vjp(a)
        return (-fy, ay, ath)  # backwards in time

    def back(i, s):
        y, a, g = s
        k = aug(s, theta)
        return (y + dt * k[0], a + dt * k[1], g + dt * k[2])
    _, aT, g = lax.fori_loop(0, n, back, (yT, a, jnp.zeros_like(theta)))
    return g


def jaxmd_lj_neighbor_list(R_, idx, box):
    """jax-md style Lennard-Jones energy over a padded neighbour list (sentinel index N), minimum image by
    ``jnp.round``, a smooth cutoff by ``jnp.where``."""
    # padded neighbour list (sentinel N), periodic minimum image, cutoff with smooth switching
    Npart = R_.shape[0]
    Rp = jnp.concatenate([R_, jnp.zeros((1, 2))])
    dR = R_[:, None] - Rp[idx]
    dR = dR - box * jnp.round(dR / box)
    mask = idx < Npart
    r2 = jnp.sum(dR ** 2, -1)
    r2 = jnp.where(mask, r2, 1.0)
    inv6 = (1.0 / r2) ** 3
    e = 4 * (inv6 ** 2 - inv6)
    rc2 = 2.5 ** 2
    sw = jnp.where(r2 < rc2, (1 - r2 / rc2) ** 2, 0.0)
    return 0.5 * jnp.sum(jnp.where(mask, e * sw, 0.0))


def q4_elasticity_residual(U, E):
    """Plane-stress linear elasticity on bilinear quads: 2x2 Gauss points, Jacobian solves and determinants, element
    forces assembled by ``segment_sum``."""
    # 2x2 mesh of bilinear quads, plane stress, 2x2 Gauss quadrature; assembled by segment_sum
    nu = 0.3
    nodes = jnp.array([[x, y] for y in range(3) for x in range(3)], dtype=U.dtype)
    conn = np.array([[0, 1, 4, 3], [1, 2, 5, 4], [3, 4, 7, 6], [4, 5, 8, 7]])
    D = E / (1 - nu ** 2) * jnp.array([[1, nu, 0], [nu, 1, 0], [0, 0, (1 - nu) / 2]])
    g = 1 / np.sqrt(3)
    gps = [(-g, -g), (g, -g), (g, g), (-g, g)]
    fe = []
    for c in conn:
        X = nodes[c]; u = U[c]
        f = jnp.zeros((4, 2))
        for xi, eta in gps:
            dN = 0.25 * jnp.array([[-(1 - eta), (1 - eta), (1 + eta), -(1 + eta)],
                                   [-(1 - xi), -(1 + xi), (1 + xi), (1 - xi)]])
            J = dN @ X
            dNx = jnp.linalg.solve(J, dN)
            eps = jnp.array([dNx[0] @ u[:, 0], dNx[1] @ u[:, 1], dNx[1] @ u[:, 0] + dNx[0] @ u[:, 1]])
            sig = D @ eps
            B = jnp.stack([jnp.stack([dNx[0], jnp.zeros(4)], 1), jnp.stack([jnp.zeros(4), dNx[1]], 1),
                           jnp.stack([dNx[1], dNx[0]], 1)])  # (3, 4, 2)
            f = f + jnp.einsum("s,sna->na", sig, B) * jnp.linalg.det(J)
        fe.append(f)
    fe = jnp.concatenate(fe)
    return jax.ops.segment_sum(fe, conn.ravel(), 9)


def lfilter_scan_df2t(b, a, x):
    """``scipy.signal.lfilter`` written by hand: direct form II transposed under ``lax.scan``, differentiated in the
    coefficients and the signal."""
    # scipy.signal.lfilter direct form II transposed with a[0] == 1, coefficients differentiated
    n = b.shape[0]

    def step(z, xi):
        y = b[0] * xi + z[0]
        z_new = jnp.concatenate([z[1:], jnp.zeros(1)]) + b[1:] * xi - a[1:] * y
        return z_new, y
    _, y = lax.scan(step, jnp.zeros(n - 1), x)
    return y


def csr_spmv_repeat(data, x, indptr, indices):
    """A CSR sparse matrix-vector product: row ids by ``jnp.repeat(..., total_repeat_length=nnz)`` of the row pointer's
    differences (an empty row), summed by ``segment_sum``."""
    nnz = data.shape[0]
    rows = jnp.repeat(jnp.arange(indptr.shape[0] - 1), jnp.diff(indptr), total_repeat_length=nnz)
    return jax.ops.segment_sum(data * x[indices], rows, indptr.shape[0] - 1)


def gat_segment_softmax(h, W, a, src, dst):
    """A graph attention layer: edge logits by leaky ReLU, a softmax per destination by ``segment_max`` (an isolated
    node's -inf replaced), ``segment_sum`` of the messages."""
    n = h.shape[0]
    z = h @ W
    e = jax.nn.leaky_relu(jnp.concatenate([z[src], z[dst]], -1) @ a, 0.2)
    emax = jax.ops.segment_max(e, dst, n)
    emax = jnp.where(jnp.isfinite(emax), emax, 0.0)
    w = jnp.exp(e - emax[dst])
    den = jax.ops.segment_sum(w, dst, n)
    alpha = w / den[dst]
    return jax.ops.segment_sum(alpha[:, None] * z[src], dst, n)


def se3_exp_small_angle(xi):
    """The SE(3) exponential map with its small-angle Taylor branch by the double-``jnp.where`` idiom (exact at a zero
    rotation)."""
    w, v = xi[:3], xi[3:]
    th2 = w @ w
    small = th2 < 1e-10
    th = jnp.sqrt(jnp.where(small, 1.0, th2))
    A = jnp.where(small, 1 - th2 / 6, jnp.sin(th) / th)
    B = jnp.where(small, 0.5 - th2 / 24, (1 - jnp.cos(th)) / jnp.where(small, 1.0, th2))
    C = jnp.where(small, 1 / 6 - th2 / 120, (th - jnp.sin(th)) / (th * jnp.where(small, 1.0, th2)))
    W = jnp.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    Rm = jnp.eye(3) + A * W + B * W @ W
    V = jnp.eye(3) + B * W + C * W @ W
    return Rm, V @ v


def bspline_cox_de_boor(ctrl, x):
    """A clamped cubic B-spline by the Cox-de Boor recursion: repeated knots give 0/0 terms guarded by ``jnp.where``."""
    # clamped cubic B-spline with repeated knots: 0/0 terms guarded by where
    p = 3
    knots = jnp.array([0, 0, 0, 0, 0.3, 0.6, 1, 1, 1, 1.0])
    nb = knots.shape[0] - 1
    B = jnp.stack([((knots[i] <= x) & (x < knots[i + 1])) | ((i == nb - p - 1) & (x == 1.0)) for i in range(nb)],
                  -1).astype(x.dtype)
    for k in range(1, p + 1):
        newB = []
        for i in range(nb - k):
            d1 = knots[i + k] - knots[i]; d2 = knots[i + k + 1] - knots[i + 1]
            t1 = jnp.where(d1 > 0, (x - knots[i]) / jnp.where(d1 > 0, d1, 1.0), 0.0) * B[:, i]
            t2 = jnp.where(d2 > 0, (knots[i + k + 1] - x) / jnp.where(d2 > 0, d2, 1.0), 0.0) * B[:, i + 1]
            newB.append(t1 + t2)
        B = jnp.stack(newB, -1)
    return B @ ctrl


def hmm_forward_backward_posteriors(log_A, log_B, obs):
    """HMM posterior marginals: forward and backward passes in log space by two ``lax.scan`` (one reversed), normalised
    by a softmax."""
    logA = jax.nn.log_softmax(log_A, -1)
    logB = jax.nn.log_softmax(log_B, -1)
    K = logA.shape[0]
    e = logB[:, obs].T   # (T, K)

    def fwd(a, et):
        a = jax.nn.logsumexp(a[:, None] + logA, 0) + et
        return a, a
    a0 = -jnp.log(K) + e[0]
    _, alphas = lax.scan(fwd, a0, e[1:])
    alphas = jnp.concatenate([a0[None], alphas])

    def bwd(b, et):
        b = jax.nn.logsumexp(logA + (et + b)[None], 1)
        return b, b
    _, betas = lax.scan(bwd, jnp.zeros(K), e[1:], reverse=True)
    betas = jnp.concatenate([betas, jnp.zeros((1, K))])
    post = alphas + betas
    return jax.nn.softmax(post, -1)


def kv_cache_decode_step(cache_k, cache_v, x, Wq, Wk, Wv, pos):
    """One decoding step with a key/value cache: ``lax.dynamic_update_slice`` at a position, attention masked to the
    filled slots."""
    q, k, v = x @ Wq, x @ Wk, x @ Wv
    ck = lax.dynamic_update_slice(cache_k, k[None], (pos, 0))
    cv = lax.dynamic_update_slice(cache_v, v[None], (pos, 0))
    valid = jnp.arange(cache_k.shape[0]) <= pos
    s = jnp.where(valid, ck @ q / np.sqrt(q.shape[0]), -jnp.inf)
    return jax.nn.softmax(s) @ cv, ck, cv


def moe_capacity_dropping(x, Wg, We):
    """Switch-style top-1 mixture of experts with a capacity: a token's slot by a cumulative sum of the one-hot
    routing, tokens over capacity dropped; the load-balancing loss beside."""
    E, cap = We.shape[0], 2
    logits = x @ Wg
    probs = jax.nn.softmax(logits)
    e = jnp.argmax(probs, -1)
    onehot = jax.nn.one_hot(e, E)
    pos = jnp.cumsum(onehot, 0) * onehot - onehot
    keep = (pos < cap) * onehot
    gate = jnp.sum(probs * keep, -1)
    y = jnp.einsum("te,td,edh->th", keep, x, We)
    return gate[:, None] * y, jnp.mean(jnp.sum(onehot, 0) / x.shape[0] * probs.mean(0)) * E


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    n = _normal
    return [
        ("layers", t5_relative_bias_attention, (n(6, 3), n(6, 3), n(8)), (0, 1, 2)),
        ("layers", cross_attention_key_padding, (n(3, 2, 3), n(3, 4, 3), np.array([4, 0, 2])), (0, 1)),
        ("losses", ce_ignore_index, (n(5, 4), np.array([1, -100, 3, 0, -100])), 0),
        ("losses", sinkhorn_log_domain, (n(4, 2), n(5, 2), np.array(0.5)), (0, 1, 2)),
        ("flows", rq_spline_flow, (np.array([-3.5, -2.0, -0.3, 0.0, 0.7, 2.9, 4.0]), n(5), n(5), n(4)), (0, 1, 2, 3)),
        ("optimisers", lamb_trust_ratio, ({"w": n(3, 2), "b": np.zeros(2)}, {"w": n(3, 2), "b": n(2)},
                                          {"w": np.abs(n(3, 2)), "b": np.abs(n(2))}), (0, 1)),
        ("filters", kalman_filter_rts_smoother, (n(6), np.array([[1.0, 0.1], [0.0, 0.95]]), np.array(0.3),
                                                 np.array(0.5)), (0, 1, 2, 3)),
        ("particles", jaxmd_lj_neighbor_list, (np.array([[0.0, 0.0], [1.1, 0.1], [0.2, 1.2], [3.5, 3.6], [2.4, 0.3]]),
                                               np.array([[1, 2, 5], [0, 4, 5], [0, 5, 5], [5, 5, 5], [1, 3, 5]]),
                                               np.array(4.0)), 0),
        ("residuals", q4_elasticity_residual, (n(9, 2, scale=0.05), np.array(10.0)), (0, 1)),
        ("signals", lfilter_scan_df2t, (np.array([0.2, 0.3, 0.1]), np.array([1.0, -0.5, 0.2]), n(10)), (0, 1, 2)),
        ("integrators", neural_ode_adjoint, (n(3, 3), n(3)), (0, 1)),
        ("sparse", csr_spmv_repeat, (n(7), n(5), np.array([0, 2, 2, 5, 7]), np.array([0, 3, 1, 2, 4, 0, 4])), (0, 1)),
        ("sparse", gat_segment_softmax, (n(5, 3), n(3, 2), n(4), np.array([0, 1, 2, 3, 0, 2]),
                                         np.array([1, 2, 1, 0, 3, 3])), (0, 1, 2)),
        ("probabilistic", hmm_forward_backward_posteriors, (n(3, 3), n(3, 4), np.array([0, 2, 3, 1, 1])), (0, 1)),
        ("geometry", se3_exp_small_angle, (np.array([0.0, 0.0, 0.0, 1.0, 2.0, 3.0]),), 0),
        ("geometry", bspline_cox_de_boor, (n(6), np.array([0.0, 0.1, 0.3, 0.55, 0.9, 1.0])), (0, 1)),
        ("layers", moe_capacity_dropping, (n(6, 3), n(3, 2), n(2, 3, 4)), (0, 1, 2)),
        ("layers", kv_cache_decode_step, (n(5, 3), n(5, 3), n(4), n(4, 3), n(4, 3), n(4, 3), 2), (0, 1, 2, 3)),
    ]
