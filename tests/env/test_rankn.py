"""The env core with C codes and rank-R dims: today's models padded to rank 3 and extended with an
alias code score every graph exactly as the original (step by step, code matrix by code matrix),
and the env refuses what it cannot represent."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import env, graph
from alphagrad.errors import AlphagradError
from alphagrad.graph import MIN_CODE, Graph
from tests.env.rankn_models import ALIAS, ALIASED, aliased, padded, relabel, use_tables

SLOTS_V, SLOTS_I = 32, 16

#: -O0: each set of tables compiles the rollout anew, and these checks are about values only.
_rollout = jax.jit(env.rollout, compiler_options={"xla_backend_optimization_level": 0})


def _layer(x, w, b):
    """A small dense layer with a loss: matrices, vectors, broadcasts, reductions."""
    h = jnp.tanh(w @ x + b[:, None])
    return jnp.sum(h * h, axis=0), jnp.exp(-x[0])


def _scalar_chain(a, b):
    """A scalar program (RoeFlux-like), whose edges are all dense 1x1."""
    c = jnp.sin(a) * b
    d = jnp.log1p(c * c) + a / b
    return d * c, jnp.sqrt(d * d + 1.0)


#: Traced task functions and their example arguments (numpy: tracing touches no random keys).
_TASKS = (
    (_layer, (np.ones((3, 4)), np.ones((5, 3)), np.ones(5))),
    (_scalar_chain, (np.float32(1.0), np.float32(2.0))),
)


@functools.cache
def _graphs(model: str) -> tuple[Graph, ...]:
    """Random graphs (scalar and tensor) and traced task functions under `model`."""
    gen = env.RandomGraphGenerator(num_inputs=(1, 8), num_vertices=(4, 30), tensor_fraction=0.6, max_dim=5,
                                   extra_outputs=(0, 2), cost_model=model)  # fmt: skip
    traced = [graph.trace(fn, *args, cost_model=model) for fn, args in _TASKS]
    return tuple([gen(seed) for seed in range(5)] + traced)


def _order(g: Graph, seed: int) -> list[int]:
    return [int(k) for k in np.random.default_rng(seed).permutation(g.intermediates)]


def _cuts(order: list[int]) -> list[int]:
    """The steps after which code matrices are compared: the first, halfway, the last."""
    return sorted({1, len(order) // 2, len(order)} - {0})


def _play(g: Graph, order: list[int]) -> tuple[list[int], list[np.ndarray]]:
    """Per-step multiplications of `order` in the env core, and its code matrix at `_cuts`."""
    state = env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
    codes = []
    for k in _cuts(order):
        actions = np.full(SLOTS_V, -1, np.int32)
        actions[:k] = np.asarray(order[:k]) - 1
        final, rewards, _ = _rollout(state, actions)
        codes.append(np.asarray(final.codes))
    return (-np.asarray(rewards)[: len(order)]).astype(np.int64).tolist(), codes


def _engine(g: Graph, order: list[int], model: graph.CostModel | None = None) -> tuple[list[int], list[np.ndarray]]:
    """`_play` by the Python engine: its step costs, and its edges at `_cuts` in the env's layout."""
    eliminator = graph.Eliminator(g, model)
    gi = g.num_inputs
    row = lambda node: SLOTS_V + node - 1 if node <= gi else node - gi - 1  # noqa: E731
    costs, codes = [], []
    for k, vertex in enumerate(order, start=1):
        costs.append(eliminator.eliminate(vertex))
        if k in _cuts(order):
            matrix = np.zeros((SLOTS_V + SLOTS_I, SLOTS_V), np.int8)
            for src, succs in enumerate(eliminator.succs):
                for dst, code in succs.items():
                    matrix[row(src), row(dst)] = code
            codes.append(matrix)
    return costs, codes


@pytest.mark.parametrize("model", graph.cost_models())
def test_a_padded_rank_scores_and_codes_like_rank_two(model, monkeypatch):
    graphs = _graphs(model)
    expected = {g: _engine(g, _order(g, i)) for i, g in enumerate(graphs)}
    builtin = {g: env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I, rank=3) for g in graphs}
    use_tables(monkeypatch, {g: padded(g, 3) for g in graphs})  # built here, not by the env
    for i, g in enumerate(graphs):
        order = _order(g, i)
        state = env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
        assert state.src_shape.shape == (SLOTS_V + SLOTS_I, 3) and state.dst_shape.shape == (SLOTS_V, 3)
        assert np.all(np.asarray(state.src_shape)[: g.num_vertices, 2] == 1)
        assert "#" in state.cost_model and state.cost_model == builtin[g].cost_model  # init_state(rank=3): the same
        assert np.array_equal(state.src_shape, builtin[g].src_shape)
        costs, codes = _play(g, order)
        assert costs == expected[g][0] == graph.elimination_costs(g, order)
        assert all(np.array_equal(a, b) for a, b in zip(codes, expected[g][1], strict=True))


