"""Turning a TASK argument (CLI, bench, benchmarks, training) into a graph, in one place.

A TASK is a registered task name, ``ref:NAME`` for a reference graph, or ``module:function``
with example inputs (``--args 'f32[3] f32[2,3]'``). `resolve` parses it once; the result gives
the graph under any cost model and, for a JAX function, the function and its example inputs.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph, load_reference, trace
from alphagrad.tasks._registry import get, names

__all__ = ["ResolvedTask", "resolve", "load_graph", "parse_args_spec"]

_SPEC = re.compile(r"^(f16|f32|f64|bf16)\[([0-9, ]*)\]$")
_DTYPES = {"f16": jnp.float16, "bf16": jnp.bfloat16, "f32": jnp.float32, "f64": jnp.float64}


def parse_args_spec(spec: str) -> tuple:
    """Example inputs from a spec like ``"f32[3] f32[2,3] f32[]"``: arrays of ones of those shapes."""
    args = []
    for token in spec.split():
        match = _SPEC.match(token.strip())
        if not match:
            raise AlphagradError(f"cannot read input spec {token!r}: write e.g. f32[3] or f32[2,3] or f32[]")
        dims = tuple(int(d) for d in match.group(2).replace(" ", "").split(",") if d)
        args.append(jnp.ones(dims, _DTYPES[match.group(1)]))
    return tuple(args)


@dataclasses.dataclass(frozen=True)
class ResolvedTask:
    """A TASK argument, parsed once: a reference graph, or a JAX function with example inputs.

    Attributes:
      spec: the TASK argument as given; the graphs it gives carry it as their name.
      fn: the JAX function (a registered task or ``module:function``); None for ``ref:NAME``.
      args: ``fn``'s example positional arguments; ``()`` for ``ref:NAME``.
      reference: the graph of ``ref:NAME``; None for a JAX function.
    """

    spec: str
    fn: Callable[..., Any] | None = None
    args: tuple = ()
    reference: Graph | None = None
    # Graphs already traced, by the cost model asked for (None: trace's default).
    _traced: dict[str | None, Graph] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def graph(self, cost_model: str | None = None) -> Graph:
        """The elimination graph, with respect to every argument; a JAX function is traced once per model.

        Args:
          cost_model: the model the graph is scored with, e.g. ``"exact"`` (the one the
            interpreter performs, as `interpreter.graph_of` uses); None: the default model
            (``graph.trace``'s), and a reference graph's own model for ``ref:NAME``.

        Raises:
          AlphagradError: ``ref:NAME`` asked for another model than the one it is published in,
            or an unknown cost model.
        """
        if self.fn is None:
            if cost_model not in (None, self.reference.cost_model):
                raise AlphagradError(
                    f"{self.spec} is a reference graph of the {self.reference.cost_model!r} cost model; "
                    f"it has no JAX function to trace under {cost_model!r}"
                )
            return self.reference
        if cost_model not in self._traced:
            model = {} if cost_model is None else {"cost_model": cost_model}
            self._traced[cost_model] = trace(self.fn, *self.args, name=self.spec, **model)
        return self._traced[cost_model]

    def with_args(self, args: tuple) -> ResolvedTask:
        """The same function at other example inputs (e.g. the float32 arrays a timed run sees)."""
        if self.fn is None:
            raise AlphagradError(f"{self.spec} is a reference graph; it takes no example inputs")
        return dataclasses.replace(self, args=tuple(args))


def resolve(spec: str, *, graph_file: str | None = None, args: str | None = None) -> ResolvedTask:
    """Parses a TASK argument.

    Args:
      spec: a registered task name, ``ref:NAME`` for a reference graph, or ``module:function``.
      graph_file: a graphs.json-layout file that ``ref:NAME`` is read from instead of the
        copy shipped with alphagrad.
      args: for ``module:function``, the example inputs (see `parse_args_spec`).

    Raises:
      AlphagradError: the task, reference graph, module or function does not exist, or
        ``module:function`` comes without example inputs.
    """
    if spec.startswith("ref:"):
        refs = load_reference(graph_file)
        key = spec[4:]
        if key not in refs:
            raise AlphagradError(f"no reference graph {key!r}; known: {', '.join('ref:' + k for k in refs)}")
        return ResolvedTask(spec, reference=refs[key])
    if spec in names():
        task = get(spec)
        return ResolvedTask(spec, fn=task.fn, args=tuple(task.args))
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise AlphagradError(f"cannot load function {spec!r}: {err}") from err
        if args is None:
            raise AlphagradError(f"{spec!r} needs example inputs: pass --args 'f32[3] f32[2,3]'")
        return ResolvedTask(spec, fn=fn, args=parse_args_spec(args))
    raise AlphagradError(
        f"unknown task {spec!r}: use a task name ({', '.join(names())}), ref:NAME or module:function"
    )


def load_graph(spec: str, *, graph_file: str | None = None, args: str | None = None) -> Graph:
    """The graph a TASK argument names, under the default cost model: ``resolve(...).graph()``.

    The arguments and errors are those of `resolve`.
    """
    return resolve(spec, graph_file=graph_file, args=args).graph()
