"""The `alphagrad tasks` and `alphagrad baselines` commands: graph sizes and the classic orders' costs."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from alphagrad import graph as graph_lib
from alphagrad import orders, tasks
from alphagrad.cli._flags import writing

__all__ = ["baselines_command", "tasks_command"]

_BASELINES = ("forward", "reverse", "markowitz")


def tasks_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad tasks [--no-ref | --only-ref]``."""
    table = Table(title="alphagrad tasks (multiplications under each graph's cost model)")
    for column in ("task", "inputs", "intermediates", "outputs", "forward", "reverse", "markowitz", "published (A0)"):
        table.add_column(column, justify="left" if column == "task" else "right")
    specs = list(tasks.names()) if not ns.only_ref else []
    if not ns.no_ref:
        specs += ["ref:" + name for name in graph_lib.reference_names()]
    info = graph_lib.reference_info(ns.graph)
    for spec in specs:
        g = tasks.resolve(spec, graph_file=ns.graph).graph()
        costs = [graph_lib.cost(g, name) for name in _BASELINES]
        published = ""
        if spec.startswith("ref:"):
            ref = info[spec[4:]]
            published = str(ref.best_published)
            mark = f" (ref {ref.minimal_markowitz})" if ref.minimal_markowitz != costs[2] else ""
            cells = [str(costs[0]), str(costs[1]), f"{costs[2]}{mark}"]
        else:
            cells = [str(c) for c in costs]
        table.add_row(spec, str(g.num_inputs), str(g.num_intermediates), str(g.num_outputs), *cells, published)
    console.print(table)
    return 0


def baselines_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad baselines TASK [--args SPEC] [--out DIR]``."""
    g = tasks.resolve(ns.task, graph_file=ns.graph, args=ns.args).graph()
    table = Table(title=f"{ns.task}: {g.num_inputs} inputs, {g.num_intermediates} intermediates, {g.num_outputs} outputs")
    table.add_column("order")
    table.add_column("multiplications", justify="right")
    table.add_column("file")
    for name in _BASELINES:
        order = orders.resolve(g, name)
        path = ""
        if ns.out:
            path = os.path.join(ns.out, f"{name}.json")
            with writing(path):
                orders.save(path, order, graph=g, method=name, task=ns.task)
        table.add_row(name, str(graph_lib.cost(g, order)), path)
    console.print(table)
    return 0
