"""The elimination graph: tracing JAX functions, the reference graphs, and the cost model.

    >>> from alphagrad import graph
    >>> g = graph.trace(f, x, y)
    >>> graph.cost(g, "reverse")
"""

from alphagrad.graph._cost import (
    CostModel,
    Eliminator,
    check_order,
    cost,
    cost_model,
    cost_models,
    elimination_costs,
)
from alphagrad.graph._graph import Edge, Graph, Vertex
from alphagrad.graph._reference import ReferenceInfo, load_reference, reference_info, reference_names
from alphagrad.graph._trace import SUPPORTED_PRIMITIVES, trace

__all__ = [
    "CostModel",
    "Edge",
    "Eliminator",
    "Graph",
    "ReferenceInfo",
    "SUPPORTED_PRIMITIVES",
    "Vertex",
    "check_order",
    "cost",
    "cost_model",
    "cost_models",
    "elimination_costs",
    "load_reference",
    "reference_info",
    "reference_names",
    "trace",
]
