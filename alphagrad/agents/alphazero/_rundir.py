"""The run directory of `train`: its files, its checkpoints, and resuming the run it holds.

A run directory holds::

    config.json              the AlphaZeroConfig of the run
    run.json                 the tasks (names, fingerprints, baselines)
    best_order.json          the best order a game of the agent played (one task), or
                             best_order_<task>.json (several); before any game of a task has
                             finished, its best demonstration or classic order, labelled so in
                             ``found_by`` ("classic: reverse", "demonstration: search:best")
    demonstrations.json      the demonstrated orders (source, cost) per task, if any
    metrics.csv              one row per iteration
    training_curve.png       best and mean costs (relative to the best classic order) and losses
    checkpoints/<iteration>/ orbax checkpoints: params, train state (optimiser, replay buffer,
                             PRNG key, counters) and the `RunRecord` as JSON (`_checkpoints`)
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from alphagrad import graph as graph_lib
from alphagrad import orders
from alphagrad.agents.alphazero._checkpoints import open_checkpoints, restore_checkpoint, save_checkpoint
from alphagrad.agents.alphazero._config import AlphaZeroConfig, ConfigError
from alphagrad.agents.alphazero._core import TrainState
from alphagrad.agents.alphazero._record import BestOrder, RunRecord, is_fallback
from alphagrad.errors import AlphagradError, OrderFileError
from alphagrad.files import write_atomically
from alphagrad.graph import Graph

__all__ = ["RUN_CONTROL_KEYS", "RunDirectory", "best_order_path", "plot_curve"]

#: Config keys a resumed run may change; every other key must match the stopped run's.
RUN_CONTROL_KEYS = ("iterations", "minutes", "checkpoint_every", "seed")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def best_order_path(out_dir: str, names: Sequence[str], name: str) -> str:
    """The order file of task `name` in run directory `out_dir` of a run on tasks `names`."""
    if len(names) == 1:
        return os.path.join(out_dir, "best_order.json")
    return os.path.join(out_dir, f"best_order_{_safe(name)}.json")


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"


def _metrics_columns(names: Sequence[str]) -> list[str]:
    columns = ["iteration", "elapsed_s", "games", "games_per_s", "loss", "policy_loss", "value_loss",
               "learning_rate", "replay_size"]  # fmt: skip
    for name in names:
        columns += [f"best:{name}", f"mean:{name}", f"greedy:{name}", f"demo:{name}"]
    return columns


def _check_resume(out_dir: str, config: AlphaZeroConfig, names: Sequence[str], graphs: Sequence[Graph]) -> None:
    """Raises unless `config` and the tasks are those of the run in `out_dir` (bar RUN_CONTROL_KEYS)."""
    with open(os.path.join(out_dir, "config.json")) as fh:
        saved = json.load(fh)
    mine = config.to_dict()
    differ = sorted(k for k in mine if k not in RUN_CONTROL_KEYS and saved.get(k) != mine[k])
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {mine[k]!r}" for k in differ)
        raise ConfigError(
            f"cannot resume the run in {out_dir} with a different configuration ({detail}); "
            "only iterations, minutes, checkpoint_every and seed may change (or start a new --out)"
        )
    with open(os.path.join(out_dir, "run.json")) as fh:
        run = json.load(fh)
    prints = [g.fingerprint for g in graphs]
    if run.get("fingerprints") != prints or run.get("tasks") != list(names):
        raise AlphagradError(
            f"cannot resume the run in {out_dir}: it trained on {run.get('tasks')}, not on {list(names)} "
            "(or the graphs changed); pass the same tasks in the same order, or start a new --out"
        )


def plot_curve(path: str, names: Sequence[str], history: Sequence[Mapping[str, Any]], baselines,
               demo_costs: Mapping[str, int] | None = None) -> None:  # fmt: skip
    """Writes the training curve: per task, best and mean cost divided by its best classic cost
    (and its best demonstration's, dashed, when there are demonstrations)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    its = [row["iteration"] for row in history]
    for k, name in enumerate(names):
        ref = max(1, min(baselines[k].values()))
        best = [row.get(f"best:{name}") for row in history]
        mean = [row.get(f"mean:{name}") for row in history]
        line = ax.plot(its, [b / ref if b not in (None, "") else np.nan for b in best], label=f"{name} best")[0]
        ax.plot(its, [m / ref if m not in (None, "") else np.nan for m in mean], ":", color=line.get_color(),
                label=f"{name} mean")  # fmt: skip
        if demo_costs and name in demo_costs:
            ax.axhline(demo_costs[name] / ref, color=line.get_color(), lw=0.8, ls="-.",
                       label=f"{name} best demonstration")  # fmt: skip
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="best of forward/reverse/Markowitz")
    ax.set_ylabel("multiplications / best classic")
    ax.legend(fontsize="small")
    for key in ("loss", "policy_loss", "value_loss"):
        bx.plot(its, [row[key] for row in history], label=key)
    bx.set_yscale("symlog", linthresh=1e-3)
    bx.set_xlabel("iteration")
    bx.set_ylabel("loss")
    bx.legend(fontsize="small")
    fig.tight_layout()
    image = io.BytesIO()  # rendered in memory, then written atomically: no torn image if interrupted
    fig.savefig(image, format="png", dpi=100)
    plt.close(fig)
    write_atomically(path, image.getvalue())


