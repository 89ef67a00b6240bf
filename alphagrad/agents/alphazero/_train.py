"""The training loop: `train` plays games, learns from them and keeps the best orders.

Beside it: packing the graphs into arrays (`_tasks`), what a run has found (`_record`), the run
directory's files and resuming (`_rundir`) and its orbax checkpoints (`_checkpoints`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alphagrad import graph as graph_lib
from alphagrad.agents.alphazero._config import AlphaZeroConfig, ConfigError
from alphagrad.agents.alphazero._core import (
    IterationOutput,
    Tasks,
    TrainState,
    build_iteration,
    build_pretrain,
    init_train_state,
    learning_rate,
)
from alphagrad.agents.alphazero._demos import Demonstration, demo_orders, fallback_order, fill_demos
from alphagrad.agents.alphazero._record import BestOrder, RunRecord
from alphagrad.agents.alphazero._replay import replay_init
from alphagrad.agents.alphazero._rundir import RunDirectory
from alphagrad.agents.alphazero._tasks import default_mesh, make_tasks, normalise_graphs
from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph

__all__ = ["train", "TrainResult"]

#: At most this many pre-training steps per jitted call.
PRETRAIN_CHUNK = 100
#: A time-limited run stops pre-training once this share of its budget has passed.
PRETRAIN_SHARE = 0.4


@dataclasses.dataclass
class TrainResult:
    """The outcome of `train`.

    Attributes:
      best_order: the best order a game of the agent (self-play or policy game) played for the
        first task (vertex numbers; empty if no game finished); never copied from a demonstration.
      best_cost: its multiplications (``graph.cost`` of ``best_order``); None if no game finished.
      history: one dict per iteration (the rows of metrics.csv).
      params: the trained network parameters (a pytree).
      best_orders, best_costs: the same per task name (all tasks).
      baselines: per task name, ``{"forward", "reverse", "markowitz"}`` costs.
      config: the configuration of the run.
      iterations: iterations done in all (a resumed run counts its earlier iterations).
      demo_costs: per task name, the cost of its best demonstration (absent: none).
      demonstrations: per task name, ``{"source", "cost", "order"}`` of each demonstration.
      best_sources: per task name, the kind of game that found the best order ("search",
        "greedy" or "sampled").
      fallbacks: per task name that no game of the agent finished (a time limit used up before
        the first iteration, or a stop request), ``{"order", "cost", "found_by"}`` of the order
        its order file holds instead: the cheapest demonstration or classic order, ``found_by``
        "classic: <name>" or "demonstration: <source>".
      order_files: per task name, the path of its order file (only files that exist; empty
        without a run directory).
      stopped: `should_stop` returned True when the loop ended (the run stopped at its request).
      elapsed_s: seconds this call trained (the time ``config.minutes`` limits).
    """

    best_order: list[int]
    best_cost: int | None
    history: list[dict[str, Any]]
    params: Any
    best_orders: dict[str, list[int]]
    best_costs: dict[str, int]
    baselines: dict[str, dict[str, int]]
    config: AlphaZeroConfig
    iterations: int
    demo_costs: dict[str, int] = dataclasses.field(default_factory=dict)
    demonstrations: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    best_sources: dict[str, str] = dataclasses.field(default_factory=dict)
    fallbacks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    order_files: dict[str, str] = dataclasses.field(default_factory=dict)
    stopped: bool = False
    elapsed_s: float = 0.0


def train(
    graphs: Graph | Sequence[Graph] | Mapping[str, Graph],
    config: AlphaZeroConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    mesh: Mesh | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Trains one network on one or several graphs by AlphaZero self-play and keeps the best orders.

    With demonstrations (``config.demo_fraction > 0``) the run first searches each graph for
    ``demo_seconds`` without the network, replays those orders and the classic ones into a
    demonstration buffer, pre-trains on it, and mixes it into every minibatch. Each iteration
    plays ``num_games`` search games and ``num_policy_games`` raw-policy games; the best order
    of a task is the cheapest of those games, never a demonstration.

    Every task gets an order file as soon as its demonstrations are known: until a game of the
    agent finishes, the cheapest demonstration or classic order, labelled so in ``found_by``
    (see `TrainResult.fallbacks`). A run whose time limit or stop request comes before the first
    iteration thus still ends with an order file, and a checkpoint of its pre-trained network.

    Args:
      graphs: a graph, a list of graphs, or a mapping task name -> graph. Several graphs train
        one network jointly (padded to the largest; game b of iteration i plays graph
        ``(b + i * num_games) % K``).
      config: hyper-parameters and run length (default `AlphaZeroConfig()`).
      out_dir: run directory for the order files, metrics, curve and checkpoints (see
        `alphagrad.agents.alphazero._rundir`); None writes nothing.
      resume: continue the run in `out_dir` from its latest checkpoint (the iteration count
        continues; the best orders are the better of the checkpoint's and the order files').
      callback: called after every iteration with its metrics row (plus "best", "baselines",
        "demos" (best demonstration cost per task), "total" entries), e.g. a progress bar.
      mesh: the device mesh (default: all devices, axis "games"); ``num_games`` and
        ``batch_size`` must be multiples of its size.
      should_stop: polled between iterations (and pre-training chunks); once it returns True
        the run stops as at its end: checkpoint, curve, result with ``stopped`` set. The
        `alphagrad train` command sets it on Ctrl-C; `train` itself handles no signal. With
        several processes (jax.distributed) every process must give the same answer.

    Returns:
      A `TrainResult`.

    Raises:
      AlphagradError: unusable graphs, a configuration that does not fit the mesh, or a resume
        into a run of other tasks or settings, or from an order file or checkpoint whose
        recorded cost is not its order's (all raised before any training work).
    """
    config = config or AlphaZeroConfig()
    graphs, names = normalise_graphs(graphs)
    mesh = mesh or default_mesh()
    _check_fits(config, mesh)
    if resume and out_dir is None:
        raise AlphagradError("resume needs the run directory (out_dir)")
    stop = should_stop or (lambda: False)
    clock = _Clock(config.minutes)  # the demonstrations' search time counts against `minutes`
    tasks, baselines = make_tasks(graphs, max_vertices=config.max_vertices, max_inputs=config.max_inputs)
    # The run directory (a resumed run's order files are re-scored here, before any work).
    run = RunDirectory.open(out_dir, config, graphs, names, baselines, resume=resume)
    length = max(g.num_intermediates for g in graphs)
    replicated = NamedSharding(mesh, P())
    tasks = jax.device_put(tasks, replicated)
    ts = jax.device_put(init_train_state(config, tasks, jax.random.PRNGKey(config.seed)), replicated)

    # Where the stopped run in the directory left off.
    record, restored = RunRecord(), False
    if resume:
        ts, record, restored = run.resume(ts, graphs)
        ts = jax.device_put(ts, replicated) if restored else ts
        clock.before = record.elapsed_s
    run.write_metrics(record.history)

    # Demonstrations, the order files of the tasks no game has finished yet, and pre-training. A
    # resumed run keeps the demonstrations of its checkpoint (the search is time-limited, so
    # running it again would give other orders).
    if not restored and config.use_demos:
        ts, record.demonstrations = _demonstrate(ts, tasks, graphs, names, config, replicated)
        run.write_demonstrations(record.demonstrations)
    demo_costs = record.demo_costs()
    fallbacks = _write_fallbacks(run, graphs, names, record, config.seed, demo_costs)
    if not restored and config.use_demos and config.demo_pretrain_steps and any(record.demonstrations.values()):
        ts = _pretrain(ts, tasks, config, mesh, len(graphs), length, clock, stop)
    shown = [Demonstration(names.index(name), d["source"], tuple(d["order"]), int(d["cost"]))
             for name, demos in record.demonstrations.items() for d in demos]  # fmt: skip
    imitate = config.use_demos and config.imitate_best and bool(shown)
    imitated: dict[str, int] = {}  # the best costs of the agent's orders in the demonstration buffer

    # The iterations.
    iteration_fn = build_iteration(config, mesh, len(graphs), length)
    per_iteration = config.num_games + config.num_policy_games
    total = config.iterations
    record.iteration = int(ts.iteration)
    saved = record.iteration if restored else None  # the iteration of the latest checkpoint
    while (total is None or record.iteration < total) and not clock.out_of_time() and not stop():
        tick = time.monotonic()
        progress = config.progress(record.iteration, clock.session())
        lr = float(learning_rate(config, int(ts.updates), progress))
        ts, out = iteration_fn(ts, tasks, jnp.float32(progress))
        out = jax.device_get(out)
        games_per_s = per_iteration / max(time.monotonic() - tick, 1e-9)
        record.iteration, record.games = int(ts.iteration), record.games + per_iteration
        means, greedy, improved = _score(out, graphs, names, record)
        for k in improved:
            run.write_best(names[k], graphs[k], record.best[names[k]], iteration=record.iteration,
                           seed=config.seed, best_demonstration=demo_costs.get(names[k]))  # fmt: skip
        row = _metrics_row(record, names, out, clock, games_per_s, lr, int(ts.buffer.size), means, greedy, demo_costs)
        record.history.append(row)
        if imitate and imitated != record.best_costs():
            ts = _imitate_best(ts, tasks, shown, record, names, config, replicated)
            imitated = record.best_costs()
        run.append_metrics(row)
        if callback is not None:
            callback({**row, "best": record.best_costs(), "baselines": dict(zip(names, baselines)), "total": total,
                      "demos": dict(demo_costs)})  # fmt: skip
        finished = (total is not None and record.iteration >= total) or clock.out_of_time()
        if record.iteration % config.checkpoint_every == 0 or finished:
            saved = _checkpoint(run, ts, record, clock)

    # The end: the last state checkpointed (also a run that did no iteration: it keeps its
    # pre-training), the curve drawn.
    stopped = stop()
    if saved != record.iteration:
        _checkpoint(run, ts, record, clock)
    run.plot(record.history, baselines, demo_costs)
    fallbacks = {name: best for name, best in fallbacks.items() if name not in record.best}
    return _result(record, names, baselines, ts, config, demo_costs, fallbacks, run.order_files(), stopped,
                   clock.session())  # fmt: skip


