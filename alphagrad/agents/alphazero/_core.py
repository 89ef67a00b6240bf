"""The jitted part of training: one iteration = a batch of self-play games, a batch of policy
games (the raw network, no search) and gradient steps on a mix of replayed transitions and
demonstrations.

Everything here is a pure function of pytrees. `build_iteration` returns one compiled function
per (configuration, mesh, number of tasks, episode length), cached, so runs with the same
settings (tests, resumed runs) share the compilation.

Data parallelism: the games of an iteration and each training minibatch are sharded over the
``"games"`` axis of a `jax.sharding.Mesh`; parameters, optimiser state and replay buffer are
replicated. XLA inserts the gradient all-reduce. There is no `pmap`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P_

from alphagrad import env
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._network import PolicyValueNet, edge_capacity, mask_logits, value_transform
from alphagrad.agents.alphazero._replay import (
    ReplayBuffer,
    Transitions,
    replay_add,
    replay_init,
    replay_sample,
    restore_inputs,
)
from alphagrad.agents.alphazero._search import SearchSettings, evaluate, make_network, search

__all__ = [
    "AXIS",
    "Tasks",
    "TrainState",
    "IterationOutput",
    "make_optimizer",
    "init_train_state",
    "loss_fn",
    "build_iteration",
    "play_episode",
    "play_policy",
    "edge_lists",
    "episode_items",
    "demo_episodes",
    "sample_batch",
    "learning_rate",
    "build_pretrain",
    "compiler_options",
]

#: The mesh axis the games (and training minibatches) are sharded over.
AXIS = "games"


class Tasks(NamedTuple):
    """The K graphs trained on, padded to one state size.

    Attributes:
      initial: `State` with leading axis K  # initial state of each graph
      scale: float32[K]  # each graph's cost scale: its best classic cost (>= 1)
    """

    initial: env.State
    scale: jax.Array


@struct.dataclass
class TrainState:
    """Everything a run carries from one iteration to the next (all arrays; checkpointed).

    Attributes:
      params: the network parameters.
      opt_state: the optax state.
      buffer: the replay buffer (self-play transitions, circular).
      demos: the demonstration buffer (filled once before training, never overwritten; empty
        when the run uses no demonstrations).
      key: uint32[2]  # PRNG key
      iteration: int32[]  # iterations done
      updates: int32[]  # gradient steps done
    """

    params: Any
    opt_state: Any
    buffer: ReplayBuffer
    demos: ReplayBuffer
    key: jax.Array
    iteration: jax.Array
    updates: jax.Array


class IterationOutput(NamedTuple):
    """What the host reads after an iteration (B = num_games, P = num_policy_games, V = vertex slots).

    Attributes:
      orders: int32[B, V]  # the order each self-play game played (vertex numbers, -1 past its end)
      costs: int32[B]  # its multiplications
      done: bool[B]  # the game completed its order
      task: int32[B]  # the task each game played
      policy_orders, policy_costs, policy_done, policy_task: the same for the P policy games
        (int32[P, V], int32[P], bool[P], int32[P]); game p is greedy iff p < number of tasks
      loss, policy_loss, value_loss: float32[]  # means over the iteration's gradient steps (0 if none)
      trained: bool[]  # gradient steps were taken
    """

    orders: jax.Array
    costs: jax.Array
    done: jax.Array
    task: jax.Array
    policy_orders: jax.Array
    policy_costs: jax.Array
    policy_done: jax.Array
    policy_task: jax.Array
    loss: jax.Array
    policy_loss: jax.Array
    value_loss: jax.Array
    trained: jax.Array


def make_optimizer(config: AlphaZeroConfig) -> optax.GradientTransformation:
    """Clip by global norm, then Adam with decoupled weight decay on the weight matrices (not
    biases, norms): AdamW without its learning rate. The caller multiplies the updates by minus
    `learning_rate`, so a time-limited run can decay it by the clock, which an optax schedule
    over step counts cannot know."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.scale_by_adam(),
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
    )


