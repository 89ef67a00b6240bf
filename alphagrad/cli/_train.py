"""The `alphagrad train` and `alphagrad solve` commands (thin: config, progress bar, printing; the
work is `agents.alphazero.train` and `solve`). Imported only when one of them runs: it loads
flax, mctx and orbax."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from alphagrad import orders, tasks
from alphagrad.agents.alphazero import AlphaZeroConfig, best_order_path, solve, train

__all__ = ["TrainProgress", "solve_command", "train_command"]


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


def _resolve_config(ns: argparse.Namespace) -> AlphaZeroConfig:
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


def train_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad train TASK... [--minutes N | --iterations N] [--seed S] [--out DIR] [--resume]``."""
    config = _resolve_config(ns)
    graphs = {spec: tasks.resolve(spec, graph_file=ns.graph, args=ns.args).graph() for spec in ns.tasks}
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


def solve_command(ns: argparse.Namespace, console: Console) -> int:
    """``alphagrad solve TASK --model DIR [--simulations N] [--games N] [--out FILE]``."""
    g = tasks.resolve(ns.task, graph_file=ns.graph, args=ns.args).graph()
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
