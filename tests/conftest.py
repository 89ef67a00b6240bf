"""Shared fixtures: the reference graphs and tiny hand-written graphs."""

from __future__ import annotations

import pytest

from alphagrad import graph
from alphagrad.graph import Edge, Graph, Vertex


@pytest.fixture(scope="session")
def reference_graphs() -> dict[str, Graph]:
    return graph.load_reference()


@pytest.fixture(scope="session")
def reference_info() -> dict[str, graph.ReferenceInfo]:
    return graph.reference_info()


def scalar_graph(num_inputs: int, num_vertices: int, edges, outputs, name: str = "") -> Graph:
    """A scalar graph from (src, dst) node-id pairs (inputs 1..num_inputs, vertex k = num_inputs + k)."""
    return Graph(
        num_inputs=num_inputs,
        input_shapes=((1, 1),) * num_inputs,
        vertices=tuple(Vertex(k) for k in range(1, num_vertices + 1)),
        edges=tuple(Edge(s, d, 1, (1, 1), (1, 1)) for s, d in edges),
        outputs=tuple(outputs),
        name=name,
    )


@pytest.fixture
def diamond() -> Graph:
    """x1, x2 -> v1 -> (v2, v3) -> v4 (output), plus v3 -> v5 (output)."""
    return scalar_graph(2, 5, [(1, 3), (2, 3), (3, 4), (3, 5), (4, 6), (5, 6), (5, 7)], outputs=[4, 5], name="diamond")
