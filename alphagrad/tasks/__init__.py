"""Benchmark functions with example inputs, in a registry.

    >>> from alphagrad import tasks
    >>> task = tasks.get("RoeFlux_1d")
    >>> outputs = task.fn(*task.args)

The eight closed-form tasks of the AlphaGrad paper are registered under their paper names;
seeded random straight-line programs are registered as ``RandomScalar-<seed>`` and
``RandomTensor-<seed>``.
"""

from __future__ import annotations

from alphagrad.tasks._registry import Task, get, names, register

# Importing the modules registers their tasks.
from alphagrad.tasks import _benchmarks as _benchmarks  # noqa: E402,F401
from alphagrad.tasks import _random as _random  # noqa: E402,F401
from alphagrad.tasks._random import random_program
from alphagrad.tasks._resolve import load_graph, parse_args_spec

__all__ = ["Task", "get", "names", "register", "random_program", "load_graph", "parse_args_spec"]
