"""Helper scale17's generated families: regressions for what they found.

A trajectory returned by ``jnp.stack`` (an unrolled integrator's states, an output larger than
its input) has more entries than the tape's values (`_tape.MAX_COMPONENTS`, patched small here):
it runs on the tape as a data movement after the equation loop (`Tape.late`), not on the
straight-line path. Under the limit, a large movement no equation reads (over
`_tape.LATE_MIN_ENTRIES`) runs there too, so that no loop step is widened to its size.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _jacobian, _tape


@pytest.fixture
def small_tape(monkeypatch):
    """Every program runs on the tape however short; values of more than 64 entries are 'large'."""
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_tape, "MAX_COMPONENTS", 64)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)


def _states(theta, steps=12):
    x = jnp.zeros(8) + theta[0]
    out = []
    for t in range(steps):
        x = x + 0.1 * (theta[1] * jnp.tanh(jnp.roll(x, 1)) - theta[2] * x + 0.05 * jnp.sin(0.3 * t))
        out.append(x)
    return out, x


def stacked(theta):
    return jnp.stack(_states(theta)[0])  # (12, 8): 96 entries, more than 64


def concatenated(theta):  # a large movement read by large and small movements, and a small output beside it
    out, x = _states(theta)
    traj = jnp.concatenate(out).reshape(12, 8)
    return {"traj": traj[:, ::-1], "first": traj[0], "last": x}


def summed(theta):  # an equation that is no data movement reads the large value: straight-line path
    return jnp.sum(jnp.stack(_states(theta)[0]) ** 2)


THETA = np.asarray([0.1, 1.0, 0.5])


@pytest.mark.parametrize("fn, order", [(stacked, "forward"), (concatenated, "reverse")])
def test_large_data_movements_run_after_the_loop(small_tape, fn, order):
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)
        g = interpreter.graph_of(fn, theta)
        steps = graph.plan(g, graph.resolve_order(g, order))
        tape = _tape.build(g, steps)
        assert tape.late and max(len(s) for _, s in tape.late) == 96
        assert fn is stacked or any(len(s) == 8 for _, s in tape.late)  # traj[0]: late, as it reads a late value
        assert tape.width[1] <= 64  # no loop step is widened to the trajectory
        expected = jax.jacfwd(fn)(theta)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                     jax.jit(interpreter.jacobian(fn, order))(theta), expected)
        if order == "reverse" and fn is concatenated:  # under vmap: [slots, batch] buffers
            batch = jnp.stack([theta, theta * 1.1])
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14),
                         jax.jit(jax.vmap(interpreter.jacobian(fn, order)))(batch), jax.vmap(jax.jacfwd(fn))(batch))


def test_a_large_value_read_by_arithmetic_stays_refused(small_tape):
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)
        g = interpreter.graph_of(summed, theta)
        steps = graph.plan(g, graph.resolve_order(g, "reverse"))
        with pytest.raises(_tape.Unsupported, match="entries"):
            _tape.build(g, steps)
        assert _jacobian._tape_of(g, steps) is None


def test_unread_large_movements_run_after_the_loop(monkeypatch):
    """Under the tape's limit, a large movement no equation reads (a returned trajectory) is late
    too (`_tape.LATE_MIN_ENTRIES`, patched to 32): no loop step is widened to it; one that
    arithmetic reads stays in the loop."""
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_tape, "LATE_MIN_ENTRIES", 32)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)
    with jax.enable_x64(True):
        theta = jnp.asarray(THETA)
        for fn, late in ((stacked, True), (summed, False)):
            g = interpreter.graph_of(fn, theta)
            tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "forward")))
            assert bool(tape.late) == late and (tape.width[1] < 96) == late
        np.testing.assert_allclose(jax.jit(interpreter.jacobian(stacked, "forward"))(theta), jax.jacfwd(stacked)(theta),
                                   rtol=1e-12, atol=1e-14)
