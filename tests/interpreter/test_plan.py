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
