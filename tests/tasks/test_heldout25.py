"""Cases of helper corpus25's held-out rehearsal (session 25): what alphagrad got wrong (all three mended during
the session; these tests keep them mended), and new kinds it gets right (the functions of
alphagrad/tasks/_corpus_heldout25.py) as controls. Report: /work/notes/corpus25_report.md.

1. NaN where jax.jacfwd is finite: a NaN *value* (missing data) masked after arithmetic, as ``jnp.nanmean`` /
   ``jnp.nansum`` / ``jnp.nan_to_num`` / ``jnp.where(jnp.isnan(y), 0, ...)`` do: ``jnp.nanmean((pred - y) ** 2)``
   with NaN labels. The partial of the masked expression is NaN at a missing entry (``2 (pred - y)``), not infinite,
   and the select's exact zero times it stays NaN, every order (jax.jacrev is NaN there too; jax.jacfwd is 0).
   Repro: /work/notes/corpus25/repro_1.py. Mended in 4348d58 (`_poles.tested_arguments`: arguments a value
   tested for NaN or infinity is computed from are not taken finite); these tests check the mend's reach on
   forms of the rehearsal (a filter skipping missing observations, censored event times at infinity).
2. NaN where jax.jacfwd is finite: a pole computed inside a ``lax.cond`` / ``lax.switch`` branch and guarded by a
   ``jnp.where`` after it (``jnp.where(x > 0, lax.cond(p, lambda: jnp.sqrt(x), lambda: x), 0)``): NaN at the
   selected rows' entries of the zero inputs, every order. The cond's dense partial by VJP rows holds
   ``0 * inf = NaN`` off its diagonal where the true partial (a JVP column) is 0.
   Repro: /work/notes/corpus25/repro_2.py. Mended in the session (the lead's working tree after 4348d58).
3. A crash (numpy's IndexError) on the tape for any ``jax.nn.softmax``: ``_poles._shifted_exponential_sum`` takes
   the summed operand's shape from its known value, None on the tape (shape ``()``). Found on a generated family of
   stacked spline-flow layers (984 equations). Repro: /work/notes/corpus25/repro_3.py. Mended in a07e9c9.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad.interpreter import _tape
from alphagrad.tasks import _corpus_heldout25 as corpus
from tests.tasks.test_heldout24 import _nan_free_where_jacfwd_is

_ORDERS = ("forward", "reverse", "markowitz")


# ---- finding 1: NaN values (missing data) masked after arithmetic ----

_PRED = np.array([0.3, -0.2, 0.5, 1.0])
_LABELS = np.array([0.1, np.nan, 0.4, np.nan])  # NaN: a missing label


def _nanmean_mse(pred, y):
    return jnp.nanmean((pred - y) ** 2)


def _where_isnan_mse(pred, y):
    m = ~jnp.isnan(y)
    return jnp.sum(jnp.where(m, (pred - y) ** 2, 0.0)) / jnp.maximum(m.sum(), 1)


def _kalman_skipping_missing_observations(ys, q, r):
    def step(c, y):
        m, p = c
        mp, pp = 0.9 * m, 0.81 * p + q ** 2
        k = pp / (pp + r ** 2)
        miss = jnp.isnan(y)
        return (jnp.where(miss, mp, mp + k * (y - mp)), jnp.where(miss, pp, (1 - k) * pp)), mp + k * (y - mp)
    return jax.lax.scan(step, (0.0 * q, 1.0 + 0.0 * q), ys)[0]


def _censored_weibull_loglik(log_k, log_lam, t, c):
    k, lam = jnp.exp(log_k), jnp.exp(log_lam)  # t: event times, inf where censored at c
    logpdf = jnp.log(k / lam) + (k - 1) * jnp.log(t / lam) - (t / lam) ** k
    return jnp.sum(jnp.where(jnp.isfinite(t), logpdf, -(c / lam) ** k))


def test_missing_labels_masked_after_arithmetic():
    # NaN at the missing entries in every order before the session's _poles.tested_arguments
    _nan_free_where_jacfwd_is(_nanmean_mse, _ORDERS, (_PRED, _LABELS), jit=True)
    _nan_free_where_jacfwd_is(_where_isnan_mse, "reverse", (_PRED, _LABELS))


def test_missing_observations_in_a_filter_and_censored_times():
    _nan_free_where_jacfwd_is(_kalman_skipping_missing_observations, "reverse",
                              (np.array([0.3, np.nan, 0.1, np.nan]), np.array(0.4), np.array(0.5)), (1, 2))
    _nan_free_where_jacfwd_is(_censored_weibull_loglik, "reverse",
                              (np.array(0.3), np.array(0.1), np.array([0.5, np.inf, 1.2]), np.array([2.0, 0.8, 2.0])),
                              (0, 1))


def test_missing_labels_masked_before_arithmetic_control():
    # The same data cleaned before any arithmetic (the NaN never reaches a partial).
    def f(pred, y):
        m = ~jnp.isnan(y)
        return jnp.sum((pred - jnp.where(m, y, 0.0)) ** 2 * m)
    _nan_free_where_jacfwd_is(f, "reverse", (_PRED, _LABELS))


# ---- finding 2: a pole inside a cond's branch, guarded after the cond ----

_X4 = np.array([0.3, 0.0, 0.5, 0.0])  # sqrt's derivative is infinite at the zeros, which the where does not select


def _cond_then_where(x):
    return jnp.where(x > 0, jax.lax.cond(x[0] > 0, lambda: jnp.sqrt(x), lambda: x), 0.0)


def _switch_then_where(x):
    return jnp.where(x > 0, jax.lax.switch(jnp.int32(x[0] > 0), [lambda z: z, jnp.sqrt], x), 0.0)


_IN_A_BRANCH = [(_cond_then_where, o) for o in _ORDERS] + [(_switch_then_where, "reverse")]


@pytest.mark.parametrize("f, order", _IN_A_BRANCH, ids=[f"{f.__name__[1:]}-{o}" for f, o in _IN_A_BRANCH])
def test_a_pole_inside_a_branch_guarded_after_the_cond(f, order):
    # NaN at the selected rows' entries of the zero inputs before the mend
    _nan_free_where_jacfwd_is(f, order, (_X4,))


# ---- finding 3: a softmax on the tape ----

def _softmax_chain(x):
    for _ in range(3):
        x = jnp.tanh(jax.nn.softmax(x) + x)
    return x


def test_a_softmax_on_the_tape(monkeypatch):
    # IndexError (np.delete on the shape ()) before a07e9c9
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    _nan_free_where_jacfwd_is(_softmax_chain, "reverse", (np.array([0.1, -0.4, 0.9, 0.3]),))


# ---- controls: the corpus module's functions ----

_ENTRIES = {e[1].__name__: e for e in corpus.entries()}


@pytest.mark.parametrize("name", ["csr_spmv_repeat", "ce_ignore_index"])
def test_corpus_function_exact_under_one_jit(name):
    # forward, reverse and Markowitz order under one jax.jit (an empty CSR row; two labels ignored)
    _, f, args, argnums = _ENTRIES[name]
    _nan_free_where_jacfwd_is(f, _ORDERS, args, argnums, jit=True)


def test_the_entries_are_distinct_and_described():
    assert len(_ENTRIES) == len(corpus.entries()) >= 15
    assert all(f.__doc__ and group for group, f, _, _ in corpus.entries())
