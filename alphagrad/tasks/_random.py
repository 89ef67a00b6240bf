"""Seeded random straight-line JAX programs, as test and benchmark tasks.

`random_program(seed, kind)` builds a program in the spirit of the AlphaGrad paper's random
tasks "g" (``kind="scalar"``) and "f" (``kind="tensor"``):

- ``"scalar"``: 15 float32 inputs of shape (); 60-100 statements of elementwise unary and
  binary operations; 10-20 scalar outputs.
- ``"tensor"``: 4 float32 inputs of shapes (4,), (2, 3), (4, 4), (4, 1); 40-75 statements mixing
  elementwise operations, ``dot_general`` with assorted contraction dimensions, reshape,
  transpose, reductions over an axis, slicing, squeeze and ``stop_gradient``; 4-8 outputs of
  various shapes, each at most 2-D.

The program structure is drawn with ``numpy.random.default_rng(seed)`` and the example inputs
with ``jax.random.PRNGKey(seed)``, so a seed always gives the identical jaxpr and inputs.

Numerical safety: example inputs lie in [-0.9, 0.9]. While generating, the builder tracks for
every value a bound on its magnitude and a bound on the row sums of its Jacobian, both valid
for *all* inputs in [-1, 1]. Domain-restricted operations are guarded (``log(1 + x**2)``,
``arcsin`` and ``arctanh`` of an argument bounded by 0.9, division by ``1 + y**2`` or
``2 + cos(y)``, powers of ``1 + x**2``), operands whose bound is too large for an operation are
first squashed (``tanh``, ``arctan``, ``sin``), and a statement whose derivative bound would grow
too large is redrawn. Outputs and forward or reverse Jacobians are therefore finite on the whole
box, not only at the example point.

Only primitives with edge rules in the graph builder are emitted, and no array has more than
two dimensions.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.errors import AlphagradError
from alphagrad.tasks._registry import Task, register

__all__ = ["random_program"]

_F32 = jnp.float32

# The bounds below are proven for inputs in [-1, 1]; examples are drawn inside, with margin.
_INPUT_BOUND = 1.0
_EXAMPLE_RANGE = 0.9
# Caps on the tracked value and derivative bounds. Far below float32's 3e38, so that the
# intermediate terms of the JVP rules (e.g. (1 + y**2)**2 in a quotient rule) cannot overflow.
_MAX_VALUE = 1e3
_MAX_DERIV = 1e6
_MAX_DIM = 16
_MAX_SIZE = 64
_REDRAWS = 64

_SCALAR_INPUTS = 15
_SCALAR_STATEMENTS = (60, 100)
_SCALAR_OUTPUTS = (10, 20)
_TENSOR_SHAPES = ((4,), (2, 3), (4, 4), (4, 1))
_TENSOR_STATEMENTS = (40, 75)
_TENSOR_OUTPUTS = (4, 6)
# Every value left unused becomes an output (else it would be dead code), up to these caps.
_SCALAR_MAX_OUTPUTS = 20
_TENSOR_MAX_OUTPUTS = 8


class _Stmt(NamedTuple):
    """One statement: ``op`` applied to earlier values ``args`` (after optional squashing)."""

    op: str
    args: tuple[int, ...]
    squash: tuple[str | None, ...]
    params: tuple = ()


class _Val(NamedTuple):
    """Static facts about a value: shape, |value| bound, and Jacobian row-sum bound."""

    shape: tuple[int, ...]
    bound: float
    deriv: float


# --------------------------------------------------------------------------------------------
# Operation tables. Each entry gives the JAX implementation and the bound propagation.
# --------------------------------------------------------------------------------------------

# Squashing maps an unbounded operand into a small interval; each has derivative at most 1.
# Entries: implementation, operand bound -> result bound, supremum over all operands.
_SQUASH: dict[str, tuple[Callable, Callable[[float], float], float]] = {
    "tanh": (jnp.tanh, math.tanh, 1.0),
    "arctan": (jnp.arctan, math.atan, math.pi / 2),
    "sin": (jnp.sin, lambda b: min(b, 1.0), 1.0),
    "tanh09": (lambda x: 0.9 * jnp.tanh(x), lambda b: 0.9 * math.tanh(b), 0.9),
}


class _Unary(NamedTuple):
    fn: Callable
    limit: float  # largest operand bound the op accepts without squashing
    bound: Callable[[float], float]  # operand bound -> result bound
    deriv: Callable[[float], float]  # operand bound -> bound of |f'|


def _log_guarded(x):
    return jnp.log(1.0 + jnp.square(x))


def _sqrt_guarded(x):
    return jnp.sqrt(1.0 + jnp.square(x))


_INF = math.inf
_UNARY: dict[str, _Unary] = {
    "sin": _Unary(jnp.sin, _INF, lambda b: min(b, 1.0), lambda b: 1.0),
    "cos": _Unary(jnp.cos, _INF, lambda b: 1.0, lambda b: 1.0),
    # tan has poles at +-pi/2; 1.2 keeps its derivative below 8.
    "tan": _Unary(jnp.tan, 1.2, math.tan, lambda b: 1.0 / math.cos(b) ** 2),
    "exp": _Unary(jnp.exp, 4.0, math.exp, math.exp),
    "log": _Unary(_log_guarded, _INF, lambda b: math.log1p(b * b), lambda b: 1.0),
    "sinh": _Unary(jnp.sinh, 4.0, math.sinh, math.cosh),
    "cosh": _Unary(jnp.cosh, 4.0, math.cosh, math.sinh),
    "arctan": _Unary(jnp.arctan, _INF, math.atan, lambda b: 1.0),
    # 0.9 keeps arctanh, arcsin and arccos (and their derivatives) away from the singularity at 1.
    "arctanh": _Unary(jnp.arctanh, 0.9, math.atanh, lambda b: 1.0 / (1.0 - b * b)),
    "arcsin": _Unary(jnp.arcsin, 0.9, math.asin, lambda b: 1.0 / math.sqrt(1.0 - b * b)),
    "arccos": _Unary(jnp.arccos, 0.9, lambda b: math.pi, lambda b: 1.0 / math.sqrt(1.0 - b * b)),
    "arcsinh": _Unary(jnp.arcsinh, _INF, math.asinh, lambda b: 1.0),
    "square": _Unary(jnp.square, 30.0, lambda b: b * b, lambda b: 2.0 * b),
    "negative": _Unary(jnp.negative, _INF, lambda b: b, lambda b: 1.0),
    "tanh": _Unary(jnp.tanh, _INF, math.tanh, lambda b: 1.0),
    "sqrt": _Unary(_sqrt_guarded, _INF, lambda b: math.sqrt(1.0 + b * b), lambda b: 1.0),
    "logistic": _Unary(jax.nn.sigmoid, _INF, lambda b: 1.0, lambda b: 0.25),
    "abs": _Unary(jnp.abs, _INF, lambda b: b, lambda b: 1.0),
}

_SCALAR_UNARY = (
    "sin", "cos", "tan", "exp", "log", "sinh", "arctan", "arctanh", "arcsin", "arcsinh",
    "square", "negative", "tanh",
)  # fmt: skip
_TENSOR_UNARY = (
    "sin", "cos", "tanh", "exp", "log", "sinh", "cosh", "arctan", "arcsinh", "arccos", "sqrt",
    "logistic", "square", "negative", "abs",
)  # fmt: skip


def _div_sq(a, b):
    return a / (1.0 + jnp.square(b))


def _div_cos(a, b):
    return a / (2.0 + jnp.cos(b))


def _pow_guarded(a, b):
    return jnp.power(1.0 + jnp.square(a), b)


def _atan2_sq(a, b):
    return jnp.arctan2(a, 1.0 + jnp.square(b))


def _atan2_cos(a, b):
    return jnp.arctan2(a, 2.0 + jnp.cos(b))


class _Binary(NamedTuple):
    fn: Callable
    limits: tuple[float, float]
    # (bound_a, bound_b) -> (result bound, |d/da| bound, |d/db| bound)
    rule: Callable[[float, float], tuple[float, float, float]]


def _pow_rule(ba, bb):
    base = 1.0 + ba * ba
    top = base**bb
    return top, 2.0 * ba * bb * top, math.log(base) * top


# Denominators 1 + y**2 >= 1 and 2 + cos y >= 1 keep the quotient and atan2 rules bounded.
_BINARY: dict[str, _Binary] = {
    "add": _Binary(jnp.add, (_INF, _INF), lambda a, b: (a + b, 1.0, 1.0)),
    "sub": _Binary(jnp.subtract, (_INF, _INF), lambda a, b: (a + b, 1.0, 1.0)),
    "mul": _Binary(jnp.multiply, (_INF, _INF), lambda a, b: (a * b, b, a)),
    "div_sq": _Binary(_div_sq, (_INF, _INF), lambda a, b: (a, 1.0, a)),
    "div_cos": _Binary(_div_cos, (_INF, _INF), lambda a, b: (a, 1.0, a)),
    # Base 1 + a**2 >= 1 and a bounded exponent keep pow and its log-derivative finite.
    "pow": _Binary(_pow_guarded, (10.0, 1.5), _pow_rule),
    "atan2_sq": _Binary(_atan2_sq, (_INF, _INF), lambda a, b: (math.pi / 2, 1.0, 1.0)),
    "atan2_cos": _Binary(_atan2_cos, (_INF, _INF), lambda a, b: (math.pi / 2, 1.0, 1.0)),
    "maximum": _Binary(jnp.maximum, (_INF, _INF), lambda a, b: (max(a, b), 1.0, 1.0)),
    "minimum": _Binary(jnp.minimum, (_INF, _INF), lambda a, b: (max(a, b), 1.0, 1.0)),
}

_SCALAR_BINARY = ("add", "sub", "mul", "div", "pow", "atan2")
_TENSOR_BINARY = ("add", "sub", "mul", "div", "pow", "atan2", "maximum", "minimum")
_VARIANTS = {"div": ("div_sq", "div_cos"), "atan2": ("atan2_sq", "atan2_cos")}


def _dot(a, b, contract):
    dims = ((a.ndim - 1,) if contract[0] else (0,), (b.ndim - 1,) if contract[1] else (0,))
    if dims == ((a.ndim - 1,), (0,)):
        # The ordinary product; jnp.dot emits a single dot_general here.
        return jnp.dot(a, b)
    return jax.lax.dot_general(a, b, (dims, ((), ())))


def _apply(stmt: _Stmt, vals: list) -> jax.Array:
    xs = [vals[i] for i in stmt.args]
    xs = [_SQUASH[s][0](x) if s else x for s, x in zip(stmt.squash, xs)]
    op, p = stmt.op, dict(stmt.params)
    if op in _UNARY:
        return _UNARY[op].fn(xs[0])
    if op in _BINARY:
        return _BINARY[op].fn(xs[0], xs[1])
    x = xs[0]
    if op == "dot":
        return _dot(x, xs[1], p["contract"])
    if op == "reshape":
        return jnp.reshape(x, p["shape"])
    if op == "transpose":
        return x.T
    if op == "sum":
        return jnp.sum(x, axis=p["axis"])
    if op == "max":
        return jnp.max(x, axis=p["axis"])
    if op == "min":
        return jnp.min(x, axis=p["axis"])
    if op == "slice":
        start, stop = p["range"]
        return x[start:stop] if p["axis"] == 0 else x[:, start:stop]
    if op == "squeeze":
        return jnp.squeeze(x, axis=p["axis"])
    if op == "stop_gradient":
        return jax.lax.stop_gradient(x)
    raise AssertionError(op)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


class _Builder:
    """Draws statements one at a time, keeping the static bounds of every value."""

    def __init__(self, rng: np.random.Generator, shapes, target_outputs: int):
        self.rng = rng
        self.vals = [_Val(tuple(s), _INPUT_BOUND, 1.0) for s in shapes]
        self.stmts: list[_Stmt] = []
        self.used = [False] * len(shapes)
        self.n_in = len(shapes)
        self.target_outputs = target_outputs

    # -- operand choice ------------------------------------------------------------------

    def pick(self, candidates: list[int]) -> int:
        """Prefers unused values while there are more of them than outputs wanted (so that
        few dead ends remain), and otherwise recent values (so that the program is deep)."""
        rng = self.rng
        unused = [i for i in candidates if not self.used[i]]
        n_unused = sum(1 for i in range(self.n_in, len(self.vals)) if not self.used[i])
        if unused and rng.random() < (0.9 if n_unused > self.target_outputs else 0.3):
            return unused[rng.integers(len(unused))]
        if rng.random() < 0.7:
            recent = candidates[-8:]
            return recent[rng.integers(len(recent))]
        return candidates[rng.integers(len(candidates))]

    def squash_for(self, bound: float, limit: float) -> str | None:
        if bound <= limit:
            return None
        names = [n for n, (_, _, sup) in _SQUASH.items() if sup <= limit]
        return names[self.rng.integers(len(names))]

    def squashed(self, v: _Val, s: str | None) -> float:
        return _SQUASH[s][1](v.bound) if s else v.bound

    # -- statement kinds; each returns (stmt, val) or None when not applicable ---------------

    def unary(self, op: str, i: int):
        u = _UNARY[op]
        v = self.vals[i]
        s = self.squash_for(v.bound, u.limit)
        b = self.squashed(v, s)
        return _Stmt(op, (i,), (s,)), _Val(v.shape, u.bound(b), u.deriv(b) * v.deriv)

    def binary(self, op: str, i: int, j: int):
        op = self._variant(op)
        bi = self._bin(op, i, j, (None, None))
        out = bi[1]
        if out.bound > _MAX_VALUE:
            # Squash the larger operand first, then both if that is not enough.
            k = 0 if self.vals[i].bound >= self.vals[j].bound else 1
            sq = [None, None]
            sq[k] = "tanh"
            bi = self._bin(op, i, j, tuple(sq))
            if bi[1].bound > _MAX_VALUE:
                bi = self._bin(op, i, j, ("tanh", "tanh"))
        return bi

    def _variant(self, op: str) -> str:
        names = _VARIANTS.get(op)
        return names[self.rng.integers(len(names))] if names else op

    def _bin(self, op: str, i: int, j: int, sq):
        b = _BINARY[op]
        vi, vj = self.vals[i], self.vals[j]
        sq = tuple(
            s or self.squash_for(v.bound, lim) for s, v, lim in zip(sq, (vi, vj), b.limits)
        )
        bound, da, db = b.rule(self.squashed(vi, sq[0]), self.squashed(vj, sq[1]))
        return _Stmt(op, (i, j), sq), _Val(vi.shape, bound, da * vi.deriv + db * vj.deriv)

    def dot(self, i: int, j: int, contract):
        vi, vj = self.vals[i], self.vals[j]
        if not vi.shape or not vj.shape:
            return None
        ki = vi.shape[-1] if contract[0] else vi.shape[0]
        kj = vj.shape[-1] if contract[1] else vj.shape[0]
        if ki != kj:
            return None
        ai = len(vi.shape) - 1 if contract[0] else 0
        aj = len(vj.shape) - 1 if contract[1] else 0
        free_i = [d for a, d in enumerate(vi.shape) if a != ai]
        free_j = [d for a, d in enumerate(vj.shape) if a != aj]
        shape = tuple(free_i + free_j)
        if not self._shape_ok(shape):
            return None
        sq = (None, None)
        if ki * vi.bound * vj.bound > _MAX_VALUE:
            sq = ("tanh", "tanh")
        bi, bj = self.squashed(vi, sq[0]), self.squashed(vj, sq[1])
        val = _Val(shape, ki * bi * bj, ki * (bj * vi.deriv + bi * vj.deriv))
        return _Stmt("dot", (i, j), sq, (("contract", contract),)), val

    def reduce(self, op: str, i: int, axis: int):
        v = self.vals[i]
        shape = tuple(d for a, d in enumerate(v.shape) if a != axis)
        n = v.shape[axis]
        if op == "sum":
            s = "tanh" if n * v.bound > _MAX_VALUE else None
            b = self.squashed(v, s)
            val = _Val(shape, n * b, n * v.deriv)
        else:
            s, val = None, _Val(shape, v.bound, v.deriv)
        return _Stmt(op, (i,), (s,), (("axis", axis),)), val

    def reshape(self, i: int):
        v = self.vals[i]
        size = math.prod(v.shape)
        options = [(size,)] + [
            (a, size // a) for a in range(1, size + 1) if size % a == 0
        ]
        options = [s for s in options if s != v.shape and self._shape_ok(s)]
        if not options:
            return None
        shape = options[self.rng.integers(len(options))]
        return _Stmt("reshape", (i,), (None,), (("shape", shape),)), v._replace(shape=shape)

    def slice(self, i: int):
        v = self.vals[i]
        axes = [a for a, d in enumerate(v.shape) if d >= 2]
        if not axes:
            return None
        axis = axes[self.rng.integers(len(axes))]
        n = v.shape[axis]
        start = int(self.rng.integers(0, n))
        stop = int(self.rng.integers(start + 1, n + 1))
        if (start, stop) == (0, n):
            stop = n - 1 if n > 1 else n
            start = min(start, stop - 1)
        shape = list(v.shape)
        shape[axis] = stop - start
        params = (("axis", axis), ("range", (start, stop)))
        return _Stmt("slice", (i,), (None,), params), v._replace(shape=tuple(shape))

    def squeeze(self, i: int):
        v = self.vals[i]
        axes = [a for a, d in enumerate(v.shape) if d == 1]
        if not axes:
            return None
        axis = axes[self.rng.integers(len(axes))]
        shape = tuple(d for a, d in enumerate(v.shape) if a != axis)
        return _Stmt("squeeze", (i,), (None,), (("axis", axis),)), v._replace(shape=shape)

    @staticmethod
    def _shape_ok(shape) -> bool:
        small = all(d <= _MAX_DIM for d in shape) and math.prod(shape) <= _MAX_SIZE
        return len(shape) <= 2 and small

    # -- bookkeeping ---------------------------------------------------------------------

    def accept(self, drawn) -> bool:
        if drawn is None:
            return False
        stmt, val = drawn
        if not (val.bound <= _MAX_VALUE and val.deriv <= _MAX_DERIV):
            return False
        self.stmts.append(stmt)
        self.vals.append(val)
        self.used.append(False)
        for i in stmt.args:
            self.used[i] = True
        return True

    def outputs(self, lo: int, hi: int) -> tuple[int, ...]:
        """Unused values first (they would be dead code otherwise), then the latest others."""
        ids = range(self.n_in, len(self.vals))
        sinks = [i for i in ids if not self.used[i]]
        if len(sinks) > hi:
            sinks = sinks[-hi:]
        extra = [i for i in reversed(ids) if self.used[i]][: max(0, lo - len(sinks))]
        return tuple(sorted(sinks + extra))


def _draw_merge(b: _Builder, binary_ops: tuple[str, ...]) -> bool | None:
    """While more values are unused than outputs are wanted, often combines two of them, so
    that the program ends with few dead ends. Shapes that match nothing are reduced over an
    axis first; scalars always match. Returns None when it draws nothing this time."""
    rng = b.rng
    unused = [i for i in range(b.n_in, len(b.vals)) if not b.used[i]]
    if len(unused) <= b.target_outputs or rng.random() < 0.4:
        return None
    i = unused[rng.integers(len(unused))]
    shape = b.vals[i].shape
    same = [j for j in unused if j != i and b.vals[j].shape == shape]
    if same:
        op = binary_ops[rng.integers(len(binary_ops))]
        return b.accept(b.binary(op, i, same[rng.integers(len(same))]))
    contract = (bool(rng.integers(2)), bool(rng.integers(2)))
    dots = [j for j in unused if j != i and b.dot(i, j, contract) is not None]
    if dots:
        return b.accept(b.dot(i, dots[rng.integers(len(dots))], contract))
    if not shape:
        # A scalar with no scalar partner: shrink another value towards a scalar instead.
        i = [j for j in unused if b.vals[j].shape][0]
        shape = b.vals[i].shape
    op = ("sum", "max", "min")[rng.integers(3)]
    return b.accept(b.reduce(op, i, int(rng.integers(len(shape)))))


def _draw_scalar(b: _Builder) -> bool:
    rng = b.rng
    merged = _draw_merge(b, _SCALAR_BINARY)
    if merged is not None:
        return merged
    candidates = list(range(len(b.vals)))
    if rng.random() < 0.5:
        op = _SCALAR_UNARY[rng.integers(len(_SCALAR_UNARY))]
        return b.accept(b.unary(op, b.pick(candidates)))
    op = _SCALAR_BINARY[rng.integers(len(_SCALAR_BINARY))]
    i = b.pick(candidates)
    j = b.pick([c for c in candidates if c != i])
    return b.accept(b.binary(op, i, j))


_TENSOR_KINDS = (
    ("unary", 0.30),
    ("binary", 0.22),
    ("dot", 0.16),
    ("reshape", 0.06),
    ("transpose", 0.05),
    ("sum", 0.05),
    ("maxmin", 0.05),
    ("slice", 0.05),
    ("squeeze", 0.03),
    ("stop_gradient", 0.03),
)


def _draw_tensor(b: _Builder) -> bool:
    rng = b.rng
    merged = _draw_merge(b, _TENSOR_BINARY)
    if merged is not None:
        return merged
    names = [k for k, _ in _TENSOR_KINDS]
    weights = np.array([w for _, w in _TENSOR_KINDS])
    kind = names[rng.choice(len(names), p=weights / weights.sum())]
    everything = list(range(len(b.vals)))
    shape_of = lambda i: b.vals[i].shape  # noqa: E731
    if kind == "unary":
        op = _TENSOR_UNARY[rng.integers(len(_TENSOR_UNARY))]
        return b.accept(b.unary(op, b.pick(everything)))
    if kind == "binary":
        i = b.pick(everything)
        partners = [j for j in everything if j != i and shape_of(j) == shape_of(i)]
        if not partners:
            return False
        op = _TENSOR_BINARY[rng.integers(len(_TENSOR_BINARY))]
        return b.accept(b.binary(op, i, b.pick(partners)))
    if kind == "dot":
        i = b.pick([k for k in everything if shape_of(k)])
        contract = (bool(rng.integers(2)), bool(rng.integers(2)))
        ax = -1 if contract[0] else 0
        partners = [
            j for j in everything
            if j != i and shape_of(j)
            and shape_of(j)[-1 if contract[1] else 0] == shape_of(i)[ax]
        ]  # fmt: skip
        if not partners:
            return False
        return b.accept(b.dot(i, b.pick(partners), contract))
    if kind in ("sum", "maxmin"):
        i = b.pick([k for k in everything if shape_of(k)])
        axis = int(rng.integers(len(shape_of(i))))
        op = kind if kind == "sum" else ("max", "min")[rng.integers(2)]
        return b.accept(b.reduce(op, i, axis))
    if kind == "transpose":
        cands = [k for k in everything if len(shape_of(k)) == 2]
        if not cands:
            return False
        i = b.pick(cands)
        v = b.vals[i]
        return b.accept((_Stmt("transpose", (i,), (None,)), v._replace(shape=v.shape[::-1])))
    if kind == "stop_gradient":
        i = b.pick(everything)
        return b.accept((_Stmt("stop_gradient", (i,), (None,)), b.vals[i]._replace(deriv=0.0)))
    method = {"reshape": b.reshape, "slice": b.slice, "squeeze": b.squeeze}[kind]
    return b.accept(method(b.pick(everything)))


def random_program(seed: int, kind: str = "scalar", *, num_statements: int | None = None) -> Task:
    """Returns a seeded random straight-line JAX program and its example inputs.

    Args:
      seed: a non-negative integer; the same seed gives the same jaxpr and inputs.
      kind: ``"scalar"`` (15 inputs of shape (), 10-20 outputs of shape ()) or ``"tensor"``
        (inputs of shapes (4,), (2, 3), (4, 4), (4, 1); 4-8 outputs, each at most 2-D).
      num_statements: the number of statements; by default drawn from 60-100 (scalar) or
        40-75 (tensor). Guards add a few primitive equations per statement on top.

    Returns:
      A `Task` named ``RandomScalar-<seed>`` or ``RandomTensor-<seed>`` whose ``fn(*args)``
      returns a tuple of float32 arrays. Example inputs are uniform in [-0.9, 0.9].

    Raises:
      AlphagradError: a negative seed, an unknown kind or a non-positive statement count.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AlphagradError(f"random_program: seed must be a non-negative integer, got {seed!r}")
    if kind not in ("scalar", "tensor"):
        raise AlphagradError(f"random_program: kind must be 'scalar' or 'tensor', got {kind!r}")
    rng = np.random.default_rng(int(seed))
    if kind == "scalar":
        shapes = [()] * _SCALAR_INPUTS
        span, out_span, draw = _SCALAR_STATEMENTS, _SCALAR_OUTPUTS, _draw_scalar
        max_outputs = _SCALAR_MAX_OUTPUTS
    else:
        shapes = list(_TENSOR_SHAPES)
        span, out_span, draw = _TENSOR_STATEMENTS, _TENSOR_OUTPUTS, _draw_tensor
        max_outputs = _TENSOR_MAX_OUTPUTS
    n_stmts = int(rng.integers(span[0], span[1] + 1))
    if num_statements is not None:
        if int(num_statements) < 1:
            raise AlphagradError(
                f"random_program: num_statements must be positive, got {num_statements!r}"
            )
        n_stmts = int(num_statements)
    target_outputs = int(rng.integers(out_span[0], out_span[1] + 1))

    b = _Builder(rng, shapes, target_outputs)
    # Every input feeds one of the first statements, so none is an isolated vertex.
    unary = _SCALAR_UNARY if kind == "scalar" else _TENSOR_UNARY
    for i in rng.permutation(len(shapes))[:n_stmts]:
        op = unary[rng.integers(len(unary))]
        b.accept(b.unary(op, int(i)))
    while len(b.stmts) < n_stmts:
        for _ in range(_REDRAWS):
            if draw(b):
                break
        else:
            # Cannot fail: sin of an input has value and derivative bound 1.
            b.accept(b.unary("sin", int(rng.integers(b.n_in))))
    outputs = b.outputs(min(target_outputs, n_stmts), max_outputs)

    stmts = tuple(b.stmts)
    n_in = b.n_in
    name = f"Random{kind.capitalize()}-{seed}"
    out_shapes = [b.vals[i].shape for i in outputs]

    def fn(*args):
        if len(args) != n_in:
            raise AlphagradError(f"{name} takes {n_in} arguments, got {len(args)}")
        vals = list(args)
        for stmt in stmts:
            vals.append(_apply(stmt, vals))
        return tuple(vals[i] for i in outputs)

    fn.__name__ = fn.__qualname__ = name.replace("-", "_")
    fn.__doc__ = (
        f"Random {kind} straight-line program (seed {seed}, {len(stmts)} statements).\n\n"
        f"Args: {n_in} float32 arrays of shapes {[tuple(s) for s in shapes]}.\n"
        f"Returns: a tuple of {len(outputs)} float32 arrays of shapes {out_shapes}.\n"
    )

    keys = jax.random.split(jax.random.PRNGKey(int(seed)), len(shapes))
    args = tuple(
        jax.random.uniform(k, s, _F32, -_EXAMPLE_RANGE, _EXAMPLE_RANGE)
        for k, s in zip(keys, shapes)
    )
    description = (
        f"Random {kind} straight-line program, seed {seed}: {len(stmts)} statements, "
        f"{n_in} inputs, {len(outputs)} outputs."
    )
    return Task(fn, args, name, description)


def _factory(seed: int, kind: str) -> Callable[[], Task]:
    return lambda: random_program(seed, kind)


for _seed in (0, 1):
    register(f"RandomScalar-{_seed}", _factory(_seed, "scalar"))
for _seed in (0, 1):
    register(f"RandomTensor-{_seed}", _factory(_seed, "tensor"))
