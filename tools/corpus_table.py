"""Writes docs/corpus.md, the table of the corpus (`alphagrad.tasks.corpus`).

    python tools/corpus_table.py          # from the repository root; rewrites docs/corpus.md

For every corpus function: its group, its arguments (shapes and dtypes; the differentiated ones
marked), the vertices of its graph, the cost of forward, reverse and Markowitz order under the exact
model (the multiplications `interpreter.jacobian` performs), and its status as the test suite
asserts it (tests/interpreter/test_corpus.py: exact in every order, or a strict expected failure
with its reason). Rerun it when the corpus or the engine's costs change.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alphagrad import graph, interpreter, tasks  # noqa: E402
from tests.interpreter.test_corpus import KNOWN_FAILURES, is_float64  # noqa: E402

GROUP_ORDER = ["layers", "losses", "residuals", "integrators", "particles", "robotics", "stencils", "control flow",
               "indexing", "sort and scan", "linear algebra", "other"]

HEADER = """# The corpus

`alphagrad.tasks.corpus()` holds {count} real-looking functions of the kinds users differentiate
(issue 12): neural-network layers and losses with 3-D and 4-D arrays and parameter dicts, scientific
residuals (Moré–Garbow–Hillstrom, MINPACK-2), integrators (unrolled, `lax.scan`, `lax.fori_loop`),
particles, robots, finite-difference stencils, every control-flow and indexing form, linear algebra.
`tests/interpreter/test_corpus.py` checks every one: the Jacobian equals jax.jacrev (jax.jacfwd for
while loops) to 1e-8 relative in float64 in forward, reverse, Markowitz and a random order, the
counted multiplications equal `graph.cost`, and `"auto"` works under `jax.jit`.

Groups: {groups}. {passing} of {count} are exact in every order and counted{failures}.

Columns: arguments (`*`: differentiated; float64 ones run under `jax.enable_x64`), vertices of the
graph (`interpreter.graph_of`), multiplications of forward, reverse and Markowitz order under the
exact cost model. A loop kept as a loop (a `scan` or `fori_loop` too long or too costly to unroll,
every `while_loop`) is one vertex per output whose partials JAX computes through the whole loop (or
a chain product of its iterations); the elimination does not count those, so a function that is one
such loop shows 0 (docs/cost-model.md, "Loops"). Written by `python tools/corpus_table.py`; do not
edit by hand.

| function | group | arguments | vertices | forward | reverse | Markowitz | status |
|---|---|---|---:|---:|---:|---:|---|
"""


def describe(args, argnums) -> str:
    """'f32[2,3]*, i32[4]' for the argument leaves (a dict's leaves in braces)."""
    wanted = set(argnums) if isinstance(argnums, tuple) else {argnums}
    parts = []
    for i, arg in enumerate(args):
        leaves = [
            f"{jnp.result_type(x).name.replace('float', 'f').replace('int', 'i')}[{','.join(map(str, np.shape(x)))}]"
            for x in jax.tree.leaves(arg)
        ]
        text = leaves[0] if not isinstance(arg, (dict, list, tuple)) else "{" + " ".join(leaves) + "}"
        parts.append(text + ("*" if i in wanted else ""))
    return ", ".join(parts)


def main() -> None:
    corpus, groups = tasks.corpus(), tasks.corpus_groups()
    rows = []
    for name, task in sorted(corpus.items(), key=lambda item: GROUP_ORDER.index(groups[item[0]])):
        with jax.enable_x64(is_float64(task.args)):
            args = jax.tree.map(jnp.asarray, task.args)
            g = interpreter.graph_of(task.fn, *args, argnums=task.argnums)
            costs = [graph.cost(g, o) for o in ("forward", "reverse", "markowitz")]
            described = describe(args, task.argnums)
        status = f"expected failure: {KNOWN_FAILURES[name]}" if name in KNOWN_FAILURES else "exact"
        rows.append(f"| `{name}` | {groups[name]} | {described} | {len(g.vertices)} | "
                    + " | ".join(f"{c:,}" for c in costs) + f" | {status} |")
    order = sorted(set(groups.values()), key=GROUP_ORDER.index)
    text = HEADER.format(count=len(corpus), groups=", ".join(f"{g} ({list(groups.values()).count(g)})" for g in order),
                         passing=len(corpus) - len(KNOWN_FAILURES),
                         failures="; the others are strict expected failures in the tests (reason in the status column)"
                         if KNOWN_FAILURES else "")
    (ROOT / "docs" / "corpus.md").write_text(text + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
