"""The `alphagrad train` and `alphagrad solve` commands (thin: config, progress bar, Ctrl-C,
printing; the work is `agents.alphazero.train` and `solve`). Imported only when one of them
runs: it loads flax, mctx and orbax."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from alphagrad import orders, tasks
from alphagrad.agents.alphazero import AlphaZeroConfig, TrainResult, solve, train

__all__ = ["INTERRUPTED", "StopOnInterrupt", "TrainProgress", "solve_command", "train_command"]

#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, as the shells report it).
INTERRUPTED = 128 + signal.SIGINT


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


class StopOnInterrupt:
    """Ctrl-C for the duration of a run (a context manager, used in the main thread): the first
    SIGINT sets `requested`, which `train` polls between iterations (``should_stop``), so the run
    stops at a clean point; a second one exits at once with status `INTERRUPTED`. The previous
    handler is restored on exit.

    Python runs signal handlers only between bytecodes of the main thread, which a compilation or
    an XLA computation can keep busy for a minute. So the handler does nothing itself: the signal
    module's C handler writes each signal number to a pipe (``signal.set_wakeup_fd``) at once, and
    a watcher thread acts on it, even while the main thread is inside XLA.
    """

    def __init__(self, console: Console):
        self.requested = threading.Event()
        self._console = console

    def __enter__(self) -> StopOnInterrupt:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.signal(signal.SIGINT, lambda signum, frame: None)  # the watcher acts
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._watcher = threading.Thread(target=self._watch, name="alphagrad-sigint", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write)  # the watcher reads end-of-file and returns
        self._watcher.join()
        os.close(self._read)

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            for _ in range(data.count(signal.SIGINT)):
                if not self.requested.is_set():
                    self.requested.set()
                    self._console.print("[yellow]Ctrl-C: stopping after the current iteration (checkpoint, order "
                                        "files, table); press Ctrl-C again to quit at once[/]")  # fmt: skip
                    continue
                if sys.stdout.isatty():
                    sys.stdout.write("\x1b[?25h")  # the progress bar hid the cursor
                    sys.stdout.flush()
                os.write(2, b"second Ctrl-C: quitting at once; the run directory keeps its last checkpoint\n")
                os._exit(INTERRUPTED)


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
    """``alphagrad train TASK... [--minutes N | --iterations N] [--seed S] [--out DIR] [--resume]``.

    Ends with the table of the run's order files. Ctrl-C stops the run after its current
    iteration, as if its time were up, and the command then exits with status `INTERRUPTED`.
    """
    try:
        return _train(ns, console)
    except KeyboardInterrupt:  # before or after the run (while the graphs are traced, say)
        console.print("[yellow]interrupted[/]")
        return INTERRUPTED


def _train(ns: argparse.Namespace, console: Console) -> int:
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
    interrupts = StopOnInterrupt(console)
    with interrupts, TrainProgress(console, config.iterations, config.minutes, done) as progress:
        result = train(graphs, config, out_dir=out, resume=ns.resume, callback=progress,
                       should_stop=interrupts.requested.is_set)  # fmt: skip
    console.print(_result_table(result, out))
    for name, fallback in result.fallbacks.items():
        where = result.order_files.get(name, "the result")
        console.print(
            f"no game of the agent finished on {name}: {where} holds a fallback instead, found by "
            f"{fallback['found_by']} ({fallback['cost']} multiplications)",
            markup=False,
        )
    if result.fallbacks and config.minutes is not None and not interrupts.requested.is_set():
        console.print(
            f"the budget ({config.minutes:g} minutes, {60 * config.minutes:.0f} s) ran out before the first "
            f"iteration: demonstrations, pre-training and compilation took {result.elapsed_s:.0f} s; continue with "
            f"--resume --out {out} --minutes N (the checkpoint keeps the pre-training), or give a new run more minutes",
            markup=False,
        )
    if interrupts.requested.is_set():
        console.print(f"stopped by Ctrl-C after iteration {result.iterations}; continue with --resume --out {out}",
                      markup=False)  # fmt: skip
        return INTERRUPTED
    return 0


def _result_table(result: TrainResult, out: str) -> Table:
    """The final table: per task the agent's best cost and the kind of game that found it, the
    best demonstration, the classic costs, and the order file (only one that exists) with what
    it holds (the agent's order, or a fallback's label)."""
    table = Table(title=f"AlphaZero after {result.iterations} iterations ({out})")
    for column in ("task", "best", "found by", "best demo", "forward", "reverse", "markowitz", "file"):
        table.add_column(column, justify="left" if column in ("task", "found by", "file") else "right")
    for name, base in result.baselines.items():
        best = result.best_costs.get(name)
        if name in result.fallbacks:  # no game of the agent: say what the file holds instead
            found_by = f"no game finished; file: {result.fallbacks[name]['found_by']}"
        else:
            found_by = result.best_sources.get(name, "–")
        table.add_row(name, str(best if best is not None else "–"), found_by, str(result.demo_costs.get(name, "–")),
                      str(base["forward"]), str(base["reverse"]), str(base["markowitz"]),
                      result.order_files.get(name, "–"))  # fmt: skip
    return table


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
