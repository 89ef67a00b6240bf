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

Time limit: the solver reads the clock before every expansion, before every child it builds,
and inside every maximum flow of the bound (once per augmenting path), so it returns within its
seconds plus one such step (milliseconds on a graph of 10,000 vertices): the incumbent and,
where the root bound was not finished, a lower bound of 0.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Mapping, Sequence

from alphagrad import orders as orders_lib
from alphagrad.agents._result import Deadline, Progress, SearchResult
from alphagrad.agents.heuristics import search_heuristics
from alphagrad.env import is_scalar_graph
from alphagrad.graph import Eliminator, Graph, check_order
from alphagrad.graph import cost as graph_cost

__all__ = ["cut_lower_bound", "solve_exact"]

#: Greedy chains whose best order is the default incumbent (cheap, and often already optimal).
_SEED_CHAINS = ("markowitz>forward", "markowitz>reverse", "lmmd>reverse", "fill_in>markowitz>reverse")


class _OutOfTime(Exception):
    """Raised inside the bound when the solver's deadline passed (caught by `solve_exact`)."""


def _disjoint_paths(succ: Sequence[Mapping[int, int]], pred: Sequence[Mapping[int, int]],
                    sources: Sequence[int], target: int, deadline: Deadline | None = None) -> int:
    """Maximum number of vertex-disjoint paths from `sources` to `target` (every node but the
    target may carry one path; a source counts as a node), by augmenting paths on the split graph.

    `succ` and `pred` are the two directions of one adjacency, per node id (an `Eliminator`'s
    ``succs`` and ``preds``; swap them for paths from `target` to `sources` the other way round).
    Raises `_OutOfTime` once `deadline` (if any) passed, checked once per augmenting path (each
    a breadth-first search of the graph).
    """
    # Split node u into (u, 0) -> (u, 1) of capacity 1; edges (u, 1) -> (w, 0) of capacity 1.
    residual: dict[tuple, dict[tuple, int]] = {}

    def add(a, b):
        residual.setdefault(a, {})
        residual.setdefault(b, {})
        residual[a][b] = residual[a].get(b, 0) + 1
        residual[b].setdefault(a, 0)

    # Only nodes that reach the target matter.
    relevant = {target}
    queue = deque([target])
    while queue:
        w = queue.popleft()
        for u in pred[w]:
            if u not in relevant:
                relevant.add(u)
                queue.append(u)
    src = ("S",)
    sink = (target, 0)
    for u in relevant:
        if u != target:
            add((u, 0), (u, 1))
            for w in succ[u]:
                if w in relevant:
                    add((u, 1), (w, 0))
    for s in sources:
        if s in relevant and s != target:
            add(src, (s, 0))
    if src not in residual:
        return 0
    flow = 0
    while True:
        if deadline is not None and deadline.expired():
            raise _OutOfTime
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
    """Static data of one graph: the vertices as bits, ancestor and descendant masks, cut caches."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.I = graph.num_inputs
        self.scalar = is_scalar_graph(graph)
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

    def bound(self, T: int, remaining: list[int], state: Eliminator, deadline: Deadline | None = None) -> int:
        """Σ over remaining v of λin(v, T) · λout(v, T) in `state` (scalar graphs; 0 otherwise).

        Raises `_OutOfTime` once `deadline` (if any) passed (checked inside each maximum flow).
        """
        if not self.scalar:
            return 0
        total = 0
        for v in remaining:
            node = self.I + v
            k_in = (v, T & self.anc[node])
            lam_in = self._lam_in.get(k_in)
            if lam_in is None:
                lam_in = self._lam_in[k_in] = _disjoint_paths(state.succs, state.preds, self.inputs, node, deadline)
            k_out = (v, T & self.desc[node])
            lam_out = self._lam_out.get(k_out)
            if lam_out is None:
                lam_out = self._lam_out[k_out] = _disjoint_paths(state.preds, state.succs, self.outputs, node,
                                                                 deadline)
            total += lam_in * lam_out
        return total


def cut_lower_bound(graph: Graph) -> int:
    """Σ_v λin(v, ∅) · λout(v, ∅): a lower bound on the cost of every order of a scalar graph
    (0 for tensor graphs, where this argument does not hold). See LOWER_BOUNDS.md."""
    prob = _Problem(graph)
    return prob.bound(0, prob.vertices, Eliminator(graph))


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
      seconds: wall-time limit (default 60; None: no limit), for everything: the default
        incumbent's heuristic chains (at most a quarter of it), the root bound and the search,
        each of which reads the clock inside (see the module docstring).
      init_order: the incumbent to beat (default: the cheapest of forward, reverse and a few
        greedy heuristic chains).
      max_states: stop when this many states have been stored (memory guard; an open state
        holds its key and its parent, an expanded state an engine snapshot of a few kB on the
        reference graphs, so the default stays well below 2 GB).
      progress: called with (best cost, fraction of the budget used) on improvements.

    Returns:
      A `SearchResult` with ``optimal`` True when the search completed, ``lower_bound`` the
      proven bound (== cost when optimal; 0 when the time ran out before the root bound was
      computed), ``evaluations`` the states expanded, and ``info["stopped"]`` one of "proved",
      "time", "states".
    """
    deadline = Deadline(seconds)
    limit = None if seconds is None else deadline
    prob = _Problem(graph)
    if init_order is None:
        # Forward, reverse and the seed chains; on long programs a chain stops at its share.
        seeds = search_heuristics(graph, seconds=None if seconds is None else 0.25 * seconds, chains=_SEED_CHAINS,
                                  random_chains=())
        init_order = seeds.order
    best_order = check_order(graph, init_order)
    best_cost = graph_cost(graph, best_order)
    if progress is not None:
        progress(best_cost, 0.0)

    def result(optimal: bool, lower: int, expansions: int, stopped: str, root_bound: int | None,
               states: int) -> SearchResult:
        assert graph_cost(graph, best_order) == best_cost
        return SearchResult(
            order=tuple(best_order),
            cost=int(best_cost),
            method="exact",
            optimal=optimal,
            lower_bound=int(lower),
            evaluations=expansions,
            seconds=deadline.elapsed(),
            info={"stopped": stopped, "root_bound": root_bound, "states": states,
                  "bound": "cut" if prob.scalar else "none (tensor graph)"},
        )

    root = Eliminator(graph)
    try:
        root_bound = prob.bound(0, prob.vertices, root, limit)
    except _OutOfTime:
        return result(False, 0, 0, "time", None, 0)

    def key_of(T: int, state: Eliminator):
        return T if prob.scalar else (T, state.edge_key())

    counter = itertools.count()
    root_key = key_of(0, root)
    best_g = {root_key: 0}
    parent: dict = {root_key: None}
    # Entries (f, -depth, tie, g, T, key, parent state, vertex): an open state is stored as its
    # parent's engine snapshot and the vertex that leads to it, and rebuilt when it is expanded.
    # Far fewer states are expanded than stored, so the search keeps (and the garbage collector
    # scans) one engine per expanded state instead of one per stored state.
    heap = [(root_bound, 0, next(counter), 0, 0, root_key, root, None)]
    all_bits = (1 << len(prob.vertices)) - 1
    expansions = 0
    stopped = "proved"
    lower = root_bound
    while heap:
        entry = heap[0]
        f, neg_depth, _, g, T, key, base, last = entry
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
        if len(best_g) > max_states:
            stopped = "states"
            break
        try:
            _expand(prob, entry, best_cost, best_g, parent, heap, counter, key_of, limit)
        except _OutOfTime:
            # Back on the heap: its children are not all there, and the bound open must cover them.
            heapq.heappush(heap, entry)
            stopped = "time"
            break
    if stopped == "proved" or not heap:
        return result(True, best_cost, expansions, "proved", root_bound, len(best_g))
    return result(False, min(best_cost, max(lower, heap[0][0])), expansions, stopped, root_bound, len(best_g))


