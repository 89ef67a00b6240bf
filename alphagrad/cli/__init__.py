"""The `alphagrad` command line: one verb per job (DESIGN.md section 5)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from alphagrad.agents import METHODS
from alphagrad.cli._flags import nonnegative_int, out_dir, out_file, positive_float, positive_int
from alphagrad.errors import AlphagradError

__all__ = ["main"]

_TASK_HELP = "task name, ref:NAME, or module:function (with --args)"
_ARGS_HELP = "example inputs of module:function, e.g. 'f32[3] f32[2,3]'"


def _late(module: str, function: str) -> Callable[[argparse.Namespace, Console], int]:
    """A verb's `run`: imports `module` only when the verb runs, so that `alphagrad --help` and
    `alphagrad tasks` never load what other verbs need (flax, mctx and orbax for train/solve)."""

    def run(ns: argparse.Namespace, console: Console) -> int:
        return getattr(importlib.import_module(module), function)(ns, console)

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphagrad", description=__doc__)
    parser.add_argument("--graph", metavar="FILE", help="graphs.json file for ref:NAME (default: the shipped copy)")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("tasks", help="table of the tasks: sizes and forward/reverse/Markowitz costs")
    p.add_argument("--no-ref", action="store_true", help="leave out the reference graphs")
    p.add_argument("--only-ref", action="store_true", help="only the reference graphs")
    p.set_defaults(run=_late("alphagrad.cli._tasks", "tasks_command"))

    p = verbs.add_parser("baselines", help="forward, reverse and Markowitz costs of one task; saves the orders")
    p.add_argument("task", help=_TASK_HELP)
    p.add_argument("--args", help=_ARGS_HELP)
    p.add_argument("--out", metavar="DIR", type=out_dir, help="write forward.json, reverse.json, markowitz.json here")
    p.set_defaults(run=_late("alphagrad.cli._tasks", "baselines_command"))

    p = verbs.add_parser("train", help="train the AlphaZero agent on one or more tasks; keeps the best orders")
    p.add_argument("tasks", nargs="+", metavar="TASK", help=_TASK_HELP + "; several train one network jointly")
    p.add_argument("--minutes", type=positive_float, help="stop after this many minutes")
    p.add_argument("--iterations", type=positive_int, help="stop after this many iterations in all (default 100)")
    p.add_argument("--seed", type=nonnegative_int, help="PRNG seed (default 0)")
    p.add_argument("--out", metavar="DIR", type=out_dir, help="run directory (default runs/alphazero-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the stopped run in --out")
    p.add_argument("--config", metavar="FILE.toml", help="AlphaZeroConfig values (key = value)")
    p.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE", help="override config values")
    p.add_argument("--args", help=_ARGS_HELP)
    p.set_defaults(run=_late("alphagrad.cli._train", "train_command"))

    p = verbs.add_parser("solve", help="order a graph with a trained network and search, without training")
    p.add_argument("task", help=_TASK_HELP)
    p.add_argument("--model", required=True, metavar="DIR", help="run directory of `alphagrad train`")
    p.add_argument("--simulations", type=positive_int,
                   help="search simulations per move (default: the training config's)")
    p.add_argument("--games", type=positive_int, default=8, help="games played; the best is kept (default 8)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="PRNG seed")
    p.add_argument("--out", metavar="FILE", type=out_file, help="write the order file here")
    p.add_argument("--args", help=_ARGS_HELP)
    p.set_defaults(run=_late("alphagrad.cli._train", "solve_command"))

    p = verbs.add_parser("eval", help="re-score an order file; for a JAX function, check it with the interpreter")
    p.add_argument("order", metavar="ORDER.json")
    p.add_argument("--task", help="the task the order is for (default: the file's task)")
    p.add_argument("--args", help=_ARGS_HELP)
    p.set_defaults(run=_late("alphagrad.cli._eval", "eval_command"))

    p = verbs.add_parser("search", help="search a cheap elimination order (heuristics, SA, beam, exact, best)")
    p.add_argument("task", help=_TASK_HELP)
    p.add_argument("--method", choices=METHODS, default="best", help="search method (default best)")
    p.add_argument("--minutes", type=positive_float, default=1.0, help="time budget (default 1)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the randomised methods")
    p.add_argument("--out", metavar="FILE", type=out_file, help="write the order file here")
    p.add_argument("--args", help=_ARGS_HELP)
    p.set_defaults(run=_late("alphagrad.cli._search", "search_command"))

    p = verbs.add_parser("bench", help="run every search on the reference graphs and tasks; writes docs/RESULTS.md")
    p.add_argument("tasks", nargs="*", metavar="TASK", help="tasks to run (default: all ref: graphs and tasks)")
    p.add_argument("--seconds", type=positive_float, default=20.0, help="budget per method and graph (default 20)")
    p.add_argument("--alphazero", action="store_true", help="also train AlphaZero (if available) per graph")
    p.add_argument("--no-runtime", action="store_true", help="skip timing the interpreter on the traced tasks")
    p.add_argument("--out", metavar="FILE", type=out_file, default=os.path.join("docs", "RESULTS.md"),
                   help="markdown file to write (default docs/RESULTS.md; a PNG plot goes beside it)")
    p.set_defaults(run=_late("alphagrad.cli._search", "bench_command"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `alphagrad` console script; returns the exit status (also for ``--help``
    and a bad flag, which argparse would end with SystemExit): 2 after one ``error:`` line on
    stderr for any bad input (flag, file, task), never a traceback."""
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a bad flag: argparse has printed the usage and its error line
        return int(stop.code or 0)
    # Piped output (files, CI logs) gets full-width tables instead of 80-column wrapping.
    console = Console(width=None if sys.stdout.isatty() else 200)
    try:
        return ns.run(ns, console)
    except AlphagradError as err:
        _print_error(str(err))
    except OSError as err:  # a file the system refused where no verb named it (verbs name their --out)
        _print_error(f"{err.strerror}: {err.filename}" if err.strerror and err.filename else str(err))
    return 2


def _print_error(message: str) -> None:
    """One ``error:`` line on stderr: the message is escaped (a path or ``f32[3]`` is not rich
    markup) and never wrapped, so that it stays one line to read and to grep."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
