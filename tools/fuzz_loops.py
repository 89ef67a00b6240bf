"""Random RNN-like scans (carries of 4-16 entries, 12-64 steps, per-step inputs and outputs)
against jax.jacfwd in float64, in reverse and forward order; prints per seed the loop plans' modes.

    FORCE_CHAIN=1 python tools/fuzz_loops.py START STOP > results.jsonl

FORCE_CHAIN=1 takes the chain product, and its cheapest bracketing, wherever one exists
(`graph._loops.CHAIN_ADVANTAGE` and `BRACKETED_ADVANTAGE` lowered), so that the forward,
reverse and bracketed chains are exercised rather than JAX's whole-loop differentiation.
"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from alphagrad import interpreter, graph
import os
if os.environ.get("FORCE_CHAIN"):  # take the chain, and the cheapest bracketing, wherever they exist
    from alphagrad.graph import _loops
    _loops.CHAIN_ADVANTAGE = 1e-9
    _loops.BRACKETED_ADVANTAGE = {"forward": 1.0, "reverse": 1.0}


def make(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([4, 8, 12, 16]))
    L = int(rng.choice([12, 16, 24, 32, 36, 48, 64]))
    m = int(rng.choice([0, 1, 2]))
    q = int(rng.choice([0, 1, 2]))
    W = jnp.asarray(rng.normal(size=(n, n)) / np.sqrt(n))
    U = jnp.asarray(rng.normal(size=(n, max(m, 1))))
    V = jnp.asarray(rng.normal(size=(max(q, 1), n)))
    act = [jnp.tanh, jnp.sin, lambda x: x / (1 + x * x)][int(rng.integers(3))]
    reverse = bool(rng.integers(2))
    diff_w = bool(rng.integers(2))

    def f(h0, xs, w):
        def body(h, x):
            pre = (w if diff_w else W) @ h
            if m:
                pre = pre + U @ x
            h = act(pre)
            return h, (V @ h if q else jnp.zeros(0))
        h, ys = jax.lax.scan(body, h0, xs if m else jnp.zeros((L, 1)), reverse=reverse)
        return (h, ys) if q else h
    args = (jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.normal(size=(L, max(m, 1)))), W)
    argnums = (0, 1, 2) if diff_w else (0, 1) if m else (0,)
    return f, args, argnums, dict(n=n, L=L, m=m, q=q, reverse=reverse, diff_w=diff_w)


def close(a, b):
    err = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return float("inf")
        err = max(err, float(np.abs(x - y).max(initial=0.0)) / max(1.0, float(np.abs(y).max(initial=0.0))))
    return err


for seed in range(int(sys.argv[1]), int(sys.argv[2])):
    f, args, argnums, info = make(seed)
    t0 = time.time()
    out = {"seed": seed, **info}
    try:
        g = interpreter.graph_of(f, *args, argnums=argnums)
        modes = [e.loop.mode for e in g.program.equations if getattr(e, "loop", None) is not None]
        out["modes"] = modes
        expected = jax.jacfwd(f, argnums=argnums)(*args)
        errs = {o: close(jax.jit(interpreter.jacobian(f, o, argnums=argnums))(*args), expected)
                for o in ("reverse", "forward")}
        out["errors"] = errs
        out["status"] = "exact" if max(errs.values()) < 1e-8 else "WRONG"
    except Exception as e:
        out["status"] = "crash"; out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out), flush=True)
