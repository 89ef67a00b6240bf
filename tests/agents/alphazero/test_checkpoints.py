"""Checkpoints that do not fit this version's network are refused with a message, not orbax's error."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from alphagrad import env
from alphagrad.agents import alphazero
from alphagrad.agents.alphazero._checkpoints import _tiny_graph, load_params, open_checkpoints
from alphagrad.agents.alphazero._search import make_network
from alphagrad.errors import AlphagradError

CONFIG = alphazero.AlphaZeroConfig(embed_dim=8, edge_dim=4, num_layers=1, num_heads=1)


def _save_params(out_dir, params) -> None:
    import orbax.checkpoint as ocp

    out_dir.mkdir(exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(CONFIG.to_dict()))
    manager = open_checkpoints(str(out_dir))
    manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
    manager.wait_until_finished()


def _params():
    """The network's parameters as zeros (their shapes by `jax.eval_shape`: initialising op by op
    takes seconds)."""
    shapes = jax.eval_shape(make_network(CONFIG).init, jax.random.PRNGKey(0), env.init_state(_tiny_graph()),
                            jnp.zeros(()))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def test_a_checkpoint_without_a_layer_of_this_network_is_refused_with_a_message(tmp_path):
    # An older version's network had no embedding of the extended structure codes.
    params = _params()
    _save_params(tmp_path / "now", params)  # (a run written by this version loads)
    loaded, config = load_params(str(tmp_path / "now"))
    assert config == CONFIG and jax.tree.structure(loaded) == jax.tree.structure(params)
    inner = dict(params["params"])
    del inner[next(k for k in inner if k != "embed")]
    _save_params(tmp_path, {"params": inner})
    with pytest.raises(AlphagradError, match="does not fit this version's network"):
        load_params(str(tmp_path))
