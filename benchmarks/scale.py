"""Scale: Jacobians of programs of about 200 to 10,000 equations, stage by stage, against jax.jacrev.

The family (generated here): an explicit Euler integrator of two diffusively coupled
FitzHugh-Nagumo neurons (state v1, w1, v2, w2; parameters a, b, eps, k; dt = 0.05), stepped
until the program has about N equations, in five forms:

- ``scalar``: a Python loop of scalar jnp operations (a straight-line program of N equations).
- ``hub``: the same with dt·eps, dt·k, eps·a and eps·b computed once before the loop: four
  values read by every step (vertices whose degree grows with N).
- ``vector``: a ring of 16 oscillators, v and w vectors of 16, coupling by jnp.roll (a tensor
  graph; N counts vector equations).
- ``fori`` / ``scan``: the scalar step as the body of ``lax.fori_loop`` / ``lax.scan`` with as
  many steps as the scalar form has (N counts the equations the loop would unroll to).

Generated forms (float64, as a held-out family of generated programs may be), each statement
drawn from a broad primitive mix reading recent values (`_random_program`):

- ``random``: four scalar arguments, scalar statements (elementwise primitives).
- ``random-vector``: arguments (16,), (4, 4), a scalar and (8,); values of at most 64 entries
  (reductions, dot/matrix-vector/outer products, broadcasts, slices, concatenation, reshapes,
  transposes, jnp.roll, indexing with constant integers and index arrays besides).
- ``wide``: the same mix on (512,), (128,), a scalar and (32, 16), values up to 1,024 entries.
- ``model``: a Python loop of Euler steps of the Lorenz-96 model on a state of 128 entries.
- ``matrix``: Euler steps of dX = AX - XB + sin X on 12 x 12 matrices (dense 144-entry blocks).
- ``stencil``: explicit viscous Burgers steps on a 200-point grid (``jnp.pad`` and slices).
- ``mlp``: a long chain of small matrix products: residual blocks ``h + 0.1 tanh(W h) exp(-0.01 h²)``
  on a 32-entry state, four 32 x 32 weight matrices (arguments) used in turn.
- ``tensor``: the random mix on arrays of rank 3 and 4 ((4, 4, 4), (2, 3, 4, 2); also (4, 4), a
  scalar, (3, 4)) with, besides, means and maxima over some axes, transposes, batched matrix
  products (dot_general with batch dimensions), contractions with a matrix, reshapes, slices along
  an axis, centring by a broadcast mean.
- ``control``: the ``random-vector`` arguments and mix with, besides, jnp.where and lax.select,
  lax.cond, small fori_loops and scans, gathers and scatters (set, add) at constant index arrays,
  gathers at computed ones (argsort, argmax), cumulative sums, sorts, clips.
- ``many-io``: 150 scalar and 50 (8,) arguments, the ``random-vector`` mix; the newest 200 values
  are outputs (a wide and tall Jacobian).

The FitzHugh-Nagumo forms differentiate all 8 scalar inputs (``argnums=(0, ..., 7)``; the vector
form w.r.t. v and w and the 4 parameters), the generated ones all their arguments. For each form
and size, each stage runs in a subprocess of its own
(peak RSS per stage: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, JAX's import included),
killed at ``--timeout`` seconds or ``--max-gb`` of resident memory:

- ``trace``: ``graph.jacobian_graph`` (vertices, edges), ``graph.markowitz`` and the
  multiplications of forward, reverse and Markowitz (``graph.cost``).
- ``auto``: ``graph.resolve_order(g, "auto")`` with an empty cache (the whole search:
  ``alphagrad.agents.auto_order``'s budget) and its multiplications.
- ``reverse`` / ``markowitz``: the first call of ``jax.jit(interpreter.jacobian(f, order,
  argnums))`` (trace, order, compile, run), its largest error against eager ``jax.jacfwd`` (no
  jit; relative to the largest entry), then the steady-state run time at batch 1 and, under
  ``jax.vmap``, at batch 1,024 (its compilation is reported apart).
- ``jacrev``: the same for ``jax.jit(jax.jacrev(f, argnums))``.

``--output dense`` (for ``many-io``, whose Jacobian has 40,200 blocks at 1,000 equations) measures
``interpreter.jacobian(f, order, argnums, output="dense")`` (one [output entries, input entries]
array) instead, and as its peer ``jax.jacrev`` of f with its arguments and output raveled by
``jax.flatten_util.ravel_pytree`` (the same array); the error is taken on the blocks that
``interpreter.unravel_jacobian`` splits our array into.

Only the public API is used (``interpreter.jacobian``), so whatever path the interpreter takes for
a program (straight-line, tape) is what is measured; the ``trace`` stage reports that path, and
for a program the tape does not take, why (the column "path"). Prints one markdown table row per form and
size (docs/benchmarks.md, "Scale"); ``--json`` also writes every measurement.

    python benchmarks/scale.py                                  # every form, N = 200 1000 3000 10000
    python benchmarks/scale.py --forms scalar --sizes 1000 --timeout 60
    python benchmarks/scale.py --forms many-io --sizes 1000 3000 --output dense --no-batch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

FORMS = ("scalar", "hub", "vector", "fori", "scan", "random", "random-vector", "wide", "model", "matrix", "stencil",
         "mlp", "tensor", "control", "many-io")
#: The generated forms (seeded random programs, the Lorenz-96 model, a matrix ODE and a stencil),
#: computed in float64.
GENERATED = ("random", "random-vector", "wide", "model", "matrix", "stencil", "mlp", "tensor", "control", "many-io")
STAGES = ("trace", "auto", "reverse", "markowitz", "jacrev")
DT = 0.05
RING = 16
MODEL_STATE = 128
MATRIX = 12
HIDDEN = 32
GRID = 200


# ---- the family -----------------------------------------------------------------------------------------------


def _step(v1, w1, v2, w2, a, b, eps, k):
    """One explicit Euler step of the coupled FitzHugh-Nagumo pair (scalar jnp operations)."""
    dv1 = v1 - v1 * v1 * v1 / 3.0 - w1 + k * (v2 - v1)
    dw1 = eps * (v1 + a - b * w1)
    dv2 = v2 - v2 * v2 * v2 / 3.0 - w2 + k * (v1 - v2)
    dw2 = eps * (v2 + a - b * w2)
    return v1 + DT * dv1, w1 + DT * dw1, v2 + DT * dv2, w2 + DT * dw2


def _program(form: str, steps: int):
    """f(*args) of `form` with `steps` integration steps."""
    import jax
    import jax.numpy as jnp

    if form == "scalar":
        def f(v1, w1, v2, w2, a, b, eps, k):
            for _ in range(steps):
                v1, w1, v2, w2 = _step(v1, w1, v2, w2, a, b, eps, k)
            return v1, w1, v2, w2
    elif form == "hub":
        def f(v1, w1, v2, w2, a, b, eps, k):
            de, dk, ea, eb = DT * eps, DT * k, eps * a, eps * b  # read by every step
            for _ in range(steps):
                v1, w1, v2, w2 = (v1 + DT * (v1 - v1 * v1 * v1 / 3.0 - w1) + dk * (v2 - v1),
                                  w1 + de * v1 + DT * (ea - eb * w1),
                                  v2 + DT * (v2 - v2 * v2 * v2 / 3.0 - w2) + dk * (v1 - v2),
                                  w2 + de * v2 + DT * (ea - eb * w2))
            return v1, w1, v2, w2
    elif form == "vector":
        def f(v, w, a, b, eps, k):
            for _ in range(steps):
                dv = v - v * v * v / 3.0 - w + k * (jnp.roll(v, 1) + jnp.roll(v, -1) - 2.0 * v)
                dw = eps * (v + a - b * w)
                v, w = v + DT * dv, w + DT * dw
            return v, w
    elif form == "fori":
        def f(v1, w1, v2, w2, a, b, eps, k):
            body = lambda _, s: _step(*s, a, b, eps, k)  # noqa: E731
            return jax.lax.fori_loop(0, steps, body, (v1, w1, v2, w2))
    elif form == "scan":
        def f(v1, w1, v2, w2, a, b, eps, k):
            body = lambda s, _: (_step(*s, a, b, eps, k), None)  # noqa: E731
            return jax.lax.scan(body, (v1, w1, v2, w2), None, length=steps)[0]
    elif form in _RANDOM_ARGS:
        return _random_program(form, steps)
    elif form == "model":
        return _lorenz96(steps)
    elif form == "matrix":
        def f(x, a, b):  # Euler steps of dX = A X - X B + sin(X): dense products of 144-entry blocks
            for _ in range(steps):
                x = x + 0.01 * (a @ x - x @ b + jnp.sin(x))
            return x
    elif form == "stencil":
        def f(u, nu):  # explicit viscous Burgers steps: pad (edge, wrap) and slice stencils
            for _ in range(steps):
                padded = jnp.pad(u, 1, mode="edge")
                laplacian = padded[2:] - 2.0 * padded[1:-1] + padded[:-2]
                flux = jnp.pad(0.5 * u * u, 1, mode="wrap")
                u = u + 0.001 * (nu * laplacian - 0.5 * (flux[2:] - flux[:-2]))
            return u
    elif form == "mlp":
        def f(h, w0, w1, w2, w3):  # a long chain of small matrix products: residual blocks, weights as inputs
            weights = (w0, w1, w2, w3)
            for k in range(steps):
                h = h + 0.1 * jnp.tanh(weights[k % 4] @ h) * jnp.exp(-0.01 * h * h)
            return h, jnp.sum(h * h)
    else:
        raise ValueError(f"unknown form {form!r}; choose from {', '.join(FORMS)}")
    f.__name__ = f"fhn_{form}_{steps}"
    return f


# ---- the generated family ---------------------------------------------------------------------------------------

#: Per generated form: the argument shapes and the largest value (entries) a statement may make.
_RANDOM_ARGS = {
    "random": ((), (), (), ()),
    "random-vector": ((16,), (4, 4), (), (8,)),
    "wide": ((512,), (128,), (), (32, 16)),
    "tensor": ((4, 4, 4), (2, 3, 4, 2), (4, 4), (), (3, 4)),
    "control": ((16,), (4, 4), (), (8,)),
    "many-io": ((),) * 150 + ((8,),) * 50,
}
_RANDOM_MAX = {"random": 1, "random-vector": 64, "wide": 1024, "tensor": 64, "control": 64, "many-io": 64}
#: Outputs of a generated program: the newest value of each of this many shapes (`many-io`: the
#: newest values, as many), and the mean of the values no statement read.
_RANDOM_OUTPUTS = {"many-io": 200}


def _random_program(form: str, statements: int, seed: int = 0):
    """f(*args): `statements` random statements over the arguments and earlier values.

    Each statement applies one operation drawn from a broad mix (unary: sin, cos, tanh, exp of a
    tanh, log and sqrt of positive values, integer_pow, pow, abs, neg, logistic, erf, relu,
    softplus, gelu; binary: means, differences, products, quotients, max/min, where, a lax.cond;
    reductions, dot products,
    matrix-vector and outer products, broadcasts, slices, concatenation, reshapes, transposes,
    jnp.roll, indexing with constant integers and index arrays) to values read from earlier ones,
    most often recent ones (a geometric draw back from the newest), sometimes an argument. Every
    operation is non-expanding or bounded (sums are means, quotients divide by 1 + b²), so values
    and derivatives stay finite over 10,000 equations. The draws depend only on `seed` and the
    statement's position: a longer program extends a shorter one. Returns the last value of
    each shape among the newest ones and the mean of every value no statement read (a handful
    of outputs).
    """
    import math

    import jax
    import jax.numpy as jnp
    import numpy as np

    limit = _RANDOM_MAX[form]

    def f(*args):
        rng = np.random.default_rng(seed)
        values = list(args)

        unread: list = []  # values no statement has read yet, oldest first

        def pick(shape=None):
            """A recent value (of `shape` when given; None if none of that shape is recent): half
            the time the oldest unread one (few dead values, as in written code), now and then an
            argument (values read by many statements), else a geometric draw back from the newest."""
            pool = values[-64:] if shape is None else [v for v in values[-64:] if v.shape == shape]
            if not pool:
                return None
            draw = rng.random()
            fresh = [v for v in unread if shape is None or v.shape == shape]
            if draw < 0.5 and fresh:
                chosen = fresh[0]
            elif draw < 0.6 and any(shape is None or a.shape == shape for a in args):
                candidates = [a for a in args if shape is None or a.shape == shape]
                chosen = candidates[rng.integers(len(candidates))]
            else:
                chosen = pool[max(0, len(pool) - int(rng.geometric(0.3)))]
            unread[:] = [v for v in unread if v is not chosen]
            return chosen

        def partner(a):
            """A second operand for `a`: another value of its shape, else a scalar."""
            for _ in range(3):
                b = pick(a.shape)
                if b is not None and b is not a:
                    return b
            b = pick(())
            return b if b is not None and b is not a else jnp.tanh(a)

        def unary(a):
            op = rng.integers(15)
            return [jnp.sin, jnp.cos, jnp.tanh, lambda x: jnp.exp(jnp.tanh(x)), lambda x: jnp.log(1.0 + x * x),
                    lambda x: jnp.sqrt(1.0 + x * x) - 1.0, lambda x: x**3 / (1.0 + x**2), jnp.abs, jnp.negative,
                    jax.nn.sigmoid, jax.scipy.special.erf, lambda x: jnp.power(1.0 + x * x, 0.3) - 1.0,
                    jax.nn.relu, lambda x: jax.nn.softplus(x) - 0.7, lambda x: jax.nn.gelu(jnp.tanh(x))][op](a)

        def binary(a, b):
            op = rng.integers(10)
            return [lambda: (a + b) * 0.5, lambda: (a - b) * 0.5, lambda: a * jnp.tanh(b), lambda: a / (1.0 + b * b),
                    lambda: jnp.maximum(a, b), lambda: jnp.minimum(a, b), lambda: jnp.where(a > b, a, b * 0.5),
                    lambda: jnp.power(1.0 + jnp.tanh(a) ** 2, jnp.tanh(b)), lambda: a * b / (1.0 + b * b),
                    lambda: jax.lax.cond(jnp.sum(b) > 0, lambda: a * 0.5, lambda: jnp.sin(a))][op]()

        def tensor(a):
            """Rank 3 and 4: reductions over some axes, transposes, batched matrix products
            (dot_general with batch dimensions), contractions with a matrix, reshapes, slices
            along an axis, centring by a broadcast mean (None: none fits)."""
            op = rng.integers(8)
            axis = int(rng.integers(a.ndim))
            if op == 0:
                axes = tuple(sorted(rng.choice(a.ndim, size=int(rng.integers(1, a.ndim)), replace=False).tolist()))
                return jnp.mean(a, axis=axes, keepdims=bool(rng.random() < 0.3))
            if op == 1:
                return jnp.transpose(a, rng.permutation(a.ndim).tolist())
            if op == 2 and math.prod(a.shape[:-1]) * a.shape[-2] <= limit:
                b = partner(a)  # batched a[..., i, j] b[..., k, j]: dot_general, batch dimensions
                b = b if b.shape == a.shape else jnp.tanh(a)
                return jnp.einsum("...ij,...kj->...ik", a, b) / a.shape[-1]
            if op == 3:
                m = pick((a.shape[-1], a.shape[-1]))
                return None if m is None else jnp.tensordot(a, m, axes=1) / a.shape[-1]
            if op == 4:
                shapes = [(a.size,), (a.shape[0], -1), (-1, a.shape[-1]), (a.shape[0] * a.shape[1], -1)]
                if a.size % 4 == 0:
                    shapes.append((2, -1, 2))
                return a.reshape(shapes[int(rng.integers(len(shapes)))])
            if op == 5:
                return jnp.max(a, axis=axis)
            if op == 6 and a.shape[axis] > 1:
                length = max(1, a.shape[axis] // 2)
                i = int(rng.integers(a.shape[axis] - length + 1))
                return jax.lax.slice_in_dim(a, i, i + length, axis=axis)
            return 0.5 * (a - jnp.mean(a, axis=axis, keepdims=True))

        def control(a):
            """Selections and branches, small loops, gathers and scatters at integer index
            arrays (constant or computed), cumulative sums and sorts."""
            op = rng.integers(10)
            b = partner(a)
            b = jnp.broadcast_to(b, a.shape)
            if op == 0:
                return jnp.where(a > b, a, 0.5 * b)
            if op == 1:
                return jax.lax.select(a > 0.1, jnp.sin(a), b * 0.5)
            if op == 2:
                return jax.lax.cond(jnp.sum(a) > 0, lambda x: x * 0.5, jnp.tanh, a)
            if op == 3:
                steps = int(rng.integers(2, 5))
                return jax.lax.fori_loop(0, steps, lambda i, x: 0.8 * x + 0.2 * jnp.sin(x * b + 0.1 * i), a)
            if a.ndim == 0:
                return jnp.clip(a, -0.5, 0.5) + 0.1 * b
            n = a.shape[0]
            if op == 4:  # a scan along the first axis: a decaying running state
                return jax.lax.scan(lambda c, x: (0.7 * c + 0.3 * jnp.tanh(x), c), a[0], a)[1]
            if op == 5:
                index = jnp.asarray(rng.integers(0, n, size=max(1, n // 2)))
                if rng.random() < 0.5:
                    return a.at[index].add(0.5 * b[: len(index)])  # a scatter-add (repeated indices add)
                return a.at[index].set(jnp.tanh(b[: len(index)]))
            if op == 6:
                return jnp.cumsum(a, axis=0) / n
            if op == 7:
                return jnp.sort(a, axis=0)
            if op == 8:
                return a[jnp.argsort(b[:, 0] if b.ndim > 1 else b)]  # a gather at computed indices
            return a * jnp.take(b.reshape(-1), jnp.argmax(a))  # one entry at a computed index

        def structural(a):
            """Reductions, products and data movement, as the shape of `a` allows (None: none fits)."""
            if form == "tensor" and (a.ndim >= 3 or (a.ndim == 2 and rng.random() < 0.6)):
                return tensor(a) if a.ndim >= 3 else tensor(a[None]) if a.size * 2 <= limit else None
            if form == "control" and rng.random() < 0.6:
                return control(a)
            if a.ndim == 0:
                shapes = {v.shape for v in values[-64:] if 1 < v.size <= limit}
                if not shapes:
                    return None
                shape = sorted(shapes)[rng.integers(len(shapes))]
                return a * jnp.ones(shape) + 0.5 * pick(shape)  # a broadcast
            n = a.shape[0]
            op = rng.integers(10)
            if op == 0:
                return jnp.mean(a)
            if op == 1:
                return jnp.max(a) if rng.random() < 0.5 else jnp.sum(a * pick(a.shape)) / a.size
            if a.ndim == 2:
                if op == 2:
                    v = pick((a.shape[1],))
                    return None if v is None else a @ v / a.shape[1]
                if op == 3:
                    return jnp.mean(a, axis=int(rng.integers(2)))
                if op == 4:
                    return a.T
                if op == 5:
                    return a[int(rng.integers(n))]
                return a.reshape(-1)
            if op == 2:
                return jnp.roll(a, int(rng.integers(1, n)) if n > 1 else 0)
            if op == 3:
                i = int(rng.integers(n))
                return a[i:i + max(1, n // 4)]
            if op == 4:
                b = pick()
                if b.ndim == 1 and n + b.shape[0] <= limit:
                    return jnp.concatenate([a, b])
                return a[::-1]
            if op == 5:
                return a[int(rng.integers(n))]
            if op == 6:
                index = rng.integers(0, n, size=max(1, n // 2))
                return a[jnp.asarray(index)]
            if op == 7:
                b = pick((n,))
                return jnp.dot(a, b) / n if b is not None and b is not a else a * 0.9
            if op == 8 and n * n <= limit:
                return jnp.outer(a, partner(a)) * 0.5
            rows = [r for r in range(2, n) if n % r == 0 and r * r <= n]
            return a.reshape(rows[-1], -1) if rows else a[::-1]

        for _ in range(statements):
            a = pick()
            kind = rng.random()
            if kind < 0.35:
                new = unary(a)
            elif kind < 0.7 or limit == 1:
                new = binary(a, partner(a))
            else:
                new = structural(a)
                new = unary(a) if new is None else new
            if new.shape == a.shape and rng.random() < 0.6:
                new = a + 0.3 * new  # a residual update: derivatives neither vanish nor explode
            values.append(new)
            unread.append(new)
        count = _RANDOM_OUTPUTS.get(form)
        if count:  # the newest values
            outputs = values[-count:]
        else:
            outputs = {}
            for v in values[-32:]:
                outputs[v.shape] = v
            outputs = list(outputs.values())[-4:]
        # Every value no statement read: their mean is one more output, so every statement
        # reaches an output (the Jacobian depends on the whole program).
        return tuple(outputs) + (sum(jnp.mean(v) for v in unread) / len(unread),)

    f.__name__ = f"{form.replace('-', '_')}_{statements}"
    return f


def _lorenz96(statements: int):
    """A Python loop of Euler steps of the Lorenz-96 model on a state of `MODEL_STATE` entries
    (forcing F, a damping vector c): `statements` steps; returns the state and its energy."""
    import jax.numpy as jnp

    def f(x, forcing, c):
        for _ in range(statements):
            dx = (jnp.roll(x, -1) - jnp.roll(x, 2)) * jnp.roll(x, 1) - c * x + forcing
            x = x + 0.01 * dx
        return x, 0.5 * jnp.mean(x * x)

    f.__name__ = f"lorenz96_{statements}"
    return f


def _args(form: str):
    import jax.numpy as jnp
    import numpy as np

    if form in _RANDOM_ARGS:
        rng = np.random.default_rng(1)
        return tuple(jnp.asarray(rng.uniform(-1.0, 1.0, shape), jnp.float64) for shape in _RANDOM_ARGS[form])
    if form == "matrix":
        rng = np.random.default_rng(1)
        x, a, b = rng.normal(size=(MATRIX, MATRIX)), rng.normal(size=(MATRIX, MATRIX)) / 4, rng.normal(size=(MATRIX, MATRIX)) / 4
        return tuple(jnp.asarray(m, jnp.float64) for m in (x, a, b))
    if form == "mlp":
        rng = np.random.default_rng(1)
        return (jnp.asarray(rng.normal(size=HIDDEN), jnp.float64),
                *(jnp.asarray(rng.normal(size=(HIDDEN, HIDDEN)) / 6, jnp.float64) for _ in range(4)))
    if form == "stencil":
        rng = np.random.default_rng(1)
        u = np.sin(np.linspace(0.0, 6.0, GRID)) + 0.1 * rng.normal(size=GRID)
        return jnp.asarray(u, jnp.float64), jnp.float64(0.3)
    if form == "model":
        rng = np.random.default_rng(1)
        x = 8.0 + rng.uniform(-1.0, 1.0, MODEL_STATE)
        return jnp.asarray(x, jnp.float64), jnp.float64(8.0), jnp.asarray(rng.uniform(0.9, 1.1, MODEL_STATE))
    params = (0.7, 0.8, 0.08, 0.1)  # a, b, eps, k
    if form == "vector":
        ring = jnp.linspace(-1.0, 1.0, RING, dtype=jnp.float32)
        return (ring, 0.5 * ring) + tuple(jnp.float32(p) for p in params)
    return tuple(jnp.float32(x) for x in (-1.0, 1.0, 0.5, -0.5) + params)


def _equations(form: str, steps: int) -> int:
    """Equations of the program's jaxpr, loops unrolled (a loop form counts as its scalar form)."""
    import jax

    base = "scalar" if form in ("fori", "scan") else form
    return len(jax.make_jaxpr(_program(base, steps))(*_args(base)).jaxpr.eqns)


