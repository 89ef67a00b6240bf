"""Search budgets at scale: wall time and cost of `alphagrad.optimize` on long programs.

For each form and size of the `benchmarks/scale.py` family, `optimize(f, *args, minutes=M)`
(method "best") runs in its own process; the table gives its wall time against the budget
(tracing and writing the order file included), the cost it found, the best of forward, reverse and
Markowitz, and which stage found it.

    python benchmarks/search_budget.py                       # M = 0.5; scalar, hub, vector; 1,000-10,000
    python benchmarks/search_budget.py --minutes 0.1 --sizes 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def one(form: str, size: int, minutes: float) -> None:
    from scale import family

    from alphagrad import agents, graph

    f, args, argnums, _ = family(form, size)
    start = time.perf_counter()
    record = agents.optimize(f, *args, minutes=minutes, argnums=argnums)
    wall = time.perf_counter() - start
    g = graph.jacobian_graph(f, *args, argnums=argnums)
    print(json.dumps({"vertices": g.num_vertices, "wall_s": wall, "cost": record.multiplications,
                      "baselines": record.baselines, "method": record.method}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", nargs="+", default=["scalar", "hub", "vector"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--minutes", type=float, default=0.5)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args.forms[0], args.sizes[0], args.minutes)
        return
    print("| form | equations | vertices | budget (s) | wall (s) | cost | best classic | forward / reverse / markowitz |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for size in args.sizes:
        for form in args.forms:
            cmd = [sys.executable, os.path.abspath(__file__), "--one", "--forms", form, "--sizes", str(size),
                   "--minutes", str(args.minutes)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if not lines:
                print(f"| {form} | {size:,} | – | {60 * args.minutes:g} | failed: {done.stderr.strip()[-200:]} |")
                continue
            r = json.loads(lines[-1])
            b = r["baselines"]
            classic = min(b.values())
            print(f"| {form} | {size:,} | {r['vertices']:,} | {60 * args.minutes:g} | {r['wall_s']:.1f} | "
                  f"{r['cost']:,} | {classic:,} | {' / '.join(f'{b[k]:,}' for k in ('forward', 'reverse', 'markowitz') if k in b)} |",
                  flush=True)


if __name__ == "__main__":
    main()
