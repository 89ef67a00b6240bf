"""`interpreter.jacobian` at the edges of its domain (issue 14, items 1, 2 and 8).

It never returns a silently wrong result and never a traceback from deep inside JAX: complex
values on a differentiated path and malformed ``has_aux`` results are refused at the boundary
with an error that names the problem; zero-size arrays give exactly jax.jacrev's Jacobian.
Every case runs eagerly and under ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import env, graph, interpreter
from alphagrad.errors import AlphagradError, AuxOutputError, TraceError

MODES = ["eager", "jit"]


def call(fn, mode, *args):
    return jax.jit(fn)(*args) if mode == "jit" else fn(*args)


def assert_same(actual, expected):
    """Same pytree, shapes, dtypes and values."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


# ---- item 1: complex values -----------------------------------------------------------------

Z = jnp.array([1 + 1j, 2.0])


def abs_squared(x):
    return jnp.abs(x) ** 2


@pytest.mark.parametrize("mode", MODES)
def test_complex_input_is_refused_naming_the_argument_and_dtype(mode):
    # jax.jacrev returns the (conjugate-convention) complex derivative here; alphagrad used to
    # return an all-zero float0 array.
    assert jax.jacrev(abs_squared)(Z).dtype == jnp.complex64
    with pytest.raises(TraceError) as info:
        call(interpreter.jacobian(abs_squared), mode, Z)
    message = str(info.value)
    assert "argument 0 of 'abs_squared'" in message and "complex64" in message
    assert "real and imaginary parts as separate real arrays" in message and "jax.jacrev" in message


@pytest.mark.parametrize("mode", MODES)
def test_complex_leaf_in_a_pytree_and_holomorphic_functions_are_refused(mode):
    def weighted(a, params):
        return jnp.sum(params["w"] * a)

    expected = r"argument 1, leaf \['w'\], of 'weighted' is differentiated and has dtype complex64"
    with pytest.raises(TraceError, match=expected):
        call(interpreter.jacobian(weighted, argnums=1), mode, jnp.ones(2), {"w": Z})
    with pytest.raises(TraceError, match="complex64"):
        call(interpreter.jacobian(lambda x: x**2), mode, Z)  # jacrev needs holomorphic=True
    with pytest.raises(TraceError, match="argument 0 .* complex64"):
        interpreter.count_muls(abs_squared, "reverse", Z)


@pytest.mark.parametrize("mode", MODES)
def test_complex_outputs_are_refused_and_intermediates_fused(mode):
    x = jnp.array([0.5, 2.0])

    def through_complex(x):  # real in, real out, complex in between: one fused dense vertex
        return jnp.abs(jnp.exp(1j * x) + x) * x

    def complex_output(x):  # jax.jacrev raises for complex outputs
        return jnp.sin(x), {"z": x * (1 + 1j)}

    def constant_complex_output(x):
        return jnp.sin(x), jnp.ones(2) * (1 + 1j)

    expected = jax.jacrev(through_complex)(x)
    got = call(interpreter.jacobian(through_complex), mode, x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(TraceError) as info:
        call(interpreter.jacobian(complex_output), mode, x)
    message = str(info.value)
    assert "makes a complex64 value from one that depends on a differentiated input" in message
    assert "(primitive 'convert_element_type', from" in message and "test_boundaries.py" in message
    with pytest.raises(TraceError, match=r"output \[1\] of 'constant_complex_output' has dtype complex64: "
                                         r"jacobian needs real-valued outputs"):
        call(interpreter.jacobian(constant_complex_output), mode, x)
    assert any(v.primitive.startswith("complex_span") for v in graph.trace(through_complex, x).vertices)


@pytest.mark.parametrize("mode", MODES)
def test_complex_constants_off_the_differentiated_path_are_fine(mode):
    def f(x, c):
        return jnp.sin(x) * jnp.abs(c)

    x = jnp.array([0.5, 2.0])
    assert_same(call(interpreter.jacobian(f), mode, x, Z), jax.jacrev(f)(x, Z))


@pytest.mark.parametrize("mode", MODES)
def test_integer_inputs_give_float0_blocks(mode):
    # jax.jacrev refuses integer inputs unless allow_int=True, and then returns zeros in the
    # input's integer dtype; alphagrad returns float0 zeros, as jax.grad(allow_int=True) does.
    def f(x, n):
        return jnp.sin(x) * n

    x, n = jnp.array([0.5, 2.0]), jnp.arange(2)
    jac_x, jac_n = call(interpreter.jacobian(f, argnums=(0, 1)), mode, x, n)
    expected_x, expected_n = jax.jacrev(f, argnums=(0, 1), allow_int=True)(x, n)
    assert_same(jac_x, expected_x)
    assert jac_n.shape == expected_n.shape and jac_n.dtype == jax.dtypes.float0


# ---- item 2: has_aux --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "result, description",
    [
        (lambda x: jnp.sin(x), r"an array of shape \(2,\) and dtype float32"),
        (lambda x: (jnp.sin(x), x, x), "a tuple of length 3"),
        (lambda x: [jnp.sin(x)], "a list of length 1"),
        (lambda x: {"out": jnp.sin(x), "aux": x}, r"a dict with keys \['out', 'aux'\]"),
    ],
    ids=["array", "3-tuple", "1-list", "dict"],
)
def test_has_aux_needs_a_pair(result, description, mode):
    x = jnp.array([0.5, 2.0])
    with pytest.raises(TypeError):
        jax.jacrev(result, has_aux=True)(x)
    with pytest.raises(AuxOutputError, match=r"has_aux=True needs f \('<lambda>'\) to return a pair "
                                             rf"\(output, aux\); it returned {description}") as info:
        call(interpreter.jacobian(result, has_aux=True), mode, x)
    assert isinstance(info.value, AlphagradError) and isinstance(info.value, TypeError)


