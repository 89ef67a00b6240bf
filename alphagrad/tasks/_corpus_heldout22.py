"""Corpus functions from the session-22 held-out rehearsal: kinds of code the earlier rehearsals did not write.

A probe of about 110 functions (hand-written modern layers: group and RMS norms, rotary embeddings, SwiGLU,
multi-query and grouped-query attention with causal masks, mixture-of-experts top-k routing, CTC by ``lax.scan``,
label smoothing, a delta-rule linear attention; implicit and semi-implicit integrators with fixed Newton
iterations, symplectic loops, spectral derivatives by ``jnp.fft``, finite-element assembly by ``segment_sum`` and
scatter-add, stiff Arrhenius kinetics, adaptive Runge-Kutta in a ``while_loop``, Newmark and BDF2 schemes;
``take_along_axis``, ``searchsorted`` interpolation, argsort gathers, ring buffers by ``dynamic_update_slice``,
``jnp.where(size=)`` and ``argwhere(size=)``; QR/SVD/eigh/slogdet/pinv/lstsq/matrix_power/expm/triangular solves
and Kronecker products; float32 and int arguments, bool masks, NamedTuple and dict pytrees; poles hidden by
``where``: safe norms and logs, entropies at zero probabilities, masked softmax with all-masked rows; three
generated program families of 1,000 and 10,000 equations) found the Jacobians equal to jax.jacfwd's except where
the session-22 report (/work/notes/corpus22_report.md) says otherwise. These thirteen, cheap to test, stand for its
groups: rotary attention, multi-query causal attention, top-2 mixture-of-experts routing, a CTC loss, a masked
softmax with all-masked rows, backward Euler with Newton iterations, leapfrog by ``fori_loop``, 1-D finite
elements assembled by ``segment_sum``, an adaptive Heun integrator in a ``while_loop``, interpolation on traced
knots by ``searchsorted``, a ring buffer by ``dynamic_update_slice``, ``expm`` of a rotation generator and a
QR log-determinant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax import lax

_RNG = np.random.default_rng(2222)


def _normal(*shape, scale=0.5):
    return scale * _RNG.normal(size=shape)


def _rope(x, pos):
    """Rotary embedding: consecutive pairs of features rotated by position times inverse frequencies."""
    d = x.shape[-1]
    inv = 1.0 / (10000 ** (jnp.arange(0, d, 2) / d))
    ang = pos[:, None] * inv[None, :]
    sin, cos = jnp.sin(ang), jnp.cos(ang)
    x1, x2 = x[..., ::2], x[..., 1::2]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
    return out.reshape(x.shape)


def rotary_attention(x, wq, wk, wv):
    """Causal single-head attention with rotary position embeddings (interleaved pairs rotated by
    position-dependent angles) on the queries and keys; masked logits set to ``finfo.min``."""
    T = x.shape[0]
    pos = jnp.arange(T, dtype=x.dtype)
    q, k, v = _rope(x @ wq, pos), _rope(x @ wk, pos), x @ wv
    s = q @ k.T / jnp.sqrt(q.shape[-1])
    mask = jnp.tril(jnp.ones((T, T), bool))
    s = jnp.where(mask, s, jnp.finfo(s.dtype).min)
    return jax.nn.softmax(s, -1) @ v


def multi_query_causal_attention(x, wq, wk, wv, wo):
    """Multi-query attention: four query heads share one key/value head, a causal mask by ``where``
    with -1e9, the heads concatenated and projected."""
    T, D = x.shape
    H = 4
    q = (x @ wq).reshape(T, H, -1).transpose(1, 0, 2)       # [H, T, dh]
    k = x @ wk
    v = x @ wv
    logits = jnp.einsum("htd,sd->hts", q, k) / np.sqrt(k.shape[-1])
    causal = jnp.arange(T)[:, None] >= jnp.arange(T)[None, :]
    logits = jnp.where(causal[None], logits, -1e9)
    att = jax.nn.softmax(logits, axis=-1)
    o = jnp.einsum("hts,sd->thd", att, v).reshape(T, -1)
    return o @ wo


def moe_top2_routing(x, wg, we1, we2):
    """Mixture of four experts with top-2 routing: ``lax.top_k`` of the router logits, the two gates
    renormalised by softmax, dense dispatch through ``one_hot``, GELU experts by ``einsum``; plus the
    load-balancing auxiliary term."""
    logits = x @ wg
    vals, idx = lax.top_k(logits, 2)
    gates = jax.nn.softmax(vals, -1)                                   # [T, 2]
    disp = jax.nn.one_hot(idx, wg.shape[1]) * gates[..., None]        # [T, 2, E]
    comb = disp.sum(1)                                                  # [T, E]
    h = jax.nn.gelu(jnp.einsum("td,edh->teh", x, we1))
    y = jnp.einsum("teh,ehd->ted", h, we2)
    aux = jnp.mean(jax.nn.softmax(logits, -1), 0) @ jnp.mean(comb > 0, 0)
    return jnp.einsum("te,ted->td", comb, y), aux


def ctc_forward_scan(logits, labels):
    """CTC negative log-likelihood: the alpha recursion over the blank-extended label sequence in log
    space by ``lax.scan`` (skip transitions masked where the labels repeat); int labels."""
    T, V = logits.shape
    L = labels.shape[0]
    ext = jnp.zeros(2 * L + 1, jnp.int32).at[1::2].set(labels)     # blank = 0
    S = ext.shape[0]
    logp = jax.nn.log_softmax(logits, -1)
    same = jnp.concatenate([jnp.array([True, True]), ext[2:] == ext[:-2]])
    neg = -1e30
    a0 = jnp.full(S, neg).at[0].set(logp[0, 0]).at[1].set(logp[0, ext[1]])

    def step(a, lp):
        a1 = jnp.concatenate([jnp.array([neg]), a[:-1]])
        a2 = jnp.concatenate([jnp.array([neg, neg]), a[:-2]])
        a2 = jnp.where(same, neg, a2)
        m = jnp.maximum(jnp.maximum(a, a1), a2)
        s = m + jnp.log(jnp.exp(a - m) + jnp.exp(a1 - m) + jnp.exp(a2 - m))
        return s + lp[ext], None
    a, _ = lax.scan(step, a0, logp[1:])
    return -jnp.logaddexp(a[-1], a[-2])


def masked_softmax_all_masked_rows(s, mask):
    """Masked softmax written by hand that survives all-masked rows: the row maximum replaced where
    not finite, exponentials and their sum masked by ``where``, the division guarded (double where)."""
    z = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(z, -1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.where(mask, jnp.exp(z - m), 0.0)
    den = e.sum(-1, keepdims=True)
    return jnp.where(den > 0, e / jnp.where(den > 0, den, 1.0), 0.0)


def backward_euler_newton_fixed(y0, k):
    """Stiff three-species kinetics by backward Euler in a ``lax.scan``, each step four Newton
    iterations in a ``fori_loop`` with the right-hand side's Jacobian by ``jax.jacfwd`` and ``solve``."""
    def rhs(y):
        return jnp.array([-k[0] * y[0] + k[2] * y[1] * y[2],
                          k[0] * y[0] - k[2] * y[1] * y[2] - k[1] * y[1] ** 2,
                          k[1] * y[1] ** 2])
    h = 0.05
    def step(y, _):
        def newton(i, z):
            F = z - y - h * rhs(z)
            J = jnp.eye(3) - h * jax.jacfwd(rhs)(z)
            return z - jnp.linalg.solve(J, F)
        z = lax.fori_loop(0, 4, newton, y)
        return z, z[1]
    y, traj = lax.scan(step, y0, None, length=6)
    return y, traj


