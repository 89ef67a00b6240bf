"""Greedy vertex-elimination heuristics of ANGEL (REFERENCE.md section 8), as chains of filters.

A *filter* receives the candidate vertices (not yet eliminated intermediates) and returns the
best of them, ties included. A *chain* ``"markowitz>lmmd>forward"`` applies filters in turn
until one candidate is left (the last resort picks one: ``forward`` the lowest number,
``reverse`` the highest, ``random`` one at random); that vertex is eliminated and the next
step starts. Filters:

- ``forward`` / ``reverse``: lowest / highest vertex number.
- ``markowitz`` (VLM): lowest Markowitz degree.
- ``relative_markowitz`` (VLR): lowest Markowitz degree − indep(v) · dep(v), where indep and
  dep count the inputs and outputs connected to v by paths.
- ``fill_in``: fewest new edges created.
- ``lmmd``: lowest Markowitz degree + w · (total increase of the neighbours' degrees), w = 1.
- ``momr``: largest Markowitz degree − (total increase of the neighbours' degrees).
- ``random``: one candidate at random (random tie-breaking; restart with other seeds).

A chain not ending in ``random`` is one lexicographic key (its scores, then the vertex number),
so it runs on the engine's heap (`alphagrad.graph.Eliminator.greedy`): after each elimination
only the vertices near it are re-scored, and the order is exactly the one of the filter scan.
Chains ending in ``random`` scan every remaining vertex at every step.

Time limits (`search_heuristics`): a chain is stopped inside, at the limit (the key it scores
checks the clock), not only between chains, because one chain can take minutes on a long
program: next to a vertex read by every step of an unrolled loop (a hub), every elimination
re-scores all the hub's neighbours, and each ``lmmd`` / ``momr`` / ``fill_in`` score reads the
hub's edges. The chains run cheapest kind first (local scores, then ``fill_in``, then the
neighbour-change scores), each within a third of the time left, and a chain is skipped when
every chain of its kind so far (or of a cheaper kind) took longer than the time left. A chain
also stops as soon as its eliminations cost as much as the best order known.

The *Markowitz degree* of a vertex is the number of multiplications its elimination costs now
under the graph's cost model (`alphagrad.graph.Eliminator.elimination_cost`). On scalar graphs
it is in-degree × out-degree, exactly ANGEL's; on tensor graphs it measures what an
elimination really costs instead of counting edges. indep(v) · dep(v) is a count of inputs and
outputs on either model (a documented simplification on tensor graphs).
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable, Sequence

from alphagrad.agents._result import Deadline, Progress, SearchError, SearchResult
from alphagrad.graph import Eliminator, Graph
from alphagrad.graph import cost as graph_cost

__all__ = [
    "DEFAULT_CHAINS",
    "FILTERS",
    "RANDOM_CHAINS",
    "heuristic_order",
    "search_heuristics",
]


def _connected_counts(graph: Graph) -> tuple[dict[int, int], dict[int, int]]:
    """Per vertex number: number of inputs with a path to it, number of outputs it reaches.

    Eliminations keep the reachability between the remaining nodes, so these never change.
    """
    I = graph.num_inputs
    n = I + graph.num_vertices + 1
    succs: list[list[int]] = [[] for _ in range(n)]
    for e in graph.edges:
        succs[e.src].append(e.dst)
    reach_in = [0] * n  # bitset of inputs
    for i in range(1, I + 1):
        reach_in[i] = 1 << i
    for node in range(1, n):  # node ids are topologically sorted (edges go to later vertices)
        for d in succs[node]:
            reach_in[d] |= reach_in[node]
    # Bitsets over output positions, not node ids: they stay a few words long on big graphs.
    outputs = {I + k: position for position, k in enumerate(graph.outputs)}
    reach_out = [0] * n
    for node in range(n - 1, 0, -1):
        bits = 1 << outputs[node] if node in outputs else 0
        for d in succs[node]:
            bits |= reach_out[d]
        reach_out[node] = bits
    indep = {k: reach_in[I + k].bit_count() for k in graph.intermediates}
    dep = {k: reach_out[I + k].bit_count() for k in graph.intermediates}
    return indep, dep


class _OutOfTime(Exception):
    """Raised inside a chain when its deadline passes (caught by `search_heuristics`)."""


class _Pruned(Exception):
    """Raised inside a chain once its eliminations cost as much as the best order known."""


class _Tracked(Eliminator):
    """The engine, adding up its eliminations' multiplications: a chain stops (`_Pruned`) as soon
    as it cannot beat the best order known any more, or (`_OutOfTime`) once its deadline passed.

    Pruning changes no result (costs only grow along a chain) and saves most of the time of the
    chains that fill the graph in (on the exact model, ``markowitz>reverse`` costs nine times
    Markowitz on an unrolled integrator and takes a hundred times longer).
    """

    __slots__ = ("total", "bound", "deadline")

    def __init__(self, graph: Graph, bound: float, deadline: Deadline | None):
        super().__init__(graph)
        self.total, self.bound, self.deadline = 0, bound, deadline

    def eliminate(self, vertex: int) -> int:
        cost = super().eliminate(vertex)
        self.total += cost
        if self.total >= self.bound:
            raise _Pruned
        if self.deadline is not None and self.deadline.expired():
            raise _OutOfTime
        return cost


class _Context:
    """What the filters see: the elimination state, static counts, and the random generator."""

    def __init__(self, graph: Graph, rng: _random.Random, lmmd_weight: float, bound: float = math.inf,
                 deadline: Deadline | None = None):
        self.state = _Tracked(graph, bound, deadline)
        self.indep, self.dep = _connected_counts(graph)
        self.rng = rng
        self.lmmd_weight = lmmd_weight


def _argmin(candidates: list[int], score: Callable[[int], float]) -> list[int]:
    scores = [score(v) for v in candidates]
    best = min(scores)
    return [v for v, s in zip(candidates, scores) if s == best]


#: The filters that keep the candidates of smallest score: name -> (reach, context -> score).
#: reach is how far from a vertex its score reads edges (`Eliminator.greedy`): 1 for its own
#: edges, 2 where it also reads its neighbours' edges (new edges, the neighbours' cost change).
_SCORES: dict[str, tuple[int, Callable[[_Context], Callable[[int], float]]]] = {
    "markowitz": (1, lambda ctx: ctx.state.markowitz_key),
    "relative_markowitz": (1, lambda ctx: lambda v: ctx.state.elimination_cost(v) - ctx.indep[v] * ctx.dep[v]),
    "fill_in": (2, lambda ctx: ctx.state.fill_in),
    "lmmd": (2, lambda ctx: lambda v: ctx.state.elimination_cost(v) + ctx.lmmd_weight * ctx.state.neighbour_change(v)),
    "momr": (2, lambda ctx: lambda v: ctx.state.neighbour_change(v) - ctx.state.elimination_cost(v)),
}


def _score_filter(make_score: Callable[[_Context], Callable[[int], float]]):
    return lambda ctx, cands: _argmin(cands, make_score(ctx))


#: name -> filter(context, candidates) -> best candidates (ties kept).
FILTERS: dict[str, Callable[[_Context, list[int]], list[int]]] = {
    "forward": lambda ctx, c: [min(c)],
    "reverse": lambda ctx, c: [max(c)],
    "random": lambda ctx, c: [ctx.rng.choice(c)],
    **{name: _score_filter(make_score) for name, (_, make_score) in _SCORES.items()},
}

#: Deterministic chains tried by `search_heuristics` (each ends in a forward/reverse tie-break).
DEFAULT_CHAINS: tuple[str, ...] = tuple(
    f"{h}>{last}"
    for h in ("markowitz", "relative_markowitz", "fill_in>markowitz", "lmmd", "momr", "markowitz>lmmd",
              "markowitz>momr", "markowitz>fill_in", "markowitz>relative_markowitz", "lmmd>markowitz",
              "fill_in>lmmd", "relative_markowitz>lmmd")
    for last in ("forward", "reverse")
)

#: Chains with random tie-breaking that `search_heuristics` restarts with new seeds.
RANDOM_CHAINS: tuple[str, ...] = (
    "markowitz>random",
    "lmmd>random",
    "relative_markowitz>random",
    "momr>random",
    "markowitz>lmmd>random",
    "fill_in>markowitz>random",
)


def _parse_chain(chain: str | Sequence[str]) -> list[str]:
    names = chain.split(">") if isinstance(chain, str) else list(chain)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in FILTERS]
    if unknown or not names:
        raise SearchError(
            f"unknown heuristic filter(s) {unknown or chain!r}; write a chain like 'markowitz>lmmd>forward' "
            f"from: {', '.join(FILTERS)}"
        )
    if names[-1] not in ("forward", "reverse", "random"):
        names.append("forward")  # ANGEL's usual last resort
    return names


#: `search_heuristics` gives each chain at most the time left divided by this.
_SLICE = 3

#: A chain checks its deadline once per this many key evaluations (a clock read per key would
#: cost a third of a Markowitz key).
_CHECK_EVERY = 64


def _checked(score: Callable[[int], object], deadline: Deadline | None, calls: list[int]) -> Callable[[int], object]:
    """`score`, counting its calls in ``calls[0]`` and raising `_OutOfTime` once `deadline` passed."""
    if deadline is None:
        return score

    def checked(v: int) -> object:
        calls[0] += 1
        if not calls[0] % _CHECK_EVERY and deadline.expired():
            raise _OutOfTime
        return score(v)

    return checked


def _chain_order(graph: Graph, names: list[str], seed: int | None, lmmd_weight: float,
                 deadline: Deadline | None, calls: list[int], bound: float = math.inf) -> tuple[list[int], int]:
    """`heuristic_order` of a parsed chain; raises `_OutOfTime` once `deadline` (if any) passed,
    `_Pruned` once its eliminations cost `bound` or more. ``calls[0]`` counts the scores
    evaluated (the chains' unit of work for predicting times)."""
    ctx = _Context(graph, _random.Random(seed), lmmd_weight, bound, deadline)
    last = next(i for i, n in enumerate(names) if n in ("forward", "reverse", "random"))
    if names[last] != "random":
        # Filters after the first forward/reverse never see two candidates, and a chain of
        # argmin filters picks the smallest (score_1, ..., score_n, number) (forward) or
        # (score_1, ..., score_n, -number) (reverse): one key for the engine's heap.
        scores = [_SCORES[n][1](ctx) for n in names[:last]]
        reach = max((_SCORES[n][0] for n in names[:last]), default=1)
        if names[last] == "reverse":
            key = _checked(lambda v: (*(score(v) for score in scores), -v), deadline, calls)
        else:
            key = _checked(lambda v: tuple(score(v) for score in scores), deadline, calls)
        return ctx.state.greedy(key, reach=reach)
    # ``random`` draws from the whole tie set in candidate order: the filters scan every
    # remaining vertex at every step (quadratic in the number of vertices).
    filters = [FILTERS[n] for n in names]
    remaining = ctx.state.remaining
    order: list[int] = []
    total = 0
    while remaining:  # the engine checks the deadline at each elimination
        calls[0] += len(remaining)
        cands = remaining
        for f in filters:
            cands = f(ctx, cands)
            if len(cands) == 1:
                break
        v = cands[0]
        total += ctx.state.eliminate(v)
        remaining.remove(v)
        order.append(v)
    return order, total


def heuristic_order(
    graph: Graph, chain: str | Sequence[str] = "markowitz>forward", *, seed: int | None = 0, lmmd_weight: float = 1.0
) -> tuple[list[int], int]:
    """The greedy order a chain of filters builds, and its cost.

    Args:
      graph: the graph.
      chain: filter names joined by ">" (or a sequence); ``forward`` is appended when the chain
        does not end in ``forward``, ``reverse`` or ``random``.
      seed: seed of the ``random`` filter (default 0).
      lmmd_weight: w of the ``lmmd`` filter (default 1.0, ANGEL's).

    Returns:
      (order: [num_intermediates] vertex numbers, cost: multiplications = ``graph.cost(g, order)``).

    Raises:
      SearchError: unknown filter name.
    """
    return _chain_order(graph, _parse_chain(chain), seed, lmmd_weight, None, [0])


#: How expensive a filter's score is: 0 reads the vertex's own edges (cached elimination
#: costs), 1 previews the fill-in, 2 prices every neighbour's elimination before and after.
_KIND = {"forward": 0, "reverse": 0, "random": 0, "markowitz": 0, "relative_markowitz": 0, "fill_in": 1,
         "lmmd": 2, "momr": 2}


def _kind(chain: str) -> int:
    return max(_KIND[n] for n in _parse_chain(chain))


def search_heuristics(
    graph: Graph,
    *,
    seconds: float | None = 10.0,
    chains: Sequence[str] = DEFAULT_CHAINS,
    random_chains: Sequence[str] = RANDOM_CHAINS,
    seed: int = 0,
    progress: Progress | None = None,
) -> SearchResult:
    """Runs forward and reverse mode and every chain in `chains`, then restarts the
    `random_chains` with new seeds until the time limit; returns the cheapest order.

    Args:
      graph: the graph.
      seconds: wall-time limit (default 10; None: every chain of `chains` and one pass of
        `random_chains`, however long they take). Forward, reverse and Markowitz (the chain
        ``markowitz>forward``, near-linear in the edges; stopped only once it costs more than
        forward or reverse) always complete, whatever the limit; every other chain is stopped at
        the limit (or after a third of the time left), cheapest kind first (see the module
        docstring), and skipped when predicted not to finish in the time left (every chain of
        its kind so far, or of a cheaper kind, took longer, finished or not; a ``random`` chain:
        the remaining-vertex scan, about T²/2 scores at the measured rate of its kind). On the
        reference graphs all deterministic chains together take about 1-3 s.
      chains: deterministic chains (see `heuristic_order`).
      random_chains: chains ending in ``random`` restarted with seeds seed, seed + 1, ...
      seed: first seed of the random restarts.
      progress: called with (best cost, fraction of the budget used) on improvements.

    Returns:
      A `SearchResult` with ``info["chain"]`` the chain (and ``info["seed"]``) that won,
      ``info["chains"]`` the cost of every deterministic chain that finished,
      ``info["pruned"]`` the chains stopped as soon as they cost as much as the best order known
      (every chain but Markowitz is; what they cost does not matter), and ``info["skipped"]``
      the chains skipped or stopped at the limit.
    """
    deadline = Deadline(seconds)
    limit = None if seconds is None else deadline
    best_order, best_cost, best_chain, best_seed = None, None, "", None
    per_chain: dict[str, int] = {}
    skipped: list[str] = []
    pruned: list[str] = []
    evaluations = 0
    # Per kind of chain: the shortest time a chain of that kind took (or ran before it was stopped:
    # a lower bound), and the fewest seconds per score. The shortest, not the longest: a chain
    # whose fill-in makes the graph dense can take a hundred times longer than another of its
    # kind, and must not make the search skip the others (a chain too slow is stopped anyway).
    took: dict[int, float] = {}
    per_call: dict[int, float] = {}

    def consider(order, cost, chain, s):
        nonlocal best_order, best_cost, best_chain, best_seed
        if best_cost is None or cost < best_cost:
            best_order, best_cost, best_chain, best_seed = order, cost, chain, s
            if progress is not None:
                progress(best_cost, deadline.fraction())

    def run(chain: str, s: int | None) -> tuple[list[int], int] | None:
        """The chain's (order, cost), or None when it was stopped at the limit or pruned."""
        kind, calls, start = _kind(chain), [0], deadline.elapsed()
        # A slice of the time left, so that one slow chain (the reverse tie-break can take a hundred
        # times longer than the forward one on an unrolled loop) leaves time to the others.
        mine = None if limit is None else Deadline(deadline.left() / _SLICE)
        try:
            result = _chain_order(graph, _parse_chain(chain), s, 1.0, mine, calls, best_cost)
        except _OutOfTime:
            result = None
            skipped.append(chain)
        except _Pruned:  # its time says nothing about its kind: it stopped early
            if s is None:
                pruned.append(chain)
            return None
        spent = deadline.elapsed() - start
        took[kind] = min(took.get(kind, spent), spent)
        if calls[0] and result is not None:
            per_call[kind] = min(per_call.get(kind, spent / calls[0]), spent / calls[0])
        return result

    def too_slow(predicted: float | None) -> bool:
        return seconds is not None and predicted is not None and predicted > deadline.left()

    def known(table: dict[int, float], kind: int) -> float | None:
        """The measurement of this kind, else the largest of a cheaper kind (a lower estimate)."""
        if kind in table:
            return table[kind]
        cheaper = [v for k, v in table.items() if k < kind]
        return max(cheaper) if cheaper else None

    for name, order in (("forward", list(graph.intermediates)), ("reverse", list(reversed(graph.intermediates)))):
        c = graph_cost(graph, order)
        per_chain[name] = c
        consider(order, c, name, None)
    # Markowitz (`alphagrad.graph.markowitz`'s order) first, whatever the limit: the guarantee
    # "never worse than the classic orders". Only pruned, once it costs more than forward or
    # reverse mode: where its fill-in makes it slow (tensor graphs), it is also the costlier.
    first = "markowitz>forward"
    if first in chains:
        try:
            order, c = _chain_order(graph, _parse_chain(first), None, 1.0, None, [0], best_cost + 1)
        except _Pruned:
            pruned.append(first)
        else:
            evaluations += 1
            per_chain[first] = c
            consider(order, c, first, None)
    for chain in sorted((c for c in dict.fromkeys(chains) if c != first), key=_kind):
        if too_slow(known(took, _kind(chain))):
            skipped.append(chain)
            continue
        found = run(chain, None)
        if found is None:
            continue
        evaluations += 1
        per_chain[chain] = found[1]
        consider(found[0], found[1], chain, None)
    T = graph.num_intermediates
    s = seed
    while random_chains:
        ran = False
        for chain in random_chains:
            if seconds is not None and deadline.expired():
                break
            rate = known(per_call, _kind(chain))
            if too_slow(None if rate is None else rate * T * (T + 1) / 2):
                if s == seed:
                    skipped.append(chain)
                continue
            found = run(chain, s)
            if found is None and seconds is not None and deadline.expired():
                break
            ran = True
            evaluations += 1
            if found is not None:
                consider(found[0], found[1], chain, s)
        s += 1
        if seconds is None or deadline.expired() or not ran:
            break
    assert best_order is not None
    return SearchResult(
        order=tuple(best_order),
        cost=int(best_cost),
        method="heuristics",
        evaluations=evaluations,
        seconds=deadline.elapsed(),
        info={"chain": best_chain, "seed": best_seed, "chains": per_chain, "random_restarts": s - seed,
              "skipped": skipped, "pruned": pruned},
    )
