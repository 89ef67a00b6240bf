"""Structural dims: the axes a program's arrays are split into so that partials tie axis to axis.

A partial between arrays of rank 3 or more is described by ties between their axes
(`graph._structure.AxisTies`). Ties need axes that match one to one, and programs regroup axes
freely: attention splits (b, t, h * d) into (b, t, h, d) heads and merges them back, a CNN flattens
(b, h, w, c) into (b, h * w * c). A row-major reshape moves no data, so it is an identity between
the two arrays exactly when both are split at the same places. `structural_dims` finds, for every
array of a jaxpr, the finest such split its uses agree on: each axis of an array becomes one or
more structural axes (row-major: the axis is their product, in order), and

- a reshape, squeeze or expand_dims asks both sides to be split at the same flat strides,
- an elementwise operation, transpose, broadcast, reduction, dot_general or convolution asks the
  axes it carries over (same axis, permuted axis, kept axis, batch and free axes, the batch of a
  convolution and its output features with the kernel's) to be split alike.

Splits only ever get finer, so the fixed point exists and is reached. Two requests that cannot both
hold (an axis of 12 split as 3 x 4 by one use and as 2 x 6 by another: no row-major split has both)
leave the later request unmet; the edge it came from then has less structure (a reshape is an index
map, a tie is dense), which is exact, only costlier.

The split of an axis is kept as its set of cut strides: the strides s, 1 < s < n, at which it is cut
(an axis of 12 split as 3 x 4 has cuts {4}). A set of cuts is a valid split when the cuts, sorted,
each divide the next (and n).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from alphagrad.graph import _rules

__all__ = ["structural_dims", "structural_dims_of_jaxpr", "split_of", "EquationView"]

# Primitives whose output has the shape of their same-shape operands, entry by entry.
_ELEMENTWISE = frozenset(
    "neg abs exp exp2 log log1p expm1 sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh "
    "integer_pow sqrt rsqrt cbrt logistic erf erfc erf_inv square lgamma digamma sign floor ceil round "
    "is_finite add sub mul div pow atan2 max min add_any rem nextafter select_n eq ne lt le gt ge and or "
    "not xor convert_element_type copy copy_p reduce_precision stop_gradient clamp custom_jvp_call "
    "custom_vjp_call".split()
)
_RESHAPES = frozenset({"reshape", "squeeze", "expand_dims"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "argmax", "argmin"})


def _valid(cuts: Iterable[int], n: int) -> bool:
    """Whether sorted cuts each divide the next and n (a row-major split of an axis of n)."""
    previous = 1
    for s in sorted(cuts):
        if s % previous:
            return False
        previous = s
    return n % previous == 0


def split_of(n: int, cuts: Iterable[int]) -> tuple[int, ...]:
    """The sizes of the structural axes of an axis of `n` cut at `cuts` (outermost first)."""
    strides = [1, *sorted(cuts), n]
    return tuple(strides[k + 1] // strides[k] for k in range(len(strides) - 1))[::-1]


class EquationView(NamedTuple):
    """What the splits need of one equation.

    Attributes:
      name: the primitive's name.
      params: its parameters.
      ins, outs: (key, shape) of each operand and result; key None for a constant (it takes no
        part in the splits).
    """

    name: str
    params: dict
    ins: tuple
    outs: tuple


class _Splits:
    """Cut sets per (array, axis), refined by requests until no request changes anything.

    Arrays of fewer than 2 axes are never split: they stay the 2-D nodes (n, 1) of the paper's
    codes (a request that would split one is left unmet)."""

    def __init__(self):
        self.cuts: dict[tuple[Any, int], frozenset[int]] = {}
        self.shape: dict[Any, tuple[int, ...]] = {}

    def add(self, var, shape) -> None:
        if var not in self.shape:
            self.shape[var] = tuple(int(n) for n in shape)
            for k in range(len(shape)):
                self.cuts[(var, k)] = frozenset()

    def _frozen(self, var) -> bool:
        return len(self.shape[var]) < 2

    def same_axis(self, a, i: int, b, j: int) -> bool:
        """Requests axis i of a and axis j of b to be split alike; True if that changed a split."""
        n = self.shape[a][i]
        if n != self.shape[b][j] or n <= 1:
            return False
        both = self.cuts[(a, i)] | self.cuts[(b, j)]
        if both == self.cuts[(a, i)] == self.cuts[(b, j)] or not _valid(both, n):
            return False
        if (self._frozen(a) and both != self.cuts[(a, i)]) or (self._frozen(b) and both != self.cuts[(b, j)]):
            return False
        self.cuts[(a, i)] = self.cuts[(b, j)] = both
        return True

    def _flat_cuts(self, var) -> set[int]:
        shape, cuts, stride = self.shape[var], set(), 1
        for k in reversed(range(len(shape))):
            cuts.update(c * stride for c in self.cuts[(var, k)])
            if stride > 1:
                cuts.add(stride)
            stride *= shape[k]
        return cuts

    def _write_flat(self, var, flat: set[int]) -> bool:
        shape, stride, changed = self.shape[var], 1, False
        for k in reversed(range(len(shape))):
            n = shape[k]
            inner = frozenset(u // stride for u in flat if stride < u < stride * n)
            if inner != self.cuts[(var, k)]:
                self.cuts[(var, k)] = inner
                changed = True
            stride *= n
        return changed

    def same_flat(self, a, b) -> bool:
        """Requests a and b (equal sizes, one a row-major reshape of the other) to be cut at the
        same flat strides; True if that changed a split."""
        size = math.prod(self.shape[a])
        if size != math.prod(self.shape[b]) or size <= 1:
            return False
        flat_a, flat_b = self._flat_cuts(a), self._flat_cuts(b)
        both = flat_a | flat_b
        if not _valid(both, size) or (self._frozen(a) and both != flat_a) or (self._frozen(b) and both != flat_b):
            return False
        # Every axis boundary of each side must remain a cut of the other's axes too: a boundary
        # of a falls inside an axis of b, and splits it there.
        return self._write_flat(a, both) | self._write_flat(b, both)

    def dims(self, var) -> tuple[int, ...]:
        return tuple(d for k, n in enumerate(self.shape[var]) for d in split_of(n, self.cuts[(var, k)]))


def _requests(eqn: EquationView) -> list[tuple]:
    """("axis", a, i, b, j) and ("flat", a, b) requests of one equation, between keys."""
    name, params = eqn.name, eqn.params
    if not eqn.outs or eqn.outs[0][0] is None:
        return []
    out, out_shape = eqn.outs[0][0], tuple(eqn.outs[0][1])
    shape_of = {key: tuple(shape) for key, shape in eqn.ins if key is not None}
    ins = [key for key, _ in eqn.ins]
    first = ins[0] if ins else None
    requests: list[tuple] = []
    if name in _ELEMENTWISE:
        for x, shape in eqn.ins:
            if x is not None and tuple(shape) == out_shape:
                requests += [("axis", out, k, x, k) for k in range(len(out_shape))]
    elif name == "conv_general_dilated":
        # Batch with batch (d(out)/d(lhs) is tied there), the output's features with the kernel's
        # output features (d(out)/d(kernel): `_rules._convolution_kernel_tie`).
        lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
        if params.get("batch_group_count", 1) == 1:
            if first is not None:
                requests.append(("axis", out, out_spec[0], first, lhs_spec[0]))
                if _rules.depthwise(params, shape_of[first], out_shape):  # its features tie too
                    requests.append(("axis", out, out_spec[1], first, lhs_spec[1]))
            if len(ins) == 2 and ins[1] is not None:
                requests.append(("axis", out, out_spec[1], ins[1], rhs_spec[0]))
    elif first is None:
        return []
    elif name in _RESHAPES:
        if name != "reshape" or params.get("dimensions") is None:
            requests.append(("flat", out, first))
    elif name == "transpose":
        requests += [("axis", out, k, first, d) for k, d in enumerate(params["permutation"])]
    elif name == "broadcast_in_dim":
        requests += [("axis", out, d, first, k) for k, d in enumerate(params["broadcast_dimensions"])]
    elif name in _REDUCTIONS:
        axes = set(params.get("axes", ()))
        kept = [d for d in range(len(shape_of[first])) if d not in axes]
        requests += [("axis", out, j, first, d) for j, d in enumerate(kept)]
    elif name == "dot_general" and len(ins) == 2 and None not in ins:
        lhs, rhs = ins
        (lc, rc), (lb, rb) = params["dimension_numbers"]
        lfree = [d for d in range(len(shape_of[lhs])) if d not in lc and d not in lb]
        rfree = [d for d in range(len(shape_of[rhs])) if d not in rc and d not in rb]
        for k, (a, b) in enumerate(zip(lb, rb)):
            requests += [("axis", out, k, lhs, a), ("axis", out, k, rhs, b)]
        requests += [("axis", out, len(lb) + j, lhs, d) for j, d in enumerate(lfree)]
        requests += [("axis", out, len(lb) + len(lfree) + j, rhs, d) for j, d in enumerate(rfree)]
        requests += [("axis", lhs, a, rhs, b) for a, b in zip(lc, rc)]
    return requests


def structural_dims(equations: Iterable[EquationView]) -> dict[Any, tuple[int, ...]]:
    """The structural dims of every array of a program.

    Args:
      equations: the program's equations (`EquationView`), keys naming its arrays.

    Returns:
      key -> dims: the sizes of its structural axes, row-major: each of its axes is the product of
      a run of consecutive dims (a scalar has none; arrays of fewer than 2 axes are never split).
    """
    splits = _Splits()
    requests = []
    for eqn in equations:
        for key, shape in (*eqn.ins, *eqn.outs):
            if key is not None:
                splits.add(key, shape)
        requests += _requests(eqn)
    changed = True
    while changed:
        changed = False
        for request in requests:
            if request[0] == "axis":
                changed |= splits.same_axis(*request[1:])
            else:
                changed |= splits.same_flat(*request[1:])
    return {var: splits.dims(var) for var in splits.shape}


def structural_dims_of_jaxpr(jaxpr) -> dict[Any, tuple[int, ...]]:
    """`structural_dims` of the top level of a ``Jaxpr`` or ``ClosedJaxpr`` (calls are not
    entered), keyed by its variables."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)

    def keyed(atoms):
        return tuple((None if hasattr(a, "val") else a, tuple(getattr(a.aval, "shape", ()))) for a in atoms
                     if hasattr(a.aval, "shape"))

    views = [EquationView(eqn.primitive.name, dict(eqn.params), keyed(eqn.invars), keyed(eqn.outvars))
             for eqn in jaxpr.eqns]
    views.append(EquationView("", {}, keyed(list(jaxpr.invars) + list(jaxpr.constvars)), ()))
    return structural_dims(views)
