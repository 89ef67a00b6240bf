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
    "FIRST_EXTENDED_CODE", "ExtendedTables", "extended_tables",
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


def _ranks(code: int, structures) -> tuple[int, int] | None:
    """(out rank, in rank) of a code's partial; None for the rank-free codes 1 and 11."""
    if code in (DENSE, INDEX_MAP):
        return None
    if code >= FIRST_EXTENDED_CODE:
        ties = structures[code - FIRST_EXTENDED_CODE]
        return ties.out_rank, ties.in_rank
    return 2, 2


def _ties_of(code: int, structures, out_rank: int, in_rank: int) -> AxisTies:
    if code == DENSE:
        return axis_ties(out_rank, in_rank, (), True)
    if code >= FIRST_EXTENDED_CODE:
        return structures[code - FIRST_EXTENDED_CODE]
    return axis_ties_of(code)


@functools.lru_cache(maxsize=64)
def extended_tables(structures: tuple[AxisTies, ...], rank: int) -> ExtendedTables:
    """The exact tables of the 2-D codes and `structures` (any ranks up to `rank`), closed.

    A product or sum is computed by `axis_product` / `axis_sum` on the operands' `AxisTies`; a
    result of ranks (2, 2) is named by its 2-D code, one without ties by code 1 (dense), any other
    by an extended code (new ones appended). Dense (code 1) stands for every rank: where the other
    operand does not fix the rank of its far end, that end is taken at rank R, all of whose axes
    are then selected: the padding ones leave the count exact for any lower rank. Index maps
    multiply nothing, as in `exact_tables`. For rank 2 and no structures these are the shipped
    exact tables (checked by tests/graph/test_structure.py).

    Raises:
      ValueError: a structure of rank above `rank` or 8, or a closure above MAX_EXTENDED_CODES.
    """
    import numpy as np  # here, not at import time: the 2-D path of this module needs no numpy

    rank = max(2, int(rank))
    if rank > MAX_RANK:
        raise ValueError(f"structural rank {rank} exceeds {MAX_RANK}")
    known = list(structures)
    if any(max(t.out_rank, t.in_rank) > rank for t in known):
        raise ValueError(f"a structure exceeds rank {rank}")
    index = {t: FIRST_EXTENDED_CODE + k for k, t in enumerate(known)}

    def name(ties: AxisTies) -> int:
        if ties.has_values and not ties.ties:
            return DENSE
        if (ties.out_rank, ties.in_rank) == (2, 2):
            return code_of_axis_ties(ties)
        if ties not in index:
            if len(known) >= MAX_EXTENDED_CODES:
                raise ValueError(f"the closure of the graph's structures exceeds {MAX_EXTENDED_CODES} codes")
            index[ties] = FIRST_EXTENDED_CODE + len(known)
            known.append(ties)
        return index[ties]

    moves_only = set(_MOVES_ONLY)
    products: dict[tuple[int, int], tuple[tuple[int, ...], int, bool]] = {}
    sums: dict[tuple[int, int], int] = {}

    def valueless(code: int) -> bool:
        return code in moves_only or (code >= FIRST_EXTENDED_CODE and not known[code - FIRST_EXTENDED_CODE].has_values)

    # Every pair of known codes (pairs done are skipped), again while the closure grows.
    while True:
        codes = list(_BASE_CODES) + list(range(FIRST_EXTENDED_CODE, FIRST_EXTENDED_CODE + len(known)))
        size_before = len(known)
        for i in codes:
            for o in codes:
                if (i, o) in products or i == 0 or o == 0:
                    continue
                ri, ro = _ranks(i, known), _ranks(o, known)
                if i == INDEX_MAP or o == INDEX_MAP:
                    products[(i, o)] = ((), INDEX_MAP if valueless(i) and valueless(o) else DENSE, False)
                    sums[(i, o)] = DENSE
                    continue
                # The rank of v: fixed by either operand; dense ends take the graph's rank.
                v_rank = ri[0] if ri else (ro[1] if ro else rank)
                if ri and ro and ri[0] != ro[1]:
                    products[(i, o)] = ((), DENSE, False)  # cannot meet at one vertex
                else:
                    in_ties = _ties_of(i, known, v_rank, ri[1] if ri else rank)
                    out_ties = _ties_of(o, known, ro[0] if ro else rank, v_rank)
                    plan = axis_product(in_ties, out_ties)
                    bits = tuple(sorted(group * rank + axis for group, axis in plan.factors))
                    products[(i, o)] = (bits, name(plan.result), plan.unit)
                if DENSE in (i, o) or (ri != ro):
                    sums[(i, o)] = DENSE  # dense, or never on one edge
                else:
                    sums[(i, o)] = name(axis_sum(_ties_of(i, known, *ri), _ties_of(o, known, *ro)))
        if len(known) == size_before:
            break
    count = len(_BASE_CODES) + len(known)
    mask = np.zeros((count, count, 3 * rank), dtype=bool)
    mul = np.zeros((count, count), dtype=np.int64)
    add = np.zeros((count, count), dtype=np.int64)
    unit = set()
    all_codes = list(_BASE_CODES) + list(range(FIRST_EXTENDED_CODE, FIRST_EXTENDED_CODE + len(known)))
    for i in all_codes:
        for o in all_codes:
            a, b = i + 10, o + 10
            add[a, b] = o if i == 0 else i if o == 0 else sums[(i, o)]
            if i == 0 or o == 0:
                continue
            bits, result, is_unit = products[(i, o)]
            mask[a, b, list(bits)] = True
            mul[a, b] = result
            if is_unit:
                unit.add((i, o))
    for arr in (mask, mul, add):
        arr.setflags(write=False)
    return ExtendedTables(rank, tuple(known), mask, mul, add, frozenset(unit))
