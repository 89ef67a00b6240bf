"""Corpus functions from the session-26 held-out rehearsal (helper corpus26): kinds of code the ten rehearsals
before it did not write.

A probe of about 200 functions (jax.numpy calls nobody had made: interp with period and fill values, polyfit/polyval,
digitize binning, nan-reductions and nan-quantiles, pad modes, cov/corrcoef, piecewise/select/vectorize, histogram
weights; jnp.linalg eigh/svd/qr/pinv/lstsq/slogdet/matrix_power, jax.scipy.linalg expm/expm_frechet/lu/solvers,
jax.scipy.sparse.linalg cg/gmres/bicgstab; jax.scipy.special and stats families, signal stft/welch/csd, ndimage,
RegularGridInterpolator, spatial.transform.Rotation, dctn; registered dataclasses, NamedTuples, pytree classes;
checkpoint policies, remat, named_call, associative_scan, reduce_window pools, lax.map, vmap/grad/jvp/vjp/
linear_transpose inside f; nested scan/while/cond, traced trip counts, integer and boolean arguments, float32 and
float16 programs; layers and losses (linear attention, RetNet, minGRU, Swin, GIoU, NT-Xent, Barlow Twins, Lovasz,
VQ, capsules, PixelCNN, WaveNet, norms, WGAN-GP, RAdam/AdaBelief/Yogi, S4D, Performer, Conformer); science
(Chebyshev BVP, Golub-Welsch, shooting, Gray-Scott, Kuramoto, Yoshida, Lorenz-96, Heston, Black-Scholes, GARCH, AC
power flow, PID, IK, polygon SDF, cotangent Laplacian, molecular mechanics, thin films, split-step Schrodinger, von
Neumann entropy, Darcy, elastic rods, ray tracing, Gibbs equilibrium, beam FEM, SEIR, rigid bodies); guarded poles
inside the new contexts; one generated family, implicit_cg, of 1,000 and 10,000 equations) found the Jacobians equal
to jax.jacfwd's except where the session-26 report (/work/notes/corpus26_report.md) says otherwise. These sixteen
stand for its groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import stats as st

_RNG = np.random.default_rng(2626)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def _spd(k):
    a = _normal(k, k)
    return a @ a.T + k * np.eye(k)


def scan_with_int_carry_output(x):
    """A scan over rows whose body reads a row dynamically by an index from the carry and conds on it."""
    def body(c, r):
        acc, i = c
        row = lax.dynamic_index_in_dim(x, i % 3, keepdims=False)
        acc = lax.cond(row.sum() > r.sum(), lambda a: a + row * r, lambda a: a - r ** 2, acc)
        return (acc, i + 1), acc.sum()
    return lax.scan(body, (jnp.zeros(4), 1), x)


def lovasz_hinge(logits, labels):
    """Lovasz hinge: errors sorted descending, the Lovasz extension's gradient of the Jaccard loss."""
    signs = 2 * labels - 1
    err = 1 - logits * signs
    order = jnp.argsort(-err)
    e, g = err[order], labels[order]
    gts = g.sum()
    inter = gts - jnp.cumsum(g)
    union = gts + jnp.cumsum(1 - g)
    jac = 1 - inter / union
    jac = jnp.concatenate([jac[:1], jac[1:] - jac[:-1]])
    return jnp.dot(jax.nn.relu(e), jac)


