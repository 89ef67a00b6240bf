"""Shared fixtures: the reference graphs and tiny hand-written graphs; one compilation cache.

The two xdist workers and the subprocesses some tests start (`alphagrad train` under Ctrl-C, the
two-device sharding check, the CLI) compile many of the same programs (the tiny AlphaZero
iteration, the env core on the reference graphs). One JAX persistent compilation cache shared by
all of them compiles each once. It lives in a temporary folder of this run, removed at its end, so
a run never reuses an earlier run's compilations (the suite's time stays what a fresh CI run
measures). A cache the caller configured (``JAX_COMPILATION_CACHE_DIR``) is used and kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
#: The folder this process created (the xdist controller, or a run without workers); workers and
#: subprocesses inherit the variable and leave the folder to it.
_OWN_CACHE = None
if _CACHE_VARIABLE not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="alphagrad-tests-xla-cache-")
    os.environ[_CACHE_VARIABLE] = _OWN_CACHE
    # Only compilations worth a file: the many tiny jits of the suite compile faster than they load.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

#: XLA's CPU fusion emitters (its default code generator for fused loops) compile the suite's many
#: small programs slowly: a jax.jacfwd of 159 scalar equations compiled in 16 s with them, 5 s
#: with the classic emitters (same operations, same results to rounding). The tests check what
#: the programs compute, so the suite compiles with the classic ones (the summed test times fell by
#: a third; test_alphazero.py's tiny training runs alone take about a fifth longer). A jaxlib that
#: no longer knows the flag would abort on it, so a child process tries it first.
_XLA_FLAG = "--xla_cpu_use_fusion_emitters=false"
if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    _flags = f"{os.environ.get('XLA_FLAGS', '')} {_XLA_FLAG}".strip()
    _probe = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"],
                            env={**os.environ, "XLA_FLAGS": _flags, "JAX_PLATFORMS": "cpu"}, capture_output=True)
    if _probe.returncode == 0:  # workers and subprocesses inherit it
        os.environ["XLA_FLAGS"] = _flags

import jax  # noqa: E402  (after the variables: JAX reads them when its configuration is defined)
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_VARIABLE])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs", float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 1.0))
)

from alphagrad import graph  # noqa: E402
from alphagrad.graph import Edge, Graph, Vertex  # noqa: E402


#: The test files that take longest (a minute or more of one worker each on 2 cores), started
#: first: the two workers take whole files (`--dist loadfile`), and a long file started last
#: leaves the other worker idle for its whole length at the end of the run.
LONGEST_FILES = (
    "tests/interpreter/test_corpus.py",
    "tests/agents/test_alphazero.py",
    "tests/interpreter/test_tape.py",
    "tests/interpreter/test_jacobian.py",
    "tests/interpreter/test_structured.py",
)  # (test_alphazero_sharding.py keeps its place: it reuses test_alphazero.py's compiled iteration)


def pytest_configure(config) -> None:
    """Hands the files to the xdist workers in that order: xdist's default (`--loadscope-reorder`,
    3.8) sends the files with the most tests first, which ignored `LONGEST_FILES` and left
    single-test files of half a minute (the sharding, scale and Ctrl-C runs) to the end of the run."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items) -> None:
    """Runs the files of `LONGEST_FILES` first (in that order), every other file after them in
    collection order: which tests run is unchanged, only when."""
    rank = {path: k for k, path in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_unconfigure(config) -> None:
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):  # not an xdist worker
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


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
