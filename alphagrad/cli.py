"""The `alphagrad` command line: one verb per job (DESIGN.md section 5)."""

from __future__ import annotations

import argparse
import os
import sys

from rich.console import Console
from rich.table import Table

from alphagrad import graph as graph_lib
from alphagrad import orders, tasks
from alphagrad.errors import AlphagradError
from alphagrad.tasks._resolve import load_graph

__all__ = ["main"]

_BASELINES = ("forward", "reverse", "markowitz")


def _cmd_tasks(ns: argparse.Namespace, console: Console) -> int:
    table = Table(title="alphagrad tasks (multiplications under each graph's cost model)")
    for column in ("task", "inputs", "intermediates", "outputs", "forward", "reverse", "markowitz", "published (A0)"):
        table.add_column(column, justify="left" if column == "task" else "right")
    specs = list(tasks.names()) if not ns.only_ref else []
    if not ns.no_ref:
        specs += ["ref:" + name for name in graph_lib.reference_names()]
    info = graph_lib.reference_info(ns.graph)
    for spec in specs:
        g = load_graph(spec, graph_file=ns.graph)
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


def _cmd_baselines(ns: argparse.Namespace, console: Console) -> int:
    g = load_graph(ns.task, graph_file=ns.graph, args=ns.args)
    table = Table(title=f"{ns.task}: {g.num_inputs} inputs, {g.num_intermediates} intermediates, {g.num_outputs} outputs")
    table.add_column("order")
    table.add_column("multiplications", justify="right")
    table.add_column("file")
    for name in _BASELINES:
        order = orders.resolve(g, name)
        path = ""
        if ns.out:
            path = os.path.join(ns.out, f"{name}.json")
            orders.save(path, order, graph=g, method=name, task=ns.task)
        table.add_row(name, str(graph_lib.cost(g, order)), path)
    console.print(table)
    return 0


def _cmd_alphazero(ns: argparse.Namespace, console: Console) -> int:
    from alphagrad.agents.alphazero import _commands  # imported late: flax and mctx load slowly

    return getattr(_commands, f"{ns.verb}_command")(ns, console)


def _add_alphazero_verbs(verbs) -> None:
    """`train`, `solve` and `eval` (the AlphaZero agent and order checking)."""
    task_help = "task name, ref:NAME, or module:function (with --args)"
    p = verbs.add_parser("train", help="train the AlphaZero agent on one or more tasks; keeps the best orders")
    p.add_argument("tasks", nargs="+", metavar="TASK", help=task_help + "; several train one network jointly")
    p.add_argument("--minutes", type=float, help="stop after this many minutes")
    p.add_argument("--iterations", type=int, help="stop after this many iterations in all (default 100)")
    p.add_argument("--seed", type=int, help="PRNG seed (default 0)")
    p.add_argument("--out", metavar="DIR", help="run directory (default runs/alphazero-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in --out")
    p.add_argument("--config", metavar="FILE.toml", help="AlphaZeroConfig values (key = value)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config values")
    p.add_argument("--args", help="example inputs of module:function, e.g. 'f32[3] f32[2,3]'")
    p.set_defaults(run=_cmd_alphazero)

    p = verbs.add_parser("solve", help="order a graph with a trained network and search, without training")
    p.add_argument("task", help=task_help)
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `alphagrad train`")
    p.add_argument("--simulations", type=int, help="search simulations per move (default: the training config's)")
    p.add_argument("--games", type=int, default=8, help="games played; the best is kept (default 8)")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed")
    p.add_argument("--out", metavar="FILE", help="write the order file here")
    p.add_argument("--args", help="example inputs of module:function, e.g. 'f32[3] f32[2,3]'")
    p.set_defaults(run=_cmd_alphazero)

    p = verbs.add_parser("eval", help="re-score an order file; for a JAX function, check it with the interpreter")
    p.add_argument("order", metavar="ORDER.json")
    p.add_argument("--task", help="the task the order is for (default: the file's task)")
    p.add_argument("--args", help="example inputs of module:function, e.g. 'f32[3] f32[2,3]'")
    p.set_defaults(run=_cmd_alphazero)


def _cmd_search(ns: argparse.Namespace, console: Console) -> int:
    from alphagrad.agents import _commands as search_commands

    return getattr(search_commands, f"{ns.verb}_command")(ns, console)


def _add_search_verbs(verbs) -> None:
    """`search` and `bench` (the non-learned searches and the results table)."""
    from alphagrad.agents._commands import add_search_verbs

    add_search_verbs(verbs, _cmd_search)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphagrad", description=__doc__)
    parser.add_argument("--graph", metavar="FILE", help="graphs.json file for ref:NAME (default: the shipped copy)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("tasks", help="table of the tasks: sizes and forward/reverse/Markowitz costs")
    p.add_argument("--no-ref", action="store_true", help="leave out the reference graphs")
    p.add_argument("--only-ref", action="store_true", help="only the reference graphs")
    p.set_defaults(run=_cmd_tasks)

    p = verbs.add_parser("baselines", help="forward, reverse and Markowitz costs of one task; saves the orders")
    p.add_argument("task", help="task name, ref:NAME, or module:function (with --args)")
    p.add_argument("--args", help="example inputs of module:function, e.g. 'f32[3] f32[2,3]'")
    p.add_argument("--out", metavar="DIR", help="write forward.json, reverse.json, markowitz.json here")
    p.set_defaults(run=_cmd_baselines)
    _add_alphazero_verbs(verbs)
    _add_search_verbs(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `alphagrad` console script; returns the exit status."""
    ns = _parser().parse_args(argv)
    # Piped output (files, CI logs) gets full-width tables instead of 80-column wrapping.
    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        return ns.run(ns, console)
    except AlphagradError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
