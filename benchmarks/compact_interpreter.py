"""The compact (tape) interpreter at scale: first call, memory, compiled size and run time of
``jax.jit(interpreter.jacobian(f, order))`` on long straight-line programs, beside ``jax.jacrev``.

The programs are an unrolled classical Runge-Kutta (RK4) integrator of the Lorenz system written
with scalar operations: the state vector (3,) is indexed into scalars, the parameters (3,) too,
and the final state is stacked into the output (3,); about 71 equations per step, stepped until
about N equations. Each measurement runs in its own subprocess (so that peak RSS, the child's
``ru_maxrss``, is that of one stage) with a timeout:

- ``tape, reverse`` / ``tape, markowitz``: alphagrad's interpreter forced onto the tape path
  (which it takes by itself from ``_tape.TAPE_MIN_SIZE`` straight-line operations);
- ``straight-line, reverse``: the interpreter forced onto its straight-line path (one XLA operation
  per equation and product: what runs below that threshold, and ran everywhere before the tape);
- ``jax.jacrev``: ``jax.jit(jax.jacrev(f))``.

For each: the first call (trace, order, compile, run) in float32 and the peak RSS after it, the
compiled program's size (instructions and fusions of ``jit(...).lower(...).compile().as_text()``),
the steady-state time of a call at batch 1 and of ``jit(vmap(...))`` at batch 1,024 (its first
call too), and the largest relative error in float64 against ``jax.jacfwd`` run eagerly (no jit),
an independent reference. Prints the markdown table of docs/benchmarks.md "Compact interpreter
at scale".

    python benchmarks/compact_interpreter.py                         # 200 / 1,000 / 3,000 / 10,000
    python benchmarks/compact_interpreter.py --sizes 1000 --timeout 60
    python benchmarks/compact_interpreter.py --form vector           # the state-vector form

``--form vector`` writes the same integrator on the (3,) state vector (``jnp.stack``, vector adds
and scalar multiples): its vertices are small arrays, which the tape holds with their structured
partials (about 74 equations per step).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time

STAGES = ("tape, reverse", "tape, markowitz", "straight-line, reverse", "jax.jacrev")
#: Equations per RK4 step of `lorenz_rk4` (measured; the table reports the traced count).
PER_STEP = 71
BATCH = 1024


def lorenz_rk4(steps: int, dt: float = 0.01):
    """f(state[3], params[3]) -> state[3] after `steps` RK4 steps of the Lorenz system."""
    import jax.numpy as jnp

    def rhs(x, y, z, s, r, b):
        return s * (y - x), x * (r - z) - y, x * y - b * z

    def f(state, params):
        x, y, z = state[0], state[1], state[2]
        s, r, b = params[0], params[1], params[2]
        for _ in range(steps):
            k1 = rhs(x, y, z, s, r, b)
            k2 = rhs(*(u + 0.5 * dt * k for u, k in zip((x, y, z), k1)), s, r, b)
            k3 = rhs(*(u + 0.5 * dt * k for u, k in zip((x, y, z), k2)), s, r, b)
            k4 = rhs(*(u + dt * k for u, k in zip((x, y, z), k3)), s, r, b)
            x, y, z = (u + dt / 6.0 * (a + 2.0 * c + 2.0 * d + e) for u, a, c, d, e in zip((x, y, z), k1, k2, k3, k4))
        return jnp.stack([x, y, z])

    f.__name__ = f"lorenz_rk4_{steps}"
    return f


def lorenz_rk4_vector(steps: int, dt: float = 0.01):
    """The same integrator written on the state vector, as people write it: (3,) intermediates
    made by ``jnp.stack``, vector adds and scalar multiples, slices and squeezes."""
    import jax.numpy as jnp

    def f(state, params):
        sigma, rho, beta = params[0], params[1], params[2]

        def rhs(s):
            x, y, z = s[0], s[1], s[2]
            return jnp.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z])

        for _ in range(steps):
            k1 = rhs(state)
            k2 = rhs(state + 0.5 * dt * k1)
            k3 = rhs(state + 0.5 * dt * k2)
            k4 = rhs(state + dt * k3)
            state = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        return state

    f.__name__ = f"lorenz_rk4_vector_{steps}"
    return f


#: Program forms: (builder, equations per RK4 step).
FORMS = {"scalar": (lorenz_rk4, PER_STEP), "vector": (lorenz_rk4_vector, 74)}


def _emit(**values) -> None:
    print(json.dumps(values), flush=True)


def _rss_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _hlo_size(compiled_text: str) -> tuple[int, int]:
    instructions = sum(1 for line in compiled_text.splitlines() if re.match(r"\s*(ROOT )?%?[\w.\-]+ = ", line))
    fusions = sum(1 for line in compiled_text.splitlines() if re.search(r"= \S+ fusion\(", line))
    return instructions, fusions


def _steady(fn, *args, seconds: float = 1.0) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        jax.block_until_ready(fn(*args))
        count += 1
    return (time.perf_counter() - start) / count


def stage(name: str, equations: int, form: str = "scalar") -> None:
    """Runs one stage in this process, printing one JSON line per measurement."""
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 for the exactness check; timings in float32
    import jax.numpy as jnp
    import numpy as np

    from alphagrad import interpreter
    from alphagrad.interpreter import _tape

    build, per_step = FORMS[form]
    f = build(max(1, round(equations / per_step)))
    state = np.array([1.0, 1.0, 1.0])
    params = np.array([10.0, 28.0, 8.0 / 3.0])
    args32 = (jnp.asarray(state, jnp.float32), jnp.asarray(params, jnp.float32))
    # Each stage forces its path, whatever `_tape.TAPE_MIN_SIZE` would choose at this size.
    if name.startswith("straight-line"):
        _tape.TAPE_MIN_SIZE = 10**12
    elif name.startswith("tape"):
        _tape.TAPE_MIN_SIZE = _tape.TAPE_MIN_EQUATIONS = 0
    if name == "jax.jacrev":
        make = lambda: jax.jacrev(f, argnums=(0, 1))  # noqa: E731
    else:
        order = name.split(", ")[1]
        make = lambda: interpreter.jacobian(f, order, argnums=(0, 1))  # noqa: E731
    _emit(equations=len(interpreter.graph_of(f, *args32, argnums=(0, 1)).program.equations))
    start = time.perf_counter()
    jitted = jax.jit(make())
    jax.block_until_ready(jitted(*args32))
    _emit(first_call=time.perf_counter() - start, rss_mb=_rss_mb())
    _emit(hlo=_hlo_size(jax.jit(make()).lower(*args32).compile().as_text()))
    _emit(batch1=_steady(jitted, *args32))
    batch = tuple(jnp.asarray(np.stack([a * (1 + 0.01 * k / BATCH) for k in range(BATCH)]), jnp.float32)
                  for a in (state, params))
    start = time.perf_counter()
    vmapped = jax.jit(jax.vmap(make()))
    jax.block_until_ready(vmapped(*batch))
    _emit(batch_first_call=time.perf_counter() - start)
    _emit(batch_steady=_steady(vmapped, *batch))
    args64 = (jnp.asarray(state, jnp.float64), jnp.asarray(params, jnp.float64))
    expected = jax.jacfwd(f, argnums=(0, 1))(*args64)  # eager: no XLA program of the whole f
    actual = jax.jit(make())(*args64)
    error = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1e-300, float(np.max(np.abs(np.asarray(b))))))
        for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))
    )
    _emit(error=error)


def measure(name: str, equations: int, timeout: float, form: str = "scalar") -> dict:
    """Runs `stage` in a subprocess; what it printed before any timeout, plus 'timeout'."""
    command = [sys.executable, __file__, "--stage", name, "--equations", str(equations), "--form", form]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        out, failed = done.stdout, done.returncode != 0 and f"exit {done.returncode}: {done.stderr[-300:]}"
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        failed = f"did not finish in {timeout:.0f} s"
    result = {}
    for line in out.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    if failed:
        result["failed"] = failed
    return result


def row(name: str, r: dict) -> str:
    def cell(key, fmt):
        return fmt(r[key]) if key in r else "–"

    first = cell("first_call", lambda v: f"{v:.1f} s")
    if "first_call" not in r and "failed" in r:
        first = r["failed"]
    cells = [
        f"{r.get('equations', 0):,}", name, first, cell("rss_mb", lambda v: f"{v / 1024:.2f} GB"),
        cell("hlo", lambda v: f"{v[0]:,} ({v[1]:,})"), cell("batch1", lambda v: f"{v * 1e3:.2f}"),
        cell("batch_first_call", lambda v: f"{v:.1f} s"), cell("batch_steady", lambda v: f"{v * 1e3:.1f}"),
        cell("error", lambda v: f"{v:.1e}"),
    ]
    if "failed" in r and "first_call" in r:
        cells[-1] += f" (then {r['failed']})"
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 3000, 10000], help="about this many equations")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per stage (subprocess)")
    parser.add_argument("--form", choices=list(FORMS), default="scalar",
                        help="the integrator on scalars (indexed state) or on the (3,) state vector")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--equations", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        stage(args.stage, args.equations, args.form)
        return
    print("| equations | Jacobian | first call (trace, order, compile, run) | peak RSS | compiled HLO instructions (fusions) "
          "| batch 1 (ms) | batch 1,024: first call | batch 1,024 (ms) | max rel. error vs eager jacfwd (float64) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        for name in args.stages:
            print(row(name, measure(name, n, args.timeout, args.form)), flush=True)


if __name__ == "__main__":
    main()
