"""Runtime of `interpreter.jacobian` against `jax.jacfwd` / `jax.jacrev`, measured in one run.

For each task and batch size: the median wall time of ``jit(vmap(J))`` where J is our Jacobian
with the forward, reverse, Markowitz and cheapest known order, and ``jax.jacfwd`` / ``jax.jacrev``
of the same function. Prints a markdown table of milliseconds per call and of the ratio
``time(jax.jacrev) / time(ours)`` (above 1: we are faster), and compile times separately.

    python benchmarks/jacobian_runtime.py [--tasks RoeFlux_1d ...] [--batches 1 64 512] [--reps 200]
"""

from __future__ import annotations

import argparse
import platform
import time

import jax

from alphagrad import graph, interpreter, tasks
from alphagrad.interpreter._timing import batched_inputs, median_ms


def compile_s(fn, args) -> tuple[object, float]:
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=[n for n in tasks.names() if not n.startswith("Random")])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 64, 512])
    parser.add_argument("--reps", type=int, default=200)
    ns = parser.parse_args()

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
          f"batch sizes {ns.batches}, median of {ns.reps} calls\n")
    header = "| task | batch | jacfwd ms | jacrev ms | forward ms | reverse ms | markowitz ms | cheapest ms | ratio jacrev/ours (fwd, rev, mM, cheapest) | cheapest order, muls |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    compile_rows = []
    for name in ns.tasks:
        task = tasks.get(name)
        argnums = tuple(range(len(task.args)))
        g = interpreter.graph_of(task.fn, *task.args, argnums=argnums)
        costs = {o: graph.cost(g, o) for o in ("forward", "reverse", "markowitz")}
        cheapest = min(costs, key=costs.get)
        ours = {o: jax.vmap(interpreter.jacobian(task.fn, o, argnums=argnums)) for o in costs}
        peers = {
            "jacfwd": jax.vmap(jax.jacfwd(task.fn, argnums=argnums)),
            "jacrev": jax.vmap(jax.jacrev(task.fn, argnums=argnums)),
        }
        for batch in ns.batches:
            args = batched_inputs(task.args, batch)
            times, compiles = {}, {}
            for label, fn in {**peers, **ours}.items():
                compiled, seconds = compile_s(fn, args)
                compiles[label] = seconds
                times[label] = median_ms(compiled, args, ns.reps)
            times["cheapest"] = times[cheapest]
            ratios = ", ".join(f"{times['jacrev'] / times[o]:.2f}" for o in ("forward", "reverse", "markowitz", "cheapest"))
            print(
                f"| {name} | {batch} | {times['jacfwd']:.3f} | {times['jacrev']:.3f} | {times['forward']:.3f} "
                f"| {times['reverse']:.3f} | {times['markowitz']:.3f} | {times['cheapest']:.3f} | {ratios} "
                f"| {cheapest}, {costs[cheapest]} |",
                flush=True,
            )
            compile_rows.append((name, batch, compiles))
    print("\nCompile times (s):\n")
    print("| task | batch | jacfwd | jacrev | forward | reverse | markowitz |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, c in compile_rows:
        print(f"| {name} | {batch} | " + " | ".join(f"{c[k]:.2f}" for k in ("jacfwd", "jacrev", "forward", "reverse", "markowitz")) + " |")


if __name__ == "__main__":
    main()
