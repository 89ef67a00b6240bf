"""`interpreter.jacobian`: exact Jacobians in jax.jacrev's structure, and multiplication counts."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import graph, interpreter, orders, tasks
from alphagrad.errors import GraphMismatchError, OrderError


@pytest.fixture(autouse=True, scope="module")
def float64():
    with jax.enable_x64(True):
        yield


def as_float64(args):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if hasattr(x, "dtype") else x, args)


def assert_close(actual, expected, rtol=1e-10):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        scale = max(float(jnp.max(jnp.abs(b))), 1.0) if b.size else 1.0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * scale)


def random_orders(g, count, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.permutation(g.intermediates).tolist()) for _ in range(count)]


CLOSED_FORM = [n for n in tasks.names() if not n.startswith("Random")]
RANDOM_PROGRAMS = ["RandomScalar-0", "RandomTensor-0"]


@pytest.mark.parametrize("name", CLOSED_FORM + RANDOM_PROGRAMS)
def test_tasks_match_jacfwd_and_count_what_the_cost_model_says(name):
    task = tasks.get(name)
    args = as_float64(task.args)
    argnums = tuple(range(len(args)))
    # Python scalars become arrays, as they are inside the jit below (the graph must be the same).
    args = jax.tree.map(jnp.asarray, args)
    g = interpreter.graph_of(task.fn, *args, argnums=argnums)
    assert g.cost_model == "exact"
    # Reverse and one random order executed, two more random orders counted (tests/interpreter/
    # test_plan.py replays forward, reverse, Markowitz and the first random order on every task,
    # checking each product and the count against the plan; test_properties.py replays many more
    # orders on random programs, and the corpus tests execute forward and Markowitz orders on 135
    # functions; every executed order adds a compilation of the task, the suite's largest cost, and
    # every counted one an abstract trace of it).
    extra = random_orders(g, 3)
    executed = ["reverse", extra[0]]

    # One compilation (executing op by op was slow), without XLA's optimisation passes: compiling
    # these programs of thousands of operations is the test's whole cost, running them is not.
    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def reference_and_all_orders(*xs):
        return jax.jacfwd(task.fn, argnums=argnums)(*xs), [
            interpreter.jacobian(task.fn, order, argnums=argnums)(*xs) for order in executed
        ]

    expected, results = reference_and_all_orders(*args)
    for actual in results:
        assert_close(actual, expected)
    for order in [*executed, *extra[1:]]:
        assert interpreter.count_muls(task.fn, order, *args, argnums=argnums) == graph.cost(g, order)


def test_worked_example_counts():
    def loss(W, x):
        return jnp.sum(jnp.tanh(W @ x) ** 2)

    W, x = jnp.arange(12.0).reshape(3, 4) / 10, jnp.ones(4)
    assert interpreter.count_muls(loss, "reverse", W, x, argnums=(0, 1)) == graph.cost(
        interpreter.graph_of(loss, W, x, argnums=(0, 1)), "reverse"
    )
    assert_close(interpreter.jacobian(loss, "forward", argnums=(0, 1))(W, x), jax.jacrev(loss, argnums=(0, 1))(W, x))


def test_pytrees_in_and_out_and_argnums():
    def f(params, x, scale):
        h = jnp.tanh(params["w"] @ x + params["b"])
        return {"h": h * scale, "s": (jnp.sum(h), jnp.sin(x))}

    params = {"w": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.array([0.1, -0.2])}
    x = jnp.array([0.3, -0.5, 0.9])
    for argnums in (0, 1, (0, 1), (1, 2), (2, 0)):
        for order in ("forward", "reverse", "markowitz"):
            assert_close(
                interpreter.jacobian(f, order, argnums=argnums)(params, x, 1.5),
                jax.jacrev(f, argnums=argnums)(params, x, 1.5),
            )


def test_has_aux():
    def f(x):
        y = jnp.sin(x) * x
        return y, {"norm": jnp.sum(y**2)}

    x = jnp.linspace(0.1, 1.0, 4)
    jac, aux = interpreter.jacobian(f, "reverse", has_aux=True)(x)
    expected_jac, expected_aux = jax.jacrev(f, has_aux=True)(x)
    assert_close(jac, expected_jac)
    assert_close(aux, expected_aux)


def test_jit_and_vmap():
    def f(x, y):
        return jnp.stack([x[0] * y, jnp.exp(x[1]) - y])

    jac = interpreter.jacobian(f, "markowitz", argnums=(0, 1))
    xs = jnp.linspace(0.1, 1.0, 10).reshape(5, 2)
    ys = jnp.linspace(-1.0, 1.0, 5)
    batched = jax.jit(jax.vmap(jac))(xs, ys)
    expected = jax.vmap(jax.jacrev(f, argnums=(0, 1)))(xs, ys)
    assert_close(batched, expected)


def test_float32():
    def f(x):
        return jnp.tanh(x) * jnp.cos(x)

    x = jnp.linspace(0.1, 1.0, 3, dtype=jnp.float32)
    actual = interpreter.jacobian(f, "forward")(x)
    assert actual.dtype == jnp.float32
    assert_close(actual, jax.jacrev(f)(x), rtol=1e-6)


def test_python_scalar_inputs():
    def f(a, b):
        return jnp.arcsinh(a * b) + a

    actual = interpreter.jacobian(f, "reverse", argnums=(0, 1))(0.5, 2.0)
    expected = jax.jacrev(f, argnums=(0, 1))(0.5, 2.0)
    assert_close(actual, expected)
    assert float(actual[0]) != 0.0


def test_nondifferentiable_points_follow_jacfwd():
    def f(x):
        return jnp.maximum(x, 0.0) + jnp.abs(x) + jnp.where(x > 0, x, 2 * x)

    x = jnp.array([-1.0, 0.0, 1.0])
    assert_close(interpreter.jacobian(f, "forward")(x), jax.jacfwd(f)(x))


def test_graph_is_traced_once_per_signature():
    calls = []

    def f(x):
        calls.append(1)
        return jnp.sin(x)

    jac = interpreter.jacobian(f, "reverse")
    jac(jnp.ones(3))
    traced = len(calls)
    jac(jnp.zeros(3))
    assert len(calls) == traced
    jac(jnp.ones(4))
    assert len(calls) > traced


def test_order_file_for_another_function_is_refused(tmp_path):
    def f(x):
        return jnp.sin(x) * x

    def h(x):
        return jnp.exp(jnp.cos(x) + x)

    x = jnp.ones(3)
    g = interpreter.graph_of(h, x)
    orders.save(tmp_path / "h.json", orders.reverse(g), graph=g)
    record = orders.load(tmp_path / "h.json")
    assert_close(interpreter.jacobian(h, record)(x), jax.jacrev(h)(x))
    with pytest.raises(GraphMismatchError, match="made for another graph"):
        interpreter.jacobian(f, record)(x)


def test_bad_orders_raise_before_any_computation():
    def f(x):
        return jnp.sin(jnp.cos(x))

    with pytest.raises(OrderError, match="appears twice"):
        interpreter.jacobian(f, [1, 1])(jnp.ones(2))
    with pytest.raises(OrderError, match="an output vertex"):
        interpreter.jacobian(f, [1, 2])(jnp.ones(2))
    with pytest.raises(OrderError, match="unknown order name"):
        interpreter.jacobian(f, "sideways")(jnp.ones(2))


def test_a_primitive_without_rule_is_differentiated_densely():
    # cumsum has no structural rule: once refused, now a dense vertex (tests/interpreter/test_any_primitive.py)
    x = jnp.linspace(0.1, 1.0, 3)
    assert_close(interpreter.jacobian(jnp.cumsum, "reverse")(x), jax.jacrev(jnp.cumsum)(x))


def test_three_dimensional_arrays_are_differentiated():
    def f(x):
        return jnp.sum(jnp.sin(x.reshape(2, 2, 2)), axis=0)

    x = jnp.linspace(0.1, 1.0, 8)
    assert_close(interpreter.jacobian(f, "reverse")(x), jax.jacrev(f)(x))


def test_order_file_from_the_default_trace_is_accepted(tmp_path):
    def f(x):
        return jnp.sum(jnp.tanh(x) * x)

    x = jnp.linspace(0.1, 1.0, 4)
    g = graph.trace(f, x)  # the AlphaGrad model, as `alphagrad baselines` writes them
    assert g.cost_model == "alphagrad-2024"
    orders.save(tmp_path / "f.json", orders.markowitz(g), graph=g)
    record = orders.load(tmp_path / "f.json")
    assert_close(interpreter.jacobian(f, record)(x), jax.jacrev(f)(x))
    with pytest.raises(GraphMismatchError):
        interpreter.jacobian(lambda y: jnp.sum(jnp.sin(y)), record)(x)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: jnp.pad(x, (1, 2), constant_values=x[0]) * 2.0,  # a traced padding value
        lambda x: jnp.sum(jnp.pad(x, 1)[1:-1] * x),
        lambda x: jnp.concatenate([x, x[:2] * 3.0, x]),
        lambda x: jnp.flip(x) * jax.device_put(x) + jnp.copy(x),
        lambda x: jax.lax.dynamic_update_slice(x, x[:2] ** 2, (1,)),
        lambda x: jax.lax.dynamic_slice(x, (1,), (2,)) * x[0],
        lambda x: jnp.stack([x, 2.0 * x]).T @ jnp.ones(2),
        lambda x: jnp.broadcast_to(x, (3, 4)) * x[:3, None],
        lambda x: (lambda m: jnp.sin(m @ m).T @ m)(x.reshape(2, 2)),  # both operands of a product
    ],
)
def test_structural_primitives(fn):
    x = jnp.linspace(0.1, 1.0, 4)
    for order in ("forward", "reverse", "markowitz"):
        assert_close(interpreter.jacobian(fn, order)(x), jax.jacfwd(fn)(x))


@pytest.mark.parametrize("spec", ["ij,jk->ik", "ji,jk->ik", "ij,kj->ik", "i,ij->j", "ij,j->i", "i,i->",
                                  "ij,ij->i", "ij,ik->jk", "i,j->ij", "ij,ji->"])
@pytest.mark.parametrize("by_selection", [False, True])
def test_dot_general_partials_by_selection_and_by_seeds(spec, by_selection, monkeypatch):
    """Both ways of evaluating a dot_general partial (selection off the other operand, seeded JVP)
    give jax.jacfwd's Jacobian for every layout of batch, contracting and free axes."""
    from alphagrad.interpreter import _jacobian

    monkeypatch.setattr(_jacobian, "DOT_BY_SELECTION", by_selection)
    lhs_spec, rhs_spec = spec.split("->")[0].split(",")
    sizes = {"i": 3, "j": 4, "k": 2}
    a = jnp.linspace(0.2, 1.4, math.prod(sizes[c] for c in lhs_spec)).reshape([sizes[c] for c in lhs_spec])
    b = jnp.linspace(-0.7, 0.9, math.prod(sizes[c] for c in rhs_spec)).reshape([sizes[c] for c in rhs_spec])

    def fn(a, b):
        return jnp.tanh(jnp.einsum(spec, jnp.sin(a), b * 2.0))

    for order in ("forward", "reverse"):
        assert_close(interpreter.jacobian(fn, order, argnums=(0, 1))(a, b), jax.jacfwd(fn, argnums=(0, 1))(a, b))
        g = interpreter.graph_of(fn, a, b, argnums=(0, 1))
        assert interpreter.count_muls(fn, order, a, b, argnums=(0, 1)) == graph.cost(g, order)


