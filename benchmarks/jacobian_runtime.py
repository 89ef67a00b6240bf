"""Runtime of `interpreter.jacobian` against `jax.jacfwd` / `jax.jacrev`, measured in one run.

For each task and batch size: the median wall time of ``jit(vmap(J))`` where J is our Jacobian
with the forward, reverse, Markowitz and cheapest known order (the best of the classic orders and
of a short `alphagrad.agents.search`), and ``jax.jacfwd`` / ``jax.jacrev`` of the same function.

Two ways of timing each Jacobian:

* **returned**: ``jit(vmap(J))(*xs)`` returns jax.jacrev's pytree of blocks, as a user calls it.
  Every returned block is a separate device buffer and Python array object, a fixed cost per
  block that no order changes; the ``floor`` column times a jitted function that returns the
  same blocks with one multiplication each (returned mode only).
* **consumed**: the Jacobian is used inside the same jit (all blocks flattened into one
  [batch, n_entries] array), as when a Jacobian feeds further computation. This measures the
  arithmetic, not the per-block return cost.

Candidates are timed in interleaved rounds so that load changes hit them alike. Prints markdown
tables of milliseconds per call and of ``time(jax.jacrev) / time(ours)`` (above 1: ours is
faster), and compile times separately.

    python benchmarks/jacobian_runtime.py [--tasks RoeFlux_1d ...] [--batches 1 64 512] \
        [--reps 200] [--search-seconds 10]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from alphagrad import graph, interpreter, orders, tasks
from alphagrad.agents import search
from alphagrad.cli.timing import batched_inputs, example_arrays

CLASSIC = ("forward", "reverse", "markowitz")


def compile_s(fn, args) -> tuple[object, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def consumed(fn):
    """``fn``'s output pytree flattened into one [batch, n] array inside the same jit."""

    def flat(*xs):
        leaves = jax.tree_util.tree_leaves(fn(*xs))
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)

    return flat


def floor_fn(reference, args):
    """A function returning `reference`'s output pytree, each block one multiplication of an input."""
    shapes = jax.eval_shape(reference, *args)
    leaves, tree = jax.tree_util.tree_flatten(shapes)

    def fn(*xs):
        first = xs[0].reshape(xs[0].shape[0], -1)[:, :1]
        blocks = []
        for i, leaf in enumerate(leaves):
            scale = first.reshape((leaf.shape[0],) + (1,) * (len(leaf.shape) - 1))
            blocks.append(jnp.broadcast_to(scale * (i + 1.0), leaf.shape).astype(leaf.dtype))
        return jax.tree_util.tree_unflatten(tree, blocks)

    return fn


def interleaved_medians(compiled: dict, args, reps: int, rounds: int = 10) -> dict[str, float]:
    """Median milliseconds per call of each compiled function, timed round-robin in `rounds` rounds."""
    for fn in compiled.values():
        jax.block_until_ready(fn(*args))
    samples = {label: [] for label in compiled}
    per_round = max(1, reps // rounds)
    for _ in range(rounds):
        for label, fn in compiled.items():
            for _ in range(per_round):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                samples[label].append(time.perf_counter() - start)
    return {label: 1e3 * statistics.median(s) for label, s in samples.items()}


def cheapest_order(task: tasks.ResolvedTask, seconds: float):
    """The cheapest of the classic orders and of a `seconds` search, on the graph the timing runs
    (float32 array inputs, every argument differentiated, the exact cost model)."""
    g = task.with_args(example_arrays(task.args)).graph(cost_model="exact")
    candidates = {name: orders.resolve(g, name) for name in CLASSIC}
    if seconds > 0:
        candidates["searched"] = list(search(g, "best", seconds=seconds).order)
    costs = {name: graph.cost(g, o) for name, o in candidates.items()}
    name = min(costs, key=costs.get)
    return name, candidates[name], costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=[n for n in tasks.names() if not n.startswith("Random")])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 64, 512])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--search-seconds", type=float, default=10.0,
                        help="search budget for the cheapest order (0: best classic order)")
    ns = parser.parse_args()

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
          f"batch sizes {ns.batches}, median of {ns.reps} calls in interleaved rounds\n")
    labels = ("jacfwd", "jacrev", "forward", "reverse", "markowitz", "cheapest")
    header = ("| task | batch | mode | floor ms | " + " | ".join(f"{k} ms" for k in labels)
              + " | jacrev / ours (fwd, rev, mM, cheapest) | cheapest order, muls (fwd/rev/mM) |")
    print(header)
    print("|---|---:|---|---:|" + "---:|" * len(labels) + "---|---|")
    compile_rows = []
    for name in ns.tasks:
        task = tasks.resolve(name)
        argnums = tuple(range(len(task.args)))
        label, cheap, costs = cheapest_order(task, ns.search_seconds)
        classic_costs = "/".join(str(costs[o]) for o in CLASSIC)
        functions = {
            "jacfwd": jax.vmap(jax.jacfwd(task.fn, argnums=argnums)),
            "jacrev": jax.vmap(jax.jacrev(task.fn, argnums=argnums)),
            **{o: jax.vmap(interpreter.jacobian(task.fn, o, argnums=argnums)) for o in CLASSIC},
            "cheapest": jax.vmap(interpreter.jacobian(task.fn, cheap, argnums=argnums)),
        }
        for batch in ns.batches:
            args = batched_inputs(task.args, batch)
            for mode in ("returned", "consumed"):
                compiled, compiles = {}, {}
                for key, fn in functions.items():
                    wrapped = fn if mode == "returned" else consumed(fn)
                    compiled[key], compiles[key] = compile_s(wrapped, args)
                if mode == "returned":
                    compiled["floor"], _ = compile_s(floor_fn(functions["jacrev"], args), args)
                times = interleaved_medians(compiled, args, ns.reps)
                floor = f"{times['floor']:.3f}" if "floor" in times else "—"
                ratios = ", ".join(f"{times['jacrev'] / times[o]:.2f}" for o in ("forward", "reverse", "markowitz", "cheapest"))
                print(
                    f"| {name} | {batch} | {mode} | {floor} | "
                    + " | ".join(f"{times[k]:.3f}" for k in labels)
                    + f" | {ratios} | {label}, {costs[label]} ({classic_costs}) |",
                    flush=True,
                )
                if mode == "returned":
                    compile_rows.append((name, batch, compiles))
    print("\nCompile times (s):\n")
    print("| task | batch | " + " | ".join(labels) + " |")
    print("|---|---:|" + "---:|" * len(labels))
    for name, batch, c in compile_rows:
        print(f"| {name} | {batch} | " + " | ".join(f"{c[k]:.2f}" for k in labels) + " |")


if __name__ == "__main__":
    main()