def learning_rate(config: AlphaZeroConfig, updates, progress):
    """The learning rate of gradient step number `updates` (0-based, int or int32[]) when the
    run is `progress` (float or float32[], in [0, 1]) done: a linear warm-up over the first
    ``warmup_iterations * updates_per_iteration`` steps (demonstration pre-training steps
    count), times a cosine decay from 1 to ``end_lr_factor`` over the progress."""
    warm = max(1, config.warmup_iterations * max(1, config.updates_per_iteration))
    ramp = jnp.minimum(1.0, (jnp.asarray(updates, jnp.float32) + 1.0) / warm)
    progress = jnp.clip(jnp.asarray(progress, jnp.float32), 0.0, 1.0)
    end = config.end_lr_factor
    decay = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return config.learning_rate * ramp * decay


def init_train_state(config: AlphaZeroConfig, tasks: Tasks, key: jax.Array) -> TrainState:
    """Fresh parameters, optimiser state and an empty replay buffer."""
    init_key, key = jax.random.split(key)
    example = jax.tree.map(lambda x: x[0], tasks.initial)
    params, opt_state = _initializer(_compile_key(config))(init_key, example, jnp.log(tasks.scale[0]))
    N, V = example.codes.shape
    E = edge_capacity(N, V, config.edges_per_node)
    return TrainState(
        params=params,
        opt_state=opt_state,
        buffer=replay_init(config.replay_size, E, V),
        demos=replay_init(demo_capacity(config, tasks), E, V),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        updates=jnp.zeros((), jnp.int32),
    )


def demo_capacity(config: AlphaZeroConfig, tasks: Tasks) -> int:
    """Slots of the demonstration buffer: every move of up to 5 orders (forward, reverse,
    Markowitz, search, and the agent's own best) per task, each at most V moves (1 without
    demonstrations)."""
    if not config.use_demos:
        return 1
    K, V = tasks.initial.eliminable.shape
    return 5 * K * V


@functools.cache
def _initializer(config: AlphaZeroConfig):
    """jit of (key, state, log_scale) -> (params, opt_state); cached (eager init is slow)."""
    net = make_network(config)
    optimizer = make_optimizer(config)

    def init(key, example, log_scale):
        params = net.init(key, example, log_scale)
        return params, optimizer.init(params)

    return jax.jit(init, compiler_options=compiler_options(config))


def loss_fn(params, net, batch: Transitions, tasks: Tasks, *, value_kind: str, value_weight: float):
    """The training loss of a minibatch.

    Policy: KL(search weights || softmax(masked logits)) (the cross-entropy minus the targets'
    entropy: same gradient, and 0 when the policy matches). Value: 1/2 (v - h(G))^2 with G the
    normalised return-to-go. Weight decay is applied by the optimiser (AdamW), not here.

    Returns: (loss, (policy_loss, value_loss)), scalars.
    """
    inputs = restore_inputs(tasks.initial, batch)
    scale = tasks.scale[batch.task]
    logits, h = jax.vmap(net.apply, in_axes=(None, 0, 0))(params, inputs, jnp.log(scale))
    logits = mask_logits(logits, inputs.eliminable)
    target = batch.policy
    entropy = -jnp.sum(jnp.where(target > 0, target * jnp.log(jnp.where(target > 0, target, 1.0)), 0.0), -1)
    policy_loss = jnp.mean(optax.softmax_cross_entropy(logits, target) - entropy)
    value_loss = 0.5 * jnp.mean((h - value_transform(batch.value, value_kind)) ** 2)
    return policy_loss + value_weight * value_loss, (policy_loss, value_loss)


def edge_lists(states: env.State, capacity: int) -> tuple[jax.Array, jax.Array]:
    """The edges of a batch of states (leading axis B) in E = `capacity` slots, as the network
    reads them (`env.edge_list`): (int32[B, E], int8[B, E])."""
    return jax.vmap(lambda codes: env.edge_list(codes, capacity))(states.codes)


