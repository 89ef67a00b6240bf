"""Random programs of rank 1-4 arrays against jax.jacfwd (a check of unseen code, not a test).

    python tools/fuzz_programs.py START STOP [--control] [--long] [--tree DIR] > results.jsonl

Seeds [START, STOP); `--tree DIR` imports alphagrad from DIR (a `git archive` of a commit), so a
long run does not read a working tree that changes under it.

Each program starts from 2-3 arguments of rank 1-4 and applies 3-14 random steps; a step reads
one or two earlier values and may change the shape (reshapes that split and merge axes,
transposes, reductions, broadcasts, einsums with batch/free/contracted axes, convolutions, slices,
pads, concatenations, gathers, cumsum, sort, softmax, where). Outputs: the last 1-3 values.
Checked: jacobian(f, o) == jacfwd(f) (float64, rtol 1e-8 against the block's largest entry) for
o in forward, reverse, markowitz and a random order; count_muls == graph.cost for reverse.
Prints one JSON line per seed (status exact, WRONG, count, crash or ref-fail: JAX fails too).
"""

from __future__ import annotations

import json
import sys
import time
import traceback

if "--tree" in sys.argv:
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
from alphagrad import graph, interpreter  # noqa: E402

MAX_ENTRIES = 48
CONTROL = "--control" in sys.argv
LONG = "--long" in sys.argv  # 20-44 steps: programs near and past LABELLED_MAX_EQUATIONS


def factorisations(n: int, rank: int, rng) -> tuple[int, ...]:
    """A random shape of `rank` axes with product n (axes of 1 allowed)."""
    shape = []
    left = n
    for _ in range(rank - 1):
        divisors = [d for d in range(1, left + 1) if left % d == 0]
        d = int(rng.choice(divisors))
        shape.append(d)
        left //= d
    shape.append(left)
    rng.shuffle(shape)
    return tuple(shape)


def random_shape(rng, rank=None):
    rank = int(rng.integers(1, 5)) if rank is None else rank
    while True:
        shape = tuple(int(rng.integers(1, 5)) for _ in range(rank))
        if np.prod(shape) <= MAX_ENTRIES and (rank < 3 or sum(s > 1 for s in shape) >= 2):
            return shape


