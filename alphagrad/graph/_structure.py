"""The algebra of structured partial Jacobians, independent of any values.

`AxisTies` and `axis_product` / `axis_sum` state it for arrays of any rank (labelled axes: a
product is an einsum with repeated labels); the 2-D structure codes below are its rank (2, 2)
case, and their tables are derived through it.

A partial d(v)/d(p) with 2-D shapes is a 4-index tensor J[i1, i2, i3, i4]: (i1, i2) index v,
(i3, i4) index p. Its structure code says which (v, p) index pairs are *tied* (the tensor is zero
off their diagonal) and whether each tie carries values ("D", a diagonal) or a constant ("K", a
Kronecker delta). The values live in a compact array whose axes are the untied positions plus, for
each diagonal tie, its v-side position. A few codes hold no array at all (identity, transposed
identity, copy) or a single scalar (a constant multiple of the identity).

From these facts alone follow, for any pair of codes, the structure of a product (which index
classes survive, which are summed), the number of multiplications a product performs (one per
point of the joint index space of the two value arrays), and the structure of a sum. This module
derives them; `exact_tables()` turns them into cost-model tables.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

__all__ = [
    "Structure", "structure_of", "code_of", "ProductPlan", "product_plan", "sum_code", "exact_tables",
    "AxisTies", "axis_ties", "AxisProduct", "axis_product", "axis_sum", "axis_ties_of", "code_of_axis_ties",
    "FIRST_EXTENDED_CODE", "ExtendedTables", "extended_tables", "LabelledAlgebra", "reachable_tables",
]

# Codes -10..11 that describe a tensor by ties; 11 (an index map) and 0 (no edge) are not such codes.
_TIES: dict[int, tuple[tuple[int, int, str], ...]] = {
    1: (),
    2: ((1, 3, "D"),),
    3: ((2, 4, "D"),),
    4: ((1, 4, "D"),),
    5: ((2, 3, "D"),),
    6: ((1, 3, "D"), (2, 4, "D")),
    7: ((1, 4, "D"), (2, 3, "D")),
    8: ((1, 3, "K"), (2, 4, "D")),
    9: ((1, 4, "K"), (2, 3, "D")),
    10: ((1, 3, "K"), (2, 4, "K")),
    -1: ((1, 3, "K"), (2, 4, "K")),
    -2: ((1, 3, "K"),),
    -3: ((2, 4, "K"),),
    -4: ((1, 4, "K"),),
    -5: ((2, 3, "K"),),
    -6: ((1, 3, "K"), (2, 4, "K")),
    -7: ((1, 4, "K"), (2, 3, "K")),
    -8: ((1, 3, "D"), (2, 4, "K")),
    -9: ((1, 4, "D"), (2, 3, "K")),
    -10: ((1, 4, "K"), (2, 3, "K")),
}
# Codes whose tensor carries no values at all: it is exactly an identity or a transposed identity.
VALUELESS = frozenset({-1, -6, -7})
STRUCTURED_CODES = tuple(sorted(_TIES))


class Structure(NamedTuple):
    """Ties and value axes of a code.

    Attributes:
      ties: (v position, p position, kind) for each tied pair, positions 1..4.
      value_axes: positions (1..4) indexed by the value array, in order; empty for a scalar.
      has_values: False for the value-less identity codes.
    """

    ties: tuple[tuple[int, int, str], ...]
    value_axes: tuple[int, ...]
    has_values: bool


@functools.cache
def structure_of(code: int) -> Structure:
    """The `Structure` of a structure code (not 0, not 11)."""
    ties = _TIES[code]
    tied_p = {b for _, b, _ in ties}
    k_tied_v = {a for a, _, kind in ties if kind == "K"}
    axes = tuple(pos for pos in (1, 2, 3, 4) if pos not in tied_p and pos not in k_tied_v)
    return Structure(ties, axes, code not in VALUELESS)


def code_of(ties, has_values: bool) -> int:
    """The code with these ties; value-less double Kronecker ties are identities (-6 / -7)."""
    key = frozenset(ties)
    for code in STRUCTURED_CODES:
        if code == -1:
            continue
        s = structure_of(code)
        if frozenset(s.ties) == key and s.has_values == has_values:
            return code
    raise KeyError(f"no structure code has ties {sorted(key)} (values: {has_values})")


class AxisTies(NamedTuple):
    """The structure of a partial d(v)/d(p) between arrays of any rank, by labelled axes.

    The partial is a tensor J[v axes..., p axes...]. A tie (o, i, kind) says J is zero off the
    diagonal of v's axis o and p's axis i (equal sizes); kind "D" carries values along it (a
    diagonal), "K" a constant (a Kronecker delta). Each axis takes part in at most one tie. The
    values live in an array whose axes are, in order, v's axes that are not Kronecker-tied, then
    p's untied axes (`value_axes`); a partial with no values at all (`has_values` False) is a pure
    relabelling of axes (an identity or a transposition).

    The 2-D structure codes are the rank (2, 2) case (`axis_ties_of`).

    Attributes:
      out_rank, in_rank: ranks of v and p.
      ties: (v axis, p axis, kind), 0-based, sorted.
      has_values: False for the value-less relabellings.
    """

    out_rank: int
    in_rank: int
    ties: tuple[tuple[int, int, str], ...]
    has_values: bool

    @property
    def value_axes(self) -> tuple[tuple[str, int], ...]:
        """("out", k) and ("in", k) for the value array's axes, in its order."""
        tied_in = {i for _, i, _ in self.ties}
        constant_out = {o for o, _, kind in self.ties if kind == "K"}
        return tuple(("out", k) for k in range(self.out_rank) if k not in constant_out) + tuple(
            ("in", k) for k in range(self.in_rank) if k not in tied_in
        )


