"""AlphaZero search quality on the reference graphs: best cost after a time budget, beside the
classic orders and the AlphaGrad paper's published count.

    python benchmarks/search_quality_alphazero.py --minutes 10                 # all ten graphs
    python benchmarks/search_quality_alphazero.py --minutes 2.5 PropaneCombustion HumanHeartDipole
    python benchmarks/search_quality_alphazero.py RoeFlux_1d --minutes 3 --set num_simulations=32   # graphs before --set

Each graph trains its own network from scratch (default `AlphaZeroConfig`, seed 0); the time
includes the demonstrations' search (``demo_seconds``) and compilation. Prints a markdown table:
"alphazero" is the best order a game of the agent played (self-play search or raw policy);
"best demo" is the cheapest demonstration it was shown (never counted as the agent's result), and
"found by" the kind of game that found the agent's best order. Ratios < 1 beat the best classic
order.
"""

from __future__ import annotations

import argparse
import time

from alphagrad import graph
from alphagrad.agents import alphazero


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graphs", nargs="*", help="reference graph names (default: all ten)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per graph (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", metavar="DIR", help="keep each run's directory under DIR")
    ns = parser.parse_args()

    refs = graph.load_reference()
    info = graph.reference_info()
    names = ns.graphs or list(refs)
    config = alphazero.AlphaZeroConfig(iterations=None, minutes=ns.minutes, seed=ns.seed).with_overrides(ns.set)
    print(f"config: {config}\n")
    print("| graph | minutes | iterations | games | alphazero | found by | best demo | forward | reverse | markowitz "
          "| published (A0) | alphazero / best classic |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        g = refs[name]
        start = time.monotonic()
        out = f"{ns.out}/{name}" if ns.out else None
        result = alphazero.train({name: g}, config, out_dir=out)
        minutes = (time.monotonic() - start) / 60
        base = result.baselines[name]
        games = result.history[-1]["games"] if result.history else 0
        ratio = result.best_cost / min(base.values()) if result.best_cost else float("nan")
        demo = result.demo_costs.get(name, "–")
        source = result.best_sources.get(name, "–")
        print(
            f"| {name} | {minutes:.1f} | {result.iterations} | {games} | {result.best_cost} | {source} | {demo} "
            f"| {base['forward']} | {base['reverse']} | {base['markowitz']} | {info[name].best_published} "
            f"| {ratio:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