class Program:
    """A random program: a list of (description, function(values) -> value)."""

    def __init__(self, seed: int):
        self.rng = rng = np.random.default_rng(seed)
        self.arg_shapes = [random_shape(rng, int(rng.choice([1, 2, 3, 3, 4, 4]))) for _ in range(int(rng.integers(2, 4)))]
        self.steps = []
        shapes = list(self.arg_shapes)
        for _ in range(int(rng.integers(20, 45)) if LONG else int(rng.integers(3, 15))):
            step = self.draw_step(shapes)
            if step is None:
                continue
            desc, fn, reads, out_shape = step
            self.steps.append((desc, fn, reads))
            shapes.append(out_shape)
        self.shapes = shapes
        k = int(rng.integers(1, 4))
        self.outputs = sorted(set(int(i) for i in rng.choice(np.arange(max(0, len(shapes) - 4), len(shapes)), size=k)))

    def pick(self, shapes, pred=lambda s: True):
        idx = [i for i, s in enumerate(shapes) if pred(s)]
        if not idx:
            return None
        # prefer recent values
        weights = np.arange(1, len(idx) + 1, dtype=float) ** 2
        return int(self.rng.choice(idx, p=weights / weights.sum()))

    def draw_step(self, shapes):
        rng = self.rng
        kind = rng.choice(["unary", "binary", "reshape", "transpose", "reduce", "broadcast", "einsum", "conv",
                           "slice", "pad", "concat", "gather", "cumsum", "sort", "softmax", "where", "bcast_binary"] + (["scan", "fori", "cond", "while"] if CONTROL else []))
        i = self.pick(shapes)
        s = shapes[i]
        if kind == "unary":
            name = str(rng.choice(["sin", "tanh", "exp", "square", "neg", "log1p2"]))
            fns = {"sin": jnp.sin, "tanh": jnp.tanh, "exp": lambda x: jnp.exp(0.3 * x), "square": jnp.square,
                   "neg": lambda x: -x, "log1p2": lambda x: jnp.log(1.0 + x * x)}
            return f"{name}(v{i})", (lambda vs, f=fns[name]: f(vs[i])), (i,), s
        if kind == "binary":
            j = self.pick(shapes, lambda t: t == s)
            name = str(rng.choice(["add", "mul", "sub", "div", "max"]))
            fns = {"add": jnp.add, "mul": jnp.multiply, "sub": jnp.subtract,
                   "div": lambda x, y: x / (2.0 + jnp.cos(y)), "max": jnp.maximum}
            return f"{name}(v{i}, v{j})", (lambda vs, f=fns[name]: f(vs[i], vs[j])), (i, j), s
        if kind == "bcast_binary":
            # y reduced over some axes (keepdims or dropped leading), broadcast back against x
            if len(s) < 2:
                return None
            axes = tuple(sorted(set(int(a) for a in rng.choice(len(s), size=int(rng.integers(1, len(s))), replace=False))))
            drop_leading = bool(rng.integers(2)) and axes == tuple(range(len(axes)))
            j = self.pick(shapes, lambda t: t == s)
            def fn(vs, axes=axes, drop=drop_leading):
                y = jnp.sum(jnp.sin(vs[j]), axis=axes, keepdims=not drop)
                return vs[i] * y
            return f"v{i} * sum(sin(v{j}), {axes}, drop={drop_leading})", fn, (i, j), s
        if kind == "reshape":
            n = int(np.prod(s))
            new = factorisations(n, int(rng.integers(1, 5)), rng)
            return f"reshape(v{i}, {new})", (lambda vs: jnp.reshape(vs[i], new)), (i,), new
        if kind == "transpose":
            if len(s) < 2:
                return None
            perm = tuple(int(p) for p in rng.permutation(len(s)))
            return f"transpose(v{i}, {perm})", (lambda vs: jnp.transpose(vs[i], perm)), (i,), tuple(s[p] for p in perm)
        if kind == "reduce":
            if len(s) < 2:
                return None
            axes = tuple(sorted(set(int(a) for a in rng.choice(len(s), size=int(rng.integers(1, len(s))), replace=False))))
            op = str(rng.choice(["sum", "max", "mean", "min"]))
            f = {"sum": jnp.sum, "max": jnp.max, "mean": jnp.mean, "min": jnp.min}[op]
            out = tuple(d for a, d in enumerate(s) if a not in axes)
            return f"{op}(v{i}, {axes})", (lambda vs: f(vs[i], axis=axes)), (i,), out
        if kind == "broadcast":
            if len(s) >= 4:
                return None
            pos = int(rng.integers(0, len(s) + 1))
            size = int(rng.integers(2, 4))
            out = s[:pos] + (size,) + s[pos:]
            if np.prod(out) > MAX_ENTRIES * 2:
                return None
            return f"broadcast(v{i}, {out}, new axis {pos})", (lambda vs: jnp.broadcast_to(jnp.expand_dims(vs[i], pos), out)), (i,), out
        if kind == "einsum":
            if len(s) < 2:
                return None
            # x: (batch..., m, k); y built from another value: (batch..., k, n) via reshape of a
            # value with that many entries, else from an argument slice
            letters = "abcdefgh"
            r = len(s)
            nb = int(rng.integers(0, r - 1))  # batch axes
            xs = letters[:r]
            k_axis = r - 1 if rng.integers(2) else int(rng.integers(nb, r))
            n = int(rng.integers(1, 4))
            y_shape = tuple(s[a] for a in range(nb)) + (s[k_axis], n)
            ys = xs[:nb] + xs[k_axis] + "z"
            out_letters = [c for c in xs if c != xs[k_axis]] + ["z"]
            if rng.integers(2):
                rng.shuffle(out_letters)
            out = "".join(out_letters)
            size = int(np.prod(y_shape))
            j = self.pick(shapes, lambda t: int(np.prod(t)) == size)
            if j is None:
                return None
            spec = f"{xs},{ys}->{out}"
            full = {c: d for c, d in zip(xs, s)} | {"z": n}
            out_shape = tuple(full[c] for c in out)
            if np.prod(out_shape) > MAX_ENTRIES * 2:
                return None
            return (f"einsum('{spec}', v{i}, reshape(v{j}, {y_shape}))",
                    (lambda vs: jnp.einsum(spec, vs[i], jnp.reshape(vs[j], y_shape))), (i, j), out_shape)
        if kind == "conv":
            if len(s) != 3 or s[2] < 2:
                return None
            # (N, C, W) with a kernel (O, C, K) from another value
            o, kw = int(rng.integers(1, 3)), int(rng.integers(1, min(3, s[2]) + 1))
            k_shape = (o, s[1], kw)
            size = int(np.prod(k_shape))
            j = self.pick(shapes, lambda t: int(np.prod(t)) >= size)
            if j is None:
                return None
            padding = str(rng.choice(["VALID", "SAME"]))
            out_w = s[2] - kw + 1 if padding == "VALID" else s[2]
            def fn(vs):
                kern = jnp.reshape(jnp.ravel(vs[j])[:size], k_shape)
                return jax.lax.conv_general_dilated(vs[i], kern, (1,), padding, dimension_numbers=("NCH", "OIH", "NCH"))
            return f"conv(v{i}, v{j}[:{size}].reshape{k_shape}, {padding})", fn, (i, j), (s[0], o, out_w)
        if kind == "slice":
            a = int(rng.integers(len(s)))
            if s[a] < 2:
                return None
            lo = int(rng.integers(0, s[a] - 1))
            out = s[:a] + (s[a] - lo,) + s[a + 1:]
            return f"slice(v{i}, axis {a}, {lo}:)", (lambda vs: jax.lax.slice_in_dim(vs[i], lo, s[a], axis=a)), (i,), out
        if kind == "pad":
            a = int(rng.integers(len(s)))
            widths = [(0, 0)] * len(s)
            widths[a] = (1, int(rng.integers(0, 2)))
            out = s[:a] + (s[a] + sum(widths[a]),) + s[a + 1:]
            if np.prod(out) > MAX_ENTRIES * 2:
                return None
            return f"pad(v{i}, {widths})", (lambda vs: jnp.pad(vs[i], widths)), (i,), out
        if kind == "concat":
            a = int(rng.integers(len(s)))
            j = self.pick(shapes, lambda t: len(t) == len(s) and all(t[b] == s[b] for b in range(len(s)) if b != a))
            out = s[:a] + (s[a] + shapes[j][a],) + s[a + 1:]
            if np.prod(out) > MAX_ENTRIES * 2:
                return None
            return f"concat(v{i}, v{j}, axis {a})", (lambda vs: jnp.concatenate([vs[i], vs[j]], axis=a)), (i, j), out
        if kind == "gather":
            a = int(rng.integers(len(s)))
            idx = np.asarray(rng.integers(0, s[a], size=int(rng.integers(1, 4))))
            out = s[:a] + (len(idx),) + s[a + 1:]
            return f"take(v{i}, {idx.tolist()}, axis {a})", (lambda vs: jnp.take(vs[i], idx, axis=a)), (i,), out
        if kind == "cumsum":
            a = int(rng.integers(len(s)))
            return f"cumsum(v{i}, {a})", (lambda vs: jnp.cumsum(vs[i], axis=a)), (i,), s
        if kind == "sort":
            a = int(rng.integers(len(s)))
            return f"sort(v{i}, {a})", (lambda vs: jnp.sort(vs[i], axis=a)), (i,), s
        if kind == "softmax":
            a = int(rng.integers(len(s)))
            return f"softmax(v{i}, {a})", (lambda vs: jax.nn.softmax(vs[i], axis=a)), (i,), s
        if kind == "where":
            mask = np.asarray(rng.integers(0, 2, size=s)).astype(bool)
            j = self.pick(shapes, lambda t: t == s)
            return f"where(mask, v{i}, v{j})", (lambda vs: jnp.where(mask, vs[i], 0.5 * vs[j])), (i, j), s
        if kind == "scan":
            j = self.pick(shapes, lambda t: t == s)
            length = int(rng.integers(2, 5))
            a = int(rng.integers(len(s)))
            reverse = bool(rng.integers(2))
            def fn(vs):
                xs = jnp.stack([jnp.sin((k + 1) * vs[j]) for k in range(length)])
                def body(c, x):
                    c2 = jnp.tanh(c * x + 0.5 * jnp.flip(c, axis=a))
                    return c2, jnp.sum(c2 * x, axis=a)
                c, ys = jax.lax.scan(body, vs[i], xs, reverse=reverse)
                return c + jnp.expand_dims(jnp.sum(ys, axis=0), a)
            return f"scan(v{i}, xs from v{j}, length {length}, axis {a}, reverse={reverse})", fn, (i, j), s
        if kind == "fori":
            a = int(rng.integers(len(s)))
            n = s[a]
            def fn(vs):
                def body(k, c):
                    row = jax.lax.dynamic_index_in_dim(c, k % n, axis=a, keepdims=True)
                    return c + 0.3 * jnp.sin(row) * c
                return jax.lax.fori_loop(0, n + 1, body, vs[i])
            return f"fori(v{i}, rows along {a})", fn, (i,), s
        if kind == "cond":
            j = self.pick(shapes, lambda t: t == s)
            def fn(vs):
                return jax.lax.cond(jnp.sum(vs[j]) > 0, lambda x, y: jnp.sin(x) * y, lambda x, y: x + jnp.cos(y), vs[i], vs[j])
            return f"cond(sum(v{j}) > 0, sin(v{i}) * v{j}, v{i} + cos(v{j}))", fn, (i, j), s
        if kind == "while":
            def fn(vs):
                def body(state):
                    k, c = state
                    return k + 1, 0.9 * c + 0.1 * jnp.tanh(c)
                return jax.lax.while_loop(lambda st: st[0] < 3, body, (0, vs[i]))[1]
            return f"while(3 steps, v{i})", fn, (i,), s
        return None

    def fn(self, *args):
        vs = list(args)
        for _, f, _ in self.steps:
            vs.append(f(vs))
        outs = tuple(vs[k] for k in self.outputs)
        return outs if len(outs) > 1 else outs[0]

    def describe(self):
        lines = [f"args {self.arg_shapes}"]
        lines += [f"v{len(self.arg_shapes) + n} = {d}" for n, (d, _, _) in enumerate(self.steps)]
        lines.append(f"outputs {self.outputs}")
        return lines


