"""Corpus functions from the session-24 held-out rehearsal: kinds of code the earlier rehearsals did not write.

A probe of about 160 functions (rarer ``jax.scipy.special`` functions (betainc in x, hyp1f1, owens_t, fresnel,
sici, expn), ``jax.scipy.linalg`` factor/solve pairs, ``lax.linalg.tridiagonal_solve``, ``jnp`` polynomial,
interpolation, covariance and ``nan_to_num`` helpers, ``jax.image.resize``, ``jax.nn.dot_product_attention``,
``jax.random.gamma``/``beta``/``dirichlet`` with implicit reparameterisation; chunked attention with an online
softmax, beam search by ``top_k``, ranking and survival losses by ``argsort``, PixelCNN++'s discretised logistic,
Hessians, ``jax.vjp``/``linearize``/``linear_transpose`` inside the function; population genetics, metapopulation
epidemics, WENO5, Godunov and Roe fluxes, TVD-RK3 with minmod, Gray-Scott and Cahn-Hilliard residuals, plasticity
by radial return, an American binomial tree, Kepler's equation, Rachford-Rice; ``jax.debug`` callbacks,
``custom_gradient``, checkpoint policies, reductions with ``where=``, vmapped while loops; classes registered as
pytrees, flax.struct and chex dataclasses, bool/uint outputs; poles behind ``where`` meeting loops, gathers and
segments; three generated program families of 1,000 and 10,000 equations) found the Jacobians equal to
jax.jacfwd's except where the session-24 report (/work/notes/corpus24_report.md) says otherwise. These sixteen,
cheap to test, stand for its groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jss
import numpy as np
from jax import lax
from jax.tree_util import register_pytree_node_class

_RNG = np.random.default_rng(2424)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def special_betainc_hyp1f1(a, x):
    """Rarer ``jax.scipy.special`` functions: the regularised incomplete beta in its third argument, the confluent
    hypergeometric 1F1, the Pochhammer symbol and log-gamma, concatenated."""
    a = 1.0 + a ** 2
    return jnp.concatenate([jss.betainc(jnp.array([0.7, 1.5, 2.0, 3.2]), 1.3, jax.nn.sigmoid(x)),
                            jss.hyp1f1(a, a + 1.0, x), jss.poch(a, 2.0 + 0.0 * x), jss.loggamma(a + x ** 2)])


def lu_factor_solve(A, b):
    """``jax.scipy.linalg.lu_factor`` once, ``lu_solve`` with and without the transpose, and the factor's
    diagonal."""
    lu, piv = jsl.lu_factor(A)
    return jnp.concatenate([jsl.lu_solve((lu, piv), b), jsl.lu_solve((lu, piv), b, trans=1), jnp.diag(lu)])


def tridiagonal_solve(d, b):
    """``lax.linalg.tridiagonal_solve`` of a diffusion-like system whose diagonals depend on the argument."""
    n = d.shape[0]
    dl = jnp.concatenate([jnp.zeros(1), -jnp.ones(n - 1)])
    du = jnp.concatenate([-jnp.ones(n - 1), jnp.zeros(1)])
    return lax.linalg.tridiagonal_solve(dl * (1 + 0.1 * d), 3.0 + d ** 2, du, b[:, None])[:, 0]


def image_resize_methods(img):
    """``jax.image.resize`` by linear, cubic, Lanczos-3 and nearest interpolation, up and down."""
    a = jax.image.resize(img, (8, 10), "linear")
    b = jax.image.resize(img, (3, 4), "cubic")
    c = jax.image.resize(img, (8, 10), "lanczos3")
    d = jax.image.resize(img, (8, 10), "nearest")
    return a.sum() + (b ** 2).sum(), c[::3, ::3].ravel(), d[1]


def dot_product_attention_api(q, k, v, bias):
    """``jax.nn.dot_product_attention`` with a bias and a causal boolean mask, with ``is_causal`` and a scale,
    and with a local window."""
    mask = jnp.tril(jnp.ones((4, 4), bool))[None, None]
    a = jax.nn.dot_product_attention(q, k, v, bias=bias[None], mask=mask)
    b = jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    c = jax.nn.dot_product_attention(q, k, v, local_window_size=(1, 1))
    return a + b * c


def gamma_beta_dirichlet_reparam(alpha, scale):
    """Samples of ``jax.random.gamma``, ``beta`` and ``dirichlet`` from fixed keys, differentiated in their
    shape parameters (implicit reparameterisation)."""
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    g = jax.random.gamma(k1, 1.0 + alpha ** 2, shape=(4, 3))
    b = jax.random.beta(k2, 1.0 + alpha ** 2, 2.0 + scale ** 2)
    d = jax.random.dirichlet(k3, 1.0 + alpha ** 2)
    return jnp.concatenate([(g * scale).mean(0), b, d])


def online_softmax_attention(q, k, v):
    """Flash-attention style: keys and values in chunks of two under ``lax.scan``, a running maximum, a running
    normaliser and a rescaled accumulator."""
    T, d = k.shape
    kc = k.reshape(T // 2, 2, d)
    vc = v.reshape(T // 2, 2, d)

    def body(carry, kv):
        m, l, acc = carry
        kk, vv = kv
        s = q @ kk.T / np.sqrt(d)
        m_new = jnp.maximum(m, s.max(-1))
        p = jnp.exp(s - m_new[:, None])
        corr = jnp.exp(m - m_new)
        return (m_new, l * corr + p.sum(-1), acc * corr[:, None] + p @ vv), None

    init = (jnp.full(q.shape[0], -jnp.inf), jnp.zeros(q.shape[0]), jnp.zeros_like(q))
    (m, l, acc), _ = lax.scan(body, init, (kc, vc))
    return acc / l[:, None]


def cox_partial_likelihood(beta, X, time, event):
    """Cox proportional hazards' negative partial log-likelihood: risk sets by ``argsort`` of the times and a
    cumulative log-sum-exp."""
    eta = X @ beta
    order = jnp.argsort(-time)
    eta_s = eta[order]
    risk = lax.cumlogsumexp(eta_s)
    return -jnp.sum(event[order] * (eta_s - risk))


def discretized_logistic_nll(mu, log_s, x):
    """PixelCNN++'s discretised logistic likelihood of 8-bit values: edge cases and a tiny-bin fallback by nested
    ``jnp.where``."""
    inv_s = jnp.exp(-log_s)
    centered = x - mu
    plus = inv_s * (centered + 1 / 255.0)
    minus = inv_s * (centered - 1 / 255.0)
    cdf_delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
    log_cdf_plus = plus - jax.nn.softplus(plus)
    log_one_minus_cdf_min = -jax.nn.softplus(minus)
    mid = inv_s * centered
    log_pdf_mid = mid - log_s - 2.0 * jax.nn.softplus(mid)
    inner = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)), log_pdf_mid - np.log(127.5))
    lp = jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, inner))
    return -lp.sum()


def gradient_of_loss(W, x, y):
    """The gradient of a GELU regression loss as the function (``jax.grad`` inside): its Jacobian is the
    Hessian."""
    return jax.grad(lambda W: jnp.mean((jax.nn.gelu(x @ W) - y) ** 2))(W)


def weno5_reconstruction(u):
    """Fifth-order WENO reconstruction at cell faces on a periodic grid: smoothness indicators, nonlinear weights
    and the three candidate stencils."""
    up = jnp.pad(u, 3, mode="wrap")
    v1, v2, v3, v4, v5 = (up[i:i + u.shape[0] + 1] for i in range(5))
    b1 = 13 / 12 * (v1 - 2 * v2 + v3) ** 2 + 0.25 * (v1 - 4 * v2 + 3 * v3) ** 2
    b2 = 13 / 12 * (v2 - 2 * v3 + v4) ** 2 + 0.25 * (v2 - v4) ** 2
    b3 = 13 / 12 * (v3 - 2 * v4 + v5) ** 2 + 0.25 * (3 * v3 - 4 * v4 + v5) ** 2
    a1 = 0.1 / (1e-6 + b1) ** 2
    a2 = 0.6 / (1e-6 + b2) ** 2
    a3 = 0.3 / (1e-6 + b3) ** 2
    q1 = v1 / 3 - 7 * v2 / 6 + 11 * v3 / 6
    q2 = -v2 / 6 + 5 * v3 / 6 + v4 / 3
    q3 = v3 / 3 + 5 * v4 / 6 - v5 / 6
    return (a1 * q1 + a2 * q2 + a3 * q3) / (a1 + a2 + a3)


def american_put_binomial(S0, sigma, r):
    """A 12-step Cox-Ross-Rubinstein tree for an American put: backward induction with early exercise by
    ``jnp.maximum``."""
    N, K = 12, 1.0
    dt = 1.0 / N
    u = jnp.exp(sigma * jnp.sqrt(dt))
    d = 1 / u
    p = (jnp.exp(r * dt) - d) / (u - d)
    j = jnp.arange(N + 1.0)
    V = jnp.maximum(K - S0 * u ** (N - j) * d ** j, 0.0)
    for i in range(N - 1, -1, -1):
        jj = jnp.arange(i + 1.0)
        cont = jnp.exp(-r * dt) * (p * V[:i + 1] + (1 - p) * V[1:i + 2])
        V = jnp.maximum(cont, K - S0 * u ** (i - jj) * d ** jj)
    return V[0]


def radial_return_plasticity(eps, sy, H):
    """1-D return mapping with linear isotropic hardening over a strain history (``lax.scan``; yield by
    ``jnp.where``)."""
    E = 200.0

    def body(carry, e):
        ep, alpha = carry
        sig_tr = E * (e - ep)
        f = jnp.abs(sig_tr) - (sy + H * alpha)
        dg = jnp.where(f > 0, f / (E + H), 0.0)
        return (ep + dg * jnp.sign(sig_tr), alpha + dg), sig_tr - E * dg * jnp.sign(sig_tr)

    (ep, alpha), sig = lax.scan(body, (0.0 * sy, 0.0 * sy), eps)
    return jnp.concatenate([sig, jnp.stack([ep, alpha])])


def kepler_equation_newton(M, e):
    """Kepler's equation E - e sin E = M by eight Newton steps, then the position on the orbit by a half-angle
    ``arctan2``."""
    E = M + e * jnp.sin(M)
    for _ in range(8):
        E = E - (E - e * jnp.sin(E) - M) / (1 - e * jnp.cos(E))
    nu = 2 * jnp.arctan2(jnp.sqrt(1 + e) * jnp.sin(E / 2), jnp.sqrt(1 - e) * jnp.cos(E / 2))
    r = 1 - e * jnp.cos(E)
    return jnp.stack([r * jnp.cos(nu), r * jnp.sin(nu)])


@register_pytree_node_class
class Affine:
    """A layer registered with ``register_pytree_node_class``; its name is static auxiliary data."""

    def __init__(self, W, b, name="affine"):
        self.W, self.b, self.name = W, b, name

    def tree_flatten(self):
        return (self.W, self.b), self.name

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, name=aux)

    def __call__(self, x):
        return jnp.tanh(x @ self.W + self.b)


def registered_class_mlp(layers, x):
    """A list of ``Affine`` pytree classes applied in turn; the Jacobian is one per layer leaf."""
    for layer in layers:
        x = layer(x)
    return x


def reductions_with_where(x):
    """Reductions with ``where=`` and ``initial=``: sum, mean, max, min, var, prod, a ddof=1 std and a masked
    log-sum-exp."""
    m = x > 0
    return jnp.stack([jnp.sum(x, where=m), jnp.mean(x, where=m), jnp.max(x, where=m, initial=-1.0),
                      jnp.min(x, where=~m, initial=1.0), jnp.var(x, where=m), jnp.prod(x + 2, where=m),
                      jnp.std(x, ddof=1), jax.nn.logsumexp(x, where=m)])


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    layers = [Affine(_normal(3, 4), _normal(4)), Affine(_normal(4, 2), _normal(2), name="out")]
    return [
        ("library", special_betainc_hyp1f1, (_normal(4), _normal(4)), (0, 1)),
        ("linear algebra", lu_factor_solve, (_normal(4, 4) + np.eye(4), _normal(4)), (0, 1)),
        ("linear algebra", tridiagonal_solve, (_normal(6), _normal(6)), (0, 1)),
        ("library", image_resize_methods, (_normal(4, 5),), 0),
        ("layers", dot_product_attention_api, (_normal(1, 4, 2, 3), _normal(1, 4, 2, 3), _normal(1, 4, 2, 3),
                                               _normal(2, 4, 4)), (0, 1, 2, 3)),
        ("library", gamma_beta_dirichlet_reparam, (_normal(3), np.array(0.8)), (0, 1)),
        ("layers", online_softmax_attention, (_normal(3, 4), _normal(6, 4), _normal(6, 4)), (0, 1, 2)),
        ("losses", cox_partial_likelihood, (_normal(3), _normal(7, 3), np.array([5.0, 2.0, 9.0, 1.0, 7.0, 3.0, 4.0]),
                                            np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])), (0, 1)),
        ("losses", discretized_logistic_nll, (_normal(6), _normal(6, scale=0.3) - 2.0,
                                              np.array([-1.0, -0.5, 0.0, 0.3, 1.0, 0.9])), (0, 1)),
        ("other", gradient_of_loss, (_normal(3, 2), _normal(4, 3), _normal(4, 2)), 0),
        ("residuals", weno5_reconstruction, (np.sin(np.linspace(0, 2 * np.pi, 8, endpoint=False))
                                             + _normal(8, scale=0.05),), 0),
        ("residuals", american_put_binomial, (np.array(0.95), np.array(0.25), np.array(0.03)), (0, 1, 2)),
        ("residuals", radial_return_plasticity, (np.array([0.001, 0.003, 0.006, 0.004, -0.002, -0.006]),
                                                 np.array(0.5), np.array(10.0)), (0, 1, 2)),
        ("residuals", kepler_equation_newton, (np.array([0.3, 1.2, 2.5, 4.0]), np.array(0.4)), (0, 1)),
        ("pytrees", registered_class_mlp, (layers, _normal(2, 3)), (0, 1)),
        ("control flow", reductions_with_where, (_normal(6),), 0),
    ]
