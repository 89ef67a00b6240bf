"""The policy-value network over vertex tokens, and the value transform.

One token per vertex slot. A token is built from the vertex's own features and from messages
along its in-edges (from every predecessor, vertex or input) and out-edges (to every
successor): each message embeds the edge's structure code and the other end's log-shape and
node type. Messages are aggregated with masked means and log-degree features, so a token does
not depend on the numbering of the vertices, and the tokens are permutation-equivariant.
A few pre-LayerNorm layers follow, each passing messages along the current vertex-to-vertex
edges (so layer k sees k + 1 hops) and then attending over the live tokens (real vertices
not yet eliminated; every token may attend to itself, so no softmax row is empty). There is
no positional encoding. The policy is one logit per token; the value pools the live tokens
(masked mean) together with the log of the graph's cost scale and the live-token count.

Nothing depends on the number of vertex slots V: one set of parameters serves padded graphs of
any size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from alphagrad.env import NODE_INTERMEDIATE, NODE_OUTPUT, State, observe
from alphagrad.graph import MIN_CODE, NUM_CODES

__all__ = ["PolicyValueNet", "value_transform", "inverse_value_transform", "mask_logits", "MASKED_LOGIT"]

#: The logit given to illegal actions: finite, so a softmax over an all-illegal row stays defined.
MASKED_LOGIT = -1e9

_NUM_NODE_TYPES = 5


def value_transform(x: jax.Array, kind: str) -> jax.Array:
    """h(x): "symlog" = sign(x) log(1 + |x|); "identity" = x. Elementwise, any shape."""
    if kind == "symlog":
        return jnp.sign(x) * jnp.log1p(jnp.abs(x))
    if kind == "identity":
        return x
    raise ValueError(f"unknown value transform {kind!r}")


def inverse_value_transform(y: jax.Array, kind: str) -> jax.Array:
    """h^-1(y), the exact inverse of `value_transform`: "symlog" -> sign(y) (exp(|y|) - 1)."""
    if kind == "symlog":
        return jnp.sign(y) * jnp.expm1(jnp.abs(y))
    if kind == "identity":
        return y
    raise ValueError(f"unknown value transform {kind!r}")


def mask_logits(logits: jax.Array, legal: jax.Array) -> jax.Array:
    """logits: float32[..., V], legal: bool[..., V] -> illegal entries set to `MASKED_LOGIT`."""
    return jnp.where(legal, logits, MASKED_LOGIT)


def _node_features(state: State) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-node inputs of one unbatched state.

    Returns:
      (codes int32[N, V] (0 = no edge), node float32[N, 9] (log1p shapes, node-type one-hot),
       alive bool[V] (live tokens), legal bool[V]).
    """
    obs = observe(state)
    codes = obs["codes"].astype(jnp.int32)
    shapes = jnp.log1p(jnp.abs(obs["shapes"]).astype(jnp.float32))  # [N, 4]
    node_type = obs["node_type"].astype(jnp.int32)
    node = jnp.concatenate([shapes, jax.nn.one_hot(node_type, _NUM_NODE_TYPES)], axis=-1)
    V = codes.shape[1]
    vertex_type = node_type[:V]
    alive = (vertex_type == NODE_INTERMEDIATE) | (vertex_type == NODE_OUTPUT)
    return codes, node, alive, obs["action_mask"].astype(bool)


class _EdgeAggregate(nn.Module):
    """Masked mean of edge messages relu(code_emb[code] + W node[other end]) per vertex."""

    edge_dim: int

    @nn.compact
    def __call__(self, codes: jax.Array, other: jax.Array) -> jax.Array:
        """codes: int32[K, V] (axis 0 = the other ends, 0 = no edge); other: float32[K, F].

        Returns: float32[V, edge_dim + 1] (mean message, log1p(degree)).
        """
        code_emb = nn.Embed(NUM_CODES, self.edge_dim, name="code")(codes - MIN_CODE)  # [K, V, E]
        end = nn.Dense(self.edge_dim, name="end")(other)  # [K, E]
        present = (codes != 0).astype(jnp.float32)  # [K, V]
        messages = nn.relu(code_emb + end[:, None, :]) * present[..., None]
        degree = present.sum(0)  # [V]
        mean = messages.sum(0) / jnp.maximum(degree, 1.0)[:, None]
        return jnp.concatenate([mean, jnp.log1p(degree)[:, None]], axis=-1)