def test_auto_order_is_searched_once_and_cached_on_disk(tmp_path, monkeypatch):
    from alphagrad.agents import portfolio

    monkeypatch.setenv("ALPHAGRAD_CACHE", str(tmp_path))
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0.5")
    searches = []
    real_search = portfolio.search

    def counting_search(graph, method="best", **kwargs):
        searches.append(graph.fingerprint)
        return real_search(graph, method, **kwargs)

    monkeypatch.setattr(portfolio, "search", counting_search)

    def f(x):
        return jnp.sin(x) * jnp.cos(x) + x[0]

    x = jnp.linspace(0.1, 1.0, 3)
    assert_close(interpreter.jacobian(f, "auto")(x), jax.jacrev(f)(x))
    assert len(searches) == 1
    cached = list((tmp_path / "orders").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("sha256-")
    # a new jacobian of the same function reuses the file
    assert_close(interpreter.jacobian(f, "auto")(x + 1.0), jax.jacrev(f)(x + 1.0))
    assert len(searches) == 1

    def h(x):  # a changed function: another graph, another search
        return jnp.exp(jnp.sin(x) * x) / (1.0 + x)

    assert_close(interpreter.jacobian(h, "auto")(x), jax.jacrev(h)(x))
    assert len(searches) == 2 and len(list((tmp_path / "orders").iterdir())) == 2


def test_keyword_arguments_are_passed_on_and_not_differentiated():
    def f(x, w, *, scale=1.0, bias=None):
        return jnp.tanh(w @ x * scale + (0.0 if bias is None else bias))

    x, w, bias = jnp.arange(3.0) / 5, jnp.ones((2, 3)) / 3, jnp.array([0.1, 0.2])
    for argnums in ((0, 1), -1):
        jac = jax.jit(interpreter.jacobian(f, "reverse", argnums=argnums))
        assert_close(jac(x, w, scale=2.0, bias=bias), jax.jacrev(f, argnums=argnums)(x, w, scale=2.0, bias=bias))
        assert_close(jac(x, w, scale=3.0), jax.jacrev(f, argnums=argnums)(x, w, scale=3.0))


@pytest.mark.parametrize("spec", [
    "ij,jk->ik", "ij,kj->ki", "ijk,ik->ji", "ab,bc->", "i,i->", "ij,j->i", "ab,ab->ab", "ib,jb->ij", "ij,jk->ki",
])
@pytest.mark.parametrize("large", [False, True])
def test_contractions_fused_or_by_dot_general_agree_with_einsum(spec, large, monkeypatch):
    from alphagrad.interpreter import _structured

    if large:  # past the unrolling limits: dot_general
        monkeypatch.setattr(_structured, "UNROLL_CONTRACTION", 0)
    inputs, result = spec.split("->")
    letters_a, letters_b = inputs.split(",")
    size = dict(zip("abcijk", (3, 1, 4, 2, 5, 3)))
    rng = np.random.default_rng(len(spec))
    a = rng.normal(size=[size[c] for c in letters_a]).astype(np.float32)
    b = rng.normal(size=[size[c] for c in letters_b]).astype(np.float32)
    got = _structured.contract(letters_a, jnp.asarray(a), letters_b, jnp.asarray(b), result)
    np.testing.assert_allclose(np.asarray(got), np.einsum(spec, a, b), rtol=1e-5, atol=1e-6)


def test_an_empty_contraction_is_zero():
    from alphagrad.interpreter import _structured

    got = _structured.contract("ij", jnp.ones((3, 0)), "jk", jnp.ones((0, 2)), "ik")
    np.testing.assert_array_equal(np.asarray(got), np.zeros((3, 2)))


def test_dense_partials_take_small_dot_products_of_their_rules_fused():
    # eigh's and cholesky's JVP rules multiply 3x3 matrices per seed: evaluated as fused sums, the
    # Jacobian is jax.jacfwd's, under vmap too, and the compiled program has no batched dot left
    # but the primal's a @ a.T
    from alphagrad.interpreter import _jacobian

    def f(a):
        values, vectors = jnp.linalg.eigh(a + a.T)
        return jnp.linalg.cholesky(a @ a.T + jnp.eye(3)), values, vectors[:, 0] ** 2

    a = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3, 3)), jnp.float32)
    ours = jax.jit(jax.vmap(interpreter.jacobian(f, "reverse")))
    for got, want in zip(ours(a), jax.vmap(jax.jacfwd(f))(a)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5)
    assert ours.lower(a).compile().as_text().count("lhs_batch_dims=") == 1
    lhs, rhs = jnp.ones((2, 3, 4)), jnp.arange(24.0).reshape(2, 4, 3)
    numbers = (((2,), (1,)), ((0,), (0,)))
    np.testing.assert_allclose(np.asarray(_jacobian._dot_general_by_contract(lhs, rhs, dimension_numbers=numbers)),
                               np.asarray(jax.lax.dot_general(lhs, rhs, numbers)))