@pytest.mark.parametrize("mode", MODES)
def test_has_aux_pairs_as_tuple_or_list_work(mode):
    x = jnp.array([0.5, 2.0])
    for f in (lambda x: (jnp.sin(x), {"x": x}), lambda x: [(jnp.sin(x), x**2), x]):
        assert_same(call(interpreter.jacobian(f, has_aux=True), mode, x), jax.jacrev(f, has_aux=True)(x))


# ---- item 8: zero-size arrays -----------------------------------------------------------------

ZERO_SIZE = {
    "rows": (lambda x: jnp.sin(x) @ jnp.ones((3, 2)), (jnp.zeros((0, 3)),)),  # the case
    "columns": (lambda x: jnp.sin(x) @ jnp.ones((0, 2)), (jnp.zeros((3, 0)),)),
    "both": (lambda x: jnp.sin(x) @ jnp.ones((0, 2)), (jnp.zeros((0, 0)),)),
    "vector": (lambda x: jnp.sin(x) * x, (jnp.zeros((0,)),)),
    "transpose": (lambda x: jnp.sin(x).T @ jnp.cos(x), (jnp.zeros((0, 3)),)),
    "outer": (lambda x, y: jnp.outer(jnp.sin(x), y), (jnp.zeros(0), jnp.ones(2))),
    "empty contraction": (lambda w, x: jnp.tanh(w @ x), (jnp.ones((2, 0)), jnp.ones(0))),
    "empty output": (lambda x: jnp.sin(jnp.sin(x) @ jnp.ones((3, 0))), (jnp.ones((2, 3)),)),
    "empty slice": (lambda x: jnp.concatenate([jnp.sin(x[:0]), jnp.cos(x)]) * 2, (jnp.ones(3),)),
    "empty intermediate": (lambda x: jnp.sin(x[:0]) @ jnp.ones(0) * x, (jnp.ones(3),)),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(ZERO_SIZE))
def test_zero_size_arrays_match_jacrev_and_the_cost_model(name, mode):
    f, args = ZERO_SIZE[name]
    argnums = tuple(range(len(args)))
    expected = jax.jacrev(f, argnums=argnums)(*args)
    g = interpreter.graph_of(f, *args, argnums=argnums)
    for order in ["forward", "reverse", "markowitz"]:
        assert_same(call(interpreter.jacobian(f, order, argnums=argnums), mode, *args), expected)
        muls = interpreter.count_muls(f, order, *args, argnums=argnums)
        assert muls == graph.cost(g, order)
        # Products over an empty axis multiply nothing; the rest multiply real (nonempty) values.
        assert muls == 0 or name in ("empty slice", "empty intermediate")


def test_zero_size_costs_agree_in_every_engine():
    """An empty axis makes a product cost 0 in the Python engine and in the jitted env core."""
    f, args = ZERO_SIZE["rows"]
    for model in graph.cost_models():
        g = graph.trace(f, *args, cost_model=model)
        assert graph.cost(g, "forward") == graph.cost(g, "reverse") == 0
        order = graph.resolve_order(g, "forward")
        state, rewards, _ = env.rollout(env.init_state(g), jnp.asarray(order, jnp.int32) - 1)
        assert int(state.cost) == 0 and not np.asarray(rewards).any()