def family(form: str, equations: int):
    """(f, args, argnums, steps): the program of `form` with about `equations` equations."""
    base = "scalar" if form in ("fori", "scan") else form
    if form in _RANDOM_ARGS:  # statements make 1 to ~8 equations: calibrate on 200 of them
        steps = max(1, round(equations * 200 / _equations(form, 200)))
    else:
        one, two = _equations(base, 1), _equations(base, 2)
        steps = max(1, round((equations - (one - (two - one))) / (two - one)))
    args = _args(form)
    return _program(form, steps), args, tuple(range(len(args))), steps


# ---- one stage (in its own process) ---------------------------------------------------------------------------


def _emit(**values) -> None:
    print(json.dumps(values), flush=True)


def _steady(fn, *args) -> float:
    """Median seconds of ``fn(*args)`` (blocked on), over at least 3 calls and about 1 s."""
    import jax

    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < 1.0 and len(times) < 50):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _path(g) -> str:
    """Which path ``interpreter.jacobian(f, "reverse")`` takes for graph `g`: "tape" with its
    kinds, or "straight-line" with the reason (too small for the tape, or what the tape does not take)."""
    from alphagrad import graph
    from alphagrad.interpreter import _tape

    steps = graph.plan(g, graph.resolve_order(g, "reverse"))
    size = _tape.straight_line_size(g, steps)
    if len(g.program.equations) < _tape.TAPE_MIN_EQUATIONS or size < _tape.TAPE_MIN_SIZE:
        return f"straight-line (size {size:,})"
    try:
        tape = _tape.build(g, steps)
    except _tape.Unsupported as err:
        return f"straight-line ({err})"
    # XLA compiles every kind (switch branch) of the equation loop, and each kind whose partials
    # are computed after it: what the first call's compile time grows with.
    return f"tape ({len(tape.branches)} kinds, {len(tape.partials)} after the loop)"


