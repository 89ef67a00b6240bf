"""Searches for cheap elimination orders: ANGEL heuristics, simulated annealing, beam search, an
exact solver, a portfolio over them, and (in `alphagrad.agents.alphazero`) the AlphaZero agent.

    >>> from alphagrad import agents
    >>> result = agents.search(graph, "best", seconds=60)     # SearchResult(order, cost, optimal, ...)
    >>> order_file = agents.optimize(f, x, minutes=1.0)       # OrderFile for interpreter.jacobian
    >>> interpreter.jacobian(f, "auto")                       # "auto" is registered on import
"""

from alphagrad.agents._result import SearchError, SearchResult
from alphagrad.agents.annealing import anneal
from alphagrad.agents.beam import beam_search
from alphagrad.agents.exact import cut_lower_bound, solve_exact
from alphagrad.agents.heuristics import heuristic_order, search_heuristics
from alphagrad.agents.portfolio import (
    AUTO_MAX_SECONDS,
    AUTO_SECONDS,
    METHODS,
    alphazero_status,
    auto_order,
    cache_dir,
    floor_order,
    optimize,
    search,
    to_order_file,
)
from alphagrad.graph import register_order as _register_order

# `order="auto"` everywhere an order is taken (graph.cost, interpreter.jacobian): the interpreter
# sits beside the searches, not above them, so the searches hand it in through the registry.
_register_order("auto", auto_order)

__all__ = [
    "AUTO_MAX_SECONDS",
    "AUTO_SECONDS",
    "METHODS",
    "SearchError",
    "SearchResult",
    "alphazero_status",
    "anneal",
    "auto_order",
    "beam_search",
    "cache_dir",
    "cut_lower_bound",
    "floor_order",
    "heuristic_order",
    "optimize",
    "search",
    "search_heuristics",
    "solve_exact",
    "to_order_file",
]
