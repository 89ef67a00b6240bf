"""Gymnasium environments at Python speed: the elimination engine, observations updated in place.

`VertexEliminationEnv` plays one graph (or a graph drawn by a generator at every reset) with the
Python elimination engine (`graph.Eliminator`), not with the jitted core: a gymnasium step is one
elimination asked for by Python code, and a jitted call per step costs more than the elimination
itself. The observation is the jitted core's (`_core.observe` of the initial state, computed once
per graph), then kept up to date in numpy: an elimination rewrites only the entries it changes
(the predecessor rows at the successor columns, the vertex's own row and column, its node type
and action bit).

`VertexEliminationVectorEnv` plays a batch with one of two backends: one engine per sub-env
(``"python"``, fastest for small batches) or the jitted core, ``jax.vmap(env.step)`` over a
batch of `State`s in one compiled call per vector step (``"jax"``, fastest for large batches);
``"auto"`` picks by batch size (`AUTO_JAX_MIN_ENVS`). The env itself checks the actions, draws
the graphs, builds the info and renders, for both backends alike. The gymnasium envs, both
backends and the jitted core are tested equal observation by observation
(tests/env/test_gym.py).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from alphagrad.errors import AlphagradError
from alphagrad.graph import NUM_CODES, Eliminator, Graph, trace
from alphagrad.env import _core
from alphagrad.env._generator import ChoiceGenerator, GraphGenerator

__all__ = ["ENV_ID", "IllegalActionError", "VertexEliminationEnv", "VertexEliminationVectorEnv", "observation_space"]

#: The id under which `import alphagrad.env` registers the environment.
ENV_ID = "alphagrad/VertexElimination-v0"


class IllegalActionError(AlphagradError, ValueError):
    """An action that does not eliminate a vertex: eliminated, an output, padding, out of range."""


# The initial observation of a graph comes from the core's own `observe` (one definition of the
# observation), compiled once per state size and cost model.
_jit_observe = jax.jit(_core.observe)


# ----------------------------------------------------------------------------------------------
# Spaces
# ----------------------------------------------------------------------------------------------


def observation_space(max_vertices: int, max_inputs: int, *, num_codes: int = NUM_CODES, rank: int = 2) -> spaces.Dict:
    """The observation space of a state with V = max_vertices, I = max_inputs (N = V + I), C =
    num_codes structure codes and R = rank dims per node (the defaults: the paper's 22 codes and
    2-D shapes, what every graph without arrays of rank >= 3 has).

    Keys (see `alphagrad.env.observe`):
      codes: Box int8[N, V] in MIN_CODE..MIN_CODE + C - 1 (-10..11 for C = 22)  # edge codes,
        codes[src, dst]; rows: vertices, then inputs
      shapes: Box int32[N, 2R]  # per node (R source dims, then R destination dims)
      node_type: Box int8[N] in 0..4  # padding, input, intermediate, eliminated, output
      action_mask: MultiBinary(V)  # 1 = the action eliminates a vertex now
    """
    V, n = max_vertices, max_vertices + max_inputs
    big = np.iinfo(np.int32)
    return spaces.Dict(
        {
            "codes": spaces.Box(_core.MIN_CODE, _core.MIN_CODE + num_codes - 1, shape=(n, V), dtype=np.int8),
            "shapes": spaces.Box(big.min, big.max, shape=(n, 2 * rank), dtype=np.int32),
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


class _Layout(NamedTuple):
    """What the observation space of an env holds: state size and the structure codes and dims.

    Attributes:
      V, I: vertex and input slots.
      C: structure codes (table length; the codes run from MIN_CODE to MIN_CODE + C - 1).
      R: dims per node; every graph's state is padded to R (which scores the same).
    """

    V: int
    I: int
    C: int
    R: int


def _layout(graph: Graph | None, generator: GraphGenerator | None, V: int, I: int) -> _Layout:
    """The fixed graph's codes and rank; with a `ChoiceGenerator`, the largest of its graphs';
    with another generator, the paper's (22 codes, rank 2: a drawn graph beyond them is refused
    at reset, naming the limit)."""
    known = [graph] if graph is not None else list(generator.graphs) if isinstance(generator, ChoiceGenerator) else []
    C, R = NUM_CODES, 2
    for g in known:
        tables = _core._state_tables(g)[0]
        C, R = max(C, tables.num_codes), max(R, tables.rank)
    return _Layout(V, I, C, R)


def _tables_keys(generator: GraphGenerator | None, layout: _Layout) -> list[str]:
    """The distinct tables (`State.cost_model`) of a `ChoiceGenerator`'s graphs at the env's
    rank; [] for other generators (unknown in advance)."""
    if not isinstance(generator, ChoiceGenerator):
        return []
    return sorted({_core._state_tables(g, layout.R)[0].key for g in generator.graphs})


class _Start(NamedTuple):
    """What every episode of one graph starts from (built once per graph and state size).

    Attributes:
      graph: the graph.
      state: its initial `State` as numpy arrays (`_core._encode`, which also validates the graph).
      obs: the initial observation, ``_core.observe(state)`` as read-only numpy arrays.
      engine: an `Eliminator` of the graph that is never stepped: every episode plays a copy
        (copy on write, so a reset copies no edges), and the copies share its pair costs.
      row: per engine node id (inputs 1..gi, vertex k = gi + k), its row in the node layout.
      num_intermediates: the eliminations of a complete episode.
    """

    graph: Graph
    state: _core.State
    obs: dict[str, np.ndarray]
    engine: Eliminator
    row: tuple[int, ...]
    num_intermediates: int


def _start(graph: Graph, layout: _Layout) -> _Start:
    """The `_Start` of `graph` in a state of the env's layout (StateSizeError if it does not fit
    or is not a valid elimination graph)."""
    V, I = layout.V, layout.I
    state = _core._encode(graph, V, I, layout.R)
    top = _core.MIN_CODE + layout.C - 1
    if _core._tables(state.cost_model).num_codes > layout.C:
        raise _core.StateSizeError(
            f"graph {graph.name!r} has structure codes beyond {top}, the largest the env's observation space "
            "holds (built from the env's task or generator); give the env a ChoiceGenerator of all its graphs"
        )
    obs = {key: np.array(value) for key, value in jax.device_get(_jit_observe(state)).items()}
    for value in obs.values():
        value.setflags(write=False)
    gi = graph.num_inputs
    row = (0, *(V + i - 1 for i in range(1, gi + 1)), *range(graph.num_vertices))
    engine = Eliminator(graph, _core._graph_tables(graph)[0])  # the same cost model as the state's
    return _Start(graph, state, obs, engine, row, int(state.num_intermediates))


class _Starts:
    """`_Start`s of recently played graphs, so that a generator that redraws its graphs (a
    `ChoiceGenerator`) does not re-encode them at every reset. Keyed by the graph object, which
    the cache holds (so an id is never reused while its entry lives)."""

    _SIZE = 64

    def __init__(self, layout: _Layout):
        self._layout = layout
        self._cache: dict[int, _Start] = {}

    def __call__(self, graph: Graph) -> _Start:
        start = self._cache.get(id(graph))
        if start is None or start.graph is not graph:
            start = _start(graph, self._layout)
            if len(self._cache) >= self._SIZE:
                del self._cache[next(iter(self._cache))]  # the oldest entry
            self._cache[id(graph)] = start
        return start


class _Game:
    """One episode on the host: a copy of the graph's engine and the episode's observation arrays,
    updated in place by each elimination (only the entries it changes).

    The arrays belong to the owner: the single env's own, or row i of the vector env's batch
    arrays (so a batch observation is never stacked). Shapes never change during an episode.

    Attributes:
      codes: int8[N, V], shapes: int32[N, 2R], node_type: int8[N], mask: int8[V]  # the observation
      order_row: int32[V]  # vertex numbers eliminated so far, -1 padded (the vector env's info)
      order: list[int]  # the same, as a list
      cost: int  # multiplications so far
    """

    __slots__ = ("start", "engine", "codes", "shapes", "node_type", "mask", "order_row", "order", "cost")

    def __init__(self, codes: np.ndarray, shapes: np.ndarray, node_type: np.ndarray, mask: np.ndarray,
                 order_row: np.ndarray):
        self.codes, self.shapes, self.node_type, self.mask = codes, shapes, node_type, mask
        self.order_row = order_row
        self.start: _Start | None = None
        self.engine: Eliminator | None = None
        self.order: list[int] = []
        self.cost = 0

    def reset(self, start: _Start) -> None:
        """Starts an episode of ``start.graph``."""
        self.start = start
        self.engine = start.engine.copy()
        obs = start.obs
        self.codes[...] = obs["codes"]
        self.shapes[...] = obs["shapes"]
        self.node_type[...] = obs["node_type"]
        self.mask[...] = obs["action_mask"]
        self.order_row[...] = -1
        self.order = []
        self.cost = 0

    @property
    def done(self) -> bool:
        """Every intermediate vertex is eliminated."""
        return len(self.order) == self.start.num_intermediates

    def eliminate(self, vertex: int) -> int:
        """Eliminates `vertex` (a vertex number with action_mask 1); returns its multiplications."""
        engine = self.engine
        gi = engine.num_inputs
        node = gi + vertex
        preds, succs = list(engine.preds[node]), list(engine.succs[node])
        step_cost = engine.eliminate(vertex)
        # What changed: every edge p->c (a product added into it or creating it), v's in-edges
        # (column a of the predecessor rows) and v's out-edges (row a); nothing else.
        codes, row, edges = self.codes, self.start.row, engine.succs
        a = vertex - 1
        columns = [c - gi - 1 for c in succs]
        for p in preds:
            r, p_edges = row[p], edges[p]
            codes[r, a] = 0
            for c, column in zip(succs, columns):
                codes[r, column] = p_edges[c]
        codes[a, columns] = 0
        self.node_type[a] = _core.NODE_ELIMINATED
        self.mask[a] = 0
        self.order_row[len(self.order)] = vertex
        self.order.append(vertex)
        self.cost += step_cost
        return step_cost

    def observation(self) -> dict[str, np.ndarray]:
        """Copies of the observation arrays (users may keep and modify what a step returns)."""
        return {
            "codes": self.codes.copy(),
            "shapes": self.shapes.copy(),
            "node_type": self.node_type.copy(),
            "action_mask": self.mask.copy(),
        }

    def state(self) -> _core.State:
        """The episode's `State` of the jitted core, as numpy arrays."""
        return dataclasses.replace(
            self.start.state,
            codes=self.codes.copy(),
            eliminable=self.mask.astype(bool),
            order=self.order_row.copy(),
            step_count=np.asarray(len(self.order), np.int32),
            cost=np.asarray(self.cost, np.int32),
            illegal=np.zeros((), bool),
        )


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


