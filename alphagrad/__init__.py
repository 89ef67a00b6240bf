"""alphagrad: exact Jacobians by cross-country vertex elimination, with searched elimination orders."""

from alphagrad.version import VERSION as __version__
from alphagrad.errors import (
    AlphagradError,
    AuxOutputError,
    GraphMismatchError,
    OrderError,
    OrderFileError,
    TraceError,
    UnsupportedPrimitiveError,
)
from alphagrad import agents, env, graph, interpreter, orders, tasks
from alphagrad.agents import optimize

__all__ = [
    "AlphagradError",
    "AuxOutputError",
    "GraphMismatchError",
    "OrderError",
    "OrderFileError",
    "TraceError",
    "UnsupportedPrimitiveError",
    "agents",
    "env",
    "graph",
    "interpreter",
    "optimize",
    "orders",
    "tasks",
    "__version__",
]
