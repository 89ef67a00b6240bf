"""The policy-value network on graphs beyond the paper's 22 codes and 2-D shapes: one set of
parameters, extended codes read through their buckets, dims of any rank read alike."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import env
from alphagrad.agents.alphazero._network import PolicyValueNet, _node_features, net_input
from alphagrad.graph import MIN_CODE
from tests.env.rankn_models import ALIAS, ALIASED, aliased, relabel, use_tables

#: -O0: these checks are about values, not speed (compiling at -O0 takes a fraction of the time).
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
NET = PolicyValueNet(embed_dim=16, edge_dim=8, num_layers=1, num_heads=2, edges_per_node=8)


def _graph():
    gen = env.RandomGraphGenerator(num_inputs=(2, 4), num_vertices=(8, 12), tensor_fraction=1.0, max_dim=4,
                                   cost_model="exact")  # fmt: skip
    return next(g for g in map(gen, range(50)) if sum(e.code == ALIASED for e in g.edges) >= 2)


def _net_input(state: env.State):
    return _jitted_net_input(state, NET.edges_per_node)


_jitted_net_input = _jit(net_input, static_argnums=1)


def test_extended_codes_share_the_parameters_and_read_their_bucket(monkeypatch):
    g = _graph()
    alias = relabel(g)
    use_tables(monkeypatch, {alias: aliased(g)})
    base_in = _net_input(env.init_state(g))
    # The relabelled graph's input (edge_list does not look at the codes' values, only at 0).
    codes = np.asarray(base_in.edge_codes)
    alias_in = base_in.replace(edge_codes=np.where(codes == ALIASED, np.int8(ALIAS), codes))
    assert (codes == ALIASED).sum() == (np.asarray(env.init_state(alias).codes) == ALIAS).sum() >= 2
    shapes = jax.eval_shape(NET.init, jax.random.PRNGKey(0), base_in, jnp.float32(0.0))
    assert jax.eval_shape(NET.init, jax.random.PRNGKey(0), alias_in, jnp.float32(0.0)) == shapes
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    apply = _jit(NET.apply)
    logits, value = apply(params, alias_in, jnp.float32(1.0))
    assert logits.shape == (g.num_vertices,) and np.isfinite(logits).all() and np.isfinite(value)
    base_logits, base_value = apply(params, base_in, jnp.float32(1.0))
    assert not np.allclose(logits, base_logits)  # code 12 has an embedding of its own
    # Code 12 is bucket 0 of the extended codes: given code 1's embedding there, the network
    # cannot tell the relabelled graph from the original.
    for side in ("in_edges", "out_edges"):
        table = params["params"][side]
        extended = np.array(table["extended_code"]["embedding"])
        extended[0] = np.asarray(table["code"]["embedding"])[ALIASED - MIN_CODE]
        table["extended_code"]["embedding"] = extended
    alias_logits, alias_value = apply(params, alias_in, jnp.float32(1.0))
    np.testing.assert_allclose(alias_logits, base_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alias_value, base_value, rtol=1e-5, atol=1e-5)


def test_node_features_are_the_log_dims_and_do_not_change_with_padding_to_a_higher_rank():
    g = _graph()
    features = _jit(_node_features)
    state = env.init_state(g)
    two = _net_input(state)
    node, alive = (np.asarray(x) for x in features(two))
    # Rank 2: exactly the features the network has always read (log1p of each of the 4 dims
    # (src d1, src d2, dst d1, dst d2), inputs repeating their source dims), then the type.
    V = g.num_vertices
    src = np.asarray(state.src_shape)
    dims = np.concatenate([src, np.concatenate([np.asarray(state.dst_shape), src[V:]])], axis=1)
    assert np.array_equal(node[:, :4], np.log1p(np.abs(dims).astype(np.float32)))
    assert np.array_equal(node[:, 4:].sum(1), np.ones(len(node), np.float32))
    padded = _net_input(env.init_state(g, rank=3))
    assert padded.src_shape.shape[1] == 3
    got, got_alive = (np.asarray(x) for x in features(padded))
    assert np.array_equal(got, node) and np.array_equal(got_alive, alive)
    # A rank-3 node reads (d1, d2 * d3): the features do not grow with R.
    src3, dst3 = np.array(padded.src_shape), np.array(padded.dst_shape)
    src3[:, 2], dst3[:, 2] = 3, 3
    got = np.asarray(features(padded.replace(src_shape=src3, dst_shape=dst3))[0])
    np.testing.assert_allclose(got[:V, 1], np.log1p(np.abs(src[:V, 1]).astype(np.float32) * 3), rtol=1e-6)
    np.testing.assert_allclose(got[:V, 3], np.log1p(np.abs(dst3[:V, 1]).astype(np.float32) * 3), rtol=1e-6)
    np.testing.assert_array_equal(got[:, [0, 2, 4, 5, 6, 7, 8]], node[:, [0, 2, 4, 5, 6, 7, 8]])
