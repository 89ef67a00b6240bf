"""Benchmark functions with example inputs, in a registry.

    >>> from alphagrad import tasks
    >>> task = tasks.get("RoeFlux_1d")
    >>> outputs = task.fn(*task.args)

The eight closed-form tasks of the AlphaGrad paper are registered under their paper names;
seeded random straight-line programs are registered as ``RandomScalar-<seed>`` and
``RandomTensor-<seed>``. A corpus of small real-looking functions around primitives without a
structural rule (loops, branches, sorts, scatters, linear algebra, ...) is kept apart from the
registry, so that `names()` stays the paper's tasks:

    >>> task = tasks.corpus()["newton_sqrt"]      # Task(fn, args, ..., argnums, reference_jacobian)
    >>> jax.jacfwd(task.fn, task.argnums)(*task.args)   # task.reference_jacobian == "jacfwd"

A TASK argument (a task name, ``ref:NAME``, ``corpus:NAME`` or ``module:function`` with example
inputs) becomes a graph through one resolver:

    >>> task = tasks.resolve("RoeFlux_1d")        # or "ref:RoeFlux_1d", or "mod:f", args="f32[3]"
    >>> g = task.graph()                          # default cost model; task.graph("exact") too
    >>> task.fn, task.args                        # the JAX function (None for ref:NAME)
"""

from __future__ import annotations

from alphagrad.tasks._registry import Task, get, names, register

# Importing the modules registers their tasks.
from alphagrad.tasks import _benchmarks as _benchmarks  # noqa: E402,F401
from alphagrad.tasks import _random as _random  # noqa: E402,F401
from alphagrad.tasks._corpus import corpus, corpus_groups
from alphagrad.tasks._random import random_program
from alphagrad.tasks._resolve import ResolvedTask, load_graph, parse_args_spec, resolve

__all__ = [
    "ResolvedTask",
    "Task",
    "corpus",
    "corpus_groups",
    "get",
    "load_graph",
    "names",
    "parse_args_spec",
    "random_program",
    "register",
    "resolve",
]