def _raveled_jacrev(f, argnums):
    """jax.jacrev's peer of ``jacobian(..., output="dense")``: jax.jacrev of f with its
    differentiated arguments and its output raveled (`jax.flatten_util.ravel_pytree`), the same
    [output entries, input entries] array."""
    import jax
    from jax.flatten_util import ravel_pytree

    def dense(*args):
        flat, unravel = ravel_pytree(tuple(args[k] for k in argnums))

        def raveled(v):
            full = list(args)
            for k, x in zip(argnums, unravel(v)):
                full[k] = x
            return ravel_pytree(f(*full))[0]

        return jax.jacrev(raveled)(flat)

    return dense


def run_stage(stage: str, form: str, size: int, output: str = "pytree") -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import alphagrad  # noqa: F401 - registers "auto"
    from alphagrad import graph, interpreter

    if form in GENERATED:
        jax.config.update("jax_enable_x64", True)
    f, args, argnums, steps = family(form, size)
    _emit(steps=steps, equations=_equations(form, steps))
    if stage in ("trace", "auto"):
        start = time.perf_counter()
        g = graph.jacobian_graph(f, *args, argnums=argnums)
        _emit(trace_s=time.perf_counter() - start, vertices=g.num_vertices, edges=len(g.edges))
        if stage == "trace":
            _emit(path=_path(g))
            start = time.perf_counter()
            order = graph.markowitz(g)
            _emit(markowitz_s=time.perf_counter() - start)
            _emit(**{f"muls_{name}": graph.cost(g, name) for name in ("forward", "reverse")},
                  muls_markowitz=graph.cost(g, order))
        else:
            start = time.perf_counter()
            order = graph.resolve_order(g, "auto")
            _emit(auto_s=time.perf_counter() - start, muls_auto=graph.cost(g, order))
        _emit(rss_gb=_rss_gb())
        return
    _emit(output=output)
    if stage == "jacrev":
        jac = _raveled_jacrev(f, argnums) if output == "dense" else jax.jacrev(f, argnums=argnums)
    else:
        jac = interpreter.jacobian(f, stage, argnums=argnums, output=output)
    jitted = jax.jit(jac)
    start = time.perf_counter()
    ours = jax.block_until_ready(jitted(*args))
    _emit(first_s=time.perf_counter() - start, rss_gb=_rss_gb())
    _emit(batch1_s=_steady(jitted, *args))
    if os.environ.get("ALPHAGRAD_SCALE_NO_BATCH"):  # --no-batch
        batch = None
    else:
        batch = tuple(x + 0.01 * jnp.linspace(-1.0, 1.0, 1024, dtype=jnp.float32).reshape((1024,) + (1,) * x.ndim)
                      for x in args)
    if batch is not None:
        vmapped = jax.jit(jax.vmap(jac))
        start = time.perf_counter()
        jax.block_until_ready(vmapped(*batch))
        _emit(batch1024_first_s=time.perf_counter() - start)
        _emit(batch1024_s=_steady(vmapped, *batch), rss_gb=_rss_gb())
    if stage != "jacrev":  # last: op by op it takes minutes at 10,000 equations
        ref = jax.jacfwd(f, argnums=argnums)(*args)  # eager: no jit, JAX's forward mode op by op
        if output == "dense":
            ours = interpreter.unravel_jacobian(ours, f, *args, argnums=argnums)
        a, b = jax.tree.leaves(ours), jax.tree.leaves(ref)
        assert len(a) == len(b)
        scale = max(float(np.max(np.abs(x))) for x in b)
        _emit(error=max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b)) / scale)