def axis_ties(out_rank: int, in_rank: int, ties, has_values: bool = True) -> AxisTies:
    """An `AxisTies`, checked: axes in range, each in at most one tie, kinds "D" or "K"."""
    ties = tuple(sorted((int(o), int(i), str(kind)) for o, i, kind in ties))
    outs, ins = [o for o, _, _ in ties], [i for _, i, _ in ties]
    if len(set(outs)) < len(outs) or len(set(ins)) < len(ins):
        raise ValueError(f"an axis takes part in two ties: {ties}")
    if any(not (0 <= o < out_rank and 0 <= i < in_rank) or kind not in ("D", "K") for o, i, kind in ties):
        raise ValueError(f"ties {ties} do not fit ranks ({out_rank}, {in_rank})")
    if not has_values and (out_rank != in_rank or len(ties) != out_rank or any(k != "K" for _, _, k in ties)):
        raise ValueError(f"a partial without values ties every axis of v to one of p by a Kronecker delta: {ties}")
    return AxisTies(out_rank, in_rank, ties, has_values)


class AxisProduct(NamedTuple):
    """How to multiply out(v->c) by in(p->v) as one einsum over their value arrays, any ranks.

    Axes are labelled ("c", k), ("v", k), ("p", k); ties merge labels into classes, each class named
    by one representative (a c axis before a p axis before a v axis, then the lowest axis) and its
    einsum letter (c axes "abcdefgh", v axes "xyzwvuts", p axes "mnopqrij": for rank 2 the letters
    of the 2-D codes' plans).

    Attributes:
      out_letters, in_letters: the class letter of each value axis of the two operands.
      result: the structure of the product p->c.
      result_letters: the class letter of each value axis of the result (in its order).
      factors: the representatives (group, axis), group 0 = c, 1 = v, 2 = p, sorted, whose sizes
        multiply to the number of multiplications, one per class that occurs in a value array;
        empty when either operand is value-less (the product is a relabelling, free).
      unit: True when both operands are scalars (exactly one multiplication).
    """

    out_letters: str
    in_letters: str
    result: AxisTies
    result_letters: str
    factors: tuple[tuple[int, int], ...]
    unit: bool


