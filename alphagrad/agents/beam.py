"""Beam search over partial elimination orders, scored by completing them with the incumbent.

A beam holds up to W partial orders (states of the jitted core). At each depth every state's
legal actions are costed in one batched call; each state keeps its M cheapest next eliminations
as candidates; every candidate is then *completed* by playing the best complete order known so
far (the incumbent; vertices already eliminated are skipped, which is a no-op step in the core)
and scored by the cost of that complete order. The W best candidates with distinct sets of
eliminated vertices form the next beam. A completion cheaper than the incumbent replaces it at
once, so later depths complete with a better order (the "pilot method"). Passes repeat with a
doubled width until the time limit.

On long programs one scored order costs T·V² state operations (`alphagrad.agents._batch.order_seconds`):
when the first pass is predicted not to reach depth 50 (or its end) within the time limit,
nothing is built or compiled and the first incumbent is returned at once (``info["skipped"]``
says why); and a depth is not started when the previous one took longer than the time left.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import orders as orders_lib
from alphagrad.agents._batch import Evaluator
from alphagrad.agents._batch import evaluator as make_evaluator
from alphagrad.agents._batch import order_seconds
from alphagrad.agents._result import (
    Deadline,
    Progress,
    SearchError,
    SearchResult,
    run_within,
)
from alphagrad.graph import Graph, check_order
from alphagrad.graph import cost as graph_cost

__all__ = ["beam_search"]


@functools.cache
def _beam_fns(ev: Evaluator):
    """Jitted (expand, extend) for one evaluator.

    expand: states [W] -> int32[W, V] cost of eliminating each vertex next (garbage where illegal).
    extend: (states [W], parent int32[K], action int32[K], incumbent int32[T], length int32[]) ->
      (children [K], int32[K] cost of the child completed by the incumbent's `length` remaining
      vertices, in the incumbent's order).
    """
    V = ev.num_actions
    actions = jnp.arange(V, dtype=jnp.int32)

    def child_costs(state):
        return jax.vmap(lambda a: ev.step(state, a).cost - state.cost)(actions)

    def extend_one(states, parent, action, incumbent, length):
        state = jax.tree.map(lambda x: x[parent], states)
        child = ev.step(state, action)
        # The incumbent's vertices still to eliminate come first (stable), then play `length`.
        legal = ev.legal_of(child)[incumbent]
        T = incumbent.shape[0]
        rest = incumbent[jnp.argsort(jnp.where(legal, 0, T) + jnp.arange(T))]
        done = jax.lax.fori_loop(0, length, lambda i, s: ev.step(s, rest[i]), child)
        return child, done.cost

    expand = jax.jit(jax.vmap(child_costs))
    extend = jax.jit(jax.vmap(extend_one, in_axes=(None, 0, 0, None, None)))
    return expand, extend


def _one_pass(ev, width, per_state, incumbent, inc_cost, deadline, on_improve):
    """One beam pass; returns (incumbent actions, its cost, completions evaluated, finished,
    (completions, seconds) after the first depth, which compiles)."""
    expand, extend = _beam_fns(ev)
    T, V = len(ev.actions), ev.num_actions
    beam = jax.device_put(jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (width,) + x.shape), ev.init))
    prefixes: list[list[int]] = [[] for _ in range(width)]
    alive = np.zeros(width, dtype=bool)
    alive[0] = True
    evaluations = 0
    warm_start, warm_evals = None, 0
    last_depth = 0.0  # seconds the last depth took (the first compiles: not counted)
    for depth in range(T):
        if depth == 1:
            warm_start, warm_evals = deadline.elapsed(), evaluations
        if deadline.left() <= last_depth:
            break
        depth_start = deadline.elapsed()
        if depth == 0:  # compiles for a new width: give up at the deadline rather than overrun it
            ok, step_costs = run_within(deadline, lambda b: np.asarray(expand(b)), beam)
            if not ok:
                break
        else:
            step_costs = np.asarray(expand(beam))
        step_costs = step_costs.astype(np.int64)
        legal = np.asarray(ev.legal_of(beam))
        step_costs = np.where(legal & alive[:, None], step_costs, np.iinfo(np.int64).max)
        m = min(per_state, V)  # fixed, so that `extend` sees one shape per width
        top = np.argsort(step_costs, axis=1, kind="stable")[:, :m]  # [W, m]
        valid = np.take_along_axis(step_costs, top, 1) < np.iinfo(np.int64).max
        parents = np.repeat(np.arange(width), m)
        actions = top.reshape(-1)
        valid = valid.reshape(-1)
        args = (beam, jnp.asarray(parents, jnp.int32), jnp.asarray(actions, jnp.int32),
                jnp.asarray(incumbent, jnp.int32), jnp.int32(T - depth - 1))
        if depth == 0:
            ok, out = run_within(deadline, lambda *a: jax.block_until_ready(extend(*a)), *args)
            if not ok:
                break
            children, totals = out
        else:
            children, totals = extend(*args)
        totals = np.asarray(totals).astype(np.int64)
        evaluations += int(valid.sum())
        child_legal = np.asarray(ev.legal_of(children))
        g = np.asarray(ev.cost_of(children)).astype(np.int64)
        ranked = np.lexsort((g, np.where(valid, totals, np.iinfo(np.int64).max)))
        chosen, seen = [], set()
        for idx in ranked:
            if not valid[idx]:
                break
            key = child_legal[idx].tobytes()
            if key in seen:
                continue
            seen.add(key)
            chosen.append(int(idx))
            if len(chosen) == width:
                break
        best = chosen[0]
        if totals[best] < inc_cost:
            prefix = prefixes[parents[best]] + [int(actions[best])]
            done = set(prefix)
            incumbent = np.asarray(prefix + [a for a in incumbent if a not in done], dtype=np.int32)
            inc_cost = int(totals[best])
            on_improve(inc_cost)
        pad = chosen + [chosen[0]] * (width - len(chosen))
        keep = jnp.asarray(pad)
        beam = jax.tree.map(lambda x, keep=keep: x[keep], children)
        prefixes = [prefixes[parents[i]] + [int(actions[i])] for i in pad]
        alive = np.arange(width) < len(chosen)
        if depth:
            last_depth = deadline.elapsed() - depth_start
    else:
        depth = T
    warm = (evaluations - warm_evals, deadline.elapsed() - warm_start) if warm_start is not None else (0, 0.0)
    return incumbent, inc_cost, evaluations, depth == T, warm


def beam_search(
    graph: Graph,
    *,
    seconds: float = 30.0,
    init_order: Sequence[int] | None = None,
    width: int = 16,
    per_state: int = 8,
    max_width: int = 256,
    max_passes: int | None = None,
    backend: str = "auto",
    progress: Progress | None = None,
) -> SearchResult:
    """Beam search with incumbent completion, repeated with doubled width until the time limit.

    Args:
      graph: the graph.
      seconds: wall-time limit (default 30), compilation included; a pass is abandoned when the
        last depth took longer than the time left (one depth lasts well under a second on the
        reference graphs). Skipped (the first incumbent is returned) when the first pass is
        predicted not to reach depth 50 (or its end) within it.
      init_order: the first incumbent (default: the cheapest of Markowitz, reverse, forward).
      width: W of the first pass (default 16); each further pass doubles it, up to `max_width`.
      per_state: M, the cheapest next eliminations kept per beam state (default 8).
      max_width: largest beam width (default 256).
      max_passes: stop after this many passes even before the time limit (default None).
      backend: evaluator back end, "auto", "bitset" or "env".
      progress: called with (best cost, fraction of the budget used) on improvements.

    Returns:
      A `SearchResult`; ``info["orders_per_second"]`` counts completed orders scored per second
      (leaving out the first depth of each pass, which compiles for a new width);
      ``info["skipped"]`` the reason when nothing was scored (else None).
    """
    if width < 1 or per_state < 1:
        raise SearchError(f"width and per_state must be at least 1, got {width} and {per_state}")
    deadline = Deadline(seconds)
    if graph.num_intermediates == 0:
        return SearchResult((), 0, "beam", optimal=True, seconds=deadline.elapsed())
    if init_order is None:
        init_order = min((orders_lib.resolve(graph, n) for n in ("markowitz", "reverse", "forward")),
                         key=lambda o: graph_cost(graph, o))
    incumbent = np.asarray(check_order(graph, init_order), dtype=np.int32) - 1
    inc_cost = graph_cost(graph, [int(a) + 1 for a in incumbent])

    def on_improve(cost):
        if progress is not None:
            progress(cost, deadline.fraction())

    on_improve(inc_cost)
    # A depth completes width x per_state orders and tries every action of every state.
    T, V = graph.num_intermediates, graph.num_vertices
    depth_seconds = (width * per_state + width * V / T) * order_seconds(graph, backend=backend)
    depths = min(T, 50)
    if depth_seconds * depths > deadline.left():
        reason = (f"{depths} depths of width {width} are predicted to take {depth_seconds * depths:.3g} s, "
                  f"more than the {seconds:g} s limit")
        return SearchResult(tuple(int(a) + 1 for a in incumbent), inc_cost, "beam", seconds=deadline.elapsed(),
                            info={"orders_per_second": 0.0, "passes": 0, "final_width": width, "skipped": reason})
    ev = make_evaluator(graph, backend=backend)
    evaluations, passes, warm_evals, warm_time = 0, 0, 0, 0.0
    w = width
    while not deadline.expired() and (max_passes is None or passes < max_passes):
        incumbent, inc_cost, n, finished, warm = _one_pass(ev, w, per_state, incumbent, inc_cost, deadline,
                                                           on_improve)
        evaluations += n
        passes += finished
        warm_evals, warm_time = warm_evals + warm[0], warm_time + warm[1]
        if w < max_width:
            w = min(2 * w, max_width)
    order = [int(a) + 1 for a in incumbent]
    exact_cost = graph_cost(graph, order)
    if exact_cost != inc_cost:
        raise AssertionError(f"beam search scored {inc_cost} but graph.cost gives {exact_cost}")
    rate = warm_evals / warm_time if warm_time > 0 else 0.0
    return SearchResult(
        order=tuple(order),
        cost=exact_cost,
        method="beam",
        evaluations=evaluations,
        seconds=deadline.elapsed(),
        info={"orders_per_second": rate, "passes": passes, "final_width": w, "backend": ev.backend,
              "skipped": None},
    )
