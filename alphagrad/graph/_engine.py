"""The elimination engine: the one Python implementation of vertex elimination on a `Graph`.

Eliminating vertex v replaces every path p -> v -> c by the product (v->c)(p->v), added into the
edge p -> c when there is one (its code becomes the cost model's sum code) or creating it (with
the product code), then deletes v's edges. `Eliminator` performs eliminations and prices them;
with `Eliminator.step` (or `plan` for a whole order) it also records every product as data.

Everything in alphagrad that eliminates in Python goes through this engine: `cost` and
`elimination_costs`, the Markowitz order, the heuristics (cost previews), the exact solver
(`Eliminator.copy` snapshots as search states), and the interpreter, which replays the `plan`
of an order with arrays. The jitted cores of `alphagrad.env` are fast paths of the same rules,
tested equal to this engine on random graphs.
"""

from __future__ import annotations

import functools
import gc
import heapq
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from alphagrad.graph._cost import MIN_CODE, CostModel, check_order, cost_model_of
from alphagrad.graph._graph import Graph, Shape2D

__all__ = ["Eliminator", "Product", "Step", "elimination_costs", "plan"]


class Product(NamedTuple):
    """One product of an elimination: (v->c)(p->v), added into the edge p->c or creating it.

    Attributes:
      pred, vertex, succ: node ids of p, v and c (inputs 1..num_inputs, vertex k = num_inputs + k).
      in_code: code of the edge p->v.
      out_code: code of the edge v->c.
      code: code of the product (the cost model's product code of (in_code, out_code)).
      old_code: code of the edge p->c before the product is added; 0 where the product creates it.
      sum_code: code of p->c after the addition (the cost model's sum code of (old_code, code));
        0 where the product creates the edge (which then has `code`).
      muls: multiplications of the product.
    """

    pred: int
    vertex: int
    succ: int
    in_code: int
    out_code: int
    code: int
    old_code: int
    sum_code: int
    muls: int


class Step(NamedTuple):
    """What eliminating one vertex did.

    Attributes:
      vertex: the vertex number eliminated.
      preds, succs: node ids whose edges p->v and v->c the step removed (in the engine's order).
      products: one per (c, p) in succs x preds, c outermost.
    """

    vertex: int
    preds: tuple[int, ...]
    succs: tuple[int, ...]
    products: tuple[Product, ...]

    @property
    def cost(self) -> int:
        """Multiplications of the step (what `Eliminator.eliminate` returns)."""
        return sum(product.muls for product in self.products)


class _ModelTables(NamedTuple):
    """A cost model in the form the engine reads fastest (Python containers, not numpy arrays).

    Attributes:
      mul, add: the product and sum codes as nested lists, ``[in - MIN_CODE][out - MIN_CODE]``.
      pair_costs: ``CostModel.pair_cost`` memoised by (in code, out code, c, v, p shapes); shared
        by every engine of the model, so that each graph does not recompute it.
    """

    mul: list[list[int]]
    add: list[list[int]]
    pair_costs: dict[tuple[int, int, Shape2D, Shape2D, Shape2D], int]


class _LazyRow:
    """Row ``in - MIN_CODE`` of a labelled model's product (or sum) table, filled on first read."""

    __slots__ = ("code", "model", "sums", "cells")

    def __init__(self, code: int, model, sums: bool):
        self.code, self.model, self.sums, self.cells = code, model, sums, {}

    def __getitem__(self, index: int) -> int:
        value = self.cells.get(index)
        if value is None:
            other = index + MIN_CODE
            value = self.cells[index] = (self.model.sum_code(self.code, other) if self.sums
                                         else self.model.product_code(self.code, other))
        return value


class _LazyTable:
    """A labelled model's product or sum table, ``table[in - MIN_CODE][out - MIN_CODE]``, whose
    codes are named as products meet them (`graph._cost.LabelledCostModel`)."""

    __slots__ = ("model", "sums", "rows")

    def __init__(self, model, sums: bool):
        self.model, self.sums, self.rows = model, sums, {}

    def __getitem__(self, index: int) -> _LazyRow:
        row = self.rows.get(index)
        if row is None:
            row = self.rows[index] = _LazyRow(index + MIN_CODE, self.model, self.sums)
        return row