_AXIS_LETTERS = {"c": "abcdefgh", "v": "xyzwvuts", "p": "mnopqrij"}
#: The largest rank the einsum letters of `axis_product` cover.
MAX_RANK = 8
_GROUP = {"c": 0, "v": 1, "p": 2}
_REPRESENTATIVE_RANK = {"c": 0, "p": 1, "v": 2}


@functools.cache
def axis_product(in_ties: AxisTies, out_ties: AxisTies) -> AxisProduct:
    """The exact product (v->c)(p->v) of two structured partials of any ranks.

    The number of multiplications is one per point of the joint index space of the two value
    arrays: the product of the sizes of the classes some value axis belongs to.
    """
    if in_ties.out_rank != out_ties.in_rank:
        raise ValueError(f"rank of v differs: {in_ties.out_rank} (in edge) and {out_ties.in_rank} (out edge)")
    if max(out_ties.out_rank, in_ties.out_rank, in_ties.in_rank) > MAX_RANK:
        raise ValueError(f"axis_product covers ranks up to {MAX_RANK}")
    labels = [("c", k) for k in range(out_ties.out_rank)] + [("v", k) for k in range(in_ties.out_rank)]
    labels += [("p", k) for k in range(in_ties.in_rank)]
    parent = {label: label for label in labels}

    def find(u):
        while parent[u] != u:
            u = parent[u]
        return u

    def union(u, w):
        ru, rw = find(u), find(w)
        if ru != rw:
            # The representative names a c or p axis where the class has one, for the result.
            keep, drop = sorted((ru, rw), key=lambda label: (_REPRESENTATIVE_RANK[label[0]], label[1]))
            parent[drop] = keep

    for o, i, _ in out_ties.ties:
        union(("c", o), ("v", i))
    for o, i, _ in in_ties.ties:
        union(("v", o), ("p", i))

    def letter(label):
        group, k = find(label)
        return _AXIS_LETTERS[group][k]

    out_side = {"out": "c", "in": "v"}
    in_side = {"out": "v", "in": "p"}
    out_letters = "".join(letter((out_side[s], k)) for s, k in out_ties.value_axes) if out_ties.has_values else ""
    in_letters = "".join(letter((in_side[s], k)) for s, k in in_ties.value_axes) if in_ties.has_values else ""
    valued = {find((out_side[s], k)) for s, k in out_ties.value_axes} if out_ties.has_values else set()
    if in_ties.has_values:
        valued |= {find((in_side[s], k)) for s, k in in_ties.value_axes}
    ties = [
        (x, z, "D" if find(("c", x)) in valued else "K")
        for x in range(out_ties.out_rank)
        for z in range(in_ties.in_rank)
        if find(("c", x)) == find(("p", z))
    ]
    result = axis_ties(out_ties.out_rank, in_ties.in_rank, ties, out_ties.has_values or in_ties.has_values)
    result_side = {"out": "c", "in": "p"}
    result_letters = "".join(letter((result_side[s], k)) for s, k in result.value_axes) if result.has_values else ""
    both = out_ties.has_values and in_ties.has_values
    factors = tuple(sorted((_GROUP[g], k) for g, k in valued)) if both else ()
    unit = both and not out_letters and not in_letters
    return AxisProduct(out_letters, in_letters, result, result_letters, factors, unit)


@functools.cache
def axis_sum(old: AxisTies, new: AxisTies) -> AxisTies:
    """Structure of the sum of two partials of the same shapes: the ties both share.

    A tie survives as Kronecker only if it is Kronecker in both and neither carries values on it;
    two relabellings add up to twice one, which carries a scalar.
    """
    if (old.out_rank, old.in_rank) != (new.out_rank, new.in_rank):
        raise ValueError(f"ranks differ: {old.out_rank, old.in_rank} and {new.out_rank, new.in_rank}")
    kinds = {(o, i): kind for o, i, kind in new.ties}
    common = [(o, i, "K" if kind == kinds[(o, i)] == "K" else "D") for o, i, kind in old.ties if (o, i) in kinds]
    return axis_ties(old.out_rank, old.in_rank, common, True)


