"""Fixtures of the env tests: the reference graphs padded to one state size, compiled once."""

from __future__ import annotations

import jax
import pytest

from alphagrad import env, graph

#: One state size for all ten reference graphs (146 vertices at most, 16 inputs at most).
REF_VERTICES = 146
REF_INPUTS = 16

# Module-level jitted functions: every test that uses one state size shares one compilation.
jit_step = jax.jit(env.step)
jit_rollout = jax.jit(env.rollout)
jit_batch_rollout = jax.jit(jax.vmap(env.rollout))
jit_batch_step = jax.jit(jax.vmap(env.step))


@pytest.fixture(scope="session")
def padded_reference_states(reference_graphs) -> dict[str, env.State]:
    """name -> initial state of the reference graph, padded to (REF_VERTICES, REF_INPUTS)."""
    return {
        name: env.init_state(g, max_vertices=REF_VERTICES, max_inputs=REF_INPUTS)
        for name, g in reference_graphs.items()
    }


@pytest.fixture(scope="session")
def perceptron(reference_graphs) -> graph.Graph:
    return reference_graphs["Perceptron"]