class RunDirectory:
    """The run directory of one `train` call, or none (path None: nothing is read or written).

    With several processes (jax.distributed) every one runs the loop on the same data; only
    process 0 writes the order files, metrics and curve (orbax coordinates the checkpoints).
    Open one with `RunDirectory.open`.
    """

    def __init__(self, path: str | None, names: Sequence[str]):
        self.path = path
        self.names = list(names)
        self.writes = path is not None and jax.process_index() == 0
        self._has_run = False  # the directory held a run when it was opened
        self._checkpoints = None
        self._written: dict[str, BestOrder] = {}  # the order files found when resuming, re-scored

    @classmethod
    def open(cls, path: str | os.PathLike | None, config: AlphaZeroConfig, graphs: Sequence[Graph],
             names: Sequence[str], baselines: Sequence[Mapping[str, int]], *,
             resume: bool) -> RunDirectory:  # fmt: skip
        """Creates the run directory (or, with `resume`, checks that the run in it is this one) and
        writes config.json and run.json.

        With `resume`, every order file in the directory is read and re-scored here, before any
        training work, so that a bad file stops the run at once.

        Raises:
          AlphagradError: the directory holds a run and `resume` is false, or it holds a run of
            other tasks; ConfigError: of other settings (see RUN_CONTROL_KEYS); OrderFileError:
            an order file that cannot be read, is for another graph, or whose recorded
            multiplications are not its order's cost.
        """
        run = cls(os.fspath(path) if path is not None else None, names)
        if run.path is None:
            return run
        os.makedirs(run.path, exist_ok=True)
        run._has_run = os.path.exists(os.path.join(run.path, "config.json"))
        if resume and run._has_run:
            _check_resume(run.path, config, names, graphs)
        if resume:
            run._written = run._read_order_files(graphs)
        elif run._has_run and not resume:
            raise AlphagradError(
                f"{run.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        if run.writes:
            write_atomically(os.path.join(run.path, "config.json"), _json_text(config.to_dict()))
            run_info = {"tasks": run.names, "fingerprints": [g.fingerprint for g in graphs],
                        "baselines": dict(zip(run.names, baselines))}  # fmt: skip
            write_atomically(os.path.join(run.path, "run.json"), _json_text(run_info))
        run._checkpoints = open_checkpoints(run.path)
        return run

    def _read_order_files(self, graphs: Sequence[Graph]) -> dict[str, BestOrder]:
        """The order files in the directory, per task name, each re-scored with ``graph.cost``.

        Raises:
          OrderFileError: a file cannot be read, is for another graph or holds an invalid
            order, or records multiplications other than its order's cost.
        """
        found = {}
        for g, name in zip(graphs, self.names):
            path = best_order_path(self.path, self.names, name)
            if not os.path.exists(path):
                continue
            try:
                written = orders.load(path, graph=g)
            except AlphagradError as err:
                raise OrderFileError(f"cannot resume the run in {self.path} from {path}: {err}; "
                                     "delete or fix the file, then resume") from None  # fmt: skip
            cost = graph_lib.cost(g, list(written.order))
            if cost != written.multiplications:
                raise OrderFileError(
                    f"{path} is inconsistent: it records {written.multiplications} multiplications, but its order "
                    f"costs {cost} on task {name} (graph.cost); delete the file or correct its \"multiplications\", "
                    "then resume"
                )
            found[name] = BestOrder(tuple(written.order), cost, str(written.extra.get("found_by", "")))
        return found

    def resume(self, like: TrainState, graphs: Sequence[Graph]) -> tuple[TrainState, RunRecord, bool]:
        """Where the run in the directory stopped: the train state and record of its latest
        checkpoint, its best orders improved by any order file of the agent (not a fallback)
        written after that checkpoint.

        Returns:
          (train state, record, restored): `like` and a record of the order files alone, with
          restored False, when there is no checkpoint.

        Raises:
          AlphagradError: the checkpoint records an order whose cost is not ``graph.cost``'s.
        """
        if self.path is None:
            return like, RunRecord(), False
        restored = restore_checkpoint(self._checkpoints, like) if self._has_run else None
        ts, record = (restored[0], RunRecord.from_json(restored[1])) if restored is not None else (like, RunRecord())
        if restored is not None:
            self._check_scores(record, graphs)
        for name, written in self._written.items():
            if not is_fallback(written.source) and record.improves(name, written.cost):
                record.best[name] = written
        return ts, record, restored is not None

    def _check_scores(self, record: RunRecord, graphs: Sequence[Graph]) -> None:
        """Raises unless every order `record` (a checkpoint's) holds costs what it says, so that a
        damaged checkpoint stops the run now, not inside the first iteration."""
        by_name = dict(zip(self.names, graphs))
        recorded = [(name, "best order", best.order, best.cost) for name, best in record.best.items()]
        recorded += [(name, f"demonstration {d['source']}", d["order"], d["cost"])
                     for name, demos in record.demonstrations.items() for d in demos]  # fmt: skip
        for name, what, order, cost in recorded:
            actual = graph_lib.cost(by_name[name], [int(v) for v in order])
            if actual != int(cost):
                raise AlphagradError(
                    f"the checkpoint of iteration {record.iteration} in {self.path} is inconsistent: its {what} of "
                    f"task {name} records {cost} multiplications, graph.cost gives {actual}; delete "
                    f"{os.path.join(self.path, 'checkpoints', str(record.iteration))} to resume from the one before"
                )

    def written_fallback(self, name: str) -> BestOrder | None:
        """The fallback that task `name`'s order file held when the run was resumed (None: none)."""
        written = self._written.get(name)
        return written if written is not None and is_fallback(written.source) else None

    def order_files(self) -> dict[str, str]:
        """Task name -> the path of its order file, for the tasks that have one."""
        if self.path is None:
            return {}
        paths = {name: best_order_path(self.path, self.names, name) for name in self.names}
        return {name: path for name, path in paths.items() if os.path.exists(path)}

    def save_checkpoint(self, ts: TrainState, record: RunRecord) -> None:
        """Checkpoints `ts` and `record` (every process takes part)."""
        if self._checkpoints is not None:
            save_checkpoint(self._checkpoints, ts, record.to_json())

    def write_metrics(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Writes metrics.csv: the header and the rows of `history`."""
        if self.writes:
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, _metrics_columns(self.names), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)
            write_atomically(os.path.join(self.path, "metrics.csv"), text.getvalue(), newline="")

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Adds one row to metrics.csv (an append: rewriting the whole file every iteration would
        cost time quadratic in the run's length)."""
        if self.writes:
            with open(os.path.join(self.path, "metrics.csv"), "a", newline="") as fh:
                csv.DictWriter(fh, _metrics_columns(self.names), extrasaction="ignore").writerow(row)

    def write_demonstrations(self, demonstrations: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
        if self.writes:
            write_atomically(os.path.join(self.path, "demonstrations.json"), _json_text(demonstrations))

    def write_best(self, name: str, graph: Graph, best: BestOrder, *, iteration: int, seed: int,
                   best_demonstration: int | None) -> None:  # fmt: skip
        """Writes task `name`'s order file: its best order, found at `iteration` of a run with
        `seed`, beside the cost of its best demonstration (None: none)."""
        if self.writes:
            orders.save(best_order_path(self.path, self.names, name), list(best.order), graph=graph,
                        method="alphazero", task=name, iteration=iteration, seed=seed, found_by=best.source,
                        best_demonstration=best_demonstration)  # fmt: skip

    def plot(self, history: Sequence[Mapping[str, Any]], baselines, demo_costs: Mapping[str, int]) -> None:
        """Writes training_curve.png (nothing before the first iteration)."""
        if self.writes and history:
            plot_curve(os.path.join(self.path, "training_curve.png"), self.names, history, baselines, demo_costs)
