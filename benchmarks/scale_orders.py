"""Orders at scale: wall time of trace, Markowitz, cost and plan on long straight-line programs.

The programs are an unrolled explicit Euler integrator of the Lorenz system (6 scalar inputs:
the state and the three parameters; 3 outputs), stepped in a Python loop until about N
equations; in the "hoisted" family three coefficients are computed once and read by every step
(vertices whose degree grows with N). Prints the markdown table of docs/benchmarks.md "Orders at scale".
"previous Markowitz" is the former implementation (a scan of every remaining vertex per step),
kept here only to measure against; ``--no-previous`` skips it (about 20 s at 10,000 equations).

    python benchmarks/scale_orders.py                 # N = 1,000 / 3,000 / 10,000
    python benchmarks/scale_orders.py --sizes 30000 --no-previous
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp

from alphagrad import graph

ARGS = tuple(jnp.float32(v) for v in (1.0, 1.0, 1.0, 10.0, 28.0, 2.6))


def lorenz(steps: int):
    """f(x, y, z, s, r, b) -> (x, y, z) after `steps` explicit Euler steps of dt = 0.01
    (14 equations per step; every vertex has at most a handful of edges)."""

    def f(x, y, z, s, r, b):
        for _ in range(steps):
            dx = s * (y - x)
            dy = x * (r - z) - y
            dz = x * y - b * z
            x, y, z = x + 0.01 * dx, y + 0.01 * dy, z + 0.01 * dz
        return x, y, z

    f.__name__ = f"lorenz_{steps}"
    return f


def lorenz_hoisted(steps: int):
    """The same integrator with s·dt, b·dt and sin(r) computed once before the loop (13 equations
    per step): three intermediates read by every step, whose degree grows with the program."""

    def f(x, y, z, s, r, b):
        sd, bd, d = s * 0.01, b * 0.01, jnp.sin(r)
        for _ in range(steps):
            x, y, z = x + sd * (y - x), y + 0.01 * (x * (d - z) - y), z + 0.01 * x * y - bd * z
        return x, y, z

    f.__name__ = f"lorenz_hoisted_{steps}"
    return f


#: name -> (program builder, equations per step)
FAMILIES = {"lorenz": (lorenz, 14), "lorenz, hoisted": (lorenz_hoisted, 13)}


def previous_markowitz(g: graph.Graph) -> list[int]:
    """The former `graph.markowitz` (degree "cost"): every remaining vertex scored at every step."""
    eliminator = graph.Eliminator(g)
    remaining = list(g.intermediates)
    order = []
    while remaining:
        best = min(remaining, key=lambda k: (eliminator.elimination_cost(k), k))
        eliminator.eliminate(best)
        remaining.remove(best)
        order.append(best)
    return order


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def row(family: str, equations: int, previous: bool) -> str:
    build, per_step = FAMILIES[family]
    g, t_trace = timed(graph.trace, build(max(1, equations // per_step)), *ARGS)
    order, t_mm = timed(graph.markowitz, g)
    _, t_mm_components = timed(graph.markowitz, g, degree="components")
    cells = [family, f"{g.num_vertices:,}", f"{len(g.edges):,}", f"{t_trace:.2f}", f"{t_mm:.2f}", f"{t_mm_components:.2f}"]
    if previous:
        old, t_old = timed(previous_markowitz, g)
        assert old == order  # the heap gives the scan's order exactly
        cells.append(f"{t_old:.1f}")
    else:
        cells.append("–")
    for name in ("forward", "reverse"):
        cells.append(f"{timed(graph.cost, g, name)[1]:.2f}")
    cells.append(f"{timed(graph.cost, g, order)[1]:.2f}")
    steps, t_plan = timed(graph.plan, g, order)
    cells.append(f"{t_plan:.2f}")
    cells.append(f"{sum(s.cost for s in steps):,}")
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000], help="equations per program")
    parser.add_argument("--no-previous", action="store_true", help="skip the former O(V^2) Markowitz scan")
    args = parser.parse_args()
    graph.trace(lorenz(1), *ARGS)  # JAX's own first-trace setup, outside the table
    print("| program | vertices | edges | trace (s) | markowitz (s) | markowitz, components (s) | previous markowitz (s) "
          "| cost forward (s) | cost reverse (s) | cost markowitz (s) | plan markowitz (s) | markowitz muls |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for family in FAMILIES:
        for n in args.sizes:
            print(row(family, n, not args.no_previous), flush=True)


if __name__ == "__main__":
    main()
