"""Exact elimination orders: A* over sets of eliminated vertices, with cut lower bounds.

The state reached by eliminating a set T of vertices does not depend on the order within T on
scalar graphs (the edge p -> c exists iff some path p -> ... -> c has its interior in T;
`shared/reference/LOWER_BOUNDS.md`), so the search memoises on T: a dynamic program over subsets
explored best-first. On tensor graphs the codes of the fill-in edges may depend on the order, so
the memo key is the whole state (T and every edge's code), which is still exact.

Lower bound (scalar graphs only; 0 on tensor graphs, where a pair may cost 0): every remaining
vertex v will cost at least ``λin(v, T) · λout(v, T)``, the minimum vertex cuts between the
inputs and v and between v and the outputs in the current graph. They only grow as T grows, so
the sum over the remaining vertices is an admissible and consistent A* heuristic. With an
incumbent order of cost U, states whose bound reaches U are pruned; when nothing is left open,
the incumbent (or the cheaper order found) is optimal. At the time limit the smallest bound
still open is a proven lower bound on the optimum.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Sequence

from alphagrad import orders as orders_lib
from alphagrad.agents._result import Deadline, Progress, SearchResult
from alphagrad.agents.heuristics import heuristic_order
from alphagrad.env import is_scalar_graph
from alphagrad.graph import Graph, check_order, cost_model
from alphagrad.graph import cost as graph_cost

__all__ = ["cut_lower_bound", "solve_exact"]

#: Greedy chains whose best order is the default incumbent (cheap, and often already optimal).
_SEED_CHAINS = ("markowitz>forward", "markowitz>reverse", "lmmd>reverse", "fill_in>markowitz>reverse")


def _disjoint_paths(succ: dict[int, list[int]], sources: Sequence[int], target: int) -> int:
    """Maximum number of vertex-disjoint paths from `sources` to `target` (every node but the
    target may carry one path; a source counts as a node), by augmenting paths on the split graph."""
    # Split node u into (u, 0) -> (u, 1) of capacity 1; edges (u, 1) -> (w, 0) of capacity 1.
    residual: dict[tuple, dict[tuple, int]] = {}

    def add(a, b):
        residual.setdefault(a, {})
        residual.setdefault(b, {})
        residual[a][b] = residual[a].get(b, 0) + 1
        residual[b].setdefault(a, 0)

    # Only nodes that reach the target matter.
    preds: dict[int, list[int]] = {}
    for u, ws in succ.items():
        for w in ws:
            preds.setdefault(w, []).append(u)
    relevant = {target}
    queue = deque([target])
    while queue:
        w = queue.popleft()
        for u in preds.get(w, ()):
            if u not in relevant:
                relevant.add(u)
                queue.append(u)
    src = ("S",)
    sink = (target, 0)
    for u in relevant:
        if u != target:
            add((u, 0), (u, 1))
            for w in succ.get(u, ()):
                if w in relevant:
                    add((u, 1), (w, 0))
    for s in sources:
        if s in relevant and s != target:
            add(src, (s, 0))
    if src not in residual:
        return 0
    flow = 0
    while True:
        parent = {src: None}
        queue = deque([src])
        while queue and sink not in parent:
            a = queue.popleft()
            for b, cap in residual[a].items():
                if cap > 0 and b not in parent:
                    parent[b] = a
                    queue.append(b)
        if sink not in parent:
            return flow
        b = sink
        while parent[b] is not None:
            a = parent[b]
            residual[a][b] -= 1
            residual[b][a] += 1
            b = a
        flow += 1


class _Problem:
    """Static data of one graph: node ids, shapes, ancestor masks, the cost model."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.I = graph.num_inputs
        self.model = cost_model(graph.cost_model)
        self.scalar = is_scalar_graph(graph)
        src_shape, dst_shape = graph.node_shapes()
        self.src_shape = [tuple(int(x) for x in s) for s in src_shape]
        self.dst_shape = [tuple(int(x) for x in s) for s in dst_shape]
        self.vertices = list(graph.intermediates)
        self.bit = {v: 1 << i for i, v in enumerate(self.vertices)}
        self.inputs = list(range(1, self.I + 1))
        self.outputs = [self.I + k for k in graph.outputs]
        n = self.I + graph.num_vertices + 1
        succ: list[list[int]] = [[] for _ in range(n)]
        for e in graph.edges:
            if e.code != 0:
                succ[e.src].append(e.dst)
        anc = [0] * n
        for u in range(1, n):  # node ids are topologically sorted
            for w in succ[u]:
                anc[w] |= anc[u] | self.bit.get(u - self.I, 0)
        desc = [0] * n
        for u in range(n - 1, 0, -1):
            for w in succ[u]:
                desc[u] |= desc[w] | self.bit.get(w - self.I, 0)
        self.anc, self.desc = anc, desc
        self._lam_in: dict[tuple[int, int], int] = {}
        self._lam_out: dict[tuple[int, int], int] = {}
        self._pairs: dict[tuple, int] = {}

    def initial_edges(self) -> dict[tuple[int, int], int]:
        return {(e.src, e.dst): e.code for e in self.graph.edges if e.code != 0}

    def pair(self, in_code, out_code, p, v, c) -> int:
        key = (in_code, out_code, p, v, c)
        value = self._pairs.get(key)
        if value is None:
            value = self._pairs[key] = self.model.pair_cost(
                in_code, out_code, self.dst_shape[c], self.src_shape[v], self.src_shape[p])
        return value

    def bound(self, T: int, remaining: list[int], succ: dict[int, list[int]], pred: dict[int, list[int]]) -> int:
        """Σ over remaining v of λin(v, T) · λout(v, T) (scalar graphs; 0 otherwise)."""
        if not self.scalar:
            return 0
        total = 0
        for v in remaining:
            node = self.I + v
            k_in = (v, T & self.anc[node])
            lam_in = self._lam_in.get(k_in)
            if lam_in is None:
                lam_in = self._lam_in[k_in] = _disjoint_paths(succ, self.inputs, node)
            k_out = (v, T & self.desc[node])
            lam_out = self._lam_out.get(k_out)
            if lam_out is None:
                lam_out = self._lam_out[k_out] = _disjoint_paths(pred, self.outputs, node)
            total += lam_in * lam_out
        return total


