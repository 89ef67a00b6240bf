"""The work behind ``alphagrad train``, ``alphagrad solve`` and ``alphagrad eval`` (the CLI stays thin)."""

from __future__ import annotations

import importlib
import json
import os
import time
from typing import Any

import jax
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from alphagrad import graph as graph_lib
from alphagrad import interpreter, orders
from alphagrad import tasks as tasks_lib
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._solve import solve
from alphagrad.agents.alphazero._train import best_order_path, train
from alphagrad.errors import OrderFileError

__all__ = ["train_command", "solve_command", "eval_command", "TrainProgress"]


class TrainProgress:
    """A rich progress bar for `train`: iterations, games per second, and per task the best cost
    beside forward / reverse / Markowitz. Use as a context manager and pass it as the callback."""

    def __init__(self, console: Console, total: int | None, minutes: float | None, done: int = 0):
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]iteration {task.completed}" + (f"/{total}" if total else "")),
            BarColumn(),
            TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[best]}"),
            console=console,
            transient=False,
        )
        self._total = total
        self._minutes = minutes
        self._start = time.monotonic()
        self._task = self._progress.add_task("train", total=total, completed=done, speed="", best="compiling…")

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def __call__(self, row: dict[str, Any]) -> None:
        parts = []
        for name, base in row["baselines"].items():
            best = row["best"].get(name, "–")
            demo = row.get("demos", {}).get(name)
            shown = f" demo {demo}" if demo is not None else ""
            parts.append(f"{name}: best {best} (fwd {base['forward']} rev {base['reverse']} mM {base['markowitz']}{shown})")
        total = self._total
        if total is None and self._minutes:  # a time limit: show the fraction of it used
            total = row["iteration"] * 60 * self._minutes / max(time.monotonic() - self._start, 1e-9)
        self._progress.update(
            self._task,
            completed=row["iteration"],
            total=total,
            speed=f"{row['games_per_s']:.2f} games/s",
            best=" | ".join(parts),
        )


def _resolve_config(ns) -> AlphaZeroConfig:
    """Saved config (on --resume) < --config TOML < --set key=value < --iterations/--minutes/--seed."""
    config = AlphaZeroConfig()
    saved = os.path.join(ns.out, "config.json") if ns.out else None
    if ns.resume and saved and os.path.exists(saved):
        with open(saved) as fh:
            config = AlphaZeroConfig.from_dict(json.load(fh))
    if ns.config:
        config = config.replace(**AlphaZeroConfig.from_toml(ns.config).to_dict())
    config = config.with_overrides(ns.set or [])
    changes: dict[str, Any] = {}
    if ns.minutes is not None:
        changes["minutes"] = ns.minutes
        if ns.iterations is None:
            changes["iterations"] = None
    if ns.iterations is not None:
        changes["iterations"] = ns.iterations
    if ns.seed is not None:
        changes["seed"] = ns.seed
    return config.replace(**changes)


def train_command(ns, console: Console) -> int:
    """``alphagrad train TASK... [--minutes N | --iterations N] [--seed S] [--out DIR] [--resume]``."""
    config = _resolve_config(ns)
    graphs = {spec: tasks_lib.load_graph(spec, graph_file=ns.graph, args=ns.args) for spec in ns.tasks}
    out = ns.out or os.path.join("runs", "alphazero-" + time.strftime("%Y%m%d-%H%M%S"))
    devices = jax.devices()
    console.print(
        f"training on {', '.join(graphs)} with {len(devices)} {devices[0].platform} device(s); run directory {out}"
    )
    done = 0
    if ns.resume and os.path.exists(os.path.join(out, "metrics.csv")):
        with open(os.path.join(out, "metrics.csv")) as fh:
            done = max(0, sum(1 for _ in fh) - 1)
    with TrainProgress(console, config.iterations, config.minutes, done) as progress:
        result = train(graphs, config, out_dir=out, resume=ns.resume, callback=progress)
    table = Table(title=f"AlphaZero after {result.iterations} iterations ({out})")
    for column in ("task", "best", "found by", "best demo", "forward", "reverse", "markowitz", "file"):
        table.add_column(column, justify="left" if column in ("task", "found by", "file") else "right")
    for name in graphs:
        base = result.baselines[name]
        best = result.best_costs.get(name)
        table.add_row(name, str(best if best is not None else "–"), result.best_sources.get(name, "–"),
                      str(result.demo_costs.get(name, "–")), str(base["forward"]), str(base["reverse"]),
                      str(base["markowitz"]), best_order_path(out, list(graphs), name))  # fmt: skip
    console.print(table)
    return 0


