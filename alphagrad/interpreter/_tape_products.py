"""The tape's eliminations: every product of an elimination plan as lane steps on the edge buffer.

The tape (`_tape`) holds every partial in a flat edge buffer ``edges[num_edge_slots]``: a valued
partial as its code's value array (a diagonal, a Kronecker factor, dense...) in consecutive
slots, a partial that only moves data as a *map* (which dense entries are which 0/1 slots: a
structural one, or a run-time mask; a cumulative maximum's mask weighs a tie as JAX does, 1/2...). Here the plan's products (`graph.plan`) become *lane
steps*: one step applies up to `lanes` independent scalar operations at once,

    edges[dst[l]] = (0 if new[l] else edges[dst[l]]) + op(edges[x[l]], edges[y[l]])

with ``op`` a multiplication (``MUL``: exactly the multiply-adds `graph.product_plan`
enumerates, so ``count_muls == graph.cost`` holds by construction) or a selection
(``SELECT``: ``where(mask != 0, value * mask, 0)``, data movement, free in the model, as in the
straight-line path; ``value * 1`` is `value`: only a tie of a cumulative maximum weighs, `_select`). Everything is planned with numpy, a product at a time (a 128 x 128 dense
block times a diagonal is one call, not 16,384 Python steps), and run as one `lax.scan` over the
steps (`run_steps`). Small independent operations share a step (the products of one elimination
read the eliminated vertex's edges and write distinct edges); a step never reads or writes what
another operation of the same step writes (the terms of a contraction into one entry go to
successive steps). Steps store their lanes relative to three base slots
and point into a table of distinct lane *patterns*, so a long program of regular products (an
unrolled integrator's dense rows times diagonals) keeps a small table; a dense block times a map
is planned as the same selections in every row (`LaneSteps.emit_rows`: a few patterns a product).

Dense products take two more kinds of steps: *block steps* (`LaneSteps.emit_block`), a 64 x 64
tile of a matrix product of two dense blocks per step (a small matrix product: about 0.35 ns a
multiply-add on a 2-core CPU, against 10-15 ns in lanes), and *chunks* (`emit_chunks`), 4,096
consecutive entries of a dense block scaled by a diagonal or a scalar (SCALE) or moved by an
identity (MOVE), read and written as slices. Lane steps, tiles and chunks write the buffer in
different ways (a window, a scatter, a slice), so each family runs in a loop of its own, the
loops by segments in the plan's order (`run_steps`).

Under `jax.vmap` (a batch of at least `PACKED_MIN_BATCH` examples) a plan of one operation a step
runs *packed* (`run_steps`, `_packed`): at a batch a trip of the loop costs about 1 us however
little it moves, so the operations are grouped by *level* (`_levels`: an operation comes after
those that write what it reads or writes, and not before those that read what it writes) and the
operations of a level share steps of up to 64 lanes (a width chosen from the levels' sizes and the
batch, `packed_lanes`), read at once and then written. Each destination still receives its
terms in the plan's order, so the numbers are the same, bit for bit (quaternion_chain_fk at batch
256: 10,635 steps -> 243, 21 -> 2.4 ms for the product loop alone).

In plans of one operation a step, a multiplication of a *structural zero* (an entry of a dense
value array that no path reaches: written from the `ZERO` slot, read off from no local derivative,
or a product of such) and a value that may be infinite (module `_poles`) reads `ZERO` for the
latter (`LaneSteps.guarded`): ``0 * inf`` would be NaN where jax.jacfwd, which never forms that
product, is finite (a zero-norm row normalised, then summed). Still one multiplication, counted;
no cost at run time (a step reads whatever slot its row names). Steps of several lanes (plans of
more than `SCALAR_STEPS_MAX_MULS` multiplications) read slices and patterns and are not guarded.
The same plans keep the zeros of a select's discard, known only at run time (`LaneSteps.support`):
each zeroed partial entry has a 0/1 flag slot (`_tape._Discard.flags`), every slot the flag of the
terms written into it (none for a sum of terms of different flags). A multiplication's x is its
*out* factor (c <- v, nearer the outputs), y its *in* factor (v <- p); a selection's x the value.
A flag on the out factor means the path v -> c is dropped at a select, so whatever reaches v from
p is dropped too: where the in factor may be infinite, the multiplication runs as
``t = where(flag != 0, y, 0)``, ``dst (+)= x * t`` (t: dst itself for its first term, else one of
`GUARD_SCRATCH` slots in turn, so that packed steps keep their levels; the multiplication is the
plain one, bit for bit where the flag is 1, counted once; the selection free), and the term keeps
the flag (a NaN further up than the select's case, met by an untaken entry: jax.jacfwd drops that
term). A flag on the in factor only means v's tangent from p is an exact 0, which jax.jacfwd still
multiplies by the out factor (a taken entry's own NaN times it is NaN): never guarded, and the
term keeps that flag only where the out factor cannot be infinite (both flags: their conjunction
there, the out factor's elsewhere). The straight-line path guards the same side
(`_structured._zeros_meeting_poles`: out's structural zeros against in's poles).

An elimination that writes many dense results (a wide program's vertex read by hundreds of
outputs, in reverse order) plans its products at once as *flat records* (`LaneSteps.emit_flat`,
called by `_tape._flat_products`): per product its three base slots and a `FlatShape` (strides,
contracted terms, fresh or adding). With one lane they are enumerated into one-operation steps;
with several they run as flat steps (`FLAT_TILE` result entries of records of one size and shape
a step, a multiplication or a selection each) and dot steps (`DOT_TILE` entries, dot products of
up to `DOT_INNER` terms), families of their own.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from alphagrad.graph import VALUELESS, product_plan, structure_of

__all__ = [
    "ONE", "ZERO", "FIRST_EDGE_SLOT", "MUL", "SELECT", "Valued", "Map", "Unplannable",
    "layout", "support", "value_grid", "Eliminator", "LaneSteps", "run_steps", "lanes_for", "FLAT", "DOT", "ONE_OP", "FlatShape",
    "DOT_INNER", "FLAT_GROUP_ENTRIES", "FLAT_SELECT", "GUARD_SCRATCH",
]

#: Edge-buffer slots holding constants: a selection whose mask is `ONE` is a copy, `ONE` as the
#: value writes a structural 1 (an identity's entry), `ZERO` a structural 0. Partials follow them.
ONE, ZERO = 0, 1
FIRST_EDGE_SLOT = 2
#: Step kinds: lanes of multiplications or selections; *block* steps of a dense product (one tile
#: of a matrix product: `emit_block`); *chunks* of a dense block scaled by a diagonal or a scalar,
#: or moved by an identity (`emit_chunks`).
MUL, SELECT, MATMUL, SCALE, MOVE, TILE = range(6)
#: *Flat* steps (`LaneSteps.emit_flat`): `FLAT_TILE` entries of many products' results a step, each
#: one multiplication (``FLAT``) or selection (``FLAT_SELECT``) of two entries or a dot product of
#: up to `DOT_INNER` terms (``DOT``), their slots computed in the step from a table of records (a
#: product's bases) and the strides of their `FlatShape`; ``ONE_OP``: a one-operation step
#: ([2 * kind + new, x, y, dst] in columns 1-4) among them.
FLAT, DOT, ONE_OP, FLAT_SELECT = 6, 7, 8, 9
#: Families of steps (each runs in a loop of its own: a conditional choosing the operation in
#: a flat step made it 1.5x slower): lanes, tiles, chunks, flat, dot, one-op, flat selections.
_FAMILY_OF_KIND = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6])
#: Result entries of a flat step (`FLAT`) and of a dot step (`DOT`, each a dot product of up to
#: `DOT_INNER` terms: a contraction of n terms takes ceil(n / `DOT_INNER`) rounds).
FLAT_TILE, DOT_TILE, DOT_INNER = 1024, 256, 8
#: Entries of a group of flat records (of one size): a step finds an entry's record and place
#: by float32 divisions, exact below 2**20 (`_flat_step`).
FLAT_GROUP_ENTRIES = 1 << 20
#: How a chunk reads its factors: one slot for all, a slice of a periodic copy, a gather.
BROADCAST_FACTOR, PERIODIC_FACTOR, GATHERED_FACTOR = range(3)
#: Block steps compute tiles of `BLOCK` x `BLOCK` result entries (a matrix product's contraction
#: `BLOCK` terms at a time).
BLOCK = 64
#: Dense products run as block steps where their tiles cost less than their lane steps, a tile
#: counted as this many lane steps: a tile of 64 x 64 x 64 multiply-adds is one small matrix
#: product (measured on a 2-core CPU: about 90 us a tile, 0.35 ns a multiply-add, against 12-17 us
#: a lane step of 1,024), and gathers and scatters a whole tile however few entries a narrow
#: product fills (a matrix-vector product of a long contraction still gains: its lanes take a step
#: per contracted entry).
TILE_COST = 6
#: Chunk steps cover `CHUNK` consecutive entries of a dense block (read and written as slices);
#: blocks of at least half as many entries take them.
CHUNK = 4096


class FlatShape(NamedTuple):
    """How a flat record (`LaneSteps.emit_flat`) reads its factors: its entry ``o = i * cols + j``
    is written at ``i * c_row + j * c_col`` past its base (a dense result row-major: ``c_row =
    cols``, ``c_col = 1``; one column of it: `cols` 1) and reads a at ``i * a_row + j * a_col +
    k * a_k`` and f at ``i * f_row + j * f_col + k * f_k`` past theirs, for k < `inner`; `new`: 1
    where it writes the result afresh, 0 where it adds to it."""

    cols: int
    a_row: int
    a_col: int
    f_row: int
    f_col: int
    c_row: int
    c_col: int
    a_k: int
    f_k: int
    inner: int
    new: int


class Unplannable(Exception):
    """A product the lane steps cannot express (the tape falls back to the straight-line path)."""


def _positions(out_shape: tuple, in_shape: tuple) -> dict[int, int]:
    return {1: out_shape[0], 2: out_shape[1], 3: in_shape[0], 4: in_shape[1]}


def value_grid(code: int, out_shape: tuple, in_shape: tuple) -> tuple[dict, int]:
    """Per position (1..4), the index of every entry of the code's value array (row-major over
    its value axes), diagonal ties applied; and the number of entries."""
    structure = structure_of(code)
    sizes = _positions(out_shape, in_shape)
    axes = structure.value_axes
    extent = [sizes[p] for p in axes]
    count = math.prod(extent)
    grid = np.indices(extent).reshape(len(axes), count) if axes else np.zeros((0, 1), np.int64)
    at = {p: grid[k].astype(np.int64) for k, p in enumerate(axes)}
    for a, b, kind in structure.ties:
        if kind == "D":
            at[b] = at[a]
    return at, count


@functools.cache
def layout(code: int, out_shape: tuple, in_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per entry of the value array of a valued `code` (row-major over its value axes): the dense
    entry (flat output index [R], flat operand index [R]) it holds; along a Kronecker tie, index 0."""
    at, count = value_grid(code, out_shape, in_shape)
    for a, b, kind in structure_of(code).ties:
        if kind == "K":
            at[a] = at[b] = np.zeros(count, np.int64)
    out = at[1] * out_shape[1] + at[2]
    inp = at[3] * in_shape[1] + at[4]
    out.flags.writeable = inp.flags.writeable = False
    return out, inp