def _describe(graph: Graph, codes: np.ndarray, order: list[int], cost: int, V: int, I: int) -> str:
    """Text rendering: the graph, the order so far, and the remaining edges per vertex."""
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
        bounds): the observation's shapes.
      reward_scale: the reward is ``-multiplications * reward_scale``.
      render_mode: ``"human"`` (print) or ``"ansi"`` (return the text); None prints too.

    Spaces:
      action_space: ``Discrete(V)``; action a eliminates vertex a + 1. Its ``sample()`` without
        a mask draws a legal action of the current state.
      observation_space: a Dict, see `observation_space`: its codes and dims per node are the
        task's (the paper's 22 codes and 2 dims for every graph without arrays of rank >= 3), or
        the largest of a `ChoiceGenerator`'s graphs (the others' dims padded with 1s, which scores
        the same); another generator's graphs must fit the paper's.

    ``step`` returns ``info = {"cost": multiplications so far, "step_cost": of this step,
    "order": vertex numbers eliminated so far}``; ``reset`` returns ``{"cost": 0, "step_cost":
    0, "order": []}``. ``reset(options={"graph": g})`` plays graph ``g`` (it must fit the state).
    An illegal action raises `IllegalActionError` (a ValueError) naming the vertex and the
    reason, and leaves the state unchanged.

    A step is one `graph.Eliminator` elimination plus writes of the observation entries it
    changes (tens of thousands of steps per second); ``state`` gives the jitted core's `State`
    of the current position, equal to what `alphagrad.env.step` reaches with the same actions.
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
        layout = _layout(self._fixed, generator, self.max_vertices, self.max_inputs)
        self.observation_space = observation_space(self.max_vertices, self.max_inputs, num_codes=layout.C, rank=layout.R)
        self._starts = _Starts(layout)
        self._fixed_start = None if self._fixed is None else self._starts(self._fixed)
        self.graph: Graph | None = self._fixed
        n, V = self.max_vertices + self.max_inputs, self.max_vertices
        self._game = _Game(
            np.zeros((n, V), np.int8), np.zeros((n, 2 * layout.R), np.int32), np.zeros(n, np.int8),
            np.zeros(V, np.int8), np.full(V, -1, np.int32),
        )
        self._state: _core.State | None = None  # built when asked for, until the next step

    # The current state, for agents that want the pure core (e.g. to search from it).
    @property
    def state(self) -> _core.State:
        """The current `State` (device arrays); call `reset` first."""
        if self._game.start is None:
            raise AlphagradError("call reset() before reading the state")
        if self._state is None:
            self._state = jax.device_put(self._game.state())
        return self._state

    def _legal_mask(self) -> np.ndarray | None:
        return None if self._game.start is None else self._game.mask.astype(bool)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        graph = (options or {}).get("graph")
        if graph is not None:
            start = self._starts(graph)
        elif self.generator is not None:
            start = self._starts(self.generator(self.np_random))
        else:
            start = self._fixed_start
        self.graph = start.graph
        self._game.reset(start)
        self._state = None
        return self._game.observation(), self._info(0)

    def _info(self, step_cost: int) -> dict[str, Any]:
        return {"cost": self._game.cost, "step_cost": step_cost, "order": list(self._game.order)}

    def step(self, action):
        game = self._game
        if game.start is None:
            raise AlphagradError("call reset() before step()")
        a = _action_index(action, self.max_vertices)
        if not game.mask[a]:
            raise IllegalActionError(_illegal_reason(self.graph, a, self.max_vertices, game.mask, game.order))
        step_cost = game.eliminate(a + 1)
        self._state = None
        reward = -float(step_cost) * self.reward_scale
        return game.observation(), reward, game.done, False, self._info(step_cost)

    def render(self):
        game = self._game
        if game.start is None:
            raise AlphagradError("call reset() before render()")
        text = _describe(self.graph, game.codes, game.order, game.cost, self.max_vertices, self.max_inputs)
        if self.render_mode == "ansi":
            return text
        print(text)
        return None


