"""The `alphagrad search` and `alphagrad bench` commands (thin: parsing, progress bar, printing)."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alphagrad import graph as graph_lib
from alphagrad.tasks import load_graph

__all__ = ["add_search_verbs", "bench_command", "search_command"]


def add_search_verbs(verbs, run) -> None:
    """Adds the `search` and `bench` sub-parsers, both dispatching to `run`."""
    from alphagrad.agents.portfolio import METHODS

    p = verbs.add_parser("search", help="search a cheap elimination order (heuristics, SA, beam, exact, best)")
    p.add_argument("task", help="task name, ref:NAME, or module:function (with --args)")
    p.add_argument("--method", choices=METHODS, default="best", help="search method (default best)")
    p.add_argument("--minutes", type=float, default=1.0, help="time budget (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the randomised methods")
    p.add_argument("--out", metavar="FILE", help="write the order file here")
    p.add_argument("--args", help="example inputs of module:function, e.g. 'f32[3] f32[2,3]'")
    p.set_defaults(run=run)

    p = verbs.add_parser("bench", help="run every search on the reference graphs and tasks; writes docs/RESULTS.md")
    p.add_argument("tasks", nargs="*", metavar="TASK", help="tasks to run (default: all ref: graphs and tasks)")
    p.add_argument("--seconds", type=float, default=20.0, help="budget per method and graph (default 20)")
    p.add_argument("--alphazero", action="store_true", help="also train AlphaZero (if available) per graph")
    p.add_argument("--no-runtime", action="store_true", help="skip timing the interpreter on the traced tasks")
    p.add_argument("--out", metavar="FILE", default=os.path.join("docs", "RESULTS.md"),
                   help="markdown file to write (default docs/RESULTS.md; a PNG plot goes beside it)")
    p.set_defaults(run=run)


def _progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("best {task.fields[best]}"),
                    TimeElapsedColumn(), console=console, transient=True)


def search_command(ns: argparse.Namespace, console: Console) -> int:
    from alphagrad.agents.portfolio import search, to_order_file

    g = load_graph(ns.task, graph_file=ns.graph, args=ns.args)
    with _progress_bar(console) as bar:
        job = bar.add_task(f"{ns.method} on {ns.task}", total=1.0, best="–")
        result = search(g, ns.method, seconds=60.0 * ns.minutes, seed=ns.seed,
                        progress=lambda cost, frac: bar.update(job, completed=frac, best=cost))
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
    from alphagrad.agents.bench import (
        default_specs,
        render_markdown,
        run_bench,
        write_plot,
    )

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
    os.makedirs(os.path.dirname(os.path.abspath(ns.out)), exist_ok=True)
    plot = os.path.splitext(ns.out)[0] + ".png"
    plot = plot if write_plot(rows, plot) else None
    with open(ns.out, "w") as fh:
        fh.write(render_markdown(rows, seconds=ns.seconds, plot=plot))
    console.print(f"wrote {ns.out}" + (f" and {plot}" if plot else ""))
    return 0
