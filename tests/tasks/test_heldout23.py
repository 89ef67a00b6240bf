"""Cases of helper corpus23's held-out rehearsal (session 23): what alphagrad got wrong (strict xfails), and new
kinds it gets right (the functions of alphagrad/tasks/_corpus_heldout23.py) as controls.
Report: /work/notes/corpus23_report.md.

1. NaN where jax.jacfwd is finite: one equation whose output holds two copies of the same input entry
   (``jnp.tile``, ``concatenate`` or ``stack`` with an operand repeated; ``jnp.roll`` by a traced shift is
   ``concatenate([a, a])`` + ``dynamic_slice``), then one copy selected, after a partial with a pole
   (``sqrt`` at 0). jax.jacfwd is finite, jax.jacrev is NaN; alphagrad is NaN in every order.
   Repro: /work/notes/corpus23/repros/roll_traced_shift_nan.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.tasks import _corpus_heldout23 as corpus
from tests.interpreter.test_heldout22 import _nan_free_where_jacfwd_is

_X = np.array([0.3, 0.0, 0.4, 0.0, 0.6])
_ORDERS = ("forward", "reverse", "markowitz")


def _tile_then_entry(x):
    return jnp.tile(jnp.sqrt(x), 2)[4]


def _concatenate_same_twice_then_entry(x):
    s = jnp.sqrt(x)
    return jnp.concatenate([s, s])[4]


def _roll_by_argmax_then_first(x):
    return jnp.roll(jnp.sqrt(x), -jnp.argmax(x))[:1]


_SAME_INPUT_TWICE = pytest.mark.xfail(
    strict=True, reason="corpus23 finding 1: a copy map holding one input entry twice loses the structural zeros "
                        "of the selection after it (0 * inf = NaN where jax.jacfwd is finite)")


@_SAME_INPUT_TWICE
@pytest.mark.parametrize("order", _ORDERS)
def test_tile_then_one_entry(order):
    _nan_free_where_jacfwd_is(_tile_then_entry, order, (_X,))


@_SAME_INPUT_TWICE
@pytest.mark.parametrize("order", _ORDERS)
def test_concatenate_of_one_operand_twice_then_one_entry(order):
    _nan_free_where_jacfwd_is(_concatenate_same_twice_then_entry, order, (_X,))


@_SAME_INPUT_TWICE
@pytest.mark.parametrize("order", ("reverse",))
def test_roll_by_a_traced_shift_then_one_entry(order):
    _nan_free_where_jacfwd_is(_roll_by_argmax_then_first, order, (_X,))


# ---- controls: the corpus module's functions, exact under one jit (forward, reverse, Markowitz, auto) ----

_CHEAP = ("activation_zoo", "namedtuple_oscillator_step", "rank0_and_zero_size_outputs", "scan_reverse_unrolled",
          "reduce_window_variants", "cumulative_family", "select_n_six_cases", "segment_mean_empty_segments")


def _entry(name):
    return next(e for e in corpus.entries() if e[1].__name__ == name)


@pytest.mark.parametrize("name", _CHEAP)
def test_corpus_function_exact_in_every_order(name):
    _, f, args, argnums = _entry(name)
    with jax.enable_x64(True):
        args = jax.tree.map(jnp.asarray, args)
        expected = jax.jit(jax.jacfwd(f, argnums=argnums))(*args)

        def all_orders(*xs):
            return [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in _ORDERS]
        jacobians = jax.jit(all_orders)(*args)
    assert jax.tree.structure(jacobians[0]) == jax.tree.structure(expected)
    for actual in jacobians:
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-11)


def test_every_entry_is_described():
    names = [e[1].__name__ for e in corpus.entries()]
    assert len(names) == len(set(names)) >= 15
    assert all(e[1].__doc__ for e in corpus.entries())
