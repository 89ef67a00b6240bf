"""The `alphagrad eval` command: re-scores an order file and, for a JAX function, checks the interpreter."""

from __future__ import annotations

import argparse

import jax
import numpy as np
from rich.console import Console
from rich.table import Table

from alphagrad import graph as graph_lib
from alphagrad import interpreter, orders, tasks
from alphagrad.errors import OrderFileError

__all__ = ["eval_command"]


def eval_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad eval ORDER.json [--task TASK] [--args SPEC]``: re-scores the order under the file's
    cost model; for a JAX function, checks ``interpreter.jacobian`` against ``jax.jacfwd`` and
    ``count_muls`` against the exact cost model. Exit status 1 when a check fails."""
    record = orders.load(ns.order)
    spec = ns.task or record.task
    if not spec:
        raise OrderFileError(f"{ns.order} does not name its task; pass --task TASK")
    task = tasks.resolve(spec, graph_file=ns.graph, args=ns.args)
    g = task.graph(record.cost_model or None)  # the graph the file was scored on
    record.check_graph(g)  # the fingerprint; graph.cost checks the order itself
    order = list(record.order)
    cost = graph_lib.cost(g, order)
    ok = cost == record.multiplications
    table = Table(title=f"{ns.order}: {spec}, cost model {g.cost_model}")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("", justify="left")
    table.add_row("multiplications (cost model)", str(cost), "" if ok else f"[red]file says {record.multiplications}")
    for name in ("forward", "reverse", "markowitz"):
        table.add_row(f"  {name}", str(graph_lib.cost(g, name)), "")
    if task.fn is not None:
        fn, args = task.fn, task.args
        argnums = tuple(range(len(args))) if task.argnums is None else task.argnums  # corpus: not its ints
        ours = interpreter.jacobian(fn, order, argnums=argnums)(*args)
        ref = jax.jacfwd(fn, argnums=argnums)(*args)
        close = all(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
        )
        muls = interpreter.count_muls(fn, order, *args, argnums=argnums)
        exact = graph_lib.cost(task.graph("exact"), order)  # the graph the interpreter runs
        table.add_row("interpreter.jacobian == jax.jacfwd", "yes" if close else "[red]NO", "")
        table.add_row("count_muls (interpreter)", str(muls), f"exact cost model: {exact}")
        ok = ok and close and muls == exact
    else:
        table.add_row("interpreter check", "–", "a reference graph has no JAX function")
    console.print(table)
    return 0 if ok else 1
