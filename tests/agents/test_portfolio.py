"""The portfolio, `optimize`, and the `search` / `bench` commands."""

from __future__ import annotations

import json
import time

import jax.numpy as jnp
import pytest

from alphagrad import cli, graph, interpreter, orders
from alphagrad.agents import METHODS, SearchError, alphazero_status, optimize, search
from alphagrad.agents.bench import BenchRow, render_markdown


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


def test_results_markdown_marks_proven_optima(reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    r = search(g, "exact", seconds=5)
    row = BenchRow("ref:PropaneCombustion", g.num_intermediates, {"forward": 151, "reverse": 90, "markowitz": 111},
                   {"exact": r}, 88)
    text = render_markdown([row], seconds=5)
    assert "88 (optimal)" in text and "| ref:PropaneCombustion |" in text
    assert "Not measured in this run" in text  # no task rows, so no interpreter timing


def test_bench_times_the_interpreter_with_the_best_order_of_a_task_with_python_floats():
    from alphagrad.agents.bench import render_markdown, run_bench

    # Perceptron takes Python floats: the searched graph must be the one the timing runs.
    (row,) = run_bench(["Perceptron"], seconds=0.5, runtime=True)
    assert set(row.runtime) == {"ours", "jacfwd", "jacrev"} and all(t > 0 for t in row.runtime.values())
    text = render_markdown([row], seconds=0.5)
    assert "## Interpreter runtime" in text and "| Perceptron |" in text.split("## Interpreter runtime")[1]