def episode_items(task, edges, edge_codes, eliminable, policy, rewards, valid) -> tuple[Transitions, jax.Array]:
    """Training examples of a batch of B games of T moves (time-major inputs).

    Args:
      task: int32[B]; edges: int32[T, B, E], edge_codes: int8[T, B, E] (each state's
      `edge_lists`); eliminable: bool[T, B, V]; policy: float32[T, B, V] (the targets);
      rewards: float32[T, B] (normalised); valid: bool[T, B] (the move was made from a
      non-terminal state).

    Returns:
      (`Transitions` [T * B] whose value is the normalised return-to-go, valid bool[T * B]).
    """
    rewards = jnp.where(valid, rewards, 0.0)
    to_go = jnp.cumsum(rewards[::-1], axis=0)[::-1]
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    T, B = valid.shape
    items = Transitions(
        edges=flat(edges),
        edge_codes=flat(edge_codes),
        eliminable=flat(eliminable),
        task=flat(jnp.broadcast_to(task, (T, B))),
        policy=flat(policy),
        value=flat(to_go),
    )
    return items, flat(valid)


def play_episode(net, params, tasks: Tasks, task: jax.Array, key: jax.Array, settings: SearchSettings,
                 length: int, sharding=None):  # fmt: skip
    """Plays one game per entry of `task` (int32[B]) for `length` moves, each chosen by search.

    Returns:
      (final `State` [B], trajectory `Transitions` [length * B] (time-major), valid bool[length * B]:
      the move was made from a non-terminal state).
    """
    states = jax.tree.map(lambda x: x[task], tasks.initial)
    scale = tasks.scale[task]
    if sharding is not None:
        states, scale = jax.lax.with_sharding_constraint((states, scale), sharding)

    def move(states, key):
        out = search(net, params, states, scale, key, settings)
        nxt, reward, _ = jax.vmap(env.step)(states, out.action)
        valid = ~env.is_terminal(states)
        edges = edge_lists(states, edge_capacity(*states.codes.shape[-2:], net.edges_per_node))
        return nxt, (*edges, states.eliminable, out.action_weights, reward / scale, valid)

    final, trajectory = jax.lax.scan(move, states, jax.random.split(key, length))
    items, valid = episode_items(task, *trajectory)
    return final, items, valid


def play_policy(net, params, tasks: Tasks, task: jax.Array, greedy: jax.Array, key: jax.Array, *,
                temperature: float, transform: str, length: int, sharding=None) -> env.State:  # fmt: skip
    """Plays one game per entry of `task` (int32[P]) with the network's prior alone: one network
    call per move and no search, so a batch costs about 1 / (num_simulations + 1) of a
    self-play batch. Game p takes the argmax of the masked logits where ``greedy[p]`` (bool[P];
    ties to the lowest slot), else samples from softmax(logits / temperature).

    Returns: the final `State` [P] (its ``order`` and ``cost`` are the game's).
    """
    states = jax.tree.map(lambda x: x[task], tasks.initial)
    scale = tasks.scale[task]
    if sharding is not None:
        states, scale = jax.lax.with_sharding_constraint((states, scale), sharding)

    def move(states, key):
        logits, _ = evaluate(net, params, states, scale, transform)
        sampled = jax.random.categorical(key, logits / temperature)
        action = jnp.where(greedy, jnp.argmax(logits, axis=-1), sampled)
        return jax.vmap(env.step)(states, action)[0], None

    final, _ = jax.lax.scan(move, states, jax.random.split(key, length))
    return final


def demo_episodes(tasks: Tasks, task: jax.Array, actions: jax.Array, smoothing: float, capacity: int | None = None):
    """Replays demonstrated orders through the env core into training examples.

    Args:
      task: int32[D], the task of each demonstration.
      actions: int32[D, T], its actions (vertex number - 1); entries past the end of an order
        are ignored (the game is over: the env makes them no-ops and they are marked invalid).
      smoothing: the policy target is (1 - smoothing) one-hot(action) + smoothing uniform over
        the legal actions.
      capacity: the edge slots of the stored states (`edge_lists`; None: the `edge_capacity` of
        the default ``edges_per_node``).

    Returns:
      (final `State` [D], `Transitions` [T * D] with the true normalised returns-to-go as value
      targets, valid bool[T * D]).
    """
    states = jax.tree.map(lambda x: x[task], tasks.initial)
    scale = tasks.scale[task]
    N, V = states.codes.shape[-2:]
    capacity = edge_capacity(N, V, AlphaZeroConfig.edges_per_node) if capacity is None else capacity

    def move(states, action):
        legal = states.eliminable
        uniform = legal / jnp.maximum(legal.sum(-1, keepdims=True), 1)
        policy = (1.0 - smoothing) * jax.nn.one_hot(action, V) + smoothing * uniform
        nxt, reward, _ = jax.vmap(env.step)(states, action)
        valid = ~env.is_terminal(states)
        return nxt, (*edge_lists(states, capacity), legal, policy, reward / scale, valid)

    final, trajectory = jax.lax.scan(move, states, jnp.asarray(actions, jnp.int32).T)
    items, valid = episode_items(task, *trajectory)
    return final, items, valid


