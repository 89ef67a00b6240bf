"""Turning a TASK argument (CLI, bench, benchmarks, training) into a graph, in one place.

A TASK is a registered task name, ``ref:NAME`` for a reference graph, ``corpus:NAME`` for a
function of the corpus (`corpus`), or ``module:function`` with example inputs (``--args 'f32[3]
f32[2,3]'``). `resolve` parses it once; the result gives the graph under any cost model and, for a
JAX function, the function and its example inputs.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph, load_reference, trace
from alphagrad.tasks._corpus import corpus
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
      fn: the JAX function (a registered task, ``corpus:NAME`` or ``module:function``); None
        for ``ref:NAME``.
      args: ``fn``'s example positional arguments; ``()`` for ``ref:NAME``.
      argnums: the differentiated arguments (a corpus function's `Task.argnums`: its integer
        arguments are not); None: every argument.
      reference: the graph of ``ref:NAME``; None for a JAX function.
    """

    spec: str
    fn: Callable[..., Any] | None = None
    args: tuple = ()
    argnums: int | tuple[int, ...] | None = None
    reference: Graph | None = None
    # Graphs already traced, by the cost model asked for (None: trace's default).
    _traced: dict[str | None, Graph] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def graph(self, cost_model: str | None = None) -> Graph:
        """The elimination graph, with respect to `argnums`; a JAX function is traced once per model.

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
            self._traced[cost_model] = trace(self.fn, *self.args, argnums=self.argnums, name=self.spec, **model)
        return self._traced[cost_model]

    def with_args(self, args: tuple) -> ResolvedTask:
        """The same function at other example inputs (e.g. the float32 arrays a timed run sees)."""
        if self.fn is None:
            raise AlphagradError(f"{self.spec} is a reference graph; it takes no example inputs")
        return dataclasses.replace(self, args=tuple(args))


def resolve(spec: str, *, graph_file: str | None = None, args: str | None = None) -> ResolvedTask:
    """Parses a TASK argument.

    Args:
      spec: a registered task name, ``ref:NAME`` for a reference graph, ``corpus:NAME`` for a
        function of `corpus`, or ``module:function``
        (the module is imported as ``python -m`` finds it: from the current directory, which is
        put on ``sys.path`` if it is not there, or from ``sys.path`` and ``$PYTHONPATH``).
      graph_file: a graphs.json-layout file that ``ref:NAME`` is read from instead of the
        copy shipped with alphagrad.
      args: for ``module:function``, the example inputs (see `parse_args_spec`).

    Raises:
      AlphagradError: the task, reference graph, corpus entry, module or function does not exist (a missing
        module's message says where it was looked for), the module fails to import, or
        ``module:function`` comes without example inputs.
    """
    if spec.startswith("ref:"):
        refs = load_reference(graph_file)
        key = spec[4:]
        if key not in refs:
            raise AlphagradError(f"no reference graph {key!r}; known: {', '.join('ref:' + k for k in refs)}")
        return ResolvedTask(spec, reference=refs[key])
    if spec.startswith("corpus:"):
        entries = corpus()
        key = spec[len("corpus:"):]
        if key not in entries:
            raise AlphagradError(f"no corpus function {key!r}; known: {', '.join('corpus:' + k for k in entries)}")
        task = entries[key]
        return ResolvedTask(spec, fn=task.fn, args=tuple(task.args), argnums=task.argnums)
    if spec in names():
        task = get(spec)
        return ResolvedTask(spec, fn=task.fn, args=tuple(task.args))
    if ":" in spec:
        fn = _load_function(spec)
        if args is None:
            raise AlphagradError(f"{spec!r} needs example inputs: pass --args 'f32[3] f32[2,3]'")
        return ResolvedTask(spec, fn=fn, args=parse_args_spec(args))
    raise AlphagradError(
        f"unknown task {spec!r}: use a task name ({', '.join(names())}), ref:NAME, corpus:NAME or module:function"
    )


def _load_function(spec: str) -> Callable[..., Any]:
    """The function ``module:function`` names, imported as ``python -m`` would find the module.

    Raises:
      AlphagradError: a malformed spec, a module that is not found (the message says where it was
        looked for) or fails to import, or a name the module lacks or that is not callable.
    """
    module_name, _, attr = spec.partition(":")
    if not all(part.isidentifier() for part in module_name.split(".")) or not attr.isidentifier():
        raise AlphagradError(f"cannot load function {spec!r}: write module:function, e.g. mypackage.models:loss")
    cwd = _current_directory_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise AlphagradError(f"cannot load function {spec!r}: importing {module_name} failed: {err}") from err
        where = f"the current directory ({cwd}) and " if cwd else ""
        raise AlphagradError(
            f"cannot load function {spec!r}: no module {err.name!r} in {where}the Python path "
            f"(sys.path, which includes $PYTHONPATH); run from the directory that holds it or add that to PYTHONPATH"
        ) from err
    except Exception as err:  # the user's module itself fails (syntax error, exception at import): say which
        raise AlphagradError(
            f"cannot load function {spec!r}: importing {module_name} raised {type(err).__name__}: {err}"
        ) from err
    if not hasattr(module, attr):
        raise AlphagradError(
            f"cannot load function {spec!r}: module {module_name} ({getattr(module, '__file__', None) or 'built in'}) "
            f"has no attribute {attr!r}"
        )
    fn = getattr(module, attr)
    if not callable(fn):
        raise AlphagradError(
            f"cannot load function {spec!r}: {module_name}.{attr} is not callable ({type(fn).__name__})"
        )
    return fn


def _current_directory_on_path() -> str | None:
    """Puts the current directory at the front of ``sys.path`` unless it is already there, as
    ``python -m`` and pytest do, so that ``mymod:f`` finds ``./mymod.py`` from the `alphagrad`
    script too. Returns the directory (None when it no longer exists).

    Permanently, like ``python -m``, not only around the import: the user's module may import its
    neighbours later, e.g. inside the function while it is traced. An interpreter or notebook
    already has the directory on the path (as ``""``), so there this changes nothing.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the directory was deleted under the process: nothing to add
        return None
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path if isinstance(entry, str)):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()  # a finder may have listed a directory before the module was written
    return cwd


def load_graph(spec: str, *, graph_file: str | None = None, args: str | None = None) -> Graph:
    """The graph a TASK argument names, under the default cost model: ``resolve(...).graph()``.

    The arguments and errors are those of `resolve`.
    """
    return resolve(spec, graph_file=graph_file, args=args).graph()