def leapfrog_fori_pendulum_chain(q, p, k):
    """Velocity-Verlet (leapfrog) of a chain of coupled pendula in a ``fori_loop``, the forces by
    ``jax.grad`` of the potential."""
    def force(q):
        return -jax.grad(lambda qq: 0.5 * k * jnp.sum(jnp.sin(jnp.diff(jnp.concatenate([jnp.zeros(1), qq]))) ** 2))(q)
    def body(i, qp):
        q, p = qp
        p = p + 0.05 * force(q)
        q = q + 0.1 * p
        p = p + 0.05 * force(q)
        return q, p
    q, p = lax.fori_loop(0, 12, body, (q, p))
    return jnp.concatenate([q, p])


def fem_1d_assembly_segment_sum(x_nodes, kappa, f):
    """1-D P1 finite elements on traced node positions: element stiffness assembled by
    ``segment_sum`` over flattened (row, column) ids, the load by ``.at[].add``, Dirichlet ends by
    slicing, then ``solve``."""
    ne = x_nodes.shape[0] - 1
    h = jnp.diff(x_nodes)
    ke = (kappa / h)[:, None, None] * jnp.array([[1.0, -1.0], [-1.0, 1.0]])
    conn = np.stack([np.arange(ne), np.arange(1, ne + 1)], 1)
    rows = np.repeat(conn, 2, axis=1).ravel()
    cols = np.tile(conn, (1, 2)).ravel()
    nn_ = ne + 1
    flat = jax.ops.segment_sum(ke.ravel(), rows * nn_ + cols, num_segments=nn_ * nn_)
    K = flat.reshape(nn_, nn_)
    fe = (f[:-1] + f[1:]) * h / 2
    F = jnp.zeros(nn_).at[conn[:, 0]].add(fe / 2).at[conn[:, 1]].add(fe / 2)
    u_int = jnp.linalg.solve(K[1:-1, 1:-1], F[1:-1])
    return u_int