def test_numbers_outside_argnums_that_f_loops_on_are_bound_in_every_layer_alike():
    """jacobian(f)(x, 3) as jax.jacfwd(f)(x, 3): the interpreter, graph_of, count_muls and
    graph.jacobian_graph bind the step count alike, so an order made on jacobian_graph's graph
    applies; one jacobian object serves several counts; under jit the count is static."""
    from alphagrad import orders

    def f(x, n, scale=1.0):
        for _ in range(n):
            x = jnp.sin(x) * 1.1
        return x * scale

    x = jnp.array([0.3, -0.5])
    g = graph.jacobian_graph(f, x, 3)
    assert g.program.bound == (1,) and interpreter.graph_of(f, x, 3).fingerprint == g.fingerprint
    assert interpreter.count_muls(f, "markowitz", x, 3) == graph.cost(g, "markowitz")
    order = orders.record(graph.markowitz(g), graph=g)
    jac = interpreter.jacobian(f, order)
    assert_close_jac = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert_close_jac(jac(x, 3), jax.jacfwd(f)(x, 3))
    assert_close_jac(jax.jit(jac, static_argnums=1)(x, 3), jax.jacfwd(f)(x, 3))
    rev = interpreter.jacobian(f, "reverse")
    assert_close_jac(rev(x, 2), jax.jacfwd(f)(x, 2))  # one jacobian object, two counts
    assert_close_jac(rev(x, n=1, scale=2.0), jax.jacfwd(f)(x, n=1, scale=2.0))
    with pytest.raises(TraceError, match="static_argnums"):
        jax.jit(rev)(x, 3)


def test_blocks_take_the_dtype_of_fs_output_not_of_the_computed_value():
    """The tape computes a program mixing float32 and float64 in float64 and hands back float64
    values for float32 outputs; the blocks of a float32 output by float32 inputs stay float32 (as on
    the straight-line path and in jax.jacfwd): the assembly takes the dtypes of the graph's
    outputs, never of the edges it is handed. Checked on the assembly of float64 edges (a tape
    compilation takes seconds)."""
    from alphagrad.graph import plan
    from alphagrad.interpreter import _jacobian
    from alphagrad.interpreter._structured import MultiplicationCounter

    with jax.enable_x64(True):
        w = jnp.asarray(np.eye(2) * 0.5)  # float64

        def f(a, b):
            return a * b, w @ jnp.sin(a) + b

        a, b = jnp.array([0.3, -0.2], jnp.float32), jnp.array([1.0, 2.0], jnp.float32)
        g = interpreter.graph_of(f, a, b, argnums=(0, 1))
        # The eliminated edges computed in float64, as the tape computes them.
        leaves = [a.astype(jnp.float64), b.astype(jnp.float64)]
        widened = _jacobian._eliminate_all(g, plan(g, graph.resolve_order(g, "reverse")), leaves, MultiplicationCounter())[1]
        dtypes = {np.asarray(x).dtype for e in widened.values() for x in jax.tree.leaves(e)}
        floats = {d for d in dtypes if jnp.issubdtype(d, jnp.floating)}
        assert floats == {np.dtype(np.float64)}
        blocks = _jacobian._assemble(g, widened, (0, 1), (a, b))
        expected = jax.eval_shape(jax.jacfwd(f, argnums=(0, 1)), a, b)
        assert jax.tree.map(lambda x: x.dtype, blocks) == jax.tree.map(lambda x: x.dtype, expected)


def test_a_weight_partial_is_gathered_at_its_own_size_not_seeded():
    """d(x @ W)/dW is x itself (a Kronecker tie on W's output axis). It is read off x entry by
    entry: seeding it built one-hots of W's rows broadcast over its columns and multiplied x by each
    (a 784 x 128 weight and a batch of 32 took 656 MB of temporaries where jax.jacrev takes 1 MB)."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 300)))
        W = jnp.asarray(np.random.default_rng(1).normal(size=(300, 40)) * 0.1)

        def loss(W, x):
            return jnp.sum(jnp.tanh(x @ W) ** 2)

        fn = jax.jit(interpreter.jacobian(loss, "reverse"))
        temporaries = fn.lower(W, x).compile().memory_analysis().temp_size_in_bytes
        assert temporaries < 1e6  # seeded: 300 x 300 x 40 one-hots, 29 MB
        np.testing.assert_allclose(fn(W, x), jax.grad(loss)(W, x), rtol=1e-10)


def test_gathered_dot_general_partials_equal_jacfwd_in_every_layout(monkeypatch):
    """The gathered values (`_dot_general_value`, where the direct construction does not apply),
    forced on small products with batch, contracting and free axes on either side, give
    jax.jacfwd's Jacobian."""
    from alphagrad.interpreter import _jacobian

    monkeypatch.setattr(_jacobian, "DOT_DIRECT", False)
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        a, b, c = (jnp.asarray(rng.normal(size=shape)) for shape in ((2, 3, 2), (2, 2, 3), (3, 2)))

        def f(a, b, c):  # the partials' values do not depend on the order: one order suffices
            return (jnp.einsum("bij,bjk->bik", a, b), jnp.einsum("bti,ij->btj", a, c[:2]),
                    jnp.einsum("ij,kl->ijkl", c, c[::-1]))

        J = jax.jit(interpreter.jacobian(f, "reverse", argnums=(0, 1, 2)))(a, b, c)
        expected = jax.jit(jax.jacfwd(f, argnums=(0, 1, 2)))(a, b, c)  # eagerly: 5 s of dispatch
        for x, y in zip(jax.tree.leaves(J), jax.tree.leaves(expected)):
            np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