@pytest.mark.parametrize(("model", "rank"), [("exact", 2), ("alphagrad-2024", 3)])
def test_b_alias_code_scores_like_the_code_it_copies(model, rank, monkeypatch):
    graphs = _graphs(model)
    expected = {g: _engine(g, _order(g, i)) for i, g in enumerate(graphs)}
    pairs = [(g, relabel(g)) for g in graphs]
    use_tables(monkeypatch, {alias: aliased(g, rank) for g, alias in pairs})
    new_codes = 0
    for i, (g, alias) in enumerate(pairs):
        order = _order(g, i)
        state = env.init_state(alias, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
        assert state.src_shape.shape[1] == rank
        assert env._core._tables(state.cost_model).num_codes == graph.NUM_CODES + 1
        assert (np.asarray(state.codes) == ALIAS).sum() == sum(e.code == ALIASED for e in g.edges)
        costs, codes = _play(alias, order)
        assert costs == expected[g][0]
        assert _engine(alias, order, aliased(g, rank)[0])[0] == costs  # the Python engine, given the model
        for got, want in zip(codes, expected[g][1], strict=True):
            assert np.array_equal(np.where(got == ALIAS, ALIASED, got), want)
            new_codes += int((got == ALIAS).sum())
    assert new_codes > 0


def test_codes_beyond_int8_and_mismatched_ranks_are_refused(monkeypatch):
    g = _graphs("exact")[0]
    base = graph.cost_model("exact")
    C = 128 - MIN_CODE + 1  # codes -10..127 fit int8; one more does not
    grow = lambda t: np.pad(np.asarray(t), ((0, C - t.shape[0]), (0, C - t.shape[1])) + ((0, 0),) * (t.ndim - 2))  # noqa: E731
    too_many = type(base)(base.name, grow(base.mask), grow(base.mul), grow(base.add), base.unit_pairs)
    src, dst = g.node_shapes()
    use_tables(monkeypatch, {g: (too_many, src, dst)})
    with pytest.raises(AlphagradError, match=r"139 codes \(-10\.\.128\).*int8.*at most 138 codes"):
        env.init_state(g)
    use_tables(monkeypatch, {g: padded(g, 3)})
    with pytest.raises(env.StateSizeError, match="structural rank 3.*state of rank 2.*pass rank >= 3"):
        env.init_state(g, rank=2)
    use_tables(monkeypatch, {g: (padded(g, 3)[0], src, dst)})
    with pytest.raises(AlphagradError, match=r"node dims have shape \(\d+, 2\) but its cost model 'exact' has rank 3"):
        env.init_state(g)


def test_stack_refuses_states_of_different_tables_or_ranks():
    g = _graphs("exact")[0]
    two = env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
    three = env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I, rank=3)
    with pytest.raises(env.StateSizeError, match=r"cannot stack a state of tables 'exact#\w+'.*\(48, 3\).*'exact'"):
        env.stack([two, three])
    other = env.init_state(_graphs("alphagrad-2024")[0], max_vertices=SLOTS_V, max_inputs=SLOTS_I)
    with pytest.raises(env.StateSizeError, match="one set of tables"):
        env.stack([two, other])
    assert env.stack([two, two]).src_shape.shape == (2, SLOTS_V + SLOTS_I, 2)


def test_observation_has_two_r_dims_per_node():
    g = _graphs("exact")[0]
    obs = jax.jit(env.observe)(env.init_state(g, max_vertices=SLOTS_V, max_inputs=SLOTS_I, rank=4))
    shapes = np.asarray(obs["shapes"])
    assert shapes.shape == (SLOTS_V + SLOTS_I, 8)
    src, dst = g.node_shapes()
    vertex = g.num_inputs + 1
    assert shapes[0].tolist() == [*src[vertex], 1, 1, *dst[vertex], 1, 1]


