"""Timing helpers of the interpreter's runtime, shared by `alphagrad bench` and benchmarks/jacobian_runtime.py.

    >>> from alphagrad.cli.timing import runtime_ratios
    >>> runtime_ratios(f, args, "markowitz", batch=512)      # {"ours": ms, "jacfwd": ms, "jacrev": ms}
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import interpreter

__all__ = ["median_ms", "example_arrays", "batched_inputs", "runtime_ratios"]


def median_ms(fn, args, reps: int) -> float:
    """Median wall time of ``fn(*args)`` in milliseconds over `reps` calls (after one warm-up)."""
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def example_arrays(args) -> tuple:
    """The example inputs as float32 arrays, as each example of `batched_inputs` sees them.

    Python-float arguments become arrays here, which can change the traced graph (a weak-typed
    scalar may need one conversion equation less), so orders for timed runs are searched on
    ``tasks.resolve(...).with_args(example_arrays(args)).graph(cost_model="exact")``, the graph
    ``interpreter.graph_of(f, *example_arrays(args))`` gives.
    """
    return tuple(jnp.asarray(a, jnp.float32) for a in args)


def batched_inputs(args, batch: int, seed: int = 0) -> tuple:
    """`batch` copies of the example inputs (float32), perturbed so that examples differ: [batch, *shape]."""
    # NumPy, not jax.random: each eager jax.random call compiled a kernel of its own (about 50
    # compilations, 5-18 s of `alphagrad bench` before anything was timed).
    rng = np.random.default_rng(seed)
    out = []
    for a in args:
        a = np.asarray(a, np.float32)
        noise = 0.01 * rng.uniform(size=(batch, *a.shape)).astype(np.float32)
        out.append(jnp.asarray(a[None] * (1.0 + noise)))
    return tuple(out)


def runtime_ratios(fn, args, order, *, batch: int = 512, reps: int = 50) -> dict[str, float]:
    """Milliseconds of ``jit(vmap(jacobian(fn, order)))`` and of jax.jacfwd / jax.jacrev, same run."""
    argnums = tuple(range(len(args)))
    xs = batched_inputs(args, batch)
    candidates = {
        "ours": jax.vmap(interpreter.jacobian(fn, order, argnums=argnums)),
        "jacfwd": jax.vmap(jax.jacfwd(fn, argnums=argnums)),
        "jacrev": jax.vmap(jax.jacrev(fn, argnums=argnums)),
    }
    return {label: median_ms(jax.jit(f), xs, reps) for label, f in candidates.items()}
