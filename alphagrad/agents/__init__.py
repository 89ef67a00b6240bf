"""Searches for cheap elimination orders: ANGEL heuristics, simulated annealing, beam search, an
exact solver, a portfolio over them, and (in `alphagrad.agents.alphazero`) the AlphaZero agent.

    >>> from alphagrad import agents
    >>> result = agents.search(graph, "best", seconds=60)     # SearchResult(order, cost, optimal, ...)
    >>> order_file = agents.optimize(f, x, minutes=1.0)       # OrderFile for interpreter.jacobian
"""

from alphagrad.agents._result import SearchError, SearchResult
from alphagrad.agents.annealing import anneal
from alphagrad.agents.beam import beam_search
from alphagrad.agents.exact import cut_lower_bound, solve_exact
from alphagrad.agents.heuristics import heuristic_order, search_heuristics
from alphagrad.agents.portfolio import (
    METHODS,
    alphazero_status,
    optimize,
    search,
    to_order_file,
)

__all__ = [
    "METHODS",
    "SearchError",
    "SearchResult",
    "alphazero_status",
    "anneal",
    "beam_search",
    "cut_lower_bound",
    "heuristic_order",
    "optimize",
    "search",
    "search_heuristics",
    "solve_exact",
    "to_order_file",
]
