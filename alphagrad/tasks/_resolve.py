"""Turning a TASK argument (CLI, benchmarks) into a `Graph`."""

from __future__ import annotations

import importlib
import re

import jax.numpy as jnp

from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph, load_reference, trace
from alphagrad.tasks._registry import get, names

__all__ = ["load_graph", "parse_args_spec"]

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


def load_graph(spec: str, *, graph_file: str | None = None, args: str | None = None) -> Graph:
    """The graph a TASK argument names.

    Args:
      spec: a registered task name, ``ref:NAME`` for a reference graph, or ``module:function``.
      graph_file: a graphs.json-layout file that ``ref:NAME`` is read from instead of the
        copy shipped with alphagrad.
      args: for ``module:function``, the example inputs (see `parse_args_spec`).

    Raises:
      AlphagradError: the task, reference graph, module or function does not exist.
    """
    if spec.startswith("ref:"):
        refs = load_reference(graph_file)
        key = spec[4:]
        if key not in refs:
            raise AlphagradError(f"no reference graph {key!r}; known: {', '.join('ref:' + k for k in refs)}")
        return refs[key]
    if spec in names():
        task = get(spec)
        return trace(task.fn, *task.args, name=spec)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise AlphagradError(f"cannot load function {spec!r}: {err}") from err
        if args is None:
            raise AlphagradError(f"{spec!r} needs example inputs: pass --args 'f32[3] f32[2,3]'")
        return trace(fn, *parse_args_spec(args), name=spec)
    raise AlphagradError(
        f"unknown task {spec!r}: use a task name ({', '.join(names())}), ref:NAME or module:function"
    )
