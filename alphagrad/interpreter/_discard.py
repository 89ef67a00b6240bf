"""Which partials a select's untaken case discards: one plan, run by both interpreters.

``jnp.where(x > 0, jnp.sqrt(x), 0.0)`` at x < 0: the partial of ``sqrt`` is NaN there, and the
select's partial with respect to the case it does not take is 0, so their product is NaN
(``jax.jacrev``'s answer), where ``jax.jacfwd`` drops the tangent of the untaken case and
returns 0. Both interpreters follow jax.jacfwd. An entry of a vertex (never an output) is
*discarded* where every use of it is a select that does not take it there, or a partial whose
every reader of that entry is discarded in turn: an entrywise one, one that moves data
(transpose, reshape, broadcast, slice, gather, sum: ``jnp.where(jnp.all(x > 0),
jnp.sum(jnp.log(x)), -jnp.inf)``) or a small one of known pattern (a dot product, a matrix).
The entries of the partials into a vertex at its discarded entries (rows) are then zeroed before
any product (also where a bilinear partial holds the NaN: ``jnp.dot(x, jnp.log(x))``'s with
respect to x holds log(x)). Only values change, never a code, so the plan and its count stand; a
finite product with the select's zero was zero anyway.

Which vertices can be discarded, and through which uses, depends on the graph alone
(`plan_discard`); which of their entries are, on the predicates' values at run time: the
straight-line interpreter evaluates the plan vertex by vertex (`_jacobian`), the tape as a few
vectorised sweeps over all the plan's entries at once (`_tape`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.graph import FIRST_EXTENDED_CODE, INDEX_MAP, Operand, Program, structure_of
from alphagrad.interpreter._tape_products import support, value_grid


#: 2-D codes that send entry k of p to entry k of v only, when the two shapes agree: ties (1, 3)
#: and (2, 4), diagonal or Kronecker, valued or not (an identity, a constant multiple, a diagonal).
_ENTRYWISE_CODES = frozenset({6, 8, -8, 10, -1, -6})


def entrywise_code(code: int, out_shape: tuple, in_shape: tuple) -> bool:
    """Whether a partial of 2-D `code` sends entry k of p to entry k of v only (a discard of v's
    entry k passes back to p's)."""
    if out_shape != in_shape:
        return False
    return code in _ENTRYWISE_CODES or (code == 1 and math.prod(out_shape) == 1)


def elementwise_code(code: int, out_shape: tuple, in_shape: tuple) -> bool:
    """Whether a partial of 2-D `code` holds one value per entry, tying v's entry k to p's (a
    diagonal of the same shape, a scalar): a select's case partial of this kind is masked, and
    partials of this kind are the ones zeroed."""
    return out_shape == in_shape and (code == 6 or (code == 1 and math.prod(out_shape) == 1))


#: Most entries a partial's pattern may have for a discard to pass back through it
#: (`structural_reads`): a dense partial of 256 x 256 entries.
READS_MAX = 2**16


def structural_reads(code: int, out_shape: tuple, in_shape: tuple) -> tuple[np.ndarray, np.ndarray] | None:
    """(flat output index [N], flat operand index [N]): the entries a partial of 2-D `code` can
    hold (every entry a dense one can), or None for an index map (its pattern depends on the
    map), a labelled structure, or more than `READS_MAX` entries."""
    if code in (0, INDEX_MAP) or code >= FIRST_EXTENDED_CODE:
        return None
    if code == 1 and math.prod(out_shape) * math.prod(in_shape) > READS_MAX:
        return None
    out, inp, _ = support(code, tuple(out_shape), tuple(in_shape))
    return (out, inp) if len(out) <= READS_MAX else None


class RowCover(NamedTuple):
    """Which entries of v (rows of the partial d(v)/d(p)) each entry of its value array stands for.

    Attributes:
      out_dims: v's dims, as the partial's structure sees them.
      coordinates: per axis of v, the coordinate of every value entry along it ([R]), or None
        where the value is constant along the axis (a Kronecker tie: the entry stands for every
        coordinate).
      count: R, the value entries.
    """

    out_dims: tuple[int, ...]
    coordinates: tuple[np.ndarray | None, ...]
    count: int

    def dropped(self, discarded: np.ndarray | jax.Array) -> jax.Array:
        """[R]: the value entries all of whose rows are discarded (discarded: [prod(out_dims)])."""
        every = jnp.reshape(discarded, self.out_dims)
        free = tuple(a for a, c in enumerate(self.coordinates) if c is None)
        if free:
            every = jnp.all(every, axis=free)
        if len(free) == len(self.out_dims):
            return jnp.broadcast_to(every, (self.count,))
        return every[tuple(c for c in self.coordinates if c is not None)]

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(value entry [N], flat row [N]): every row each value entry stands for."""
        grids = [np.arange(self.count)] + [np.zeros(1, np.int64) if c is not None else np.arange(d)
                                      for c, d in zip(self.coordinates, self.out_dims)]
        mesh = np.meshgrid(*grids, indexing="ij")
        entry = mesh[0].reshape(-1)
        coords = [c[entry] if c is not None else m.reshape(-1) for c, m in zip(self.coordinates, mesh[1:])]
        return entry, np.ravel_multi_index(coords, self.out_dims) if coords else np.zeros_like(entry)


def value_cover(code: int, out_shape: tuple, in_shape: tuple) -> RowCover | None:
    """The `RowCover` of the value array of a 2-D `code` (its layout: row-major over the value
    axes), or None for an index map or a value-less code."""
    if code in (0, INDEX_MAP) or code >= FIRST_EXTENDED_CODE or not structure_of(code).has_values:
        return None
    at, count = value_grid(code, tuple(out_shape), tuple(in_shape))
    return RowCover(tuple(out_shape), tuple(at.get(position) for position in (1, 2)), count)


class MaskedCase(NamedTuple):
    """A case of a select whose partial is elementwise: entry j of `case` reaches entry j of
    `select` only where the predicate (broadcast to the select's shape) equals `index`; or, with
    no predicate (None), an operand (at position `index`) of a custom JVP rule that may select its
    tangent (``jax.nn.relu``'s ``where(x > 0, t, 0)``): entry j reaches entry j of `select` only
    where the rule's tangent of the output is not finite for a NaN tangent of that operand."""

    case: int
    select: int
    predicate: Operand
    index: int


class Use(NamedTuple):
    """A use of a vertex u that may be discarded: its edge to `w`.

    Attributes:
      w: the vertex the edge reaches.
      through: whether w may be discarded in turn (the use keeps only the entries of u that
        kept entries of w need); otherwise only a masked case's predicate decides.
      by_pattern: whether entry j of u is kept where some kept entry of w reads it through the
        partial's pattern (an index map, a transpose, a dense or structured partial); otherwise
        the edge is entrywise (entry j of w only).
    """

    w: int
    through: bool
    by_pattern: bool


class DiscardPlan(NamedTuple):
    """The static part of the discard (`plan_discard`).

    Entry j of a vertex u of `nodes` is *kept* where some use keeps it: a use of `cases` (u a
    case of the select w) where the select takes u at j, and, if `through`, w's entry j is kept;
    any other use where, entrywise, w's entry j is kept (every entry, if not `through`: an
    output's use of itself), or, `by_pattern`, some kept entry of w reads entry j. Every other
    entry is discarded.

    Attributes:
      cases: every elementwise (case, select) use, one per occurrence of the case.
      nodes: per vertex that may be discarded, latest first, after the outputs (kept at every
        entry: a use of themselves, neither through nor a case): (u, its uses (`Use`)).
      zeroed: the edges (p, u) into those vertices whose value entries the interpreter can
        zero by row (`RowCover`): their entries all of whose rows are discarded entries of u.
    """

    cases: tuple[MaskedCase, ...]
    nodes: tuple[tuple[int, tuple[Use, ...]], ...]
    zeroed: tuple[tuple[int, int], ...]


def plan_discard(program: Program, edges: Iterable[tuple[int, int]], *,
                 is_elementwise: Callable[[int, int], bool],
                 maps_entrywise: Callable[[int, int], bool],
                 has_pattern: Callable[[int, int], bool],
                 can_zero: Callable[[int, int], bool],
                 rules: bool = False) -> DiscardPlan | None:
    """The vertices a select's untaken cases may discard, or None when no select has an
    elementwise case (the common program: nothing to do).

    Args:
      program: the graph's program (its select_n equations and outputs).
      edges: every (src, dst) pair with a partial; a vertex's uses are its edges out.
      is_elementwise: whether the partial of an edge ties dst and src entry by entry with a value
        per entry (a diagonal of the same shape, a scalar): a select's case partial qualifies it
        as masked, and such partials are the ones zeroed.
      maps_entrywise: whether an edge sends entry k of src to entry k of dst only (valued or
        not: an identity, a constant multiple, a diagonal): a discard passes back through it.
      has_pattern: whether the interpreter knows which entries of dst read which of src through
        an edge's partial (an index map, a transpose, a broadcast, a sum, a small dense or
        structured partial, `structural_reads`): a discard passes back through it.
      can_zero: whether the interpreter can zero an edge's partial by rows (of dst).
      rules: whether the interpreter evaluates custom JVP rules' selections (`MaskedCase` without
        a predicate): the operands of single-output ``custom_jvp_call`` equations with
        elementwise partials are then cases too.
    """
    edges = list(edges)
    cases = []
    for eqn in program.equations:
        if eqn.primitive is None or not eqn.outputs or eqn.outputs[0].node is None:
            continue
        s = eqn.outputs[0].node
        if eqn.primitive.name == "select_n":
            for k, op in enumerate(eqn.operands[1:]):
                if op.node is not None and is_elementwise(op.node, s):
                    cases.append(MaskedCase(op.node, s, eqn.operands[0], k))
        elif rules and eqn.primitive.name == "custom_jvp_call" and len(eqn.outputs) == 1:
            for k, op in enumerate(eqn.operands):
                if op.node is not None and is_elementwise(op.node, s):
                    cases.append(MaskedCase(op.node, s, None, k))
    if not cases:
        return None
    masked = {(c.case, c.select) for c in cases}
    uses: dict[int, list[int]] = {}
    for src, dst in edges:
        uses.setdefault(src, []).append(dst)
    outputs = {op.node for op in program.outputs if op.node is not None}
    # Only uses that reach an output count: a select in code whose result is never returned must
    # not keep its case (jax.jacfwd never sees it).
    live = set(outputs)
    for u in sorted(uses, reverse=True):
        if any(w in live for w in uses[u]):
            live.add(u)
    # An output is kept at every entry: a use of itself, no case (``s[0] + jnp.where(c, s, 0)``
    # returned: s's entry that the slice does not read is discarded where the where does not
    # take it; without the output's node the slice's use would keep all of s).
    nodes: dict[int, tuple[Use, ...]] = {o: (Use(o, False, False),) for o in sorted(outputs, reverse=True)}
    for u in sorted(uses, reverse=True):  # a vertex's uses have larger numbers
        if u in outputs or u not in live:
            continue
        terms = []
        for w in uses[u]:
            if w not in live:
                continue
            entrywise = maps_entrywise(u, w)
            by_pattern = not entrywise and (u, w) not in masked and w in nodes and has_pattern(u, w)
            through = w in nodes and (entrywise or by_pattern)
            if (u, w) not in masked and not through:
                break
            terms.append(Use(w, through, by_pattern))
        else:
            nodes[u] = tuple(terms)
    if len(nodes) == len(outputs):
        return None
    zeroed = tuple((p, u) for p, u in edges if u in nodes and u not in outputs and can_zero(p, u))
    return DiscardPlan(tuple(c for c in cases if c.case in nodes and c.case not in outputs), tuple(nodes.items()),
                       zeroed)
