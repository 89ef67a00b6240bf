"""The AlphaZero iteration sharded over two (forced) CPU devices equals the single-device one.

XLA reads its flags at start-up, so the comparison runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from alphagrad.agents.alphazero import AlphaZeroConfig
    from alphagrad.agents.alphazero._core import build_iteration, init_train_state
    from alphagrad.agents.alphazero._tasks import make_tasks
    from alphagrad.tasks import load_graph

    assert len(jax.devices()) == 2, jax.devices()
    config = AlphaZeroConfig(embed_dim=16, edge_dim=8, num_layers=1, num_heads=2, num_simulations=4,
                             max_num_considered_actions=4, num_games=4, replay_size=512, batch_size=16,
                             updates_per_iteration=2, min_replay=16, iterations=2,
                             xla_opt_level=0)
    g = load_graph("ref:PropaneCombustion")
    results = {}
    for n in (1, 2):
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("games",))
        tasks, _ = make_tasks([g])
        rep = NamedSharding(mesh, P())
        tasks = jax.device_put(tasks, rep)
        ts = jax.device_put(init_train_state(config, tasks, jax.random.PRNGKey(0)), rep)
        step = build_iteration(config, mesh, 1, g.num_intermediates)
        for _ in range(2):
            ts, out = step(ts, tasks)
        leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(ts.params)]
        results[n] = {
            "devices": len(ts.params["params"]["embed"]["kernel"].sharding.device_set),
            "costs": np.asarray(out.costs).tolist(),
            "orders": np.asarray(out.orders).tolist(),
            "loss": float(out.loss),
            "params": np.concatenate(leaves).tolist(),
        }
    print("RESULT" + json.dumps(results))
    """
)


def test_sharded_iteration_matches_single_device():
    environ = dict(os.environ)
    environ["XLA_FLAGS"] = (environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    environ["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environ["PYTHONPATH"] = root + os.pathsep + environ.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=environ, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))
    results = json.loads(line[len("RESULT") :])
    one, two = results["1"], results["2"]
    assert one["devices"] == 1 and two["devices"] == 2  # parameters replicated on both devices
    assert one["costs"] == two["costs"] and one["orders"] == two["orders"]
    assert abs(one["loss"] - two["loss"]) < 1e-4 * max(1.0, abs(one["loss"]))
    import numpy as np

    # Adam moves every parameter by about the learning rate whatever the gradient's size, so a
    # near-zero gradient whose rounding differs between the sharded and the single-device
    # reduction can move a parameter by up to the (warm-up) learning rate per update, in either
    # direction. Four updates at warm-up rates below 1e-3 bound that by 4e-3.
    diff = np.abs(np.asarray(two["params"]) - np.asarray(one["params"]))
    assert diff.max() < 4e-3, diff.max()
    assert np.median(diff) < 1e-5, np.median(diff)  # but almost all parameters agree to rounding