@dataclasses.dataclass
class _Clock:
    """The time of this session of the run (which ``config.minutes`` limits) and of the whole run."""

    minutes: float | None
    start: float = dataclasses.field(default_factory=time.monotonic)
    before: float = 0.0  # seconds trained by the sessions before this one (a resumed run)

    def session(self) -> float:
        return time.monotonic() - self.start

    def total(self) -> float:
        return self.before + self.session()

    def past(self, share: float) -> bool:
        """Whether this session has used `share` of its time limit (never, without a limit)."""
        return self.minutes is not None and self.session() >= share * 60.0 * self.minutes

    def out_of_time(self) -> bool:
        return self.past(1.0)


def _check_fits(config: AlphaZeroConfig, mesh: Mesh) -> None:
    """Raises unless the batches of `config` split evenly over the devices of `mesh`."""
    if config.num_games % mesh.size or config.batch_size % mesh.size or config.num_policy_games % mesh.size:
        raise ConfigError(
            f"num_games ({config.num_games}), num_policy_games ({config.num_policy_games}) and batch_size "
            f"({config.batch_size}) must be multiples of the number of devices ({mesh.size}); set them with "
            "--set num_games=... num_policy_games=... batch_size=..."
        )


def _demonstrate(ts: TrainState, tasks: Tasks, graphs: Sequence[Graph], names: Sequence[str],
                 config: AlphaZeroConfig, replicated: NamedSharding):  # fmt: skip
    """Searches the graphs for demonstrations and fills the demonstration buffer with them.

    Returns:
      (train state, demonstrations): per task name, ``{"source", "cost", "order"}`` of each.
    """
    shown = demo_orders(graphs, config)
    demos = fill_demos(ts.demos, tasks, shown, config.demo_smoothing, config.xla_opt_level)
    ts = jax.device_put(dataclasses.replace(ts, demos=demos), replicated)
    demonstrations: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for d in shown:
        demonstrations[names[d.task]].append({"source": d.source, "cost": d.cost, "order": list(d.order)})
    return ts, demonstrations