@functools.cache
def axis_ties_of(code: int) -> AxisTies:
    """The rank (2, 2) `AxisTies` of a 2-D structure code (not 0, not 11)."""
    s = structure_of(code)
    return axis_ties(2, 2, [(a - 1, b - 3, kind) for a, b, kind in s.ties], s.has_values)


def code_of_axis_ties(ties: AxisTies) -> int:
    """The 2-D structure code of a rank (2, 2) `AxisTies`."""
    if (ties.out_rank, ties.in_rank) != (2, 2):
        raise ValueError(f"2-D codes describe ranks (2, 2), not {ties.out_rank, ties.in_rank}")
    return code_of([(o + 1, i + 3, kind) for o, i, kind in ties.ties], ties.has_values)


class ProductPlan(NamedTuple):
    """How to multiply out(v->c) by in(p->v) as one einsum over their value arrays (2-D codes).

    Index letters: c1 c2 = "ab", v1 v2 = "xy", p1 p2 = "mn"; ties merge letters into classes, each
    class named by one representative letter.

    Attributes:
      out_letters, in_letters: the class letter of each value axis of the two operands.
      result_code: structure code of the product p->c.
      result_letters: the class letter of each value axis of the result (in its code's order).
      factors: the positions among (c1, c2, v1, v2, p1, p2) (0..5) whose sizes multiply to the
        number of multiplications, one per class that occurs in a value array; empty when either
        operand is value-less (the product is a relabelling, free).
      unit: True when both operands are scalars (exactly one multiplication).
    """

    out_letters: str
    in_letters: str
    result_code: int
    result_letters: str
    factors: tuple[int, ...]
    unit: bool


@functools.cache
def product_plan(in_code: int, out_code: int) -> ProductPlan:
    """The exact product (v->c)(p->v) of two structured partials (codes not 0 or 11): the rank
    (2, 2) case of `axis_product`."""
    general = axis_product(axis_ties_of(in_code), axis_ties_of(out_code))
    result_code = code_of_axis_ties(general.result)
    factors = tuple(2 * group + axis for group, axis in general.factors)
    return ProductPlan(general.out_letters, general.in_letters, result_code, general.result_letters, factors,
                       general.unit)


@functools.cache
def sum_code(old: int, new: int) -> int:
    """Structure code of the sum of two partials of the same shapes (`axis_sum` of rank (2, 2))."""
    return code_of_axis_ties(axis_sum(axis_ties_of(old), axis_ties_of(new)))


INDEX_MAP = 11
# Codes whose partial moves data only; composing them with an index map gives an index map.
_MOVES_ONLY = VALUELESS | {INDEX_MAP}
SCALAR_CODES = frozenset({10, -10})


def exact_tables() -> dict:
    """Cost-model tables (the cost_tables.json layout) derived from this algebra.

    Code 11 is an index map (reshape, slice, concatenate, stack, a broadcast or a sum over axes):
    the interpreter applies it to the other factor by moving and adding data, so its products are
    free. Composed with another index map or an identity it stays an index map; with anything else
    the product is dense (code 1), and so is any sum with an index map.
    """
    names = ("c1", "c2", "v1", "v2", "p1", "p2")
    codes = list(range(-10, 12))
    contraction, add = {}, {}
    for i in codes:
        for o in codes:
            key = f"{i},{o}"
            if i == 0 or o == 0:
                contraction[key] = {"mask": [], "mul": 0}
            elif i == INDEX_MAP or o == INDEX_MAP:
                both_move = i in _MOVES_ONLY and o in _MOVES_ONLY
                contraction[key] = {"mask": [], "mul": INDEX_MAP if both_move else 1}
            else:
                plan = product_plan(i, o)
                contraction[key] = {"mask": [names[f] for f in plan.factors], "mul": plan.result_code}
            if i == 0:
                add[key] = o
            elif o == 0:
                add[key] = i
            elif i == INDEX_MAP or o == INDEX_MAP:
                add[key] = 1
            else:
                add[key] = sum_code(i, o)
    unit_pairs = [[i, o] for i in sorted(SCALAR_CODES) for o in sorted(SCALAR_CODES)]
    return {"contraction": contraction, "add": add, "unit_pairs": unit_pairs}