# ---- the driver -----------------------------------------------------------------------------------------------


def _run(stage: str, form: str, size: int, timeout: float, max_gb: float, cache: str, output: str = "pytree") -> dict:
    """Runs one stage in a subprocess; its measurements, plus ``stopped`` when it was killed."""
    import psutil

    env = dict(os.environ, ALPHAGRAD_CACHE=cache)
    cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--forms", form, "--sizes", str(size),
           "--output", output]
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
    handle = psutil.Process(proc.pid)
    start, peak, stopped = time.perf_counter(), 0.0, None
    while proc.poll() is None:
        try:
            peak = max(peak, handle.memory_info().rss / 2**30)
        except psutil.Error:
            pass
        if peak > max_gb:
            stopped = f"killed at {peak:.1f} GB"
        elif time.perf_counter() - start > timeout:
            stopped = f"did not finish in {timeout:g} s"
        if stopped:
            proc.kill()
            break
        time.sleep(0.2)
    _, err = proc.communicate()
    out.seek(0)
    result: dict = {}
    for line in out:
        if line.startswith("{"):
            result.update(json.loads(line))
    if stopped:
        result["stopped"] = stopped
    elif proc.returncode:
        result["stopped"] = "failed: " + (err.strip().splitlines() or ["?"])[-1][:200]
    result["wall_s"] = time.perf_counter() - start
    return result


