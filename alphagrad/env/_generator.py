"""Graph generators: objects that draw elimination graphs, for training on many graphs.

A generator is called with a seed (an int, a `numpy.random.Generator` or a JAX PRNG key) and
returns a `Graph`; its ``max_vertices`` and ``max_inputs`` bound every graph it draws, so the
environment can size its state once. `RandomGraphGenerator` builds graphs of random
straight-line programs directly (no JAX tracing): it draws a program from a small primitive set
with shapes of at most two dimensions, and asks the graph builder's own edge rules
(`alphagrad.graph.edge_codes`, the function `graph.trace` uses) for each equation's
structure codes, so a drawn graph is exactly the graph `graph.trace` would build for that program.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from alphagrad.errors import AlphagradError
from alphagrad.graph import REUSED_OUTPUT_CODE, Edge, Graph, Vertex, edge_codes, normalise_shape
from alphagrad.graph import cost_model as _load_cost_model

__all__ = ["GraphGenerator", "RandomGraphGenerator", "ChoiceGenerator", "as_rng"]

Shape = tuple[int, ...]


def as_rng(seed: Any) -> np.random.Generator:
    """A numpy Generator from an int, a numpy Generator (returned as is) or a JAX PRNG key."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)):
        raise AlphagradError(f"a generator seed must be an int, a numpy Generator or a JAX key, got {seed!r}")
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise AlphagradError(f"a generator seed must be non-negative, got {seed}")
        return np.random.default_rng(int(seed))
    if isinstance(seed, jax.Array) or isinstance(seed, np.ndarray):
        if jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key):
            seed = jax.random.key_data(seed)
        words = np.asarray(seed).astype(np.uint32).ravel()
        return np.random.default_rng([int(w) for w in words])
    raise AlphagradError(f"a generator seed must be an int, a numpy Generator or a JAX key, got {type(seed).__name__}")


class GraphGenerator(abc.ABC):
    """Draws elimination graphs. Subclasses set ``max_vertices`` and ``max_inputs``.

    Attributes:
      max_vertices: no drawn graph has more vertices (outputs included).
      max_inputs: no drawn graph has more inputs.
    """

    max_vertices: int
    max_inputs: int

    @abc.abstractmethod
    def __call__(self, seed: Any) -> Graph:
        """Draws a graph; the same seed gives the same graph.

        Args:
          seed: an int, a `numpy.random.Generator` (advanced by the draw) or a JAX PRNG key.
        """


class ChoiceGenerator(GraphGenerator):
    """Draws uniformly from a fixed list of graphs (e.g. the reference graphs, for joint training)."""

    def __init__(self, graphs: Sequence[Graph]):
        self.graphs = tuple(graphs)
        if not self.graphs:
            raise AlphagradError("ChoiceGenerator needs at least one graph")
        self.max_vertices = max(g.num_vertices for g in self.graphs)
        self.max_inputs = max(g.num_inputs for g in self.graphs)

    def __call__(self, seed: Any) -> Graph:
        return self.graphs[int(as_rng(seed).integers(len(self.graphs)))]

    def __repr__(self) -> str:
        return (
            f"ChoiceGenerator({len(self.graphs)} graphs, max_vertices={self.max_vertices}, "
            f"max_inputs={self.max_inputs})"
        )


def _span(value: int | tuple[int, int], name: str, low: int) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    lo, hi = int(lo), int(hi)
    if not low <= lo <= hi:
        raise AlphagradError(f"{name} must be an int or a (low, high) pair with {low} <= low <= high, got {value!r}")
    return lo, hi


_UNARY = ("sin", "cos", "exp", "log", "tanh", "sqrt", "integer_pow", "neg", "logistic", "abs", "square", "atan")
_BINARY = ("add", "sub", "mul", "div", "max", "min", "pow", "atan2", "add_any")
_SCALED = ("add", "sub", "mul", "div")  # binary ops that appear with one rank-0 operand


