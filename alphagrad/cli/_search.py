"""The `alphagrad search` and `alphagrad bench` commands (thin: progress bar, printing; the work is
`agents.search` and `alphagrad.cli.bench`)."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alphagrad import graph as graph_lib
from alphagrad import tasks
from alphagrad.agents import search, to_order_file
from alphagrad.cli._flags import writing
from alphagrad.cli.bench import default_specs, render_markdown, run_bench, write_plot
from alphagrad.files import write_atomically

__all__ = ["bench_command", "search_command"]


def _progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("best {task.fields[best]}"),
                    TimeElapsedColumn(), console=console, transient=True)


def search_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad search TASK [--method M] [--minutes N] [--seed S] [--out FILE]``."""
    g = tasks.resolve(ns.task, graph_file=ns.graph, args=ns.args).graph()
    with _progress_bar(console) as bar:
        job = bar.add_task(f"{ns.method} on {ns.task}", total=1.0, best="–")
        result = search(g, ns.method, seconds=60.0 * ns.minutes, seed=ns.seed,
                        progress=lambda cost, frac: bar.update(job, completed=frac, best=cost))
    with writing(ns.out):
        record = to_order_file(g, result, task=ns.task, path=ns.out)
    table = Table(title=f"{ns.task}: {g.num_intermediates} intermediates, {result.method} for {result.seconds:.1f} s")
    table.add_column("order")
    table.add_column("multiplications", justify="right")
    for name, c in record.baselines.items():
        table.add_row(name, str(c))
    proof = " (optimal)" if result.optimal else (f" (lower bound {result.lower_bound})" if result.lower_bound else "")
    table.add_row(f"[bold]{result.method}[/]", f"[bold]{result.cost}[/]{proof}")
    console.print(table)
    if ns.task.startswith("ref:"):
        info = graph_lib.reference_info(ns.graph).get(ns.task[4:])
        if info is not None:
            console.print(f"published (AlphaGrad): {info.best_published}")
    console.print("order: " + " ".join(map(str, result.order)))
    if ns.out:
        console.print(f"wrote {ns.out}")
    return 0


def bench_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad bench [TASK...] [--seconds S] [--alphazero] [--no-runtime] [--out FILE]``."""
    specs = ns.tasks or default_specs()
    with _progress_bar(console) as bar:
        job = bar.add_task("bench", total=len(specs), best="")

        def on_row(row):
            bar.advance(job)
            console.print(f"{row.spec}: best {row.best} "
                          + " ".join(f"{m}={r.cost}" for m, r in row.results.items())
                          + (f" (published {row.published})" if row.published else ""))

        rows = run_bench(specs, seconds=ns.seconds, alphazero=ns.alphazero, graph_file=ns.graph, on_row=on_row,
                         on_start=lambda spec, m: bar.update(job, description=f"{spec} {m}"),
                         runtime=not ns.no_runtime)
    plot = os.path.splitext(ns.out)[0] + ".png"
    with writing(ns.out):
        os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
        plot = plot if write_plot(rows, plot) else None
        write_atomically(ns.out, render_markdown(rows, seconds=ns.seconds, plot=plot))
    console.print(f"wrote {ns.out}" + (f" and {plot}" if plot else ""))
    return 0