@functools.cache
def support(code: int, out_shape: tuple, in_shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every nonzero dense entry of a partial of `code`: (flat output index [N], flat operand
    index [N], the entry of its value array that holds it [N]; 0 for a value-less code)."""
    structure = structure_of(code)
    sizes = _positions(out_shape, in_shape)
    at, count = value_grid(code, out_shape, in_shape)
    kronecker = [(a, b) for a, b, kind in structure.ties if kind == "K"]
    along = math.prod(sizes[a] for a, _ in kronecker)
    rows = np.repeat(np.arange(count), along)
    spread = {p: v[rows] for p, v in at.items()}
    if kronecker:
        k_grid = np.indices([sizes[a] for a, _ in kronecker]).reshape(len(kronecker), along)
        k_index = np.tile(np.arange(along), count)
        for (a, b), values in zip(kronecker, k_grid):
            spread[a] = spread[b] = values[k_index].astype(np.int64)
    out = spread[1] * out_shape[1] + spread[2]
    inp = spread[3] * in_shape[1] + spread[4]
    rows = rows if structure.has_values else np.zeros_like(rows)
    for array in (out, inp, rows):
        array.flags.writeable = False
    return out, inp, rows


@functools.lru_cache(maxsize=512)
def _rows_of(code: int, out_shape: tuple, in_shape: tuple) -> np.ndarray:
    """[n_out * n_in]: per dense entry (flat output index * n_in + flat operand index), the entry
    of the value array of `code` that holds it, -1 where none does."""
    out, inp = layout(code, out_shape, in_shape)
    rows = np.full(math.prod(out_shape) * math.prod(in_shape), -1, np.int64)
    rows[out * math.prod(in_shape) + inp] = np.arange(len(out))
    rows.flags.writeable = False
    return rows


class Valued(NamedTuple):
    """An edge held as the value array of its (valued) code in edge slots [base, base + size)."""

    code: int
    base: int
    out_shape: tuple
    in_shape: tuple

    @property
    def size(self) -> int:
        return len(layout(self.code, self.out_shape, self.in_shape)[0])


class Map(NamedTuple):
    """An edge of a value-less code or an index map (code 11): dense entry (out[k], inp[k]) adds
    the 0/1 slot mask[k] (`ONE` for a structural 1; an entry may appear several times, a sum;
    JAX's tie weight, 1/2, 1/4..., for a cumulative maximum or minimum: `_select`).
    Mask slots are never freed (other maps may share them)."""

    code: int
    out: np.ndarray
    inp: np.ndarray
    mask: np.ndarray
    out_shape: tuple
    in_shape: tuple


def _entries(edge) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(out, inp, slot) per dense entry: the value slot of a valued edge, the mask of a map."""
    if isinstance(edge, Valued):
        out, inp, rows = support(edge.code, edge.out_shape, edge.in_shape)
        return out, inp, edge.base + rows
    return edge.out, edge.inp, edge.mask


def terms(edge) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dense entries of an edge as a sum of selections: (out, inp, value slot, mask slot); a
    map's masks are its values (each 0 or 1, or a tie's weight)."""
    out, inp, slots = _entries(edge)
    return out, inp, slots, np.full(len(out), ONE, np.int64)


def _first_occurrences(dst: np.ndarray) -> np.ndarray:
    """Boolean [n]: whether each entry of `dst` is its value's first occurrence."""
    first = np.zeros(len(dst), bool)
    first[np.unique(dst, return_index=True)[1]] = True
    return first


#: Plans of at most this many counted multiplications run one operation a step (`lanes_for`)...
SCALAR_STEPS_MAX_MULS = 4_000_000
#: ... unless their valued products average at least this many multiplications: a few large
#: dense products run as lane steps of slices and chunks far fewer than their operations
#: (lattice_boltzmann_d2q9: 48 products of 788,400 multiplications, 903,720 steps of one
#: operation against 652 lane steps: 1.3x faster at batch 1, 6.3x at 32, 1.9-2.3x at 256;
#: gaussian_splat_2d in forward order, 7,523 on average: 1.6x at 256), where many small ones do
#: not (an unrolled random vector program, 93 on average: lane steps 2.7x slower at batch 256;
#: benchmarks/scale.py's `wide` at 300 equations, 4,260 on average: as fast at batch 1, 14%
#: slower at 256, so the bound lies between those two).
LANE_MIN_MEAN_MULS = 6144


def lanes_for(muls: list[int]) -> int:
    """The lanes of a step for a plan whose valued products count `muls` multiplications each.

    One operation a step is the leanest loop body (about 0.01-0.05 us a step on a 2-core CPU
    against several us for a step of lanes, whose reads and writes choose among slices and
    gathers), so a plan of up to `SCALAR_STEPS_MAX_MULS` multiplications takes it (measured:
    an unrolled 1,000-equation random vector program, 115,000 multiplications, 2.4 ms at one
    lane against 19-28 ms at 16-256). Longer plans would hold a row per operation (16 bytes
    each; their selections several times the multiplications): lanes cover nine in ten of their
    products (a power of two, 8 to 1,024). So do plans of a few large products
    (`LANE_MIN_MEAN_MULS`: dense blocks, read and written as slices)."""
    if sum(muls) <= SCALAR_STEPS_MAX_MULS and sum(muls) < LANE_MIN_MEAN_MULS * max(len(muls), 1):
        return 1
    typical = float(np.percentile(muls, 90))
    return int(min(1024, max(8, 2 ** math.ceil(math.log2(max(typical, 1.0))))))


#: How a step reads an operand: a contiguous slice, one entry broadcast to every lane, a gather
#: within a window of `lanes` slots, or a gather anywhere (the last two by a pattern of the table).
#: XLA:CPU gathers and scatters cost about 5-10 ns an entry against well under one for slices, and
#: most lanes of a regular product (a dense block times a diagonal, a sum re-laid out) are
#: contiguous.
CONTIGUOUS, BROADCAST, WINDOW, GATHER = range(4)
#: Per-lane `new` flags of a step: none, all, or as its pattern says.
NONE_NEW, ALL_NEW, SOME_NEW = range(3)


#: Slots a guarded multiplication that adds to its destination writes its selected in factor to,
#: in turn (`LaneSteps._one`): one slot for all made each guard a level of its own in packed steps
#: (sdf_csg_scene forward: 479 levels, 1,163 packed steps at batch 256, against 116 and 509).
GUARD_SCRATCH = 64

#: Irregular steps whose patterns are made at once (index arrays of a few tens of MB).
_PATTERN_CHUNK = 1024

#: Steps of at least this many lanes write a window of the buffer (one slice); narrower ones
#: scatter their lanes anywhere (a scalar program's products touch slots far apart).
WINDOWED_LANES = 128


class LaneSteps:
    """Packs operations (`emit`) into steps of `lanes` lanes and their pattern table."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        self.windowed = lanes >= WINDOWED_LANES
        self.rows: list[np.ndarray] = []  # [steps, 10] blocks
        self.patterns: dict[bytes, int] = {}
        self.table: list[np.ndarray] = [np.zeros((4, lanes), np.int32)]  # pattern 0: regular steps
        self._open: list[tuple] = []
        self._kind = -1
        self._count = 0
        self._writes: set[int] = set()
        self._reads: set[int] = set()
        self._low = self._high = 0  # the open step's destinations' range
        self._grids: dict[tuple, np.ndarray] = {}  # `_grid_steps`
        self.blocks = False  # whether some step is a block step (`run_steps` then runs both kinds)
        self.records: list[np.ndarray] = []  # flat steps' records [n, 5] (`emit_flat`)
        self.shapes: dict[tuple, int] = {}  # their distinct `FlatShape`s, numbered
        self._num_records = 0
        # Per edge slot, in one-operation plans (`guarded`, module docstring): `zero`, a structural
        # zero; `pole`, possibly infinite where the arguments are finite (module `_poles`). A slot
        # nothing is known of is (False, True): never assumed zero.
        self.zero = np.zeros(FIRST_EDGE_SLOT, bool)
        self.pole = np.zeros(FIRST_EDGE_SLOT, bool)
        self.zero[ZERO] = True
        # Per edge slot, in one-operation plans: `support`, the slot of a run-time 0/1 flag (the
        # `_tape` discard's: 0 where the entries it was written from all reach the outputs only
        # through a select's untaken case, so the slot holds 0 as a sum of such terms), or -1
        # (always supported). A multiplication of a flagged slot and one that may be infinite is
        # *guarded*: its in factor selected by the flag into dst itself (its first term) or one
        # of the `GUARD_SCRATCH` slots from `scratch` on (in turn), then multiplied (`_one`).
        self.support = np.full(FIRST_EDGE_SLOT, -1, np.int64)
        self.scratch = -1
        self._turn = 0
        self.new_flag = None  # a callable allocating a slot for a conjunction of two flags (`_and`)
        # Per edge slot: whether it is the flag of a select's zeros (`kill`), which a term keeps as
        # its in factor's whatever its out factor (`_term`).
        self.kills = np.zeros(FIRST_EDGE_SLOT, bool)
        self._flag_and: dict[tuple[int, int], int] = {}

    def flags_to(self, end: int) -> None:
        """Grows the slot flags to cover slots below `end` (new slots: nothing known)."""
        if end > len(self.zero):
            grow = max(end, 2 * len(self.zero)) - len(self.zero)
            self.zero = np.concatenate([self.zero, np.zeros(grow, bool)])
            self.pole = np.concatenate([self.pole, np.ones(grow, bool)])
            self.support = np.concatenate([self.support, np.full(grow, -1, np.int64)])
            self.kills = np.concatenate([self.kills, np.zeros(grow, bool)])

    def kill(self, flags: np.ndarray) -> None:
        """Flag slots of a select's zeros (`_tape._Builder._case_support`): 0 where the select does not
        take its case, so jax.jacfwd's tangent of the select from the case is an exact 0 there, made
        by the selection (not a product): whatever reaches the case is dropped, and the out factor's
        own infinity times that 0 is NaN in the product's value itself. A term whose in factor has
        such a flag keeps it whatever its out factor (`_term`)."""
        self.flags_to(int(np.max(flags)) + 1)
        self.kills[flags] = True

    def forget(self, base: int, size: int, pole: bool = True) -> None:
        """Slots [base, base + size) hold values nothing is known of (allocated; or partials):
        not zero, possibly infinite unless `pole` is False. (One-operation plans only.)"""
        if self.lanes == 1:
            self.flags_to(base + size)
            self.zero[base:base + size] = False
            self.pole[base:base + size] = pole
            self.support[base:base + size] = -1
            self.kills[base:base + size] = False

    def guarded(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slots multiplications ``edges[x] * edges[y]`` read: where one factor is a structural
        zero and the other may be infinite, the latter reads `ZERO` instead (0 * 0, not 0 * inf =
        NaN: the product is zero in the Jacobian, as in jax.jacfwd, which never forms it). Still
        one multiplication each: the count is the plan's."""
        self.flags_to(int(max(x.max(), y.max())) + 1)
        x_off, y_off = self.zero[y] & self.pole[x], self.zero[x] & self.pole[y]
        if x_off.any() or y_off.any():
            x, y = np.where(x_off, ZERO, x), np.where(y_off, ZERO, y)
        return x, y

    def _one(self, kind: int, x: int, y: int, dst: int, new: bool) -> list[list[int]]:
        """`guarded` and `_track` of one operation (most products of scalar programs: Python
        scalars), and its run-time support (`support`); its rows [2 * kind + new, x, y, dst]:
        one, or two where guarded (``t = where(flag != 0, y, 0)``, then ``dst (= if new, else +=)
        x * t``, t dst itself where new: still one multiplication, the selection uncounted)."""
        self.flags_to(max(x, y, dst) + 1)
        zero, pole, support = self.zero, self.pole, self.support
        x_zero, y_zero = bool(zero[x]), bool(zero[y])  # (a zero slot is never a pole: `_track`)
        if kind == MUL and y_zero and pole[x]:
            x, x_zero = ZERO, True
        if kind == MUL and x_zero and pole[y]:
            y, y_zero = ZERO, True
        is_zero = x_zero or y_zero
        is_pole = not is_zero and bool(pole[x] or (kind == MUL and pole[y]))
        so = int(support[x])
        term = self._term(kind, so, int(support[y]), bool(pole[x]), is_zero)
        was_zero = bool(zero[dst])
        if new:
            zero[dst], pole[dst] = is_zero, is_pole
        else:
            zero[dst], pole[dst] = zero[dst] and is_zero, pole[dst] or is_pole
        # The support of a sum is that of its terms that are not structural zeros (adding one
        # leaves it as it is; the first other term sets it), where they agree.
        if new or (was_zero and not is_zero):
            support[dst] = term
        elif not is_zero and support[dst] != term:
            support[dst] = -1
        if kind == MUL and not is_zero and so >= 0 and pole[y] and self.scratch >= 0:
            t = dst if new else int(self._temporaries(1)[0])
            return [[2 * SELECT + 1, y, so, t], [2 * MUL + int(new), x, t, dst]]
        return [[2 * kind + int(new), x, y, dst]]

    def _term(self, kind: int, so: int, si: int, out_pole: bool, is_zero: bool) -> int:
        """The support of a term ``op(edges[x], edges[y])`` whose factors have the supports `so`
        (x: the out factor of a multiplication, the value of a selection) and `si` (y: the in
        factor, the mask). A flag on the out factor (c <- v) drops the term wherever it does
        (whatever reaches v, jax.jacfwd drops at the select); a flag on the in factor (v <- p)
        makes v's tangent from p an exact 0 that jax.jacfwd still multiplies by the out factor,
        so the term keeps that flag only where the out factor cannot be infinite (`out_pole`
        False: 0 * finite = 0); a selection never propagates a NaN its zero mask meets."""
        if is_zero or (so < 0 and si < 0):
            return -1
        if si < 0 or si == so:
            return so
        if kind == MUL and out_pole and not self.kills[si]:
            return so  # (-1 where out has none: out * 0 may be jax.jacfwd's NaN)
        return si if so < 0 else self._and(so, si)

    def _supported(self, kind: int, x: np.ndarray, y: np.ndarray, dst: np.ndarray, new: np.ndarray) -> None:
        """`_one` of operations (arrays [n], in order, `guarded` already) at once: none reads what
        another writes (the products of one elimination), so the factors' supports are fixed and
        a destination's support is its first term's (or its old one) where all its terms agree."""
        support, pole = self.support, self.pole
        is_zero = self.zero[x] | self.zero[y]
        so, si = support[x], support[y]
        # `_term` at once: the out factor's flag, else the in factor's where the out factor cannot
        # be infinite (or is a selection's value), both flags' conjunction where both hold there.
        keeps_in = (si >= 0) & (si != so) & ~((pole[x] & ~self.kills[si]) if kind == MUL else np.zeros(len(x), bool))
        term = np.where(keeps_in & (so < 0), si, so)
        for i in np.nonzero(keeps_in & (so >= 0))[0].tolist():
            term[i] = self._and(int(so[i]), int(si[i]))
        term[is_zero] = -1
        # Guarded where the out factor is flagged and the in factor may be infinite (a flagged
        # slot holds 0 where its flag is: every term into it was 0 or guarded).
        guard = (so >= 0) & ~is_zero & pole[y] if kind == MUL else np.zeros(len(x), bool)
        was_zero = self.zero[dst].copy()
        self._track(kind, x, y, dst, new)
        # Destinations' supports: that of the terms that are not structural zeros (with the old
        # value's, where a destination is added to and was no structural zero), where they all
        # agree, else -1 (-1 too where every term is a structural zero: the slot is one).
        fresh = new != 0
        order = np.argsort(dst, kind="stable")
        d = dst[order]
        first = np.r_[True, d[1:] != d[:-1]]
        group = np.cumsum(first) - 1
        groups = int(group[-1]) + 1
        counted = ~is_zero[order]
        old = first & ~fresh[order] & ~was_zero[order]  # the old value counts as a term
        values = np.concatenate([term[order][counted], support[d][old]])
        owners = np.concatenate([group[counted], group[old]])
        low = np.full(groups, np.iinfo(np.int64).max)
        high = np.full(groups, -2, np.int64)
        np.minimum.at(low, owners, values)
        np.maximum.at(high, owners, values)
        support[d[first]] = np.where((high >= -1) & (low == high), high, -1)
        code = 2 * kind + fresh.astype(np.int64)
        if not guard.any():
            self.rows.append(np.stack([code, x, y, dst], axis=1))
            return
        count = 1 + guard.astype(np.int64)
        at = np.cumsum(count) - count
        rows = np.zeros((int(count.sum()), 4), np.int64)
        rows[at] = np.stack([code, x, y, dst], axis=1)
        g = at[guard]
        t = dst[guard].copy()
        added = ~fresh[guard]
        t[added] = self._temporaries(int(added.sum()))
        rows[g] = np.stack([np.full(len(g), 2 * SELECT + 1), y[guard], so[guard], t], axis=1)
        rows[g + 1] = np.stack([code[guard], x[guard], t, dst[guard]], axis=1)
        self.rows.append(rows)

    def _temporaries(self, n: int) -> np.ndarray:
        """The next `n` of the `GUARD_SCRATCH` slots from `scratch`, in turn."""
        at = (self._turn + np.arange(n)) % GUARD_SCRATCH
        self._turn = (self._turn + n) % GUARD_SCRATCH
        return self.scratch + at

    def _and(self, a: int, b: int) -> int:
        """The slot of the conjunction of the 0/1 flags at `a` and `b` (``where(b != 0, a * b,
        0)``: 0 or 1, a selection), written once by a step before the operations that read it."""
        key = (min(a, b), max(a, b))
        found = self._flag_and.get(key)
        if found is None:
            if self.new_flag is None:
                return -1
            found = self._flag_and[key] = self.new_flag()
            self.flags_to(found + 1)
            self.zero[found], self.pole[found], self.support[found] = False, False, -1
            self.rows.append(np.asarray([[2 * SELECT + 1, key[0], key[1], found]], np.int64))
        return found

    def _track(self, kind: int, x: np.ndarray, y: np.ndarray, dst: np.ndarray, new: np.ndarray) -> None:
        """The flags of `dst` after the operations ``edges[dst] (= if new, else +=) op(edges[x],
        edges[y])`` (a destination's `new` operation before its others): a structural zero where
        every term is one, possibly infinite where some term is."""
        self.flags_to(int(max(x.max(), y.max(), dst.max())) + 1)
        zero = self.zero[x] | self.zero[y]
        pole = (self.pole[x] | self.pole[y] if kind == MUL else self.pole[x]) & ~zero
        fresh = new != 0
        if fresh.all():
            self.zero[dst], self.pole[dst] = zero, pole
            return
        self.zero[dst[fresh]], self.pole[dst[fresh]] = zero[fresh], pole[fresh]
        added, added_zero, added_pole = dst[~fresh], zero[~fresh], pole[~fresh]
        self.zero[added[~added_zero]] = False
        self.pole[added[added_pole]] = True

    def flat_shape(self, shape: "FlatShape") -> int:
        """The number of a record shape in the shape table (added if new)."""
        found = self.shapes.get(shape)
        if found is None:
            found = self.shapes[shape] = len(self.shapes)
        return found

    def emit_flat(self, kind: int, op: int, size, a, f, c, shape) -> None:
        """Records (arrays [n]) of independent products, none of which reads or writes what
        another writes, as steps of `FLAT_TILE` (``FLAT``) or `DOT_TILE` (``DOT``) entries: record
        r stands for the `size[r]` entries ``o = i * cols + j`` of a result at slot `c[r]` (its
        `FlatShape`'s strides; ``C[o]`` below is ``edges[c + i * c_row + j * c_col]``)

            C[o] = (0 if new else C[o]) + sum over k < inner of
                   op(edges[a + i * a_row + j * a_col + k * a_k], edges[f + i * f_row + j * f_col + k * f_k])

        (one term for ``FLAT``; `shape[r]` numbers the record's `FlatShape`; ``op`` `MUL` or
        `SELECT`: one per call). The records are grouped by size and shape (so that a step finds
        an entry's record by a division, not a search, and reads one shape), groups of at most
        `FLAT_GROUP_ENTRIES` entries. Step rows: kind, op, the group's first record (numbered
        across all calls), the step's first entry in the group, its entries, the group's record
        size and shape."""
        size, a, f, c, shape = (np.asarray(v, np.int64) for v in (size, a, f, c, shape))
        if not len(size):
            return
        if size.max() > FLAT_GROUP_ENTRIES or (op == SELECT and kind != FLAT):
            raise AssertionError("internal error: a flat record larger than a group, or a dot product of selections")
        if self.lanes == 1:
            self._expand_flat(op, size, a, f, c, shape)
            return
        self._flush()
        # Groups: runs of one size and shape, cut every FLAT_GROUP_ENTRIES // size records.
        order = np.lexsort((c, shape, size))  # within a group by result slot
        size, a, f, c, shape = size[order], a[order], f[order], c[order], shape[order]
        tile = FLAT_TILE if kind == FLAT else DOT_TILE
        run = np.r_[0, np.nonzero((np.diff(size) != 0) | (np.diff(shape) != 0))[0] + 1, len(size)]
        pieces = []
        for lo, hi in zip(run[:-1].tolist(), run[1:].tolist()):
            per = FLAT_GROUP_ENTRIES // int(size[lo])
            for start in range(lo, hi, per):
                total = min(per, hi - start) * int(size[lo])
                first = np.arange(0, total, tile, dtype=np.int64)
                rows = np.zeros((len(first), 10), np.int64)
                rows[:, 0] = FLAT_SELECT if op == SELECT else kind
                rows[:, 1], rows[:, 2] = op, self._num_records + start
                rows[:, 3], rows[:, 4], rows[:, 5], rows[:, 6] = first, np.minimum(tile, total - first), size[lo], shape[lo]
                pieces.append(rows)
        self.records.append(np.stack([a, f, c], axis=1))
        self.rows.extend(pieces)
        self._num_records += len(size)

    def emit(self, kind: int, x, y, dst, new) -> None:
        """Operations ``edges[dst] = (0 if new else edges[dst]) + op(edges[x], edges[y])`` (arrays
        [n]), in order: a destination's first operation may be `new`, its others add to it."""
        x, y, dst, new = (np.asarray(a, np.int64) for a in (x, y, dst, new))
        if len(x) == 0:
            return
        if self.lanes == 1:  # one operation a step, in order: kind and flag, x, y, dst
            if len(x) == 1:
                self.rows.append(np.asarray(self._one(kind, int(x[0]), int(y[0]), int(dst[0]), bool(new[0])),
                                            np.int64))
                return
            self.flags_to(int(max(x.max(), y.max(), dst.max())) + 1)
            supported = self.scratch >= 0 and (np.any(self.support[x] >= 0) or np.any(self.support[y] >= 0))
            if kind == MUL:
                x, y = self.guarded(x, y)
            if supported:
                self._supported(kind, x, y, dst, new)
                return
            self._track(kind, x, y, dst, new)
            self.support[dst] = -1
            self.rows.append(np.stack([2 * kind + (new != 0), x, y, dst], axis=1))
            return
        # A step writes each destination once (it reads, adds and writes back), so operations
        # into the same destination go to successive rounds: the k-th operation of each
        # destination in round k (a contraction's k-th term).
        low = int(dst.min())
        if int(dst.max()) - low < 4 * len(dst) and np.bincount(dst - low).max() == 1:
            self._emit_round(kind, x, y, dst, new)  # distinct destinations: one round
            return
        order = np.argsort(dst, kind="stable")
        starts = np.r_[0, np.nonzero(np.diff(dst[order]))[0] + 1]
        rank = np.empty(len(dst), np.int64)
        rank[order] = np.arange(len(dst)) - np.repeat(starts, np.diff(np.r_[starts, len(dst)]))
        by_round = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_round], np.arange(rank.max() + 2))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            lanes = by_round[lo:hi]
            self._emit_round(kind, x[lanes], y[lanes], dst[lanes], new[lanes])

    def _expand_flat(self, op: int, size, a, f, c, shape) -> None:
        """`emit_flat`'s records as one-operation steps (their operations enumerated with numpy):
        the leanest loop for plans of up to `SCALAR_STEPS_MAX_MULS` multiplications, whose step
        table stays small."""
        fields = np.asarray(list(self.shapes), np.int64).reshape(-1, len(FlatShape._fields))[shape]
        record = np.repeat(np.arange(len(size)), size)
        entry = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
        s = fields[record]
        i, j = np.divmod(entry, s[:, 0])
        x, y = a[record] + i * s[:, 1] + j * s[:, 2], f[record] + i * s[:, 3] + j * s[:, 4]
        dst = c[record] + i * s[:, 5] + j * s[:, 6]
        for k in range(int(fields[:, 9].max())):  # a dot product's terms in order
            these = np.nonzero(s[:, 9] > k)[0] if k else slice(None)
            self.emit(op, x[these] + k * s[these, 7], y[these] + k * s[these, 8], dst[these],
                      s[these, 10] if k == 0 else np.zeros(len(dst[these]), np.int64))

    def _emit_round(self, kind: int, x, y, dst, new) -> None:
        n = len(x)
        if n > self.lanes // 2:  # a large round takes whole steps of its own
            self._flush()
            self._rows(kind, x, y, dst, new)
            return
        low, high = int(dst.min()), int(dst.max())
        if self._open and (kind != self._kind or self._count + n > self.lanes or self._conflicts(x, y, dst)
                           or (self.windowed and max(high, self._high) - min(low, self._low) >= self.lanes)):
            self._flush()
        if not self._open:
            self._low, self._high = low, high
        self._low, self._high = min(low, self._low), max(high, self._high)
        self._open.append((x, y, dst, new))
        self._kind = kind
        self._count += n
        self._writes.update(dst.tolist())
        self._reads.update(x.tolist())
        self._reads.update(y.tolist())

    def _conflicts(self, x, y, dst) -> bool:
        """Whether these lanes read or write what the open step writes, or write what it reads
        (its lanes are split into windows of destinations, run one after another)."""
        writes, targets = self._writes, dst.tolist()
        return not (writes.isdisjoint(x.tolist()) and writes.isdisjoint(y.tolist()) and writes.isdisjoint(targets)
                    and self._reads.isdisjoint(targets))

    def _flush(self) -> None:
        if self._open:
            x, y, dst, new = (np.concatenate(parts) for parts in zip(*self._open))
            self._rows(self._kind, x, y, dst, new)
        self._open, self._count, self._writes, self._reads = [], 0, set(), set()

    def _rows(self, kind: int, x, y, dst, new) -> None:
        """Steps of lanes with distinct destinations, sorted by destination, each writing within
        a window of `lanes` slots (one slice of the buffer) if `windowed` (planned at once for
        all the steps of these lanes)."""
        if np.any(dst[1:] < dst[:-1]):
            order = np.argsort(dst, kind="stable")
            x, y, dst, new = x[order], y[order], dst[order], new[order]
        n, lanes = len(dst), self.lanes
        if n <= lanes and (not self.windowed or dst[-1] - dst[0] < lanes):
            self._row(kind, x, y, dst, new)  # one step
            return
        if self.windowed:  # a new step where the window of the step's first lane ends
            bucket = (dst - dst[0]) // lanes
            starts = np.r_[0, np.nonzero(np.diff(bucket))[0] + 1]
            sizes = np.diff(np.r_[starts, n])
            if (sizes > lanes).any():
                raise AssertionError("internal error: a window holds more lanes than a step")
        else:
            starts = np.arange(0, n, lanes)
            sizes = np.diff(np.r_[starts, n])
        step_of = np.repeat(np.arange(len(starts)), sizes)
        lane_of = np.arange(n) - starts[step_of]
        bases, modes = [], []
        for k, a in enumerate((x, y, dst)):
            low = np.minimum.reduceat(a, starts)
            high = np.maximum.reduceat(a, starts)
            offsets = a - low[step_of]
            contiguous = np.bincount(step_of, weights=(offsets != lane_of), minlength=len(starts)) == 0
            mode = np.where(contiguous, CONTIGUOUS, np.where(high == low, BROADCAST,
                                                              np.where(high - low < lanes, WINDOW, GATHER)))
            if k == 2:  # written within the step's window (windowed) or scattered anywhere
                mode = np.where(contiguous, CONTIGUOUS, WINDOW if self.windowed else GATHER)
            bases.append(low)
            modes.append(mode)
        made_new = np.bincount(step_of, weights=new != 0, minlength=len(starts))
        flags = np.where(made_new == 0, NONE_NEW, np.where(made_new == sizes, ALL_NEW, SOME_NEW))
        irregular = ((modes[0] >= WINDOW) | (modes[1] >= WINDOW) | (modes[2] != CONTIGUOUS) | (flags == SOME_NEW))
        index = np.zeros(len(starts), np.int64)
        irregular_steps = np.nonzero(irregular)[0]
        # The patterns of all irregular steps at once, a chunk at a time (a Python loop over the
        # steps was most of the planning time of index maps times dense blocks: stencils).
        for chunk in range(0, len(irregular_steps), _PATTERN_CHUNK):
            these = irregular_steps[chunk:chunk + _PATTERN_CHUNK]
            rank = np.full(len(starts), -1, np.int64)
            rank[these] = np.arange(len(these))
            lanes_in = np.nonzero(rank[step_of] >= 0)[0]
            step_in, lane_in = step_of[lanes_in], lane_of[lanes_in]
            patterns = np.zeros((len(these), 4, lanes), np.int32)
            for k, a in enumerate((x, y, dst)):
                keep = modes[k][step_in] >= WINDOW
                patterns[rank[step_in[keep]], k, lane_in[keep]] = a[lanes_in[keep]] - bases[k][step_in[keep]]
            keep = flags[step_in] == SOME_NEW
            patterns[rank[step_in[keep]], 3, lane_in[keep]] = new[lanes_in[keep]]
            keys = patterns.reshape(len(these), 4 * lanes).view(np.dtype((np.void, 16 * lanes))).reshape(-1)
            distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            found = np.empty(len(distinct), np.int64)
            for u, (key, at) in enumerate(zip(distinct, first)):
                key = key.tobytes()
                if key not in self.patterns:
                    self.patterns[key] = len(self.table)
                    self.table.append(patterns[at].copy())
                found[u] = self.patterns[key]
            index[these] = found[inverse.reshape(-1)]
        self.rows.append(np.stack([np.full(len(starts), kind), sizes, index, *bases, *modes, flags], axis=1))

    def _row(self, kind: int, x, y, dst, new) -> None:
        """One step of these lanes (sorted, distinct destinations, within a window if `windowed`)."""
        n, lanes = len(x), self.lanes
        bases, modes = [], []
        pattern = np.zeros((4, lanes), np.int32)
        irregular = False
        for k, a in enumerate((x, y, dst)):
            base = int(a.min())
            offsets = a - base
            top = int(offsets.max())
            if top == n - 1 and (n == 1 or (offsets[0] == 0 and (np.diff(offsets) == 1).all())):
                mode = CONTIGUOUS
            elif k == 2:
                mode = WINDOW if self.windowed else GATHER
            else:
                mode = BROADCAST if top == 0 else WINDOW if top < lanes else GATHER
            if mode >= WINDOW:
                pattern[k, :n] = offsets
                irregular = True
            bases.append(base)
            modes.append(mode)
        made_new = int(np.count_nonzero(new))
        flags = NONE_NEW if made_new == 0 else ALL_NEW if made_new == n else SOME_NEW
        index = 0
        if flags == SOME_NEW:
            pattern[3, :n] = new
            irregular = True
        if irregular:
            key = pattern.tobytes()
            if key not in self.patterns:
                self.patterns[key] = len(self.table)
                self.table.append(pattern)
            index = self.patterns[key]
        self.rows.append(np.asarray([[kind, n, index, *bases, *modes, flags]], np.int64))

    def emit_block(self, x: int, y: int, dst: int, rows: int, inner: int, cols: int, fresh: bool) -> None:
        """``C[rows, cols] (= if fresh, else +=) A[rows, inner] @ B[inner, cols]``, the three
        row-major at slots `dst`, `x`, `y`, as block steps (tiles of `BLOCK` x `BLOCK` result
        entries, the contraction `BLOCK` terms a step), in order. Rows [steps, 10]: MATMUL, valid
        rows, valid contracted entries, the three tile bases, A's row stride, B's and C's, valid
        columns, and the `new` flag (ALL_NEW or NONE_NEW)."""
        if self.lanes == 1:
            raise AssertionError("internal error: block steps run among steps of several lanes")
        self._flush()
        self.blocks = True
        i0, j0, k0 = np.arange(0, rows, BLOCK), np.arange(0, cols, BLOCK), np.arange(0, inner, BLOCK)
        i, j, k = (a.reshape(-1).astype(np.int64) for a in np.meshgrid(i0, j0, k0, indexing="ij"))
        out = np.zeros((len(i), 10), np.int64)
        out[:, 0] = MATMUL
        out[:, 1] = np.minimum(BLOCK, rows - i)
        out[:, 2] = np.minimum(BLOCK, inner - k)
        out[:, 3] = x + i * inner + k
        out[:, 4] = y + k * cols + j
        out[:, 5] = dst + i * cols + j
        out[:, 6], out[:, 7] = inner, cols
        out[:, 8] = np.minimum(BLOCK, cols - j)
        out[:, 9] = np.where(fresh & (k == 0), ALL_NEW, NONE_NEW)
        self.rows.append(out)

    def emit_chunks(self, kind: int, x: int, y: int, dst: int, rows: int, cols: int, strides: tuple[int, int],
                    fresh: bool, scratch: int | None = None) -> None:
        """``C[i, j] (= if fresh, else +=) op(A[i, j], s[i * strides[0] + j * strides[1]])`` over a
        dense [rows, cols] block (A at `x`, C at `dst`, both row-major; s at `y`), `CHUNK`
        consecutive entries a step, op a multiplication (SCALE: a diagonal has strides (0, 1) or
        (1, 0), a scalar (0, 0)) or a selection (MOVE: s a mask).

        A diagonal along the columns is first copied periodically into `scratch` (2 * `CHUNK`
        slots; cols <= `CHUNK`) by two TILE steps, so that every chunk reads its factors as one
        slice (a gather of each chunk's factors cost ten times the chunk's slices). Rows
        [steps, 10]: kind, valid entries, cols, the A, s and C bases, the chunk's first entry, how
        it reads the factors (`BROADCAST_FACTOR`...), whether a gathered factor follows the row
        (1) or the column (0), the `new` flag."""
        if self.lanes == 1:
            raise AssertionError("internal error: chunk steps run among steps of several lanes")
        self._flush()
        self.blocks = True
        factor, by_row = BROADCAST_FACTOR, 0
        if strides == (0, 1) and scratch is not None and cols <= CHUNK:
            tile = np.zeros((2, 10), np.int64)
            tile[:, 0], tile[:, 1], tile[:, 2], tile[:, 4] = TILE, CHUNK, cols, y
            tile[:, 5] = scratch + np.array([0, CHUNK])
            tile[:, 6] = np.array([0, CHUNK])
            tile[:, 7], tile[:, 9] = GATHERED_FACTOR, ALL_NEW
            self.rows.append(tile)
            factor, y = PERIODIC_FACTOR, scratch
        elif strides != (0, 0):
            factor, by_row = GATHERED_FACTOR, int(strides == (1, 0))
        t0 = np.arange(0, rows * cols, CHUNK, dtype=np.int64)
        out = np.zeros((len(t0), 10), np.int64)
        out[:, 0] = kind
        out[:, 1] = np.minimum(CHUNK, rows * cols - t0)
        out[:, 2] = cols
        out[:, 3], out[:, 4], out[:, 5], out[:, 6] = x + t0, y, dst + t0, t0
        out[:, 7], out[:, 8] = factor, by_row
        out[:, 9] = ALL_NEW if fresh else NONE_NEW
        self.rows.append(out)

    def emit_rows(self, kind: int, rows: int, x, x_stride: int, y, y_stride: int, dst, dst_stride: int,
                  new: bool) -> None:
        """The operations ``edges[dst[e] + r * dst_stride] (= if new, else +=) op(edges[x[e] + r *
        x_stride], edges[y[e] + r * y_stride])`` for every row r < `rows` and entry e (distinct
        `dst`, the rows' destinations apart): the steps of a group of rows that fits a step (or a
        window) are planned once and shifted for every other group, so the product of a map and
        a dense block gets a few patterns, not one per step."""
        x, y, dst = (np.asarray(a, np.int64) for a in (x, y, dst))
        if len(x) == 0 or rows == 0:
            return
        span = int(dst.max() - dst.min()) + 1
        group = max(1, self.lanes // max(len(x), dst_stride if self.windowed else 1, span))
        if self.lanes == 1 or rows <= group:
            at = np.arange(rows)[:, None]
            self.emit(kind, (x + at * x_stride).reshape(-1), (y + at * y_stride).reshape(-1),
                      (dst + at * dst_stride).reshape(-1), np.full(rows * len(x), new))
            return
        self._flush()
        at = np.arange(group)[:, None]
        saved, self.rows = self.rows, []
        self._rows(kind, (x + at * x_stride).reshape(-1), (y + at * y_stride).reshape(-1),
                   (dst + at * dst_stride).reshape(-1), np.full(group * len(x), new))
        template = np.concatenate(self.rows)
        self.rows = saved
        groups = rows // group
        out = np.tile(template, (groups, 1))
        shift = np.repeat(np.arange(groups, dtype=np.int64) * group, len(template))
        out[:, 3] += shift * x_stride
        out[:, 4] += shift * y_stride
        out[:, 5] += shift * dst_stride
        self.rows.append(out)
        left = rows - groups * group
        if left:
            at = groups * group + np.arange(left)[:, None]
            self._rows(kind, (x + at * x_stride).reshape(-1), (y + at * y_stride).reshape(-1),
                       (dst + at * dst_stride).reshape(-1), np.full(left * len(x), new))

    def emit_grid(self, x_bases: np.ndarray, y_bases: np.ndarray, dst_base: int, sizes: tuple, x_steps: tuple,
                  y_steps: tuple, fresh: bool) -> None:
        """Rounds of multiplications: in round k, ``edges[dst_base + r] (= if fresh and k == 0, else
        +=) edges[x_bases[k] + <x_steps, grid(r)>] * edges[y_bases[k] + <y_steps, grid(r)>]`` for
        every entry r of a row-major grid of `sizes` (grid(r) its indices), as windowed steps of
        consecutive entries; the steps of a round are the same in every round but for the bases."""
        if not self.windowed:
            raise AssertionError("internal error: grid steps write windows")
        self._flush()
        template = self._grid_steps(tuple(sizes), tuple(x_steps), tuple(y_steps))
        rounds = len(x_bases)
        rows = np.tile(template, (rounds, 1))
        per_round = np.repeat(np.arange(rounds), len(template))
        rows[:, 3] += np.asarray(x_bases, np.int64)[per_round]
        rows[:, 4] += np.asarray(y_bases, np.int64)[per_round]
        rows[:, 5] += dst_base
        rows[:, 9] = np.where((per_round == 0) & fresh, ALL_NEW, NONE_NEW)
        self.rows.append(rows)

    def _grid_steps(self, sizes: tuple, x_steps: tuple, y_steps: tuple) -> np.ndarray:
        """The steps of one round of `emit_grid` with bases 0 [steps, 10] (cached). A step's reads
        depend on where it starts only through the first grid index (a shift of its bases) and
        the start modulo the product of the other sizes: one pattern per such remainder."""
        key = (sizes, x_steps, y_steps)
        if key in self._grids:
            return self._grids[key]
        lanes, total = self.lanes, math.prod(sizes)
        inner = math.prod(sizes[1:])
        firsts = np.arange(0, total, lanes)
        counts = np.minimum(lanes, total - firsts)
        rows = np.zeros((len(firsts), 10), np.int64)
        rows[:, 0], rows[:, 1], rows[:, 5], rows[:, 8] = MUL, counts, firsts, CONTIGUOUS
        lane = np.arange(lanes)
        remainders = firsts % inner + inner * (counts < lanes)  # a short last step differs
        for remainder in np.unique(remainders):
            these = np.nonzero(remainders == remainder)[0]
            count = int(counts[these[0]])
            grid = np.stack(np.unravel_index(firsts[these[0]] % inner + lane[:count], [lanes // inner + 2, *sizes[1:]]))
            pattern = np.zeros((4, lanes), np.int64)
            for k, steps in enumerate((x_steps, y_steps)):
                offsets = np.asarray(steps) @ grid
                low = int(offsets.min())
                pattern[k, :count] = offsets - low
                top = int(pattern[k].max())
                contiguous = top == count - 1 and (count == 1 or (np.diff(pattern[k, :count]) == 1).all())
                mode = CONTIGUOUS if contiguous else BROADCAST if top == 0 else WINDOW if top < lanes else GATHER
                rows[these, 6 + k] = mode
                rows[these, 3 + k] = low + steps[0] * (firsts[these] // inner)
                if mode < WINDOW:
                    pattern[k] = 0
            if pattern.any():
                key_bytes = pattern.astype(np.int32).tobytes()
                if key_bytes not in self.patterns:
                    self.patterns[key_bytes] = len(self.table)
                    self.table.append(pattern.astype(np.int32))
                rows[these, 2] = self.patterns[key_bytes]
        rows.flags.writeable = False
        self._grids[key] = rows
        return rows

    @property
    def slack(self) -> int:
        """Slots the edge buffer needs beyond its last edge (windows and chunks read slices)."""
        return max(self.lanes, CHUNK if self.blocks else 0)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(steps int32 [S, 10]: kind, lanes used, pattern, the x, y and dst bases, their modes
        (`CONTIGUOUS`...) and the `new` flags (`NONE_NEW`...), block steps as `emit_block` says,
        flat steps as `emit_flat`, or with one lane and no flat steps [S, 4]: 2 * kind + new,
        x, y, dst (among flat steps, the same in columns 1-4 of ``ONE_OP`` rows);
        patterns int32 [num_patterns, 4, lanes]: x, y and dst offsets and per-lane `new` flags;
        the flat steps' records int32 [R, 3] (a, f, c) and shapes int32 [num_shapes, 11] (`FlatShape`), or
        None and None)."""
        self._flush()
        rows = self.rows
        if self.lanes == 1 and self.records:
            rows = [r if r.shape[1] == 10 else np.concatenate([np.full((len(r), 1), ONE_OP), r,
                                                                  np.zeros((len(r), 5), np.int64)], axis=1)
                    for r in rows]
        width = 4 if self.lanes == 1 and not self.records else 10
        steps = np.concatenate(rows) if rows else np.zeros((0, width), np.int64)
        slots = slice(1, 4) if width == 4 else slice(3, 6)
        if steps.size and steps[:, slots].max() >= 2**31 - 2 * self.lanes:
            raise Unplannable("the edge buffer needs more than 2**31 slots")
        records = shapes = None
        if self.records:
            records = np.concatenate(self.records)
            if records[:, :3].max() >= 2**31 - FLAT_GROUP_ENTRIES:
                raise Unplannable("the flat steps need more than 2**31 slots")
            records = records.astype(np.int32)
            shapes = np.asarray(list(self.shapes), np.int32).reshape(-1, len(FlatShape._fields))
        return steps.astype(np.int32), np.stack(self.table), records, shapes


#: Points of a product enumerated at once (index arrays of a few tens of MB).
_POINTS_PER_BLOCK = 1 << 21
#: Products with more result entries than this (and than half a step's lanes) are enumerated a
#: round at a time.
_DISTINCT_ROUND = 64


def _slot_steps(word: str, size: dict) -> dict[str, int]:
    """Per letter of `word` (distinct letters), the slot step of a row-major array over them."""
    steps, step = {}, 1
    for letter in reversed(word):
        steps[letter] = step
        step *= size[letter]
    return steps


class Eliminator:
    """Executes an elimination plan on the builder's edges as lane steps (numpy planning).

    `edges` maps (source node, target node) to a `Valued` or `Map` edge; value arrays live in
    edge slots from `next_slot` on (slots of deleted edges are reused: `allocate`). For the guard
    of structural zeros (module docstring): `finite`, (base, size) of the slots below `next_slot`
    that are finite wherever the arguments are (the others may be infinite); `zeros`, arrays of
    the slots below it that hold structural zeros of partials."""

    def __init__(self, edges: dict, next_slot: int, lanes: int, finite: Sequence[tuple[int, int]] = (),
                 zeros: Sequence[np.ndarray] = ()):
        self.edges = edges
        self.next_slot = next_slot  # the edge buffer's high-water mark
        self.steps = LaneSteps(lanes)
        if lanes == 1:
            self.steps.forget(FIRST_EDGE_SLOT, next_slot - FIRST_EDGE_SLOT)
            for base, size in finite:
                self.steps.forget(base, size, pole=False)
            for slots in zeros:
                self.steps.zero[slots], self.steps.pole[slots] = True, False
        # Free runs of slots, neighbours merged: (size, first slot) sorted, and by first and end slot.
        self._free: list[tuple[int, int]] = []
        self._free_at: dict[int, int] = {}
        self._free_end: dict[int, int] = {}
        self._shared: dict[int, Valued] = {}  # slots two edges hold (`share`), by first slot
        self._scratch: int | None = None  # slots of periodic factors (`LaneSteps.emit_chunks`)
        self._conjunctions: dict[tuple[int, int], int] = {}

    def allocate(self, size: int) -> int:
        """The first of `size` consecutive free slots: the smallest free run that holds them (its
        rest stays free), else the buffer's end (a free run there extended). Reusing only runs of
        the same size (as before) left the `wide` buffer at 10,888 equations at 69 million slots
        for 33 million alive at most."""
        base = self._allocate(size)
        self.steps.forget(base, size)  # (the slots may have held another edge's structural zeros)
        return base

    def _allocate(self, size: int) -> int:
        at = bisect.bisect_left(self._free, (size, -1))
        if at < len(self._free):
            length, base = self._free[at]
            self._take(at)
            if length > size:
                self._give(base + size, length - size)
            return base
        if self.next_slot in self._free_end:  # the last free run grows into new slots
            base = self._free_end[self.next_slot]
            self._take(bisect.bisect_left(self._free, (self.next_slot - base, base)))
        else:
            base = self.next_slot
        self.next_slot = base + size
        return base

    def _take(self, at: int) -> None:
        length, base = self._free.pop(at)
        del self._free_at[base], self._free_end[base + length]

    def _give(self, base: int, length: int) -> None:
        """Frees slots [base, base + length), merged with free neighbours."""
        if base + length in self._free_at:
            right = self._free_at[base + length]
            self._take(bisect.bisect_left(self._free, (right, base + length)))
            length += right
        if base in self._free_end:
            left = self._free_end[base]
            self._take(bisect.bisect_left(self._free, (base - left, left)))
            base, length = left, length + base - left
        bisect.insort(self._free, (length, base))
        self._free_at[base], self._free_end[base + length] = length, base

    def release(self, edge) -> None:
        if isinstance(edge, Valued) and edge.size:
            if edge.base in self._shared:  # another edge holds these slots: the last one frees them
                del self._shared[edge.base]
                return
            self._give(edge.base, edge.size)

    def release_all(self, edges) -> None:
        """`release` of each edge, neighbouring runs of slots freed as one (an elimination frees
        the hundreds of blocks its products wrote side by side: `allocate_all`)."""
        runs = []
        for edge in edges:
            if isinstance(edge, Valued) and (size := edge.size):
                if edge.base in self._shared:
                    del self._shared[edge.base]
                else:
                    runs.append((edge.base, size))
        if len(runs) > 1:
            runs.sort()
            merged = [list(runs[0])]
            for base, size in runs[1:]:
                if base == merged[-1][0] + merged[-1][1]:
                    merged[-1][1] += size
                else:
                    merged.append([base, size])
            runs = merged
        for base, size in runs:
            self._give(base, size)

    def allocate_all(self, sizes: list[int]) -> list[int]:
        """`allocate` of consecutive runs of these sizes at once (one search of the free runs)."""
        base = self.allocate(sum(sizes))
        return (base + np.cumsum([0] + sizes[:-1])).tolist() if sizes else []

    def share(self, edge: Valued) -> bool:
        """Whether a new edge may hold `edge`'s slots as they are (the product of `edge` and an
        identity): only while no other edge shares them, so that a later sum into one of the two
        cannot change the other; the caller deletes `edge` before anything writes the new edge
        (an elimination writes only edges that bypass its vertex, then deletes the vertex's)."""
        if not edge.size or edge.base in self._shared:
            return False
        self._shared[edge.base] = edge
        return True

    def _both(self, m1: np.ndarray, m2: np.ndarray) -> np.ndarray:
        """Slots holding m1 AND m2 (masks of 0/1; of tie weights, their product): selections, no
        counted multiplication."""
        result = np.where(m1 == ONE, m2, np.where(m2 == ONE, m1, -1))
        pending = np.nonzero(result < 0)[0]
        fresh = []
        for i in pending:
            key = (int(m1[i]), int(m2[i]))
            if key not in self._conjunctions:
                self._conjunctions[key] = self.allocate(1)
                fresh.append(key)
            result[i] = self._conjunctions[key]
        if fresh:
            m1s, m2s = np.asarray(fresh, np.int64).T
            slots = [self._conjunctions[key] for key in fresh]
            self.steps.emit(SELECT, m2s, m1s, slots, np.ones(len(fresh)))
        return result

    def write(self, base: int, code: int, out_shape, in_shape, entries, fresh: bool) -> None:
        """Adds (or, fresh, writes) dense entries ``(out, inp, value slot, mask slot)`` into the
        value array of `code` at `base` (selections and additions only)."""
        out, inp, value, mask = entries
        rows = _rows_of(code, out_shape, in_shape)[out * math.prod(in_shape) + inp]
        # Along a Kronecker tie the value array holds the entries at index 0 only (the others are
        # equal to them by the code's structure): the other entries are not written.
        found = rows >= 0
        if not found.all():
            value, mask, rows = value[found], mask[found], rows[found]
        if not fresh:
            self.steps.emit(SELECT, value, mask, base + rows, np.zeros(len(rows)))
            return
        counts = np.bincount(rows, minlength=len(layout(code, out_shape, in_shape)[0]))
        untouched = np.nonzero(counts == 0)[0]
        first = np.ones(len(rows), bool) if counts.max(initial=0) <= 1 else _first_occurrences(rows)
        x = np.concatenate([value[first], np.full(len(untouched), ZERO), value[~first]])
        y = np.concatenate([mask[first], np.full(len(untouched), ONE), mask[~first]])
        targets = base + np.concatenate([rows[first], untouched, rows[~first]])
        new = np.concatenate([np.ones(int(first.sum()) + len(untouched)), np.zeros(int((~first).sum()))])
        self.steps.emit(SELECT, x, y, targets, new)

    def multiply(self, out_edge: Valued, in_edge: Valued, base: int, fresh: bool) -> int:
        """The valued product out @ in as the multiply-adds its `product_plan` enumerates, added
        into (or, fresh, written as) the value array of the product's code at `base`; returns
        their number."""
        plan = product_plan(in_edge.code, out_edge.code)
        c, v, p = out_edge.out_shape, out_edge.in_shape, in_edge.in_shape
        size = {"a": c[0], "b": c[1], "x": v[0], "y": v[1], "m": p[0], "n": p[1]}
        letters = "".join(dict.fromkeys(plan.out_letters + plan.in_letters))
        if not set(plan.result_letters) <= set(letters):
            raise Unplannable(f"the product of codes {out_edge.code} and {in_edge.code} broadcasts")
        if c == v == p == (1, 1):  # scalars (most products of scalar programs): one multiply-add
            self.steps.emit(MUL, np.asarray([out_edge.base]), np.asarray([in_edge.base]), np.asarray([base]),
                            np.asarray([1.0 if fresh else 0.0]))
            return 1
        results = math.prod(size[letter] for letter in plan.result_letters)
        count = self._block(out_edge, in_edge, base, fresh, plan.result_code)
        if count is not None:
            if count != math.prod(size[letter] for letter in letters):
                raise AssertionError("internal error: a block product counts other multiplications than its plan")
            return count
        if max(self.steps.lanes // 2, _DISTINCT_ROUND) < results <= _POINTS_PER_BLOCK:
            # The summed letters outermost, the result's in its order: each value of the summed
            # letters is a round of distinct destinations in ascending order, which the steps
            # take as they come (sorting the terms of each destination into rounds was most of
            # the planning time of wide products).
            summed = [letter for letter in letters if letter not in plan.result_letters]
            letters = "".join(summed) + plan.result_letters
            rounds = math.prod(size[letter] for letter in summed)
            return self._multiply_in_rounds(plan, out_edge, in_edge, base, fresh, letters, size, rounds, results)
        extent = [size[letter] for letter in letters]
        count = math.prod(extent)
        written = np.zeros(results, bool)
        # Enumerated in blocks along the first letter: a dense product of wide blocks has
        # hundreds of millions of points, and its index arrays must not all exist at once.
        block = max(1, _POINTS_PER_BLOCK // max(1, math.prod(extent[1:])))
        for start in range(0, extent[0] if letters else 1, block):
            piece = list(extent)
            if letters:
                piece[0] = min(block, extent[0] - start)
            points = math.prod(piece)
            grid = np.indices(piece).reshape(len(letters), points) if letters else np.zeros((0, 1), np.int64)
            at = dict(zip(letters, grid.astype(np.int64)))
            if letters:
                at[letters[0]] = at[letters[0]] + start

            def flat(word, at=at, points=points):
                index = np.zeros(points, np.int64)
                for letter in word:
                    index = index * size[letter] + at[letter]
                return index

            rows = flat(plan.result_letters)
            if fresh:  # a destination's first operation writes it afresh, the others add
                new = _first_occurrences(rows) & ~written[rows]
                written[rows] = True
            else:
                new = np.zeros(points)
            self.steps.emit(MUL, out_edge.base + flat(plan.out_letters), in_edge.base + flat(plan.in_letters),
                            base + rows, new)
        return count

    def _block(self, out_edge: Valued, in_edge: Valued, base: int, fresh: bool, result_code: int) -> int | None:
        """A dense product as block steps (`LaneSteps.emit_block`) or chunks (`emit_chunks`) where
        it is large enough: dense times dense, or dense times a diagonal or a scalar multiple of
        the identity (either side); its multiplications, else None (lanes run it)."""
        if self.steps.lanes == 1 or result_code != 1:
            return None
        rows, inner = math.prod(out_edge.out_shape), math.prod(out_edge.in_shape)
        cols = math.prod(in_edge.in_shape)
        codes = (out_edge.code, in_edge.code)
        if codes == (1, 1):
            # Lanes take a step per contracted entry (its terms write the same destinations) and
            # per `lanes` result entries; a tile step costs about as much as six lane steps.
            tiles = math.ceil(rows / BLOCK) * math.ceil(inner / BLOCK) * math.ceil(cols / BLOCK)
            if TILE_COST * tiles > inner * math.ceil(rows * cols / self.steps.lanes):
                return None
            self.steps.emit_block(out_edge.base, in_edge.base, base, rows, inner, cols, fresh)
            return rows * inner * cols
        if rows * cols < CHUNK // 2:
            return None
        # A diagonal (code 6) holds one factor per entry of its vertex; code 10 one for all.
        if codes[0] == 1 and codes[1] in (6, 10):  # columns scaled: C[c, p] = A[c, p] s[p]
            strides = (0, 1) if codes[1] == 6 else (0, 0)
            dense, factors = out_edge, in_edge
        elif codes[1] == 1 and codes[0] in (6, 10):  # rows scaled: C[c, p] = s[c] B[c, p]
            strides = (1, 0) if codes[0] == 6 else (0, 0)
            dense, factors = in_edge, out_edge
        else:
            return None
        if self._scratch is None:
            self._scratch = self.allocate(2 * CHUNK)
        self.steps.emit_chunks(SCALE, dense.base, factors.base, base, rows, cols, strides, fresh, self._scratch)
        return rows * cols

    def _multiply_in_rounds(self, plan, out_edge: Valued, in_edge: Valued, base: int, fresh: bool, letters: str,
                            size: dict, rounds: int, results: int) -> int:
        """`multiply` for products of many result entries: one round of `results` distinct,
        ascending destinations per value of the summed letters (`letters` lists them first)."""
        summed = letters[: len(letters) - len(plan.result_letters)]
        summed_grid = np.indices([size[letter] for letter in summed]).reshape(len(summed), rounds).astype(np.int64)
        distinct = all(len(set(word)) == len(word) for word in (plan.out_letters, plan.in_letters, plan.result_letters))
        if self.steps.windowed and distinct:  # all rounds as grid steps: no index arrays at all
            out_steps, in_steps = _slot_steps(plan.out_letters, size), _slot_steps(plan.in_letters, size)
            x_bases = out_edge.base + sum(out_steps[l] * i for l, i in zip(summed, summed_grid) if l in out_steps)
            y_bases = in_edge.base + sum(in_steps[l] * i for l, i in zip(summed, summed_grid) if l in in_steps)
            self.steps.emit_grid(np.broadcast_to(x_bases, (rounds,)), np.broadcast_to(y_bases, (rounds,)), base,
                                 tuple(size[l] for l in plan.result_letters),
                                 tuple(out_steps.get(l, 0) for l in plan.result_letters),
                                 tuple(in_steps.get(l, 0) for l in plan.result_letters), fresh)
            return rounds * results
        result_grid = np.indices([size[letter] for letter in plan.result_letters]).reshape(len(plan.result_letters), results)
        at = dict(zip(plan.result_letters, result_grid.astype(np.int64)))

        def flat(word, at):
            index = np.zeros(results, np.int64)
            for letter in word:
                index = index * size[letter] + at[letter]
            return index

        targets = base + np.arange(results)
        for k in range(rounds):
            for letter, values in zip(summed, summed_grid[:, k]):
                at[letter] = np.full(results, values, np.int64)
            new = np.full(results, fresh and k == 0)
            self.steps.emit(MUL, out_edge.base + flat(plan.out_letters, at), in_edge.base + flat(plan.in_letters, at),
                            targets, new)
        return rounds * results

    def dense_times_map(self, out_edge, in_edge, base: int, code: int, fresh: bool) -> bool:
        """The product of a dense value array (code 1) and a map on its right, into (or, fresh,
        written as) a dense one at `base`, as the same selections in every row of the result
        (`LaneSteps.emit_rows`: a few patterns for the whole product, where planning the steps of
        its entries one by one made a pattern per step); False (nothing emitted) for other codes.
        ``C[c, p] (+)= sum over the map's entries (v -> p, mask) of select(mask, A[c, v])``."""
        if code != 1 or not isinstance(out_edge, Valued) or out_edge.code != 1 or not isinstance(in_edge, Map):
            return False
        rows, width = math.prod(out_edge.out_shape), math.prod(out_edge.in_shape)
        cols = math.prod(in_edge.in_shape)
        v, p, mask = in_edge.out, in_edge.inp, in_edge.mask
        if (self.steps.lanes > 1 and rows * cols >= CHUNK // 2 and width == cols and len(v) == cols
                and np.array_equal(v, p) and np.array_equal(v, np.arange(cols)) and np.all(mask == ONE)):
            # An identity (an addition's partial): the block copied, or added, a chunk a step.
            self.steps.emit_chunks(MOVE, out_edge.base, ONE, base, rows, cols, (0, 0), fresh)
            return True
        # Entries adding into one column go to successive rounds (a step writes a slot once).
        order = np.argsort(p, kind="stable")
        starts = np.r_[0, np.nonzero(np.diff(p[order]))[0] + 1] if len(p) else np.zeros(0, np.int64)
        rank = np.empty(len(p), np.int64)
        rank[order] = np.arange(len(p)) - np.repeat(starts, np.diff(np.r_[starts, len(p)]))
        steps = self.steps
        if fresh:  # columns no entry reaches are written zeros (the slots may hold anything)
            untouched = np.setdiff1d(np.arange(cols), p)
            steps.emit_rows(SELECT, rows, np.full(len(untouched), ZERO), 0, np.full(len(untouched), ONE), 0,
                            base + untouched, cols, True)
        for k in range(int(rank.max(initial=-1)) + 1):
            these = np.nonzero(rank == k)[0]
            steps.emit_rows(SELECT, rows, out_edge.base + v[these], width, mask[these], 0, base + p[these], cols,
                            fresh and k == 0)
        return True

    def moved(self, out_edge, in_edge):
        """The product out @ in where one factor is a map: its dense entries as selections
        (out, inp, value slot, mask slot), or, both maps, as a `Map`'s arrays (out, inp, mask)."""
        c_out, c_v, c_slot = _entries(out_edge)
        p_v, p_in, p_slot = _entries(in_edge)
        order = np.argsort(p_v, kind="stable")
        p_v, p_in, p_slot = p_v[order], p_in[order], p_slot[order]
        # Per entry of the vertex, where its entries start in the sorted in-edge and how many
        # (a lookup: binary searches of every entry of a wide block were a third of the time).
        per_v = np.bincount(p_v, minlength=math.prod(out_edge.in_shape))
        first = np.cumsum(per_v) - per_v
        lo, counts = first[c_v], per_v[c_v]
        left = np.repeat(np.arange(len(c_v)), counts)
        right = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        out, inp = c_out[left], p_in[right]
        if isinstance(out_edge, Map) and isinstance(in_edge, Map):
            return out, inp, self._both(c_slot[left], p_slot[right])
        if isinstance(out_edge, Map):
            return out, inp, p_slot[right], c_slot[left]
        return out, inp, c_slot[left], p_slot[right]


def _select(value: jax.Array, mask: jax.Array) -> jax.Array:
    """A selection: `value` weighed by its map's entry where that is not 0, else 0 (never ``0 *
    inf``). A map's entry is 1 (a copy: ``value * 1`` is `value`, bit for bit) or 0, but for a
    cumulative maximum or minimum at a tie, where it is JAX's weight (1/2, 1/4, ...: `_tape`'s
    `_MASK_MAPS`); like the straight-line path's application of JAX's linearisation of an index
    map, not a multiplication the cost model counts (it prices index maps' products free)."""
    return jnp.where(mask != 0, value * mask, jnp.zeros((), value.dtype))


_STEP_OPS = (
    lambda a, b, base: base + a * b,
    lambda a, b, base: base + _select(a, b),
)


def _lane_mask(mask: jax.Array, like: jax.Array) -> jax.Array:
    return mask.reshape(-1, *[1] * (like.ndim - 1))


def _scalar_step(edges: jax.Array, row) -> tuple[jax.Array, None]:
    """One operation a step: row (2 * kind + new, x, y, dst)."""
    code, x, y, dst = row[0], row[1], row[2], row[3]
    a, b, old = (lax.dynamic_index_in_dim(edges, i, keepdims=False) for i in (x, y, dst))
    base = jnp.where(code % 2 == 1, jnp.zeros((), old.dtype), old)
    return lax.dynamic_update_index_in_dim(edges, lax.switch(code // 2, _STEP_OPS, a, b, base), dst, 0), None


#: One-operation plans run *packed* under `jax.vmap` (`packed_lanes`): independent operations of
#: one level (`_levels`) share a step of one of these widths...
PACKED_LANES = (8, 16, 32, 64)
#: ... where the batch has at least this many examples (one operation a step costs about 0.01 us
#: at batch 1, where XLA runs the loop's trips back to back, but 0.5-2 us at 32-256: the trips
#: dominate), and the plan has at most `PACKED_MAX_STEPS` operations (their levels are found by
#: a Python loop when the program is traced: about 1 s a million operations).
PACKED_MIN_BATCH = 16
PACKED_MAX_STEPS = 1_000_000
#: A packed step of L lanes on a batch of B costs about ``1 + L * B / PACKED_STEP_ENTRIES`` units
#: (the step's own overhead, then the entries it gathers and scatters), a step of one operation
#: ``SCALAR_STEP_COST + B / PACKED_STEP_ENTRIES`` (measured at batch 256 on a 2-core CPU: a packed
#: step about 2 us plus 0.3-0.4 ns an entry, one operation 0.6-2 us): the width of least total
#: cost is taken, one operation a step included (benchmarks/scale.py's `random` at 1,000
#: equations: 427 steps in 234 levels, kept). quaternion_chain_fk's plan: 10,635 steps in 159
#: levels, 243 steps of 64 lanes at batch 256 (16 lanes at 4,096: 196 -> 131 ms for its products).
PACKED_STEP_ENTRIES = 8192
SCALAR_STEP_COST = 0.5


def packed_lanes(steps: np.ndarray, batch: int) -> int:
    """The lanes of a packed step for the one-operation plan `steps` run on a batch of `batch`
    examples (1: one operation a step, as planned)."""
    if batch < PACKED_MIN_BATCH or len(steps) > PACKED_MAX_STEPS or not PACKED_LANES:
        return 1
    sizes = np.bincount(_levels(steps))[1:]
    sizes = sizes[sizes > 0]
    costs = {lanes: int(np.sum(-(-sizes // lanes))) * (1 + lanes * batch / PACKED_STEP_ENTRIES) for lanes in PACKED_LANES}
    costs[1] = len(steps) * (SCALAR_STEP_COST + batch / PACKED_STEP_ENTRIES)
    return min(costs, key=lambda lanes: (costs[lanes], lanes))


_LEVELS: dict = {}


def _levels(steps: np.ndarray) -> np.ndarray:
    """The level of each one-operation step ``[2 * kind + new, x, y, dst]``: one more than the
    latest level that writes a slot it reads or writes, and no less than the latest level that
    reads the slot it writes (a packed step reads all its lanes before it writes them). Steps of
    one level are independent; run level by level, each level's steps in the plan's order, they
    compute what the plan does, every sum in the same order (bit for bit). Cached per plan."""
    return _per_plan(_LEVELS, id(steps), steps, lambda: _levels_of(steps))


def _levels_of(steps: np.ndarray) -> np.ndarray:
    """`_levels`, computed."""
    _, xs, ys, ds = steps.T.tolist()
    n = int(steps[:, 1:].max()) + 1 if len(steps) else 0
    written, read = [0] * n, [0] * n
    out = [0] * len(xs)
    for i, (a, b, d) in enumerate(zip(xs, ys, ds)):
        level = written[a]
        if written[b] > level:
            level = written[b]
        if written[d] > level:
            level = written[d]
        level += 1
        if read[d] > level:
            level = read[d]
        out[i] = level
        written[d] = level
        if read[a] < level:
            read[a] = level
        if read[b] < level:
            read[b] = level
    return np.asarray(out, np.int64)


def _per_plan(cache: dict, key, steps: np.ndarray, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, kept in `cache` under `key` (holding `steps` too, so that an id reused by another
    plan misses) for the last few plans."""
    hit = cache.get(key)
    if hit is not None and hit[0] is steps:
        return hit[1]
    if len(cache) >= 8:
        cache.clear()
    value = compute()
    cache[key] = (steps, value)
    return value


_PACKED: dict = {}


def _packed(steps: np.ndarray, lanes: int, num_edges: int) -> np.ndarray:
    """One-operation steps packed by level (`_levels`): int32 [S, 4, lanes] (codes, x, y, dst per
    lane; a level of more than `lanes` operations takes several steps in the plan's order).
    Unused lanes multiply the `ZERO` slots into slots past the buffer (``num_edges + lane``:
    dropped, and distinct). Cached per plan."""
    return _per_plan(_PACKED, (id(steps), lanes, num_edges), steps, lambda: _packed_of(steps, lanes, num_edges))


def _packed_of(steps: np.ndarray, lanes: int, num_edges: int) -> np.ndarray:
    """`_packed`, computed."""
    level = _levels(steps)
    order = np.argsort(level, kind="stable")
    level = level[order]
    starts = np.r_[0, np.nonzero(np.diff(level))[0] + 1]
    sizes = np.diff(np.r_[starts, len(level)])
    per = -(-sizes // lanes)  # steps of each level
    first = np.cumsum(per) - per
    rank = np.arange(len(level)) - np.repeat(starts, sizes)  # place within its level
    step = np.repeat(first, sizes) + rank // lanes
    lane = rank % lanes
    packed = np.empty((int(per.sum()), 4, lanes), np.int64)
    packed[:, 0] = 2 * MUL + 1
    packed[:, 1] = packed[:, 2] = ZERO
    packed[:, 3] = num_edges + np.arange(lanes)
    packed[step, :, lane] = steps[order]
    return packed.astype(np.int32)


def _packed_step(edges: jax.Array, row) -> tuple[jax.Array, None]:
    """A packed step (`_packed`): row [4, lanes] of independent one-operation steps, read at
    once, then written (distinct destinations; unused lanes' are past the buffer, dropped)."""
    code, x, y, dst = row[0], row[1], row[2], row[3]
    a, b = edges[x], edges[y]
    old = edges[jnp.minimum(dst, edges.shape[0] - 1)]
    base = jnp.where(_lane_mask(code % 2 == 1, old), jnp.zeros((), old.dtype), old)
    value = base + jnp.where(_lane_mask(code // 2 == SELECT, a), _select(a, b), a * b)
    return edges.at[dst].set(value, unique_indices=True, mode="drop"), None


def _has_blocks(steps: np.ndarray) -> bool:
    """Whether steps of other families than lanes are among `steps` (`run_steps` then runs them
    by segments)."""
    return steps.shape[1] == 10 and bool(np.any(steps[:, 0] >= MATMUL))


def _matmul_step(edges: jax.Array, row) -> jax.Array:
    """A block step (`LaneSteps.emit_block`): one tile of a matrix product. Entries outside the
    product are read as zeros by selection, never multiplied in (they may hold anything, inf or
    NaN); the tile's entries are scattered into the buffer (those beyond the product dropped)."""
    _, valid_rows, valid, bx, by, bd, a_stride, stride, valid_cols, flags = (row[k] for k in range(10))
    index = jnp.arange(BLOCK)
    batch = (1,) * (edges.ndim - 1)

    def gather(at, ok):
        return jnp.where(ok.reshape(*ok.shape, *batch), edges[jnp.where(ok, at, 0)], jnp.zeros((), edges.dtype))

    rows_ok, inner_ok, cols_ok = index < valid_rows, index < valid, index < valid_cols
    a = gather(bx + index[:, None] * a_stride + index[None, :], rows_ok[:, None] & inner_ok[None, :])
    b = gather(by + index[:, None] * stride + index[None, :], inner_ok[:, None] & cols_ok[None, :])
    ok = rows_ok[:, None] & cols_ok[None, :]
    at = bd + index[:, None] * stride + index[None, :]
    old = gather(at, ok)
    new = jnp.where(flags == ALL_NEW, jnp.zeros((), edges.dtype), old) + jnp.einsum("ik...,kj...->ij...", a, b)
    at = jnp.where(ok, at, edges.shape[0] + index[:, None] * BLOCK + index[None, :])
    return edges.at[at.reshape(-1)].set(new.reshape(BLOCK * BLOCK, *edges.shape[1:]), unique_indices=True,
                                        mode="drop")


def _chunk_step(edges: jax.Array, row) -> jax.Array:
    """A chunk step (`LaneSteps.emit_chunks`): `CHUNK` consecutive entries of a dense block, read
    and written as slices (the buffer has `CHUNK` slots of slack); entries beyond the block are
    written back unchanged."""
    kind, valid, cols, bx, by, bd, first, factor, by_row, flags = (row[k] for k in range(10))
    entry = first + jnp.arange(CHUNK)
    a = lax.dynamic_slice_in_dim(edges, bx, CHUNK, axis=0)
    old = lax.dynamic_slice_in_dim(edges, bd, CHUNK, axis=0)
    factors = lax.switch(factor, (
        lambda: jnp.broadcast_to(lax.dynamic_index_in_dim(edges, by, keepdims=True), a.shape),
        lambda: lax.dynamic_slice_in_dim(edges, by + first % cols, CHUNK, axis=0),
        lambda: edges[by + jnp.where(by_row == 1, entry // cols, entry % cols)],
    ))
    # A switch on the (never batched) kind: a selection is no counted multiplication.
    value = lax.switch(kind - SCALE, (lambda: a * factors, lambda: _select(a, factors), lambda: factors))
    mask = (jnp.arange(CHUNK) < valid).reshape(-1, *(1,) * (edges.ndim - 1))
    new = jnp.where(flags == ALL_NEW, jnp.zeros((), edges.dtype), old) + value
    return lax.dynamic_update_slice_in_dim(edges, jnp.where(mask, new, old), bd, axis=0)


def _flat_step(edges: jax.Array, row, records: jax.Array, shapes: jax.Array, tile: int, inner: int,
               select: bool = False) -> jax.Array:
    """A flat step (`LaneSteps.emit_flat`): `tile` result entries of a group of records of one
    size, each (``inner`` 1) one multiplication (a selection if `select`) or a dot product of up
    to `inner` terms. Terms beyond
    a record's `FlatShape.inner` are read as zeros by selection (their slots may hold anything);
    entries beyond the step's are written nowhere (dropped)."""
    group, first, count, size = row[2], row[3], row[4], row[5]
    shape = shapes[row[6]]
    lane = jnp.arange(tile, dtype=jnp.int32)

    def divide(n, d):  # quotient and remainder of n < 2**20 by d > 0 (float32 is exact there;
        q = jnp.floor((n.astype(jnp.float32) + 0.5) / d.astype(jnp.float32)).astype(jnp.int32)
        return q, n - q * d  # integer division does not vectorise on the CPU)

    # The group's records all have `size` entries: an entry's record and place by a division.
    at, entry = divide(first + lane, size)
    record = records[jnp.minimum(group + at, records.shape[0] - 1)]
    i, j = divide(entry, shape[0])
    a = record[:, 0] + i * shape[1] + j * shape[2]
    f = record[:, 1] + i * shape[3] + j * shape[4]
    c = record[:, 2] + i * shape[5] + j * shape[6]
    last = edges.shape[0] - 1
    batch = (1,) * (edges.ndim - 1)
    zero = jnp.zeros((), edges.dtype)

    def get(at):  # lanes past the step's entries may point anywhere: clipped, and not written
        return edges[jnp.clip(at, 0, last)]

    if inner == 1:
        x, y = get(a), get(f)
        value = _select(x, y) if select else x * y  # a selection: no counted multiplication
    else:
        k = jnp.arange(inner)
        ok = (k < shape[9]).reshape(1, inner, *batch)
        x = jnp.where(ok, get(a[:, None] + k[None, :] * shape[7]), zero)
        y = jnp.where(ok, get(f[:, None] + k[None, :] * shape[8]), zero)
        value = jnp.sum(x * y, axis=1)
    old = get(c)
    new = jnp.where(shape[10] == 1, zero, old) + value
    at = jnp.where(lane < count, c, edges.shape[0] + lane)
    return edges.at[at].set(new, unique_indices=True, mode="drop")


def _segments(steps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The steps split by family (`_FAMILY_OF_KIND`: lanes, matrix-product tiles, chunks, flat,
    dot and one-operation steps; each family's steps in order) and segments [n, 2 * families]
    (first step and count in each family) such that running each segment's families in turn
    runs every step in the plan's order."""
    family = _FAMILY_OF_KIND[steps[:, 0]]
    count = int(_FAMILY_OF_KIND.max()) + 1
    families = [steps[family == f] for f in range(count)]
    # A new segment wherever the family goes back (lanes after tiles or chunks, tiles after chunks...).
    starts = np.r_[0, np.nonzero(family[1:] < family[:-1])[0] + 1]
    segment = np.cumsum(np.isin(np.arange(len(steps)), starts)) - 1
    counts = np.zeros((len(starts), count), np.int64)
    np.add.at(counts, (segment, family), 1)
    firsts = np.cumsum(counts, axis=0) - counts
    return np.stack([firsts, counts], axis=2).reshape(len(starts), 2 * count), families


def run_steps(edges: jax.Array, steps: np.ndarray, patterns: np.ndarray, windowed: bool,
              records: np.ndarray | None = None, shapes: np.ndarray | None = None) -> jax.Array:
    """Runs the lane steps (`LaneSteps.finish`: steps, patterns, records and shapes) on the edge
    buffer [num_edges, *batch] (at most one batch axis; the buffer needs `LaneSteps.slack` slots
    at its end for windows and chunks)."""
    if not steps.size:
        return edges
    lanes = patterns.shape[-1]
    if lanes == 1 and steps.shape[1] == 4:  # one operation a step: packed by level under vmap
        width = packed_lanes(steps, math.prod(edges.shape[1:]))
        if width > 1 and edges.shape[0] + width < 2**31:
            return lax.scan(_packed_step, edges, jnp.asarray(_packed(steps, width, edges.shape[0])))[0]
        return lax.scan(_scalar_step, edges, jnp.asarray(steps))[0]
    table = jnp.asarray(patterns)
    lane = jnp.arange(lanes)
    window_shape = (lanes, *edges.shape[1:])

    def window(edges, base):
        return lax.dynamic_slice_in_dim(edges, base, lanes, axis=0)

    def read(edges, base, offsets, mode):
        # A switch returning [lanes, *batch] (never the buffer, which XLA would then copy).
        return lax.switch(mode, (
            lambda: window(edges, base),
            lambda: jnp.broadcast_to(lax.dynamic_index_in_dim(edges, base, keepdims=True), window_shape),
            lambda: window(edges, base)[offsets],
            lambda: edges[base + offsets],
        ))

    def lanes_update(edges, row):
        """A lane step's write: (destinations, values) if not `windowed`, else the new window."""
        kind, count, pattern, bx, by, bd, mx, my, md, flags = (row[k] for k in range(10))
        offsets = table[pattern]
        used = lane < count
        new = jnp.where(flags == SOME_NEW, offsets[3] != 0, flags == ALL_NEW)
        a, b = read(edges, bx, offsets[0], mx), read(edges, by, offsets[1], my)
        if not windowed:  # sorted, distinct destinations; unused lanes beyond the buffer: dropped
            dst = jnp.where(used, bd + jnp.where(md == CONTIGUOUS, lane, offsets[2]), edges.shape[0] + lane)
            old = edges[jnp.minimum(dst, edges.shape[0] - 1)]
            base = jnp.where(_lane_mask(new, old), jnp.zeros((), old.dtype), old)
            return dst, lax.switch(kind, _STEP_OPS, a, b, base)
        target = window(edges, bd)
        at = jnp.where(used, offsets[2], lanes)  # unused lanes fall outside the window: dropped
        old = lax.cond(md == CONTIGUOUS, lambda: target, lambda: target[jnp.minimum(at, lanes - 1)])
        base = jnp.where(_lane_mask(new, old), jnp.zeros((), old.dtype), old)
        # A switch on the (never batched) step kind: only the chosen operation runs, so a
        # selection (`_select`) is no counted multiplication and the MUL steps' are exactly the counted ones.
        value = lax.switch(kind, _STEP_OPS, a, b, base)
        return lax.cond(md == CONTIGUOUS,
                        lambda: jnp.where(_lane_mask(used, value), value, target),
                        lambda: target.at[at].set(value, mode="drop"))

    def lanes_write(edges, row, update):
        # One in-place update of the buffer per step: a scatter into the whole buffer (or two)
        # made XLA copy it at every step.
        if not windowed:
            dst, value = update
            return edges.at[dst].set(value, indices_are_sorted=True, unique_indices=True, mode="drop")
        return lax.dynamic_update_slice_in_dim(edges, update, row[5], axis=0)

    def step(edges, row):
        return lanes_write(edges, row, lanes_update(edges, row)), None

    if _has_blocks(steps):
        # Lane steps, matrix-product tiles and chunks write the buffer differently (a window, a
        # scatter, a slice): one loop each, run by segments in the plan's order (a conditional
        # choosing among them per step would return the buffer, and XLA copies it then).
        segments, families = _segments(steps)
        used = [len(f) > 0 for f in families]
        families = [jnp.asarray(f if len(f) else np.zeros((1, 10), np.int64), jnp.int32) for f in families]
        if records is not None:
            records, shapes = jnp.asarray(records), jnp.asarray(shapes)
        bodies = (lambda e, row: step(e, row)[0], _matmul_step, _chunk_step,
                  lambda e, row: _flat_step(e, row, records, shapes, FLAT_TILE, 1),
                  lambda e, row: _flat_step(e, row, records, shapes, DOT_TILE, DOT_INNER),
                  lambda e, row: _scalar_step(e, row[1:5])[0],
                  lambda e, row: _flat_step(e, row, records, shapes, FLAT_TILE, 1, select=True))

        def segment(edges, row):
            for f in range(len(families)):
                if not used[f]:  # no loop to compile for a family without steps
                    continue

                def body(i, edges, f=f):
                    return bodies[f](edges, lax.dynamic_index_in_dim(families[f], i, keepdims=False))

                edges = lax.fori_loop(row[2 * f], row[2 * f] + row[2 * f + 1], body, edges)
            return edges, None

        return lax.scan(segment, edges, jnp.asarray(segments, jnp.int32))[0]

    edges, _ = lax.scan(step, edges, jnp.asarray(steps))
    return edges
