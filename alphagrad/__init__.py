"""alphagrad: exact Jacobians by cross-country vertex elimination, with searched elimination orders."""

from alphagrad.version import VERSION as __version__

from alphagrad.errors import (  # noqa: E402
    AlphagradError,
    GraphMismatchError,
    OrderError,
    OrderFileError,
    TraceError,
    UnsupportedPrimitiveError,
)
from alphagrad import env, graph, interpreter, orders, tasks  # noqa: E402
from alphagrad.agents.portfolio import optimize  # noqa: E402

__all__ = [
    "AlphagradError",
    "GraphMismatchError",
    "OrderError",
    "OrderFileError",
    "TraceError",
    "UnsupportedPrimitiveError",
    "env",
    "graph",
    "interpreter",
    "optimize",
    "orders",
    "tasks",
    "__version__",
]