def adaptive_heun_while_maxsteps(y0, lam):
    """Adaptive Heun-Euler integration in a ``while_loop`` stopped at t = 1 or 40 steps: error
    estimate, accepted steps by ``where``, step size control with ``clip``."""
    f = lambda t, y: -lam * y + jnp.sin(t) * y[::-1]
    def cond(s):
        t, y, h, i = s
        return (t < 1.0) & (i < 40)
    def body(s):
        t, y, h, i = s
        h = jnp.minimum(h, 1.0 - t)
        k1 = f(t, y); k2 = f(t + h, y + h * k1)
        y_hi = y + h / 2 * (k1 + k2)
        err = jnp.max(jnp.abs(h / 2 * (k2 - k1))) + 1e-12
        ok = err < 1e-3
        t = jnp.where(ok, t + h, t)
        y = jnp.where(ok, y_hi, y)
        h = h * jnp.clip(0.9 * jnp.sqrt(1e-3 / err), 0.2, 5.0)
        return t, y, h, i + 1
    t, y, h, i = lax.while_loop(cond, body, (0.0, y0, 0.1, 0))
    return y


def searchsorted_traced_knots_cubic(xq, dx, y):
    """Cubic Hermite-basis interpolation on traced knots (cumulative sums of exponentials) located by
    ``searchsorted``, clipped interval indices, gathers of knots and values."""
    xk = jnp.cumsum(jnp.exp(dx))
    xk = xk - xk[0]
    i = jnp.clip(jnp.searchsorted(xk, xq) - 1, 0, xk.shape[0] - 2)
    h = xk[i + 1] - xk[i]
    t = (xq - xk[i]) / h
    h00 = 2 * t ** 3 - 3 * t ** 2 + 1
    h01 = -2 * t ** 3 + 3 * t ** 2
    return h00 * y[i] + h01 * y[i + 1]


def dynamic_update_slice_fori_ring_buffer(x, a):
    """A recurrent state written into a four-slot ring buffer by ``dynamic_update_slice`` at
    ``t % 4`` inside a ``fori_loop``."""
    buf = jnp.zeros((4, x.shape[1]))
    def body(t, s):
        buf, h = s
        h = jnp.tanh(a * h + x[t])
        buf = lax.dynamic_update_slice(buf, h[None], (t % 4, 0))
        return buf, h
    buf, h = lax.fori_loop(0, x.shape[0], body, (buf, jnp.zeros(x.shape[1])))
    return buf.sum(0) * h


def expm_rotation_generator(w, v):
    """Rotation by ``jax.scipy.linalg.expm`` of the skew matrix of a traced axis-angle vector, and
    the exponential of a perturbed generator."""
    K = jnp.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
    return jsl.expm(K) @ v, jsl.expm(0.5 * K + 0.1 * jnp.outer(v, v))


def qr_r_diag_logabs(a):
    """``jnp.linalg.qr`` of a tall matrix: the log-absolute diagonal of R summed, and the first column
    of Q with its sign fixed by R."""
    q, r = jnp.linalg.qr(a)
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(r)))), q[:, 0] * jnp.sign(r[0, 0])


#: The while loop: jax.jacrev cannot differentiate it.
JACFWD_REFERENCE = frozenset({"adaptive_heun_while_maxsteps"})


def entries() -> list[tuple]:
    """(group, function, example arguments, argnums) for every function of this module."""
    nodes = np.sort(np.concatenate([[0.0, 1.0], _RNG.uniform(0.05, 0.95, 5)]))
    mask = np.array([[True, True, False, True], [False, False, False, False], [True, False, False, False]])
    return [
        ("layers", rotary_attention, (_normal(5, 8), _normal(8, 4), _normal(8, 4), _normal(8, 4)), (0, 1, 2, 3)),
        ("layers", multi_query_causal_attention, (_normal(5, 8), _normal(8, 8), _normal(8, 2), _normal(8, 2),
                                                  _normal(8, 8)), (0, 1, 2, 3, 4)),
        ("layers", moe_top2_routing, (_normal(5, 4), _normal(4, 4), _normal(4, 4, 6), _normal(4, 6, 4)),
         (0, 1, 2, 3)),
        ("losses", ctc_forward_scan, (_normal(7, 4), np.array([1, 2, 2], np.int32)), 0),
        ("other", masked_softmax_all_masked_rows, (_normal(3, 4), mask), 0),
        ("integrators", backward_euler_newton_fixed, (np.array([1.0, 0.01, 0.0]), np.array([0.8, 3.0, 1.5])),
         (0, 1)),
        ("integrators", leapfrog_fori_pendulum_chain, (_normal(4), _normal(4), np.array(1.3)), (0, 1, 2)),
        ("residuals", fem_1d_assembly_segment_sum, (nodes, np.array(1.5), 1 + _normal(7)), (0, 1, 2)),
        ("control flow", adaptive_heun_while_maxsteps, (np.array([1.0, -0.5]), np.array(2.0)), (0, 1)),
        ("indexing", searchsorted_traced_knots_cubic, (np.array([0.3, 1.1, 2.0, 2.9]), _normal(6, scale=0.2),
                                                       _normal(6)), (0, 1, 2)),
        ("indexing", dynamic_update_slice_fori_ring_buffer, (_normal(7, 3), np.array(0.8)), (0, 1)),
        ("linear algebra", expm_rotation_generator, (_normal(3), _normal(3)), (0, 1)),
        ("linear algebra", qr_r_diag_logabs, (_normal(5, 3),), 0),
    ]