def _adjacency(edges: dict[tuple[int, int], int]):
    succ: dict[int, list[int]] = {}
    pred: dict[int, list[int]] = {}
    for p, c in edges:
        succ.setdefault(p, []).append(c)
        pred.setdefault(c, []).append(p)
    return succ, pred


def _eliminate(prob: _Problem, edges, succ, pred, v: int):
    """(new edges, cost) of eliminating vertex v from the state `edges`."""
    node = prob.I + v
    model = prob.model
    new = dict(edges)
    total = 0
    ins = [(p, edges[(p, node)]) for p in pred.get(node, ())]
    outs = [(c, edges[(node, c)]) for c in succ.get(node, ())]
    for p, _ in ins:
        del new[(p, node)]
    for c, _ in outs:
        del new[(node, c)]
    for c, out_code in outs:
        for p, in_code in ins:
            total += prob.pair(in_code, out_code, p, node, c)
            code = model.product_code(in_code, out_code)
            old = new.get((p, c))
            new[(p, c)] = code if old is None else model.sum_code(old, code)
    return new, total


def cut_lower_bound(graph: Graph) -> int:
    """Σ_v λin(v, ∅) · λout(v, ∅): a lower bound on the cost of every order of a scalar graph
    (0 for tensor graphs, where this argument does not hold). See LOWER_BOUNDS.md."""
    prob = _Problem(graph)
    edges = prob.initial_edges()
    succ, pred = _adjacency(edges)
    return prob.bound(0, prob.vertices, succ, pred)