def close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False, f"shape {x.shape} != {y.shape}"
        scale = max(1.0, float(np.abs(y).max(initial=0.0)))
        err = float(np.abs(x - y).max(initial=0.0)) / scale
        if err > 1e-8:
            return False, f"error {err:.3g}"
    return True, ""


def check(seed: int) -> dict:
    p = Program(seed)
    rng = np.random.default_rng(seed + 10**6)
    args = [jnp.asarray(0.7 * rng.normal(size=s)) for s in p.arg_shapes]
    argnums = tuple(range(len(args)))
    out = {"seed": seed, "program": p.describe()}
    t0 = time.time()
    try:
        expected = jax.jacfwd(p.fn, argnums=argnums)(*args)
    except Exception as e:  # a program JAX cannot differentiate: skip
        out.update(status="ref-fail", error=repr(e)[:200])
        return out
    try:
        g = interpreter.graph_of(p.fn, *args, argnums=argnums)
        out["vertices"], out["labelled"] = g.num_vertices, bool(g.structures)
        orders = {"forward": "forward", "reverse": "reverse", "markowitz": "markowitz",
                  "random": [int(v) for v in np.random.default_rng(seed).permutation(list(g.intermediates))]}
        bad = {}
        for name, o in orders.items():
            jac = jax.jit(interpreter.jacobian(p.fn, o, argnums=argnums))(*args)
            ok, why = close(jac, expected)
            if not ok:
                bad[name] = why
        counted = interpreter.count_muls(p.fn, "reverse", *args, argnums=argnums)
        if counted != graph.cost(g, "reverse"):
            bad["count"] = f"{counted} != {graph.cost(g, 'reverse')}"
        out["status"] = "WRONG" if any(k != "count" for k in bad) else ("count" if bad else "exact")
        out["bad"] = bad
    except Exception as e:
        out.update(status="crash", error=f"{type(e).__name__}: {str(e)[:300]}", tb=traceback.format_exc()[-1500:])
    out["seconds"] = round(time.time() - t0, 2)
    return out


if __name__ == "__main__":
    start, stop = int(sys.argv[1]), int(sys.argv[2])  # --control: loops and branches too
    for seed in range(start, stop):
        print(json.dumps(check(seed)), flush=True)
