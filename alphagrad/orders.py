"""Elimination orders: the classic ones, and the JSON order file (DESIGN.md section 4).

An order is a list of vertex numbers (1-based jaxpr equation positions) containing every
intermediate vertex of a graph exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from alphagrad.errors import GraphMismatchError, OrderError, OrderFileError
from alphagrad.graph import Graph
from alphagrad.graph._cost import Eliminator, check_order

__all__ = [
    "FORMAT",
    "OrderFile",
    "forward",
    "reverse",
    "markowitz",
    "markowitz_degree",
    "resolve",
    "save",
    "load",
]

FORMAT = "alphagrad-order/1"
NAMED_ORDERS = ("forward", "reverse", "markowitz")


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
    # On an out-edge v->c the vertex is the source, on an in-edge p->v the destination.
    as_source, as_destination = eliminator.src_shape[node], eliminator.dst_shape[node]
    out_w = sum(_vertex_side_weight(code, as_source) for code in eliminator.succs[node].values())
    in_w = sum(_vertex_side_weight(code, as_destination) for code in eliminator.preds[node].values())
    return out_w * in_w


def markowitz(graph: Graph, *, degree: str = "cost") -> list[int]:
    """Minimal Markowitz order: greedily eliminate the vertex of smallest degree; ties to the lowest number.

    Args:
      graph: the graph.
      degree: "cost" (default) measures a vertex by the multiplications its elimination costs now
        under the graph's cost model; "components" uses the reference's per-component estimate
        (`markowitz_degree`). On scalar graphs both equal in-degree × out-degree and reproduce the
        reference's order exactly; on tensor graphs "cost" finds much cheaper orders
        (docs/cost-model.md lists both).

    Returns:
      [num_intermediates] vertex numbers.
    """
    if degree not in ("cost", "components"):
        raise ValueError(f"degree must be 'cost' or 'components', got {degree!r}")
    eliminator = Eliminator(graph)
    measure = eliminator.elimination_cost if degree == "cost" else (lambda k: markowitz_degree(eliminator, k))
    remaining = list(graph.intermediates)
    order: list[int] = []
    while remaining:
        best = min(remaining, key=lambda k: (measure(k), k))
        eliminator.eliminate(best)
        remaining.remove(best)
        order.append(best)
    return order


_BUILDERS = {"forward": forward, "reverse": reverse, "markowitz": markowitz}


@dataclasses.dataclass(frozen=True)
class OrderFile:
    """The contents of an order file.

    Attributes:
      order: the elimination order (vertex numbers).
      multiplications: its cost under ``cost_model``.
      cost_model: name of the cost model that scored it.
      graph: ``{"fingerprint", "num_inputs", "num_intermediates", "num_outputs"}`` of its graph.
      baselines: ``{"forward", "reverse", "markowitz"}`` costs on the same graph.
      method, task, created, alphagrad_version: provenance.
      extra: any further metadata keys found in the file.
    """

    order: tuple[int, ...]
    multiplications: int
    cost_model: str
    graph: dict[str, Any]
    baselines: dict[str, int]
    method: str = ""
    task: str = ""
    created: str = ""
    alphagrad_version: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check_graph(self, graph: Graph) -> None:
        """Raises `GraphMismatchError` unless this order was made for `graph`."""
        if self.graph.get("fingerprint") != graph.fingerprint:
            mine = _sizes(self.graph)
            theirs = _sizes(graph.summary())
            raise GraphMismatchError(
                f"this order was made for another graph ({mine}, {self.graph.get('fingerprint', '?')[:19]}…"
                f"{' task ' + self.task if self.task else ''}) than the one it is applied to "
                f"({theirs}, {graph.fingerprint[:19]}…{' ' + graph.name if graph.name else ''}); "
                "re-run the search for this graph"
            )

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "order": list(self.order),
            "multiplications": self.multiplications,
            "cost_model": self.cost_model,
            "graph": dict(self.graph),
            "baselines": dict(self.baselines),
            "method": self.method,
            "task": self.task,
            "created": self.created,
            "alphagrad_version": self.alphagrad_version,
        }
        data.update(self.extra)
        return data


def _sizes(summary: dict[str, Any]) -> str:
    return (
        f"{summary.get('num_inputs', '?')} inputs, {summary.get('num_intermediates', '?')} intermediates, "
        f"{summary.get('num_outputs', '?')} outputs"
    )


def resolve(graph: Graph, order) -> list[int]:
    """Turns any accepted order spelling into a validated list of vertex numbers.

    Args:
      graph: the graph the order is for.
      order: "forward", "reverse", "markowitz", a sequence of vertex numbers, or an `OrderFile`
        (whose fingerprint must match `graph`).

    Raises:
      OrderError: unknown name or invalid order. GraphMismatchError: an order file for another graph.
    """
    if isinstance(order, str):
        try:
            return _BUILDERS[order](graph)
        except KeyError:
            raise OrderError(
                f"unknown order name {order!r}; use one of {', '.join(NAMED_ORDERS)} or a list of vertex numbers"
            ) from None
    if isinstance(order, OrderFile):
        order.check_graph(graph)
        order = order.order
    return check_order(graph, order)


def save(
    path: str | os.PathLike,
    order: Sequence[int],
    *,
    graph: Graph,
    method: str = "",
    task: str = "",
    **meta: Any,
) -> OrderFile:
    """Scores `order` on `graph` and writes an order file atomically (temporary file, then rename).

    Args:
      path: destination file.
      order: the elimination order (validated against `graph`).
      graph: the graph it was made for; its fingerprint and the baselines are recorded.
      method, task: provenance; further keyword arguments are stored as extra metadata.

    Returns:
      The `OrderFile` that was written.
    """
    from alphagrad import __version__
    from alphagrad.graph import cost

    steps = check_order(graph, order)
    record = OrderFile(
        order=tuple(steps),
        multiplications=cost(graph, steps),
        cost_model=graph.cost_model,
        graph=graph.summary(),
        baselines={name: cost(graph, name) for name in NAMED_ORDERS},
        method=method,
        task=task or graph.name,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        alphagrad_version=__version__,
        extra=dict(meta),
    )
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".order-", suffix=".json.tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record.to_json(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return record


_KNOWN_KEYS = {f.name for f in dataclasses.fields(OrderFile)} | {"format"}


def load(path: str | os.PathLike, graph: Graph | None = None) -> OrderFile:
    """Reads an order file; with `graph`, checks it was made for that graph and re-validates it.

    Raises:
      OrderFileError: unreadable or malformed file. GraphMismatchError: made for another graph.
      OrderError: the order is not valid for `graph`.
    """
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise OrderFileError(f"cannot read order file {os.fspath(path)!r}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OrderFileError(
            f"{os.fspath(path)!r} is not an alphagrad order file (expected \"format\": \"{FORMAT}\")"
        )
    missing = [k for k in ("order", "multiplications", "graph") if k not in data]
    if missing:
        raise OrderFileError(f"order file {os.fspath(path)!r} lacks the field(s) {', '.join(missing)}")
    if not isinstance(data["graph"], dict) or "fingerprint" not in data["graph"]:
        raise OrderFileError(f"order file {os.fspath(path)!r} has no graph fingerprint")
    order = data["order"]
    if not isinstance(order, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in order):
        raise OrderFileError(f"order file {os.fspath(path)!r}: \"order\" must be a list of vertex numbers")
    record = OrderFile(
        order=tuple(order),
        multiplications=int(data["multiplications"]),
        cost_model=str(data.get("cost_model", "")),
        graph=dict(data["graph"]),
        baselines={k: int(v) for k, v in dict(data.get("baselines", {})).items()},
        method=str(data.get("method", "")),
        task=str(data.get("task", "")),
        created=str(data.get("created", "")),
        alphagrad_version=str(data.get("alphagrad_version", "")),
        extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
    )
    if graph is not None:
        record.check_graph(graph)
        check_order(graph, record.order)
    return record