def solve_exact(
    graph: Graph,
    *,
    seconds: float | None = 60.0,
    init_order: Sequence[int] | None = None,
    max_states: int = 200_000,
    progress: Progress | None = None,
) -> SearchResult:
    """A proven optimal order, or the best order known and a proven lower bound.

    Args:
      graph: the graph. Optima are usually proven for up to about 20 intermediates (scalar
        graphs with a tight cut bound: many more); beyond that, the result carries a lower bound.
      seconds: wall-time limit (default 60; None: no limit). Checked before every expansion.
      init_order: the incumbent to beat (default: the cheapest of forward, reverse and a few
        greedy heuristic chains).
      max_states: stop when this many states have been stored (memory guard; a state holds its
        edge list, a few kB on the reference graphs, so the default stays below about 2 GB).
      progress: called with (best cost, fraction of the budget used) on improvements.

    Returns:
      A `SearchResult` with ``optimal`` True when the search completed, ``lower_bound`` the
      proven bound (== cost when optimal), ``evaluations`` the states expanded, and
      ``info["stopped"]`` one of "proved", "time", "states".
    """
    deadline = Deadline(seconds)
    prob = _Problem(graph)
    if init_order is None:
        candidates = [orders_lib.reverse(graph), orders_lib.forward(graph)]
        candidates += [heuristic_order(graph, chain)[0] for chain in _SEED_CHAINS]
        init_order = min(candidates, key=lambda o: graph_cost(graph, o))
    best_order = check_order(graph, init_order)
    best_cost = graph_cost(graph, best_order)
    if progress is not None:
        progress(best_cost, 0.0)

    edges0 = prob.initial_edges()
    succ0, pred0 = _adjacency(edges0)
    root_bound = prob.bound(0, prob.vertices, succ0, pred0)

    def key_of(T, edges):
        return T if prob.scalar else (T, tuple(sorted(edges.items())))

    counter = itertools.count()
    root_key = key_of(0, edges0)
    best_g = {root_key: 0}
    parent: dict = {root_key: None}
    heap = [(root_bound, 0, next(counter), 0, 0, root_key, edges0)]  # f, -depth, tie, g, T, key, edges
    all_bits = (1 << len(prob.vertices)) - 1
    expansions = 0
    stopped = "proved"
    lower = root_bound
    while heap:
        f, neg_depth, _, g, T, key, edges = heap[0]
        if f >= best_cost:
            break  # nothing open can beat the incumbent
        lower = max(lower, f)
        heapq.heappop(heap)
        if best_g.get(key, g) < g:
            continue  # a cheaper path to this state was found after this entry was pushed
        if T == all_bits:  # a complete order cheaper than the incumbent (f == g here)
            order, k = [], key
            while parent[k] is not None:
                k, v = parent[k]
                order.append(v)
            best_order, best_cost = order[::-1], g
            if progress is not None:
                progress(best_cost, deadline.fraction())
            continue
        expansions += 1
        if seconds is not None and deadline.expired():
            stopped = "time"
            break
        if len(best_g) > max_states:
            stopped = "states"
            break
        succ, pred = _adjacency(edges)
        remaining = [v for v in prob.vertices if not T & prob.bit[v]]
        for v in remaining:
            new_edges, c = _eliminate(prob, edges, succ, pred, v)
            g2 = g + c
            if g2 >= best_cost:
                continue
            T2 = T | prob.bit[v]
            k2 = key_of(T2, new_edges)
            if best_g.get(k2, best_cost) <= g2:
                continue
            rest = [u for u in remaining if u != v]
            if prob.scalar:
                s2, p2 = _adjacency(new_edges)
                h = prob.bound(T2, rest, s2, p2)
            else:
                h = 0
            if g2 + h >= best_cost:
                continue
            best_g[k2] = g2
            parent[k2] = (key, v)
            heapq.heappush(heap, (g2 + h, neg_depth - 1, next(counter), g2, T2, k2, new_edges))
    if stopped == "proved" or not heap:
        stopped, optimal, lower = "proved", True, best_cost
    else:
        optimal = False
        lower = min(best_cost, max(lower, heap[0][0]))
    assert graph_cost(graph, best_order) == best_cost
    return SearchResult(
        order=tuple(best_order),
        cost=int(best_cost),
        method="exact",
        optimal=optimal,
        lower_bound=int(lower),
        evaluations=expansions,
        seconds=deadline.elapsed(),
        info={"stopped": stopped, "root_bound": int(root_bound), "states": len(best_g),
              "bound": "cut" if prob.scalar else "none (tensor graph)"},
    )