# ---- Graphs with arrays of rank 3 or more: the 2-D codes extended by labelled structures ---------

#: Codes from FIRST_EXTENDED_CODE on name the `AxisTies` of a graph's `ExtendedTables` (in order).
FIRST_EXTENDED_CODE = 12
DENSE = 1
_BASE_CODES = tuple(range(-10, 12))
#: A closure with more structures than this is refused (the env stores codes in small integers).
MAX_EXTENDED_CODES = 4096


class ExtendedTables(NamedTuple):
    """The exact cost tables of a graph whose partials need structures beyond the 2-D codes.

    Codes -10..11 keep their 2-D meaning (their ends have structural rank 2); code 1 (dense) and 11
    (an index map) are the same at every rank; code 12 + k is ``structures[k]``, an `AxisTies` of
    fixed ranks. The tables index a code by ``code + 10`` (as the 2-D tables do) and count over
    ``3 * rank`` size factors, the c axes, then v's, then p's, each padded with ones to `rank` axes:
    factor ``g * rank + k`` is axis k of group g (0 = c, 1 = v, 2 = p).

    Attributes:
      rank: R, the largest structural rank of the graph's nodes (at least 2).
      structures: the structures of codes 12, 13, ...: those given, then every product and sum
        they lead to (the closure), so that elimination never meets an unknown structure.
      mask: bool[C, C, 3R], ``mask[in + 10, out + 10]`` selects the factors whose product is the
        multiplication count of (v->c)(p->v), C = 22 + len(structures).
      mul, add: int64[C, C], the code of a product and of a sum (as in the 2-D tables).
      unit_pairs: (in, out) code pairs whose product is exactly one multiplication (two scalars).
    """

    rank: int
    structures: tuple[AxisTies, ...]
    mask: "np.ndarray"
    mul: "np.ndarray"
    add: "np.ndarray"
    unit_pairs: frozenset


