"""The portfolio, `optimize`, and the `search` command."""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import pytest

from alphagrad import cli, graph, interpreter, orders
from alphagrad.errors import AlphagradError
from alphagrad.agents import METHODS, SearchError, alphazero_status, optimize, search


def test_best_proves_propane_optimal_quickly(reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    start = time.perf_counter()
    r = search(g, "best", seconds=10)
    assert r.optimal and r.cost == 88 == graph.cost(g, list(r.order))
    assert time.perf_counter() - start < 11


def test_best_honours_a_short_budget(reference_graphs):
    g = reference_graphs["HumanHeartDipole"]
    start = time.perf_counter()
    r = search(g, "best", seconds=2)
    assert time.perf_counter() - start < 3.0
    assert r.cost == graph.cost(g, list(r.order))


def test_unknown_method(diamond):
    with pytest.raises(SearchError, match="unknown search method"):
        search(diamond, "nope")
    assert "alphazero" in METHODS


def test_alphazero_status_is_reported():
    ok, message = alphazero_status()
    assert isinstance(ok, bool) and message


def _f(x, w):
    return jnp.sin(w @ x) * jnp.exp(x[:2]).sum()


def test_optimize_returns_an_order_file_for_the_interpreter_graph():
    x, w = jnp.ones(3), jnp.ones((2, 3))
    record = optimize(_f, x, w, minutes=0.02, method="heuristics", argnums=(0, 1))
    g = interpreter.graph_of(_f, x, w, argnums=(0, 1))
    assert record.graph["fingerprint"] == g.fingerprint
    assert record.multiplications == graph.cost(g, record) <= min(record.baselines.values())
    orders.resolve(g, record)  # applies to the graph without a mismatch


def test_search_command_writes_an_order_file(tmp_path, capsys):
    out = tmp_path / "order.json"
    assert cli.main(["search", "ref:PropaneCombustion", "--method", "heuristics", "--minutes", "0.01",
                     "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["method"] == "heuristics" and data["multiplications"] == 88
    assert "published (AlphaGrad): 88" in capsys.readouterr().out


def test_best_searches_per_head_attention_with_the_batched_searches():
    # Per-head attention (arrays of rank 4): the closure of its labelled structures under every
    # product and sum does not fit the env's codes, the codes its eliminations can meet do; the
    # batched searches run on those tables and agree with the engine.
    def heads(x, w):
        q = jnp.einsum("btd,de->bte", x, w).reshape(2, 3, 2, 2)
        s = jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, q))
        return jnp.einsum("bhts,bshd->bthd", s, q).reshape(2, 3, 4)

    g = interpreter.graph_of(heads, jnp.ones((2, 3, 4)), jnp.ones((4, 4)), argnums=(0, 1))
    model = graph.cost_model_of(g)
    with pytest.raises(AlphagradError, match="do not close"):
        model.tables()
    assert model.tables(g).num_codes <= 128
    result = search(g, method="sa", seconds=1.0)
    assert result.cost == graph.cost(g, result.order)
    assert result.cost <= min(graph.cost(g, o) for o in ("forward", "reverse", "markowitz"))
