"""The cost model (lookup tables, as data) and the validation of elimination orders.

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
from collections.abc import Iterable

import numpy as np

from alphagrad.errors import AlphagradError, OrderError
from alphagrad.graph._graph import Graph

__all__ = [
    "CODES",
    "MAX_CODE",
    "MIN_CODE",
    "NUM_CODES",
    "CostModel",
    "cost_model",
    "cost_models",
    "extended_cost_model",
    "LabelledCostModel",
    "cost_model_of",
    "check_order",
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

    A model of the 2-D codes has C = 22 codes and rank R = 2; a graph with arrays of rank 3 or more
    is scored by an extension (`extended_cost_model`): codes from 12 on name labelled structures
    (`structures`), and its size factors are R axes per node.

    Attributes:
      name: the model's name, recorded in graphs and order files.
      mask: bool[C, C, 3R], ``mask[in - MIN_CODE, out - MIN_CODE]`` selects the size factors
        (c_1..c_R, v_1..v_R, p_1..p_R; for R = 2: c1, c2, v1, v2, p1, p2) whose product is the
        multiplication count of one edge pair.
      mul: int32[C, C], code of the product edge p->c.
      add: int32[C, C], ``add[old - MIN_CODE, new - MIN_CODE]`` is the code of a sum.
      unit_pairs: (in, out) pairs whose product costs exactly 1 although their mask is empty
        (the scaling of two constant multiples of the identity).
      structures: the `AxisTies` of codes 12, 13, ... (empty for the 2-D models).
    """

    name: str
    mask: np.ndarray
    mul: np.ndarray
    add: np.ndarray
    unit_pairs: frozenset[tuple[int, int]] = frozenset()
    structures: tuple = ()

    @property
    def rank(self) -> int:
        """R: the number of axes per node the size factors count (2 for the 2-D models)."""
        return self.mask.shape[-1] // 3

    @property
    def num_codes(self) -> int:
        """C: the number of codes the tables index (22 for the 2-D models)."""
        return self.mask.shape[0]

    def pair_cost(self, in_code: int, out_code: int, c, v, p) -> int:
        """Multiplications of the product (v->c)(p->v) for the nodes' sizes: 2-D shapes, or up
        to R axes each (padded with ones)."""
        if (in_code, out_code) in self.unit_pairs:
            return 1
        selected = self.mask[in_code - MIN_CODE, out_code - MIN_CODE]
        if not selected.any() or in_code == 0 or out_code == 0:
            return 0
        rank = self.rank
        factors = [1] * (3 * rank)
        for group, dims in enumerate((c, v, p)):
            for k, size in enumerate(dims):
                factors[group * rank + k] = abs(size) if group == 1 else size
        total = 1
        for keep, size in zip(selected, factors):
            if keep:
                # A negative size (the reference's "replicating" mark) counts as 1 (REFERENCE.md
                # 2.2); a zero-size axis leaves the joint loop empty: no multiplications.
                total *= size if size >= 0 else 1
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