class LabelledAlgebra:
    """The exact products and sums of the 2-D codes and labelled structures, named on demand.

    Codes -10..11 keep their 2-D meaning, 1 (dense) and 11 (an index map) stand for every rank,
    and a structure met for the first time gets the next code from 12 on (`structures`). Dense
    operands whose far end the other operand does not fix are taken at rank R, all of whose axes
    are then counted: the padding ones (a node of fewer axes) leave the count exact.

    Attributes:
      rank: R, the largest number of axes of a node.
      structures: the structures of codes 12, 13, ... so far (grows as products meet new ones).
    """

    def __init__(self, structures: tuple[AxisTies, ...], rank: int):
        self.rank = max(2, int(rank))
        if self.rank > MAX_RANK:
            raise ValueError(f"structural rank {self.rank} exceeds {MAX_RANK}")
        self.structures: list[AxisTies] = []
        self._index: dict[AxisTies, int] = {}
        for ties in structures:
            if max(ties.out_rank, ties.in_rank) > self.rank:
                raise ValueError(f"a structure exceeds rank {self.rank}: {ties}")
            self.name(ties)
        self._products: dict[tuple[int, int], tuple[tuple[int, ...], int, bool]] = {}
        self._sums: dict[tuple[int, int], int] = {}

    def name(self, ties: AxisTies) -> int:
        """The code of a structure (2-D code, 1, or its extended code, new ones appended)."""
        if ties.has_values and not ties.ties:
            return DENSE
        if (ties.out_rank, ties.in_rank) == (2, 2):
            return code_of_axis_ties(ties)
        code = self._index.get(ties)
        if code is None:
            code = self._index[ties] = FIRST_EXTENDED_CODE + len(self.structures)
            self.structures.append(ties)
        return code

    def ranks(self, code: int) -> tuple[int, int] | None:
        """(out rank, in rank) of a code's partial; None for the rank-free codes 1 and 11."""
        if code in (DENSE, INDEX_MAP):
            return None
        if code >= FIRST_EXTENDED_CODE:
            ties = self.structures[code - FIRST_EXTENDED_CODE]
            return ties.out_rank, ties.in_rank
        return 2, 2

    def ties(self, code: int, out_rank: int, in_rank: int) -> AxisTies:
        """The `AxisTies` of a code (dense at the given ranks)."""
        if code == DENSE:
            return axis_ties(out_rank, in_rank, (), True)
        if code >= FIRST_EXTENDED_CODE:
            return self.structures[code - FIRST_EXTENDED_CODE]
        return axis_ties_of(code)

    def _valueless(self, code: int) -> bool:
        return code in _MOVES_ONLY or (code >= FIRST_EXTENDED_CODE
                                       and not self.structures[code - FIRST_EXTENDED_CODE].has_values)

    def product(self, in_code: int, out_code: int) -> tuple[tuple[int, ...], int, bool]:
        """(factor bits g * R + k, product code, unit) of (v->c)(p->v); codes not 0."""
        key = (in_code, out_code)
        found = self._products.get(key)
        if found is not None:
            return found
        if INDEX_MAP in key:
            found = ((), INDEX_MAP if self._valueless(in_code) and self._valueless(out_code) else DENSE, False)
        else:
            ri, ro = self.ranks(in_code), self.ranks(out_code)
            if ri and ro and ri[0] != ro[1]:
                found = ((), DENSE, False)  # ranks that never meet at one vertex
            else:
                v_rank = ri[0] if ri else (ro[1] if ro else self.rank)
                plan = axis_product(self.ties(in_code, v_rank, ri[1] if ri else self.rank),
                                    self.ties(out_code, ro[0] if ro else self.rank, v_rank))
                bits = tuple(sorted(group * self.rank + axis for group, axis in plan.factors))
                found = (bits, self.name(plan.result), plan.unit)
        self._products[key] = found
        return found

    def sum(self, old: int, new: int) -> int:
        """The code of old + new (codes of one edge; 0 = no edge)."""
        if old == 0 or new == 0:
            return new if old == 0 else old
        key = (old, new)
        found = self._sums.get(key)
        if found is None:
            ro, rn = self.ranks(old), self.ranks(new)
            if DENSE in key or INDEX_MAP in key or ro != rn:
                found = DENSE
            else:
                found = self.name(axis_sum(self.ties(old, *ro), self.ties(new, *rn)))
            self._sums[key] = found
        return found


@functools.lru_cache(maxsize=64)
def extended_tables(structures: tuple[AxisTies, ...], rank: int, limit: int = MAX_EXTENDED_CODES) -> ExtendedTables:
    """The exact tables of the 2-D codes and `structures` (any ranks up to `rank`), closed.

    Every product and sum of known codes is named (`LabelledAlgebra`), again while new structures
    appear. For rank 2 and no structures these are the shipped exact tables (checked by
    tests/graph/test_structure.py).

    Raises:
      ValueError: a structure of rank above `rank` or 8, or a closure of more than `limit`
        structures (the closure of a graph of many high-rank structures can be large; the
        elimination engine names products on demand instead, `LabelledAlgebra`).
    """
    algebra = LabelledAlgebra(tuple(structures), rank)
    done = 0
    while done < len(_BASE_CODES) + len(algebra.structures):
        codes = list(_BASE_CODES) + [FIRST_EXTENDED_CODE + k for k in range(len(algebra.structures))]
        for i in codes:
            for o in codes:
                if i and o:
                    algebra.product(i, o)
                    algebra.sum(i, o)
                if len(algebra.structures) > limit:
                    raise ValueError(f"the closure of the graph's structures exceeds {limit} codes")
        done = len(codes)
    return _tables_of(algebra, len(_BASE_CODES) + len(algebra.structures))


