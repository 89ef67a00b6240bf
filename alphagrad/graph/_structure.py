"""The algebra of structured partial Jacobians, independent of any values.

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

__all__ = ["Structure", "structure_of", "code_of", "ProductPlan", "product_plan", "sum_code", "exact_tables"]

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


class ProductPlan(NamedTuple):
    """How to multiply out(v->c) by in(p->v) as one einsum over their value arrays.

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


_POS_LETTER_OUT = {1: "a", 2: "b", 3: "x", 4: "y"}  # out edge v->c: (c1, c2 | v1, v2)
_POS_LETTER_IN = {1: "x", 2: "y", 3: "m", 4: "n"}  # in edge p->v: (v1, v2 | p1, p2)
_LETTER_FACTOR = {"a": 0, "b": 1, "x": 2, "y": 3, "m": 4, "n": 5}


@functools.cache
def product_plan(in_code: int, out_code: int) -> ProductPlan:
    """The exact product (v->c)(p->v) of two structured partials (codes not 0 or 11)."""
    s_out, s_in = structure_of(out_code), structure_of(in_code)
    parent = {letter: letter for letter in "abxymn"}

    def find(u):
        while parent[u] != u:
            u = parent[u]
        return u

    def union(u, w):
        ru, rw = find(u), find(w)
        if ru != rw:
            # Keep the earliest letter in "abmnxy" as representative so results name c/p indices.
            keep, drop = sorted((ru, rw), key="abmnxy".index)
            parent[drop] = keep

    for a, b, _ in s_out.ties:
        union(_POS_LETTER_OUT[a], _POS_LETTER_OUT[b])
    for a, b, _ in s_in.ties:
        union(_POS_LETTER_IN[a], _POS_LETTER_IN[b])
    out_letters = "".join(find(_POS_LETTER_OUT[p]) for p in s_out.value_axes) if s_out.has_values else ""
    in_letters = "".join(find(_POS_LETTER_IN[p]) for p in s_in.value_axes) if s_in.has_values else ""
    valued = set(out_letters) | set(in_letters)
    has_values = s_out.has_values or s_in.has_values
    # Result ties: c positions (1, 2) and p positions (3, 4) of the product that share a class.
    result_pos = {1: find("a"), 2: find("b"), 3: find("m"), 4: find("n")}
    ties = []
    for a in (1, 2):
        for b in (3, 4):
            if result_pos[a] == result_pos[b]:
                ties.append((a, b, "D" if result_pos[a] in valued else "K"))
    result_code = code_of(ties, has_values)
    s_res = structure_of(result_code)
    result_letters = "".join(result_pos[p] for p in s_res.value_axes)
    both = s_out.has_values and s_in.has_values
    factors = tuple(sorted(_LETTER_FACTOR[c] for c in valued)) if both else ()
    unit = both and not out_letters and not in_letters
    return ProductPlan(out_letters, in_letters, result_code, result_letters, factors, unit)


@functools.cache
def sum_code(old: int, new: int) -> int:
    """Structure of the sum of two partials of the same shapes: the ties both share.

    A tie survives as Kronecker only if it is Kronecker in both and neither carries values on it;
    two identities add up to twice the identity, which carries a scalar.
    """
    s_old, s_new = structure_of(old), structure_of(new)
    common = {}
    for a, b, kind in s_old.ties:
        for a2, b2, kind2 in s_new.ties:
            if (a, b) == (a2, b2):
                common[(a, b)] = "K" if kind == kind2 == "K" else "D"
    return code_of([(a, b, kind) for (a, b), kind in common.items()], True)


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
