"""`order="auto"` (`agents.portfolio.auto_order`) wherever a user calls it (issue 14, items 4, 5, 6, 15).

Every test searches with a tiny budget in an empty cache of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import files, graph, interpreter, orders, tasks
from alphagrad.agents import anneal, beam_search, heuristic_order, portfolio
from alphagrad.agents.heuristics import DEFAULT_CHAINS
from alphagrad.errors import AlphagradError


def heat_step(u):
    """An explicit heat-equation step: Markowitz costs 3968x more than reverse mode on it."""
    return u[1:-1] + 0.1 * (u[2:] - 2.0 * u[1:-1] + u[:-2])


def smooth(x):
    return jnp.sin(x) * jnp.cos(x) + x[0] * x[1]


X = jnp.linspace(0.1, 1.0, 16)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache directory and a tiny search budget."""
    monkeypatch.setenv("ALPHAGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0.3")
    return tmp_path / "cache"


def cached_files(cache) -> list[str]:
    directory = cache / "orders"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def assert_jacobian(fn, x, order="auto"):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the normal path warns about nothing
        np.testing.assert_allclose(jax.jit(interpreter.jacobian(fn, order))(x), jax.jacrev(fn)(x), rtol=1e-5, atol=1e-6)


def floor_cost(g) -> int:
    """The cheapest of forward, reverse, Markowitz and every deterministic heuristic chain, computed here."""
    costs = [graph.cost(g, name) for name in ("forward", "reverse", "markowitz")]
    return min(costs + [heuristic_order(g, chain)[1] for chain in DEFAULT_CHAINS])


# ---- item 4: "auto" under jax.jit with an empty cache; failures never break later calls ----------------------


def test_auto_under_jit_runs_the_jitted_searches_outside_the_trace(cache, monkeypatch):
    """Beam search and annealing (jitted, on the batched core) used to run inside the user's trace:
    TracerArrayConversionError, and an evaluator cached with tracers broke every later call."""
    ran = []

    def jitted_searches(g, method, *, seconds):  # "best" with a tiny budget stops before beam and annealing
        ran.append(method)
        beam = beam_search(g, seconds=300, width=4, per_state=2, max_passes=1)
        sa = anneal(g, seconds=300, chains=8, max_iterations=4, init_orders=[beam.order])
        return min(beam, sa, key=lambda r: r.cost)

    monkeypatch.setattr(portfolio, "search", jitted_searches)
    assert_jacobian(heat_step, X)
    assert ran == ["best"] and len(cached_files(cache)) == 1
    assert_jacobian(heat_step, X)  # from the cache file: no second search
    assert ran == ["best"]


def test_a_failed_search_warns_gives_the_best_classic_order_and_breaks_nothing(cache, monkeypatch):
    real_search = portfolio.search

    def failing(g, method, *, seconds):
        raise RuntimeError("the search fell over")

    monkeypatch.setattr(portfolio, "search", failing)
    g = interpreter.graph_of(heat_step, X)
    failed = r"order='auto': the search for .* failed \(RuntimeError: the search fell over\)"
    with pytest.warns(UserWarning, match=failed):
        jac = jax.jit(interpreter.jacobian(heat_step, "auto"))(X)
    np.testing.assert_allclose(jac, jax.jacrev(heat_step)(X), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="failed"):
        assert graph.cost(g, "auto") == floor_cost(g) == graph.cost(g, "reverse")
    assert cached_files(cache) == []  # a fallback is never cached
    monkeypatch.setattr(portfolio, "search", real_search)
    assert_jacobian(heat_step, X)  # the same process, the same graph: searched and cached now
    assert len(cached_files(cache)) == 1


def test_an_evaluator_first_built_inside_a_trace_holds_no_tracers():
    """The batched searches' evaluator cache outlives any trace: it must never keep a tracer."""
    from alphagrad.agents._batch import evaluator

    g = interpreter.graph_of(heat_step, jnp.ones(13))  # a graph no other test builds an evaluator for

    def traced(x):
        evaluator(g)
        return x

    jax.jit(traced)(1.0)
    assert not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(evaluator(g).init))
    assert beam_search(g, seconds=300, width=2, per_state=2, max_passes=1).cost <= graph.cost(g, "reverse")


# ---- item 5: "auto", annealing, beam and optimize with jax_enable_x64 set globally -------------------------