def swin_shifted_window_attention(x, w):
    """Swin: roll by half a window, partition 4x4 windows, attention inside each with a shift mask, reverse."""
    H = W = 8
    ws, sh = 4, 2
    xs = jnp.roll(x, (-sh, -sh), (0, 1))
    win = xs.reshape(H // ws, ws, W // ws, ws, 2).transpose(0, 2, 1, 3, 4).reshape(-1, ws * ws, 2)
    reg = np.zeros((H, W), int)
    for a, hs in enumerate((slice(0, -ws), slice(-ws, -sh), slice(-sh, None))):
        for b, wsl in enumerate((slice(0, -ws), slice(-ws, -sh), slice(-sh, None))):
            reg[hs, wsl] = 3 * a + b
    rw = reg.reshape(H // ws, ws, W // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    mask = np.where(rw[:, :, None] != rw[:, None, :], -100.0, 0.0)
    q = win @ w
    att = jax.nn.softmax(jnp.einsum("nid,njd->nij", q, win) + mask, -1)
    out = jnp.einsum("nij,njd->nid", att, win)
    out = out.reshape(H // ws, W // ws, ws, ws, 2).transpose(0, 2, 1, 3, 4).reshape(H, W, 2)
    return jnp.roll(out, (sh, sh), (0, 1))


def min_gru_log_space_scan(x, wz, wh):
    """minGRU in log space: log-sigmoid gates and a parallel scan by logcumsumexp."""
    k = x @ wz
    log_z = -jax.nn.softplus(-k)
    log_coeff = -jax.nn.softplus(k)
    g = lambda t: jnp.where(t >= 0, t + 0.5, jax.nn.sigmoid(t))
    log_h_tilde = jnp.log(g(x * wh))
    a_star = jnp.cumsum(log_coeff, 0)
    log_h = a_star + lax.cumlogsumexp(log_z + log_h_tilde - a_star, axis=0)
    return jnp.exp(log_h)


def golub_welsch_gauss_jacobi(alpha, beta):
    """Gauss-Jacobi nodes and weights by Golub-Welsch: eigh of the Jacobi matrix (parameters alpha, beta)."""
    N = 5
    k = jnp.arange(N, dtype=alpha.dtype)
    ab = alpha + beta
    a = (beta ** 2 - alpha ** 2) / ((2 * k + ab) * (2 * k + ab + 2))
    kk = k[1:]
    b = jnp.sqrt(4 * kk * (kk + alpha) * (kk + beta) * (kk + ab) /
                 ((2 * kk + ab) ** 2 * (2 * kk + ab + 1) * (2 * kk + ab - 1)))
    J = jnp.diag(a) + jnp.diag(b, 1) + jnp.diag(b, -1)
    w, v = jnp.linalg.eigh(J)
    mu0 = 2 ** (ab + 1) * jnp.exp(jax.scipy.special.betaln(alpha + 1, beta + 1))
    return w, mu0 * v[0] ** 2


def thin_film_transfer_matrix(d, nidx):
    """Thin-film optics: complex 2x2 characteristic matrices multiplied, reflectance at 3 wavelengths."""
    def R(lam):
        M = jnp.eye(2, dtype=jnp.complex128)
        for j in range(3):
            delta = 2 * jnp.pi * nidx[j] * d[j] * 0.1 / lam
            Mj = jnp.array([[jnp.cos(delta), 1j * jnp.sin(delta) / nidx[j]],
                            [1j * nidx[j] * jnp.sin(delta), jnp.cos(delta)]])
            M = M @ Mj
        n0, ns = 1.0, 1.52
        B = M[0, 0] + M[0, 1] * ns
        C = M[1, 0] + M[1, 1] * ns
        r = (n0 * B - C) / (n0 * B + C)
        return jnp.abs(r) ** 2
    return jax.vmap(R)(jnp.array([0.4, 0.55, 0.7]))


def shooting_method_newton(s0, k):
    """Shooting for y'' = -k sin(y), y(0) = 0, y(1) = 1: RK4 by fori inside a Newton while loop on the slope."""
    def shoot(s):
        def rk(i, y):
            f = lambda y: jnp.array([y[1], -k * jnp.sin(y[0])])
            h = 0.05
            ks = [f(y)]
            for c in (0.5, 0.5, 1.0):
                ks.append(f(y + c * h * ks[-1]))
            return y + h / 6 * (ks[0] + 2 * ks[1] + 2 * ks[2] + ks[3])
        return lax.fori_loop(0, 20, rk, jnp.stack([0.0 * s, s]))[0] - 1.0

    def body(c):
        s, i = c
        r, dr = jax.jvp(shoot, (s,), (jnp.ones_like(s),))
        return s - r / dr, i + 1
    s, _ = lax.while_loop(lambda c: (c[1] < 20) & (jnp.abs(shoot(c[0])) > 1e-12), body, (s0, 0))
    return s


def associative_scan_affine(a, b):
    """lax.associative_scan of affine maps x -> a x + b (a linear recurrence), reverse=True too."""
    def comb(l, r):
        return r[0] * l[0], r[0] * l[1] + r[1]
    A, B = lax.associative_scan(comb, (jnp.tanh(a), b))
    _, Br = lax.associative_scan(comb, (jnp.tanh(a), b), reverse=True)
    return B, Br


def nan_reductions(y, x):
    """nanmax / nanmin / nanstd / nanvar / nanprod over data with missing entries times a parameter."""
    z = x * y
    return jnp.stack([jnp.nanmax(z, 0), jnp.nanmin(z, 1), jnp.nanstd(z, 0), jnp.nanvar(z, 1),
                      jnp.nanprod(z + 1.0, 0), jnp.nancumsum(z, 1)[:, -1]])


def polyfit_degree3(x, y):
    """Least-squares cubic by jnp.polyfit (lstsq by SVD inside) evaluated by polyval."""
    c = jnp.polyfit(x, y, 3)
    return jnp.polyval(c, jnp.linspace(0, 1, 5))


def scipy_sparse_cg(a, b):
    """jax.scipy.sparse.linalg.cg with a matvec closure (while loop inside, differentiated through)."""
    x, _ = jax.scipy.sparse.linalg.cg(lambda v: a @ v, b, tol=1e-12, maxiter=20)
    return x


def ray_sphere_intersection(c, rays):
    """Ray-sphere hits: discriminant guarded by where (misses get t = 10), hit points' shading."""
    o = jnp.zeros(3)
    d = rays / jnp.linalg.norm(rays, axis=1, keepdims=True)
    oc = o - c
    b = d @ oc
    disc = b ** 2 - (oc @ oc - 0.25)
    hit = disc > 0
    t = jnp.where(hit, -b - jnp.sqrt(jnp.where(hit, disc, 1.0)), 10.0)
    p = o + t[:, None] * d
    nrm = (p - c) / 0.5
    return jnp.where(hit, jnp.maximum(nrm @ jnp.array([0.0, 0.0, -1.0]), 0.0), 0.0), t


def radam_rectified_step(g, m, v, t):
    """RAdam: the rectification switched on the step count (an int) by jnp.where."""
    b1, b2 = 0.9, 0.999
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g ** 2
    tf = t.astype(g.dtype) + 1
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * tf * b2 ** tf / (1 - b2 ** tf)
    mh = m / (1 - b1 ** tf)
    r = jnp.sqrt(jnp.maximum((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 0.0))
    vh = jnp.sqrt(v / (1 - b2 ** tf))
    return jnp.where(rho > 5, r * mh / (vh + 1e-8), mh), m, v


def cotangent_laplacian_energy(V):
    """Cotangent-weight mesh Laplacian (cot = dot / |cross|) of a 4-triangle fan, Dirichlet energy."""
    F = np.array([[0, 1, 4], [1, 3, 4], [3, 2, 4], [2, 0, 4]])
    L = jnp.zeros((5, 5))
    for k in range(3):
        i, j, o = F[:, k], F[:, (k + 1) % 3], F[:, (k + 2) % 3]
        a, b = V[i] - V[o], V[j] - V[o]
        cot = jnp.sum(a * b, 1) / jnp.linalg.norm(jnp.cross(a, b), axis=1)
        L = L.at[i, j].add(-0.5 * cot).at[j, i].add(-0.5 * cot).at[i, i].add(0.5 * cot).at[j, j].add(0.5 * cot)
    return L, jnp.sum(V * (L @ V))


def stats_discrete(k, lam, p):
    """poisson, binom, nbinom, geom, bernoulli logpmfs at integer data w.r.t. float parameters."""
    return (st.poisson.logpmf(k, lam) + st.binom.logpmf(k, 8, p) + st.nbinom.logpmf(k, 3.0, p)
            + st.geom.logpmf(k + 1, p) + st.bernoulli.logpmf(k % 2, p))


def wide_cumsum_sort_softmax(x):
    """Elementwise and cumulative ops over a wide vector (400 entries in the probe, where the first call took 25 s before
    the cumsum mend; 64 here) and cumulative ops: cumsum, sort, softmax, diff."""
    return jnp.cumsum(jnp.sort(x) * jax.nn.softmax(x)), jnp.diff(jnp.tanh(x))


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    n = _normal
    return [
        ("control", scan_with_int_carry_output, (n(3, 4),), 0),
        ("layers", lovasz_hinge, (n(8), np.array([1, 0, 1, 1, 0, 0, 1, 0.0]),), (0,)),
        ("layers", swin_shifted_window_attention, (n(8, 8, 2), n(2, 2),), 0),
        ("layers", min_gru_log_space_scan, (n(8, 3), n(3, 3), n(3),), 0),
        ("science", golub_welsch_gauss_jacobi, (np.array(0.3), np.array(0.8),), 0),
        ("science", thin_film_transfer_matrix, (np.array([1.2, 0.9, 1.1]), np.array([1.5, 2.0, 1.4]),), 0),
        ("science", shooting_method_newton, (np.array(0.5), np.array(1.2),), 0),
        ("transform", associative_scan_affine, (n(10), n(10),), 0),
        ("numpy", nan_reductions, (np.array([[0.3, np.nan, 1.2], [np.nan, -0.4, 0.7], [0.2, 0.1, np.nan]]) + 0.0, n(3, 3),), 0),
        ("numpy", polyfit_degree3, (np.linspace(0, 1, 12), n(12),), 0),
        ("linalg", scipy_sparse_cg, (_spd(5), n(5),), 0),
        ("science", ray_sphere_intersection, (np.array([0.5, 0.5, 0.5]), np.array([[0, 0, 3.0], [0.3, -0.2, 2.0], [2.0, 2.0, 1.0]]),), 0),
        ("optim", radam_rectified_step, (n(6), n(6), np.abs(n(6)), np.int32(3),), (0, 1, 2)),
        ("science", cotangent_laplacian_energy, (np.array([[0.0, 0, 0], [1, 0, 0.1], [0, 1, -0.1], [1, 1, 0.3], [0.5, 0.5, 0.8]]),), 0),
        ("stats", stats_discrete, (np.array([0, 1, 3, 2, 7]), np.array(2.1), np.array(0.3),), (1, 2)),
        ("wide", wide_cumsum_sort_softmax, (n(64),), 0),
    ]