# ----------------------------------------------------------------------------------------------
# The gymnasium envs: spaces from the graphs' codes and rank
# ----------------------------------------------------------------------------------------------


def test_gym_env_observes_an_extended_code(monkeypatch):
    g = next(g for g in _graphs("exact") if any(e.code == ALIASED for e in g.edges))
    alias = relabel(g)
    use_tables(monkeypatch, {alias: aliased(g)})
    single = env.VertexEliminationEnv(alias, max_vertices=SLOTS_V, max_inputs=SLOTS_I)
    space = single.observation_space
    assert space["codes"].high.max() == ALIAS and space["codes"].low.min() == MIN_CODE
    assert space["shapes"].shape == (SLOTS_V + SLOTS_I, 4)  # rank 2: the paper's layout
    obs, _ = single.reset(seed=0)
    order = _order(g, 0)
    costs = []
    for k in order:
        assert space.contains(obs)
        obs, reward, terminated, _, _ = single.step(k - 1)
        costs.append(-reward)
    expected, expected_codes = _engine(g, order)
    assert terminated and costs == expected
    assert np.array_equal(np.where(obs["codes"] == ALIAS, ALIASED, obs["codes"]), expected_codes[-1])


def test_vector_env_pads_a_choice_of_ranks_to_the_largest(monkeypatch):
    g = _graphs("exact")[0]
    plain = dataclasses.replace(g)  # the same graph at rank 2 (a copy: not patched)
    use_tables(monkeypatch, {g: padded(g, 3)})
    envs = env.VertexEliminationVectorEnv(
        2, generator=env.ChoiceGenerator([plain, g]), max_vertices=SLOTS_V, max_inputs=SLOTS_I, backend="jax"
    )
    space = envs.single_observation_space
    assert space["shapes"].shape == (SLOTS_V + SLOTS_I, 6) and space["codes"].high.max() == graph.MAX_CODE
    obs, info = envs.reset(seed=3)
    assert [x is g for x in envs.graphs] == [True, False]  # seed 3 draws one of each
    step_costs = []
    for _ in range(g.num_intermediates):  # both episodes end together: no autoreset
        assert envs.observation_space.contains(obs)
        obs, _, terminated, _, info = envs.step(envs.action_space.sample())
        step_costs.append(info["step_cost"])
    assert terminated.all()
    for i in range(2):
        order = [int(k) for k in info["order"][i] if k > 0]
        assert [int(c[i]) for c in step_costs] == _engine(g, order)[0]


def test_a_generator_beyond_the_papers_codes_or_rank_is_refused_at_reset(monkeypatch):
    g = next(g for g in _graphs("exact") if any(e.code == ALIASED for e in g.edges))
    alias, deep = relabel(g), dataclasses.replace(g)
    use_tables(monkeypatch, {alias: aliased(g), deep: padded(g, 3)})

    class Draw(env.GraphGenerator):
        """Draws one graph (not a ChoiceGenerator: the env cannot know its codes and rank)."""

        max_vertices, max_inputs = SLOTS_V, SLOTS_I

        def __init__(self, drawn):
            self.drawn = drawn

        def __call__(self, seed):
            return self.drawn

    with pytest.raises(env.StateSizeError, match="structure codes beyond 11.*ChoiceGenerator"):
        env.VertexEliminationEnv(generator=Draw(alias)).reset(seed=0)
    with pytest.raises(env.StateSizeError, match="structural rank 3.*state of rank 2"):
        env.VertexEliminationEnv(generator=Draw(deep)).reset(seed=0)


def _heads(x, w):
    """Rank 3 and 4: a projection split into heads, per-head scores, a softmax, merged back."""
    q = jnp.einsum("btd,de->bte", x, w).reshape(2, 3, 2, 2)
    s = jnp.einsum("bthd,bshd->bhts", q, q)
    return jnp.einsum("bhts,bshd->bthd", jnp.exp(s), q).reshape(2, 3, 4).sum(-1)


def test_labelled_graphs_score_like_the_engine():
    # A traced graph with arrays of rank 3 and 4 carries labelled structures (codes 12 on): the
    # env closes its model into tables and prices every step as the Python engine does.
    g = graph.trace(_heads, np.ones((2, 3, 4)), np.ones((4, 4)), cost_model="exact")
    assert g.structures and g.rank == 4 and g.num_vertices <= SLOTS_V
    for seed in range(2):
        order = _order(g, seed)
        assert _play(g, order)[0] == _engine(g, order)[0]