def _write_fallbacks(run: RunDirectory, graphs: Sequence[Graph], names: Sequence[str], record: RunRecord, seed: int,
                     demo_costs: Mapping[str, int]) -> dict[str, BestOrder]:  # fmt: skip
    """Gives every task without an order of the agent an order file: its cheapest demonstration or
    classic order (`fallback_order`), unless the file already holds a fallback at least as cheap
    (a resumed run). Returns those fallbacks per task name."""
    fallbacks = {}
    for g, name in zip(graphs, names):
        if name in record.best:
            continue
        fallback = fallback_order(g, record.demonstrations.get(name, []))
        written = run.written_fallback(name)
        if written is not None and written.cost <= fallback.cost:
            fallback = written
        else:
            run.write_best(name, g, fallback, iteration=record.iteration, seed=seed,
                           best_demonstration=demo_costs.get(name))  # fmt: skip
        fallbacks[name] = fallback
    return fallbacks


def _pretrain(ts: TrainState, tasks: Tasks, config: AlphaZeroConfig, mesh: Mesh, num_tasks: int, length: int,
              clock: _Clock, stop: Callable[[], bool]) -> TrainState:  # fmt: skip
    """Pre-trains on the demonstrations for ``config.demo_pretrain_steps`` steps, in chunks, so
    that a time-limited run stops once the demonstrations (search and pre-training) have had
    their share (PRETRAIN_SHARE) of the budget, and a stop request after the current chunk."""
    num_chunks = -(-config.demo_pretrain_steps // PRETRAIN_CHUNK)
    chunk = -(-config.demo_pretrain_steps // num_chunks)
    pretrain = build_pretrain(config, mesh, num_tasks, length, steps=chunk)
    for _ in range(num_chunks):
        if stop():
            break
        ts, _ = pretrain(ts, tasks, jnp.float32(config.progress(int(ts.iteration), clock.session())))
        if clock.past(PRETRAIN_SHARE):
            break
    return ts


def _imitate_best(ts: TrainState, tasks: Tasks, shown: list[Demonstration], record: RunRecord,
                  names: Sequence[str], config: AlphaZeroConfig, replicated: NamedSharding) -> TrainState:  # fmt: skip
    """Rebuilds the demonstration buffer from the demonstrations and the agent's current best
    orders (rare: only after an improvement)."""
    agent = [Demonstration(k, "agent", record.best[name].order, record.best[name].cost)
             for k, name in enumerate(names) if name in record.best]  # fmt: skip
    empty = replay_init(ts.demos.capacity, ts.demos.data.edges.shape[1], ts.demos.data.eliminable.shape[1])
    demos = fill_demos(empty, tasks, shown + agent, config.demo_smoothing, config.xla_opt_level)
    return dataclasses.replace(ts, demos=jax.device_put(demos, replicated))


def _cheapest(mask: np.ndarray, costs: np.ndarray) -> int | None:
    """The index of the cheapest game among those `mask` selects (None: it selects none)."""
    return int(np.flatnonzero(mask)[np.argmin(costs[mask])]) if mask.any() else None


def _score(out: IterationOutput, graphs: Sequence[Graph], names: Sequence[str], record: RunRecord):
    """Makes the cheapest finished games of one iteration the best orders of their tasks where
    they are cheaper: per task its search game, then its greedy and its sampled policy game.

    Returns:
      (means, greedy, improved): per task name, the mean cost of its finished search games and
      the cost of its greedy game (absent: no such game finished), and the task indices whose
      best order changed.
    """
    means: dict[str, float] = {}
    greedy: dict[str, int] = {}
    improved: list[int] = []
    greedy_game = np.arange(len(out.policy_task)) < len(graphs)
    for k, (g, name) in enumerate(zip(graphs, names)):
        kept = []
        mine = (out.task == k) & out.done
        b = _cheapest(mine, out.costs)
        if b is not None:
            means[name] = float(out.costs[mine].mean())
            kept.append(_keep_if_best(record, name, g, out.orders[b], int(out.costs[b]), "search"))
        for is_greedy, source in ((True, "greedy"), (False, "sampled")):
            b = _cheapest((out.policy_task == k) & out.policy_done & (greedy_game == is_greedy), out.policy_costs)
            if b is None:
                continue
            if is_greedy:
                greedy[name] = int(out.policy_costs[b])
            kept.append(_keep_if_best(record, name, g, out.policy_orders[b], int(out.policy_costs[b]), source))
        if any(kept):
            improved.append(k)
    return means, greedy, improved


def _keep_if_best(record: RunRecord, name: str, graph: Graph, order_row, cost: int, source: str) -> bool:
    """Makes a finished game's order (a padded row) the best of task `name` if it is cheaper.
    Returns whether it did."""
    if not record.improves(name, cost):
        return False
    order = [int(v) for v in order_row[: graph.num_intermediates]]
    checked = graph_lib.cost(graph, order)  # the cost model confirms the env's count
    if checked != cost:
        raise AlphagradError(f"internal error: the env scored an order of {name} {cost}, graph.cost {checked}")
    record.best[name] = BestOrder(tuple(order), cost, source)
    return True


def _metrics_row(record: RunRecord, names: Sequence[str], out: IterationOutput, clock: _Clock, games_per_s: float,
                 lr: float, replay_size: int, means: Mapping[str, float], greedy: Mapping[str, int],
                 demo_costs: Mapping[str, int]) -> dict[str, Any]:  # fmt: skip
    """The metrics.csv row of the iteration just done ("" where a task has no value)."""
    row: dict[str, Any] = {
        "iteration": record.iteration,
        "elapsed_s": round(clock.total(), 3),
        "games": record.games,
        "games_per_s": round(games_per_s, 3),
        "loss": float(out.loss),
        "policy_loss": float(out.policy_loss),
        "value_loss": float(out.value_loss),
        "learning_rate": lr,
        "replay_size": replay_size,
    }
    for name in names:
        row[f"best:{name}"] = record.best[name].cost if name in record.best else ""
        row[f"mean:{name}"] = round(means[name], 3) if name in means else ""
        row[f"greedy:{name}"] = greedy.get(name, "")
        row[f"demo:{name}"] = demo_costs.get(name, "")
    return row


def _checkpoint(run: RunDirectory, ts: TrainState, record: RunRecord, clock: _Clock) -> int:
    """Checkpoints the run as it stands; returns the iteration saved."""
    record.elapsed_s = clock.total()
    run.save_checkpoint(ts, record)
    return record.iteration


def _result(record: RunRecord, names: Sequence[str], baselines, ts: TrainState, config: AlphaZeroConfig,
            demo_costs: dict[str, int], fallbacks: Mapping[str, BestOrder], order_files: dict[str, str],
            stopped: bool, elapsed_s: float) -> TrainResult:  # fmt: skip
    first = record.best.get(names[0])
    return TrainResult(
        best_order=list(first.order) if first else [],
        best_cost=first.cost if first else None,
        history=record.history,
        params=jax.device_get(ts.params),
        best_orders={name: list(best.order) for name, best in record.best.items()},
        best_costs=record.best_costs(),
        baselines=dict(zip(names, baselines)),
        config=config,
        iterations=record.iteration,
        demo_costs=demo_costs,
        demonstrations=record.demonstrations,
        best_sources={name: best.source for name, best in record.best.items()},
        fallbacks={name: {"order": list(best.order), "cost": best.cost, "found_by": best.source}
                   for name, best in fallbacks.items()},  # fmt: skip
        order_files=order_files,
        stopped=stopped,
        elapsed_s=elapsed_s,
    )