def sample_batch(buffer: ReplayBuffer, demos: ReplayBuffer, key: jax.Array, batch_size: int,
                 num_demo: int, min_replay: int) -> Transitions:  # fmt: skip
    """A minibatch of M = `batch_size` transitions: the first `num_demo` from the demonstrations,
    the rest from the replay buffer; all from the demonstrations while the replay buffer holds
    fewer than `min_replay` transitions, none when there are no demonstrations."""
    replay_key, demo_key = jax.random.split(key)
    replayed = replay_sample(buffer, replay_key, batch_size)
    shown = replay_sample(demos, demo_key, batch_size)
    have_replay = buffer.size >= max(min_replay, 1)
    take = jnp.where(have_replay, jnp.arange(batch_size) < num_demo, True) & (demos.size > 0)
    pick = lambda d, r: jnp.where(take.reshape((-1,) + (1,) * (r.ndim - 1)), d, r)  # noqa: E731
    return jax.tree.map(pick, shown, replayed)


def _compile_key(config: AlphaZeroConfig) -> AlphaZeroConfig:
    """The config with the fields that do not change the compiled iteration normalised."""
    # The schedule's length enters the iteration only through the progress argument.
    return dataclasses.replace(
        config, iterations=1, schedule_iterations=None, minutes=None, seed=0, checkpoint_every=1,
        demo_seconds=0.0, demo_method="", demo_max_ratio=1.0, demo_pretrain_steps=0, demo_smoothing=0.0,
        imitate_best=False,
    )


def build_iteration(config: AlphaZeroConfig, mesh: Mesh, num_tasks: int, length: int):
    """The jitted ``iteration(state: TrainState, tasks: Tasks, progress: float32[] = 0) ->
    (TrainState, IterationOutput)`` (the state argument is donated; `progress` in [0, 1] sets
    the learning rate's decay, see `learning_rate`). `length` is the episode length (the most
    intermediates among the tasks)."""
    return _build(_compile_key(config), mesh, num_tasks, length)[0]


def build_pretrain(config: AlphaZeroConfig, mesh: Mesh, num_tasks: int, length: int, steps: int | None = None):
    """The jitted ``pretrain(state: TrainState, tasks: Tasks, progress: float32[]) -> (TrainState,
    losses float32[3])``: `steps` (default ``demo_pretrain_steps``) gradient steps on
    demonstrations alone (state donated; losses = mean total, policy and value loss)."""
    steps = config.demo_pretrain_steps if steps is None else steps
    return _build(_compile_key(config), mesh, num_tasks, length, steps)[1]


