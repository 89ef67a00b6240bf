"""The elimination graph: tracing JAX functions, the reference graphs, and the cost model.

    >>> from alphagrad import graph
    >>> g = graph.trace(f, x, y)
    >>> graph.cost(g, "reverse")
"""

from alphagrad.graph._cost import (
    CODES,
    MAX_CODE,
    MIN_CODE,
    NUM_CODES,
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
from alphagrad.graph._rules import edge_codes
from alphagrad.graph._rules import normalise as normalise_shape
from alphagrad.graph._trace import REUSED_OUTPUT_CODE, SUPPORTED_PRIMITIVES, trace

__all__ = [
    "CODES",
    "CostModel",
    "Edge",
    "Eliminator",
    "Graph",
    "MAX_CODE",
    "MIN_CODE",
    "NUM_CODES",
    "REUSED_OUTPUT_CODE",
    "ReferenceInfo",
    "SUPPORTED_PRIMITIVES",
    "Vertex",
    "check_order",
    "cost",
    "cost_model",
    "cost_models",
    "edge_codes",
    "elimination_costs",
    "load_reference",
    "normalise_shape",
    "reference_info",
    "reference_names",
    "trace",
]
