"""The search portfolio: one entry point for every method, `optimize` for JAX functions.

    >>> from alphagrad.agents import portfolio
    >>> result = portfolio.search(graph, "best", seconds=60)       # SearchResult
    >>> order_file = portfolio.optimize(f, x, y, minutes=1.0)      # OrderFile for interpreter.jacobian

``best`` first takes the floor (`floor_order`: the cheapest of forward, reverse, Markowitz and
every deterministic heuristic chain that fits in at least `FLOOR_SECONDS_MIN`, whatever the
budget, so that it is never worse than the classic orders, nor on graphs of a few hundred
vertices than any chain), then spends its budget in this order and keeps the cheapest order:
random restarts of the heuristic chains (up to 10 % with the floor, at most 30 s), the exact
solver seeded with the best order (10 %, at most 30 s; on scalar graphs, and on tensor graphs of
at most 20 intermediates; it may prove the order optimal, which ends the search), beam search
(25 % of what is left) and simulated annealing started from everything found so far (the rest).

On long programs (about 1,000 equations and more) scoring one order on the batched core costs
more than beam search and annealing can use (`alphagrad.agents._batch.order_seconds`): they are
left out, and the heuristics get the budget (40 % where the exact solver's root bound, about
5 µs·V², fits in the rest, which then goes to the exact solver; else all of it). Every stage
stops at the budget (each reads the clock inside its own loops; no stage is interrupted from
outside), so ``best`` returns within it plus a small constant (the floor's minimum of
`FLOOR_SECONDS_MIN`, the exact solver's minimum of half a second) at any size.

AlphaZero is not part of ``best`` (training from scratch rarely pays off within one search
budget); run it explicitly with ``method="alphazero"``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from alphagrad.agents._batch import order_seconds
from alphagrad.agents._result import Deadline, Progress, SearchError, SearchResult
from alphagrad.agents.annealing import anneal
from alphagrad.agents.beam import beam_search
from alphagrad.agents.exact import solve_exact
from alphagrad.agents.heuristics import search_heuristics
from alphagrad.env import is_scalar_graph
from alphagrad import orders
from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph, jacobian_graph, resolve_order
from alphagrad.graph import cost as graph_cost
from alphagrad.orders import OrderFile

__all__ = [
    "AUTO_MAX_SECONDS",
    "AUTO_SECONDS",
    "FLOOR_SECONDS",
    "FLOOR_SECONDS_MIN",
    "METHODS",
    "alphazero_status",
    "auto_order",
    "cache_dir",
    "floor_order",
    "optimize",
    "search",
    "to_order_file",
]

METHODS = ("heuristics", "sa", "beam", "exact", "alphazero", "best")

#: `best` runs the exact solver on tensor graphs only up to this many intermediates.
_EXACT_TENSOR_LIMIT = 20

#: Seconds per V² of the exact solver's root bound (a maximum flow per vertex) on scalar graphs,
#: about 4.5 s at 1,000 vertices on a 2-core VM: `best` runs the solver only where it fits.
_EXACT_BOUND_SECONDS_PER_V2 = 5e-6

#: Default time limit of `floor_order`'s heuristic chains (forward, reverse and Markowitz always
#: complete): every chain fits on graphs of a few hundred vertices, where they take under a second.
FLOOR_SECONDS = 5.0

#: `best` gives the floor at least this long, whatever its budget.
FLOOR_SECONDS_MIN = 2.0


def alphazero_status() -> tuple[bool, str]:
    """(available, message): whether ``alphagrad.agents.alphazero`` imports and exposes ``train``."""
    try:
        module = importlib.import_module("alphagrad.agents.alphazero")
    except Exception as err:  # noqa: BLE001 - any import failure means "not available"
        return False, f"the AlphaZero agent is not available (importing alphagrad.agents.alphazero failed: {err})"
    if not callable(getattr(module, "train", None)):
        return False, "the AlphaZero agent is not available (alphagrad.agents.alphazero has no train function)"
    return True, "available"


def _alphazero(graph: Graph, seconds: float, progress: Progress | None) -> SearchResult:
    ok, message = alphazero_status()
    if not ok:
        raise SearchError(message + "; use --method best, sa, beam, heuristics or exact")
    module = importlib.import_module("alphagrad.agents.alphazero")
    deadline = Deadline(seconds)
    config_cls = getattr(module, "AlphaZeroConfig", None)
    config = None
    if config_cls is not None:
        config = config_cls()
        fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
        if "minutes" in fields:
            changes = {"minutes": seconds / 60.0}
            if "iterations" in fields:
                changes["iterations"] = None
            config = dataclasses.replace(config, **changes)

    def callback(row: dict[str, Any]) -> None:
        best = row.get("best") if isinstance(row, dict) else None
        if progress is not None and isinstance(best, (int, float)):
            progress(int(best), deadline.fraction())

    result = module.train(graph, config, callback=callback)
    order = list(getattr(result, "best_order", None) or [])
    if not order:
        raise SearchError("AlphaZero finished no game within the budget; give it more minutes")
    return SearchResult(tuple(order), graph_cost(graph, order), "alphazero", seconds=deadline.elapsed(),
                        info={"iterations": getattr(result, "iterations", None)})


def floor_order(graph: Graph, *, seconds: float | None = FLOOR_SECONDS) -> SearchResult:
    """The cheapest of the orders that cost no search: forward, reverse, Markowitz and every
    deterministic heuristic chain (`alphagrad.agents.heuristics.DEFAULT_CHAINS`) that fits in
    `seconds`.

    Pure Python on the elimination engine (nothing is compiled): from a few hundredths of a second
    to about a second on the tasks' graphs, where every chain fits. ``"auto"`` and
    ``search(..., "best")`` never return an order costlier than forward, reverse and Markowitz, nor
    than every chain that fits their floor's share of the budget (at least `FLOOR_SECONDS_MIN` of
    wall time: on a heavily loaded machine a chain that fits this function's `seconds` may be cut
    there, as at load 7 on a tensor graph of 89 intermediates whose chains take 1.4 s quiet);
    on the exact cost model Markowitz alone is often costlier than the cheaper of forward and
    reverse (docs/cost-model.md). On long programs with hub vertices some chains take minutes:
    they are stopped at the limit or skipped (`search_heuristics`), while forward, reverse and
    Markowitz always complete (Markowitz, near-linear in the edges on scalar programs, is stopped
    only once it costs more than one of the other two).

    Args:
      graph: the graph.
      seconds: time limit of the chains (default `FLOOR_SECONDS`; None: every chain, however
        long it takes).

    Returns:
      A `SearchResult` of method "heuristics"; ``info["chain"]`` names the winning order or chain,
      ``info["skipped"]`` the chains that did not fit.
    """
    # The chain "markowitz>forward" is graph.markowitz's order (tests/agents/test_heuristics.py).
    return search_heuristics(graph, seconds=seconds, random_chains=())


def _heuristics_stage(graph: Graph, seconds: float, seed: int, progress: Progress | None) -> SearchResult:
    """The floor (at least `FLOOR_SECONDS_MIN`), then random restarts of the chains for what is
    left of `seconds`."""
    deadline = Deadline(seconds)
    floor = floor_order(graph, seconds=max(seconds, FLOOR_SECONDS_MIN))
    if progress is not None:
        progress(floor.cost, deadline.fraction())
    if deadline.left() <= 0:
        return dataclasses.replace(floor, seconds=deadline.elapsed())
    restarts = search_heuristics(graph, seconds=deadline.left(), chains=(), seed=seed, progress=progress)
    best = restarts if restarts.cost < floor.cost else floor
    info = dict(best.info, chains=floor.info["chains"], random_restarts=restarts.info["random_restarts"])
    return dataclasses.replace(best, evaluations=floor.evaluations + restarts.evaluations,
                               seconds=deadline.elapsed(), info=info)


def _best(graph: Graph, seconds: float, seed: int, progress: Progress | None) -> SearchResult:
    deadline = Deadline(seconds)
    found: list[SearchResult] = []

    def report(cost: int, _fraction: float) -> None:
        if progress is not None:
            best = min([cost] + [r.cost for r in found])
            progress(best, deadline.fraction())

    def best_so_far() -> SearchResult:
        return min(found, key=lambda r: (r.cost, not r.optimal))

    share = min(0.1 * seconds, 30.0)
    # Beam search and annealing need thousands of scored orders; where one costs too much they
    # are left out, and their share goes to the heuristics and the exact solver.
    batched = order_seconds(graph) * 1000 <= 0.5 * seconds
    exact_seconds = max(0.5, share if batched else 0.6 * seconds)
    if is_scalar_graph(graph):  # the root bound must fit, or the solver would find nothing in time
        exact_fits = _EXACT_BOUND_SECONDS_PER_V2 * graph.num_vertices ** 2 <= max(0.25, 0.5 * exact_seconds)
    else:
        exact_fits = graph.num_intermediates <= _EXACT_TENSOR_LIMIT
    heuristics_seconds = share if batched else (0.4 * seconds if exact_fits else seconds)
    found.append(_heuristics_stage(graph, heuristics_seconds, seed, report))
    if exact_fits:
        if not batched:
            exact_seconds = max(0.5, deadline.left())
        # The solver reads the clock inside its bound and its expansions: it returns in time.
        exact = solve_exact(graph, seconds=exact_seconds, init_order=best_so_far().order, progress=report)
    else:  # no lower bound on tensor graphs: a partial search proves nothing
        exact = SearchResult(best_so_far().order, best_so_far().cost, "exact", info={"stopped": "skipped"})
    found.append(exact)
    lower = exact.lower_bound
    if batched and not exact.optimal and deadline.left() > 1.0:
        found.append(beam_search(graph, seconds=0.25 * deadline.left(), init_order=best_so_far().order,
                                 progress=report))
    if batched and not exact.optimal and best_so_far().cost > lower and deadline.left() > 1.0:
        starts = [best_so_far().order] + [r.order for r in found]
        found.append(anneal(graph, seconds=deadline.left(), init_orders=starts, seed=seed, progress=report))
    winner = best_so_far()
    optimal = exact.optimal or winner.cost <= lower
    return SearchResult(
        order=winner.order,
        cost=winner.cost,
        method="best",
        optimal=optimal,
        lower_bound=winner.cost if optimal else lower,
        evaluations=sum(r.evaluations for r in found),
        seconds=deadline.elapsed(),
        info={"found_by": winner.method, "stages": {r.method: r.cost for r in found}},
    )


def search(
    graph: Graph, method: str = "best", *, seconds: float = 60.0, seed: int = 0, progress: Progress | None = None
) -> SearchResult:
    """Runs one search method on `graph` within `seconds`.

    Args:
      graph: the graph.
      method: one of `METHODS`: "heuristics", "sa", "beam", "exact", "alphazero" or "best".
      seconds: wall-time budget (default 60).
      seed: seed of the randomised methods.
      progress: called with (best cost, fraction of the budget used).

    Returns:
      A `SearchResult` whose ``cost == graph.cost(graph, order)``.

    Raises:
      SearchError: unknown method, or "alphazero" when the agent is not available.
    """
    if method == "heuristics":
        return search_heuristics(graph, seconds=seconds, seed=seed, progress=progress)
    if method == "sa":
        return anneal(graph, seconds=seconds, seed=seed, progress=progress)
    if method == "beam":
        return beam_search(graph, seconds=seconds, progress=progress)
    if method == "exact":
        return solve_exact(graph, seconds=seconds, progress=progress)
    if method == "alphazero":
        return _alphazero(graph, seconds, progress)
    if method == "best":
        return _best(graph, seconds, seed, progress)
    raise SearchError(f"unknown search method {method!r}; choose one of {', '.join(METHODS)}")


def to_order_file(graph: Graph, result: SearchResult, *, task: str = "", path: str | None = None) -> OrderFile:
    """The `alphagrad.orders.OrderFile` of a search result (written to `path` if given)."""
    meta = {"optimal": result.optimal, "lower_bound": result.lower_bound, "search_seconds": round(result.seconds, 2)}
    if path is not None:
        return orders.save(path, result.order, graph=graph, method=result.method, task=task, **meta)
    return orders.record(result.order, graph=graph, method=result.method, task=task, **meta)


#: Search budget of ``order="auto"`` (seconds) on graphs of up to 2,000 edges (about 1,000
#: scalar equations), unless $ALPHAGRAD_AUTO_SECONDS says otherwise.
AUTO_SECONDS = 10.0

#: The largest budget of ``order="auto"``: beyond 2,000 edges it grows with the edges (the floor's
#: chains and the exact solver's bound take longer), up to this (reached at 6,000 edges). The first
#: call of a 10,000-equation program should stay within a minute with its compilation (about 30 s
#: on 2 cores); at 60 s the search alone took the minute (a generated 10,086-equation program,
#: which found an order of reverse's cost).
AUTO_MAX_SECONDS = 30.0


def cache_dir() -> str:
    """Where ``order="auto"`` keeps its order files: $ALPHAGRAD_CACHE, else ~/.cache/alphagrad."""
    return os.environ.get("ALPHAGRAD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "alphagrad")


def _auto_seconds(graph: Graph) -> float:
    """The budget of "auto": $ALPHAGRAD_AUTO_SECONDS (a finite number >= 0), else `AUTO_SECONDS`
    per 2,000 edges of `graph` (at least `AUTO_SECONDS`, at most `AUTO_MAX_SECONDS`)."""
    raw = os.environ.get("ALPHAGRAD_AUTO_SECONDS", "").strip()
    if not raw:
        return min(AUTO_MAX_SECONDS, AUTO_SECONDS * max(1.0, len(graph.edges) / 2000))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise AlphagradError(
            f"ALPHAGRAD_AUTO_SECONDS must be a number of seconds >= 0 (0: no search, the best classic or "
            f"heuristic order), got {raw!r}"
        )
    return seconds


def _cached_order(path: str, graph: Graph) -> list[int] | None:
    """The order of the cache file `path` if it is usable for `graph`, else None.

    Not usable: missing, unreadable, malformed, made for another graph, or its recorded cost is
    not what its order costs or exceeds a baseline recorded beside it (a stale or edited file).
    Each means the same thing for a cache: search again and overwrite the file.
    """
    try:
        record = orders.load(path, graph=graph)
        cost = graph_cost(graph, list(record.order))
    except Exception:  # noqa: BLE001 - whatever is wrong with a cache file, it must not stop the Jacobian
        return None
    if cost != record.multiplications or cost > min(record.baselines.values(), default=cost):
        return None
    return list(record.order)


def _outside_any_trace(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` run in a new thread, waited for; its exception is re-raised here.

    JAX keeps its trace state per thread, so a new thread starts at the top level, outside any
    ``jax.jit``, ``vmap`` or ``grad`` the caller is being traced under: the search's arrays are
    concrete, its jitted functions compile and run as in a plain program (and share their
    compilations with it). ``jax.ensure_compile_time_eval`` would also give concrete arrays, but
    it folds constants inside the search's own jitted functions and keys their compilations apart.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="alphagrad-auto")
    try:
        return pool.submit(fn, *args, **kwargs).result()
    finally:
        pool.shutdown(wait=False)


def _label(graph: Graph) -> str:
    return f"graph {graph.name!r}" if graph.name else f"graph {graph.fingerprint[:19]}…"


def _fallback(graph: Graph, seconds: float = FLOOR_SECONDS) -> tuple[list[int], str]:
    """(order, what it is) when the search failed: the floor (its chains within `seconds`), or the
    cheaper of forward and reverse should the heuristics fail too (those need nothing but the
    elimination engine)."""
    try:
        floor = floor_order(graph, seconds=seconds)
        return list(floor.order), f"{floor.info['chain']}, {floor.cost} multiplications"
    except Exception:  # noqa: BLE001 - "auto" must still give a Jacobian
        name = min(("forward", "reverse"), key=lambda n: graph_cost(graph, n))
        return resolve_order(graph, name), f"{name}, {graph_cost(graph, name)} multiplications"


def _scoring_reserve(graph: Graph) -> float:
    """Scores the classic orders of `graph` for its order file now (`orders.baselines`, then
    remembered) and returns the seconds to keep for the rest of the file: the order's own cost
    and the write, about two cost evaluations."""
    start = time.perf_counter()
    scored = orders.baselines(graph)
    return 2 * (time.perf_counter() - start) / max(1, len(scored))


def auto_order(graph: Graph) -> list[int]:
    """The order ``"auto"`` names: the cached searched order of `graph`, searched (method "best",
    `AUTO_SECONDS`, or on graphs of more than 2,000 edges that per 2,000 edges up to
    `AUTO_MAX_SECONDS`) and cached under `cache_dir()` once per graph fingerprint. At the largest
    budget the whole call (cache check, the order file's scoring, the search, the file's write)
    keeps within `AUTO_MAX_SECONDS` (plus the search's small constant): the search gets what the
    rest leaves.

    Registered with `alphagrad.graph.register_order` when `alphagrad.agents` is imported, so every
    place that takes an order (``graph.cost``, ``interpreter.jacobian``) accepts "auto", also
    under ``jax.jit``: the search runs in a thread of its own, outside the caller's trace.

    Never costlier than forward, reverse and Markowitz, nor than the heuristic chains that fit the
    floor's share of the budget (`floor_order`), and never stops the Jacobian:

    - $ALPHAGRAD_AUTO_SECONDS=0: no search and nothing written; a cached order, else the floor
      (`floor_order`, at most `FLOOR_SECONDS` of heuristic chains).
    - $ALPHAGRAD_AUTO_SECONDS=s: the budget is s seconds whatever the graph's size.
    - a cache file that cannot be used (damaged, for another graph, inconsistent): searched
      again and overwritten.
    - the search fails: a warning, and the floor (nothing is cached, so the next process
      searches again).
    - the cache cannot be written ($ALPHAGRAD_CACHE is a file, or not writable): a warning, and
      the searched order is used all the same.

    Raises:
      AlphagradError: $ALPHAGRAD_AUTO_SECONDS is not a number of seconds >= 0.
    """
    deadline = Deadline(None)
    seconds = _auto_seconds(graph)
    path = os.path.join(cache_dir(), "orders", graph.fingerprint.replace(":", "-") + ".json")
    cached = _cached_order(path, graph)
    if cached is not None:
        return cached
    if seconds == 0:
        return list(floor_order(graph).order)
    # The whole call keeps within the larger of the budget and the cap: what the cache check
    # took and the order file's scoring come out of the search's time once the budget is the cap.
    cap = max(seconds, AUTO_MAX_SECONDS)
    try:
        reserve = _scoring_reserve(graph)
        budget = min(seconds, max(0.0, cap - deadline.elapsed() - reserve))
        result = _outside_any_trace(search, graph, "best", seconds=budget)
    except Exception as err:  # noqa: BLE001 - "auto" must still give a Jacobian
        order, what = _fallback(graph, min(FLOOR_SECONDS, max(0.0, cap - deadline.elapsed())))
        warnings.warn(
            f"order='auto': the search for {_label(graph)} failed ({type(err).__name__}: {err}); using the "
            f"best order that needs no search instead ({what}). Nothing was cached; please report this "
            "error to alphagrad",
            stacklevel=2,
        )
        return order
    try:
        to_order_file(graph, result, path=path)
    except OSError as err:
        warnings.warn(
            f"order='auto' could not cache the order it found for {_label(graph)} in {path!r} ({err}); the "
            "order is used now but will be searched for again. Point $ALPHAGRAD_CACHE at a writable directory",
            stacklevel=2,
        )
    return list(result.order)


def optimize(
    f: Callable[..., Any],
    *example_args: Any,
    minutes: float = 1.0,
    method: str = "best",
    argnums: int | tuple[int, ...] = 0,
    seed: int = 0,
    progress: Progress | None = None,
):
    """The cheapest elimination order the search finds for the Jacobian of `f` at these inputs.

    The search runs on ``graph.jacobian_graph(f, *example_args, argnums=argnums)``, the graph
    (exact cost model) that ``interpreter.jacobian(f, order, argnums=argnums)`` executes, so the
    returned order applies to it directly.

    Args:
      f: a JAX-traceable function.
      *example_args: example inputs (arrays; only shapes and dtypes matter).
      minutes: budget of the whole call (default 1.0): the search gets what is left after
        tracing `f` and scoring the order file's baselines (`orders.baselines`), less a reserve
        for the order's own cost. Returns within it plus a small constant (`best`: the floor's
        `FLOOR_SECONDS_MIN`), on programs of 10,000 equations too.
      method: one of `METHODS` (default "best").
      argnums: the arguments to differentiate with respect to, as for ``jax.jacrev``.
      seed: seed of the randomised methods.
      progress: called with (best cost, fraction of the budget used).

    Returns:
      An `alphagrad.orders.OrderFile` (fingerprint of the graph, multiplications, baselines;
      ``extra["optimal"]`` says whether the order is proven optimal).
    """
    deadline = Deadline(60.0 * float(minutes))
    graph = jacobian_graph(f, *example_args, argnums=argnums)
    reserve = _scoring_reserve(graph)
    result = search(graph, method, seconds=max(0.0, deadline.left() - reserve), seed=seed, progress=progress)
    return to_order_file(graph, result, task=getattr(f, "__name__", "") or "")