@functools.cache
def _build(config: AlphaZeroConfig, mesh: Mesh, num_tasks: int, length: int, pretrain_steps: int = 0):
    net = make_network(config)
    optimizer = make_optimizer(config)
    settings = SearchSettings.from_config(config)
    B, M, U, P = config.num_games, config.batch_size, config.updates_per_iteration, config.num_policy_games
    Md = round(config.demo_fraction * M) if config.use_demos else 0
    games = NamedSharding(mesh, P_(AXIS))
    replicated = NamedSharding(mesh, P_())
    loss = functools.partial(loss_fn, net=net, value_kind=config.value_transform, value_weight=config.value_weight)
    grad_fn = jax.value_and_grad(lambda p, b, t: loss(p, batch=b, tasks=t), has_aux=True)

    def train_steps(params, opt_state, updates, buffer, demos, tasks, key, progress, steps, num_demo):
        def one(carry, inputs):
            params, opt_state = carry
            key, t = inputs
            batch = sample_batch(buffer, demos, key, M, num_demo, config.min_replay)
            batch = jax.lax.with_sharding_constraint(batch, games)
            (total, (pl, vl)), grads = grad_fn(params, batch, tasks)
            step, opt_state = optimizer.update(grads, opt_state, params)
            lr = learning_rate(config, updates + t, progress)
            step = jax.tree.map(lambda u: -lr * u, step)
            return (optax.apply_updates(params, step), opt_state), jnp.stack([total, pl, vl])

        inputs = (jax.random.split(key, steps), jnp.arange(steps))
        (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), inputs)
        return params, opt_state, losses.mean(0)

    def skip(params, opt_state, updates, buffer, demos, tasks, key, progress, steps, num_demo):
        return params, opt_state, jnp.zeros(3, jnp.float32)

    def iteration(ts: TrainState, tasks: Tasks, progress=None):
        progress = jnp.zeros((), jnp.float32) if progress is None else jnp.asarray(progress, jnp.float32)
        key, play_key, policy_key, train_key = jax.random.split(ts.key, 4)
        task = (jnp.arange(B) + ts.iteration * B) % num_tasks
        final, items, valid = play_episode(net, ts.params, tasks, task, play_key, settings, length, games)
        if P:
            policy_task = (jnp.arange(P) + ts.iteration * P) % num_tasks
            policy_final = play_policy(
                net, ts.params, tasks, policy_task, jnp.arange(P) < num_tasks, policy_key,
                temperature=config.policy_temperature, transform=config.value_transform, length=length,
                sharding=games,
            )  # fmt: skip
            policy_out = (policy_final.order, policy_final.cost, env.is_terminal(policy_final), policy_task)
        else:
            V = final.order.shape[-1]
            policy_out = (jnp.zeros((0, V), jnp.int32), jnp.zeros((0,), jnp.int32), jnp.zeros((0,), bool),
                          jnp.zeros((0,), jnp.int32))  # fmt: skip
        buffer = replay_add(ts.buffer, items, valid)
        trained = ((buffer.size >= max(config.min_replay, 1)) | (ts.demos.size > 0)) & (U > 0)
        steps = functools.partial(train_steps, steps=U, num_demo=Md)
        nothing = functools.partial(skip, steps=U, num_demo=Md)
        params, opt_state, losses = jax.lax.cond(
            trained, steps, nothing, ts.params, ts.opt_state, ts.updates, buffer, ts.demos, tasks, train_key, progress
        )
        new = TrainState(
            params=params,
            opt_state=opt_state,
            buffer=buffer,
            demos=ts.demos,
            key=key,
            iteration=ts.iteration + 1,
            updates=ts.updates + jnp.where(trained, U, 0),
        )
        out = IterationOutput(
            orders=final.order,
            costs=final.cost,
            done=env.is_terminal(final),
            task=task,
            policy_orders=policy_out[0],
            policy_costs=policy_out[1],
            policy_done=policy_out[2],
            policy_task=policy_out[3],
            loss=losses[0],
            policy_loss=losses[1],
            value_loss=losses[2],
            trained=trained,
        )
        return new, out

    def pretrain(ts: TrainState, tasks: Tasks, progress):
        key, train_key = jax.random.split(ts.key)
        params, opt_state, losses = train_steps(ts.params, ts.opt_state, ts.updates, ts.buffer, ts.demos, tasks,
                                                train_key, jnp.asarray(progress, jnp.float32),
                                                steps=max(pretrain_steps, 1), num_demo=M)  # fmt: skip
        new = dataclasses.replace(ts, params=params, opt_state=opt_state, key=key,
                                  updates=ts.updates + max(pretrain_steps, 1))  # fmt: skip
        return new, losses

    jit = functools.partial(jax.jit, donate_argnums=0, out_shardings=(replicated, replicated),
                            compiler_options=compiler_options(config))  # fmt: skip
    return jit(iteration), (jit(pretrain) if pretrain_steps else None)


def compiler_options(config: AlphaZeroConfig) -> dict[str, Any] | None:
    """XLA options of the compiled functions (the backend optimisation level, if set)."""
    if config.xla_opt_level is None:
        return None
    return {"xla_backend_optimization_level": config.xla_opt_level}