def test_eager_calls_compile_the_elimination_once_per_signature(monkeypatch):
    """Called outside any transformation, the Jacobian runs compiled (one jit per input
    signature, not op by op) and equals the traced one."""
    from alphagrad.interpreter import _jacobian

    calls = []
    real = _jacobian._eliminate_all
    monkeypatch.setattr(_jacobian, "_eliminate_all", lambda *a: calls.append(1) or real(*a))

    def fn(x, w):
        return jnp.tanh(w @ x) * x[0]

    jac = interpreter.jacobian(fn, "markowitz", argnums=(0, 1))
    x, w = jnp.linspace(-0.5, 0.5, 3), jnp.eye(3) * 0.7
    first = jac(x, w)
    second = jac(x * 2.0, w)
    assert len(calls) == 1  # traced once, replayed compiled
    for a, b in zip(second, jax.jacfwd(fn, argnums=(0, 1))(x * 2.0, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert all(isinstance(a, jax.Array) for a in first)


def test_python_arguments_outside_argnums_pass_through_as_jax_does():
    """A mode string or a callable outside argnums stays a Python value (f branches on it),
    positional or by keyword; graph_of and count_muls bind it the same way."""
    def f(x, mode, w, activation=jnp.sin):
        return (jnp.tanh(x) if mode == "tanh" else activation(x)) * w

    x, w = jnp.array([0.3, -0.5]), jnp.array([2.0, 3.0])
    jac = interpreter.jacobian(f, "reverse", argnums=(0, 2))
    for mode in ("tanh", "sin"):  # one jacobian object, two bound values
        assert_close(jac(x, mode, w), jax.jacfwd(f, argnums=(0, 2))(x, mode, w))
    assert_close(jac(x, "other", w, activation=jnp.cos), jax.jacfwd(f, argnums=(0, 2))(x, "other", w, activation=jnp.cos))
    assert_close(jax.jit(jac, static_argnums=1)(x, "tanh", w), jax.jacfwd(f, argnums=(0, 2))(x, "tanh", w))
    g = interpreter.graph_of(f, x, "tanh", w, argnums=(0, 2))
    assert interpreter.count_muls(f, "reverse", x, "tanh", w, argnums=(0, 2)) == graph.cost(g, "reverse")


def test_dense_partials_of_few_outputs_and_many_inputs_are_built_by_rows():
    """A maximum and a product over a long vector: dense 1 x n partials, built by one VJP row each
    (n one-hot JVP seeds would hold an n x n identity: 32 GB at n = 65,536); exact and counted."""
    n = 2048

    def f(u):
        y = jnp.sin(u) * u
        return jnp.stack([jnp.max(y), jnp.prod(1 + 1e-4 * y)])

    with jax.enable_x64(True):
        u = jnp.linspace(0.0, 3.0, n)
        jaxpr = jax.make_jaxpr(interpreter.jacobian(f, "reverse"))(u)
        largest = max(math.prod(v.aval.shape) for e in jaxpr.jaxpr.eqns for v in e.outvars)
        assert largest < n * n // 4
        np.testing.assert_allclose(np.asarray(jax.jit(interpreter.jacobian(f, "reverse"))(u)),
                                   np.asarray(jax.jacrev(f)(u)), rtol=1e-12, atol=1e-15)
        g = interpreter.graph_of(f, u)
        assert interpreter.count_muls(f, "forward", u) == graph.cost(g, "forward")


def test_the_tape_takes_vectors_of_more_than_4096_entries_up_to_its_total(monkeypatch):
    """A diffusion step on a 5,000-point grid runs on the tape (values up to
    `_tape.MAX_COMPONENTS` = 16,384 entries), exact; past `_tape.MAX_VALUE_SLOTS` entries in all the
    tape refuses it (the straight-line path takes it)."""
    from alphagrad.graph import _trace
    from alphagrad.interpreter import _tape

    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)

    def f(u, p):
        u = u + 0.01 * (jnp.roll(u, 1) - 2 * u + jnp.roll(u, -1)) * p[0] - 0.01 * u**3
        return jnp.stack([jnp.sum(u**2), u[0] * p[1]])

    with jax.enable_x64(True):
        args = (jnp.sin(jnp.linspace(0.0, 6.0, 5000)), jnp.array([1.0, 0.5]))
        g = interpreter.graph_of(f, *args, argnums=(0, 1))
        order = graph.resolve_order(g, "reverse")
        assert _tape.build(g, graph.plan(g, order)).muls == graph.cost(g, order)
        got = jax.jit(interpreter.jacobian(f, "reverse", argnums=(0, 1)))(*args)
        for a, b in zip(got, jax.jacrev(f, argnums=(0, 1))(*args)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
        monkeypatch.setattr(_tape, "MAX_VALUE_SLOTS", 10_000)
        with pytest.raises(_tape.Unsupported, match="entries in all"):
            _tape.build(g, graph.plan(g, order))
