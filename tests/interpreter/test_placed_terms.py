"""Placed sums and shared partials on the straight-line path (helper placed22).

* `_structured._merged`: the terms of a `Placed` sum that share a pattern are one term (weights
  summed), so a materialisation evaluates one select per pattern, not one per path through a
  stencil; the numbers are those of the unmerged sum, NaN and infinities where they were.
* `_structured.shared`: a partial that one elimination step reads in several products is computed
  once on XLA:CPU, where XLA would fuse it into each reader and, along a reverse sweep, recompute
  it there again and again (van_leer_advection in reverse order: fusions 30-68 multiplies deep).
  Checked on the compiled program: its multiplies stay within a small factor of the traced ones.
"""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.interpreter import _structured as S
from alphagrad.tasks._corpus_heldout21 import van_leer_advection as stencil


def shift(n: int, k: int) -> np.ndarray:
    """The [n, 1, n, 1] pattern of jnp.roll by k."""
    return np.roll(np.eye(n), k, axis=0).reshape(n, 1, n, 1)


def test_terms_of_one_pattern_merge_and_keep_their_numbers():
    n = 6
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        column = lambda: jnp.asarray(rng.normal(size=(1, 1, n, 1)))
        w = [column(), column(), jnp.asarray(np.full((1, 1, 1, 1), 2.5)), column()]
        w[1] = w[1].at[0, 0, 2, 0].set(jnp.inf)
        row = jnp.asarray(rng.normal(size=(n, 1, 1, 1)))
        terms = [S.Term(shift(n, 1), w[0]), S.Term(shift(n, -1), w[1]), S.Term(shift(n, 1), w[2]),
                 S.Term(shift(n, -1), w[3]), S.Term(shift(n, 1), row), S.Term(shift(n, 0), None),
                 S.Term(shift(n, 0), None)]
        merged = S._placed((n, 1), (n, 1), terms, jnp.float64)
        # Shift 1: two column weights and a scalar merge, the row weight stays apart; shift -1: one
        # term; shift 0: the two weightless terms as one of weight 2.
        assert len(merged.value.terms) == 4
        assert ([np.shape(t.weight) for t in merged.value.terms]
                == [(1, 1, n, 1), (1, 1, n, 1), (n, 1, 1, 1), (1, 1, 1, 1)])
        expected = sum(S._place(jnp.asarray(t.pattern), jnp.ones(()) if t.weight is None else t.weight)
                       for t in terms)
        got = S.densify(merged, jnp.float64)
    assert np.isinf(got).sum() == 1
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-15, atol=0)


def test_traced_patterns_merge_only_when_they_are_one_array():
    n = 4
    a, b = jnp.asarray(shift(n, 1)), jnp.asarray(shift(n, 1))
    w = jnp.ones((1, 1, n, 1))
    assert len(S._merged([S.Term(a, w), S.Term(a, w)])) == 1
    assert len(S._merged([S.Term(a, w), S.Term(b, w)])) == 2


def _multiplies(hlo: str) -> int:
    return len(re.findall(r"= \S+ multiply\(", hlo))


@pytest.mark.parametrize("order", ["reverse", "forward"])
def test_shared_partials_are_computed_once(order, monkeypatch):
    """The compiled program of a reverse sweep through a stencil multiplies about as often as the
    traced program does: each shared partial computed once, not fused into every reader (without
    `shared`: reverse 7.0x the traced multiplies at these sizes, forward 3.6x; with it 1.1x and 0.9x)."""
    u, c = jnp.asarray(np.sin(np.linspace(0, 6, 10)), jnp.float32), jnp.float32(0.7)
    batched = (jnp.broadcast_to(u, (8, 10)) + jnp.arange(8.0, dtype=jnp.float32)[:, None] * 0.01,
               jnp.full((8,), c, jnp.float32))
    fn = jax.jit(jax.vmap(interpreter.jacobian(stencil, order, argnums=(0, 1))))
    lowered = fn.lower(*batched)
    traced, compiled = _multiplies(lowered.as_text("hlo")), _multiplies(lowered.compile().as_text())
    assert compiled <= 2 * traced, (traced, compiled)
    expected = jax.vmap(jax.jacrev(stencil, argnums=(0, 1)))(*batched)
    for got, want in zip(jax.tree.leaves(fn(*batched)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_a_large_sparse_placed_sum_is_scattered_and_exact(order, monkeypatch):
    """A `Placed` sum of known patterns that hold few of its entries (a roll Laplacian's five
    diagonals) is built by one scatter of those entries (`_materialise_sparse`; its threshold lowered
    here from 2^18 so that a 6 x 6 grid takes it), equal to jax.jacfwd's and to the select chain's."""
    calls = []
    monkeypatch.setattr(S, "SPARSE_MATERIALISE_MIN_ENTRIES", 64)
    scatter = S._materialise_sparse
    monkeypatch.setattr(S, "_materialise_sparse", lambda *a: calls.append(1) or scatter(*a))

    def laplacian(u):
        return jnp.roll(u, 1, 0) + jnp.roll(u, -1, 0) + jnp.roll(u, 1, 1) - 3.0 * u + jnp.exp(0.1 * u)

    with jax.enable_x64(True):
        u = jnp.asarray(np.random.default_rng(3).normal(size=(6, 6)))
        expected, ours = jax.jit(lambda u: (jax.jacfwd(laplacian)(u), interpreter.jacobian(laplacian, order)(u)))(u)
    assert calls
    np.testing.assert_allclose(ours, expected, rtol=1e-13, atol=1e-15)