class RandomGraphGenerator(GraphGenerator):
    """Graphs of random straight-line JAX programs, built directly (no tracing).

    A drawn program is either scalar (every value has shape (), like RoeFlux or RobotArm) or,
    with probability ``tensor_fraction``, a tensor program whose inputs are scalars, vectors and
    matrices built from a few shared dimensions. Statements are drawn from: elementwise unary
    and binary operations (also with a rank-0 operand), ``broadcast_in_dim``, ``dot_general``
    (vector and matrix products with assorted contracting dimensions), ``reduce_sum`` /
    ``reduce_max`` / ``reduce_min``, ``transpose``, ``reshape``, ``slice``, ``concatenate``,
    ``squeeze``, ``convert_element_type`` and ``stop_gradient``. Operands prefer values nobody
    has read yet and recent values, so programs are deep with some fan-out. Each equation's
    codes come from the graph builder's rules, with the shapes its operands really have.

    Outputs are the vertices nobody reads, plus ``extra_outputs`` values that are also read
    later; each of those gets an appended copy vertex linked by the edge `graph.trace` writes
    for a reused output (code 8 under ``alphagrad-2024``). The vertex count includes those copies.
    A graph of two or more vertices always has an intermediate vertex (the last statement reads
    a vertex if no other does).

    Args:
      num_inputs: the number of inputs, or an inclusive (low, high) range to draw it from.
      num_vertices: the number of vertices (outputs included), or an inclusive range.
      tensor_fraction: probability that a program is a tensor program.
      max_dim: the largest array dimension (input and broadcast dimensions are drawn from
        2..max_dim; no operation makes a larger one).
      extra_outputs: the number of read values that are outputs too, or an inclusive range (at
        most the number of vertices minus one).
      cost_model: the cost model the graphs are scored with.
    """

    def __init__(
        self,
        num_inputs: int | tuple[int, int] = (2, 16),
        num_vertices: int | tuple[int, int] = (20, 150),
        *,
        tensor_fraction: float = 0.5,
        max_dim: int = 8,
        extra_outputs: int | tuple[int, int] = (0, 2),
        cost_model: str = "alphagrad-2024",
    ):
        self.num_inputs = _span(num_inputs, "num_inputs", 1)
        self.num_vertices = _span(num_vertices, "num_vertices", 1)
        self.extra_outputs = _span(extra_outputs, "extra_outputs", 0)
        if self.extra_outputs[0] >= self.num_vertices[0]:
            raise AlphagradError(
                f"extra_outputs {extra_outputs!r} must start below the smallest vertex count {self.num_vertices[0]}"
            )
        if not 0.0 <= tensor_fraction <= 1.0:
            raise AlphagradError(f"tensor_fraction must lie in [0, 1], got {tensor_fraction!r}")
        if int(max_dim) < 2:
            raise AlphagradError(f"max_dim must be at least 2, got {max_dim!r}")
        self.tensor_fraction = float(tensor_fraction)
        self.max_dim = int(max_dim)
        self.cost_model = cost_model
        self._model = _load_cost_model(cost_model)
        self.max_vertices = self.num_vertices[1]
        self.max_inputs = self.num_inputs[1]

    def __repr__(self) -> str:
        return (
            f"RandomGraphGenerator(num_inputs={self.num_inputs}, num_vertices={self.num_vertices}, "
            f"tensor_fraction={self.tensor_fraction}, max_dim={self.max_dim}, "
            f"extra_outputs={self.extra_outputs}, cost_model={self.cost_model!r})"
        )

    def __call__(self, seed: Any) -> Graph:
        rng = as_rng(seed)
        label = f"random-{seed}" if isinstance(seed, (int, np.integer)) else "random"
        num_inputs = int(rng.integers(self.num_inputs[0], self.num_inputs[1] + 1))
        num_vertices = int(rng.integers(self.num_vertices[0], self.num_vertices[1] + 1))
        lo, hi = self.extra_outputs
        num_extra = int(rng.integers(lo, min(hi, num_vertices - 1) + 1))
        tensor = bool(rng.random() < self.tensor_fraction)
        program = _Program(rng, self._model, num_inputs, tensor, self.max_dim)
        statements = num_vertices - num_extra
        for i in range(statements):
            program.draw(last=i == statements - 1)
        # Copies need read vertices; where there are too few, more statements fill the count.
        copies = min(num_extra, program.num_read_vertices())
        deficit = num_extra - copies
        for i in range(deficit):
            program.draw(last=i == deficit - 1)
        return program.graph(copies, self.cost_model, label)