# ----------------------------------------------------------------------------------------------
# The vector environment: two backends of one game
# ----------------------------------------------------------------------------------------------

#: The backends of `VertexEliminationVectorEnv`.
BACKENDS = ("auto", "python", "jax")

#: ``backend="auto"`` steps batches of at least this many sub-envs with the jitted core. Measured
#: on RoeFlux_1d (98 eliminations, 101 x 6 slots; 2 shared CPU cores, 2026-11-29, two runs):
#: the Python engine's rate is flat in the batch size (116k-125k steps/s from 8 to 64 sub-envs)
#: while the jitted call's fixed cost is shared by the batch (jax / python: 0.48 at 8, 0.75 at 16,
#: 1.00 at 24, 1.20 at 32, 1.5 at 48, 1.6-1.8 at 64). The crossover is 24; 32 leaves a margin for
#: the first step's compilation and for graphs whose engine steps are cheaper.
AUTO_JAX_MIN_ENVS = 32


def _batch_step(states: _core.State, actions, init: _core.State | None = None, pending=None):
    """One vector step of the jitted core: `step` vmapped over the batch; with ``init`` and
    ``pending``, the sub-envs with ``pending`` (terminated at the previous step) restart from
    ``init`` instead.

    Args:
      states: the batch (every field with a leading axis B).
      actions: int32[B]; pending rows' actions are ignored.
      init: initial states, batched like ``states`` or one unbatched state for every row.
      pending: bool[B].

    Returns:
      (states, step_cost: int32[B] (0 where pending), terminated: bool[B] (False where pending),
      node_type: int8[B, N], action_mask: int8[B, V]): the observation's other keys are read on
      the host, ``codes`` from the states and ``shapes`` from the initial observations (a step
      never changes them), so the code matrices are not copied on the device.
    """
    new, _, terminated = jax.vmap(_core.step)(states, actions)
    step_cost = new.cost - states.cost
    if pending is not None:

        def restart(start, stepped):
            mask = pending.reshape(pending.shape + (1,) * (stepped.ndim - 1))
            return jnp.where(mask, start, stepped)  # an unbatched start broadcasts over the batch

        new = jax.tree.map(restart, init, new)
        step_cost = jnp.where(pending, 0, step_cost)
        terminated = terminated & ~pending
    obs = jax.vmap(_core.observe)(new)
    return new, step_cost, terminated, obs["node_type"], obs["action_mask"]