def _fmt(value, spec: str = ".2g") -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if spec == "s":
        return f"{value:.2f}" if value < 10 else f"{value:.0f}"
    if spec == "ms":
        return f"{value * 1e3:.3g}"
    return format(value, spec)


def _cell_first(r: dict) -> str:
    if "first_s" in r:
        return f"{_fmt(r['first_s'], 's')} s, {r['rss_gb']:.1f} GB"
    return r.get("stopped", "–") if r else "not run"


def _cell_runs(r: dict) -> str:
    one = _fmt(r.get("batch1_s"), "ms") if "batch1_s" in r else "–"
    many = _fmt(r.get("batch1024_s"), "ms") if "batch1024_s" in r else "–"
    return f"{one} / {many}"


HEADER = ("| form | equations | vertices | edges | path | trace (s) | markowitz (s) | auto (s) | muls fwd / rev / mm / auto "
          "| first call, reverse | first call, markowitz | first call, jax.jacrev | run b=1 / b=1024 (ms): reverse "
          "| markowitz | jacrev | max rel. error vs eager jacfwd (rev, mm) |")


def row(form: str, size: int, stages: dict[str, dict]) -> str:
    t, a = stages.get("trace", {}), stages.get("auto", {})
    muls = " / ".join(_fmt(x.get(k)) for x, k in ((t, "muls_forward"), (t, "muls_reverse"), (t, "muls_markowitz"),
                                                   (a, "muls_auto")))
    rev, mm, jr = stages.get("reverse", {}), stages.get("markowitz", {}), stages.get("jacrev", {})
    errors = ", ".join(_fmt(x.get("error"), ".1e") for x in (rev, mm))
    dense = any(x.get("output") == "dense" for x in stages.values())
    cells = [f"{form} (dense)" if dense else form, _fmt(t.get("equations")), _fmt(t.get("vertices")), _fmt(t.get("edges")), t.get("path", "–"),
             _fmt(t.get("trace_s"), "s"), _fmt(t.get("markowitz_s"), "s"),
             _fmt(a.get("auto_s"), "s") if "auto_s" in a else a.get("stopped", "–"), muls,
             _cell_first(rev), _cell_first(mm), _cell_first(jr), _cell_runs(rev), _cell_runs(mm), _cell_runs(jr),
             errors]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 3000, 10000], help="equations")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per stage (default 150)")
    parser.add_argument("--max-gb", type=float, default=8.0, help="resident memory per stage (default 8)")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--no-batch", action="store_true", help="skip the batch-1,024 runs (vmap)")
    parser.add_argument("--output", choices=("pytree", "dense"), default="pytree",
                        help="the Jacobian as jax.jacrev's pytree, or one dense array (jacobian's output=; "
                             "jax.jacrev of the raveled function as the peer)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in this process
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.forms[0], args.sizes[0], args.output)
        return
    if args.no_batch:  # read by the stages' processes
        os.environ["ALPHAGRAD_SCALE_NO_BATCH"] = "1"
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    results = {}
    with tempfile.TemporaryDirectory() as caches:
        for size in args.sizes:
            for form in args.forms:
                stages = {}
                cache = os.path.join(caches, f"{form}-{size}")  # empty: "auto" searches once per row
                for stage in args.stages:
                    stages[stage] = _run(stage, form, size, args.timeout, args.max_gb, cache, args.output)
                    print(f"  {form} {size} {stage}: {json.dumps(stages[stage])}", file=sys.stderr, flush=True)
                results[f"{form}-{size}"] = stages
                print(row(form, size, stages), flush=True)
                if args.json:
                    with open(args.json, "w") as fh:
                        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