def _expand(prob: _Problem, entry: tuple, best_cost: int, best_g: dict, parent: dict, heap: list,
            counter: itertools.count, key_of, deadline: Deadline | None) -> None:
    """Pushes the children of the open state `entry` that may beat `best_cost` (one per remaining
    vertex). Raises `_OutOfTime` once `deadline` passed: before the state is rebuilt, before each
    child and inside each child's bound."""
    if deadline is not None and deadline.expired():
        raise _OutOfTime
    _, neg_depth, _, g, T, key, base, last = entry
    state = base
    if last is not None:
        state = base.copy()
        state.eliminate(last)
    remaining = [v for v in prob.vertices if not T & prob.bit[v]]
    # Price every move first, so that the children's snapshots inherit all the cached costs.
    step_costs = [state.elimination_cost(v) for v in remaining]
    for v, c in zip(remaining, step_costs):
        g2 = g + c
        if g2 >= best_cost:
            continue
        T2 = T | prob.bit[v]
        if prob.scalar and best_g.get(T2, best_cost) <= g2:
            continue  # the key is T2 alone: no need to build the child
        if deadline is not None and deadline.expired():
            raise _OutOfTime
        child = state.copy()
        child.eliminate(v)
        k2 = key_of(T2, child)
        if best_g.get(k2, best_cost) <= g2:
            continue
        h = prob.bound(T2, [u for u in remaining if u != v], child, deadline) if prob.scalar else 0
        if g2 + h >= best_cost:
            continue
        best_g[k2] = g2
        parent[k2] = (key, v)
        heapq.heappush(heap, (g2 + h, neg_depth - 1, next(counter), g2, T2, k2, state, v))
