"""Runtime of `interpreter.jacobian` against `jax.jacfwd` / `jax.jacrev`, measured in one run.

For each function (the registered tasks and, with ``--corpus``, the public corpus
`alphagrad.tasks.corpus`) and each batch size: the median wall time of ``jit(vmap(J))`` where J
is our Jacobian with the forward, reverse, Markowitz and ``"auto"`` orders, beside
``jit(vmap(jax.jacfwd(f)))`` and ``jit(vmap(jax.jacrev(f)))``, with the kernel count of each
compiled program.

* The call returns jax.jacrev's pytree of blocks (one output buffer per block), as a user calls
  it; ``--consumed`` flattens the blocks into one [batch, n] array inside the same jit instead.
* Every candidate is compiled once, then all are timed in interleaved rounds (round-robin, a few
  calls each) in the same process, so that load changes on a shared machine hit them alike; the
  median per candidate is reported.
* **cheapest** is the order with the fewest multiplications among forward, reverse, Markowitz
  and auto (its time is that order's column). Ratios are time(faster of jacfwd, jacrev) / time(ours):
  above 1 we are faster.
* **kernels** counts the operations XLA runs at the top level of the compiled program (every
  fusion, custom call, dot, copy, concatenate, loop, ... of the entry computation and of loop
  bodies; parameters, constants, bitcasts and tuples excluded): the number of kernel launches
  per call.
* A function is skipped at a batch size where its Jacobian (or jacfwd's/jacrev's largest
  intermediate, estimated as 4 Jacobians) would need more than ``--max-gb``.
* Corpus functions run in float32 (their float64 examples are cast), the arguments they do not
  differentiate (trip counts, indices) are shared by the batch (``in_axes=None``).
* ``"auto"``'s search budget is $ALPHAGRAD_AUTO_SECONDS (set it, e.g. to 2, for a quick corpus run).
* ``--patch MODULE.NAME=VALUE ...`` also times ``"auto"`` traced with these module constants set
  (column **patched**, its kernels last in the kernels column): an A/B of an interpreter change in
  the same process, e.g. ``--patch alphagrad.interpreter._structured.PATTERN_AT_TRACE_TIME_MAX=0``.

    python benchmarks/jacobian_runtime.py [--tasks RoeFlux_1d ...] [--corpus [NAME ...]] \\
        [--batches 256 32768] [--reps 30] [--max-gb 2] [--consumed] [--orders auto ...] [--jsonl FILE] \\
        [--timeout SECONDS] [--patch MODULE.NAME=VALUE ...]

* ``--timeout`` runs each function in a child process killed after that many seconds: XLA:CPU hung
  (0% CPU, never returning) on gaussian_log_likelihood, qr_projection and gp_posterior_mean at batch
  32,768 in session 8 (several LAPACK calls in one program), which stopped a whole-corpus run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import platform
import re
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import graph, interpreter, orders, tasks

ALL_ORDERS = ("forward", "reverse", "markowitz", "auto")
PEERS = ("jacfwd", "jacrev")
#: Cheaper-not-slower check: a cheaper order (by > 25% multiplications) counts as slower only when
#: more than this fraction slower (the spread of repeated medians on a shared 2-core machine).
NOISE = 0.10
_TRIVIAL = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element", "after-all", "partition-id"}


def kernel_count(hlo_text: str) -> int:
    """Operations run as kernels: instructions of the computations that are not fused into a
    fusion or applied elementwise by another operation (reducers, comparators, scatter updates)."""
    inner = set(re.findall(r"calls=(%[\w.\-]+)", hlo_text)) | set(re.findall(r"to_apply=(%[\w.\-]+)", hlo_text))
    count, inside = 0, False
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?(%[\w.\-]+) .*\{$", line)
        if header:
            inside = header.group(1) not in inner
            continue
        op = re.match(r"^\s*(?:ROOT )?%[\w.\-]+ = .*? ([\w\-]+)\(", line)
        if inside and op and op.group(1) not in _TRIVIAL:
            count += 1
    return count


def _float_leaf(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def batched_args(args: tuple, argnums: tuple[int, ...], batch: int, seed: int = 0):
    """The differentiated arguments as `batch` perturbed float32 copies [batch, ...], the others
    unchanged; and vmap's in_axes."""
    key = jax.random.PRNGKey(seed)
    out, in_axes = [], []
    for i, a in enumerate(args):
        if i not in argnums:
            out.append(a)
            in_axes.append(None)
            continue
        leaves, tree = jax.tree.flatten(a)
        batched = []
        for j, leaf in enumerate(leaves):
            leaf = jnp.asarray(leaf, jnp.float32) if _float_leaf(leaf) else jnp.asarray(leaf)
            noise = 0.01 * jax.random.uniform(jax.random.fold_in(key, 31 * i + j), (batch, *leaf.shape))
            batched.append(leaf[None] * (1.0 + noise).astype(leaf.dtype) if _float_leaf(leaf)
                           else jnp.broadcast_to(leaf[None], (batch, *leaf.shape)))
        out.append(tree.unflatten(batched))
        in_axes.append(0)
    return tuple(out), tuple(in_axes)


