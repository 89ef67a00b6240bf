"""The interpreter replays the elimination engine's plan: the same products, codes and multiplications.

Everything runs under `jax.eval_shape` (tracing only, no XLA compilation).
"""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from alphagrad import graph, interpreter, tasks
from alphagrad.errors import AlphagradError
from alphagrad.interpreter._jacobian import _eliminate_all
from alphagrad.interpreter._structured import MultiplicationCounter


def replayed(f, order, *args):
    """(graph, resolved order, the products the interpreter performed, the multiplications it counted)."""
    argnums = tuple(range(len(args)))
    g = interpreter.graph_of(f, *args, argnums=argnums)
    resolved = graph.resolve_order(g, order)
    counter = MultiplicationCounter()
    performed = []

    def run(*xs):
        performed.extend(_eliminate_all(g, graph.plan(g, resolved), jax.tree.leaves(xs), counter)[2])
        return 0

    jax.eval_shape(run, *args)
    return g, resolved, performed, counter.total


def assert_replays_the_plan(f, order, *args):
    g, resolved, performed, counted = replayed(f, order, *args)
    planned = [product for step in graph.plan(g, resolved) for product in step.products]
    assert [(p.pred, p.vertex, p.succ) for p in performed] == [(p.pred, p.vertex, p.succ) for p in planned]
    assert performed == planned  # codes, old and sum codes, multiplications
    assert counted == sum(p.muls for p in planned) == graph.cost(g, resolved)


@pytest.mark.parametrize("name", tasks.names())
def test_tasks_replay_the_engines_plan(name):
    task = tasks.get(name)
    g = interpreter.graph_of(task.fn, *task.args, argnums=tuple(range(len(task.args))))
    random_order = np.random.default_rng(0).permutation(g.intermediates).tolist()
    for order in ("forward", "reverse", "markowitz", random_order):
        assert_replays_the_plan(task.fn, order, *task.args)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10_000),
    st.sampled_from(["scalar", "tensor"]),
    st.integers(1, 12),
    st.randoms(use_true_random=False),
)
def test_random_programs_replay_the_engines_plan(seed, kind, num_statements, rnd):
    task = tasks.random_program(seed, kind, num_statements=num_statements)
    g = interpreter.graph_of(task.fn, *task.args, argnums=tuple(range(len(task.args))))
    order = list(g.intermediates)
    rnd.shuffle(order)
    assert_replays_the_plan(task.fn, order, *task.args)


def test_a_product_that_departs_from_the_plan_is_an_internal_error(monkeypatch):
    task = tasks.get("RandomTensor-0")
    real_plan = graph.plan

    def wrong_plan(g, order):
        steps = list(real_plan(g, order))
        k = next(i for i, s in enumerate(steps) if any(p.muls for p in s.products))
        products = [p._replace(muls=p.muls + 1) if p.muls else p for p in steps[k].products]
        steps[k] = steps[k]._replace(products=tuple(products))
        return tuple(steps)

    monkeypatch.setattr("alphagrad.interpreter._jacobian.plan", wrong_plan)
    with pytest.raises(AlphagradError, match="internal error while eliminating vertex"):
        interpreter.count_muls(task.fn, "reverse", *task.args, argnums=tuple(range(len(task.args))))


def test_count_muls_returns_what_the_traced_jacobian_counted():
    """After jacobian(f, order) is traced, count_muls(f, order) is the count of that trace (the same
    number a fresh abstract trace gives); another plan or other shapes trace afresh."""
    from alphagrad.interpreter import _jacobian

    def f(x, w):
        h = jax.numpy.tanh(w @ x)
        return jax.numpy.sin(h) * h[::-1], jax.numpy.sum(h * x[:3])

    x, w = jax.numpy.linspace(0.1, 1.0, 4), jax.numpy.ones((3, 4)) / 4
    fresh = {o: interpreter.count_muls(f, o, x, w, argnums=(0, 1)) for o in ("forward", "reverse", "markowitz")}
    assert f not in _jacobian._PERFORMED  # counting alone records nothing
    jax.jit(interpreter.jacobian(f, "markowitz", argnums=(0, 1))).lower(x, w)
    (recorded,) = _jacobian._PERFORMED[f].values()
    assert recorded == fresh["markowitz"] == interpreter.count_muls(f, "markowitz", x, w, argnums=(0, 1))
    g = interpreter.graph_of(f, x, w, argnums=(0, 1))
    assert fresh == {o: graph.cost(g, o) for o in fresh}
    # Not recorded: another order, other shapes; both are counted by tracing, as before.
    assert interpreter.count_muls(f, "forward", x, w, argnums=(0, 1)) == fresh["forward"]
    x5, w5 = jax.numpy.ones(5), jax.numpy.ones((3, 5))
    assert interpreter.count_muls(f, "markowitz", x5, w5, argnums=(0, 1)) == graph.cost(
        interpreter.graph_of(f, x5, w5, argnums=(0, 1)), "markowitz")
    assert len(_jacobian._PERFORMED[f]) == 1
