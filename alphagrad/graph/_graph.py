"""The elimination graph: the one intermediate representation every part of alphagrad shares."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Edge", "Vertex", "Graph", "Shape2D"]

Shape2D = tuple[int, int]


class Edge(NamedTuple):
    """One partial Jacobian d(dst)/d(src).

    Node ids: ``1..num_inputs`` are the inputs, ``num_inputs + k`` is vertex ``k``.

    Attributes:
      src: node id of the source p.
      dst: node id of the destination v.
      code: structure code of the partial (REFERENCE.md section 1.3 and docs/cost-model.md).
      out_shape: v's shape, normalised to 2-D.
      in_shape: p's shape, normalised to 2-D.
    """

    src: int
    dst: int
    code: int
    out_shape: Shape2D
    in_shape: Shape2D


@dataclasses.dataclass(frozen=True)
class Vertex:
    """A vertex: one equation of the (inlined) jaxpr, or an output copy appended after them.

    Attributes:
      number: 1-based vertex number; equals the position of the equation in the jaxpr.
      primitive: the jaxpr primitive's name ("" where unknown, e.g. for reference graphs).
      shape: the output's shape normalised to 2-D (scalar -> (1, 1), vector (n,) -> (n, 1)).
      source: "file:line (function)" of the user code that emitted the equation, or "".
    """

    number: int
    primitive: str = ""
    shape: Shape2D = (1, 1)
    source: str = ""


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """An immutable elimination graph (a computational graph whose edges carry structured partials).

    Attributes:
      num_inputs: number of input nodes (one per leaf of the flattened arguments).
      input_shapes: [num_inputs] normalised 2-D shapes of the inputs.
      vertices: [num_vertices] the vertices, ``vertices[k - 1].number == k``.
      edges: the partial Jacobians, sorted by (src, dst).
      outputs: vertex numbers of the outputs, in the order of the flattened function outputs.
      cost_model: name of the cost model the graph is scored with (see `graph.cost_models()`).
      name: a label for messages ("RoeFlux_1d", "ref:f", the traced function's name).
      program: private data the interpreter needs to execute the graph (None for loaded graphs);
        not part of the graph's identity.
      structures: the labelled structures (`graph._structure.AxisTies`) of codes 12, 13, ...: the
        partials of a graph with arrays of rank 3 or more that the 2-D codes cannot describe
        (empty for every other graph).
      dims: with `structures`, the structural dims of every node (index node id - 1: inputs, then
        vertices), at least 2 each (see `node_dims`); empty otherwise.
    """

    num_inputs: int
    input_shapes: tuple[Shape2D, ...]
    vertices: tuple[Vertex, ...]
    edges: tuple[Edge, ...]
    outputs: tuple[int, ...]
    cost_model: str = "alphagrad-2024"
    name: str = ""
    program: Any = dataclasses.field(default=None, repr=False, compare=False)
    structures: tuple = ()
    dims: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "edges", tuple(sorted(Edge(*e) for e in self.edges)))
        object.__setattr__(self, "outputs", tuple(int(k) for k in self.outputs))

    # Sizes -----------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        """Number of vertices, outputs included."""
        return len(self.vertices)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    @property
    def num_intermediates(self) -> int:
        return self.num_vertices - len(self._output_set)

    @property
    def intermediates(self) -> list[int]:
        """Vertex numbers that an elimination order must contain, ascending (a fresh list)."""
        return list(self._intermediates)

    def is_output(self, vertex: int) -> bool:
        return vertex in self._output_set

    # Derived from the frozen fields once, on first use (cached in the instance's __dict__, not
    # fields: equality, repr and the fingerprint do not see them). O(1) membership per call
    # instead of a set built per call, which made per-vertex loops quadratic.
    @functools.cached_property
    def _output_set(self) -> frozenset[int]:
        return frozenset(self.outputs)

    @functools.cached_property
    def _intermediates(self) -> tuple[int, ...]:
        outs = self._output_set
        return tuple(k for k in range(1, self.num_vertices + 1) if k not in outs)

    # Node ids ---------------------------------------------------------------------------------
    def node_id(self, vertex: int) -> int:
        """Node id of vertex number `vertex` (inputs occupy ids 1..num_inputs)."""
        return self.num_inputs + vertex

    def edge_array(self) -> np.ndarray:
        """int64[E, 7]: rows ``[src, dst, code, out_d1, out_d2, in_d1, in_d2]`` (graphs.json layout)."""
        rows = [(e.src, e.dst, e.code, *e.out_shape, *e.in_shape) for e in self.edges]
        return np.asarray(rows, dtype=np.int64).reshape(-1, 7)

    def node_shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-node 2-D shapes as seen by the cost model, indexed by node id (row 0 unused).

        Returns:
          (as_source, as_destination): int64[num_inputs + num_vertices + 1, 2] each. An edge p->c
          always carries ``(as_destination[c], as_source[p])``, and elimination keeps it that way,
          so the two tables describe every edge the graph will ever have. They differ only where
          a loaded reference graph has the reference builder's concatenate-shape bug.

        Raises:
          ValueError: two edges disagree about a node's shape (not a valid elimination graph).
        """
        n = self.num_inputs + self.num_vertices + 1
        as_source = np.zeros((n, 2), dtype=np.int64)
        as_destination = np.zeros((n, 2), dtype=np.int64)
        for v in self.vertices:
            as_source[self.node_id(v.number)] = as_destination[self.node_id(v.number)] = v.shape
        for i, shape in enumerate(self.input_shapes, start=1):
            as_source[i] = as_destination[i] = shape
        seen_src: dict[int, tuple] = {}
        seen_dst: dict[int, tuple] = {}
        for e in self.edges:
            for seen, node, shape, table in ((seen_src, e.src, e.in_shape, as_source), (seen_dst, e.dst, e.out_shape, as_destination)):
                if seen.setdefault(node, shape) != shape:
                    raise ValueError(f"node {node} has edges with shapes {seen[node]} and {shape}")
                table[node] = shape
        return as_source, as_destination

    @property
    def rank(self) -> int:
        """R: the largest number of structural axes of a node (2 unless the graph has `dims`)."""
        return max((len(d) for d in self.dims), default=2)

    def node_dims(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-node sizes as the cost model counts them, indexed by node id (row 0 unused).

        Returns:
          (as_source, as_destination): int64[num_inputs + num_vertices + 1, R]: `node_shapes` for
          a graph of 2-D codes (R = 2); with labelled structures each node's structural dims
          (each axis of the array split where its uses split it; a node of fewer than R axes is
          padded with ones).
        """
        if not self.dims:
            return self.node_shapes()
        table = np.ones((len(self.dims) + 1, self.rank), dtype=np.int64)
        for node, dims in enumerate(self.dims, start=1):
            table[node, : len(dims)] = dims
        return table, table.copy()

    def describe_vertex(self, vertex: int) -> str:
        """A short human description: 'vertex 12 (mul at tasks.py:40 (roe))'."""
        v = self.vertices[vertex - 1]
        bits = [b for b in (v.primitive, f"at {v.source}" if v.source else "") if b]
        return f"vertex {vertex}" + (f" ({' '.join(bits)})" if bits else "")

    # Identity ---------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """'sha256:<hex>' over the structure: sizes, edges (codes and shapes) and outputs."""
        payload = {
            "num_inputs": self.num_inputs,
            "num_vertices": self.num_vertices,
            "edges": [list(map(int, row)) for row in self.edge_array()],
            "outputs": list(self.outputs),
        }
        if self.structures:
            payload["structures"] = [[t.out_rank, t.in_rank, [list(tie) for tie in t.ties], t.has_values]
                                     for t in self.structures]
            payload["dims"] = [list(d) for d in self.dims]
        blob = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        return "sha256:" + hashlib.sha256(blob).hexdigest()

    def summary(self) -> dict[str, int | str]:
        """Sizes used in order files and error messages."""
        return {
            "fingerprint": self.fingerprint,
            "num_inputs": self.num_inputs,
            "num_intermediates": self.num_intermediates,
            "num_outputs": self.num_outputs,
        }

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"Graph({label}inputs={self.num_inputs}, intermediates={self.num_intermediates}, "
            f"outputs={self.num_outputs}, edges={len(self.edges)}, cost_model={self.cost_model!r})"
        )