def example_args(args: tuple, argnums: tuple[int, ...]) -> tuple:
    """One example as the batched call sees it (float leaves of differentiated arguments in float32)."""
    return tuple(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32) if _float_leaf(x) else x, a)
                 if i in argnums else a for i, a in enumerate(args))


def consumed(fn):
    """``fn``'s output pytree flattened into one [batch, n] array inside the same jit."""

    def flat(*xs):
        leaves = jax.tree_util.tree_leaves(fn(*xs))
        return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)

    return flat


#: Each sample times a burst of calls lasting at least this long (seconds): a single call of a small
#: Jacobian takes 20-60 us, of the order of the timer's and the dispatcher's jitter, and one
#: function's medians of single calls read 18, 38 and 56 us in three runs (`indexed` at batch 256).
BURST_SECONDS = 2e-3


def interleaved_medians(compiled: dict, args, reps: int, rounds: int = 6) -> dict[str, float]:
    """Median milliseconds per call of each compiled function, timed round-robin in `rounds` rounds.

    A sample is a burst of back-to-back calls (as many as last `BURST_SECONDS`, at least one),
    divided by their number: steady-state time per call, as `timeit` measures it.

    Each round starts one candidate later (a rotation): with a fixed order, the same compiled program
    measured in two places of one round read up to 2x apart on this machine (gulf_research at batch
    32,768: 14 and 7.4 ms, RoeFlux_3d 25.6 and 13.7 ms, lorenz_rk4 23.4 and 18.2 ms, the slower
    each time the candidate timed right after jax.jacrev); rotated, those three pairs read within
    3-7%, though another (osborne1: 12.1 and 5.8 ms) still read 2x apart at load 8."""
    burst = {}
    for label, fn in compiled.items():
        jax.block_until_ready(fn(*args))
        once = []
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            once.append(time.perf_counter() - start)
        burst[label] = max(1, math.ceil(BURST_SECONDS / max(min(once), 1e-7)))
    samples = {label: [] for label in compiled}
    per_round = max(1, reps // rounds)
    labels = list(compiled)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            fn, calls = compiled[label], burst[label]
            for _ in range(per_round):
                start = time.perf_counter()
                for _ in range(calls):
                    out = fn(*args)
                jax.block_until_ready(out)
                samples[label].append((time.perf_counter() - start) / calls)
    return {label: 1e3 * statistics.median(s) for label, s in samples.items()}


@contextlib.contextmanager
def patched(settings: list[str]):
    """Module constants set to other values while the block runs (``MODULE.NAME=VALUE``, VALUE a
    Python literal or a frozenset), restored after."""
    saved = []
    try:
        for setting in settings:
            target, value = setting.split("=", 1)
            module_name, name = target.rsplit(".", 1)
            module = importlib.import_module(module_name)
            saved.append((module, name, getattr(module, name)))
            try:
                setattr(module, name, ast.literal_eval(value))
            except ValueError:  # frozenset(...), which literal_eval does not read
                setattr(module, name, eval(value, {"__builtins__": {}, "frozenset": frozenset}))  # noqa: S307
        yield
    finally:
        for module, name, old in reversed(saved):
            setattr(module, name, old)


def functions(ns) -> list[tuple[str, tasks.Task]]:
    chosen = [(n, tasks.get(n)) for n in ns.tasks]
    if ns.corpus is not None:
        corpus = tasks.corpus()
        chosen += [(f"corpus:{n}", corpus[n]) for n in (ns.corpus or corpus)]
    return chosen


def jacobian_entries(fn, argnums, example) -> int:
    """Entries of one example's Jacobian (the shapes of jax.jacfwd's blocks, or jax.jacrev's where
    forward mode cannot run: a custom_vjp function, as odeint)."""
    for peer in (jax.jacfwd, jax.jacrev):
        try:
            blocks = jax.eval_shape(peer(fn, argnums=argnums), *example)
        except Exception:  # noqa: BLE001 - the other peer may differentiate it
            continue
        return sum(math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(blocks))
    raise ValueError("neither jax.jacfwd nor jax.jacrev differentiates this function")


def run_one(name: str, task: tasks.Task, batches, ns, rows: list, notes: list) -> None:
    timed = tuple(ns.orders)
    argnums = task.argnums if task.argnums is not None else tuple(range(len(task.args)))
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    example = example_args(task.args, argnums)
    g = interpreter.graph_of(task.fn, *example, argnums=argnums)
    muls = {o: graph.cost(g, orders.resolve(g, o)) for o in timed}
    cheapest = min(timed, key=lambda o: (muls[o], o != "auto"))
    jac_entries = jacobian_entries(task.fn, argnums, example)
    builders = {
        "jacfwd": lambda: jax.jacfwd(task.fn, argnums=argnums),
        "jacrev": lambda: jax.jacrev(task.fn, argnums=argnums),
        **{o: (lambda o=o: interpreter.jacobian(task.fn, o, argnums=argnums)) for o in timed},
    }
    if ns.patch:
        builders["patched"] = lambda: interpreter.jacobian(task.fn, "auto", argnums=argnums)
    for batch in batches:
        need = 4 * 4 * jac_entries * batch
        if need > ns.max_gb * 2**30:
            notes.append(f"{name} skipped at batch {batch}: its Jacobian has {jac_entries:,} entries per example, "
                         f"about {need / 2**30:.1f} GB with jacfwd's/jacrev's intermediates (limit {ns.max_gb} GB)")
            continue
        xs, in_axes = batched_args(task.args, argnums, batch)
        compiled, kernels, compile_s = {}, {}, {}
        for label, build in builders.items():
            fn = jax.vmap(build(), in_axes=in_axes)
            try:
                start = time.perf_counter()
                with patched(ns.patch if label == "patched" else []):
                    compiled[label] = jax.jit(consumed(fn) if ns.consumed else fn).lower(*xs).compile()
                compile_s[label] = time.perf_counter() - start
            except Exception as err:  # noqa: BLE001 - a peer that cannot differentiate f (jacrev of a while loop)
                notes.append(f"{name}: {label} failed at batch {batch} ({type(err).__name__}: {str(err)[:80]})")
                continue
            kernels[label] = kernel_count(compiled[label].as_text())
        if not all(o in compiled for o in timed) or not any(p in compiled for p in PEERS):
            continue
        times = interleaved_medians(compiled, xs, ns.reps)
        extra = ("patched",) if ns.patch else ()
        peer = min(times[p] for p in PEERS if p in times)
        slower = [f"{a}<{b}" for a in timed for b in timed
                  if muls[a] * 1.25 < muls[b] and times[a] > (1 + NOISE) * times[b]]
        rows.append(dict(name=name, batch=batch, muls=muls, cheapest=cheapest, times=times, kernels=kernels,
                         compile_s=compile_s, auto=peer / times["auto"], best=peer / times[cheapest],
                         slower=slower, **({"patched": peer / times["patched"]} if "patched" in times else {})))
        r = rows[-1]
        if ns.jsonl:
            with open(ns.jsonl, "a") as out:
                out.write(json.dumps(r) + "\n")
        print(f"| {name} | {batch} | " + "/".join(str(muls[o]) for o in timed) + f" | {cheapest} | "
              + " | ".join(f"{times[k]:.3f}" if k in times else "—" for k in (*PEERS, *timed, *extra))
              + f" | {r['best']:.2f} | {r['auto']:.2f} | "
              + "".join(f"{r['patched']:.2f} | " if "patched" in r else "— | " for _ in extra)
              + f"{kernels.get('jacrev', '—')} / {kernels.get('jacfwd', '—')} / {kernels['auto']}"
              + "".join(f" / {kernels.get('patched', '—')}" for _ in extra) + " | "
              + (", ".join(slower) or "—") + " | "
              + " / ".join(f"{compile_s[k]:.1f}" if k in compile_s else "—" for k in ("jacrev", "jacfwd", "auto"))
              + " |", flush=True)


def run_child(name: str, ns, rows: list, notes: list) -> None:
    """`name` measured by this script in a child process, killed after ``ns.timeout`` seconds."""
    which = ["--tasks"] + ([] if name.startswith("corpus:") else [name])
    which += ["--corpus", name.removeprefix("corpus:")] if name.startswith("corpus:") else []
    command = [sys.executable, __file__, *which, "--batches", *map(str, ns.batches), "--reps", str(ns.reps),
               "--max-gb", str(ns.max_gb), "--orders", *ns.orders, *(["--consumed"] if ns.consumed else []),
               *(["--jsonl", ns.jsonl] if ns.jsonl else []), *(["--patch", *ns.patch] if ns.patch else [])]
    shift = 1 if ns.patch else 0  # the patched ratio's column follows auto's
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=ns.timeout).stdout
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        notes.append(f"{name}: killed after {ns.timeout:.0f} s (rows printed before that are kept)")
    for line in out.splitlines():
        if line.startswith(f"| {name} |"):
            print(line, flush=True)
            cells = [c.strip() for c in line.split("|")]
            rows.append(dict(batch=int(cells[2]), auto=float(cells[-5 - shift]), best=float(cells[-6 - shift]),
                             slower=cells[-3] != "—",
                             **({"patched": float(cells[-5])} if shift and cells[-5] != "—" else {})))
        elif line.startswith("- "):
            notes.append(line[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=[n for n in tasks.names() if not n.startswith("Random")])
    parser.add_argument("--corpus", nargs="*", default=None, help="corpus functions (no names: all of them)")
    parser.add_argument("--batches", nargs="*", type=int, default=[256, 32768])
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--max-gb", type=float, default=2.0)
    parser.add_argument("--consumed", action="store_true", help="flatten the blocks inside the jit")
    parser.add_argument("--orders", nargs="*", default=list(ALL_ORDERS), choices=ALL_ORDERS,
                        help="orders to time (auto is always timed)")
    parser.add_argument("--jsonl", default=None, help="also append each row as JSON to this file")
    parser.add_argument("--patch", nargs="*", default=[],
                        help="MODULE.NAME=VALUE ...: also time auto traced with these module constants set")
    parser.add_argument("--timeout", type=float, default=None,
                        help="run each function in a child process killed after this many seconds (XLA:CPU "
                             "can hang on programs with several LAPACK calls at large batch)")
    ns = parser.parse_args()
    ns.orders = [o for o in ALL_ORDERS if o in ns.orders or o == "auto"]

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {platform.processor() or platform.machine()}, "
          f"batch sizes {ns.batches}, median of {ns.reps} calls in interleaved rounds, "
          f"{'consumed' if ns.consumed else 'returned'} blocks\n")
    print(f"| function | batch | muls {'/'.join(ns.orders)} | cheapest | jacfwd ms | jacrev ms | "
          + " | ".join(f"{o} ms" for o in ns.orders) + (" | patched ms" if ns.patch else "")
          + " | peer / cheapest | peer / auto" + (" | peer / patched" if ns.patch else "")
          + " | kernels jacrev / jacfwd / auto" + (" / patched" if ns.patch else "")
          + " | cheaper order slower | compile s jacrev / jacfwd / auto |")
    print("|---|---:|---|---|---:|---:|" + "---:|" * (len(ns.orders) + 2 * bool(ns.patch)) + "---:|---:|---|---|---|")
    rows, notes = [], []
    for name, task in functions(ns):
        if ns.timeout is not None:
            run_child(name, ns, rows, notes)
            continue
        try:
            run_one(name, task, ns.batches, ns, rows, notes)
        except Exception as err:  # noqa: BLE001 - report and go on with the next function
            notes.append(f"{name}: not measured ({type(err).__name__}: {str(err)[:120]})")
    print()
    for note in notes:
        print(f"- {note}")
    for batch in ns.batches:
        at = [r for r in rows if r["batch"] == batch]
        if not at:
            continue
        autos = sorted(r["auto"] for r in at)
        print(f"\nbatch {batch}: {len(at)} functions; peer / auto median {statistics.median(autos):.2f}, "
              f"min {autos[0]:.2f}; auto below 0.9x: {sum(a < 0.9 for a in autos)}; "
              f"cheapest >= 2x: {sum(r['best'] >= 2 for r in at)}; "
              f"cheaper order slower: {sum(bool(r['slower']) for r in at)}")
        base = sorted(r["patched"] for r in at if "patched" in r)
        if base:
            print(f"batch {batch}, patched: peer / patched median {statistics.median(base):.2f}, min {base[0]:.2f}; "
                  f"below 0.9x: {sum(a < 0.9 for a in base)}")


if __name__ == "__main__":
    main()
