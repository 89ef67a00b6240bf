"""Cases of helper corpus23's held-out rehearsal (session 23): what alphagrad got wrong (mended in the same
session: passing tests now), and new kinds it gets right (the functions of alphagrad/tasks/_corpus_heldout23.py)
as controls. Report: /work/notes/corpus23_report.md.

1. NaN where jax.jacfwd is finite: one equation whose output holds the same input entry twice (``jnp.tile``,
   ``concatenate`` or ``stack`` with an operand repeated, ``jnp.roll`` by a traced shift), then one copy
   selected, after a partial with a pole (``sqrt`` at 0): NaN in every order, on the tape too. Mended in 4d0aca3,
   whose tests/graph/test_same_operand_twice.py holds concatenate, roll, tile, stack and sort forms; here the
   forms it does not hold: ``jnp.resize``, ``jnp.pad(mode="wrap")`` as wide as the array, and a tile after a long
   chain (the tape's path). Repro: /work/notes/corpus23/repros/roll_traced_shift_nan.py.
2. NaN where jax.jacfwd is finite: a convolution after a pole whose kept outputs' windows avoid the pole (a
   stride-2 convolution of ``sqrt(x)`` skipping the zeros of x): NaN in every order (the convolution's dense
   partial's zeros times sqrt's inf; XLA's convolution of jax.jacfwd's tangents never forms those products).
   Likewise the first entry of ``jnp.cumprod(1 + sqrt(x))``. Mended in session 24 (helper nanprobe24: a
   convolution's partial keeps its windows' entries as its support, a dense partial the entries a NaN tangent
   reaches; tests/interpreter/test_dense_partial_zeros.py holds more forms).
   Repro: /work/notes/corpus23/repros/conv_after_sqrt_nan.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from alphagrad import interpreter
from alphagrad.tasks import _corpus_heldout23 as corpus
from tests.interpreter.test_heldout22 import _nan_free_where_jacfwd_is

_X = np.array([0.3, 0.0, 0.4, 0.0, 0.6])
_ORDERS = ("forward", "reverse", "markowitz")


def _resize_then_entry(x):
    return jnp.resize(jnp.sqrt(x), 10)[4]


def _full_wrap_pad_then_entry(x):
    return jnp.pad(jnp.sqrt(x), (0, 5), mode="wrap")[4]


def _long_chain_then_tile(x):
    y = x
    for _ in range(120):  # past the straight-line path's size: the tape
        y = jnp.sin(y) * 0.5 + x
    return jnp.tile(jnp.sqrt(x), 2)[4] + y[0]


@pytest.mark.parametrize("f", [_resize_then_entry, _full_wrap_pad_then_entry], ids=["resize", "wrap_pad"])
def test_one_copy_of_an_entry_held_twice(f):
    _nan_free_where_jacfwd_is(f, (_X,))  # (every order, in one program with jax.jacfwd's)


def test_one_copy_of_an_entry_held_twice_on_the_tape():
    with jax.enable_x64(True):
        x = jnp.asarray(_X)
        expected = np.asarray(jax.jacfwd(_long_chain_then_tile)(x))
        actual = np.asarray(jax.jit(interpreter.jacobian(_long_chain_then_tile, "reverse"))(x))
    assert np.all(np.isfinite(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


def _strided_convolution_of_sqrt(x):
    return lax.conv_general_dilated(jnp.sqrt(x)[None, None], jnp.full((1, 1, 1), 2.0), (2,), "VALID")[0, 0]


def _first_cumulative_product_of_sqrt(x):
    return jnp.cumprod(1.0 + jnp.sqrt(x))[:1]


@pytest.mark.parametrize("f", [_strided_convolution_of_sqrt, _first_cumulative_product_of_sqrt],
                         ids=["strided_convolution", "cumprod"])
def test_outputs_that_do_not_read_the_poles(f):
    _nan_free_where_jacfwd_is(f, (_X,))  # (every order, in one program with jax.jacfwd's)


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
