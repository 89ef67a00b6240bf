"""Loader for the reference graphs of the AlphaGrad paper (graphs.json layout)."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Any

from alphagrad.errors import AlphagradError
from alphagrad.graph._graph import Edge, Graph, Vertex

__all__ = ["load_reference", "reference_info", "ReferenceInfo", "reference_names"]


@dataclasses.dataclass(frozen=True)
class ReferenceInfo:
    """The published numbers that come with a reference graph (AlphaGrad cost model).

    Attributes:
      forward, reverse, minimal_markowitz: multiplications of the reference's orders.
      minimal_markowitz_order: the order the reference's Markowitz heuristic picked.
      best_published: the best count the AlphaGrad agent reported.
    """

    forward: int
    reverse: int
    minimal_markowitz: int
    minimal_markowitz_order: tuple[int, ...]
    best_published: int


def _field(entry: dict[str, Any], key: str) -> Any:
    value = entry[key]
    # graphs.json stores every field as a JSON-encoded string.
    return json.loads(value) if isinstance(value, str) else value


def _read(path: str | os.PathLike | None) -> dict[str, Any]:
    try:
        if path is None:
            text = importlib.resources.files("alphagrad.graph").joinpath("data", "reference_graphs.json").read_text()
        else:
            with open(path) as fh:
                text = fh.read()
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as err:
        raise AlphagradError(f"cannot read reference graphs from {path}: {err}") from err
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _to_graph(name: str, entry: dict[str, Any]) -> Graph:
    num_inputs = int(_field(entry, "num_inputs"))
    num_vertices = int(_field(entry, "num_vertices"))
    rows = _field(entry, "edges")
    shapes: dict[int, tuple[int, int]] = {}
    edges = []
    for src, dst, code, o1, o2, i1, i2 in rows:
        edges.append(Edge(int(src), int(dst), int(code), (int(o1), int(o2)), (int(i1), int(i2))))
        shapes.setdefault(int(dst), (int(o1), int(o2)))
        shapes.setdefault(int(src), (int(i1), int(i2)))
    vertices = tuple(
        Vertex(number=k, shape=shapes.get(num_inputs + k, (1, 1))) for k in range(1, num_vertices + 1)
    )
    outputs = tuple(int(i) - num_inputs for i in _field(entry, "output_vertex_ids"))
    return Graph(
        num_inputs=num_inputs,
        input_shapes=tuple(shapes.get(i, (1, 1)) for i in range(1, num_inputs + 1)),
        vertices=vertices,
        edges=tuple(edges),
        outputs=outputs,
        cost_model="alphagrad-2024",
        name=f"ref:{name}",
    )


def load_reference(path: str | os.PathLike | None = None) -> dict[str, Graph]:
    """Reads reference graphs (the layout of shared/reference/graphs.json).

    Args:
      path: a graphs.json file; None reads the copy shipped with alphagrad.

    Returns:
      name -> Graph, with ``Graph.name == "ref:" + name`` and the ``alphagrad-2024`` cost model.
    """
    return {name: _to_graph(name, entry) for name, entry in _read(path).items()}


def reference_info(path: str | os.PathLike | None = None) -> dict[str, ReferenceInfo]:
    """The published costs that come with each reference graph (see `load_reference`)."""
    return {
        name: ReferenceInfo(
            forward=int(_field(e, "fwd")),
            reverse=int(_field(e, "rev")),
            minimal_markowitz=int(_field(e, "minimal_markowitz")),
            minimal_markowitz_order=tuple(int(k) for k in _field(e, "minimal_markowitz_order")),
            best_published=int(_field(e, "best_published_cost")),
        )
        for name, e in _read(path).items()
    }


def reference_names() -> list[str]:
    """Names of the reference graphs shipped with alphagrad."""
    return list(_read(None))
