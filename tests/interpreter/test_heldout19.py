"""Cases of helper corpus19's held-out rehearsal (session 19) that alphagrad gets wrong, as strict expected failures.

1. Python numbers outside ``argnums``. jax.jacfwd and jax.jacrev pass the arguments they do not differentiate to f
   unchanged; alphagrad traces Python numbers there as arrays whenever tracing with them succeeds (it binds them as
   Python values only when tracing fails, e.g. on ``if flag:``). Code that looks at the Python type or identity of
   such an argument (``isinstance(k, int)``, ``flag is True``, ``type(s) is float``, ``str(s)``) then takes another
   path while alphagrad traces it, and alphagrad returns the Jacobian of another function, silently.
   Repros: /work/notes/s19/corpus19/repros/python_number_outside_argnums.py and python_numbers_patterns.py.
2. The blocks of Python-float arguments: jax.jacfwd's and jax.jacrev's are weak-typed (as the arguments are), so
   that ``J * bf16_array`` stays bfloat16; alphagrad's are strongly typed. Repro: repros/weak_type_python_float.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter

_X = jnp.linspace(0.1, 1.2, 5)


def _roll_then_maybe_sin(x, k, flag):
    y = jnp.roll(x, k)
    if isinstance(flag, bool) and flag:
        y = jnp.sin(y)
    return y * x


_PATTERNS = {
    "isinstance_bool": (_roll_then_maybe_sin, (_X, 1, True)),
    "is_true": (lambda x, flag: jnp.sin(x) if flag is True else x, (_X, True)),
    "type_is_float": (lambda x, s: x * s if type(s) is float else x, (_X, 0.5)),
    "isinstance_int": (lambda x, k: x * (2.0 if isinstance(k, int) else 3.0), (_X, 2)),
}


_TRACED_NUMBER = pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="Python ints and floats outside argnums are traced as arrays when tracing succeeds (one compilation for "
           "every value, as under jax.jit); f's checks of their type then take another path than under eager "
           "jax.jacfwd (corpus19 report)")


@pytest.mark.parametrize("pattern", ["isinstance_bool", "is_true",  # bools are bound (session 19)
                                     pytest.param("type_is_float", marks=_TRACED_NUMBER),
                                     pytest.param("isinstance_int", marks=_TRACED_NUMBER)])
@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_a_python_number_outside_argnums_reaches_f_unchanged(pattern, order):
    f, args = _PATTERNS[pattern]
    np.testing.assert_allclose(interpreter.jacobian(f, order)(*args), jax.jacfwd(f)(*args), rtol=1e-6)


def test_a_python_flag_that_f_branches_on_is_bound_already():
    # The control: `if flag:` cannot trace, so the flag is bound as a Python value, as jax.jacfwd sees it.
    f = lambda x, flag: jnp.sin(x) if flag else x
    np.testing.assert_allclose(interpreter.jacobian(f, "reverse")(_X, True), jax.jacfwd(f)(_X, True), rtol=1e-6)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="the blocks of Python-float arguments are strongly typed; jax.jacfwd's and jax.jacrev's are "
                          "weak-typed like the arguments (corpus19 report)")
def test_the_blocks_of_python_float_arguments_are_weak_typed_as_jax_jacfwds():
    f = lambda a, b: a * b + jnp.exp(a) / b
    expected = jax.jacfwd(f, argnums=(0, 1))(1.5, 0.3)
    actual = interpreter.jacobian(f, "reverse", argnums=(0, 1))(1.5, 0.3)
    assert [e.weak_type for e in expected] == [True, True]
    assert [(a.dtype, a.weak_type) for a in actual] == [(e.dtype, e.weak_type) for e in expected]


# 3. A long program with one value-dependent index map (lax.top_k, lax.cummax) leaves the tape (`_tape.Unsupported`:
#    "the index map of cummax depends on the values") for the straight-line path, one XLA operation per equation and
#    product: its compiled size and compile time grow with the whole program. Generated programs of 1,000 and 3,000
#    equations with a few cummax/sort-along-an-axis ops took 63 s and 184 s to the first call of
#    jax.jit(jacobian(f, "reverse")) (jax.jit(jax.jacrev): 27 s and 47 s), 480 equations with one top_k 21 s against 1.1 s
#    without (load 7-8 on 2 cores). Repro: /work/notes/s19/corpus19/repros/sort_off_tape.py. Both on the tape now:
#    top_k (session 19), cummax with its tie weights (session 20).
def _chain_with(op):
    def f(x):
        for i in range(30):
            x = jnp.tanh(0.9 * x + 0.1 * jnp.roll(x, 1)) * 1.05
            if op is not None and i == 15:
                x = op(x)
        return x
    return f


def _lowered_lines(op):
    x = jnp.linspace(-1.0, 1.0, 16)
    return jax.jit(interpreter.jacobian(_chain_with(op), "reverse")).lower(x).as_text().count("\n")


def test_a_long_program_with_a_sort_compiles_as_small_as_without():
    # The control: jnp.sort's index map is handled on the tape.
    assert _lowered_lines(jnp.sort) < 2 * _lowered_lines(None)


@pytest.mark.parametrize("op, factor", [("top_k", 2), ("cummax", 3)])
def test_a_long_program_with_one_top_k_or_cummax_compiles_as_small_as_without(op, factor):
    # top_k's partial selects one entry per output (a run-time 0/1 mask on the tape, session 19); cummax's is a
    # run-time mask of JAX's tie weights, 1/2, 1/4... (session 20, helper tape20), computed in its kind by JAX's JVP
    # of an associative scan: about 450 lines whatever the program's length (792 against 338 without; off the tape,
    # one operation per equation and product, 4,999).
    ops = {"top_k": lambda x: jnp.concatenate([jax.lax.top_k(x, 4)[0], x[4:]]), "cummax": jax.lax.cummax}
    assert _lowered_lines(ops[op]) < factor * _lowered_lines(None)