# Compiled once per batch size, state size and cost model, with and without restarts (a step
# that restarts no sub-env skips the select over the batch); every step donates the batch (the
# code matrices are updated in place, never copied).
_jit_batch_step = jax.jit(_batch_step, donate_argnums=0)


class _EngineBatch:
    """The ``"python"`` backend: sub-env i is a `_Game` (its own engine) in row i of the batch
    observation arrays, updated in place.

    Shared with `_CoreBatch` (what `VertexEliminationVectorEnv` reads between steps):
      mask: int8[B, V]  # the batch's action masks (do not modify)
      mask_rows: list of its B rows (the action check indexes rows in a Python loop)
      order: int32[B, V]  # vertex numbers eliminated so far, -1 padded
      cost: int64[B]  # multiplications so far
    """

    def __init__(self, num_envs: int, layout: _Layout):
        space = observation_space(layout.V, layout.I, num_codes=layout.C, rank=layout.R)
        V = layout.V
        self._obs = {key: np.zeros((num_envs, *s.shape), s.dtype) for key, s in space.spaces.items()}
        self.order = np.full((num_envs, V), -1, np.int32)
        o = self._obs
        self._games = [
            _Game(o["codes"][i], o["shapes"][i], o["node_type"][i], o["action_mask"][i], self.order[i])
            for i in range(num_envs)
        ]
        self.mask = o["action_mask"]
        self.mask_rows = list(self.mask)
        self.cost = np.zeros(num_envs, np.int64)

    def _observation(self) -> dict[str, np.ndarray]:
        return {key: value.copy() for key, value in self._obs.items()}

    def reset(self, starts: list[_Start]) -> dict[str, np.ndarray]:
        """Starts an episode of ``starts[i].graph`` in every sub-env i; returns the observation."""
        for game, start in zip(self._games, starts):
            game.reset(start)
        self.cost = np.zeros(len(starts), np.int64)
        return self._observation()

    def step(self, actions: np.ndarray, pending: list[bool], starts: dict[int, _Start]):
        """Plays checked actions: pending sub-envs restart from ``starts[i]``, sub-envs without a
        legal action stay put (terminated), the others eliminate vertex ``actions[i] + 1``.

        Returns (observation, step_cost: int64[B], terminated: bool[B]).
        """
        B = len(self._games)
        step_cost = np.zeros(B, dtype=np.int64)
        terminated = np.zeros(B, dtype=bool)
        for i, (game, action, restart) in enumerate(zip(self._games, actions.tolist(), pending)):
            if restart:
                game.reset(starts[i])
            elif game.done:
                terminated[i] = True
            else:
                step_cost[i] = game.eliminate(action + 1)
                terminated[i] = game.done
        self.cost = np.array([game.cost for game in self._games], dtype=np.int64)
        return self._observation(), step_cost, terminated

    def codes(self) -> np.ndarray:
        """int8[B, N, V]: the batch's code matrices (for rendering)."""
        return self._obs["codes"]


