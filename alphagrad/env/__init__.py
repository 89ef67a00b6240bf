"""The vertex elimination game: two pure JAX cores, gymnasium environments and graph generators.

    >>> from alphagrad import env, graph
    >>> g = graph.load_reference()["RoeFlux_1d"]
    >>> state = env.init_state(g, max_vertices=128, max_inputs=16)   # padded: one compile serves many graphs
    >>> state, reward, terminated = jax.jit(env.step)(state, 97)     # eliminates vertex 98
    >>> gym_env = gymnasium.make("alphagrad/VertexElimination-v0", task="RoeFlux_1d")

The two jitted cores are the fast paths of `alphagrad.graph.Eliminator`'s elimination rules for
search and RL: `step` is table-driven and serves every graph and cost model (the tables are the
graph's: C structure codes, dims of rank R per node; a graph with arrays of rank >= 3 brings its
own extended codes, and states of different tables compile and batch separately); `bitset_step`
serves scalar graphs only (`is_scalar_graph`), with successor sets as bit words (O(N * W) word
operations a step). Both use one node layout and one action numbering, and score exactly like
`graph.cost` (tests/env/test_engine_equivalence.py).

Importing this package registers ``alphagrad/VertexElimination-v0`` with gymnasium (with a
``vector_entry_point`` for ``gymnasium.make_vec``).
"""

import gymnasium as _gymnasium

from alphagrad.env._bitset import BitsetState, bitset_init, bitset_step, is_scalar_graph
from alphagrad.env._core import (
    NODE_ELIMINATED,
    NODE_INPUT,
    NODE_INTERMEDIATE,
    NODE_OUTPUT,
    NODE_PADDING,
    State,
    StateSizeError,
    init_state,
    is_terminal,
    edge_list,
    legal_actions,
    node_observation,
    observe,
    order_of,
    rollout,
    stack,
    step,
)
from alphagrad.env._generator import ChoiceGenerator, GraphGenerator, RandomGraphGenerator
from alphagrad.env._gym import (
    AUTO_JAX_MIN_ENVS,
    BACKENDS,
    ENV_ID,
    IllegalActionError,
    VertexEliminationEnv,
    VertexEliminationVectorEnv,
    observation_space,
)

__all__ = [
    "AUTO_JAX_MIN_ENVS",
    "BACKENDS",
    "BitsetState",
    "ENV_ID",
    "NODE_ELIMINATED",
    "NODE_INPUT",
    "NODE_INTERMEDIATE",
    "NODE_OUTPUT",
    "NODE_PADDING",
    "ChoiceGenerator",
    "GraphGenerator",
    "IllegalActionError",
    "RandomGraphGenerator",
    "State",
    "StateSizeError",
    "VertexEliminationEnv",
    "VertexEliminationVectorEnv",
    "bitset_init",
    "bitset_step",
    "edge_list",
    "init_state",
    "is_scalar_graph",
    "is_terminal",
    "legal_actions",
    "node_observation",
    "observation_space",
    "observe",
    "order_of",
    "rollout",
    "stack",
    "step",
]

if ENV_ID not in _gymnasium.registry:
    _gymnasium.register(
        ENV_ID,
        entry_point="alphagrad.env._gym:VertexEliminationEnv",
        vector_entry_point="alphagrad.env._gym:VertexEliminationVectorEnv",
    )
