"""Arrays of 3 or more dimensions: partials by labelled axes (exact model), exact Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter

RNG = np.random.default_rng(7)


def assert_close(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape, (a.shape, b.shape)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _normal(*shape):
    return jnp.asarray(RNG.normal(size=shape), jnp.float32)


def batched_matmul(a, b):
    return jnp.sin(a @ b).transpose(0, 2, 1).sum(1)


def attention(q, k, v):
    scores = jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(q.shape[-1])
    return jnp.einsum("bqk,bkd->bqd", jax.nn.softmax(scores, axis=-1), v)


def conv2d(x, w):
    return jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME"))


def conv_strided_dilated(x, w):
    # NHWC, stride 2, input and kernel dilation, uneven padding (one side cropped): the kernel's
    # partial is tied between the output's and the kernel's output features ("K", the patches).
    y = jax.lax.conv_general_dilated(x, w, (2, 1), ((1, 0), (2, -1)), lhs_dilation=(2, 1), rhs_dilation=(1, 2),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(y)


def conv_grouped_1d(x, w):
    # Two feature groups (each output feature reads its group's inputs: a "D" tie on the kernel).
    return jnp.sin(jax.lax.conv_general_dilated(x, w, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
                                                feature_group_count=2))


def conv_depthwise(x, w):
    # Depthwise (one output feature per input feature): feature c reads feature c alone, a "D" tie
    # between the two feature axes of the input's partial beside its batch tie.
    return jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=3))


def pairwise_energy(x):
    d = x[:, None, :] - x[None, :, :]
    return jnp.sum(1.0 / jnp.sqrt(jnp.sum(d**2, -1) + 1e-3), axis=1)


def movements(x):
    # transpose, slice, pad, concatenate, rev, broadcast and reductions of a rank-4 array
    y = jnp.transpose(x, (2, 0, 3, 1))[:, :, 1:, :]
    y = jnp.concatenate([y, jnp.flip(y, axis=1)], axis=2)
    y = jnp.pad(y, ((0, 0), (1, 0), (0, 0), (0, 1)))
    return jnp.max(y * 2.0 + y**2, axis=(1, 3)) + jnp.sum(x[None] * 3.0, axis=(0, 1, 2))[:, :1]


CASES = {
    "batched_matmul": (batched_matmul, (_normal(2, 3, 4), _normal(2, 4, 5)), (0, 1)),
    "attention": (attention, (_normal(2, 3, 2), _normal(2, 3, 2), _normal(2, 3, 2)), (0, 1, 2)),
    "conv2d": (conv2d, (_normal(1, 2, 4, 4), _normal(3, 2, 3, 3)), (0, 1)),
    "conv_strided_dilated": (conv_strided_dilated, (_normal(2, 3, 4, 2), _normal(2, 2, 2, 3)), (0, 1)),
    "conv_grouped_1d": (conv_grouped_1d, (_normal(2, 5, 4), _normal(3, 2, 6)), (0, 1)),
    "conv_depthwise": (conv_depthwise, (_normal(2, 3, 4, 4), _normal(3, 1, 2, 2)), (0, 1)),
    "pairwise_energy": (pairwise_energy, (_normal(4, 3),), 0),
    "movements": (movements, (_normal(2, 3, 4, 2),), 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_high_rank_jacobians_are_exact_and_counted(name):
    f, args, argnums = CASES[name]
    orders = ("forward", "reverse", "markowitz")

    @jax.jit
    def reference_and_all_orders(*xs):  # one compilation for the reference and every order
        return jax.jacfwd(f, argnums=argnums)(*xs), [interpreter.jacobian(f, o, argnums=argnums)(*xs) for o in orders]

    expected, results = reference_and_all_orders(*args)
    g = interpreter.graph_of(f, *args, argnums=argnums)
    for order, got in zip(orders, results):
        assert_close(got, expected)
        assert interpreter.count_muls(f, order, *args, argnums=argnums) == graph.cost(g, order)


def test_high_rank_under_jit_with_auto(monkeypatch, tmp_path):
    monkeypatch.setenv("ALPHAGRAD_CACHE", str(tmp_path))
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0.3")
    f, args, argnums = CASES["attention"]
    got = jax.jit(interpreter.jacobian(f, "auto", argnums=argnums))(*args)
    assert_close(got, jax.jacrev(f, argnums=argnums)(*args))


def _structure(g, src: int, dst: int):
    code = {(e.src, e.dst): e.code for e in g.edges}[(src, dst)]
    return g.structures[code - graph.FIRST_EXTENDED_CODE] if code >= graph.FIRST_EXTENDED_CODE else code


def test_elementwise_is_diagonal_and_data_movement_free_on_every_axis():
    def f(x):
        return jnp.transpose(jnp.exp(x), (1, 0, 2)).reshape(6, 4)

    g = graph.trace(f, jnp.ones((2, 3, 4)), cost_model="exact")
    # exp: a diagonal on each of the three axes; the transpose a relabelling of them (no values);
    # the reshape into (6, 4) an identity, its result split as (3, 2, 4) like its operand.
    assert _structure(g, 1, 2) == graph.axis_ties(3, 3, [(k, k, "D") for k in range(3)])
    assert _structure(g, 2, 3) == graph.axis_ties(3, 3, [(0, 1, "K"), (1, 0, "K"), (2, 2, "K")], False)
    assert _structure(g, 3, 4) == graph.axis_ties(3, 3, [(k, k, "K") for k in range(3)], False)
    assert g.dims[3] == (3, 2, 4)
    # Moving exp's diagonal through the permutation and the reshape multiplies nothing.
    assert graph.cost(g, "forward") == graph.cost(g, "reverse") == 0
    x = jnp.linspace(0.1, 1.0, 24).reshape(2, 3, 4)
    assert_close(interpreter.jacobian(f, "forward")(x), jax.jacfwd(f)(x))


def test_contractions_tie_batch_and_free_axes():
    # A batched matmul ties the batch axis with values (the other operand's entries along it) and
    # each operand's free axis by a Kronecker delta (the other operand, the same along it); a
    # convolution treats every example alike (a Kronecker tie along the batch) and ties its output
    # features to the kernel's ("K": the input's patches, the same for every output feature; "D"
    # with feature groups, each feature reading its group's inputs).
    g = graph.trace(batched_matmul, jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5)), cost_model="exact")
    first = g.node_id(1)
    assert _structure(g, 1, first) == graph.axis_ties(3, 3, [(0, 0, "D"), (1, 1, "K")])
    assert _structure(g, 2, first) == graph.axis_ties(3, 3, [(0, 0, "D"), (2, 2, "K")])
    g = graph.trace(conv2d, jnp.ones((2, 2, 4, 4)), jnp.ones((3, 2, 3, 3)), cost_model="exact")
    assert _structure(g, 1, g.node_id(1)) == graph.axis_ties(4, 4, [(0, 0, "K")])
    assert _structure(g, 2, g.node_id(1)) == graph.axis_ties(4, 4, [(1, 0, "K")])
    g = graph.trace(conv_grouped_1d, *CASES["conv_grouped_1d"][1], cost_model="exact")
    assert _structure(g, 2, g.node_id(1)) == graph.axis_ties(3, 3, [(2, 2, "D")])
    g = graph.trace(conv_depthwise, *CASES["conv_depthwise"][1], cost_model="exact")
    assert _structure(g, 1, g.node_id(1)) == graph.axis_ties(4, 4, [(0, 0, "K"), (1, 1, "D")])
    assert _structure(g, 2, g.node_id(1)) == graph.axis_ties(4, 4, [(1, 0, "D")])


def test_labelled_graphs_never_reach_the_tape():
    # The compact tape executes the 2-D codes only: programs large enough for it keep them.
    from alphagrad.graph import _trace
    from alphagrad.interpreter import _tape

    assert _trace.LABELLED_MAX_EQUATIONS < _tape.TAPE_MIN_EQUATIONS


@pytest.mark.parametrize("name", ["conv2d", "conv_strided_dilated", "conv_grouped_1d", "conv_depthwise"])
def test_convolution_partials_are_gathered_from_the_operands(name, monkeypatch):
    # Both partials of a convolution are gathered from the other operand at their own size
    # (`_convolution.convolution_values`), not by a JVP per entry of the operand's untied axes.
    from alphagrad.interpreter import _jacobian

    gathered = []
    original = _jacobian.convolution_values

    def recorded(*args, **kwargs):
        value = original(*args, **kwargs)
        gathered.append(value is not None)
        return value

    monkeypatch.setattr(_jacobian, "convolution_values", recorded)
    f, args, argnums = CASES[name]
    jax.make_jaxpr(interpreter.jacobian(f, "forward", argnums=argnums))(*args)
    assert gathered == [True, True]
