"""The classic elimination orders and order resolution: every spelling of an order becomes a list.

An order is a list of vertex numbers (1-based jaxpr equation positions) containing every
intermediate vertex of a graph exactly once. Named orders are looked up in a registry: this
module registers "forward", "reverse" and "markowitz"; parts above `graph` add their own with
`register_order` (`alphagrad.agents` registers "auto"), so that `graph.cost` and the
interpreter accept those names without importing upwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from alphagrad.errors import OrderError
from alphagrad.graph._cost import check_order
from alphagrad.graph._engine import Eliminator, elimination_costs
from alphagrad.graph._graph import Graph

__all__ = [
    "CLASSIC_ORDERS",
    "cost",
    "forward",
    "reverse",
    "markowitz",
    "markowitz_degree",
    "order_names",
    "register_order",
    "resolve_order",
]

#: The orders every graph is compared against (the baselines of an order file).
CLASSIC_ORDERS = ("forward", "reverse", "markowitz")


def forward(graph: Graph) -> list[int]:
    """Forward mode: the intermediates in ascending (topological) order."""
    return list(graph.intermediates)


def reverse(graph: Graph) -> list[int]:
    """Reverse mode: the intermediates in descending order."""
    return list(reversed(graph.intermediates))


def _vertex_side_weight(code: int, vertex_shape: tuple[int, int]) -> int:
    """Components of one edge as seen from the vertex end (REFERENCE.md 2.4, made total).

    Dense edges weigh the vertex's size, elementwise/Kronecker-paired edges weigh 1, and edges
    that are dense in one index pair weigh the vertex dimension of that dense pair.
    """
    d1, d2 = abs(vertex_shape[0]), abs(vertex_shape[1])
    if code == 1:
        return d1 * d2
    if code in (2, -2, 4, -4):  # the vertex's first index is tied, its second is dense
        return d2
    if code in (3, -3, 5, -5):
        return d1
    return 1


def markowitz_degree(eliminator: Eliminator, vertex: int) -> int:
    """The Markowitz degree of `vertex` in the current state: (Σ out-edge weights)(Σ in-edge weights).

    On scalar graphs this is in-degree × out-degree. For tensor edges the weights follow the
    reference's per-component rule (REFERENCE.md 2.4): a dense edge weighs the vertex's own size,
    an elementwise edge 1, a partly diagonal edge the vertex dimension of its dense index pair.
    """
    node = eliminator.graph.node_id(vertex)
    # On an out-edge v->c the vertex is the source, on an in-edge p->v the destination. An edge's
    # weight depends on its code and the vertex only: summed per class of edges, not per edge.
    as_source, as_destination = eliminator.src_shape[node], eliminator.dst_shape[node]
    ins, outs = eliminator.edge_classes(vertex)
    out_w = sum(count * _vertex_side_weight(code, as_source) for (code, _), count in outs.items())
    in_w = sum(count * _vertex_side_weight(code, as_destination) for (code, _), count in ins.items())
    return out_w * in_w


def markowitz(graph: Graph, *, degree: str = "cost") -> list[int]:
    """Minimal Markowitz order: greedily eliminate the vertex of smallest degree; ties to the lowest number.

    Args:
      graph: the graph.
      degree: "cost" (default) measures a vertex by the multiplications its elimination costs now
        under the graph's cost model, free eliminations by their number of products
        (`Eliminator.markowitz_key`); "components" uses the reference's per-component estimate
        (`markowitz_degree`). On scalar graphs both equal in-degree × out-degree and reproduce the
        reference's order exactly; on tensor graphs "cost" finds much cheaper orders
        (docs/cost-model.md lists both).

    Returns:
      [num_intermediates] vertex numbers.
    """
    if degree not in ("cost", "components"):
        raise ValueError(f"degree must be 'cost' or 'components', got {degree!r}")
    eliminator = Eliminator(graph)
    measure = eliminator.markowitz_key if degree == "cost" else (lambda k: markowitz_degree(eliminator, k))
    # Both degrees depend on a vertex's own edges only: the engine's heap recomputes the
    # neighbours' degrees after each step (near-linear in the edges, not quadratic).
    return eliminator.greedy(measure)[0]


_NAMED: dict[str, Callable[[Graph], Sequence[int]]] = {"forward": forward, "reverse": reverse, "markowitz": markowitz}


def register_order(name: str, builder: Callable[[Graph], Sequence[int]]) -> None:
    """Makes `name` an order spelling everywhere an order is accepted.

    Args:
      name: the new name (the classic names cannot be replaced).
      builder: ``Graph -> [num_intermediates] vertex numbers``; its result is validated on use.

    Raises:
      ValueError: `name` is one of `CLASSIC_ORDERS`.
    """
    if name in CLASSIC_ORDERS:
        raise ValueError(f"the classic order {name!r} cannot be replaced")
    _NAMED[name] = builder


def order_names() -> list[str]:
    """Every order name `resolve_order` accepts now (the classic ones first)."""
    return list(_NAMED)


def resolve_order(graph: Graph, order: Any) -> list[int]:
    """Turns any accepted order spelling into a validated list of vertex numbers.

    Args:
      graph: the graph the order is for.
      order: a name of `order_names()` ("forward", "reverse", "markowitz", and "auto" once
        `alphagrad.agents` is imported), a sequence of vertex numbers, a callable
        ``Graph -> order``, or an order record such as `alphagrad.orders.OrderFile` (any object
        with an ``order`` attribute and a ``check_graph(graph)`` method, which must accept `graph`).

    Returns:
      [num_intermediates] vertex numbers.

    Raises:
      OrderError: unknown name or invalid order. GraphMismatchError: an order record for another graph.
    """
    if isinstance(order, str):
        try:
            builder = _NAMED[order]
        except KeyError:
            raise OrderError(
                f"unknown order name {order!r}; use one of {', '.join(_NAMED)} or a list of vertex numbers"
                + ("" if "auto" in _NAMED else " ('auto' needs the searches: import alphagrad.agents)")
            ) from None
        return check_order(graph, builder(graph))
    if hasattr(order, "check_graph") and hasattr(order, "order"):
        order.check_graph(graph)
        return check_order(graph, order.order)
    if callable(order):
        return check_order(graph, order(graph))
    return check_order(graph, order)


def cost(graph: Graph, order: Any) -> int:
    """Multiplications needed to accumulate the Jacobian of `graph` by eliminating in `order`.

    Args:
      graph: the elimination graph.
      order: any spelling `resolve_order` accepts (a name, vertex numbers, a callable, an `OrderFile`).

    Raises:
      OrderError: the order is not a permutation of ``graph.intermediates``.
    """
    return int(sum(elimination_costs(graph, resolve_order(graph, order))))