class _CoreBatch:
    """The ``"jax"`` backend: the batch is a `State` of device arrays stepped by one compiled,
    vmapped call of the core per vector step (`_batch_step`); its attributes are `_EngineBatch`'s.

    Episodes restart from the initial states and observations of `_start` (the same encoding
    and observation as the Python backend): one unbatched state of a fixed graph, or, with a
    generator, a batch of every sub-env's current initial state, uploaded when a row changes.
    A batch holds one cost model (it is static in the compiled step). Everything read on the
    host is copied out of the device buffers before the next step donates them.
    """

    def __init__(self, num_envs: int, layout: _Layout, fixed: _Start | None):
        V, I = layout.V, layout.I
        self._fixed_init = None if fixed is None else jax.device_put(fixed.state)
        self._init_host: _core.State | None = None  # the generator's initial states, batched
        self._init_device: _core.State | None = None  # its upload, None while a row is stale
        self._states: _core.State | None = None
        self._shapes = np.zeros((num_envs, V + I, 2 * layout.R), np.int32)  # the episodes' obs["shapes"]
        self.mask = np.zeros((num_envs, V), np.int8)
        self.mask_rows = list(self.mask)
        self.order = np.full((num_envs, V), -1, np.int32)
        self.cost = np.zeros(num_envs, np.int64)

    def reset(self, starts: list[_Start]) -> dict[str, np.ndarray]:
        """Starts an episode of ``starts[i].graph`` in every sub-env i; returns the observation."""
        models = {start.state.cost_model for start in starts}
        if len(models) > 1:
            raise AlphagradError(
                f"backend='jax' steps one cost model per batch, but the generator drew graphs scored with "
                f"{sorted(models)}; use backend='python'"
            )
        host = jax.tree.map(lambda *xs: np.stack(xs), *(start.state for start in starts))
        if self._fixed_init is None:
            self._init_host, self._init_device = host, None
        self._states = jax.tree.map(jnp.array, host)  # own buffers (every step donates them)
        obs = {key: np.stack([start.obs[key] for start in starts]) for key in starts[0].obs}
        self._shapes[...] = obs["shapes"]
        self.mask = obs["action_mask"].copy()  # the user owns obs
        self.mask_rows = list(self.mask)
        self.order = host.order.copy()
        self.cost = np.zeros(len(starts), np.int64)
        return obs

    def _init(self, starts: dict[int, _Start]) -> _core.State:
        """The initial states the pending sub-envs restart from (rows of ``starts`` replaced)."""
        for i, start in starts.items():
            self._shapes[i] = start.obs["shapes"]
        if self._fixed_init is not None:
            return self._fixed_init
        host = self._init_host
        for i, start in starts.items():
            if start.state.cost_model != host.cost_model:
                raise AlphagradError(
                    f"backend='jax' steps one cost model per batch ({host.cost_model!r}), but the generator "
                    f"drew graph {start.graph.name!r} scored with {start.state.cost_model!r}; use backend='python'"
                )
            for row, value in zip(jax.tree.leaves(host), jax.tree.leaves(start.state)):
                row[i] = value
            self._init_device = None
        if self._init_device is None:
            self._init_device = jax.tree.map(jnp.array, host)
        return self._init_device

    def step(self, actions: np.ndarray, pending: list[bool], starts: dict[int, _Start]):
        """As `_EngineBatch.step`, in one compiled call."""
        actions = actions.astype(np.int32)
        if starts:
            restart = (self._init(starts), np.array(pending, dtype=bool))
            self._states, *out = _jit_batch_step(self._states, actions, *restart)
        else:
            self._states, *out = _jit_batch_step(self._states, actions)
        states = self._states
        step_cost, terminated, node_type, mask, self.order, cost, codes = (
            np.array(x) for x in (*out, states.order, states.cost, states.codes)
        )
        self.mask = mask
        self.mask_rows = list(mask)
        self.cost = cost.astype(np.int64)
        # The keys in the order of the observation space (and of the Python backend).
        obs = {"action_mask": mask.copy(), "codes": codes, "node_type": node_type, "shapes": self._shapes.copy()}
        return obs, step_cost.astype(np.int64), terminated

    def codes(self) -> np.ndarray:
        """int8[B, N, V]: the batch's code matrices (for rendering)."""
        return np.asarray(self._states.codes)


