"""A light Python elimination state for the greedy heuristics and the exact solver.

Like `alphagrad.graph.Eliminator`, but edges carry only their code (shapes are per node and
never change, see `Graph.node_shapes`), elimination costs are cached per vertex (eliminating v
changes the costs of v's neighbours only), and the effect of an elimination on the neighbours'
costs can be previewed without changing the state (for LMMD and MOMR).
"""

from __future__ import annotations

from alphagrad.graph import CostModel, Graph, cost_model

__all__ = ["ElimState"]


class ElimState:
    """Mutable elimination state. Node ids follow `Graph` (inputs 1..I, vertex k = I + k).

    Attributes:
      preds, succs: per node id, ``{neighbour node id: code}``.
      remaining: vertex numbers of the intermediates not yet eliminated.
    """

    def __init__(self, graph: Graph, model: CostModel | None = None):
        self.graph = graph
        self.model = model if model is not None else cost_model(graph.cost_model)
        self.num_inputs = graph.num_inputs
        src_shape, dst_shape = graph.node_shapes()
        self.src_shape = [tuple(int(x) for x in s) for s in src_shape]
        self.dst_shape = [tuple(int(x) for x in s) for s in dst_shape]
        n = graph.num_inputs + graph.num_vertices + 1
        self.preds: list[dict[int, int]] = [{} for _ in range(n)]
        self.succs: list[dict[int, int]] = [{} for _ in range(n)]
        for e in graph.edges:
            if e.code != 0:
                self.succs[e.src][e.dst] = e.code
                self.preds[e.dst][e.src] = e.code
        self.remaining: set[int] = set(graph.intermediates)
        self._cost: dict[int, int] = {}
        self._pair_cache: dict[tuple, int] = {}

    # Costs ------------------------------------------------------------------------------------
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

    def cost(self, vertex: int) -> int:
        """Multiplications that eliminating `vertex` costs now (cached)."""
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
        """Σ over remaining neighbours u of (cost of u after eliminating `vertex` − cost of u now)."""
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
            total += self._cost_with(p, self.preds[p], new_succs) - self.cost(p - I)
        for c, out_code in succs.items():
            if c - I not in self.remaining:
                continue
            new_preds = dict(self.preds[c])
            del new_preds[node]
            for p, in_code in preds.items():
                new = model.product_code(in_code, out_code)
                old = new_preds.get(p)
                new_preds[p] = new if old is None else model.sum_code(old, new)
            total += self._cost_with(c, new_preds, self.succs[c]) - self.cost(c - I)
        return total

    # Elimination ------------------------------------------------------------------------------
    def eliminate(self, vertex: int) -> int:
        """Eliminates `vertex` and returns its multiplications."""
        model = self.model
        node = self.num_inputs + vertex
        cost = self.cost(vertex)
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
        for u in list(preds) + list(succs):
            self._cost.pop(u - I, None)
        self.preds[node] = {}
        self.succs[node] = {}
        self._cost.pop(vertex, None)
        self.remaining.discard(vertex)
        return cost
