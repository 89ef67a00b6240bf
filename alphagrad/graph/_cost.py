"""The cost model (lookup tables, as data) and exact elimination on a `Graph`.

A cost model answers three questions for a pair of structure codes (in = code of p->v,
out = code of v->c): which of the six size factors (c1, c2, v1, v2, p1, p2) the product
(v->c)(p->v) multiplies together (its multiplication count), the code of the product, and the
code of the sum when the product is added into an existing edge p->c (additions are free).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
from collections.abc import Iterable, Sequence

import numpy as np

from alphagrad.errors import AlphagradError, OrderError
from alphagrad.graph._graph import Graph, Shape2D

__all__ = [
    "CODES",
    "MAX_CODE",
    "MIN_CODE",
    "NUM_CODES",
    "CostModel",
    "cost_model",
    "cost_models",
    "cost",
    "elimination_costs",
    "check_order",
    "Eliminator",
]

#: Structure codes run from MIN_CODE to MAX_CODE (0 = no edge). Every code table (the cost
#: models', the env cores', the policy network's code embedding) is indexed by ``code - MIN_CODE``.
MIN_CODE = -10
MAX_CODE = 11
#: All structure codes, in table order.
CODES = tuple(range(MIN_CODE, MAX_CODE + 1))
#: The number of structure codes (22): the length of each code axis of a table.
NUM_CODES = len(CODES)
FACTOR_NAMES = ("c1", "c2", "v1", "v2", "p1", "p2")


@dataclasses.dataclass(frozen=True, eq=False)
class CostModel:
    """Lookup tables of a cost model.

    Attributes:
      name: the model's name, recorded in graphs and order files.
      mask: bool[22, 22, 6], ``mask[in - MIN_CODE, out - MIN_CODE]`` selects the size factors
        (c1, c2, v1, v2, p1, p2) whose product is the multiplication count of one edge pair.
      mul: int32[22, 22], code of the product edge p->c.
      add: int32[22, 22], ``add[old - MIN_CODE, new - MIN_CODE]`` is the code of a sum.
      unit_pairs: (in, out) pairs whose product costs exactly 1 although their mask is empty
        (the scaling of two constant multiples of the identity).
    """

    name: str
    mask: np.ndarray
    mul: np.ndarray
    add: np.ndarray
    unit_pairs: frozenset[tuple[int, int]] = frozenset()

    def pair_cost(self, in_code: int, out_code: int, c: Shape2D, v: Shape2D, p: Shape2D) -> int:
        """Multiplications of the product (v->c)(p->v) for the given 2-D shapes."""
        if (in_code, out_code) in self.unit_pairs:
            return 1
        selected = self.mask[in_code - MIN_CODE, out_code - MIN_CODE]
        if not selected.any() or in_code == 0 or out_code == 0:
            return 0
        factors = (c[0], c[1], abs(v[0]), abs(v[1]), p[0], p[1])
        total = 1
        for keep, size in zip(selected, factors):
            if keep:
                total *= size if size > 0 else 1
        return int(total)

    def product_code(self, in_code: int, out_code: int) -> int:
        return int(self.mul[in_code - MIN_CODE, out_code - MIN_CODE])

    def sum_code(self, old_code: int, new_code: int) -> int:
        return int(self.add[old_code - MIN_CODE, new_code - MIN_CODE])


def _parse_tables(name: str, data: dict) -> CostModel:
    mask = np.zeros((NUM_CODES, NUM_CODES, len(FACTOR_NAMES)), dtype=bool)
    mul = np.zeros((NUM_CODES, NUM_CODES), dtype=np.int32)
    add = np.zeros((NUM_CODES, NUM_CODES), dtype=np.int32)
    for key, entry in data["contraction"].items():
        a, b = (int(x) - MIN_CODE for x in key.split(","))
        for factor in entry["mask"]:
            mask[a, b, FACTOR_NAMES.index(factor)] = True
        mul[a, b] = entry["mul"]
    for key, code in data["add"].items():
        a, b = (int(x) - MIN_CODE for x in key.split(","))
        add[a, b] = code
    for arr in (mask, mul, add):
        arr.setflags(write=False)
    # Two constant multiples of the identity multiply with a single scalar product; the AlphaGrad
    # tables encode this only for (10, 10), outside the masks.
    unit_pairs = frozenset(tuple(pair) for pair in data.get("unit_pairs", [[10, 10]]))
    return CostModel(name, mask, mul, add, unit_pairs=unit_pairs)


_MODEL_FILES = {"alphagrad-2024": "alphagrad-2024.json", "exact": "exact.json"}


def cost_models() -> list[str]:
    """Names of the available cost models."""
    return list(_MODEL_FILES)


@functools.cache
def cost_model(name: str = "alphagrad-2024") -> CostModel:
    """Loads the named cost model from the package data.

    Raises:
      AlphagradError: unknown name; the message lists the known models.
    """
    if name not in _MODEL_FILES:
        raise AlphagradError(f"unknown cost model {name!r}; known models: {', '.join(_MODEL_FILES)}")
    text = importlib.resources.files("alphagrad.graph").joinpath("data", _MODEL_FILES[name]).read_text()
    return _parse_tables(name, json.loads(text))


class Eliminator:
    """Mutable elimination state of one graph, for Python-side scoring and greedy searches.

    Edges carry only their code: shapes are per node and never change under elimination
    (`Graph.node_shapes`). Elimination costs are cached per vertex (eliminating v changes the
    costs of v's neighbours only), and `neighbour_change` previews an elimination's effect on
    the neighbours' costs without changing the state (for the LMMD and MOMR heuristics).

    Node ids follow `Graph`: inputs 1..num_inputs, vertex k is ``num_inputs + k``.

    Attributes:
      preds, succs: per node id, ``{neighbour node id: code}`` (zero partials are not edges).
      src_shape, dst_shape: per node id, its 2-D shape as an edge's source / destination.
      remaining: vertex numbers of the intermediates not yet eliminated.
      eliminated: vertex numbers eliminated so far.
    """

    def __init__(self, graph: Graph, model: CostModel | None = None):
        self.graph = graph
        self.model = model if model is not None else cost_model(graph.cost_model)
        self.num_inputs = graph.num_inputs
        src_shape, dst_shape = graph.node_shapes()
        self.src_shape: list[Shape2D] = [(int(a), int(b)) for a, b in src_shape]
        self.dst_shape: list[Shape2D] = [(int(a), int(b)) for a, b in dst_shape]
        n = graph.num_inputs + graph.num_vertices + 1
        self.preds: list[dict[int, int]] = [{} for _ in range(n)]
        self.succs: list[dict[int, int]] = [{} for _ in range(n)]
        for e in graph.edges:
            if e.code != 0:
                self.succs[e.src][e.dst] = e.code
                self.preds[e.dst][e.src] = e.code
        self.remaining: set[int] = set(graph.intermediates)
        self.eliminated: set[int] = set()
        self._cost: dict[int, int] = {}
        self._pair_cache: dict[tuple[int, int, int, int, int], int] = {}

    def _pair(self, in_code: int, out_code: int, p: int, v: int, c: int) -> int:
        key = (in_code, out_code, p, v, c)
        value = self._pair_cache.get(key)
        if value is None:
            value = self.model.pair_cost(in_code, out_code, self.dst_shape[c], self.src_shape[v], self.src_shape[p])
            self._pair_cache[key] = value
        return value

    def _cost_with(self, node: int, preds: dict[int, int], succs: dict[int, int]) -> int:
        pair = self._pair
        return sum(pair(ic, oc, p, node, c) for c, oc in succs.items() for p, ic in preds.items())

    def elimination_cost(self, vertex: int) -> int:
        """Multiplications that eliminating `vertex` (a vertex number) costs now (cached; does not
        change the state)."""
        value = self._cost.get(vertex)
        if value is None:
            node = self.num_inputs + vertex
            value = self._cost[vertex] = self._cost_with(node, self.preds[node], self.succs[node])
        return value

    def fill_in(self, vertex: int) -> int:
        """Number of edges p -> c that eliminating `vertex` would create (not absorbed)."""
        node = self.num_inputs + vertex
        succs = self.succs[node]
        return sum(1 for p in self.preds[node] for c in succs if c not in self.succs[p])

    def neighbour_change(self, vertex: int) -> int:
        """Sum over remaining neighbours u of (cost of u after eliminating `vertex` - cost of u now)."""
        node = self.num_inputs + vertex
        I, model = self.num_inputs, self.model
        preds, succs = self.preds[node], self.succs[node]
        total = 0
        for p, in_code in preds.items():
            if p - I not in self.remaining:
                continue
            new_succs = dict(self.succs[p])
            del new_succs[node]
            for c, out_code in succs.items():
                new = model.product_code(in_code, out_code)
                old = new_succs.get(c)
                new_succs[c] = new if old is None else model.sum_code(old, new)
            total += self._cost_with(p, self.preds[p], new_succs) - self.elimination_cost(p - I)
        for c, out_code in succs.items():
            if c - I not in self.remaining:
                continue
            new_preds = dict(self.preds[c])
            del new_preds[node]
            for p, in_code in preds.items():
                new = model.product_code(in_code, out_code)
                old = new_preds.get(p)
                new_preds[p] = new if old is None else model.sum_code(old, new)
            total += self._cost_with(c, new_preds, self.succs[c]) - self.elimination_cost(c - I)
        return total

    def eliminate(self, vertex: int) -> int:
        """Eliminates `vertex` (a vertex number) and returns its multiplications."""
        model = self.model
        node = self.num_inputs + vertex
        cost = self.elimination_cost(vertex)
        preds, succs = self.preds[node], self.succs[node]
        for c, out_code in succs.items():
            for p, in_code in preds.items():
                new = model.product_code(in_code, out_code)
                old = self.succs[p].get(c)
                code = new if old is None else model.sum_code(old, new)
                self.succs[p][c] = code
                self.preds[c][p] = code
        for c in succs:
            del self.preds[c][node]
        for p in preds:
            del self.succs[p][node]
        I = self.num_inputs
        for u in (*preds, *succs):
            self._cost.pop(u - I, None)
        self.preds[node] = {}
        self.succs[node] = {}
        self._cost.pop(vertex, None)
        self.remaining.discard(vertex)
        self.eliminated.add(vertex)
        return cost


def check_order(graph: Graph, order: Iterable[int], *, complete: bool = True) -> list[int]:
    """Validates an elimination order and returns it as a list of ints.

    Args:
      graph: the graph the order is for.
      order: vertex numbers (1-based).
      complete: whether every intermediate vertex must appear.

    Raises:
      OrderError: naming the entry that is not a vertex number, out of range, an output, repeated,
        or (with ``complete``) the intermediates that are missing.
    """
    try:
        entries = list(order)
    except TypeError:
        raise OrderError(f"an order must be a sequence of vertex numbers, got {type(order).__name__}") from None
    outputs = set(graph.outputs)
    label = f" of graph {graph.name!r}" if graph.name else ""
    seen: dict[int, int] = {}
    clean: list[int] = []
    for position, entry in enumerate(entries):
        if isinstance(entry, (bool, np.bool_)) or not isinstance(entry, (int, np.integer)):
            raise OrderError(f"order entry {position} is {entry!r}, which is not a vertex number (an int)")
        k = int(entry)
        if not 1 <= k <= graph.num_vertices:
            raise OrderError(
                f"order entry {position} is {k}, which is not a vertex{label}: "
                f"vertex numbers run from 1 to {graph.num_vertices}"
            )
        if k in outputs:
            raise OrderError(
                f"order entry {position} is {graph.describe_vertex(k)}, an output vertex; "
                "outputs are never eliminated"
            )
        if k in seen:
            raise OrderError(f"vertex {k} appears twice in the order, at positions {seen[k]} and {position}")
        seen[k] = position
        clean.append(k)
    if complete:
        missing = [k for k in graph.intermediates if k not in seen]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (", ..." if len(missing) > 20 else "")
            raise OrderError(
                f"the order misses {len(missing)} of the {graph.num_intermediates} intermediate "
                f"vertices{label}: {shown}"
            )
    return clean


def elimination_costs(graph: Graph, order: Sequence[int], *, complete: bool = True) -> list[int]:
    """Multiplications of each step of `order` (validated; a prefix is allowed with complete=False)."""
    steps = check_order(graph, order, complete=complete)
    eliminator = Eliminator(graph)
    return [eliminator.eliminate(k) for k in steps]


def cost(graph: Graph, order) -> int:
    """Multiplications needed to accumulate the Jacobian of `graph` by eliminating in `order`.

    Args:
      graph: the elimination graph.
      order: "forward", "reverse", "markowitz", a list of vertex numbers, or an `OrderFile`.

    Raises:
      OrderError: the order is not a permutation of ``graph.intermediates``.
    """
    from alphagrad import orders as _orders  # orders depends on this module

    return int(sum(elimination_costs(graph, _orders.resolve(graph, order))))
