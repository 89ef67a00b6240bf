"""Search quality on the ten reference graphs against the AlphaGrad paper's published counts, and
the scoring rate of simulated annealing and beam search on RoeFlux_1d.

    PYTHONPATH=. python benchmarks/search_quality.py --method best --minutes 5   # the target run
    PYTHONPATH=. python benchmarks/search_quality.py --minutes 0.5 --graphs RoeFlux_1d g
    PYTHONPATH=. python benchmarks/search_quality.py --method alphazero --minutes 8 --no-rate

`--method alphazero` trains one AlphaZero network per graph for the budget (default
`AlphaZeroConfig`, seed 0, `--set KEY=VALUE` overrides); `benchmarks/search_quality_alphazero.py`
prints the same runs with more columns (iterations, best demonstration, classic orders).

Prints a markdown table (cost found, published count, ratio, which stage found it, whether it is
proven optimal) and the orders per second of SA and beam search (compilation excluded).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax

from alphagrad import graph
from alphagrad.agents import alphazero, anneal, beam_search, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="best", help="search method (default best)")
    parser.add_argument("--minutes", type=float, default=5.0, help="budget per graph (default 5)")
    parser.add_argument("--graphs", nargs="*", default=graph.reference_names(), help="reference graph names")
    parser.add_argument("--rate-seconds", type=float, default=15.0, help="budget of each rate measurement")
    parser.add_argument("--no-rate", action="store_true", help="skip the orders/s measurement")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="AlphaZeroConfig overrides (only with --method alphazero)")  # fmt: skip
    ns = parser.parse_args()

    print(f"{datetime.date.today().isoformat()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__} ({jax.default_backend()}); method {ns.method}, {ns.minutes:g} min per graph\n")
    refs = graph.load_reference()
    info = graph.reference_info()
    if not ns.no_rate:
        g = refs["RoeFlux_1d"]
        sa = anneal(g, seconds=ns.rate_seconds)
        bm = beam_search(g, seconds=ns.rate_seconds, max_width=32)
        print(f"RoeFlux_1d scoring rate: SA {sa.info['orders_per_second']:,.0f} complete orders/s "
              f"({sa.info['backend']} back end, {sa.info['chains']} chains); beam "
              f"{bm.info['orders_per_second']:,.0f} completed orders/s\n", flush=True)
    print("| graph | intermediates | found | published | found / published | found by | optimal | seconds |")
    print("|---|---:|---:|---:|---:|---|---|---:|")
    below = equal = 0
    for name in ns.graphs:
        g = refs[name]
        start = time.perf_counter()
        if ns.method == "alphazero":
            config = alphazero.AlphaZeroConfig(iterations=None, minutes=ns.minutes, seed=0).with_overrides(ns.set)
            result = alphazero.train({name: g}, config)
            cost, found_by, optimal = result.best_cost, f"alphazero {result.best_sources.get(name, '')}", False
        else:
            r = search(g, ns.method, seconds=60.0 * ns.minutes)
            cost, found_by, optimal = r.cost, r.info.get("found_by", r.method), r.optimal
        published = info[name].best_published
        below += cost < published
        equal += cost == published
        print(f"| {name} | {g.num_intermediates} | {cost} | {published} | {cost / published:.3f} | "
              f"{found_by} | {'yes' if optimal else 'no'} | {time.perf_counter() - start:.0f} |", flush=True)
    print(f"\nstrictly below published on {below} of {len(ns.graphs)}, equal on {equal}")


if __name__ == "__main__":
    main()