class _Layer(nn.Module):
    """A pre-LayerNorm layer: message passing along the current edges, masked self-attention,
    feed-forward, each residual.

    Attention alone treats the tokens as a set, so vertices with the same one-hop
    neighbourhood would stay indistinguishable; the message passing step (mean over
    predecessor and over successor tokens) lets layer k see k + 1 hops of the graph.
    """

    embed_dim: int
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, adjacency: tuple[jax.Array, jax.Array]) -> jax.Array:
        """x: float32[V, D], mask: bool[1, V, V] (query, key), adjacency: (in, out) float32[V, V]
        row-normalised (``in[v, p]``: p -> v) -> float32[V, D]."""
        a_in, a_out = adjacency
        h = nn.LayerNorm()(x)
        x = x + nn.Dense(self.embed_dim, name="messages")(jnp.concatenate([a_in @ h, a_out @ h], axis=-1))
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.embed_dim)(h, h, mask=mask)
        x = x + h
        h = nn.LayerNorm()(x)
        h = nn.Dense(2 * self.embed_dim)(h)
        h = nn.Dense(self.embed_dim)(nn.gelu(h))
        return x + h


class PolicyValueNet(nn.Module):
    """Policy logits and a transformed value for one (unbatched) env `State`; vmap for a batch.

    Attributes:
      embed_dim: token width D.
      edge_dim: message width.
      num_layers: transformer layers.
      num_heads: attention heads.

    Call ``net.apply(params, state, log_scale)`` with ``log_scale: float32[]`` the log of the
    graph's cost scale (the normaliser of rewards). Returns ``(logits float32[V], value
    float32[])``: raw logits (mask them with `mask_logits` and ``state.eliminable``) and h(value)
    in normalised units.
    """

    embed_dim: int = 64
    edge_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4

    @nn.compact
    def __call__(self, state: State, log_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        codes, node, alive, _ = _node_features(state)
        V = codes.shape[1]
        incoming = _EdgeAggregate(self.edge_dim, name="in_edges")(codes, node)  # over all N sources
        outgoing = _EdgeAggregate(self.edge_dim, name="out_edges")(codes[:V].T, node[:V])  # over successors
        in_degree = incoming[:, -1:]
        out_degree = outgoing[:, -1:]
        # log(1 + in * out), the Markowitz degree, is a strong hint for which vertex is cheap.
        markowitz = jnp.log1p(jnp.expm1(in_degree) * jnp.expm1(out_degree))
        tokens = jnp.concatenate([node[:V], incoming, outgoing, markowitz], axis=-1)
        x = nn.Dense(self.embed_dim, name="embed")(tokens)
        mask = (alive[None, :] | jnp.eye(V, dtype=bool))[None]  # [1, V(query), V(key)]
        edges = (codes[:V] != 0).astype(jnp.float32)  # [V(src), V(dst)] between vertices
        a_in = edges.T / jnp.maximum(edges.sum(0), 1.0)[:, None]  # [v, p]: mean over predecessors
        a_out = edges / jnp.maximum(edges.sum(1), 1.0)[:, None]  # [v, c]: mean over successors
        for i in range(self.num_layers):
            x = _Layer(self.embed_dim, self.num_heads, name=f"layer_{i}")(x, mask, (a_in, a_out))
        x = nn.LayerNorm(name="final_norm")(x)

        logits = nn.Dense(1, name="policy_out")(nn.gelu(nn.Dense(self.embed_dim, name="policy_hidden")(x)))[:, 0]

        weights = alive.astype(jnp.float32)
        pooled = (x * weights[:, None]).sum(0) / jnp.maximum(weights.sum(), 1.0)
        extras = jnp.stack([jnp.asarray(log_scale, jnp.float32), jnp.log1p(weights.sum())])
        h = nn.gelu(nn.Dense(self.embed_dim, name="value_hidden")(jnp.concatenate([pooled, extras])))
        value = nn.Dense(1, name="value_out")(h)[0]
        return logits, value
