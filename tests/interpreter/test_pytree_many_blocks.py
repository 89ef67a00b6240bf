"""`interpreter.jacobian`'s default (pytree) output of a Jacobian with many blocks, called eagerly:
the zero blocks made outside the compiled function, the nonzero ones its outputs or (many) one
output, the blocks raveled, split into them after the call (`_jacobian._SplitPytree`). The blocks must be those
the traced path builds (under jax.jit), jax.jacfwd's and the dense output's, in jax.jacrev's
structure, shapes and dtypes, on the straight-line path and on the tape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _jacobian, _tape

RNG = np.random.default_rng(16)


@pytest.fixture(autouse=True, scope="module")
def float64():
    with jax.enable_x64(True):
        yield


def many_io(scalars, vectors, c32, k):
    """Many leaves in and out: each output reads a few of the 12 scalars and 4 vectors (most blocks
    zero), a constant output, an argument passed through, a float32 argument, an integer one."""
    outs = {}
    for j in range(12):
        a, b = scalars[j], scalars[(j * 5 + 3) % 12]
        v = vectors[j % 4]
        outs[f"s{j}"] = jnp.sin(a) * b + jnp.tanh(a * b) * k
        outs[f"v{j}"] = jnp.cos(v * a) + v[::-1] * b if j % 3 else jnp.sum(v * v) * a
    outs["c32"] = c32 * scalars[0]
    outs["const"] = jnp.ones(3)
    outs["through"] = vectors[1]
    return outs


def arguments(k=jnp.int32(3)):
    scalars = [jnp.asarray(x) for x in RNG.normal(size=12)]
    vectors = [jnp.asarray(RNG.normal(size=3)) for _ in range(4)]
    return scalars, vectors, jnp.asarray(RNG.normal(size=2), jnp.float32), k


def on_path(monkeypatch, path):
    """many_io's arguments and argnums, on the straight-line path or (forced) on the tape, which
    takes no integer arguments: k a float there, not differentiated."""
    if path == "tape":
        monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
        monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
        monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)
        return arguments(jnp.float64(3.0)), (0, 1, 2)
    return arguments(), (0, 1, 2, 3)


def calls(monkeypatch, target, name):
    """Records the calls of `target.name` (still calling it)."""
    seen = []
    original = getattr(target, name)
    monkeypatch.setattr(target, name, lambda *a, **k: seen.append(1) or original(*a, **k))
    return seen


def check(blocks, traced, reference, dense, args, argnums):
    """Same structure, shapes, dtypes and (bitwise) values as the traced path's blocks; the values
    of the dense output's and jax.jacfwd's."""
    assert jax.tree.structure(blocks) == jax.tree.structure(traced)
    for got, want in zip(jax.tree.leaves(blocks), jax.tree.leaves(traced)):
        assert got.shape == want.shape and got.dtype == want.dtype
        if got.dtype != jax.dtypes.float0:
            np.testing.assert_array_equal(got, want)
            assert isinstance(got, jax.Array)
    split = interpreter.unravel_jacobian(dense, many_io, *args, argnums=argnums)
    for got, want in zip(jax.tree.leaves(blocks), jax.tree.leaves(split)):
        if got.dtype != jax.dtypes.float0:  # an XLA fusion apart: to the last digits
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    float_leaves = [x for x in jax.tree.leaves(blocks) if x.dtype != jax.dtypes.float0]
    assert len(float_leaves) == len(jax.tree.leaves(reference))
    for got, want in zip(float_leaves, jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("split", ["outputs", "one array"])
@pytest.mark.parametrize("path", ["straight-line", "tape"])
def test_many_blocks_split_after_the_call(monkeypatch, path, split):
    """The zero blocks made after the call; the nonzero ones as outputs of the compiled function,
    or (many of them) as one array split after the call."""
    many = 0 if split == "one array" else 10**9
    monkeypatch.setattr(_jacobian, "SPLIT_MIN_NONZERO", many)
    monkeypatch.setattr(_jacobian, "SPLIT_MIN_NONZERO_TAPE", many)
    args, argnums = on_path(monkeypatch, path)
    made = calls(monkeypatch, _jacobian._SplitPytree, "__init__")
    gathers = calls(monkeypatch, _tape, "run_blocks")
    sliced = calls(monkeypatch, _jacobian, "_block_of")
    _jacobian._PERFORMED.pop(many_io, None)
    jac = interpreter.jacobian(many_io, "reverse", argnums=argnums)
    blocks = jac(*args)
    # 27 outputs x 17 or 18 input leaves: many blocks, split after one compiled call.
    assert len(made) == 1 and 27 * 17 >= _jacobian.SPLIT_MIN_BLOCKS
    assert bool(gathers) == (path == "tape" and split == "one array")
    assert bool(sliced) == (split == "one array")
    if path == "straight-line":  # the eliminations' count, recorded for count_muls as on the traced path
        assert list(_jacobian._PERFORMED[many_io].values()) == [
            graph.cost(interpreter.graph_of(many_io, *args, argnums=argnums), "reverse")]
    traced = jax.jit(jac)(*args)  # under a trace: the blocks are the caller's outputs (`_assemble`)
    dense = interpreter.jacobian(many_io, "reverse", argnums=argnums, output="dense")(*args)
    reference = jax.jacfwd(many_io, argnums=(0, 1, 2))(*args)
    check(blocks, traced, reference, dense, args, argnums)
    if path == "straight-line":
        assert blocks["s0"][3].dtype == jax.dtypes.float0  # the integer argument
    assert blocks["c32"][2].dtype == jnp.float64  # a float32 input of a float64 output
    np.testing.assert_array_equal(blocks["const"][0][5], 0.0)

    # A second call with other values reuses the compilation and the zero blocks; a deleted zero
    # block (donated, say) is made again.
    blocks["s0"][1][2].delete()
    other = jax.tree.map(lambda x: x * 0.5 if jnp.issubdtype(x.dtype, jnp.floating) else x, args)
    again = jac(*other)
    assert len(made) == 1
    check(again, jax.jit(jac)(*other), jax.jacfwd(many_io, argnums=(0, 1, 2))(*other),
          interpreter.jacobian(many_io, "reverse", argnums=argnums, output="dense")(*other), other, argnums)


def test_few_blocks_and_vmap_keep_the_traced_assembly(monkeypatch):
    """Few blocks: one compiled call returns them (no split); under vmap the blocks are built in
    the trace and batched."""
    made = calls(monkeypatch, _jacobian._SplitPytree, "__init__")

    def f(x, y):
        return jnp.sin(x) * y[0], y * 2.0

    x, y = jnp.asarray(RNG.normal(size=3)), jnp.asarray(RNG.normal(size=2))
    jac = interpreter.jacobian(f, "reverse", argnums=(0, 1))
    blocks = jac(x, y)
    assert not made
    for got, want in zip(jax.tree.leaves(blocks), jax.tree.leaves(jax.jacfwd(f, argnums=(0, 1))(x, y))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    args = arguments()
    xs = [jnp.stack([s, s + 0.1]) for s in args[0]]
    batched = jax.vmap(interpreter.jacobian(many_io, "reverse", argnums=0), in_axes=(0, None, None, None))(xs, *args[1:])
    assert not made
    expected = jax.jacfwd(many_io, argnums=0)([s + 0.1 for s in args[0]], *args[1:])
    for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got[1], want, rtol=1e-12, atol=1e-14)


def special(xs, c):
    """Blocks holding NaN, infinities and -0.0 (the derivatives of x * c), many of one shape."""
    return [x * c[k % c.shape[0]] for k, x in enumerate(xs)], jnp.stack(xs[:3]) * c[:3]


def entry_kernels(compiled) -> int:
    """The kernels (fusions) of a compiled computation's entry, nested computations included."""
    return sum(line.count(" fusion(") for line in compiled.as_text().splitlines())


