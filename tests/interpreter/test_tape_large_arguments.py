"""Arguments larger than the tape's values (`_tape.MAX_COMPONENTS`, patched small here) stay on the
tape when equations only move entries out of them: a net of tiny layers reading ``W[l]`` from one
stacked parameter ``W [L, 4, 4]`` (corpus20 finding 6: 1,030 layers, 16,480 entries, fell back to
the straight-line path, which did not finish compiling in 400 s). Each slice reads only the
entries it moves; a large movement of an argument that an equation reads (``theta.reshape(L, 4,
4)`` of a flat parameter vector) is one gather before the equation loop (`Tape.early`). The
Jacobian with respect to the large argument is jax.jacfwd's; an equation that computes with the
large argument (not only moves it) is still refused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _jacobian, _tape

LAYERS = 6  # W: 96 entries, more than the 32 patched below


@pytest.fixture
def small_tape(monkeypatch):
    """Every program runs on the tape however short; values of more than 32 entries are 'large'."""
    for name, value in {"TAPE_MIN_SIZE": 0, "TAPE_MIN_EQUATIONS": 0, "MAX_COMPONENTS": 32}.items():
        monkeypatch.setattr(_tape, name, value)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)  # (2-D codes, as programs of the tape's sizes)


def stacked(x, W, b):
    """Layers reading W[l] and b[l] (slice + squeeze of the stacked arguments), a skip."""
    h = x
    for l in range(LAYERS):
        h = jnp.tanh(h @ W[l] + b[l]) + (0.5 * x if l == 3 else 0.0)
    return jax.nn.log_softmax(h)


def flat(x, theta):
    """A flat parameter vector reshaped (a large movement read by slices: early), then a
    transpose of the reshaped stack read by rows (an early movement of an early value)."""
    W = theta.reshape(LAYERS, 4, 4)
    V = jnp.transpose(W, (1, 0, 2))  # [4, L, 4]
    h = x
    for l in range(LAYERS):
        h = jnp.sin(h @ W[l]) + 0.1 * V[l % 4, l]
    return h


def computes(x, W):
    """Arithmetic on the whole large argument: refused by the tape."""
    return jnp.tanh(x @ W[0]) * jnp.sum(W)


def _args(rng):
    return (rng.normal(size=4), 0.6 * rng.normal(size=(LAYERS, 4, 4)), 0.1 * rng.normal(size=(LAYERS, 4)))


def _close(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14), a, b)


@pytest.mark.parametrize("fn", [stacked, flat])
def test_large_arguments_read_by_movements_run_on_the_tape(small_tape, fn):
    orders = ("forward", "reverse")
    with jax.enable_x64(True):
        x, W, b = _args(np.random.default_rng(0))
        args = (x, W, b) if fn is stacked else (x, W.reshape(-1))
        argnums = tuple(range(len(args)))
        g = interpreter.graph_of(fn, *args, argnums=argnums)
        for order in orders:
            steps = graph.plan(g, graph.resolve_order(g, order))
            tape = _tape.build(g, steps)
            assert max(tape.width) <= 32  # no loop step gathers or writes a large argument whole
            assert bool(tape.early) == (fn is flat)
            if fn is flat:  # the reshape and the transpose of it: 96 entries each, before the loop
                assert [len(s) for _, s in tape.early] == [96, 96]
            assert _jacobian._tape_of(g, steps) is not None
        # Under vmap (reverse order): [slots, batch] buffers, the early gather included.
        batched = tuple(jnp.stack([a, 1.1 * a]) for a in args)

        @jax.jit  # one program: jax.jacfwd's Jacobians (were op by op) and both orders', batched too
        def all_of_them(args, batched):
            return (jax.jacfwd(fn, argnums=argnums)(*args),
                    [interpreter.jacobian(fn, order, argnums=argnums)(*args) for order in orders],
                    jax.vmap(interpreter.jacobian(fn, "reverse", argnums=argnums))(*batched),
                    jax.vmap(jax.jacfwd(fn, argnums=argnums))(*batched))

        expected, jacobians, batched_got, batched_expected = all_of_them(args, batched)
        for got in jacobians:
            _close(got, expected)
        _close(batched_got, batched_expected)


def test_arithmetic_on_a_large_argument_stays_refused(small_tape):
    with jax.enable_x64(True):
        x, W, _ = _args(np.random.default_rng(1))
        g = interpreter.graph_of(computes, x, W, argnums=(0, 1))
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        with pytest.raises(_tape.Unsupported, match="more than 32 entries"):
            _tape.build(g, steps)
        assert _jacobian._tape_of(g, steps) is None
        _close(jax.jit(interpreter.jacobian(computes, "reverse", argnums=(0, 1)))(x, W),
               jax.jacfwd(computes, argnums=(0, 1))(x, W))
