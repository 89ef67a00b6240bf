"""The jitted part of training: one iteration = a batch of self-play games + gradient steps.

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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alphagrad import env
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._network import mask_logits, value_transform
from alphagrad.agents.alphazero._replay import (
    ReplayBuffer,
    Transitions,
    replay_add,
    replay_init,
    replay_sample,
    restore_states,
)
from alphagrad.agents.alphazero._search import SearchSettings, make_network, search

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
      buffer: the replay buffer.
      key: uint32[2]  # PRNG key
      iteration: int32[]  # iterations done
      updates: int32[]  # gradient steps done
    """

    params: Any
    opt_state: Any
    buffer: ReplayBuffer
    key: jax.Array
    iteration: jax.Array
    updates: jax.Array


class IterationOutput(NamedTuple):
    """What the host reads after an iteration (B = num_games, V = vertex slots).

    Attributes:
      orders: int32[B, V]  # the order each game played (vertex numbers, -1 past its end)
      costs: int32[B]  # its multiplications
      done: bool[B]  # the game completed its order
      task: int32[B]  # the task each game played
      loss, policy_loss, value_loss: float32[]  # means over the iteration's gradient steps (0 if none)
      trained: bool[]  # gradient steps were taken
    """

    orders: jax.Array
    costs: jax.Array
    done: jax.Array
    task: jax.Array
    loss: jax.Array
    policy_loss: jax.Array
    value_loss: jax.Array
    trained: jax.Array


def make_optimizer(config: AlphaZeroConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip by global norm, then AdamW (decoupled weight decay on matrices only) with a linear
    warm-up and cosine decay. Returns (optimizer, learning-rate schedule over gradient steps)."""
    per = max(1, config.updates_per_iteration)
    warmup = max(1, config.warmup_iterations * per)
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(warmup + 1, config.schedule_length * per),
        end_value=config.learning_rate * config.end_lr_factor,
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    optimizer = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
    )
    return optimizer, schedule


def init_train_state(config: AlphaZeroConfig, tasks: Tasks, key: jax.Array) -> TrainState:
    """Fresh parameters, optimiser state and an empty replay buffer."""
    init_key, key = jax.random.split(key)
    example = jax.tree.map(lambda x: x[0], tasks.initial)
    params, opt_state = _initializer(_compile_key(config))(init_key, example, jnp.log(tasks.scale[0]))
    N, V = example.codes.shape
    return TrainState(
        params=params,
        opt_state=opt_state,
        buffer=replay_init(config.replay_size, N, V),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        updates=jnp.zeros((), jnp.int32),
    )


@functools.cache
def _initializer(config: AlphaZeroConfig):
    """jit of (key, state, log_scale) -> (params, opt_state); cached (eager init is slow)."""
    net = make_network(config)
    optimizer, _ = make_optimizer(config)

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
    states = restore_states(tasks.initial, batch)
    scale = tasks.scale[batch.task]
    logits, h = jax.vmap(net.apply, in_axes=(None, 0, 0))(params, states, jnp.log(scale))
    logits = mask_logits(logits, states.eliminable)
    target = batch.policy
    entropy = -jnp.sum(jnp.where(target > 0, target * jnp.log(jnp.where(target > 0, target, 1.0)), 0.0), -1)
    policy_loss = jnp.mean(optax.softmax_cross_entropy(logits, target) - entropy)
    value_loss = 0.5 * jnp.mean((h - value_transform(batch.value, value_kind)) ** 2)
    return policy_loss + value_weight * value_loss, (policy_loss, value_loss)


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
        return nxt, (states.codes, states.eliminable, out.action_weights, reward / scale, valid)

    final, (codes, eliminable, weights, rewards, valid) = jax.lax.scan(move, states, jax.random.split(key, length))
    rewards = jnp.where(valid, rewards, 0.0)
    to_go = jnp.cumsum(rewards[::-1], axis=0)[::-1]  # [T, B] normalised return from each state
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
    T, B = valid.shape
    items = Transitions(
        codes=flat(codes),
        eliminable=flat(eliminable),
        task=flat(jnp.broadcast_to(task, (T, B))),
        policy=flat(weights),
        value=flat(to_go),
    )
    return final, items, flat(valid)


def _compile_key(config: AlphaZeroConfig) -> AlphaZeroConfig:
    """The config with the fields that do not change the compiled iteration normalised."""
    length = config.schedule_length
    return dataclasses.replace(
        config, iterations=length, schedule_iterations=length, minutes=None, seed=0, checkpoint_every=1
    )


def build_iteration(config: AlphaZeroConfig, mesh: Mesh, num_tasks: int, length: int):
    """The jitted ``iteration(state: TrainState, tasks: Tasks) -> (TrainState, IterationOutput)``
    (the state argument is donated). `length` is the episode length (the most intermediates
    among the tasks)."""
    return _build(_compile_key(config), mesh, num_tasks, length)


@functools.cache
def _build(config: AlphaZeroConfig, mesh: Mesh, num_tasks: int, length: int):
    net = make_network(config)
    optimizer, _ = make_optimizer(config)
    settings = SearchSettings.from_config(config)
    B, M, U = config.num_games, config.batch_size, config.updates_per_iteration
    games = NamedSharding(mesh, P(AXIS))
    replicated = NamedSharding(mesh, P())
    loss = functools.partial(loss_fn, net=net, value_kind=config.value_transform, value_weight=config.value_weight)
    grad_fn = jax.value_and_grad(lambda p, b, t: loss(p, batch=b, tasks=t), has_aux=True)

    def train_steps(params, opt_state, buffer: ReplayBuffer, tasks: Tasks, key):
        def one(carry, key):
            params, opt_state = carry
            batch = jax.lax.with_sharding_constraint(replay_sample(buffer, key, M), games)
            (total, (pl, vl)), grads = grad_fn(params, batch, tasks)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), jnp.stack([total, pl, vl])

        (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), jax.random.split(key, U))
        return params, opt_state, losses.mean(0)

    def skip(params, opt_state, buffer, tasks, key):
        return params, opt_state, jnp.zeros(3, jnp.float32)

    def iteration(ts: TrainState, tasks: Tasks):
        key, play_key, train_key = jax.random.split(ts.key, 3)
        task = (jnp.arange(B) + ts.iteration * B) % num_tasks
        final, items, valid = play_episode(net, ts.params, tasks, task, play_key, settings, length, games)
        buffer = replay_add(ts.buffer, items, valid)
        trained = (buffer.size >= max(config.min_replay, 1)) & (U > 0)
        params, opt_state, losses = jax.lax.cond(
            trained, train_steps, skip, ts.params, ts.opt_state, buffer, tasks, train_key
        )
        new = TrainState(
            params=params,
            opt_state=opt_state,
            buffer=buffer,
            key=key,
            iteration=ts.iteration + 1,
            updates=ts.updates + jnp.where(trained, U, 0),
        )
        out = IterationOutput(
            orders=final.order,
            costs=final.cost,
            done=env.is_terminal(final),
            task=task,
            loss=losses[0],
            policy_loss=losses[1],
            value_loss=losses[2],
            trained=trained,
        )
        return new, out

    return jax.jit(
        iteration,
        donate_argnums=0,
        out_shardings=(replicated, replicated),
        compiler_options=compiler_options(config),
    )


def compiler_options(config: AlphaZeroConfig) -> dict[str, Any] | None:
    """XLA options of the compiled functions (the backend optimisation level, if set)."""
    if config.xla_opt_level is None:
        return None
    return {"xla_backend_optimization_level": config.xla_opt_level}