@pytest.mark.parametrize("path", ["straight-line", "tape"])
def test_many_blocks_under_a_trace_written_in_groups(monkeypatch, path):
    """Under the caller's jax.jit and jax.vmap the blocks read off edges come out of one XLA
    operation per group (`_jacobian._written_in_groups`): XLA:CPU compiles a kernel per output
    otherwise. The blocks are those built one by one, bit for bit (NaN, infinities, -0.0, mixed
    dtypes, zero and float0 blocks; the tests above compare those with the dense output's and
    jax.jacfwd's) and stay differentiable."""
    args, argnums = on_path(monkeypatch, path)
    written = calls(monkeypatch, _jacobian, "_copied")

    def blocks_of(grouped_min, fn, *a, argnums=None):
        """jax.jit of fn's Jacobian (or of fn itself, argnums None), compiled, and that Jacobian."""
        monkeypatch.setattr(_jacobian, "GROUPED_MIN_BLOCKS", grouped_min)
        jac = fn if argnums is None else interpreter.jacobian(fn, "reverse", argnums=argnums)
        return jax.jit(jac).lower(*a).compile(), jac

    monkeypatch.setattr(_jacobian, "GROUP_BLOCKS", 4)  # groups of 4, and one left alone
    alone, jac_alone = blocks_of(10**9, many_io, *args, argnums=argnums)
    assert not written
    grouped, jac = blocks_of(8, many_io, *args, argnums=argnums)
    assert written
    nonzero = sum(1 for x in jax.tree.leaves(alone(*args)) if x.dtype != jax.dtypes.float0 and np.any(x))
    if jax.default_backend() == "cpu":  # a kernel per group, not per block
        assert entry_kernels(alone) >= nonzero and entry_kernels(grouped) <= entry_kernels(alone) - nonzero // 3
    # On the tape the blocks are read out of its edge buffer: bit for bit; on the straight-line
    # path XLA fuses their computation into the group's kernel: to the last digit or two.
    def same(got, want):
        if path == "tape":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)

    blocks, alone_blocks = grouped(*args), alone(*args)
    assert jax.tree.structure(blocks) == jax.tree.structure(alone_blocks)
    for x, y in zip(jax.tree.leaves(blocks), jax.tree.leaves(alone_blocks)):
        assert x.shape == y.shape and x.dtype == y.dtype
        if y.dtype != jax.dtypes.float0:
            same(x, y)
    if path == "straight-line":
        assert blocks["s0"][3].dtype == jax.dtypes.float0  # the integer argument
    assert blocks["c32"][2].dtype == jnp.float64 and blocks["const"][0][5].dtype == jnp.float64

    # Under jit and vmap: the batched blocks built one by one.
    batched = [jnp.stack([s, s * 0.5]) for s in args[0]]
    batched_alone, _ = blocks_of(10**9, jax.vmap(jac_alone, in_axes=(0, None, None, None)), batched, *args[1:])
    batched_grouped, _ = blocks_of(8, jax.vmap(jac, in_axes=(0, None, None, None)), batched, *args[1:])
    for x, y in zip(jax.tree.leaves(batched_grouped(batched, *args[1:])),
                    jax.tree.leaves(batched_alone(batched, *args[1:]))):
        assert x.dtype == y.dtype and x.shape == y.shape and (y.dtype == jax.dtypes.float0 or x.shape[0] == 2)
        if y.dtype != jax.dtypes.float0:
            same(x, y)

    # NaN, infinities and -0.0 pass unchanged; the Jacobian stays differentiable (its derivative
    # the one of the blocks built one by one).
    xs = [jnp.asarray(x) for x in RNG.normal(size=20)]
    c = jnp.asarray([np.nan, np.inf, -0.0, -np.inf, 0.0, 1.5])
    alone, jac_alone = blocks_of(10**9, special, xs, c, argnums=0)
    grouped, jac = blocks_of(8, special, xs, c, argnums=0)
    for x, y in zip(jax.tree.leaves(grouped(xs, c)), jax.tree.leaves(alone(xs, c))):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(np.signbit(x), np.signbit(y))
    assert np.isnan(grouped(xs, c)[0][0][0]) and np.signbit(grouped(xs, c)[0][2][2])
    finite = jnp.asarray([0.5, 2.0, -0.0, -1.0, 3.0, 1.5])
    alone, _ = blocks_of(10**9, jax.jacfwd(jac_alone, argnums=1), xs, finite)
    grouped, _ = blocks_of(8, jax.jacfwd(jac, argnums=1), xs, finite)
    for x, y in zip(jax.tree.leaves(grouped(xs, finite)), jax.tree.leaves(alone(xs, finite))):
        np.testing.assert_array_equal(x, y)
    assert np.any(jax.tree.leaves(grouped(xs, finite))[0])
