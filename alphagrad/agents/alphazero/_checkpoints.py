"""Orbax checkpoints of a run directory: ``checkpoints/<iteration>/`` holds the network parameters,
the rest of the train state (optimiser, replay and demonstration buffers, PRNG key, counters) and a
JSON record (`RunRecord.to_json`). `load_params` reads the parameters back for `solve`.

orbax is imported inside the functions: it loads slowly and only runs with a directory need it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from alphagrad import env
from alphagrad.agents.alphazero._config import AlphaZeroConfig
from alphagrad.agents.alphazero._core import TrainState
from alphagrad.agents.alphazero._search import make_network
from alphagrad.errors import AlphagradError
from alphagrad.graph import Edge, Graph, Vertex

__all__ = ["load_params", "open_checkpoints", "restore_checkpoint", "save_checkpoint"]


def open_checkpoints(out_dir: str):
    """The orbax manager of ``out_dir/checkpoints`` (the latest two are kept; saves are synchronous)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, "checkpoints")), options=options)


def _rest(ts: TrainState) -> dict[str, Any]:
    """The train state other than the parameters, saved as one tree."""
    return {"opt_state": ts.opt_state, "buffer": ts.buffer, "demos": ts.demos, "key": ts.key,
            "iteration": ts.iteration, "updates": ts.updates}  # fmt: skip


def _abstract(tree):
    import orbax.checkpoint as ocp

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save_checkpoint(manager, ts: TrainState, meta: dict[str, Any]) -> None:
    """Saves `ts` and the JSON record `meta` as the checkpoint of iteration ``ts.iteration``."""
    import orbax.checkpoint as ocp

    manager.save(
        int(ts.iteration),
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(ts.params),
            state=ocp.args.StandardSave(_rest(ts)),
            meta=ocp.args.JsonSave(meta),
        ),
        force=True,
    )
    manager.wait_until_finished()


def restore_checkpoint(manager, like: TrainState) -> tuple[TrainState, dict[str, Any]] | None:
    """The train state (shaped like `like`) and JSON record of the latest checkpoint; None if there is none."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    restored = _restore(manager, step, ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(like.params)),
        state=ocp.args.StandardRestore(_abstract(_rest(like))),
        meta=ocp.args.JsonRestore(),
    ))
    ts = TrainState(params=restored["params"], **restored["state"])
    return ts, dict(restored["meta"])


def load_params(model_dir: str) -> tuple[Any, AlphaZeroConfig]:
    """The parameters of the latest checkpoint of run directory `model_dir`, and its config.

    Raises:
      AlphagradError: `model_dir` is not a run directory, or has no checkpoint yet.
    """
    import orbax.checkpoint as ocp

    config_path = os.path.join(model_dir, "config.json")
    if not os.path.exists(config_path):
        raise AlphagradError(f"{model_dir} is not a training run directory (no config.json); pass the --out of `alphagrad train`")
    with open(config_path) as fh:
        config = AlphaZeroConfig.from_dict(json.load(fh))
    manager = open_checkpoints(model_dir)
    step = manager.latest_step()
    if step is None:
        raise AlphagradError(f"{model_dir} has no checkpoint yet; train for at least one iteration")
    # Shapes of the parameters do not depend on the graph: any small state initialises them.
    example = env.init_state(_tiny_graph())
    like = jax.eval_shape(make_network(config).init, jax.random.PRNGKey(0), example, jnp.zeros(()))
    restored = _restore(manager, step, ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(like))))
    return restored["params"], config


def _restore(manager, step: int, args):
    """`manager.restore` of `step`, with a checkpoint whose arrays do not fit the network and state
    this version builds (one written by an older alphagrad, before the network embedded the
    extended structure codes of rank >= 3 graphs, say) reported as such instead of as orbax's
    structure error.

    Raises:
      AlphagradError: the checkpoint's trees or shapes differ from what this version restores.
    """
    try:
        return manager.restore(step, args=args)
    except ValueError as error:
        raise AlphagradError(
            f"the checkpoint at step {step} in {manager.directory} does not fit this version's network and "
            f"training state (written by another alphagrad version or configuration: {error}); start a new run "
            "in another directory, or use the alphagrad version that wrote it") from error


def _tiny_graph() -> Graph:
    """A two-vertex scalar graph: the smallest state that initialises the network."""
    return Graph(
        num_inputs=1,
        input_shapes=((1, 1),),
        vertices=(Vertex(1), Vertex(2)),
        edges=(Edge(1, 2, 1, (1, 1), (1, 1)), Edge(2, 3, 1, (1, 1), (1, 1))),
        outputs=(2,),
    )
