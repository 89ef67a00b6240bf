"""The JSON order file (DESIGN.md section 4), and the classic orders of `alphagrad.graph` re-exported.

An order is a list of vertex numbers (1-based jaxpr equation positions) containing every
intermediate vertex of a graph exactly once.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Sequence
from typing import Any

from alphagrad.errors import GraphMismatchError, OrderFileError
from alphagrad.files import write_atomically
from alphagrad.graph import (
    CLASSIC_ORDERS,
    Graph,
    check_order,
    cost,
    forward,
    markowitz,
    markowitz_degree,
    resolve_order,
    reverse,
)
from alphagrad.version import VERSION

__all__ = [
    "FORMAT",
    "OrderFile",
    "baselines",
    "forward",
    "reverse",
    "markowitz",
    "markowitz_degree",
    "resolve",
    "save",
    "load",
    "record",
]

FORMAT = "alphagrad-order/1"
#: The baselines recorded in every order file.
NAMED_ORDERS = CLASSIC_ORDERS

#: How many graphs' baselines `baselines` keeps (the last ones scored).
_BASELINES_KEPT = 8
_baselines: dict[tuple[str, str], dict[str, int]] = {}


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
    """Turns any accepted order spelling into a validated list of vertex numbers (`graph.resolve_order`).

    Args:
      graph: the graph the order is for.
      order: "forward", "reverse", "markowitz" (or another registered name), a sequence of vertex
        numbers, a callable ``Graph -> order``, or an `OrderFile` (whose fingerprint must match `graph`).

    Raises:
      OrderError: unknown name or invalid order. GraphMismatchError: an order file for another graph.
    """
    return resolve_order(graph, order)


def baselines(graph: Graph) -> dict[str, int]:
    """The costs of the classic orders (`NAMED_ORDERS`) on `graph`: what every order file records.

    Remembered for the last few graphs (by fingerprint and cost model), so that a search can
    score them before it starts, knowing how long that takes, and its order file then costs
    only the order's own evaluation. On a 10,000-equation program they take 1-2 s (Markowitz's
    ordering is near-linear in the edges, docs/benchmarks.md).
    """
    key = (graph.fingerprint, graph.cost_model)
    known = _baselines.get(key)
    if known is None:
        known = {name: cost(graph, name) for name in NAMED_ORDERS}
        if len(_baselines) >= _BASELINES_KEPT:
            del _baselines[next(iter(_baselines))]
        _baselines[key] = known
    return dict(known)


def record(order: Sequence[int], *, graph: Graph, method: str = "", task: str = "", **meta: Any) -> OrderFile:
    """The `OrderFile` of `order` on `graph`: validated, scored, with the baselines and provenance.

    Args:
      order: the elimination order (validated against `graph`).
      graph: the graph it was made for; its fingerprint and the baselines are recorded.
      method, task: provenance (task defaults to the graph's name); further keyword arguments
        are stored as extra metadata.
    """
    steps = check_order(graph, order)
    return OrderFile(
        order=tuple(steps),
        multiplications=cost(graph, steps),
        cost_model=graph.cost_model,
        graph=graph.summary(),
        baselines=baselines(graph),
        method=method,
        task=task or graph.name,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        alphagrad_version=VERSION,
        extra=dict(meta),
    )


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
    written = record(order, graph=graph, method=method, task=task, **meta)
    write_atomically(path, json.dumps(written.to_json(), indent=2) + "\n")
    return written


_KNOWN_KEYS = {f.name for f in dataclasses.fields(OrderFile)} | {"format"}
_TEXT_FIELDS = ("cost_model", "method", "task", "created", "alphagrad_version")
_GRAPH_SIZES = ("num_inputs", "num_intermediates", "num_outputs")


def _is_count(value: Any) -> bool:
    """A JSON integer >= 0 (not a bool, not a float such as NaN or Infinity)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: Any) -> str:
    """`value` as it would read in the file, shortened for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _validated(data: dict[str, Any], where: str) -> OrderFile:
    """The `OrderFile` of a parsed order file, every field checked (`where` names the file)."""

    def bad(field: str, expected: str, value: Any) -> OrderFileError:
        return OrderFileError(f"{where}: \"{field}\" must be {expected}, got {_shown(value)}")

    order = data["order"]
    if not isinstance(order, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in order):
        raise OrderFileError(f"{where}: \"order\" must be a list of vertex numbers")
    if not _is_count(data["multiplications"]):
        raise bad("multiplications", "a non-negative integer", data["multiplications"])
    summary = data["graph"]
    if not isinstance(summary, dict) or "fingerprint" not in summary:
        raise OrderFileError(f"{where} has no graph fingerprint (\"graph\": {{\"fingerprint\": ...}})")
    if not isinstance(summary["fingerprint"], str):
        raise bad("graph.fingerprint", "a string", summary["fingerprint"])
    for key in _GRAPH_SIZES:
        if key in summary and not _is_count(summary[key]):
            raise bad(f"graph.{key}", "a non-negative integer", summary[key])
    baselines = data.get("baselines", {})
    if not isinstance(baselines, dict):
        raise bad("baselines", 'an object such as {"forward": 151, "reverse": 90}', baselines)
    for name, value in baselines.items():
        if not _is_count(value):
            raise bad(f"baselines.{name}", "a non-negative integer", value)
    for key in _TEXT_FIELDS:
        if not isinstance(data.get(key, ""), str):
            raise bad(key, "a string", data[key])
    return OrderFile(
        order=tuple(order),
        multiplications=data["multiplications"],
        cost_model=data.get("cost_model", ""),
        graph=dict(summary),
        baselines=dict(baselines),
        method=data.get("method", ""),
        task=data.get("task", ""),
        created=data.get("created", ""),
        alphagrad_version=data.get("alphagrad_version", ""),
        extra={k: v for k, v in data.items() if k not in _KNOWN_KEYS},
    )


def load(path: str | os.PathLike, graph: Graph | None = None) -> OrderFile:
    """Reads an order file; with `graph`, checks it was made for that graph and re-validates it.

    Every field is checked on reading: ``multiplications`` and the ``baselines`` and graph sizes
    are non-negative integers (not NaN, Infinity or strings), ``graph.fingerprint`` and the
    provenance fields are strings, ``order`` is a list of integers.

    Raises:
      OrderFileError: unreadable or malformed file (the message names the file and the field).
      GraphMismatchError: made for another graph. OrderError: the order is not valid for `graph`.
    """
    where = f"order file {os.fspath(path)!r}"
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:  # ValueError: bad JSON, bad UTF-8, an integer too long to parse
        raise OrderFileError(f"cannot read {where}: {err}") from err
    except RecursionError:
        raise OrderFileError(f"cannot read {where}: its JSON is nested too deeply") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise OrderFileError(
            f"{os.fspath(path)!r} is not an alphagrad order file (expected \"format\": \"{FORMAT}\")"
        )
    missing = [k for k in ("order", "multiplications", "graph") if k not in data]
    if missing:
        raise OrderFileError(f"{where} lacks the field(s) {', '.join(missing)}")
    loaded = _validated(data, where)
    if graph is not None:
        loaded.check_graph(graph)
        check_order(graph, loaded.order)
    return loaded
