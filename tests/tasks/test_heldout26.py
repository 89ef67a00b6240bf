"""Cases of helper corpus26's held-out rehearsal (session 26): what alphagrad got wrong (mended during the session;
these tests keep them mended), and new kinds it gets right (the functions of alphagrad/tasks/_corpus_heldout26.py)
as controls. Report: /work/notes/corpus26_report.md.

1. A slow first call: ``jnp.cumsum`` of a few hundred entries or more. Its partial (an index map) applied to a
   one-hot basis of more than ``_structured.PATTERN_AT_TRACE_TIME_MAX`` entries was traced into the program, and
   XLA:CPU folded the cumsum (a reduce-window) of that constant at compile time in n^3: the first call of
   ``jax.jit(jacobian(f))`` for ``jnp.cumsum(jnp.tanh(x))`` of 400 entries 6.0 s, of 800 20.4 s, of 2,500 210 s
   (jax.jacrev 0.5 s); ``jnp.cumsum(x ** 2)[::-1] * x`` of 1,500 in reverse order 51.9 s. Mended: such patterns
   are computed while tracing by NumPy alone where that is possible and the result is at most 4x the constants
   the traced form embeds (`_structured._evaluated_by_numpy`, up to ``PATTERN_BY_NUMPY_MAX`` entries; ``rev``
   gained a NumPy rule): 0.2-0.7 s and 1.3 s.
2. The same for ``lax.reduce_window`` sums (an average pool, a box blur) over a few hundred entries or more: a 3x3
   "SAME" box blur of a 48x48 image took 229.7 s at its first call (jax.jacrev 0.9 s): no NumPy rule for
   ``reduce_window_sum``, so the pattern was traced and folded by XLA. Mended with one
   (`_structured._np_reduce_window_sum`): 3.8 s.
3. A Jacobian block of an integer output (``jnp.argmax(x)``, a loop counter returned) had the input's float dtype
   where jax.jacfwd's has the output's integer dtype (zeros either way; jax.jacrev refuses such outputs): now the
   output's dtype (`_jacobian._block_dtype`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.tasks import _corpus_heldout26 as corpus
from tests.tasks.test_heldout24 import _nan_free_where_jacfwd_is

_ORDERS = ("forward", "reverse", "markowitz")


# ---- finding 1: cumsum of many entries folded by XLA ----

def _ops_over_constants(f, order, shape, name):
    """The `name` equations of jacobian(f)'s program at an argument of `shape` whose operand has at least
    size^2 / 4 entries (a one-hot basis or a pattern of the Jacobian's size: XLA folds those at compile time)."""
    n = int(np.prod(shape))
    jaxpr = jax.make_jaxpr(interpreter.jacobian(f, order))(jnp.ones(shape)).jaxpr

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == name and np.prod(eqn.invars[0].aval.shape) >= n * n // 4:
                yield eqn
            for sub in jax.core.jaxprs_in_params(eqn.params):
                yield from walk(sub)
    return list(walk(jaxpr))


def _box_blur(x):
    return jax.lax.reduce_window(jnp.tanh(x), 0.0, jax.lax.add, (3, 3), (1, 1), "SAME") / 9


def test_average_pool_of_many_entries_is_not_left_to_xla():
    # a 3x3 box blur of 24x24: a reduce_window_sum of a 331,776-entry constant was in the program before the mend
    # (at 48x48 the first call took 229.7 s, jax.jacrev 0.9 s; after 3.8 s)
    with jax.enable_x64(True):
        assert _ops_over_constants(_box_blur, "reverse", (24, 24), "reduce_window_sum") == []
    _nan_free_where_jacfwd_is(_box_blur, "reverse", (np.linspace(-1, 1, 64).reshape(8, 8),))


@pytest.mark.parametrize("f, order", [
    (lambda x: jnp.cumsum(jnp.tanh(x)), "reverse"),
    (lambda x: jax.lax.cumsum(jnp.tanh(x).reshape(-1, 4), axis=0, reverse=True), "forward"),
    (lambda x: jnp.cumsum(x ** 2)[::-1] * x, "reverse"),
], ids=["cumsum", "reshaped_reverse_cumsum", "cumsum_reversed_times_x"])
def test_cumsum_of_many_entries_is_not_left_to_xla(f, order):
    # 400 entries: the cumsum of a 160,000-entry constant was in the program before the mend (6 s to compile)
    with jax.enable_x64(True):
        assert _ops_over_constants(f, order, (400,), "cumsum") == []


def test_cumsum_of_many_entries_exact():
    f = lambda x: jnp.cumsum(x ** 2)[::-1] * x  # noqa: E731
    x = np.linspace(-1.0, 1.0, 300)
    _nan_free_where_jacfwd_is(f, ("reverse", "forward"), (x,), jit=True)


# ---- finding 2: integer outputs' blocks ----

def _argmax_and_count(x):
    return x * 2, jnp.argmax(x), jnp.sum(x > 0).astype(jnp.int32)


def test_integer_output_blocks_take_jacfwds_dtype():
    with jax.enable_x64(True):
        x = jnp.array([0.3, -0.1, 0.9])
        expected = jax.jacfwd(_argmax_and_count)(x)
        for actual in jax.jit(lambda v: [interpreter.jacobian(_argmax_and_count, o)(v) for o in _ORDERS])(x):
            for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
                assert a.dtype == b.dtype and a.shape == b.shape
                np.testing.assert_array_equal(a, b)


# ---- controls: the corpus module's functions ----

def test_corpus_functions_described_and_two_exact_under_one_jit():
    # an integer carry returned beside floats; a sort-based loss (forward, reverse and Markowitz under one jax.jit)
    by_name = {e[1].__name__: e for e in corpus.entries()}
    assert len(by_name) == len(corpus.entries()) >= 15
    assert all(f.__doc__ and group for group, f, _, _ in corpus.entries())
    for name in ("scan_with_int_carry_output", "lovasz_hinge"):
        _, f, args, argnums = by_name[name]
        _nan_free_where_jacfwd_is(f, _ORDERS, args, argnums, jit=True)
