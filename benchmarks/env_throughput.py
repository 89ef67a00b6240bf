"""Elimination steps per second of the environment on the RoeFlux_1d reference graph.

Measures in one run:
- the gymnasium API loop (``gymnasium.make(...)``, one ``env.step`` per elimination), which
  steps with the Python elimination engine and updates its numpy observation in place;
- the gymnasium vector env (``gymnasium.make_vec``) with each backend: ``"python"`` (one engine
  per sub-env) and ``"jax"`` (one jitted, vmapped core step per vector step), at batches 1, 8,
  64 and 512, beside the jitted core at the same batch;
- the jitted core stepped in batches (``jax.jit(jax.vmap(env.step))``, one call per elimination
  of every game in the batch; batch 1 is about what a gymnasium step cost while it called the
  jitted core), and whole episodes in one call (``rollout``);
and prints two markdown tables: steps per second with each rate's ratio to the gymnasium loop,
and the vector env's two backends with their ratios to each other and to the jitted core.
Every game plays a uniformly random order of the graph's 98 intermediate vertices
(precomputed, so action choice is not timed). Each rate is the best of several rounds, which
damps the noise of a shared machine.

    PYTHONPATH=. python benchmarks/env_throughput.py            # the table in docs/benchmarks.md
    PYTHONPATH=. python benchmarks/env_throughput.py --quick    # fewer repetitions
    PYTHONPATH=. python benchmarks/env_throughput.py --batches 8,16,32,64   # the backends' crossover
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import env, graph

GRAPH = "RoeFlux_1d"
BATCHES = (1, 64, 512, 2048)
VECTOR_BATCHES = (1, 8, 64, 512)


def random_orders(g: graph.Graph, count: int, rng: np.random.Generator) -> np.ndarray:
    """int32[T, count]: column b is a random order (as actions = vertex - 1)."""
    return np.stack([rng.permutation(g.intermediates) - 1 for _ in range(count)], axis=1).astype(np.int32)


def gym_loop(g: graph.Graph, episodes: int, repeats: int, rng: np.random.Generator) -> float:
    """Steps per second of the plain gymnasium loop (best of `repeats` rounds of `episodes`),
    observations, rewards and info included."""
    e = gymnasium.make(env.ENV_ID, task=f"ref:{GRAPH}")
    orders = random_orders(g, episodes * repeats + 1, rng)
    e.reset(seed=0)
    for a in orders[:, 0]:  # warm-up episode (fills the engine's pair-cost cache)
        e.step(int(a))
    best = 0.0
    for r in range(repeats):
        start = time.perf_counter()
        for b in range(1 + r * episodes, 1 + (r + 1) * episodes):
            e.reset()
            for a in orders[:, b]:
                e.step(int(a))
        best = max(best, episodes * orders.shape[0] / (time.perf_counter() - start))
    e.close()
    return best


def jitted_core(g: graph.Graph, batch: int, repeats: int, rng: np.random.Generator, *, donate: bool = True) -> float:
    """Steps per second of jit(vmap(step)) called once per elimination, over `repeats` episodes."""
    state = env.init_state(g)
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), state)
    vstep = jax.jit(jax.vmap(env.step), donate_argnums=0 if donate else ())
    orders = random_orders(g, batch, rng)
    warm, _, _ = vstep(jax.tree.map(jnp.copy, batched), orders[0])
    jax.block_until_ready(warm)
    best = 0.0
    for _ in range(repeats):
        s = jax.tree.map(jnp.copy, batched)
        jax.block_until_ready(s)
        start = time.perf_counter()
        for a in orders:
            s, _, _ = vstep(s, a)
        jax.block_until_ready(s)
        best = max(best, batch * orders.shape[0] / (time.perf_counter() - start))
        assert bool(jnp.all(env.is_terminal(s)))
    return best


def scanned_core(g: graph.Graph, batch: int, repeats: int, rng: np.random.Generator) -> float:
    """Steps per second of whole episodes in one call: jit(vmap(rollout)) (lax.scan inside)."""
    state = env.init_state(g)
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (batch,) + x.shape), state)
    run = jax.jit(jax.vmap(env.rollout))
    orders = random_orders(g, batch, rng).T.copy()
    jax.block_until_ready(run(batched, orders))
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(batched, orders))
        best = max(best, orders.size / (time.perf_counter() - start))
    return best


def auto_backend(batch: int) -> str:
    """The backend ``backend="auto"`` picks for `batch` sub-envs of the graph."""
    envs = gymnasium.make_vec(env.ENV_ID, num_envs=batch, task=f"ref:{GRAPH}")
    backend = envs.unwrapped.backend
    envs.close()
    return backend


def vector_env(batch: int, backend: str, repeats: int, rng: np.random.Generator, g: graph.Graph) -> float:
    """Steps per second of gymnasium.make_vec (the vector env) with the given backend."""
    envs = gymnasium.make_vec(env.ENV_ID, num_envs=batch, task=f"ref:{GRAPH}", backend=backend)
    assert envs.unwrapped.backend == backend
    orders = random_orders(g, batch, rng)
    best = 0.0
    for r in range(repeats + 1):
        envs.reset(seed=r)
        start = time.perf_counter()
        for a in orders:
            envs.step(a)
        if r:  # the first round warms up (and compiles the jitted step)
            best = max(best, batch * orders.shape[0] / (time.perf_counter() - start))
    envs.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument(
        "--batches", default=",".join(map(str, VECTOR_BATCHES)),
        help="comma-separated batch sizes of the backend table (default %(default)s)",
    )
    args = parser.parse_args()
    vector_batches = [int(b) for b in args.batches.split(",")]
    episodes, repeats = (3, 2) if args.quick else (5, 5)
    gym_episodes = 10 * episodes  # a gymnasium episode takes about a millisecond: time more of them
    rng = np.random.default_rng(0)
    g = graph.load_reference()[GRAPH]

    base = gym_loop(g, gym_episodes, repeats, rng)
    backends = []  # (batch, python, jax, core)
    for batch in vector_batches:
        python = vector_env(batch, "python", repeats, rng, g)
        jax_backend = vector_env(batch, "jax", repeats, rng, g)
        backends.append((batch, python, jax_backend, jitted_core(g, batch, repeats, rng)))
    rows: list[tuple[str, float]] = [("gymnasium loop (`gymnasium.make`, one `env.step` per elimination)", base)]
    for batch in BATCHES:
        rows.append((f"`jit(vmap(step))`, batch {batch}", jitted_core(g, batch, repeats, rng)))
    undonated = jitted_core(g, 512, repeats, rng, donate=False)
    rows.append(("`jit(vmap(step))` without buffer donation, batch 512", undonated))
    rows.append(("`jit(vmap(rollout))` (whole episodes, `lax.scan`), batch 512", scanned_core(g, 512, repeats, rng)))

    cpu = platform.processor() or platform.machine()
    print(f"Environment throughput on ref:{GRAPH} ({g.num_intermediates} eliminations per episode)")
    print(
        f"{datetime.date.today().isoformat()}, {platform.system()} {cpu}, {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}, jax {jax.__version__} ({jax.default_backend()}), "
        f"gymnasium {gymnasium.__version__}"
    )
    print()
    print("| configuration | elimination steps / s | ratio to the gymnasium loop |")
    print("|---|---:|---:|")
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} | {rate / base:.1f}x |")
    print()
    print("`gymnasium.make_vec` vector env by backend, beside `jit(vmap(step))` at the same batch:")
    print()
    print(
        '| batch | `"python"` steps / s | `"jax"` steps / s | jax / python | `"auto"` picks '
        "| `jit(vmap(step))` steps / s | python / core | jax / core |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|---:|")
    for batch, python, jax_backend, core in backends:
        print(
            f"| {batch} | {python:,.0f} | {jax_backend:,.0f} | {jax_backend / python:.2f}x | `{auto_backend(batch)}` "
            f"| {core:,.0f} | {python / core:.2f}x | {jax_backend / core:.2f}x |"
        )


if __name__ == "__main__":
    main()
