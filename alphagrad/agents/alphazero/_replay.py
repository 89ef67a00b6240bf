"""A fixed-size circular replay buffer of transitions, as a pytree of arrays (pure functions)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from alphagrad.env import State

__all__ = ["ReplayBuffer", "Transitions", "replay_init", "replay_add", "replay_sample", "restore_states"]


@struct.dataclass
class Transitions:
    """A batch of M training examples. A state is stored as the parts that change during a game;
    the rest comes from its task's initial state (`restore_states`).

    Attributes:
      codes: int8[M, N, V]  # the state's edge codes
      eliminable: bool[M, V]  # the state's legal actions
      task: int32[M]  # index of the task (graph) the game played
      policy: float32[M, V]  # the search's action weights (policy target)
      value: float32[M]  # the normalised return-to-go from this state (value target, untransformed)
    """

    codes: jax.Array
    eliminable: jax.Array
    task: jax.Array
    policy: jax.Array
    value: jax.Array


@struct.dataclass
class ReplayBuffer:
    """Capacity C transitions, overwritten oldest first.

    Attributes:
      data: `Transitions` with leading axis C.
      position: int32[]  # the next slot to write
      size: int32[]  # filled slots, <= C
      added: int32[]  # transitions ever added (wraps at 2**31)
    """

    data: Transitions
    position: jax.Array
    size: jax.Array
    added: jax.Array

    @property
    def capacity(self) -> int:
        return self.data.task.shape[0]


def replay_init(capacity: int, num_nodes: int, num_vertices: int) -> ReplayBuffer:
    """An empty buffer of `capacity` transitions for states of N = `num_nodes`, V = `num_vertices`."""
    C, N, V = capacity, num_nodes, num_vertices
    data = Transitions(
        codes=jnp.zeros((C, N, V), jnp.int8),
        eliminable=jnp.zeros((C, V), bool),
        task=jnp.zeros((C,), jnp.int32),
        policy=jnp.zeros((C, V), jnp.float32),
        value=jnp.zeros((C,), jnp.float32),
    )
    def zero():  # distinct buffers: a donated state must not alias its fields
        return jnp.zeros((), jnp.int32)

    return ReplayBuffer(data=data, position=zero(), size=zero(), added=zero())


def replay_add(buffer: ReplayBuffer, items: Transitions, valid: jax.Array) -> ReplayBuffer:
    """Appends the items with ``valid`` (bool[M]) set, in order, overwriting the oldest.

    The valid items are packed (their rank among the valid ones gives their slot), so padding
    moves of finished games take no space. If more than C items are valid, the last C win.
    """
    C = buffer.capacity
    rank = jnp.cumsum(valid.astype(jnp.int32)) - 1
    count = jnp.sum(valid.astype(jnp.int32))
    keep = valid & (rank >= count - C)
    slot = jnp.where(keep, (buffer.position + rank) % C, C)  # C = out of range: dropped
    data = jax.tree.map(lambda old, new: old.at[slot].set(new, mode="drop"), buffer.data, items)
    return ReplayBuffer(
        data=data,
        position=(buffer.position + count) % C,
        size=jnp.minimum(buffer.size + count, C),
        added=buffer.added + count,
    )


def replay_sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Transitions:
    """M = `batch_size` transitions drawn uniformly with replacement from the filled slots
    (slot 0 repeatedly if the buffer is empty; callers skip updates then)."""
    index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda x: x[index], buffer.data)


def restore_states(initial: State, items: Transitions) -> State:
    """The env states of `items`: the task's initial state ([K] batch) with codes and legal
    actions replaced. Fields the network never reads (order, cost, step count) stay initial."""
    base = jax.tree.map(lambda x: x[items.task], initial)
    return dataclasses.replace(base, codes=items.codes, eliminable=items.eliminable)