_X64_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    import alphagrad
    from alphagrad import graph, interpreter
    from alphagrad.agents import beam_search

    def f(u):
        return u[1:-1] + 0.1 * (u[2:] - 2.0 * u[1:-1] + u[:-2])

    x = jnp.linspace(0.1, 1.0, 16)
    assert x.dtype == jnp.float64
    jac = jax.jit(interpreter.jacobian(f, "auto"))(x)
    assert jac.dtype == jnp.float64 and np.allclose(jac, jax.jacrev(f)(x))
    g = interpreter.graph_of(f, x)
    r = beam_search(g, seconds=300, width=4, per_state=2, max_passes=1)
    assert r.cost == graph.cost(g, list(r.order)), r
    record = alphagrad.optimize(f, x, minutes=0.02, method="sa")  # the annealing, under x64
    assert record.multiplications == graph.cost(g, record)
    print("x64 ok")
    """
)


def test_auto_annealing_and_optimize_with_x64_enabled_globally(tmp_path):
    env = dict(os.environ, ALPHAGRAD_CACHE=str(tmp_path), ALPHAGRAD_AUTO_SECONDS="0.3", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _X64_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "x64 ok" in done.stdout, done.stderr[-3000:]


# ---- item 6: cache files that cannot be read, caches that cannot be written ------------------------------


def test_an_unreadable_cache_file_is_searched_again_and_overwritten(cache):
    g = interpreter.graph_of(smooth, X)
    assert_jacobian(smooth, X)
    (name,) = cached_files(cache)
    path = cache / "orders" / name
    data = json.loads(path.read_text())
    for damage in ("NaN", '"abc"', "null", str(data["multiplications"] + 1)):  # the last one lies
        path.write_text(json.dumps(data).replace(f'"multiplications": {data["multiplications"]}',
                                                 f'"multiplications": {damage}'))
        assert_jacobian(smooth, X)
        repaired = orders.load(path, graph=g)  # overwritten with a valid file
        assert repaired.multiplications == graph.cost(g, repaired)
    path.write_text("{" * 100_000)
    assert_jacobian(smooth, X)
    orders.load(path, graph=g)


def test_a_cache_that_is_a_file_warns_and_still_gives_the_jacobian(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0.3")
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("I am a file\n")
    monkeypatch.setenv("ALPHAGRAD_CACHE", str(not_a_directory))
    not_cached = r"could not cache the order .* Point \$ALPHAGRAD_CACHE at a writable directory"
    with pytest.warns(UserWarning, match=not_cached):
        jac = jax.jit(interpreter.jacobian(smooth, "auto"))(X)
    np.testing.assert_allclose(jac, jax.jacrev(smooth)(X), rtol=1e-5, atol=1e-6)
    assert not_a_directory.read_text() == "I am a file\n"


def test_an_unwritable_cache_directory_warns_and_still_gives_the_jacobian(cache, monkeypatch):
    def denied(*args, **kwargs):  # what mkstemp raises in a read-only directory (also when the tests run as root)
        raise PermissionError(13, "Permission denied", str(cache))

    monkeypatch.setattr(files.tempfile, "mkstemp", denied)
    with pytest.warns(UserWarning, match=r"could not cache the order .*Permission denied"):
        jac = interpreter.jacobian(smooth, "auto")(X)
    np.testing.assert_allclose(jac, jax.jacrev(smooth)(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_search_budget_is_named(cache, monkeypatch, value):
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", value)
    with pytest.raises(AlphagradError, match=rf"ALPHAGRAD_AUTO_SECONDS must be a number of seconds >= 0.*'{value}'"):
        interpreter.jacobian(smooth, "auto")(X)


# ---- item 15: never worse than forward, reverse, Markowitz and the heuristic chains, whatever the budget --------


def test_a_zero_budget_returns_the_floor_at_once_without_searching(cache, monkeypatch):
    monkeypatch.setenv("ALPHAGRAD_AUTO_SECONDS", "0")

    def no_search(*args, **kwargs):
        raise AssertionError("ALPHAGRAD_AUTO_SECONDS=0 must not search")

    monkeypatch.setattr(portfolio, "search", no_search)
    g = interpreter.graph_of(heat_step, X)
    assert graph.cost(g, "markowitz") > graph.cost(g, "reverse")  # where Markowitz is weak on the exact model
    assert graph.cost(g, "auto") == floor_cost(g) == graph.cost(g, "reverse")
    assert_jacobian(heat_step, X)
    assert cached_files(cache) == []  # nothing searched, nothing cached


@pytest.mark.parametrize("name", ["PropaneCombustion", "Perceptron"])
def test_jit_auto_on_tasks_with_x64_is_exact_and_never_worse_than_the_floor(cache, name):
    """Items 4, 5 and 15 on real tasks (every task: benchmarks/auto_everywhere.py)."""
    task = tasks.get(name)
    argnums = tuple(range(len(task.args)))
    with jax.enable_x64(True):
        args = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), task.args)
        ours = jax.jit(interpreter.jacobian(task.fn, "auto", argnums=argnums))(*args)
        ref = jax.jacrev(task.fn, argnums=argnums)(*args)
        g = interpreter.graph_of(task.fn, *args, argnums=argnums)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        assert a.dtype == b.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert len(cached_files(cache)) == 1
    floor = floor_cost(g)
    assert portfolio.floor_order(g).cost == floor
    assert graph.cost(g, "auto") <= floor  # the cached order
    assert portfolio.search(g, "best", seconds=0).cost <= floor
