"""`interpreter.jacobian(..., output="dense")`: the Jacobian as one [output entries, input entries]
array in ``jax.flatten_util.ravel_pytree``'s order, on every path the interpreter takes
(straight-line, labelled axes, loops kept whole, the tape), under jit and vmap; and
`interpreter.unravel_jacobian`, which splits it back into jax.jacrev's pytree."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from alphagrad import interpreter
from alphagrad.errors import AlphagradError
from alphagrad.graph import _loops as graph_loops
from alphagrad.graph import _trace
from alphagrad.interpreter import _tape

RNG = np.random.default_rng(5)


@pytest.fixture(autouse=True, scope="module")
def float64():
    with jax.enable_x64(True):
        yield


def raveled_jacfwd(f, args, argnums):
    """jax.jacfwd of f with its differentiated arguments and its output raveled: the reference
    dense Jacobian (rows: ravel_pytree of the output, columns: of the differentiated arguments)."""
    selected = (argnums,) if isinstance(argnums, int) else argnums
    flat, unravel = ravel_pytree(tuple(args[k] for k in selected))

    def g(v):
        full = list(args)
        for k, x in zip(selected, unravel(v)):
            full[k] = x
        return ravel_pytree(f(*full))[0]

    return jax.jacfwd(g)(flat)


def mixed(x, p, n):
    """A dict output with a scalar, a matrix, a constant and an argument passed through; an
    integer argument (n) read as a value."""
    y = jnp.tanh(p["w"] @ x) * n
    return {"s": jnp.sum(y * y), "m": jnp.outer(y, x[:2]), "c": jnp.ones(2), "x": x}


MIXED_ARGS = (RNG.normal(size=3), {"w": RNG.normal(size=(2, 3)), "b": RNG.normal(size=())}, 3)


def test_dense_is_ravel_pytree_of_the_jacobian_jit_and_vmap():
    x, p, n = MIXED_ARGS
    args = (jnp.asarray(x), jax.tree.map(jnp.asarray, p))
    argnums = (1, 0)  # columns in argnums' order, as jax.jacrev's tuple
    xs = jnp.stack([args[0], 0.5 * args[0]])

    @jax.jit  # one compilation for all of it
    def run(x, p):
        dense = interpreter.jacobian(mixed, "markowitz", argnums=argnums, output="dense")(x, p, n)
        # vmap adds a leading batch axis.
        batched = jax.vmap(interpreter.jacobian(mixed, "reverse", argnums=0, output="dense"),
                           in_axes=(0, None, None))(xs, p, n)
        return (dense, batched, raveled_jacfwd(mixed, (x, p, n), argnums), raveled_jacfwd(mixed, (xs[1], p, n), 0),
                jax.jacfwd(mixed, argnums=argnums)(x, p, n))

    dense, batched, expected, expected_1, blocks = run(*args)
    assert dense.shape == expected.shape == (1 + 4 + 2 + 3, 6 + 1 + 3) and dense.dtype == jnp.float64
    np.testing.assert_allclose(dense, expected, rtol=1e-12, atol=1e-12)
    assert batched.shape == (2, 10, 3)
    np.testing.assert_allclose(batched[1], expected_1, rtol=1e-12, atol=1e-12)
    # unravel_jacobian splits the dense output into the pytree output (structure, shapes, dtypes).
    split = interpreter.unravel_jacobian(dense, mixed, *args, n, argnums=argnums)
    tree = jax.eval_shape(interpreter.jacobian(mixed, "markowitz", argnums=argnums), *args, n)
    assert jax.tree.structure(split) == jax.tree.structure(tree) == jax.tree.structure(blocks)
    for a, b, c in zip(jax.tree.leaves(split), jax.tree.leaves(tree), jax.tree.leaves(blocks)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)
    # unravel_jacobian keeps leading batch axes in front of every block.
    blocks = interpreter.unravel_jacobian(batched, mixed, xs[0], args[1], n, argnums=0)
    assert blocks["m"].shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(blocks["m"][1].reshape(4, 3), batched[1, 2:6])  # keys sorted: c, m, s, x


def test_dtype_is_the_widest_block_and_integer_inputs_are_zero_columns():
    def f(a, b, k):
        return a * b[0] + k, jnp.sum(a).astype(jnp.float32)

    def only_integers(k):
        return k * 2.0, k

    a, b, k = jnp.arange(3.0, dtype=jnp.float32), jnp.ones(2), jnp.int32(2)

    @jax.jit
    def run(a, b, k):
        return (interpreter.jacobian(f, "reverse", argnums=(0, 1, 2), output="dense")(a, b, k),
                interpreter.jacobian(f, "reverse", argnums=(0, 1, 2))(a, b, k),
                raveled_jacfwd(f, (a, b, k), (0, 1)))

    dense, tree, expected = run(a, b, k)
    assert dense.shape == (4, 6) and dense.dtype == jnp.float64  # float32 a, float64 b
    np.testing.assert_array_equal(dense[:, 5], 0.0)  # k: an integer input, a zero column
    np.testing.assert_allclose(dense[:, :5], expected, rtol=1e-6)
    split = interpreter.unravel_jacobian(dense, f, a, b, k, argnums=(0, 1, 2))
    assert [x.dtype for x in jax.tree.leaves(split)] == [x.dtype for x in jax.tree.leaves(tree)]
    # Only integer inputs: every block is float0, and so is the dense array.
    only = jax.eval_shape(interpreter.jacobian(only_integers, "reverse", output="dense"), k)
    assert only.shape == (2, 1) and only.dtype == jax.dtypes.float0


def rank3(x, w):
    """Rank-3 arrays in a short program: labelled structural axes."""
    return jnp.einsum("bij,jk->bik", jnp.sin(x), w), jnp.sum(x * x, axis=(1, 2))


def rnn(w, c, xs):
    """A scan, kept as one loop vertex when unrolling is off."""
    return jax.lax.scan(lambda h, x: (jnp.tanh(w * h + x), h[0]), c, xs)


@pytest.mark.parametrize("f, args, argnums", [
    (rank3, (RNG.normal(size=(2, 3, 2)), RNG.normal(size=(2, 2))), (0, 1)),
    (rnn, (RNG.normal(size=2), RNG.normal(size=2), RNG.normal(size=(3, 2)) / 10), (0, 1, 2)),
], ids=["labelled", "loop"])
def test_labelled_and_loop_paths(monkeypatch, f, args, argnums):
    monkeypatch.setattr(graph_loops, "UNROLL_MAX_EQUATIONS", 0)
    args = tuple(jnp.asarray(a) for a in args)
    g = interpreter.graph_of(f, *args, argnums=argnums)
    if f is rank3:
        assert g.structures, "the rank-3 program should take labelled axes"
    else:
        assert any(eqn.loop is not None for eqn in g.program.equations), "the scan should be kept as a loop"

    @jax.jit
    def run(*args):
        return (interpreter.jacobian(f, "reverse", argnums=argnums, output="dense")(*args),
                raveled_jacfwd(f, args, argnums))

    dense, expected = run(*args)
    np.testing.assert_allclose(dense, expected, rtol=1e-10, atol=1e-12)


def scalars(s, p):
    """Scalars indexed out of a vector, few primitives (few tape kinds to compile), outputs of
    several shapes."""
    x, y = s[0] * p[0] + s[1], s[1] * s[2] + p[1]
    return {"pair": jnp.stack([x, y]), "x": x * y}, jnp.sin(y)


def test_tape_reads_the_dense_jacobian_with_one_gather(monkeypatch):
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)
    s, p = jnp.asarray([0.3, -0.2, 0.7]), jnp.asarray([1.1, 0.9])

    def with_aux(s, p):
        return scalars(s, p), jnp.sum(s)

    gathers = []  # the tape's dense read-out runs (not its blocks read out by slices)
    run_dense = _tape.run_dense
    monkeypatch.setattr(_tape, "run_dense", lambda *a: gathers.append(1) or run_dense(*a))
    jac = interpreter.jacobian(with_aux, "reverse", argnums=(0, 1), has_aux=True, output="dense")
    batch_s = jnp.stack([s, 0.9 * s])
    dense, aux = jax.jit(jax.vmap(jac, in_axes=(0, None)))(batch_s, p)
    assert gathers
    assert dense.shape == (2, 4, 5) and aux.shape == (2,)
    expected = jax.jit(jax.vmap(lambda s: raveled_jacfwd(scalars, (s, p), (0, 1))))(batch_s)
    np.testing.assert_allclose(dense, expected, rtol=1e-10, atol=1e-13)


def test_bad_output_and_bad_dense_shapes_are_refused():
    with pytest.raises(AlphagradError, match="'pytree', 'dense'"):
        interpreter.jacobian(jnp.sin, output="matrix")
    x = jnp.ones(3)
    with pytest.raises(AlphagradError, match=r"\[\.\.\., 3, 3\]"):
        interpreter.unravel_jacobian(jnp.ones((3, 2)), jnp.sin, x)
    with pytest.raises(AlphagradError, match="outside jax.jit"):
        jax.jit(lambda d: interpreter.unravel_jacobian(d, jnp.sin, x))(jnp.ones((3, 3)))
