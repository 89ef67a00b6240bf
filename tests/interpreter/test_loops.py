"""Loops through the interpreter: exact Jacobians and counted multiplications in every order, for scans
and fori_loops unrolled into the graph and for those kept as one dense vertex (above the threshold)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter

RNG = np.random.default_rng(3)


def rnn(w, c, xs):
    """Carry, per-step inputs, stacked outputs and a constant (w) entering every step."""
    return jax.lax.scan(lambda h, x: (jnp.tanh(w @ h + x), jnp.sum(h * h)), c, xs)


def reverse_scan(c, xs):
    final, ys = jax.lax.scan(lambda h, x: (h * jnp.sin(x) + 0.1, h + x), c, xs, reverse=True)
    return final, ys


def fori_integrator(state, k):
    """Explicit Euler steps with static bounds; x[i] picks a per-step coefficient."""
    return jax.lax.fori_loop(0, 4, lambda i, s: s + 0.1 * k[i] * jnp.cos(s[::-1]), state)


def nested(x, w):
    def outer(c, _):
        inner = jax.lax.scan(lambda d, _: (jnp.sin(d * w), None), c, None, length=3)[0]
        return inner + x, jnp.sum(inner)

    return jax.lax.scan(outer, x, None, length=2)


def long_rnn(w, c, xs):
    """A scan above the unrolling threshold: one dense vertex per output."""
    return jax.lax.scan(lambda h, x: (jnp.tanh(w * h + x), h[0]), c, xs)


CASES = {
    "rnn": (rnn, (RNG.normal(size=(3, 3)) / 3, RNG.normal(size=3), RNG.normal(size=(4, 3))), (0, 1, 2)),
    "reverse_scan": (reverse_scan, (RNG.normal(size=2), RNG.normal(size=(3, 2))), (0, 1)),
    "fori_integrator": (fori_integrator, (RNG.normal(size=3), RNG.normal(size=4)), (0, 1)),
    "nested": (nested, (RNG.normal(size=2), RNG.normal(size=2)), (0, 1)),
    "long_rnn": (long_rnn, (RNG.normal(size=2), RNG.normal(size=2), RNG.normal(size=(90, 2)) / 10), (0, 1, 2)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loop_jacobians_are_exact_and_counted_in_every_order(name):
    f, args, argnums = CASES[name]
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in args)
        g = interpreter.graph_of(f, *args, argnums=argnums)
        unrolled = not any(v.primitive.startswith("scan") for v in g.vertices)
        assert unrolled == (name != "long_rnn"), [v.primitive for v in g.vertices]
        orders = ["forward", "reverse", "markowitz",
                  [int(v) for v in np.random.default_rng(0).permutation(g.intermediates)]]

        @jax.jit
        def reference_and_all_orders(*xs):
            return (jax.jacfwd(f, argnums=argnums)(*xs),
                    [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in orders])

        expected, jacobians = reference_and_all_orders(*args)
        for order, jac in zip(orders, jacobians):
            label = order if isinstance(order, str) else "random"
            assert jax.tree.structure(jac) == jax.tree.structure(expected), label
            for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(expected)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12, err_msg=label)
            assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order), label
