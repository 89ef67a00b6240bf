"""Narrow segments of the tape's equation loop (`_tape.NARROW_WIDTH`, `_tape.NARROW_MIN_RUN`,
patched small here): long runs of tiny equations beside wide ones run in a second loop body with
their own lanes, so a scalar step does not gather and write the wide equations' lanes (soft-DTW by
a Python double loop after a vectorised cost matrix: corpus20 finding 8). The two bodies take
turns over the segments; Jacobians are jax.jacfwd's, in forward and reverse order, under vmap too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _jacobian, _tape


@pytest.fixture
def segmented(monkeypatch):
    """Every program runs on the tape however short; 8 consecutive tiny equations make a segment."""
    for name, value in {"TAPE_MIN_SIZE": 0, "TAPE_MIN_EQUATIONS": 0, "NARROW_MIN_RUN": 8}.items():
        monkeypatch.setattr(_tape, name, value)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)  # (2-D codes, as programs of the tape's sizes)


def soft_dtw(x, y):
    """A vectorised cost matrix (a [4, 5, 2] difference: wide), then a scalar recursion (narrow)."""
    D = jnp.sum((x[:, None] - y[None]) ** 2, -1)
    R = {(i, j): jnp.asarray(1e10) for i in range(5) for j in range(6) if (i == 0) != (j == 0)}
    R[0, 0] = jnp.asarray(0.0)
    for i in range(1, 5):
        for j in range(1, 6):
            r = jnp.stack([R[i - 1, j - 1], R[i - 1, j], R[i, j - 1]])
            R[i, j] = D[i - 1, j - 1] - 0.5 * jax.nn.logsumexp(-r / 0.5)
    return R[4, 5]


def turns(u, p):
    """Wide vector steps and runs of scalar equations taking turns three times; both read later."""
    s = p[0]
    for _ in range(3):
        u = jnp.tanh(u * s + jnp.roll(u, 1))  # 16 entries
        for k in range(4):
            s = jnp.sin(s * u[k]) + 0.1 * p[1] * s - jnp.maximum(s, 0.2 * p[2])
    return u * s, s


CASES = {
    soft_dtw: (0.5 * np.random.default_rng(0).normal(size=(4, 2)), 0.5 * np.random.default_rng(1).normal(size=(5, 2))),
    turns: (np.linspace(-1.0, 1.0, 16), np.asarray([0.7, 0.3, 0.5])),
}


def _close(got, want):
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", [soft_dtw, turns], ids=["soft_dtw", "turns"])
def test_narrow_segments_give_jacfwd(segmented, fn):
    orders = ("forward", "reverse")
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a) for a in CASES[fn])
        g = interpreter.graph_of(fn, *args, argnums=(0, 1))
        for order in orders:
            steps = graph.plan(g, graph.resolve_order(g, order))
            tape = _tape.build(g, steps)
            wide, narrow, schedule = tape.segments
            assert narrow.K < wide.K and len(narrow.eq_kind) > len(wide.eq_kind) // 2
            assert len(schedule) == (2 if fn is soft_dtw else 4)  # a wide start (empty narrow range), then turns
            assert np.sum(schedule[:, 1] - schedule[:, 0]) == len(narrow.eq_kind)
            assert np.sum(schedule[:, 3] - schedule[:, 2]) == len(wide.eq_kind)
            assert _jacobian._tape_of(g, steps) is not None
        # Under vmap (reverse order): the batched branches of both bodies.
        batched = tuple(jnp.stack([a, 0.9 * a]) for a in args)

        @jax.jit  # one program: jax.jacfwd's Jacobians (were op by op) and both orders', batched too
        def all_of_them(args, batched):
            return (jax.jacfwd(fn, argnums=(0, 1))(*args),
                    [interpreter.jacobian(fn, order, argnums=(0, 1))(*args) for order in orders],
                    jax.vmap(interpreter.jacobian(fn, "reverse", argnums=(0, 1)))(*batched),
                    jax.vmap(jax.jacfwd(fn, argnums=(0, 1)))(*batched))

        expected, jacobians, batched_got, batched_expected = all_of_them(args, batched)
        for got in jacobians:
            _close(got, expected)
        _close(batched_got, batched_expected)


def test_without_wide_equations_one_loop(segmented):
    """Tiny equations beside lanes of at most 2 * NARROW_WIDTH make no segment (nothing to gain)."""
    with jax.enable_x64(True):
        args = (jnp.asarray(CASES[turns][0][:8]), jnp.asarray(CASES[turns][1]))
        g = interpreter.graph_of(turns, *args, argnums=(0, 1))
        assert _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse"))).segments == ()