def _tables_of(algebra: LabelledAlgebra, count: int) -> ExtendedTables:
    """Tables of the first `count` - 22 labelled codes of `algebra`; a product or sum naming a code
    beyond them (pairs that never meet) is left dense, with no multiplications."""
    import numpy as np  # here, not at import time: the 2-D path of this module needs no numpy

    limit = FIRST_EXTENDED_CODE + count - len(_BASE_CODES)
    codes = list(_BASE_CODES) + list(range(FIRST_EXTENDED_CODE, limit))
    mask = np.zeros((count, count, 3 * algebra.rank), dtype=bool)
    mul = np.zeros((count, count), dtype=np.int64)
    add = np.zeros((count, count), dtype=np.int64)
    unit = set()
    for i in codes:
        for o in codes:
            a, b = i + 10, o + 10
            summed = algebra.sum(i, o)
            add[a, b] = summed if summed < limit else DENSE
            if i == 0 or o == 0:
                continue
            bits, result, is_unit = algebra.product(i, o)
            if result >= limit:
                mul[a, b] = DENSE
                continue
            mask[a, b, list(bits)] = True
            mul[a, b] = result
            if is_unit:
                unit.add((i, o))
    for arr in (mask, mul, add):
        arr.setflags(write=False)
    return ExtendedTables(algebra.rank, tuple(algebra.structures[: count - len(_BASE_CODES)]), mask, mul, add,
                          frozenset(unit))


def reachable_tables(structures: tuple[AxisTies, ...], rank: int, edges, intermediates, limit: int,
                     work: int = 2_000_000) -> ExtendedTables | None:
    """The tables of the codes eliminations of one graph can meet, or None past `work` products.

    Every code an edge p->c can carry after eliminations is a sum of products along paths from p
    to c: S(p, c) holds the edge's own code, every product of a code of S(p, v) and one of S(v, c)
    for an intermediate v between them, and their sums. Node ids are in topological order, so S is
    computed by increasing c and decreasing p. Pairs of codes that never meet at a vertex get
    placeholder entries (`_tables_of`).

    Args:
      structures: the graph's labelled structures (codes 12, ... in order).
      rank: R.
      edges: (src, dst, code) of the graph's edges.
      intermediates: node ids of the vertices an order eliminates.
      limit: the most labelled codes the tables may hold.
      work: products to try at most.

    Raises:
      ValueError: more than `limit` labelled codes can be met.
    """
    algebra = LabelledAlgebra(tuple(structures), rank)
    succs: dict[int, dict[int, set[int]]] = {}
    preds: dict[int, set[int]] = {}
    for src, dst, code in edges:
        if code:
            succs.setdefault(src, {})[dst] = {code}
            preds.setdefault(dst, set()).add(src)
    nodes = sorted(set(succs) | set(preds))
    reach: dict[tuple[int, int], set[int]] = {}  # (p, c) -> codes, for p reaching c
    tried = 0
    for c in nodes:
        sources = set(preds.get(c, ()))
        frontier = list(sources)
        while frontier:  # every node reaching c
            u = frontier.pop()
            for q in preds.get(u, ()):
                if q not in sources:
                    sources.add(q)
                    frontier.append(q)
        for p in sorted(sources, reverse=True):
            codes = set(succs.get(p, {}).get(c, ()))
            for v in intermediates:
                if p < v < c and (v, c) in reach and (p, v) in reach:
                    for a in reach[(p, v)]:
                        for b in reach[(v, c)]:
                            codes.add(algebra.product(a, b)[1])
                    tried += len(reach[(p, v)]) * len(reach[(v, c)])
                    if tried > work:
                        return None
            closed = set(codes)
            while True:  # sums of the codes an edge may add up
                new = {algebra.sum(a, b) for a in closed for b in closed} - closed
                if not new:
                    break
                closed |= new
            if closed:
                reach[(p, c)] = closed
            if len(algebra.structures) > limit:
                raise ValueError(f"the codes the graph's eliminations can meet exceed {limit}")
    return _tables_of(algebra, len(_BASE_CODES) + len(algebra.structures))
