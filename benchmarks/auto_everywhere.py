"""`jax.jit(interpreter.jacobian(f, "auto"))` on every task and the corpus, empty cache, x64 off and on (issue 14).

    python benchmarks/auto_everywhere.py [--seconds 10] [--tasks NAME|corpus:NAME ...]

For each registered task of `alphagrad.tasks` (Jacobian with respect to every argument) and each
function of the corpus (``tasks.corpus()``, as ``corpus:NAME``, with respect to its `argnums`), at
each precision (float32, then float64 with ``jax_enable_x64`` set globally), in an empty cache
directory of its own, the first call of the jitted "auto" Jacobian searches while the function is
being traced. The table says whether it ran and matched the reference (``jax.jacrev``, or
``jax.jacfwd`` where the task's `reference_jacobian` says so: while loops), any warning, the
seconds of that first call (search included), and the cost of the auto order beside forward,
reverse, Markowitz and the floor (the cheapest of those and the deterministic heuristic chains)
on the exact cost model. "Markowitz weak" marks the tasks where Markowitz costs more than the
cheaper of forward and reverse. Exit status 1 when any task failed or "auto" was costlier than
the floor.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import agents, graph, interpreter, tasks
from alphagrad.agents import portfolio

TOLERANCE = {False: dict(rtol=1e-4, atol=1e-5), True: dict(rtol=1e-9, atol=1e-11)}


def _as_precision(args, x64: bool):
    dtype = jnp.float64 if x64 else jnp.float32
    return jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
                        args)


def _task(name: str) -> tasks.Task:
    """A registered task, or ``corpus:NAME``."""
    return tasks.corpus()[name[len("corpus:"):]] if name.startswith("corpus:") else tasks.get(name)


def run_task(name: str, x64: bool) -> dict:
    """One row: the jitted auto Jacobian of task `name` at this precision, with the cache set up by the caller."""
    task = _task(name)
    args = _as_precision(task.args, x64)
    argnums = tuple(range(len(args))) if task.argnums is None else task.argnums
    reference = {"jacrev": jax.jacrev, "jacfwd": jax.jacfwd}[task.reference_jacobian]
    row = {"task": name, "precision": "float64" if x64 else "float32"}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ours = jax.block_until_ready(jax.jit(interpreter.jacobian(task.fn, "auto", argnums=argnums))(*args))
            row["seconds"] = time.perf_counter() - start
            ref = reference(task.fn, argnums=argnums)(*args)
            pairs = list(zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True))
            row["ok"] = all(a.dtype == b.dtype and np.allclose(a, b, **TOLERANCE[x64]) for a, b in pairs)
            row["error"] = max((float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0)) for a, b in pairs),
                               default=0.0)
        except Exception as err:  # noqa: BLE001 - the table reports it
            row.update(ok=False, seconds=time.perf_counter() - start, error=f"{type(err).__name__}: {err}"[:120])
    row["warnings"] = "; ".join(str(w.message)[:80] for w in caught)
    g = interpreter.graph_of(task.fn, *args, argnums=argnums)
    for order in ("forward", "reverse", "markowitz"):
        row[order] = graph.cost(g, order)
    row["floor"] = portfolio.floor_order(g).cost
    row["auto"] = graph.cost(g, "auto") if row["ok"] else None  # from the cache file the first call wrote
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=agents.AUTO_SECONDS, help="search budget of auto per graph")
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="task names and corpus:NAME (default: every task, then the whole corpus)")
    ns = parser.parse_args(argv)
    names = ns.tasks or tasks.names() + ["corpus:" + name for name in tasks.corpus()]
    os.environ["ALPHAGRAD_AUTO_SECONDS"] = str(ns.seconds)
    rows = []
    for x64 in (False, True):
        jax.config.update("jax_enable_x64", x64)
        with tempfile.TemporaryDirectory(prefix="alphagrad-auto-") as cache:
            os.environ["ALPHAGRAD_CACHE"] = cache  # empty: every task searches under jax.jit
            for name in names:
                rows.append(run_task(name, x64))
                print(f"  {name} ({rows[-1]['precision']}): {'ok' if rows[-1]['ok'] else 'FAILED'}", file=sys.stderr)
    print(f"auto budget {ns.seconds:g} s per graph, jax {jax.__version__}, {os.cpu_count()} CPUs\n")
    print("| task | precision | jit(auto) == reference | first call (s) | auto | floor | forward | reverse | markowitz "
          "| Markowitz weak | warnings |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    failed = 0
    for r in rows:
        worse = r["auto"] is not None and r["auto"] > r["floor"]
        failed += (not r["ok"]) or worse
        weak = "yes" if r["markowitz"] > min(r["forward"], r["reverse"]) else ""
        status = "yes" if r["ok"] else f"**no**: {r['error']}"
        auto = "–" if r["auto"] is None else f"{r['auto']}{' **> floor**' if worse else ''}"
        print(f"| {r['task']} | {r['precision']} | {status} | {r['seconds']:.1f} | {auto} | {r['floor']} "
              f"| {r['forward']} | {r['reverse']} | {r['markowitz']} | {weak} | {r['warnings']} |")
    print(f"\n{len(rows) - failed} of {len(rows)} rows ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
