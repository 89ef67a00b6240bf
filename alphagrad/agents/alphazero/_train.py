"""The training loop's host side: tasks, best-order tracking, files, checkpoints, resume.

A run directory holds::

    config.json              the AlphaZeroConfig of the run
    run.json                 the tasks (names, fingerprints, baselines)
    best_order.json          the best order a game of the agent played (one task), or
                             best_order_<task>.json (several); never a demonstration
    demonstrations.json      the demonstrated orders (source, cost) per task, if any
    metrics.csv              one row per iteration
    training_curve.png       best and mean costs (relative to the best classic order) and losses
    checkpoints/<iteration>/ orbax checkpoints: params, train state (optimiser, replay buffer,
                             PRNG key, counters) and a JSON record of the best orders and history
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alphagrad import env, orders
from alphagrad import graph as graph_lib
from alphagrad.agents.alphazero._config import AlphaZeroConfig, ConfigError
from alphagrad.agents.alphazero._core import (
    AXIS,
    Tasks,
    TrainState,
    build_iteration,
    build_pretrain,
    init_train_state,
    learning_rate,
)
from alphagrad.agents.alphazero._demos import Demonstration, demo_orders, fill_demos
from alphagrad.agents.alphazero._replay import replay_init
from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph

__all__ = ["train", "TrainResult", "make_tasks", "default_mesh", "task_names", "RUN_CONTROL_KEYS"]

#: At most this many pre-training steps per jitted call.
PRETRAIN_CHUNK = 100
#: A time-limited run stops pre-training once this share of its budget has passed.
PRETRAIN_SHARE = 0.4
#: Config keys a resumed run may change; every other key must match the stopped run's.
RUN_CONTROL_KEYS = ("iterations", "minutes", "checkpoint_every", "seed")

_BASELINES = ("forward", "reverse", "markowitz")


@dataclasses.dataclass
class TrainResult:
    """The outcome of `train`.

    Attributes:
      best_order: the best order a game of the agent (self-play or policy game) played for the
        first task (vertex numbers); never copied from a demonstration.
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


def task_names(graphs: Sequence[Graph]) -> list[str]:
    """Distinct labels for the graphs (their names, numbered where missing or repeated)."""
    names = []
    for i, g in enumerate(graphs):
        base = g.name or f"task{i}"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}#{k}"
        names.append(name)
    return names


def make_tasks(graphs: Sequence[Graph], *, max_vertices: int | None = None, max_inputs: int | None = None):
    """Pads `graphs` to one state size. Returns (`Tasks`, baselines: list of {name: cost})."""
    models = {g.cost_model for g in graphs}
    if len(models) > 1:
        raise AlphagradError(
            f"the tasks use different cost models ({', '.join(sorted(models))}); train them in separate runs"
        )
    for g in graphs:
        if g.num_intermediates == 0:
            raise AlphagradError(f"graph {g.name!r} has no intermediate vertex: there is nothing to order")
    V = max_vertices or max(g.num_vertices for g in graphs)
    I = max_inputs or max(g.num_inputs for g in graphs)
    baselines = [{name: graph_lib.cost(g, name) for name in _BASELINES} for g in graphs]
    initial = env.stack([env.init_state(g, max_vertices=V, max_inputs=I) for g in graphs])
    scale = jnp.asarray([max(1, min(b.values())) for b in baselines], jnp.float32)
    return Tasks(initial=initial, scale=scale), baselines