class _Program:
    """A random program under construction: values (node ids with shapes) and the graph's parts."""

    def __init__(self, rng: np.random.Generator, model, num_inputs: int, tensor: bool, max_dim: int):
        self.rng = rng
        self.model = model
        self.num_inputs = num_inputs
        self.tensor = tensor
        self.max_dim = max_dim
        # A few shared dimensions make products and elementwise operations between values likely.
        dims = rng.integers(2, max_dim + 1, size=3)
        self.dims = [int(d) for d in dims]
        self.shapes: list[Shape] = [self._input_shape() for _ in range(num_inputs)]  # index = node id - 1
        self.differentiable: list[bool] = [True] * num_inputs
        self.read = [False] * num_inputs
        self.vertices: list[Vertex] = []
        self.edges: dict[tuple[int, int], Edge] = {}
        self.fresh_inputs = list(rng.permutation(num_inputs) + 1)  # inputs not yet read, consumed first

    # -- shapes ------------------------------------------------------------------------------

    def _input_shape(self) -> Shape:
        if not self.tensor:
            return ()
        kind = self.rng.choice(3, p=(0.25, 0.35, 0.4))
        pick = lambda: self.dims[int(self.rng.integers(len(self.dims)))]  # noqa: E731
        return () if kind == 0 else (pick(),) if kind == 1 else (pick(), pick())

    def _dim(self) -> int:
        return self.dims[int(self.rng.integers(len(self.dims)))]

    # -- operands ----------------------------------------------------------------------------

    def _nodes(self, where=lambda node: True) -> list[int]:
        return [node for node in range(1, len(self.shapes) + 1) if where(node)]

    def _pick(self, candidates: list[int]) -> int | None:
        """Unread values first (few dead ends), else mostly recent ones (deep programs)."""
        if not candidates:
            return None
        rng = self.rng
        unread = [c for c in candidates if not self.read[c - 1]]
        if unread and rng.random() < 0.6:
            return unread[int(rng.integers(len(unread)))]
        if rng.random() < 0.7:
            recent = candidates[-6:]
            return recent[int(rng.integers(len(recent)))]
        return candidates[int(rng.integers(len(candidates)))]

    def num_read_vertices(self) -> int:
        return sum(self.read[self.num_inputs :])

    def shape(self, node: int) -> Shape:
        return self.shapes[node - 1]

    # -- statements --------------------------------------------------------------------------

    def draw(self, last: bool = False) -> None:
        """Appends one equation (always succeeds: a unary op applies to any value).

        The last statement reads a vertex if none has been read yet, so that a graph of two or
        more statements has an intermediate vertex to eliminate.
        """
        if last and self.vertices and not any(self.read[self.num_inputs :]):
            node = self.num_inputs + len(self.vertices)
            self._emit(self._unary_name(), [node], self.shape(node))
            return
        if self.fresh_inputs:
            node = int(self.fresh_inputs.pop())
            self._emit(self._unary_name(), [node], self.shape(node))
            return
        kinds = _TENSOR_KINDS if self.tensor else _SCALAR_KINDS
        names = [k for k, _ in kinds]
        weights = np.array([w for _, w in kinds])
        for _ in range(32):
            kind = names[int(self.rng.choice(len(names), p=weights / weights.sum()))]
            if getattr(self, "_" + kind)():
                return
        node = self._pick(self._nodes())
        self._emit(self._unary_name(), [node], self.shape(node))

    def _unary_name(self) -> str:
        return _UNARY[int(self.rng.integers(len(_UNARY)))]

    def _unary(self) -> bool:
        node = self._pick(self._nodes())
        self._emit(self._unary_name(), [node], self.shape(node))
        return True

    def _binary(self) -> bool:
        a = self._pick(self._nodes())
        partners = self._nodes(lambda n: n != a and self.shape(n) == self.shape(a))
        if not partners:
            return False
        b = self._pick(partners)
        if self.rng.random() < 0.03:
            b = a  # x * x: both operands are one variable; the partials add up
        args = [a, b] if self.rng.random() < 0.5 else [b, a]
        self._emit(_BINARY[int(self.rng.integers(len(_BINARY)))], args, self.shape(a))
        return True

    def _scaled(self) -> bool:
        tensor = self._pick(self._nodes(lambda n: self.shape(n) != ()))
        scalar = self._pick(self._nodes(lambda n: self.shape(n) == ()))
        if tensor is None or scalar is None:
            return False
        args = [scalar, tensor] if self.rng.random() < 0.5 else [tensor, scalar]
        self._emit(_SCALED[int(self.rng.integers(len(_SCALED)))], args, self.shape(tensor))
        return True

    def _broadcast(self) -> bool:
        node = self._pick(self._nodes(lambda n: len(self.shape(n)) < 2))
        if node is None:
            return False
        shape = self.shape(node)
        if shape == ():
            out = (self._dim(),) if self.rng.random() < 0.5 else (self._dim(), self._dim())
        else:
            out = (shape[0], self._dim()) if self.rng.random() < 0.5 else (self._dim(), shape[0])
        self._emit("broadcast_in_dim", [node], out)
        return True

    def _dot(self) -> bool:
        lhs = self._pick(self._nodes(lambda n: len(self.shape(n)) >= 1))
        if lhs is None:
            return False
        ls = self.shape(lhs)
        lc = int(self.rng.integers(len(ls)))
        k = ls[lc]
        partners = [(n, axis) for n in self._nodes() for axis, d in enumerate(self.shape(n)) if d == k]
        if not partners:
            return False
        rhs, rc = partners[int(self.rng.integers(len(partners)))]
        out = tuple(d for i, d in enumerate(ls) if i != lc) + tuple(d for i, d in enumerate(self.shape(rhs)) if i != rc)
        if len(out) > 2:
            return False
        params = {"dimension_numbers": (((lc,), (rc,)), ((), ()))}
        self._emit("dot_general", [lhs, rhs], out, params)
        return True

    def _reduce(self) -> bool:
        node = self._pick(self._nodes(lambda n: len(self.shape(n)) >= 1))
        if node is None:
            return False
        shape = self.shape(node)
        axes = (0,) if len(shape) == 1 else ((0,), (1,), (0, 1))[int(self.rng.integers(3))]
        out = tuple(d for i, d in enumerate(shape) if i not in axes)
        name = ("reduce_sum", "reduce_sum", "reduce_max", "reduce_min")[int(self.rng.integers(4))]
        self._emit(name, [node], out, {"axes": axes})
        return True

    def _transpose(self) -> bool:
        node = self._pick(self._nodes(lambda n: len(self.shape(n)) == 2))
        if node is None:
            return False
        shape = self.shape(node)
        self._emit("transpose", [node], (shape[1], shape[0]), {"permutation": (1, 0)})
        return True

    def _reshape(self) -> bool:
        node = self._pick(self._nodes(lambda n: math.prod(self.shape(n)) > 1))
        if node is None:
            return False
        shape = self.shape(node)
        size = math.prod(shape)
        options = [(size,)] + [(a, size // a) for a in range(1, size + 1) if size % a == 0]
        options = [s for s in options if s != shape and max(s) <= self.max_dim]
        if not options:
            return False
        self._emit("reshape", [node], options[int(self.rng.integers(len(options)))])
        return True

    def _slice(self) -> bool:
        node = self._pick(self._nodes(lambda n: any(d >= 2 for d in self.shape(n))))
        if node is None:
            return False
        shape = list(self.shape(node))
        axes = [i for i, d in enumerate(shape) if d >= 2]
        axis = axes[int(self.rng.integers(len(axes)))]
        shape[axis] = int(self.rng.integers(1, shape[axis]))
        self._emit("slice", [node], tuple(shape))
        return True

    def _concatenate(self) -> bool:
        a = self._pick(self._nodes(lambda n: len(self.shape(n)) == 1))
        if a is None:
            return False
        room = self.max_dim - self.shape(a)[0]
        b = self._pick(self._nodes(lambda n: len(self.shape(n)) == 1 and n != a and self.shape(n)[0] <= room))
        if b is None:
            return False
        self._emit("concatenate", [a, b], (self.shape(a)[0] + self.shape(b)[0],))
        return True

    def _squeeze(self) -> bool:
        node = self._pick(self._nodes(lambda n: len(self.shape(n)) == 2 and 1 in self.shape(n)))
        if node is None:
            # Make a (1, n) or (n, 1) value to squeeze later: a reshape of a vector.
            vec = self._pick(self._nodes(lambda n: len(self.shape(n)) == 1))
            if vec is None:
                return False
            n = self.shape(vec)[0]
            self._emit("reshape", [vec], (1, n) if self.rng.random() < 0.5 else (n, 1))
            return True
        shape = self.shape(node)
        self._emit("squeeze", [node], (shape[1],) if shape[0] == 1 else (shape[0],))
        return True

    def _convert(self) -> bool:
        node = self._pick(self._nodes())
        self._emit("convert_element_type", [node], self.shape(node))
        return True

    def _stop_gradient(self) -> bool:
        node = self._pick(self._nodes())
        self._emit("stop_gradient", [node], self.shape(node))
        return True

    # -- bookkeeping -------------------------------------------------------------------------

    def _emit(self, name: str, operands: list[int], out: Shape, params: dict | None = None) -> None:
        number = len(self.vertices) + 1
        node = self.num_inputs + number
        in_shapes = [self.shape(op) for op in operands]
        differentiable = [self.differentiable[op - 1] for op in operands]
        codes = edge_codes(name, in_shapes, out, params or {}, differentiable, model=self.model.name)
        out_norm = normalise_shape(out)
        for i, code in codes.items():
            src = operands[i]
            edge = Edge(src, node, code, out_norm, normalise_shape(in_shapes[i]))
            if (src, node) in self.edges:  # one variable feeding two operands: the partials add up
                edge = edge._replace(code=self.model.sum_code(self.edges[(src, node)].code, code))
            self.edges[(src, node)] = edge
        for op in operands:
            self.read[op - 1] = True
        self.vertices.append(Vertex(number, name, out_norm, ""))
        self.shapes.append(out)
        self.differentiable.append(name != "stop_gradient")
        self.read.append(False)

    def graph(self, num_extra: int, cost_model: str, name: str) -> Graph:
        """The finished graph: unread vertices are outputs, plus `num_extra` read ones via copies."""
        first = self.num_inputs + 1
        nodes = range(first, first + len(self.vertices))
        sinks = [n for n in nodes if not self.read[n - 1]]
        read = [n for n in nodes if self.read[n - 1]]
        chosen = sorted(self.rng.choice(read, size=num_extra, replace=False).tolist()) if num_extra else []
        outputs = [n - self.num_inputs for n in sinks]
        for node in chosen:
            number = len(self.vertices) + 1
            shape = normalise_shape(self.shape(node))
            self.vertices.append(Vertex(number, "copy", shape, ""))
            self.edges[(node, self.num_inputs + number)] = Edge(
                node, self.num_inputs + number, REUSED_OUTPUT_CODE[cost_model], shape, shape
            )
            outputs.append(number)
        return Graph(
            num_inputs=self.num_inputs,
            input_shapes=tuple(normalise_shape(s) for s in self.shapes[: self.num_inputs]),
            vertices=tuple(self.vertices),
            edges=tuple(self.edges.values()),
            outputs=tuple(outputs),
            cost_model=cost_model,
            name=name,
        )


# Statement kinds and weights (the methods of _Program named "_" + kind).
_SCALAR_KINDS = (("unary", 0.4), ("binary", 0.58), ("convert", 0.01), ("stop_gradient", 0.01))
_TENSOR_KINDS = (
    ("unary", 0.24),
    ("binary", 0.24),
    ("scaled", 0.06),
    ("broadcast", 0.08),
    ("dot", 0.12),
    ("reduce", 0.08),
    ("transpose", 0.04),
    ("reshape", 0.03),
    ("slice", 0.03),
    ("concatenate", 0.02),
    ("squeeze", 0.02),
    ("convert", 0.02),
    ("stop_gradient", 0.02),
)
