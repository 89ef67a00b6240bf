"""The policy-value network over vertex tokens, and the value transform.

One token per vertex slot. A token is built from the vertex's own features and from messages
along its in-edges (from every predecessor, vertex or input) and out-edges (to every
successor): each message embeds the edge's structure code and the other end's log-size and
node type. The paper's 22 codes (-10..11) have an embedding each; the extended codes 12, 13, ...
of graphs with arrays of rank >= 3 (numbered per graph, so a number means nothing across graphs)
share `EXTENDED_CODE_BUCKETS` embeddings by ``(code - 12) % EXTENDED_CODE_BUCKETS``, which
tells a graph's first few extended structures apart. A node's size features are the log of its
first dim and of the product of the others, on each side of its edges: 4 features for any
structural rank R (for R = 2, the log of each dim). Messages are aggregated with masked means and log-degree features, so a token does
not depend on the numbering of the vertices, and the tokens are permutation-equivariant.
A few pre-LayerNorm layers follow, each passing messages along the current vertex-to-vertex
edges (so layer k sees k + 1 hops) and then attending over the live tokens (real vertices
not yet eliminated; every token may attend to itself, so no softmax row is empty). There is
no positional encoding. The policy is one logit per token; the value pools the live tokens
(masked mean) together with the log of the graph's cost scale and the live-token count.

Nothing depends on the number of vertex slots V: one set of parameters serves padded graphs of
any size.

Memory grows with the edges, not with V x V: the network reads a state's edges as a padded list
(`NetInput`, E = `edge_capacity` slots: every possible edge of a small state, 16 per node by
default past that) and aggregates messages with segment sums, so its activations are [E, width]
and [V, width]. The attention scores ([heads, V, V] per layer) are the one quadratic part left.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from alphagrad.env import NODE_INTERMEDIATE, NODE_OUTPUT, State, edge_list, node_observation
from alphagrad.graph import MAX_CODE, MIN_CODE, NUM_CODES

__all__ = [
    "PolicyValueNet",
    "NetInput",
    "net_input",
    "edge_capacity",
    "value_transform",
    "inverse_value_transform",
    "mask_logits",
    "MASKED_LOGIT",
    "EXTENDED_CODE_BUCKETS",
]

#: The logit given to illegal actions: finite, so a softmax over an all-illegal row stays defined.
MASKED_LOGIT = -1e9

_NUM_NODE_TYPES = 5

#: Embeddings shared by the extended structure codes (> MAX_CODE): fixed, so one set of
#: parameters serves graphs with any number of codes.
EXTENDED_CODE_BUCKETS = 8


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


def edge_capacity(num_nodes: int, num_vertices: int, edges_per_node: int) -> int:
    """E, the edge slots of the network's input for states of N nodes and V vertex slots:
    every possible edge (N * V) when that is at most ``edges_per_node * N``, else that many."""
    return min(num_nodes * num_vertices, edges_per_node * num_nodes)


@struct.dataclass
class NetInput:
    """What the network reads of one state (N nodes, V vertex slots, E edge slots): its edges as
    a padded list (`env.edge_list`) and the per-node fields of its `State`.

    Attributes:
      edges: int32[E]  # src * V + dst of each edge (node layout of `alphagrad.env`)
      edge_codes: int8[E]  # its structure code; 0 = unused slot
      eliminable, is_output, vertex_mask: bool[V]; input_mask: bool[I]
      src_shape: int32[N, R]; dst_shape: int32[V, R]  # as in `State` (R dims per node)
    """

    edges: jax.Array
    edge_codes: jax.Array
    eliminable: jax.Array
    is_output: jax.Array
    vertex_mask: jax.Array
    input_mask: jax.Array
    src_shape: jax.Array
    dst_shape: jax.Array


def net_input(state: State, edges_per_node: int) -> NetInput:
    """The `NetInput` of an unbatched `State` (its first `edge_capacity` edges, row-major)."""
    N, V = state.codes.shape
    edges, edge_codes = edge_list(state.codes, edge_capacity(N, V, edges_per_node))
    return NetInput(edges=edges, edge_codes=edge_codes, eliminable=state.eliminable, is_output=state.is_output,
                    vertex_mask=state.vertex_mask, input_mask=state.input_mask, src_shape=state.src_shape,
                    dst_shape=state.dst_shape)  # fmt: skip


def _node_features(x: NetInput) -> tuple[jax.Array, jax.Array]:
    """(node float32[N, 9] (log1p sizes, node-type one-hot), alive bool[V] (live tokens)).

    The sizes of a node of R dims d_1..d_R on each side (source, destination) are |d_1| and
    |d_2 * ... * d_R| (for R = 2: its two dims), so the features have one width for any R and a
    rank-2 node padded with 1s reads the same.
    """
    shapes, node_type = node_observation(x.src_shape, x.dst_shape, x.vertex_mask, x.is_output, x.eliminable,
                                         x.input_mask)  # fmt: skip
    R = x.src_shape.shape[-1]
    sizes = jnp.abs(shapes).astype(jnp.float32)  # [N, 2R]: source dims, then destination dims
    src, dst = sizes[:, :R], sizes[:, R:]
    sizes = jnp.stack([src[:, 0], jnp.prod(src[:, 1:], axis=-1), dst[:, 0], jnp.prod(dst[:, 1:], axis=-1)], -1)
    node_type = node_type.astype(jnp.int32)
    node = jnp.concatenate([jnp.log1p(sizes), jax.nn.one_hot(node_type, _NUM_NODE_TYPES)], -1)
    vertex_type = node_type[: x.eliminable.shape[0]]
    return node, (vertex_type == NODE_INTERMEDIATE) | (vertex_type == NODE_OUTPUT)


def _mean(values: jax.Array, segment: jax.Array, weight: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """Per segment in 0..count-1, the mean of ``values`` (float32[E, F]) over the entries of
    weight 1 (float32[E], 0 or 1): (float32[count, F], their number float32[count])."""
    total = jax.ops.segment_sum(values * weight[:, None], segment, num_segments=count)
    number = jax.ops.segment_sum(weight, segment, num_segments=count)
    return total / jnp.maximum(number, 1.0)[:, None], number


class _EdgeAggregate(nn.Module):
    """Masked mean of edge messages relu(code_emb[code] + W node[other end]) per vertex."""

    edge_dim: int

    @nn.compact
    def __call__(self, codes: jax.Array, other: jax.Array, vertex: jax.Array, present: jax.Array, V: int):
        """codes: int32[E] (0 = no edge), other: float32[E, F] (the other end's features),
        vertex: int32[E] (the vertex slot the message goes to), present: float32[E] (0 or 1).

        Returns: float32[V, edge_dim + 1] (mean message, log1p(degree)).
        """
        base = nn.Embed(NUM_CODES, self.edge_dim, name="code")(jnp.clip(codes - MIN_CODE, 0, NUM_CODES - 1))
        bucket = (codes - (MAX_CODE + 1)) % EXTENDED_CODE_BUCKETS
        extended = nn.Embed(EXTENDED_CODE_BUCKETS, self.edge_dim, name="extended_code")(bucket)
        code_emb = jnp.where((codes > MAX_CODE)[:, None], extended, base)  # [E, D_e]
        end = nn.Dense(self.edge_dim, name="end")(other)  # [E, D_e]
        mean, degree = _mean(nn.relu(code_emb + end), vertex, present, V)
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
    def __call__(self, x: jax.Array, mask: jax.Array, edges: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        """x: float32[V, D], mask: bool[1, V, V] (query, key), edges: (src, dst int32[E], weight
        float32[E], 1 for the edges between two vertices) -> float32[V, D]."""
        src, dst, weight = edges
        V = x.shape[0]
        h = nn.LayerNorm()(x)
        from_preds, _ = _mean(h[src], dst, weight, V)  # mean over predecessor tokens
        from_succs, _ = _mean(h[dst], src, weight, V)  # mean over successor tokens
        x = x + nn.Dense(self.embed_dim, name="messages")(jnp.concatenate([from_preds, from_succs], axis=-1))
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
      edges_per_node: edge slots per node of the input (`edge_capacity`); it sets the input's
        size only, not the parameters.

    Call ``net.apply(params, state, log_scale)`` with a `State` or its `NetInput` and
    ``log_scale: float32[]`` the log of the graph's cost scale (the normaliser of rewards). Returns ``(logits float32[V], value
    float32[])``: raw logits (mask them with `mask_logits` and ``state.eliminable``) and h(value)
    in normalised units.
    """

    embed_dim: int = 64
    edge_dim: int = 32
    num_layers: int = 2
    num_heads: int = 4
    edges_per_node: int = 16

    @nn.compact
    def __call__(self, state: State | NetInput, log_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_in = net_input(state, self.edges_per_node) if isinstance(state, State) else state
        node, alive = _node_features(x_in)
        V = alive.shape[0]
        src, dst = x_in.edges // V, x_in.edges % V  # node row, vertex slot
        present = (x_in.edge_codes != 0).astype(jnp.float32)
        codes = x_in.edge_codes.astype(jnp.int32)
        between = present * (src < V)  # edges between two vertices (inputs have no token)
        src_vertex = jnp.minimum(src, V - 1)  # a token index for every edge (others have weight 0)
        incoming = _EdgeAggregate(self.edge_dim, name="in_edges")(codes, node[src], dst, present, V)
        outgoing = _EdgeAggregate(self.edge_dim, name="out_edges")(codes, node[dst], src_vertex, between, V)
        in_degree = incoming[:, -1:]
        out_degree = outgoing[:, -1:]
        # log(1 + in * out), the Markowitz degree, is a strong hint for which vertex is cheap.
        markowitz = jnp.log1p(jnp.expm1(in_degree) * jnp.expm1(out_degree))
        tokens = jnp.concatenate([node[:V], incoming, outgoing, markowitz], axis=-1)
        x = nn.Dense(self.embed_dim, name="embed")(tokens)
        mask = (alive[None, :] | jnp.eye(V, dtype=bool))[None]  # [1, V(query), V(key)]
        for i in range(self.num_layers):
            x = _Layer(self.embed_dim, self.num_heads, name=f"layer_{i}")(x, mask, (src_vertex, dst, between))
        x = nn.LayerNorm(name="final_norm")(x)

        logits = nn.Dense(1, name="policy_out")(nn.gelu(nn.Dense(self.embed_dim, name="policy_hidden")(x)))[:, 0]

        weights = alive.astype(jnp.float32)
        pooled = (x * weights[:, None]).sum(0) / jnp.maximum(weights.sum(), 1.0)
        extras = jnp.stack([jnp.asarray(log_scale, jnp.float32), jnp.log1p(weights.sum())])
        h = nn.gelu(nn.Dense(self.embed_dim, name="value_hidden")(jnp.concatenate([pooled, extras])))
        value = nn.Dense(1, name="value_out")(h)[0]
        return logits, value