class VertexEliminationVectorEnv(VectorEnv):
    """A batch of ``num_envs`` elimination games, stepped by the Python engine or the jitted core.

    Arguments as `VertexEliminationEnv` (one task for all sub-envs, or a generator drawing a
    graph per sub-env and episode), plus:

      backend: ``"python"``: sub-env i plays like a `VertexEliminationEnv` (its own
        `graph.Eliminator`, its observation updated in place in row i of the batch arrays), so
        a vector step costs about B single-env steps. ``"jax"``: the batch is a `State` stepped
        by one compiled ``jax.vmap`` of `alphagrad.env.step` per vector step, whose fixed cost
        is shared by the batch (one compilation per batch size, state size and cost model, at
        the first step; a batch holds one cost model). ``"auto"`` (default): ``"jax"`` when
        ``num_envs >= AUTO_JAX_MIN_ENVS`` (the measured crossover) and the generator (if any) is
        not a `ChoiceGenerator` of several cost models, else ``"python"``. The chosen backend is
        the ``backend`` attribute.

    Both backends play the same game with the same results: observations, rewards,
    terminations, truncations, info, autoresets, errors, ``action_space.sample()`` and
    ``render()`` are equal step by step (tests/env/test_gym.py).

    Autoreset is ``NEXT_STEP``: the step after a sub-env terminates resets it (its action is
    ignored, reward 0, not terminated). A sub-env whose graph has no intermediate vertex
    terminates at every step it is not reset (reward 0). Observations are the single env's Dict
    with a leading batch axis; ``info`` holds ``cost``, ``step_cost`` (int64[B]) and ``order``
    (int32[B, V], vertex numbers, -1 padded). An illegal action of any sub-env raises
    `IllegalActionError` naming the sub-env, the vertex and the reason, before any sub-env
    moves. ``action_space.sample()`` draws a legal action for every sub-env.
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
        backend: str = "auto",
    ):
        if int(num_envs) < 1:
            raise AlphagradError(f"num_envs must be positive, got {num_envs}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise AlphagradError(f"render_mode must be 'ansi' or None, got {render_mode!r}")
        if backend not in BACKENDS:
            raise AlphagradError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        self.num_envs = B = int(num_envs)
        sizes = _sizes(task, example_args, generator, max_vertices, max_inputs)
        self._fixed, self.max_vertices, self.max_inputs = sizes
        layout = _layout(self._fixed, generator, self.max_vertices, self.max_inputs)
        # The jitted core's tables are static: a batch holds one cost model (one set of tables).
        keys = _tables_keys(generator, layout) if backend != "python" else []
        if backend == "jax" and len(keys) > 1:
            raise AlphagradError(
                f"backend='jax' steps one cost model per batch, but the ChoiceGenerator's graphs use {keys}; "
                "use backend='python' or 'auto'"
            )
        if backend == "auto":
            backend = "jax" if B >= AUTO_JAX_MIN_ENVS and len(keys) <= 1 else "python"
        self.backend = backend
        self.generator = generator
        self.reward_scale = float(reward_scale)
        self.render_mode = render_mode
        self.single_action_space = spaces.Discrete(self.max_vertices)
        self.action_space = _LegalMultiDiscrete(self.max_vertices, self.num_envs, self)
        self.single_observation_space = observation_space(
            self.max_vertices, self.max_inputs, num_codes=layout.C, rank=layout.R
        )
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.graphs: list[Graph | None] = [self._fixed] * B
        self._starts = _Starts(layout)
        self._fixed_start = None if self._fixed is None else self._starts(self._fixed)
        self._batch = _EngineBatch(B, layout) if backend == "python" else _CoreBatch(B, layout, self._fixed_start)
        self._started = False
        self._pending = np.zeros(B, dtype=bool)

    def _legal_mask(self) -> np.ndarray | None:
        return self._batch.mask.astype(bool) if self._started else None

    def _next_start(self, i: int) -> _Start:
        """What sub-env i's next episode starts from (a new graph from the generator, if any)."""
        if self.generator is None:
            return self._fixed_start
        start = self._starts(self.generator(self.np_random))
        self.graphs[i] = start.graph
        return start

    def reset(self, *, seed=None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._started = False  # until the batch has started (a draw the backend refuses leaves it so)
        obs = self._batch.reset([self._next_start(i) for i in range(self.num_envs)])
        self._started = True
        self._pending[:] = False
        return obs, self._info(np.zeros(self.num_envs, dtype=np.int64))

    def _info(self, step_cost: np.ndarray) -> dict[str, Any]:
        every = np.ones(self.num_envs, dtype=bool)
        return {
            "cost": self._batch.cost.copy(),
            "step_cost": step_cost,
            "order": self._batch.order.copy(),
            "_cost": every.copy(),
            "_step_cost": every.copy(),
            "_order": every.copy(),
        }

    def _order_of(self, i: int) -> list[int]:
        return [int(k) for k in self._batch.order[i] if k > 0]

    def _check(self, actions: list[int], pending: list[bool]) -> None:
        """IllegalActionError for the first sub-env whose action does not eliminate a vertex.
        Sub-envs pending autoreset ignore their action, and so do those without a legal action
        (a graph without intermediates: terminated before its first step)."""
        V = self.max_vertices
        for i, (row, a, restart) in enumerate(zip(self._batch.mask_rows, actions, pending)):
            if restart or (0 <= a < V and row[a]) or not row.any():
                continue
            reason = (
                _illegal_reason(self.graphs[i], a, V, row, self._order_of(i))
                if 0 <= a < V
                else f"action {a} is out of range: actions are 0..{V - 1}"
            )
            raise IllegalActionError(f"sub-environment {i}: {reason}")

    def step(self, actions):
        if not self._started:
            raise AlphagradError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or actions.dtype.kind not in "iu":
            raise IllegalActionError(
                f"actions must be {self.num_envs} integers in 0..{self.max_vertices - 1}, got {actions!r}"
            )
        pending = self._pending.tolist()
        self._check(actions.tolist(), pending)  # before any sub-env moves
        self._started = False  # a draw the backend refuses (see _CoreBatch) leaves the env to reset
        starts = {i: self._next_start(i) for i, restart in enumerate(pending) if restart}
        obs, step_cost, terminated = self._batch.step(actions, pending, starts)
        self._started = True
        self._pending = terminated.copy()
        rewards = -step_cost.astype(np.float64) * self.reward_scale
        truncated = np.zeros(self.num_envs, dtype=bool)
        return obs, rewards, terminated, truncated, self._info(step_cost)

    def render(self):
        if not self._started:
            raise AlphagradError("call reset() before render()")
        V, I, codes, cost = self.max_vertices, self.max_inputs, self._batch.codes(), self._batch.cost
        return tuple(
            _describe(self.graphs[i], codes[i], self._order_of(i), int(cost[i]), V, I) for i in range(self.num_envs)
        )
