"""Gymnasium environments over the JAX core: a thin shell (validation, numpy conversion, text).

`VertexEliminationEnv` plays one graph (or a graph drawn by a generator at every reset);
`VertexEliminationVectorEnv` plays a batch with one jitted, vmapped step per call. Both keep a
jitted step compiled once per state size and cost model (module-level `jax.jit` functions, whose
cache is keyed by the state's shapes), so creating many environments of one size compiles once.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from alphagrad.errors import AlphagradError
from alphagrad.graph import Graph, trace
from alphagrad.env import _core
from alphagrad.env._generator import GraphGenerator

__all__ = ["ENV_ID", "IllegalActionError", "VertexEliminationEnv", "VertexEliminationVectorEnv", "observation_space"]

#: The id under which `import alphagrad.env` registers the environment.
ENV_ID = "alphagrad/VertexElimination-v0"


class IllegalActionError(AlphagradError, ValueError):
    """An action that does not eliminate a vertex: eliminated, an output, padding, out of range."""


# ----------------------------------------------------------------------------------------------
# Jitted functions shared by every environment (compiled once per state size and cost model)
# ----------------------------------------------------------------------------------------------


def _step_observe(state: _core.State, action):
    new, _, terminated = _core.step(state, action)
    return new, new.cost - state.cost, terminated, _core.observe(new)


def _batch_step_observe(states: _core.State, actions, init: _core.State, pending):
    """vmap of step; envs with ``pending`` (terminated last step) restart from ``init`` instead."""
    new, _, terminated = jax.vmap(_core.step)(states, actions)
    batched = init.codes.ndim == states.codes.ndim

    def pick(start, stepped):
        if not batched:
            start = jnp.broadcast_to(start, stepped.shape)
        mask = pending.reshape(pending.shape + (1,) * (stepped.ndim - 1))
        return jnp.where(mask, start, stepped)

    new = jax.tree.map(pick, init, new)
    step_cost = jnp.where(pending, 0, new.cost - states.cost)
    terminated = jnp.where(pending, False, terminated)
    return new, step_cost, terminated, jax.vmap(_core.observe)(new)


# The single env keeps its state readable (`VertexEliminationEnv.state`); the vector env owns
# its batch, whose buffers every step donates (updated in place, no copy of the batch).
_jit_step_observe = jax.jit(_step_observe)
_jit_observe = jax.jit(_core.observe)
_jit_batch_step_observe = jax.jit(_batch_step_observe, donate_argnums=0)
_jit_batch_observe = jax.jit(jax.vmap(_core.observe))


# ----------------------------------------------------------------------------------------------
# Spaces
# ----------------------------------------------------------------------------------------------


def observation_space(max_vertices: int, max_inputs: int) -> spaces.Dict:
    """The observation space of a state with V = max_vertices, I = max_inputs (N = V + I).

    Keys (see `alphagrad.env.observe`):
      codes: Box int8[N, V] in -10..11  # edge codes, codes[src, dst]; rows: vertices, then inputs
      shapes: Box int32[N, 4]  # per node (src d1, src d2, dst d1, dst d2)
      node_type: Box int8[N] in 0..4  # padding, input, intermediate, eliminated, output
      action_mask: MultiBinary(V)  # 1 = the action eliminates a vertex now
    """
    V, n = max_vertices, max_vertices + max_inputs
    big = np.iinfo(np.int32)
    return spaces.Dict(
        {
            "codes": spaces.Box(_core.MIN_CODE, _core.MAX_CODE, shape=(n, V), dtype=np.int8),
            "shapes": spaces.Box(big.min, big.max, shape=(n, 4), dtype=np.int32),
            "node_type": spaces.Box(0, _core.NODE_OUTPUT, shape=(n,), dtype=np.int8),
            "action_mask": spaces.MultiBinary(V),
        }
    )


class _LegalDiscrete(spaces.Discrete):
    """``Discrete(V)`` whose ``sample()`` without a mask draws a *legal* action of the env's
    current state (so random agents and `check_env` only play legal moves); an explicit
    ``mask`` or ``probability`` works as in `spaces.Discrete`."""

    def __init__(self, n: int, env: Any, seed=None):
        super().__init__(n, seed=seed)
        self._env = weakref.ref(env)

    def sample(self, mask=None, probability=None):
        env = self._env() if self._env is not None else None
        if mask is None and probability is None and env is not None:
            legal = env._legal_mask()
            if legal is not None and legal.any():
                mask = legal.astype(np.int8)
        return super().sample(mask=mask, probability=probability)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None
        return state


class _LegalMultiDiscrete(spaces.MultiDiscrete):
    """``MultiDiscrete([V] * B)`` whose ``sample()`` draws a legal action for every sub-env."""

    def __init__(self, n: int, num_envs: int, env: Any, seed=None):
        super().__init__(np.full(num_envs, n, dtype=np.int64), seed=seed)
        self._env = weakref.ref(env)

    def sample(self, mask=None, probability=None):
        env = self._env() if self._env is not None else None
        if mask is None and probability is None and env is not None:
            legal = env._legal_mask()
            if legal is not None:
                full = np.ones(legal.shape[1], dtype=np.int8)
                mask = tuple(row.astype(np.int8) if row.any() else full for row in legal)
        return super().sample(mask=mask, probability=probability)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = None
        return state


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _resolve_graph(task, example_args) -> Graph:
    if isinstance(task, Graph):
        return task
    if isinstance(task, str):
        from alphagrad.tasks import load_graph

        return load_graph(task)
    if callable(task):
        return trace(task, *example_args)
    raise AlphagradError(
        "task must be a task name, 'ref:NAME', a Graph or a JAX function (with example_args), "
        f"got {type(task).__name__}"
    )


def _sizes(task, example_args, generator, max_vertices, max_inputs) -> tuple[Graph | None, int, int]:
    """(fixed graph or None, V, I)."""
    if (task is None) == (generator is None):
        raise AlphagradError("pass exactly one of task (a name, 'ref:NAME', a Graph or a function) and generator")
    if generator is not None:
        if not isinstance(generator, GraphGenerator):
            raise AlphagradError(f"generator must be a GraphGenerator, got {type(generator).__name__}")
        graph, V, I = None, generator.max_vertices, generator.max_inputs
    else:
        graph = _resolve_graph(task, example_args)
        V, I = graph.num_vertices, graph.num_inputs
    V = V if max_vertices is None else int(max_vertices)
    I = I if max_inputs is None else int(max_inputs)
    if generator is not None and (V < generator.max_vertices or I < generator.max_inputs):
        raise AlphagradError(
            f"max_vertices={V}, max_inputs={I} is smaller than the generator's graphs "
            f"({generator.max_vertices} vertices, {generator.max_inputs} inputs)"
        )
    if V < 1:
        raise AlphagradError(f"max_vertices must be positive, got {V}")
    return graph, V, I


def _to_numpy(tree):
    """Writable numpy copies of a pytree of arrays (observations users may keep and modify)."""
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def _action_index(action, V: int) -> int:
    """The action as an int, or IllegalActionError if it is not one in 0..V-1."""
    if isinstance(action, (np.ndarray, jax.Array)) and action.shape == ():
        action = action.item()
    if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
        raise IllegalActionError(
            f"an action is an integer in 0..{V - 1} (action a eliminates vertex a + 1), got {action!r}"
        )
    a = int(action)
    if not 0 <= a < V:
        raise IllegalActionError(
            f"action {a} is out of range: actions are 0..{V - 1}, and action a eliminates vertex a + 1"
        )
    return a


def _illegal_reason(graph: Graph, a: int, V: int, mask: np.ndarray, order: list[int]) -> str | None:
    """Why action `a` (in range) is illegal in a state with legal-action mask `mask`, or None."""
    if mask[a]:
        return None
    vertex = a + 1
    name = f"graph {graph.name!r}" if graph.name else "the graph"
    if not mask.any():
        return (
            f"action {a} (vertex {vertex}): the episode is over, every intermediate vertex of {name} "
            "is eliminated; call reset()"
        )
    if vertex > graph.num_vertices:
        return (
            f"action {a} is vertex {vertex}, a padding slot: {name} has only {graph.num_vertices} vertices "
            f"(the state has {V} slots); legal actions are 0..{graph.num_vertices - 1} minus outputs "
            "and eliminated vertices"
        )
    if graph.is_output(vertex):
        return (
            f"action {a} is {graph.describe_vertex(vertex)}, an output vertex of {name}; "
            "outputs are never eliminated"
        )
    where = f" at step {order.index(vertex) + 1}" if vertex in order else ""
    return (
        f"action {a} is {graph.describe_vertex(vertex)}, which was already eliminated{where}; "
        "choose an action with action_mask 1"
    )


def _describe(graph: Graph, state: _core.State, order: list[int], cost: int, V: int, I: int) -> str:
    """Text rendering: the graph, the order so far, and the remaining edges per vertex."""
    host = jax.device_get(state)
    codes = np.asarray(host.codes)
    gi = graph.num_inputs
    label = lambda idx: f"v{idx + 1}" if idx < V else f"x{idx - V + 1}"  # noqa: E731
    lines = [
        f"{graph!r} in a state of {V} vertex and {I} input slots",
        f"step {len(order)}/{graph.num_intermediates}, {cost} multiplications so far",
        f"order: {order}",
        "vertices (remaining edges as node[code]):",
    ]
    for k in range(1, graph.num_vertices + 1):
        a = k - 1
        status = "output" if graph.is_output(k) else ("eliminated" if k in order else "intermediate")
        if status == "eliminated":
            continue
        preds = [f"{label(p)}[{codes[p, a]}]" for p in np.nonzero(codes[:, a])[0]]
        succs = [f"{label(c)}[{codes[a, c]}]" for c in np.nonzero(codes[a, :])[0]]
        v = graph.vertices[a]
        lines.append(
            f"  v{k:<4} {v.primitive or '-':<18} {str(v.shape):<9} {status:<12} "
            f"in: {' '.join(preds) or '-'}  out: {' '.join(succs) or '-'}"
        )
    lines.append(f"inputs: {', '.join(f'x{i}{graph.input_shapes[i - 1]}' for i in range(1, gi + 1))}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The single environment
# ----------------------------------------------------------------------------------------------


class VertexEliminationEnv(gymnasium.Env):
    """The vertex elimination game of one graph, as a gymnasium environment.

    Each step eliminates one intermediate vertex; the episode terminates when every intermediate
    vertex is eliminated, and its return is ``-reward_scale * graph.cost(graph, order)``.

    Args:
      task: a registered task name (traced), ``"ref:NAME"`` (a reference graph), a `Graph`, or a
        JAX function traced at ``example_args``. Exactly one of task and generator.
      example_args: example inputs when ``task`` is a function.
      generator: a `GraphGenerator`; every reset draws a new graph from it with the env's
        ``np_random`` (so ``reset(seed=...)`` is reproducible).
      max_vertices, max_inputs: the state size V, I (default: the graph's, or the generator's
        bounds). Environments of one size share one compiled step.
      reward_scale: the reward is ``-multiplications * reward_scale``.
      render_mode: ``"human"`` (print) or ``"ansi"`` (return the text); None prints too.

    Spaces:
      action_space: ``Discrete(V)``; action a eliminates vertex a + 1. Its ``sample()`` without
        a mask draws a legal action of the current state.
      observation_space: a Dict, see `observation_space`.

    ``step`` returns ``info = {"cost": multiplications so far, "step_cost": of this step,
    "order": vertex numbers eliminated so far}``; ``reset`` returns ``{"cost": 0, "step_cost":
    0, "order": []}``. ``reset(options={"graph": g})`` plays graph ``g`` (it must fit the state).
    An illegal action raises `IllegalActionError` (a ValueError) naming the vertex and the
    reason, and leaves the state unchanged.
    """

    metadata = {"render_modes": ["human", "ansi"], "render_fps": 4}

    def __init__(
        self,
        task: str | Graph | Callable | None = None,
        *,
        example_args: tuple = (),
        generator: GraphGenerator | None = None,
        max_vertices: int | None = None,
        max_inputs: int | None = None,
        reward_scale: float = 1.0,
        render_mode: str | None = None,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise AlphagradError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        sizes = _sizes(task, example_args, generator, max_vertices, max_inputs)
        self._fixed, self.max_vertices, self.max_inputs = sizes
        self.generator = generator
        self.reward_scale = float(reward_scale)
        self.render_mode = render_mode
        self.action_space = _LegalDiscrete(self.max_vertices, self)
        self.observation_space = observation_space(self.max_vertices, self.max_inputs)
        self._initial = None if self._fixed is None else _core._encode(self._fixed, self.max_vertices, self.max_inputs)
        self.graph: Graph | None = self._fixed
        self._state: _core.State | None = None
        self._mask: np.ndarray | None = None
        self._order: list[int] = []
        self._cost = 0

    # The current state, for agents that want the pure core (e.g. to search from it).
    @property
    def state(self) -> _core.State:
        """The current `State` (device arrays); call `reset` first."""
        if self._state is None:
            raise AlphagradError("call reset() before reading the state")
        return self._state

    def _legal_mask(self) -> np.ndarray | None:
        return None if self._mask is None else self._mask.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        graph = (options or {}).get("graph")
        if graph is not None:
            initial = _core._encode(graph, self.max_vertices, self.max_inputs)
        elif self.generator is not None:
            graph = self.generator(self.np_random)
            initial = _core._encode(graph, self.max_vertices, self.max_inputs)
        else:
            graph, initial = self._fixed, self._initial
        self.graph = graph
        self._state = jax.device_put(initial)
        obs = _to_numpy(_jit_observe(self._state))
        self._mask = obs["action_mask"].astype(bool)
        self._order, self._cost = [], 0
        return obs, self._info(0)

    def _info(self, step_cost: int) -> dict[str, Any]:
        return {"cost": self._cost, "step_cost": step_cost, "order": list(self._order)}

    def step(self, action):
        if self._state is None:
            raise AlphagradError("call reset() before step()")
        a = _action_index(action, self.max_vertices)
        reason = _illegal_reason(self.graph, a, self.max_vertices, self._mask, self._order)
        if reason is not None:
            raise IllegalActionError(reason)
        self._state, step_cost, terminated, obs = _jit_step_observe(self._state, np.int32(a))
        step_cost, terminated, obs = _to_numpy((step_cost, terminated, obs))
        step_cost = int(step_cost)
        self._mask = obs["action_mask"].astype(bool)
        self._order.append(a + 1)
        self._cost += step_cost
        reward = -float(step_cost) * self.reward_scale
        return obs, reward, bool(terminated), False, self._info(step_cost)

    def render(self):
        if self._state is None:
            raise AlphagradError("call reset() before render()")
        text = _describe(self.graph, self._state, self._order, self._cost, self.max_vertices, self.max_inputs)
        if self.render_mode == "ansi":
            return text
        print(text)
        return None


# ----------------------------------------------------------------------------------------------
# The vector environment
# ----------------------------------------------------------------------------------------------


class VertexEliminationVectorEnv(VectorEnv):
    """A batch of ``num_envs`` elimination games stepped by one jitted ``vmap`` of the core.

    Arguments as `VertexEliminationEnv` (one task for all sub-envs, or a generator drawing a
    graph per sub-env and episode). Autoreset is ``NEXT_STEP``: the step after a sub-env
    terminates resets it (its action is ignored, reward 0, not terminated). Observations are
    the single env's Dict with a leading batch axis; ``info`` holds int arrays ``cost``,
    ``step_cost`` ([B]) and ``order`` ([B, V], vertex numbers, -1 padded). An illegal action of
    any sub-env raises `IllegalActionError` naming the sub-env and the vertex, before any
    sub-env moves. ``action_space.sample()`` draws a legal action for every sub-env.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": ["ansi"]}

    def __init__(
        self,
        num_envs: int = 1,
        task: str | Graph | Callable | None = None,
        *,
        example_args: tuple = (),
        generator: GraphGenerator | None = None,
        max_vertices: int | None = None,
        max_inputs: int | None = None,
        reward_scale: float = 1.0,
        render_mode: str | None = None,
    ):
        if int(num_envs) < 1:
            raise AlphagradError(f"num_envs must be positive, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise AlphagradError(f"render_mode must be 'ansi' or None, got {render_mode!r}")
        self.num_envs = int(num_envs)
        sizes = _sizes(task, example_args, generator, max_vertices, max_inputs)
        self._fixed, self.max_vertices, self.max_inputs = sizes
        self.generator = generator
        self.reward_scale = float(reward_scale)
        self.render_mode = render_mode
        self.single_action_space = spaces.Discrete(self.max_vertices)
        self.action_space = _LegalMultiDiscrete(self.max_vertices, self.num_envs, self)
        self.single_observation_space = observation_space(self.max_vertices, self.max_inputs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.graphs: list[Graph | None] = [self._fixed] * self.num_envs
        self._fixed_init = None
        if self._fixed is not None:
            self._fixed_init = jax.device_put(_core._encode(self._fixed, self.max_vertices, self.max_inputs))
        self._states: _core.State | None = None
        self._init_host: list[_core.State] | None = None
        self._mask: np.ndarray | None = None
        self._pending = np.zeros(self.num_envs, dtype=bool)

    def _legal_mask(self) -> np.ndarray | None:
        return None if self._mask is None else self._mask.copy()

    def _draw(self, env_ids) -> None:
        """Draws new graphs from the generator for the given sub-envs (host-side init states)."""
        for i in env_ids:
            self.graphs[i] = self.generator(self.np_random)
            self._init_host[i] = _core._encode(self.graphs[i], self.max_vertices, self.max_inputs)

    def _init_batch(self) -> _core.State:
        if self._fixed is not None:
            return self._fixed_init
        return jax.device_put(jax.tree.map(lambda *xs: np.stack(xs), *self._init_host))

    def reset(self, *, seed=None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.generator is not None:
            self._init_host = [None] * self.num_envs
            self._draw(range(self.num_envs))
        init = self._init_batch()
        if self._fixed is not None:
            init = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_envs,) + x.shape), init)
        self._states = jax.tree.map(jnp.array, init)  # own buffers (steps donate them)
        obs = _to_numpy(_jit_batch_observe(self._states))
        self._mask = obs["action_mask"].astype(bool)
        self._pending[:] = False
        zeros = np.zeros(self.num_envs, dtype=np.int32)
        return obs, self._info(zeros, zeros, np.asarray(self._states.order))

    def _info(self, cost, step_cost, order) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)
        return {
            "cost": np.asarray(cost).copy(),
            "step_cost": np.asarray(step_cost).copy(),
            "order": np.array(order, copy=True),
            "_cost": every.copy(),
            "_step_cost": every.copy(),
            "_order": every.copy(),
        }

    def step(self, actions):
        if self._states is None:
            raise AlphagradError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise IllegalActionError(
                f"actions must be {self.num_envs} integers in 0..{self.max_vertices - 1}, got {actions!r}"
            )
        in_range = (actions >= 0) & (actions < self.max_vertices)
        legal = in_range & self._mask[np.arange(self.num_envs), np.clip(actions, 0, self.max_vertices - 1)]
        # Sub-envs pending autoreset ignore their action; one with no legal action (a graph
        # without intermediates) plays the core's absorbing no-op and reports termination.
        bad = np.nonzero(~legal & ~self._pending & self._mask.any(axis=1))[0]
        if bad.size:
            i, a = int(bad[0]), int(actions[bad[0]])
            reason = (
                _illegal_reason(self.graphs[i], a, self.max_vertices, self._mask[i], [])
                if in_range[i]
                else f"action {a} is out of range: actions are 0..{self.max_vertices - 1}"
            )
            raise IllegalActionError(f"sub-environment {i}: {reason}")
        if self.generator is not None and self._pending.any():
            self._draw(np.nonzero(self._pending)[0])
        safe = np.where(self._pending, 0, actions).astype(np.int32)
        self._states, step_cost, terminated, obs = _jit_batch_step_observe(
            self._states, safe, self._init_batch(), self._pending
        )
        step_cost, terminated, obs, cost, order = _to_numpy(
            (step_cost, terminated, obs, self._states.cost, self._states.order)
        )
        self._mask = obs["action_mask"].astype(bool)
        self._pending = terminated.copy()
        rewards = -step_cost.astype(np.float64) * self.reward_scale
        truncated = np.zeros(self.num_envs, dtype=bool)
        return obs, rewards, terminated, truncated, self._info(cost, step_cost, order)

    def render(self):
        if self._states is None:
            raise AlphagradError("call reset() before render()")
        texts = []
        for i in range(self.num_envs):
            state = jax.tree.map(lambda x: x[i], self._states)
            order = _core.order_of(state)
            texts.append(_describe(self.graphs[i], state, order, int(state.cost), self.max_vertices, self.max_inputs))
        return tuple(texts)
