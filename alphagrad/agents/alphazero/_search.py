"""Gumbel MuZero search with the env core as a perfect model (mctx), in normalised units.

Rewards inside the search and the values the network predicts are divided by the graph's cost
scale (its best classic cost: the least of forward, reverse and Markowitz), so a game's return
is about -1 for an order as good as the best classic one, whatever the graph's size. The
embedding of a search node is ``(State[B], scale float32[B])``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import mctx

from alphagrad import env
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._network import (
    PolicyValueNet,
    inverse_value_transform,
    mask_logits,
)

__all__ = ["make_network", "evaluate", "search", "SearchSettings"]


class SearchSettings(NamedTuple):
    """The static search parameters (hashable, from `AlphaZeroConfig`)."""

    num_simulations: int
    max_num_considered_actions: int
    gumbel_scale: float
    value_scale: float
    maxvisit_init: float
    value_transform: str

    @classmethod
    def from_config(cls, config: AlphaZeroConfig, **changes) -> SearchSettings:
        settings = cls(
            num_simulations=config.num_simulations,
            max_num_considered_actions=config.max_num_considered_actions,
            gumbel_scale=config.gumbel_scale,
            value_scale=config.value_scale,
            maxvisit_init=config.maxvisit_init,
            value_transform=config.value_transform,
        )
        return settings._replace(**changes)


def make_network(config: AlphaZeroConfig) -> PolicyValueNet:
    return PolicyValueNet(
        embed_dim=config.embed_dim,
        edge_dim=config.edge_dim,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        edges_per_node=config.edges_per_node,
    )


def evaluate(net: PolicyValueNet, params, states: env.State, scale: jax.Array, transform: str):
    """Masked prior logits float32[B, V] and decoded values float32[B] (normalised return-to-go,
    0 in terminal states) of a batch of states."""
    logits, h = jax.vmap(net.apply, in_axes=(None, 0, 0))(params, states, jnp.log(scale))
    value = inverse_value_transform(h, transform)
    value = jnp.where(env.is_terminal(states), 0.0, value)
    return mask_logits(logits, states.eliminable), value


def _recurrent_fn(net: PolicyValueNet, transform: str):
    def recurrent_fn(params, key, action, embedding):
        del key
        states, scale = embedding
        next_states, reward, terminated = jax.vmap(env.step)(states, action)
        logits, value = evaluate(net, params, next_states, scale, transform)
        output = mctx.RecurrentFnOutput(
            reward=reward / scale,
            discount=jnp.where(terminated, 0.0, 1.0),
            prior_logits=logits,
            value=value,
        )
        return output, (next_states, scale)

    return recurrent_fn


def search(
    net: PolicyValueNet, params, states: env.State, scale: jax.Array, key: jax.Array, settings: SearchSettings
) -> mctx.PolicyOutput:
    """Runs Gumbel MuZero from a batch of states.

    Args:
      states: `State` with a leading batch axis B (terminal states are allowed: their result is
        unused, the env makes any action a no-op there).
      scale: float32[B], the cost scale of each game's graph.
      key: PRNG key.

    Returns:
      `mctx.PolicyOutput`: ``action`` int32[B], ``action_weights`` float32[B, V] (zero on illegal
      actions).
    """
    logits, value = evaluate(net, params, states, scale, settings.value_transform)
    root = mctx.RootFnOutput(prior_logits=logits, value=value, embedding=(states, scale))
    qtransform = functools.partial(
        mctx.qtransform_completed_by_mix_value,
        value_scale=settings.value_scale,
        maxvisit_init=settings.maxvisit_init,
        rescale_values=True,
    )
    return mctx.gumbel_muzero_policy(
        params=params,
        rng_key=key,
        root=root,
        recurrent_fn=_recurrent_fn(net, settings.value_transform),
        num_simulations=settings.num_simulations,
        invalid_actions=~states.eliminable,
        qtransform=qtransform,
        max_num_considered_actions=settings.max_num_considered_actions,
        gumbel_scale=settings.gumbel_scale,
    )
