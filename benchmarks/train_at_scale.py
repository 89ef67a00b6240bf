"""The game and the agent at scale: peak memory and time of the gymnasium env, the jitted core
and `alphagrad train` on graphs of about 2,000 and 3,000 vertices.

The graphs are unrolled explicit Euler integrators of the Lorenz system (6 scalar inputs, 3
outputs, 14 equations per step; ``lorenz_143``: 2,002 vertices, 3,575 edges; ``lorenz_214``:
2,996 vertices, 5,350 edges), given to the CLI as ``module:function`` tasks. Each stage runs in
its own process; the parent polls its resident memory and kills it above ``--cap-gb``, the
child reports its peak (``ru_maxrss``) and wall time:

- ``gym``: ``gymnasium.make`` + reset + a full episode (Markowitz order, one ``step`` per
  elimination), the env's observation included;
- ``core``: `env.init_state` + ``jax.jit(env.step)`` over the whole Markowitz order (compile
  included) + one ``jax.jit(env.rollout)`` of it; the cost is checked against `graph.cost`;
- ``train``: ``alphagrad train lorenz_N --iterations 2`` with the small configuration
  `SMALL` (one search game of one simulation per move, no policy game, batch 4, 2,048
  replayed transitions; demonstrations off: the classic orders still seed the run's fallback
  order file), compile included.

Prints the markdown table of docs/benchmarks.md "Training at scale".

    python benchmarks/train_at_scale.py                      # steps 143 and 214, every stage
    python benchmarks/train_at_scale.py --steps 143 --stages train --cap-gb 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import jax.numpy as jnp

#: The configuration of the ``train`` stage (``--set`` overrides of `alphagrad train`).
SMALL = {
    "embed_dim": 16, "edge_dim": 8, "num_layers": 1, "num_heads": 2,
    "num_simulations": 1, "max_num_considered_actions": 2,
    "num_games": 1, "num_policy_games": 0, "batch_size": 4, "updates_per_iteration": 1,
    "replay_size": 2048, "min_replay": 4, "demo_fraction": 0.0,
}  # fmt: skip
ARGS = "f32[] f32[] f32[] f32[] f32[] f32[]"

# The unrolled Euler integrator of the Lorenz system that benchmarks/scale_orders.py orders at scale
# (this directory is on the path when a script here runs, and in the stages' subprocesses).
from scale_orders import lorenz  # noqa: E402


lorenz_143 = lorenz(143)  # 2,002 vertices
lorenz_214 = lorenz(214)  # 2,996 vertices


def _graph(steps: int):
    from alphagrad import tasks

    return tasks.resolve(f"train_at_scale:lorenz_{steps}", args=ARGS).graph()


def stage_gym(steps: int) -> dict:
    import gymnasium

    from alphagrad import env, graph

    g = _graph(steps)
    order = graph.markowitz(g)
    start = time.perf_counter()
    e = gymnasium.make(env.ENV_ID, task=g)
    obs, _ = e.reset(seed=0)
    total = 0.0
    for v in order:
        obs, reward, terminated, _, _ = e.step(v - 1)
        total -= reward
    assert terminated and int(total) == graph.cost(g, order)
    return {"vertices": g.num_vertices, "s": time.perf_counter() - start,
            "obs_mb": sum(x.nbytes for x in obs.values()) / 2**20}  # fmt: skip


def stage_core(steps: int) -> dict:
    import jax

    from alphagrad import env, graph

    g = _graph(steps)
    order = graph.markowitz(g)
    start = time.perf_counter()
    state = env.init_state(g)
    step = jax.jit(env.step, donate_argnums=0)
    for v in order:
        state, _, _ = step(state, v - 1)
    stepped = time.perf_counter() - start
    final, _, _ = jax.jit(env.rollout)(env.init_state(g), jnp.asarray(order, jnp.int32) - 1)
    assert int(state.cost) == int(final.cost) == graph.cost(g, order)
    return {"vertices": g.num_vertices, "s": time.perf_counter() - start, "steps_s": stepped,
            "state_mb": sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20}  # fmt: skip


def stage_train(steps: int) -> dict:
    from alphagrad import cli

    settings = [f"{k}={v}" for k, v in SMALL.items()]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        code = cli.main(["train", f"train_at_scale:lorenz_{steps}", "--args", ARGS, "--iterations", "2",
                         "--out", out, "--set", *settings])  # fmt: skip
        with open(os.path.join(out, "metrics.csv")) as fh:
            rows = fh.read().splitlines()
    assert code == 0 and len(rows) == 3, (code, rows)
    return {"s": time.perf_counter() - start, "metrics": rows}


STAGES = {"gym": stage_gym, "core": stage_core, "train": stage_train}


def run_stage(stage: str, steps: int, cap_gb: float, timeout_s: float) -> dict:
    """Runs one stage in a child process; kills it above `cap_gb` of resident memory."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", stage, "--steps", str(steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, peak, killed = time.perf_counter(), 0.0, None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 2**20
            peak = max(peak, rss)
        except (OSError, StopIteration):
            pass
        elapsed = time.perf_counter() - start
        if peak > cap_gb or elapsed > timeout_s:
            killed = f"killed at {peak:.1f} GB" if peak > cap_gb else f"killed after {elapsed:.0f} s"
            proc.kill()
            break
        time.sleep(0.1)
    out, err = proc.communicate()
    if killed or proc.returncode:
        return {"error": killed or err.strip().splitlines()[-1], "s": time.perf_counter() - start, "gb": peak}
    result = json.loads(out.strip().splitlines()[-1])
    result["gb"] = result.pop("maxrss_kb") / 2**20
    return result


def child(stage: str, steps: int) -> None:
    result = STAGES[stage](steps)
    result["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="143,214", help="integrator steps (143: 2,002 vertices; 214: 2,996)")
    parser.add_argument("--stages", default="gym,core,train")
    parser.add_argument("--cap-gb", type=float, default=8.0, help="kill a stage above this resident memory")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill a stage after this many seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, int(args.steps))
    print(f"{platform.node()}, {os.cpu_count()} CPUs, {datetime.date.today()}")
    print("| graph | stage | peak RSS | wall time | notes |\n|---|---|---:|---:|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        for stage in args.stages.split(","):
            r = run_stage(stage, steps, args.cap_gb, args.timeout)
            notes = r.get("error") or ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items() if k not in ("s", "gb", "metrics")
            )
            print(f"| lorenz_{steps} | {stage} | {r['gb']:.2f} GB | {r['s']:.1f} s | {notes} |", flush=True)
            if "metrics" in r:
                print("\n".join(f"|   | metrics.csv | | | {line[:150]} |" for line in r["metrics"]), flush=True)


if __name__ == "__main__":
    main()