class LabelledCostModel:
    """The exact model of a graph with labelled structures (arrays of rank 3 or more).

    The 2-D codes keep their tables; products and sums that involve a labelled structure are
    derived by the labelled-axes algebra when first met (`graph._structure.LabelledAlgebra`), new
    structures named by the next code. Its `pair_cost`, `product_code` and `sum_code` answer for
    every code; `tables` closes it into fixed arrays where the closure is small enough (the jitted
    env needs them).

    Attributes:
      name: "exact".
      rank: R, the number of size factors per node.
    """

    name = "exact"

    def __init__(self, structures: tuple, rank: int):
        from alphagrad.graph._structure import LabelledAlgebra

        self._given = tuple(structures)
        self.algebra = LabelledAlgebra(self._given, rank)
        self.rank = self.algebra.rank
        self._closure_failed: int | None = None  # the limit a closure exceeded (not tried again)
        self._closure_error: AlphagradError | None = None
        self._tables: dict = {}  # graph fingerprint (None: the closure) -> CostModel

    @property
    def structures(self) -> tuple:
        """The structures of codes 12, 13, ... named so far."""
        return tuple(self.algebra.structures)

    def pair_cost(self, in_code: int, out_code: int, c, v, p) -> int:
        """Multiplications of (v->c)(p->v) for the nodes' structural dims (up to R axes each)."""
        if in_code == 0 or out_code == 0:
            return 0
        bits, _, unit = self.algebra.product(in_code, out_code)
        if unit:
            return 1
        if not bits:
            return 0
        rank = self.rank
        total = 1
        for bit in bits:
            group, axis = divmod(bit, rank)
            dims = (c, v, p)[group]
            total *= abs(dims[axis]) if axis < len(dims) else 1
        return int(total)

    def product_code(self, in_code: int, out_code: int) -> int:
        return 0 if in_code == 0 or out_code == 0 else self.algebra.product(in_code, out_code)[1]

    def sum_code(self, old_code: int, new_code: int) -> int:
        return self.algebra.sum(old_code, new_code)

    def tables(self, graph: Graph | None = None, limit: int = 128 - 22) -> CostModel:
        """Fixed tables as a `CostModel`: of the codes the eliminations of `graph` can meet (sums
        of products along its paths, `graph._structure.reachable_tables`), or where that is too
        much work or no graph is given, of every product and sum of every code (the closure).

        Raises:
          AlphagradError: more than `limit` labelled structures.
        """
        from alphagrad.graph._structure import extended_tables, reachable_tables

        key = graph.fingerprint if graph is not None else None
        if key in self._tables:
            return self._tables[key]
        if graph is not None:
            edges = [(e.src, e.dst, e.code) for e in graph.edges]
            intermediates = {graph.node_id(k) for k in graph.intermediates}
            try:
                t = reachable_tables(self._given, self.rank, edges, intermediates, limit)
            except ValueError:
                t = None
            if t is not None:
                self._tables[key] = CostModel("exact", t.mask, t.mul.astype(np.int32), t.add.astype(np.int32),
                                              unit_pairs=t.unit_pairs, structures=t.structures)
                return self._tables[key]
        if self._closure_failed is not None and limit <= self._closure_failed:
            raise self._closure_error
        try:
            t = extended_tables(self._given, self.rank, limit)
        except ValueError as err:
            self._closure_failed = limit
            self._closure_error = AlphagradError(
                f"the graph's labelled structures do not close within {limit} codes ({err}); the jitted "
                "environment cannot hold its tables: use the Python engine (graph.Eliminator, the heuristics, "
                "the gymnasium env's python backend) for this graph"
            )
            raise self._closure_error from err
        self._tables[key] = CostModel("exact", t.mask, t.mul.astype(np.int32), t.add.astype(np.int32),
                                      unit_pairs=t.unit_pairs, structures=t.structures)
        return self._tables[key]


@functools.lru_cache(maxsize=64)
def extended_cost_model(structures: tuple = (), rank: int = 2) -> LabelledCostModel | CostModel:
    """The exact model extended to a graph's labelled structures (codes 12, ...) and rank R.

    Args:
      structures: `AxisTies` (graph._structure) of the graph's partials that the 2-D codes cannot
        describe, in code order from 12.
      rank: R, the largest number of axes of a node (at least 2).

    With no structures and rank 2 it is `cost_model("exact")`.
    """
    if not structures and int(rank) <= 2:
        return cost_model("exact")
    return LabelledCostModel(tuple(structures), int(rank))


def cost_model_of(graph: Graph) -> CostModel:
    """The cost model that scores `graph`: its named model, extended by its labelled structures
    (codes 12, ...) and structural rank where it has them."""
    if graph.structures:
        return extended_cost_model(tuple(graph.structures), graph.rank)
    return cost_model(graph.cost_model)


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