@functools.cache
def _model_tables(model: CostModel) -> _ModelTables:
    if not isinstance(model, CostModel):  # a labelled model: its codes are named on demand
        return _ModelTables(_LazyTable(model, False), _LazyTable(model, True), {})
    return _ModelTables(model.mul.tolist(), model.add.tolist(), {})


_NO_EDGES: tuple[tuple[int, int], ...] = ()


def _make_own(adjacency: list[dict[int, int]], nodes: Iterable[int], own: int) -> int:
    """Replaces ``adjacency[u]`` by a private copy for each of `nodes` whose bit in `own` is not
    set yet; returns `own` with their bits set."""
    for u in nodes:
        if not own >> u & 1:
            adjacency[u] = dict(adjacency[u])
            own |= 1 << u
    return own


def _recount(classes: dict[tuple[int, Any], int], old: int | None, new: int | None, shape: Any) -> None:
    """Moves one edge to the far end `shape` (a shape, or its index) from class (old, shape) to
    (new, shape) (None: no edge)."""
    if old is not None:
        key = (old, shape)
        left = classes[key] - 1
        if left:
            classes[key] = left
        else:
            del classes[key]
    if new is not None:
        key = (new, shape)
        classes[key] = classes.get(key, 0) + 1


class Eliminator:
    """Elimination state of one graph: performs, prices and records eliminations.

    Edges carry only their code: shapes are per node and never change under elimination
    (`Graph.node_shapes`). Elimination costs are cached per vertex (eliminating v changes the
    costs of v's neighbours only, and the cached ones are updated by the terms that change), and `neighbour_change` previews an elimination's effect on
    the neighbours' costs without changing the state (for the LMMD and MOMR heuristics).
    `copy` is a cheap snapshot: the copies share the adjacency dicts until one of them changes a
    dict (copy on write), so a search can keep one state per node of its tree.

    `count_edge_classes` makes a state also count each node's edges by class (code and the far
    end's shape): a cost is a sum of one term per class pair, so pricing a vertex and updating
    its cached cost read its classes (a handful on real graphs) instead of its edges (hundreds
    next to a hub or after fill-in). `greedy` turns it on; copies price through the edges.

    Node ids follow `Graph`: inputs 1..num_inputs, vertex k is ``num_inputs + k``.

    Attributes:
      graph: the graph (read only).
      model: its cost model.
      preds, succs: per node id, ``{neighbour node id: code}`` (zero partials are not edges).
        Read only: the dicts may be shared with copies.
      src_shape, dst_shape: per node id, its 2-D shape as an edge's source / destination.
    """

    __slots__ = ("graph", "model", "num_inputs", "src_shape", "dst_shape", "preds", "succs", "_remaining",
                 "_mul", "_add", "_model_pairs", "_pair_cache", "_cost", "_own_preds", "_own_succs",
                 "_succ_keys", "_in_classes", "_out_classes", "_shapes", "_src_id", "_dst_id", "_id_pairs")

    def __init__(self, graph: Graph, model: CostModel | None = None):
        self.graph = graph
        self.model = model if model is not None else cost_model_of(graph)
        self.num_inputs = graph.num_inputs
        # 2-D shapes, or R structural dims per node for a graph with labelled structures.
        src_shape, dst_shape = graph.node_dims()
        self.src_shape: list[Shape2D] = [tuple(int(a) for a in row) for row in src_shape]
        self.dst_shape: list[Shape2D] = [tuple(int(a) for a in row) for row in dst_shape]
        n = graph.num_inputs + graph.num_vertices + 1
        self.preds: list[dict[int, int]] = [{} for _ in range(n)]
        self.succs: list[dict[int, int]] = [{} for _ in range(n)]
        for e in graph.edges:
            if e.code != 0:
                self.succs[e.src][e.dst] = e.code
                self.preds[e.dst][e.src] = e.code
        # Bit k set: vertex k is an intermediate not yet eliminated (an int: free to snapshot).
        # Built from a binary string: summing the powers of two would be quadratic in V.
        flags = ["0"] * (graph.num_vertices + 1)
        for k in graph.intermediates:
            flags[k] = "1"
        self._remaining = int("".join(reversed(flags)), 2)
        self._mul, self._add, self._model_pairs = _model_tables(self.model)
        # Multiplications per (in code, out code, p, v, c): a pure function of the graph, so
        # copies share it.
        self._pair_cache: dict[tuple[int, int, int, int, int], int] = {}
        self._cost: dict[int, int] = {}
        # Bit u set: this state may change node u's preds / succs dict in place (copy on write).
        # Bitmasks rather than sets: a search keeps many states, and ints cost the garbage
        # collector nothing. -1 (every bit set): nothing is shared yet.
        self._own_preds = self._own_succs = -1
        # Per node id, tuple(sorted(succs[u].items())), kept up to date once `edge_key` is first
        # asked for. Tuples of ints rather than frozensets: the garbage collector stops tracking
        # them, which matters in a search that keeps many states.
        self._succ_keys: list[tuple[tuple[int, int], ...]] | None = None
        # Once `count_edge_classes` is called (None: not counted): per node id, {(code, index of
        # the predecessor's source shape): edges} and {(code, index of the successor's
        # destination shape): edges}; the distinct shapes those index, each node's source and
        # destination shape index (small ints hash fast, tuples of tuples do not), and the pair
        # costs by (in code, out code, c, v, p shape indices).
        self._in_classes: list[dict[tuple[int, int], int]] | None = None
        self._out_classes: list[dict[tuple[int, int], int]] | None = None
        self._shapes: list[Shape2D] = []
        self._src_id: list[int] = []
        self._dst_id: list[int] = []
        self._id_pairs: dict[tuple[int, int, int, int, int], int] = {}

    def count_edge_classes(self) -> None:
        """From now on this state counts each node's edges per class (code, far end's shape) and
        prices through the classes: the same costs, in time that grows with the classes instead
        of the edges of the vertices involved. Costs O(edges) once; copies do not count."""
        if self._in_classes is not None:
            return
        n = len(self.preds)
        in_classes: list[dict[tuple[int, int], int]] = [{} for _ in range(n)]
        out_classes: list[dict[tuple[int, int], int]] = [{} for _ in range(n)]
        index: dict[Shape2D, int] = {}
        self._src_id = src = [index.setdefault(shape, len(index)) for shape in self.src_shape]
        self._dst_id = dst = [index.setdefault(shape, len(index)) for shape in self.dst_shape]
        self._shapes, self._id_pairs = list(index), {}
        for u in range(n):
            classes = out_classes[u]
            for c, code in self.succs[u].items():
                key = (code, dst[c])
                classes[key] = classes.get(key, 0) + 1
                key = (code, src[u])
                in_classes[c][key] = in_classes[c].get(key, 0) + 1
        self._in_classes, self._out_classes = in_classes, out_classes

    def edge_classes(self, vertex: int) -> tuple[dict[tuple[int, Shape2D], int], dict[tuple[int, Shape2D], int]]:
        """(in-edges, out-edges) of `vertex` (a vertex number) counted per class: {(code, the
        predecessor's source shape): edges}, {(code, the successor's destination shape): edges}.

        Counted now from the edges, or read off the state's own counts once `count_edge_classes`
        was called; new dicts either way.
        """
        node = self.num_inputs + vertex
        if self._in_classes is not None:
            shapes = self._shapes
            return ({(code, shapes[i]): n for (code, i), n in self._in_classes[node].items()},
                    {(code, shapes[i]): n for (code, i), n in self._out_classes[node].items()})
        ins: dict[tuple[int, Shape2D], int] = {}
        outs: dict[tuple[int, Shape2D], int] = {}
        for p, code in self.preds[node].items():
            _recount(ins, None, code, self.src_shape[p])
        for c, code in self.succs[node].items():
            _recount(outs, None, code, self.dst_shape[c])
        return ins, outs

    def _shape_pair(self, key: tuple[int, int, Shape2D, Shape2D, Shape2D]) -> int:
        """``CostModel.pair_cost(*key)``, memoised per cost model."""
        value = self._model_pairs.get(key)
        if value is None:
            value = self._model_pairs[key] = self.model.pair_cost(*key)
        return value

    def _pair_by_id(self, key: tuple[int, int, int, int, int]) -> int:
        """`_shape_pair` of (in code, out code, c, v, p shape indices), memoised per state."""
        shapes = self._shapes
        value = self._id_pairs[key] = self._shape_pair(
            (key[0], key[1], shapes[key[2]], shapes[key[3]], shapes[key[4]]))
        return value

    def _into(self, node: int, code: int, c_id: int) -> int:
        """Σ over the in-edges q->node of the multiplications of (node->c)(q->node), where node->c
        has `code` and c the destination shape of index `c_id` (edge classes counted)."""
        pairs, v_id = self._id_pairs, self._src_id[node]
        total = 0
        for (q_code, q_id), count in self._in_classes[node].items():
            key = (q_code, code, c_id, v_id, q_id)
            value = pairs.get(key)
            total += count * (self._pair_by_id(key) if value is None else value)
        return total

    def _out_of(self, node: int, code: int, p_id: int) -> int:
        """Σ over the out-edges node->s of the multiplications of (node->s)(p->node), where p->node
        has `code` and p the source shape of index `p_id` (edge classes counted)."""
        pairs, v_id = self._id_pairs, self._src_id[node]
        total = 0
        for (s_code, s_id), count in self._out_classes[node].items():
            key = (code, s_code, s_id, v_id, p_id)
            value = pairs.get(key)
            total += count * (self._pair_by_id(key) if value is None else value)
        return total

    def _cost_by_classes(self, node: int) -> int:
        """`_cost_with` of node's own edges, one term per (in class, out class)."""
        return sum(count * self._out_of(node, code, shape) for (code, shape), count in self._in_classes[node].items())

    def copy(self) -> Eliminator:
        """An independent snapshot of the state (shares the adjacency dicts until either changes)."""
        new = object.__new__(Eliminator)
        new.graph, new.model, new.num_inputs = self.graph, self.model, self.num_inputs
        new.src_shape, new.dst_shape = self.src_shape, self.dst_shape
        new._mul, new._add, new._model_pairs, new._pair_cache = self._mul, self._add, self._model_pairs, self._pair_cache
        new.preds, new.succs = list(self.preds), list(self.succs)
        new._remaining = self._remaining
        new._succ_keys = None if self._succ_keys is None else list(self._succ_keys)
        new._cost = dict(self._cost)
        new._in_classes = new._out_classes = None  # the counts are this state's own, never shared
        # From now on every dict is shared by both states.
        self._own_preds = self._own_succs = new._own_preds = new._own_succs = 0
        return new

    @property
    def remaining(self) -> list[int]:
        """Vertex numbers of the intermediates not yet eliminated, ascending."""
        # Reading the bits off the binary string is linear; shifting the int per bit is quadratic.
        return [k for k, bit in enumerate(reversed(bin(self._remaining)[2:])) if bit == "1"]

    def _pair(self, in_code: int, out_code: int, p: int, v: int, c: int) -> int:
        key = (in_code, out_code, p, v, c)
        value = self._pair_cache.get(key)
        if value is None:
            shapes = (in_code, out_code, self.dst_shape[c], self.src_shape[v], self.src_shape[p])
            value = self._model_pairs.get(shapes)
            if value is None:
                value = self._model_pairs[shapes] = self.model.pair_cost(*shapes)
            self._pair_cache[key] = value
        return value

    def _cost_with(self, node: int, preds: dict[int, int], succs: dict[int, int]) -> int:
        # The hottest loop of every Python caller (heuristics, gymnasium env): the cache is read
        # inline, and `_pair` is called only on a miss.
        cache = self._pair_cache
        total = 0
        for c, oc in succs.items():
            for p, ic in preds.items():
                value = cache.get((ic, oc, p, node, c))
                total += self._pair(ic, oc, p, node, c) if value is None else value
        return total

    def _new_code(self, old: int | None, in_code: int, out_code: int) -> int:
        """Code of p->c after adding the product of (in_code, out_code) into `old` (None: no edge)."""
        new = self._mul[in_code - MIN_CODE][out_code - MIN_CODE]
        return new if old is None else self._add[old - MIN_CODE][new - MIN_CODE]

    def elimination_cost(self, vertex: int) -> int:
        """Multiplications that eliminating `vertex` (a vertex number) costs now (cached; does not
        change the state)."""
        value = self._cost.get(vertex)
        if value is None:
            node = self.num_inputs + vertex
            if self._in_classes is not None:
                value = self._cost[vertex] = self._cost_by_classes(node)
            else:
                value = self._cost[vertex] = self._cost_with(node, self.preds[node], self.succs[node])
        return value

    def markowitz_key(self, vertex: int) -> tuple[int, int]:
        """(multiplications that eliminating `vertex` costs now, its products if that is 0, else 0):
        the score of minimal Markowitz (`alphagrad.graph.markowitz`), read from the vertex's own edges.

        On the exact model many eliminations multiply nothing (identities, index maps), yet each
        product still makes or feeds an edge that later eliminations pay for. Taking the free ones
        in vertex order filled a 10,000-equation chemical-kinetics integrator (a state vector read
        entry by entry and restacked every step) into an order of 6.8 M multiplications, 100x
        reverse mode, in 21 s; the fewest products (in-degree x out-degree, the classic Markowitz
        count) first: 335,232 in 0.5 s. Eliminations that cost something keep the classic rule
        (ties to the lowest number), so on a scalar graph under the AlphaGrad model, where no
        product is free, the order is the reference's."""
        cost = self.elimination_cost(vertex)
        if cost:
            return cost, 0
        node = self.num_inputs + vertex
        return 0, len(self.preds[node]) * len(self.succs[node])

    def fill_in(self, vertex: int) -> int:
        """Number of edges p -> c that eliminating `vertex` would create (not absorbed)."""
        node = self.num_inputs + vertex
        succs = self.succs[node]
        return sum(1 for p in self.preds[node] for c in succs if c not in self.succs[p])

    def neighbour_change(self, vertex: int) -> int:
        """Sum over remaining neighbours u of (cost of u after eliminating `vertex` - cost of u now)."""
        node = self.num_inputs + vertex
        I = self.num_inputs
        preds, succs = self.preds[node], self.succs[node]
        if self._in_classes is not None:
            return self._neighbour_change_counted(node)
        total = 0
        for p, in_code in preds.items():
            if p <= I or not self._remaining >> (p - I) & 1:  # inputs are never eliminated
                continue
            new_succs = dict(self.succs[p])
            del new_succs[node]
            for c, out_code in succs.items():
                new_succs[c] = self._new_code(new_succs.get(c), in_code, out_code)
            total += self._cost_with(p, self.preds[p], new_succs) - self.elimination_cost(p - I)
        for c, out_code in succs.items():
            if not self._remaining >> (c - I) & 1:
                continue
            new_preds = dict(self.preds[c])
            del new_preds[node]
            for p, in_code in preds.items():
                new_preds[p] = self._new_code(new_preds.get(p), in_code, out_code)
            total += self._cost_with(c, new_preds, self.succs[c]) - self.elimination_cost(c - I)
        return total

    def _neighbour_change_counted(self, node: int) -> int:
        """`neighbour_change` with edge classes counted: the changes `_rewrite_counted` would make,
        priced per class and per kind of change, without making them."""
        I, remaining = self.num_inputs, self._remaining
        preds, succs, all_succs = self.preds[node], self.succs[node], self.succs
        mul, add, src, dst = self._mul, self._add, self._src_id, self._dst_id
        changes: dict[int, dict[tuple[int | None, int, int], int]] = {
            u: {} for u in (*preds, *succs) if u > I and remaining >> (u - I) & 1}
        for c, out_code in succs.items():
            c_changes = changes.get(c)
            for p, in_code in preds.items():
                p_changes = changes.get(p)
                if p_changes is None and c_changes is None:
                    continue
                new = mul[in_code - MIN_CODE][out_code - MIN_CODE]
                old = all_succs[p].get(c)
                code = new if old is None else add[old - MIN_CODE][new - MIN_CODE]
                if old != code:
                    if p_changes is not None:
                        key = (old, code, dst[c])
                        p_changes[key] = p_changes.get(key, 0) + 1
                    if c_changes is not None:
                        key = (old, code, src[p])
                        c_changes[key] = c_changes.get(key, 0) + 1
        return sum(self._cost_change(node, u, kinds) for u, kinds in changes.items())

    def eliminate(self, vertex: int) -> int:
        """Eliminates `vertex` (a vertex number) and returns its multiplications."""
        cost = self.elimination_cost(vertex)
        self._rewrite(vertex, None)
        return cost

    def step(self, vertex: int) -> Step:
        """Eliminates `vertex` (a vertex number) and returns the record of what it did
        (``step(v).cost == eliminate(v)``; `eliminate` is faster where no record is needed)."""
        node = self.num_inputs + vertex
        preds, succs = tuple(self.preds[node]), tuple(self.succs[node])
        products: list[Product] = []
        self._rewrite(vertex, products)
        return Step(vertex, preds, succs, tuple(products))

    def _plan_step(self, vertex: int) -> Step:
        """`step` for `plan`: a fresh state that prices nothing (no cached costs, no edge classes,
        no snapshots), so the elimination only rewrites the edges and records the products, their
        multiplications by shapes (memoised per cost model): ~5 us a product through `_rewrite`'s
        class counts, a third of the first call at 10,000 equations of benchmarks/scale.py's
        many-io (1.75 M products)."""
        node = self.num_inputs + vertex
        all_preds, all_succs = self.preds, self.succs
        preds, succs = all_preds[node], all_succs[node]
        mul, add, pairs = self._mul, self._add, self._model_pairs
        dst_shape, src_shape = self.dst_shape, self.src_shape
        v_shape = src_shape[node]
        rows = [(p, in_code, mul[in_code - MIN_CODE], all_succs[p], src_shape[p]) for p, in_code in preds.items()]
        products: list[Product] = []
        append = products.append
        for c, out_code in succs.items():
            c_preds, c_shape, out_index = all_preds[c], dst_shape[c], out_code - MIN_CODE
            for p, in_code, mul_row, p_succs, p_shape in rows:
                new = mul_row[out_index]
                old = p_succs.get(c)
                key = (in_code, out_code, c_shape, v_shape, p_shape)
                muls = pairs.get(key)
                if muls is None:
                    muls = self._shape_pair(key)
                if old is None:
                    p_succs[c] = c_preds[p] = new
                    append(Product(p, node, c, in_code, out_code, new, 0, 0, muls))
                else:
                    code = add[old - MIN_CODE][new - MIN_CODE]
                    p_succs[c] = c_preds[p] = code
                    append(Product(p, node, c, in_code, out_code, new, old, code, muls))
        for c in succs:
            del all_preds[c][node]
        for p in preds:
            del all_succs[p][node]
        all_preds[node], all_succs[node] = {}, {}
        self._remaining &= ~(1 << vertex)
        return Step(vertex, tuple(preds), tuple(succs), tuple(products))

    def _rewrite(self, vertex: int, record: list[Product] | None) -> None:
        """The elimination itself; appends a `Product` per product to `record` unless it is None."""
        I = self.num_inputs
        node = I + vertex
        all_preds, all_succs = self.preds, self.succs
        preds, succs = all_preds[node], all_succs[node]
        # Copy on write: the neighbours' dicts this elimination changes must be this state's own.
        if self._own_succs != -1:
            self._own_succs = _make_own(all_succs, preds, self._own_succs)
        if self._own_preds != -1:
            self._own_preds = _make_own(all_preds, succs, self._own_preds)
        mul, add, pair = self._mul, self._add, self._pair
        # The neighbours' cached elimination costs are updated by the terms that change rather
        # than recomputed: a neighbour of high degree (a value read by every step of an unrolled
        # loop) would otherwise cost its whole degree at each of its neighbours' eliminations.
        cost = self._cost
        cost.pop(vertex, None)
        delta = {u: 0 for u in (*preds, *succs) if u - I in cost}
        # Updating a cached cost reads p's in-edges (for a changed p->c) or c's out-edges (for a
        # changed p->c), which this elimination leaves alone: p -> v -> p would be a cycle.
        if self._in_classes is None:
            for c, out_code in succs.items():
                c_preds, c_succs = all_preds[c], all_succs[c]
                track_c = c in delta
                for p, in_code in preds.items():
                    p_succs = all_succs[p]
                    new = mul[in_code - MIN_CODE][out_code - MIN_CODE]
                    old = p_succs.get(c)
                    code = new if old is None else add[old - MIN_CODE][new - MIN_CODE]
                    if p in delta:  # p's out-edge p->c goes from `old` to `code`
                        delta[p] += sum(pair(q_code, code, q, p, c) - (0 if old is None else pair(q_code, old, q, p, c))
                                        for q, q_code in all_preds[p].items())
                    if track_c:  # c's in-edge p->c goes from `old` to `code`
                        delta[c] += sum(pair(code, s_code, p, c, s) - (0 if old is None else pair(old, s_code, p, c, s))
                                        for s, s_code in c_succs.items())
                    p_succs[c] = c_preds[p] = code
                    if record is not None:
                        record.append(Product(p, node, c, in_code, out_code, new, 0 if old is None else old,
                                              0 if old is None else code, pair(in_code, out_code, p, node, c)))
            for c, out_code in succs.items():
                del all_preds[c][node]
                if c in delta:
                    delta[c] -= sum(pair(out_code, s_code, node, c, s) for s, s_code in all_succs[c].items())
            for p, in_code in preds.items():
                del all_succs[p][node]
                if p in delta:
                    delta[p] -= sum(pair(q_code, in_code, q, p, node) for q, q_code in all_preds[p].items())
        else:
            self._rewrite_counted(node, preds, succs, delta, record)
        for u, change in delta.items():
            cost[u - I] += change
        all_preds[node], all_succs[node] = {}, {}
        keys = self._succ_keys
        if keys is not None:
            for p in preds:
                keys[p] = tuple(sorted(all_succs[p].items()))
            keys[node] = _NO_EDGES
        self._remaining &= ~(1 << vertex)

    def _rewrite_counted(self, node: int, preds: dict[int, int], succs: dict[int, int], delta: dict[int, int],
                         record: list[Product] | None) -> None:
        """`_rewrite`'s edge changes where edge classes are counted: the classes follow the edges,
        and each tracked neighbour's cost change is summed per class of the edges it reads and
        per kind of change (old code, new code, far end's shape), not per edge."""
        all_preds, all_succs = self.preds, self.succs
        in_classes, out_classes = self._in_classes, self._out_classes
        mul, add = self._mul, self._add
        src, dst = self._src_id, self._dst_id
        # Per tracked neighbour: {(old code or None, new code, far end's shape): edges changed so}.
        changes: dict[int, dict[tuple[int | None, int, int], int]] = {u: {} for u in delta}
        # What the inner loop reads of each predecessor, looked up once per elimination.
        rows = [(p, mul[in_code - MIN_CODE], all_succs[p], out_classes[p], src[p], changes.get(p))
                for p, in_code in preds.items()]
        for c, out_code in succs.items():
            c_preds, c_in, c_dst, out_index = all_preds[c], in_classes[c], dst[c], out_code - MIN_CODE
            c_changes = changes.get(c)
            for p, mul_row, p_succs, p_out, p_src, p_changes in rows:
                new = mul_row[out_index]
                old = p_succs.get(c)
                code = new if old is None else add[old - MIN_CODE][new - MIN_CODE]
                if old != code:
                    p_succs[c] = c_preds[p] = code
                    _recount(p_out, old, code, c_dst)
                    _recount(c_in, old, code, p_src)
                    if p_changes is not None:
                        key = (old, code, c_dst)
                        p_changes[key] = p_changes.get(key, 0) + 1
                    if c_changes is not None:
                        key = (old, code, p_src)
                        c_changes[key] = c_changes.get(key, 0) + 1
                if record is not None:
                    in_code = preds[p]
                    record.append(Product(p, node, c, in_code, out_code, new, 0 if old is None else old, 0 if old is None
                                          else code, self._shape_pair((in_code, out_code, self.dst_shape[c],
                                                                       self.src_shape[node], self.src_shape[p]))))
        for c, out_code in succs.items():
            del all_preds[c][node]
            _recount(in_classes[c], out_code, None, src[node])
        for p, in_code in preds.items():
            del all_succs[p][node]
            _recount(out_classes[p], in_code, None, dst[node])
        for u, kinds in changes.items():
            delta[u] += self._cost_change(node, u, kinds)
        in_classes[node], out_classes[node] = {}, {}

    def _cost_change(self, node: int, u: int, kinds: dict[tuple[int | None, int, int], int]) -> int:
        """How much eliminating `node` changes the cost of its neighbour u (edge classes counted):
        u loses its edge to or from `node`, and its edges changed as `kinds` counts them ({(old code or
        None, new code, far end's shape): edges}). Reads u's edges on the side that does not change."""
        if u in self.succs[node]:  # u's in-edges change: priced against its out-edges
            total = -self._out_of(u, self.succs[node][u], self._src_id[node])
            for (old, code, shape), count in kinds.items():
                total += count * (self._out_of(u, code, shape) - (0 if old is None else self._out_of(u, old, shape)))
        else:  # u's out-edges change: priced against its in-edges
            total = -self._into(u, self.preds[node][u], self._dst_id[node])
            for (old, code, shape), count in kinds.items():
                total += count * (self._into(u, code, shape) - (0 if old is None else self._into(u, old, shape)))
        return total

    def greedy(self, key: Callable[[int], Any], *, reach: int = 1) -> tuple[list[int], int]:
        """Eliminates every remaining vertex, always the one of smallest ``(key(v), v)``.

        Eliminating v changes only the edges of v's neighbours, so only the keys that read them
        are recomputed. With ``reach=1``, `key` must depend only on the vertex's own edges (its
        preds, succs and their codes), as `elimination_cost` and
        `alphagrad.graph.markowitz_degree` do, plus anything static; with ``reach=2`` it may
        also read the edges of the vertex's neighbours, as `fill_in` and `neighbour_change` do,
        and the neighbours of v's non-input neighbours are re-scored too. (An input's successors
        are never re-scored through it: `neighbour_change` skips inputs, and the fill-in of u
        changes through its predecessor p only where p gains or loses a successor c of u, and u
        is then a neighbour of c, itself a neighbour of v.) The vertices wait in a heap with lazy
        invalidation (an entry is live while its key is the vertex's current key), so with
        bounded degrees a whole order costs O((E + fill-in) log V) key evaluations and heap
        operations plus the eliminations themselves, instead of a scan of every remaining vertex
        per step. The order equals the one of that scan exactly. The state counts its edge
        classes (`count_edge_classes`) first, so that a key and the cached costs it reads cost
        the vertex's classes, not its edges, however many edges fill-in or a hub gives it.

        Args:
          key: vertex number -> comparable score (numbers, or tuples of them, compared with ==).
          reach: 1 or 2, how far from a vertex its key reads edges (see above).

        Returns:
          (order: the vertex numbers in elimination order, multiplications of the eliminations).
        """
        if reach not in (1, 2):
            raise ValueError(f"reach must be 1 or 2, got {reach!r}")
        I = self.num_inputs
        self.count_edge_classes()
        current = {k: key(k) for k in self.remaining}  # vertex number -> its key now
        heap = [(score, k) for k, score in current.items()]
        heapq.heapify(heap)
        order: list[int] = []
        total = 0
        missing = object()
        while heap:
            score, k = heapq.heappop(heap)
            if current.get(k, missing) != score:
                continue  # eliminated, or a key the vertex no longer has
            del current[k]
            node = I + k
            neighbours: Iterable[int] = [*self.preds[node], *self.succs[node]]
            total += self.eliminate(k)
            order.append(k)
            if reach == 2:
                around = set(neighbours)
                for x in neighbours:
                    if x > I:
                        around.update(self.preds[x])
                        around.update(self.succs[x])
                neighbours = around
            for u in neighbours:
                old = current.get(u - I, missing)
                if old is missing:  # an input, an output, or eliminated already
                    continue
                new = key(u - I)
                if new != old:
                    current[u - I] = new
                    heapq.heappush(heap, (new, u - I))
        return order, total

    def edge_key(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """The current edges and their codes as a hashable key (equal exactly for equal edges):
        per node id, its (successor, code) pairs, sorted.

        The first call makes this state (and its later copies) keep the per-node sets up to date,
        so that a search that keys every state pays only for the nodes each elimination changes.
        """
        if self._succ_keys is None:
            self._succ_keys = [tuple(sorted(succs.items())) for succs in self.succs]
        return tuple(self._succ_keys)


def elimination_costs(graph: Graph, order: Iterable[int], *, complete: bool = True) -> list[int]:
    """Multiplications of each step of `order` (validated; a prefix is allowed with complete=False)."""
    steps = check_order(graph, order, complete=complete)
    eliminator = Eliminator(graph)
    # Priced per class of edges: on tensor graphs with fill-in a vertex has far fewer classes
    # than edges, and the per-node pair cache would gain an entry per product.
    eliminator.count_edge_classes()
    return [eliminator.eliminate(k) for k in steps]


def plan(graph: Graph, order: Iterable[int]) -> tuple[Step, ...]:
    """What eliminating `order` does, product by product (``sum(s.cost for s in plan) == cost``).

    Args:
      graph: the graph.
      order: [num_intermediates] vertex numbers (validated).

    Returns:
      One `Step` per vertex of `order`, in order.

    Raises:
      OrderError: `order` is not a permutation of ``graph.intermediates``.
    """
    eliminator = Eliminator(graph)
    # Without the cyclic garbage collector meanwhile: the products are millions of new tuples
    # (none in a cycle), and each collection rescans every one made so far (many-io at 3,021
    # equations: 2.2 s with it, 0.6-1.0 s without).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return tuple(eliminator._plan_step(k) for k in check_order(graph, order))
    finally:
        if enabled:
            gc.enable()
