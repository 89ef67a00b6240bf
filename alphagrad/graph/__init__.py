"""The elimination graph: tracing JAX functions, the reference graphs, the cost models, the
elimination engine, and the classic orders.

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
    check_order,
    cost_model,
    cost_model_of,
    cost_models,
    extended_cost_model,
)
from alphagrad.graph._engine import Eliminator, Product, Step, elimination_costs, plan
from alphagrad.graph._graph import Edge, Graph, Vertex
from alphagrad.graph._orders import (
    CLASSIC_ORDERS,
    cost,
    forward,
    markowitz,
    markowitz_degree,
    order_names,
    register_order,
    resolve_order,
    reverse,
)
from alphagrad.graph._reference import ReferenceInfo, load_reference, reference_info, reference_names
from alphagrad.graph._rules import LINEARISED_INDEX_MAPS, edge_codes
from alphagrad.graph._rules import normalise as normalise_shape
from alphagrad.graph._structure import INDEX_MAP, VALUELESS, ProductPlan, Structure, product_plan, structure_of
from alphagrad.graph._trace import (
    INTERPRETER_COST_MODEL,
    Equation,
    LeafRef,
    Operand,
    Program,
    PythonLeaves,
    REUSED_OUTPUT_CODE,
    SUPPORTED_PRIMITIVES,
    ValueRef,
    bind_python_leaves,
    jacobian_graph,
    python_leaves,
    trace,
)

__all__ = [
    "LINEARISED_INDEX_MAPS",
    "CLASSIC_ORDERS",
    "CODES",
    "CostModel",
    "Edge",
    "Equation",
    "Eliminator",
    "Graph",
    "INDEX_MAP",
    "INTERPRETER_COST_MODEL",
    "LeafRef",
    "MAX_CODE",
    "MIN_CODE",
    "NUM_CODES",
    "Operand",
    "Product",
    "ProductPlan",
    "Program",
    "PythonLeaves",
    "REUSED_OUTPUT_CODE",
    "ReferenceInfo",
    "SUPPORTED_PRIMITIVES",
    "Step",
    "Structure",
    "VALUELESS",
    "ValueRef",
    "Vertex",
    "bind_python_leaves",
    "check_order",
    "cost",
    "cost_model",
    "cost_model_of",
    "extended_cost_model",
    "cost_models",
    "edge_codes",
    "elimination_costs",
    "forward",
    "jacobian_graph",
    "load_reference",
    "markowitz",
    "markowitz_degree",
    "normalise_shape",
    "order_names",
    "plan",
    "product_plan",
    "python_leaves",
    "reference_info",
    "reference_names",
    "register_order",
    "resolve_order",
    "reverse",
    "structure_of",
    "trace",
]
