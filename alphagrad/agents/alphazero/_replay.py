"""A fixed-size circular replay buffer of transitions, as a pytree of arrays (pure functions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from alphagrad.agents.alphazero._network import NetInput
from alphagrad.env import State

__all__ = ["ReplayBuffer", "Transitions", "replay_init", "replay_add", "replay_sample", "restore_inputs"]


@struct.dataclass
class Transitions:
    """A batch of M training examples. A state is stored as the parts that change during a game,
    its edges as a padded list of E slots (`alphagrad.env.edge_list`, E = the network's
    `edge_capacity`); the rest comes from its task's initial state (`restore_inputs`).

    Attributes:
      edges: int32[M, E]  # src * V + dst of the state's edges
      edge_codes: int8[M, E]  # their codes, 0 = unused slot
      eliminable: bool[M, V]  # the state's legal actions
      task: int32[M]  # index of the task (graph) the game played
      policy: float32[M, V]  # the search's action weights (policy target)
      value: float32[M]  # the normalised return-to-go from this state (value target, untransformed)
    """

    edges: jax.Array
    edge_codes: jax.Array
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


def replay_init(capacity: int, num_edges: int, num_vertices: int) -> ReplayBuffer:
    """An empty buffer of `capacity` transitions of E = `num_edges` edge slots, V = `num_vertices`."""
    C, E, V = capacity, num_edges, num_vertices
    data = Transitions(
        edges=jnp.zeros((C, E), jnp.int32),
        edge_codes=jnp.zeros((C, E), jnp.int8),
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


def restore_inputs(initial: State, items: Transitions) -> NetInput:
    """The network inputs of `items` (a batch M): the edges and legal actions stored, the other
    fields from the task's initial state (`State` with a leading axis K)."""
    pick = lambda x: x[items.task]  # noqa: E731
    return NetInput(edges=items.edges, edge_codes=items.edge_codes, eliminable=items.eliminable,
                    is_output=pick(initial.is_output), vertex_mask=pick(initial.vertex_mask),
                    input_mask=pick(initial.input_mask), src_shape=pick(initial.src_shape),
                    dst_shape=pick(initial.dst_shape))  # fmt: skip