def default_mesh() -> Mesh:
    """A 1-D mesh over all devices (of all hosts after `jax.distributed.initialize()`), axis "games"."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"


def best_order_path(out_dir: str, names: Sequence[str], name: str) -> str:
    if len(names) == 1:
        return os.path.join(out_dir, "best_order.json")
    return os.path.join(out_dir, f"best_order_{_safe(name)}.json")


def _write_json(path: str, data: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _metrics_columns(names: Sequence[str]) -> list[str]:
    columns = ["iteration", "elapsed_s", "games", "games_per_s", "loss", "policy_loss", "value_loss",
               "learning_rate", "replay_size"]  # fmt: skip
    for name in names:
        columns += [f"best:{name}", f"mean:{name}", f"greedy:{name}", f"demo:{name}"]
    return columns


def _write_metrics(path: str, names: Sequence[str], history: Sequence[Mapping[str, Any]]) -> None:
    columns = _metrics_columns(names)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _append_metrics(path: str, names: Sequence[str], row: Mapping[str, Any]) -> None:
    with open(path, "a", newline="") as fh:
        csv.DictWriter(fh, _metrics_columns(names), extrasaction="ignore").writerow(row)


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
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Checkpoints (orbax)
# ----------------------------------------------------------------------------------------------


def _manager(out_dir: str):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")), options=options)


def _save_checkpoint(manager, ts: TrainState, meta: dict) -> None:
    import orbax.checkpoint as ocp

    rest = {"opt_state": ts.opt_state, "buffer": ts.buffer, "demos": ts.demos, "key": ts.key,
            "iteration": ts.iteration, "updates": ts.updates}  # fmt: skip
    manager.save(
        int(ts.iteration),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(ts.params),
            state=ocp.args.StandardSave(rest),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    manager.wait_until_finished()


def _restore_checkpoint(manager, like: TrainState) -> tuple[TrainState, dict] | None:
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
    rest = {"opt_state": like.opt_state, "buffer": like.buffer, "demos": like.demos, "key": like.key,
            "iteration": like.iteration, "updates": like.updates}  # fmt: skip
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(like.params)),
            state=ocp.args.StandardRestore(abstract(rest)),
            meta=ocp.args.JsonRestore(),
        ),
    )
    state = restored["state"]
    ts = TrainState(params=restored["params"], **state)
    return ts, dict(restored["meta"])


def load_params(model_dir: str) -> tuple[Any, AlphaZeroConfig]:
    """The parameters of the latest checkpoint of run directory `model_dir`, and its config."""
    import orbax.checkpoint as ocp

    config_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(config_path):
        raise AlphagradError(f"{model_dir} is not a training run directory (no config.json); pass the --out of `alphagrad train`")
    with open(config_path) as fh:
        config = AlphaZeroConfig.from_dict(json.load(fh))
    manager = _manager(model_dir)
    step = manager.latest_step()
    if step is None:
        raise AlphagradError(f"{model_dir} has no checkpoint yet; train for at least one iteration")
    from alphagrad.agents.alphazero._search import make_network

    # Shapes of the parameters do not depend on the graph: any small state initialises them.
    example = env.init_state(_tiny_graph())
    like = jax.eval_shape(make_network(config).init, jax.random.PRNGKey(0), example, jnp.zeros(()))
    restored = manager.restore(
        step,
        args=ocp.args.Composite(params=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, like))),
    )
    return restored["params"], config


def _tiny_graph() -> Graph:
    from alphagrad.graph import Edge, Vertex

    return Graph(
        num_inputs=1,
        input_shapes=((1, 1),),
        vertices=(Vertex(1), Vertex(2)),
        edges=(Edge(1, 2, 1, (1, 1), (1, 1)), Edge(2, 3, 1, (1, 1), (1, 1))),
        outputs=(2,),
    )


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def _normalise_graphs(graphs) -> tuple[list[Graph], list[str]]:
    if isinstance(graphs, Graph):
        graphs = [graphs]
    if isinstance(graphs, Mapping):
        names, graphs = list(graphs.keys()), list(graphs.values())
    else:
        graphs = list(graphs)
        names = task_names(graphs)
    if not graphs:
        raise AlphagradError("train needs at least one graph")
    if not all(isinstance(g, Graph) for g in graphs):
        raise AlphagradError("train takes Graph objects (use alphagrad.tasks.load_graph('ref:NAME') to get one)")
    return graphs, [str(n) for n in names]


def _check_resume(out_dir: str, config: AlphaZeroConfig, names, graphs) -> None:
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


def train(
    graphs: Graph | Sequence[Graph] | Mapping[str, Graph],
    config: AlphaZeroConfig | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Trains one network on one or several graphs by AlphaZero self-play and keeps the best orders.

    With demonstrations (``config.demo_fraction > 0``) the run first searches each graph for
    ``demo_seconds`` without the network, replays those orders and the classic ones into a
    demonstration buffer, pre-trains on it, and mixes it into every minibatch. Each iteration
    plays ``num_games`` search games and ``num_policy_games`` raw-policy games; the best order
    of a task is the cheapest of those games, never a demonstration.

    Args:
      graphs: a graph, a list of graphs, or a mapping task name -> graph. Several graphs train
        one network jointly (padded to the largest; game b of iteration i plays graph
        ``(b + i * num_games) % K``).
      config: hyper-parameters and run length (default `AlphaZeroConfig()`).
      out_dir: run directory for the order files, metrics, curve and checkpoints (see the
        module docstring); None writes nothing.
      resume: continue the run in `out_dir` from its latest checkpoint (the iteration count
        continues; the best orders are the better of the checkpoint's and the order files').
      callback: called after every iteration with its metrics row (plus "best", "baselines",
        "demos" (best demonstration cost per task), "total" entries), e.g. a progress bar.
      mesh: the device mesh (default: all devices, axis "games"); ``num_games`` and
        ``batch_size`` must be multiples of its size.

    Returns:
      A `TrainResult`.

    Raises:
      AlphagradError: unusable graphs, a configuration that does not fit the mesh, or a resume
        into a run of other tasks or settings.
    """
    config = config or AlphaZeroConfig()
    graphs, names = _normalise_graphs(graphs)
    mesh = mesh or default_mesh()
    if config.num_games % mesh.size or config.batch_size % mesh.size or config.num_policy_games % mesh.size:
        raise ConfigError(
            f"num_games ({config.num_games}), num_policy_games ({config.num_policy_games}) and batch_size "
            f"({config.batch_size}) must be multiples of the number of devices ({mesh.size}); set them with "
            "--set num_games=... num_policy_games=... batch_size=..."
        )
    out_dir = os.fspath(out_dir) if out_dir is not None else None
    # With several processes (jax.distributed) every one runs this loop on the same data; only
    # process 0 writes the order files, metrics and curve (orbax coordinates the checkpoints).
    writer = out_dir is not None and jax.process_index() == 0
    if resume and out_dir is None:
        raise AlphagradError("resume needs the run directory (out_dir)")

    start = time.monotonic()  # the demonstrations' search time counts against `minutes`
    tasks, baselines = make_tasks(graphs, max_vertices=config.max_vertices, max_inputs=config.max_inputs)
    length = max(g.num_intermediates for g in graphs)
    replicated = NamedSharding(mesh, P())
    tasks = jax.device_put(tasks, replicated)
    ts = jax.device_put(init_train_state(config, tasks, jax.random.PRNGKey(config.seed)), replicated)

    best_costs: dict[str, int] = {}
    best_orders: dict[str, list[int]] = {}
    best_sources: dict[str, str] = {}
    demonstrations: dict[str, list[dict[str, Any]]] = {}
    history: list[dict[str, Any]] = []
    elapsed0, games0 = 0.0, 0
    manager = None
    restored = None
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        has_run = os.path.exists(os.path.join(out_dir, "config.json"))
        if resume and has_run:
            _check_resume(out_dir, config, names, graphs)
        elif has_run and not resume:
            raise AlphagradError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
        if writer:
            _write_json(os.path.join(out_dir, "config.json"), config.to_dict())
            _write_json(
                os.path.join(out_dir, "run.json"),
                {"tasks": names, "fingerprints": [g.fingerprint for g in graphs], "baselines": dict(zip(names, baselines))},
            )
        manager = _manager(out_dir)
        if resume:
            restored = _restore_checkpoint(manager, ts) if has_run else None
            if restored is not None:
                ts, meta = restored
                ts = jax.device_put(ts, replicated)
                history = list(meta.get("history", []))
                elapsed0, games0 = float(meta.get("elapsed_s", 0.0)), int(meta.get("games", 0))
                for name, rec in meta.get("best", {}).items():
                    best_costs[name], best_orders[name] = int(rec["cost"]), list(rec["order"])
                    best_sources[name] = str(rec.get("source", ""))
                demonstrations = {k: list(v) for k, v in meta.get("demonstrations", {}).items()}
            # An improvement written after the last checkpoint survives in the order files.
            for g, name in zip(graphs, names):
                path = best_order_path(out_dir, names, name)
                if os.path.exists(path):
                    record = orders.load(path, graph=g)
                    if name not in best_costs or record.multiplications < best_costs[name]:
                        best_costs[name], best_orders[name] = record.multiplications, list(record.order)
                        best_sources[name] = str(record.extra.get("found_by", ""))
        if writer:
            _write_metrics(os.path.join(out_dir, "metrics.csv"), names, history)

    if restored is None and config.use_demos:
        # A resumed run keeps the demonstrations of its checkpoint (the search is time-limited,
        # so running it again would give other orders).
        shown = demo_orders(graphs, config)
        ts = dataclasses.replace(ts, demos=fill_demos(ts.demos, tasks, shown, config.demo_smoothing,
                                                      config.xla_opt_level))  # fmt: skip
        ts = jax.device_put(ts, replicated)
        demonstrations = {name: [] for name in names}
        for d in shown:
            demonstrations[names[d.task]].append({"source": d.source, "cost": d.cost, "order": list(d.order)})
        if writer:
            _write_json(os.path.join(out_dir, "demonstrations.json"), demonstrations)
        if config.demo_pretrain_steps and shown:
            # In chunks, so that a time-limited run stops pre-training once the demonstrations
            # (search and pre-training) have had their share of the budget.
            num_chunks = -(-config.demo_pretrain_steps // PRETRAIN_CHUNK)
            chunk = -(-config.demo_pretrain_steps // num_chunks)
            pretrain = build_pretrain(config, mesh, len(graphs), length, steps=chunk)
            for _ in range(num_chunks):
                ts, _ = pretrain(ts, tasks, jnp.float32(config.progress(int(ts.iteration), time.monotonic() - start)))
                if config.minutes is not None and time.monotonic() - start >= PRETRAIN_SHARE * 60.0 * config.minutes:
                    break
    demo_costs = {name: min(d["cost"] for d in demos) for name, demos in demonstrations.items() if demos}
    shown = [Demonstration(names.index(name), d["source"], tuple(d["order"]), int(d["cost"]))
             for name, demos in demonstrations.items() for d in demos]  # fmt: skip
    imitated: dict[str, int] = {}  # the agent's best cost each task's demo buffer holds

    def imitate_best(ts: TrainState) -> TrainState:
        """Rebuilds the demonstration buffer from the demonstrations and the agent's current
        best orders (rare: only after an improvement)."""
        agent = [Demonstration(k, "agent", tuple(best_orders[n]), best_costs[n])
                 for k, n in enumerate(names) if n in best_costs]  # fmt: skip
        empty = replay_init(ts.demos.capacity, *ts.demos.data.codes.shape[1:])
        demos = fill_demos(empty, tasks, shown + agent, config.demo_smoothing, config.xla_opt_level)
        imitated.update({n: best_costs[n] for n in names if n in best_costs})
        return dataclasses.replace(ts, demos=jax.device_put(demos, replicated))

    iteration_fn = build_iteration(config, mesh, len(graphs), length)
    done_iterations = int(ts.iteration)
    total = config.iterations

    def out_of_time() -> bool:
        return config.minutes is not None and time.monotonic() - start >= 60.0 * config.minutes

    def meta() -> dict:
        return {
            "iteration": done_iterations,
            "elapsed_s": elapsed0 + time.monotonic() - start,
            "games": games0 + games,
            "best": {
                n: {"cost": best_costs[n], "order": best_orders[n], "source": best_sources.get(n, "")}
                for n in best_costs
            },
            "demonstrations": demonstrations,
            "history": history,
        }

    def consider(k: int, name: str, g: Graph, order_row, cost: int, source: str) -> None:
        """Makes a finished game's order the best of its task if it is cheaper."""
        if name in best_costs and cost >= best_costs[name]:
            return
        order = [int(v) for v in order_row[: g.num_intermediates]]
        checked = graph_lib.cost(g, order)  # the cost model confirms the env's count
        if checked != cost:
            raise AlphagradError(f"internal error: the env scored an order of {name} {cost}, graph.cost {checked}")
        best_costs[name], best_orders[name], best_sources[name] = cost, order, source
        if writer:
            orders.save(best_order_path(out_dir, names, name), order, graph=g, method="alphazero",
                        task=name, iteration=done_iterations, seed=config.seed, found_by=source,
                        best_demonstration=demo_costs.get(name))  # fmt: skip

    games = 0
    last_saved = done_iterations
    per_iteration = config.num_games + config.num_policy_games
    while (total is None or done_iterations < total) and not out_of_time():
        tick = time.monotonic()
        progress = config.progress(done_iterations, time.monotonic() - start)
        lr = float(learning_rate(config, int(ts.updates), progress))
        ts, out = iteration_fn(ts, tasks, jnp.float32(progress))
        out = jax.device_get(out)
        seconds = time.monotonic() - tick
        done_iterations = int(ts.iteration)
        games += per_iteration
        means: dict[str, float] = {}
        greedy: dict[str, int] = {}
        greedy_game = np.arange(len(out.policy_task)) < len(graphs)
        for k, (g, name) in enumerate(zip(graphs, names)):
            mine = (out.task == k) & out.done
            if mine.any():
                costs = out.costs[mine]
                means[name] = float(costs.mean())
                b = int(np.flatnonzero(mine)[np.argmin(costs)])
                consider(k, name, g, out.orders[b], int(out.costs[b]), "search")
            for is_greedy, source in ((True, "greedy"), (False, "sampled")):
                theirs = (out.policy_task == k) & out.policy_done & (greedy_game == is_greedy)
                if not theirs.any():
                    continue
                b = int(np.flatnonzero(theirs)[np.argmin(out.policy_costs[theirs])])
                if is_greedy:
                    greedy[name] = int(out.policy_costs[b])
                consider(k, name, g, out.policy_orders[b], int(out.policy_costs[b]), source)
        row: dict[str, Any] = {
            "iteration": done_iterations,
            "elapsed_s": round(elapsed0 + time.monotonic() - start, 3),
            "games": games0 + games,
            "games_per_s": round(per_iteration / max(seconds, 1e-9), 3),
            "loss": float(out.loss),
            "policy_loss": float(out.policy_loss),
            "value_loss": float(out.value_loss),
            "learning_rate": lr,
            "replay_size": int(ts.buffer.size),
        }
        for name in names:
            row[f"best:{name}"] = best_costs.get(name, "")
            row[f"mean:{name}"] = round(means[name], 3) if name in means else ""
            row[f"greedy:{name}"] = greedy.get(name, "")
            row[f"demo:{name}"] = demo_costs.get(name, "")
        history.append(row)
        if config.use_demos and config.imitate_best and shown and any(
            imitated.get(n) != best_costs.get(n) for n in best_costs
        ):
            ts = imitate_best(ts)
        if writer:
            _append_metrics(os.path.join(out_dir, "metrics.csv"), names, row)
        if callback is not None:
            callback({**row, "best": dict(best_costs), "baselines": dict(zip(names, baselines)), "total": total,
                      "demos": dict(demo_costs)})  # fmt: skip
        finished = (total is not None and done_iterations >= total) or out_of_time()
        if manager is not None and (done_iterations % config.checkpoint_every == 0 or finished):
            _save_checkpoint(manager, ts, meta())
            last_saved = done_iterations

    if out_dir is not None:
        if manager is not None and last_saved != done_iterations:
            _save_checkpoint(manager, ts, meta())
        if history and writer:
            plot_curve(os.path.join(out_dir, "training_curve.png"), names, history, baselines, demo_costs)
    first = names[0]
    return TrainResult(
        best_order=best_orders.get(first, []),
        best_cost=best_costs.get(first),
        history=history,
        params=jax.device_get(ts.params),
        best_orders=best_orders,
        best_costs=best_costs,
        baselines=dict(zip(names, baselines)),
        config=config,
        iterations=done_iterations,
        demo_costs=demo_costs,
        demonstrations=demonstrations,
        best_sources=best_sources,
    )