def solve_command(ns, console: Console) -> int:
    """``alphagrad solve TASK --model DIR [--simulations N] [--games N] [--out FILE]``."""
    g = tasks_lib.load_graph(ns.task, graph_file=ns.graph, args=ns.args)
    result = solve(g, ns.model, num_simulations=ns.simulations, num_games=ns.games, seed=ns.seed or 0)
    base = result.baselines
    console.print(
        f"{ns.task}: alphazero {result.cost} (games: {', '.join(map(str, result.costs))}); "
        f"forward {base['forward']}, reverse {base['reverse']}, markowitz {base['markowitz']}"
    )
    if ns.out:
        orders.save(ns.out, result.order, graph=g, method="alphazero-solve", task=ns.task, model=os.fspath(ns.model))
        console.print(f"order written to {ns.out}")
    return 0


def _function_task(spec: str, args_spec: str | None):
    """(fn, args) when `spec` names a JAX function (a registered task or module:function), else None."""
    if spec.startswith("ref:"):
        return None
    if spec in tasks_lib.names():
        task = tasks_lib.get(spec)
        return task.fn, tuple(task.args)
    if ":" in spec and args_spec:
        module, _, attr = spec.partition(":")
        return getattr(importlib.import_module(module), attr), tasks_lib.parse_args_spec(args_spec)
    return None


def eval_command(ns, console: Console) -> int:
    """``alphagrad eval ORDER.json [--task TASK]``: re-scores the order; for a JAX function, checks
    ``interpreter.jacobian`` against ``jax.jacfwd`` and ``count_muls`` against the cost model."""
    record = orders.load(ns.order)
    spec = ns.task or record.task
    if not spec:
        raise OrderFileError(f"{ns.order} does not name its task; pass --task TASK")
    g = tasks_lib.load_graph(spec, graph_file=ns.graph, args=ns.args)
    record = orders.load(ns.order, graph=g)  # checks the fingerprint
    cost = graph_lib.cost(g, list(record.order))
    ok = cost == record.multiplications
    table = Table(title=f"{ns.order}: {spec}, cost model {g.cost_model}")
    table.add_column("check")
    table.add_column("value", justify="right")
    table.add_column("", justify="left")
    table.add_row("multiplications (cost model)", str(cost), "" if ok else f"[red]file says {record.multiplications}")
    for name in ("forward", "reverse", "markowitz"):
        table.add_row(f"  {name}", str(graph_lib.cost(g, name)), "")
    fn_args = _function_task(spec, ns.args)
    if fn_args is not None:
        fn, args = fn_args
        argnums = tuple(range(len(args)))
        order = list(record.order)
        ours = interpreter.jacobian(fn, order, argnums=argnums)(*args)
        ref = jax.jacfwd(fn, argnums=argnums)(*args)
        close = all(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
            for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
        )
        muls = interpreter.count_muls(fn, order, *args, argnums=argnums)
        exact = graph_lib.cost(interpreter.graph_of(fn, *args, argnums=argnums), order)
        table.add_row("interpreter.jacobian == jax.jacfwd", "yes" if close else "[red]NO", "")
        table.add_row("count_muls (interpreter)", str(muls), f"exact cost model: {exact}")
        ok = ok and close and muls == exact
    else:
        table.add_row("interpreter check", "–", "a reference graph has no JAX function")
    console.print(table)
    return 0 if ok else 1
