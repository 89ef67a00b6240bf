"""`alphagrad.cli.bench`: the results table of `alphagrad bench` and its interpreter timing."""

from __future__ import annotations

from alphagrad.agents import search
from alphagrad.cli import bench
from alphagrad.cli.bench import BenchRow, render_markdown, run_bench


def test_results_markdown_marks_proven_optima(reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    r = search(g, "exact", seconds=5)
    row = BenchRow("ref:PropaneCombustion", g.num_intermediates, {"forward": 151, "reverse": 90, "markowitz": 111},
                   {"exact": r}, 88)
    text = render_markdown([row], seconds=5)
    assert "88 (optimal)" in text and "| ref:PropaneCombustion |" in text
    assert "Not measured in this run" in text  # no task rows, so no interpreter timing


def test_bench_times_the_interpreter_with_the_best_order_of_a_task_with_python_floats(monkeypatch):
    # Perceptron takes Python floats: the searched graph must be the one the timing runs.
    monkeypatch.setattr(bench, "RUNTIME_BATCH", 16)  # the timing's plumbing, not its numbers
    (row,) = run_bench(["Perceptron"], seconds=0.5, runtime=True)
    assert set(row.runtime) == {"ours", "jacfwd", "jacrev"} and all(t > 0 for t in row.runtime.values())
    text = render_markdown([row], seconds=0.5)
    assert "## Interpreter runtime" in text and "| Perceptron |" in text.split("## Interpreter runtime")[1]
