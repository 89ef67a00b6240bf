"""The AlphaZero iteration sharded over two (forced) CPU devices equals the single-device one.

XLA reads its flags at start-up, so the two-device iterations run in a subprocess; the
single-device ones run here, with test_alphazero.py's tiny configuration, so that they are the
very program its training runs compile (one compilation for the suite, through the shared cache
of tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alphagrad.agents.alphazero import AlphaZeroConfig
from alphagrad.agents.alphazero._core import build_iteration, init_train_state
from alphagrad.agents.alphazero._tasks import make_tasks
from alphagrad.tasks import load_graph
from tests.agents.test_alphazero import TASK, TINY

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from alphagrad.agents.alphazero import AlphaZeroConfig
    from tests.agents.test_alphazero_sharding import one_iteration

    assert len(jax.devices()) == 2, jax.devices()
    config = AlphaZeroConfig.from_dict(json.loads(sys.argv[1]))
    print("RESULT" + json.dumps(one_iteration(config, Mesh(np.asarray(jax.devices()), ("games",)))))
    """
)


def one_iteration(config: AlphaZeroConfig, mesh: Mesh) -> dict:
    """One iteration of `config` on the task from a fixed initial state, laid out as `train` does
    (its games, played with the initial parameters, and its updates on them)."""
    g = load_graph(f"ref:{TASK}")
    replicated = NamedSharding(mesh, P())
    tasks = jax.device_put(make_tasks([g])[0], replicated)
    ts = jax.device_put(init_train_state(config, tasks, jax.random.PRNGKey(0)), replicated)
    step = build_iteration(config, mesh, 1, g.num_intermediates)
    ts, out = step(ts, tasks, np.float32(0.0))
    assert bool(out.trained)
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(ts.params)]
    return {
        "devices": len(ts.params["params"]["embed"]["kernel"].sharding.device_set),
        "costs": np.asarray(out.costs).tolist(),
        "orders": np.asarray(out.orders).tolist(),
        "policy_orders": np.asarray(out.policy_orders).tolist(),
        "loss": float(out.loss),
        "params": np.concatenate(leaves).tolist(),
    }


def test_sharded_iteration_matches_single_device():
    environ = dict(os.environ)
    environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    environ["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environ["PYTHONPATH"] = root + os.pathsep + environ.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(TINY.to_dict())], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environ, cwd=root)  # fmt: skip
    try:
        one = one_iteration(TINY, Mesh(np.asarray(jax.devices()[:1]), ("games",)))  # meanwhile, here
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = next(l for l in stdout.splitlines() if l.startswith("RESULT"))
    two = json.loads(line[len("RESULT") :])
    assert one["devices"] == 1 and two["devices"] == 2  # parameters replicated on both devices
    assert one["costs"] == two["costs"] and one["orders"] == two["orders"]
    assert one["policy_orders"] == two["policy_orders"] and len(one["policy_orders"]) == TINY.num_policy_games
    assert abs(one["loss"] - two["loss"]) < 1e-4 * max(1.0, abs(one["loss"]))

    # Adam moves every parameter by about the learning rate whatever the gradient's size, so a
    # near-zero gradient whose rounding differs between the sharded and the single-device
    # reduction can move a parameter by up to the learning rate per update, in either direction.
    # The iteration's two updates at rates of at most 1e-3 bound that by 2e-3. (A second
    # iteration would play with parameters that differ by that much, and a 4-simulation search
    # may then pick other actions: only the first iteration's games are equal by construction.)
    diff = np.abs(np.asarray(two["params"]) - np.asarray(one["params"]))
    assert diff.max() < 2e-3, diff.max()
    assert np.median(diff) < 1e-5, np.median(diff)  # but almost all parameters agree to rounding
