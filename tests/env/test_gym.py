"""The gymnasium environments: API checks, costs, illegal actions, the vector environment."""

from __future__ import annotations

import warnings

import gymnasium
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from alphagrad import env, graph, orders
from alphagrad.env import IllegalActionError, VertexEliminationEnv, VertexEliminationVectorEnv
from alphagrad.errors import AlphagradError
from tests.conftest import scalar_graph


def small_function(x, W):
    h = jnp.tanh(W @ x)
    return jnp.sum(h * h), jnp.sin(x)


SMALL_ARGS = (jnp.ones(3), jnp.ones((2, 3)))


@pytest.mark.parametrize("task", ["ref:PropaneCombustion", "ref:Perceptron", "RandomTensor-1"])
def test_check_env_passes(task):
    e = gymnasium.make(env.ENV_ID, task=task)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium reports problems as warnings
        check_env(e.unwrapped)


def test_check_env_passes_for_a_traced_function():
    e = gymnasium.make(env.ENV_ID, task=small_function, example_args=SMALL_ARGS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(e.unwrapped)


def play(e, order):
    obs, info = e.reset(seed=0)
    assert obs in e.observation_space and info == {"cost": 0, "step_cost": 0, "order": []}
    rewards = []
    for i, vertex in enumerate(order):
        assert obs["action_mask"][vertex - 1] == 1
        obs, reward, terminated, truncated, info = e.step(vertex - 1)
        rewards.append(reward)
        assert terminated == (i == len(order) - 1) and truncated is False
    return obs, rewards, info


@pytest.mark.parametrize("kind", ["forward", "reverse", "markowitz"])
def test_make_by_task_name_and_episode_cost(kind):
    e = gymnasium.make(env.ENV_ID, task="RoeFlux_1d")
    g = e.unwrapped.graph
    order = getattr(orders, kind)(g)
    obs, rewards, info = play(e, order)
    assert [-r for r in rewards] == graph.elimination_costs(g, order)
    assert info["cost"] == graph.cost(g, order) and info["order"] == order
    assert not obs["action_mask"].any()


def test_reward_scale_and_sources(reference_graphs):
    g = reference_graphs["Perceptron"]
    order = orders.reverse(g)
    for e in (
        VertexEliminationEnv(g, reward_scale=0.01),
        VertexEliminationEnv("ref:Perceptron", reward_scale=0.01, max_vertices=60, max_inputs=12),
    ):
        _, rewards, info = play(e, order)
        assert sum(rewards) == pytest.approx(-0.01 * graph.cost(g, order))
        assert info["cost"] == graph.cost(g, order)
    traced = VertexEliminationEnv(small_function, example_args=SMALL_ARGS)
    tg = graph.trace(small_function, *SMALL_ARGS)
    _, rewards, info = play(traced, orders.forward(tg))
    assert info["cost"] == graph.cost(tg, "forward") == -sum(rewards)


# -- illegal actions -------------------------------------------------------------------------


@pytest.fixture
def perceptron_env():
    """Perceptron (39 vertices, output 39) in a state of 48 slots, after eliminating vertex 1."""
    e = VertexEliminationEnv("ref:Perceptron", max_vertices=48, max_inputs=8)
    e.reset(seed=0)
    e.step(0)
    return e


@pytest.mark.parametrize(
    "action, message",
    [
        (0, r"vertex 1\b.*already eliminated at step 1"),
        (38, r"vertex 39\b.*an output vertex"),
        (45, r"vertex 46, a padding slot.*only 39 vertices"),
        (48, r"action 48 is out of range: actions are 0\.\.47"),
        (-1, r"action -1 is out of range"),
        (np.int64(200), r"action 200 is out of range"),
        (1.5, r"an action is an integer"),
        (True, r"an action is an integer"),
    ],
)
def test_illegal_action_raises_and_changes_nothing(perceptron_env, action, message):
    e = perceptron_env
    before = e.state
    with pytest.raises(IllegalActionError, match=message) as err:
        e.step(action)
    assert isinstance(err.value, ValueError)
    assert e.state is before
    obs, reward, terminated, _, info = e.step(1)  # the game goes on
    assert info["order"] == [1, 2] and not terminated


def test_step_after_the_end_raises(reference_graphs):
    e = VertexEliminationEnv("ref:Perceptron")
    play(e, orders.reverse(reference_graphs["Perceptron"]))
    with pytest.raises(IllegalActionError, match="episode is over"):
        e.step(0)


def test_action_space_samples_legal_actions(perceptron_env):
    e = perceptron_env
    seen = {int(e.action_space.sample()) for _ in range(200)}
    assert seen <= {k - 1 for k in range(2, 39)}
    assert 38 in {int(e.action_space.sample(mask=np.eye(48, dtype=np.int8)[38])) for _ in range(3)}


def test_render(perceptron_env, capsys):
    perceptron_env.render()
    text = capsys.readouterr().out
    assert "ref:Perceptron" in text and "order: [1]" in text and "v39" in text and "output" in text
    e = VertexEliminationEnv("ref:PropaneCombustion", render_mode="ansi")
    e.reset()
    assert "step 0/51" in e.render()


def test_reset_to_another_graph(reference_graphs):
    e = VertexEliminationEnv("ref:Perceptron", max_vertices=64, max_inputs=11)
    g = reference_graphs["PropaneCombustion"]
    _, _, info = play_options(e, g, orders.reverse(g))
    assert info["cost"] == graph.cost(g, "reverse")
    with pytest.raises(env.StateSizeError):
        e.reset(options={"graph": reference_graphs["RoeFlux_1d"]})


def play_options(e, g, order):
    e.reset(options={"graph": g})
    for vertex in order:
        obs, reward, terminated, _, info = e.step(vertex - 1)
    return obs, terminated, info


def test_generator_env_is_reproducible():
    gen = env.RandomGraphGenerator(num_inputs=(2, 5), num_vertices=(10, 30))
    e = VertexEliminationEnv(generator=gen)
    assert e.observation_space["codes"].shape == (35, 30)
    e.reset(seed=7)
    first = e.graph
    e.reset(seed=8)
    e.reset(seed=7)
    assert e.graph.fingerprint == first.fingerprint
    terminated = False
    while not terminated:
        _, _, terminated, _, info = e.step(e.action_space.sample())
    assert info["cost"] == graph.cost(first, info["order"])


def test_bad_construction():
    with pytest.raises(AlphagradError, match="exactly one"):
        VertexEliminationEnv()
    with pytest.raises(AlphagradError, match="smaller than the generator"):
        VertexEliminationEnv(generator=env.RandomGraphGenerator(num_vertices=(5, 50)), max_vertices=20)
    with pytest.raises(AlphagradError, match="no reference graph"):
        VertexEliminationEnv("ref:nope")
    with pytest.raises(AlphagradError, match="render_mode"):
        VertexEliminationEnv("ref:Perceptron", render_mode="rgb_array")


# -- vector environment ----------------------------------------------------------------------


def test_make_vec_autoresets_and_scores(reference_graphs):
    g = reference_graphs["Perceptron"]
    envs = gymnasium.make_vec(env.ENV_ID, num_envs=3, task="ref:Perceptron")
    assert isinstance(envs.unwrapped, VertexEliminationVectorEnv)
    obs, info = envs.reset(seed=0)
    assert obs in envs.observation_space
    shuffled = [int(k) for k in np.random.default_rng(0).permutation(g.intermediates)]
    plays = [orders.forward(g), orders.reverse(g), shuffled]
    returns = np.zeros(3)
    for t in range(len(plays[0])):
        obs, rewards, terminated, truncated, info = envs.step(np.array([p[t] - 1 for p in plays]))
        returns += rewards
    assert terminated.all() and not truncated.any()
    assert [-r for r in returns] == [graph.cost(g, p) for p in plays]
    assert info["cost"].tolist() == [graph.cost(g, p) for p in plays]
    assert [[int(k) for k in row if k > 0] for row in info["order"]] == plays
    # NEXT_STEP autoreset: the next step ignores the actions and restarts every game.
    obs, rewards, terminated, _, info = envs.step(np.array([38, 38, 38]))
    assert (rewards == 0).all() and not terminated.any() and (info["cost"] == 0).all()
    assert (obs["action_mask"].sum(1) == g.num_intermediates).all()
    # A random agent only plays legal moves.
    for _ in range(5):
        envs.step(envs.action_space.sample())


def test_vector_env_illegal_action_names_the_sub_env():
    envs = VertexEliminationVectorEnv(2, "ref:Perceptron")
    envs.reset(seed=0)
    with pytest.raises(IllegalActionError, match=r"sub-environment 1: action 38 is vertex 39.*output"):
        envs.step(np.array([0, 38]))
    with pytest.raises(IllegalActionError, match=r"sub-environment 0: action 99 is out of range"):
        envs.step(np.array([99, 0]))
    envs.step(np.array([0, 0]))
    with pytest.raises(IllegalActionError, match=r"sub-environment 0: .*vertex 1\b.*already eliminated"):
        envs.step(np.array([0, 1]))


def test_vector_env_graph_without_intermediates():
    trivial = scalar_graph(1, 1, [(1, 2)], outputs=[1], name="trivial")
    envs = VertexEliminationVectorEnv(2, trivial, max_vertices=3, max_inputs=1)
    obs, _ = envs.reset(seed=0)
    assert not obs["action_mask"].any()
    _, rewards, terminated, _, _ = envs.step(np.array([0, 2]))  # no legal move: absorbing no-op
    assert terminated.all() and (rewards == 0).all()
    _, _, terminated, _, _ = envs.step(np.array([0, 0]))  # autoreset
    assert not terminated.any()


def test_vector_env_with_a_generator():
    gen = env.RandomGraphGenerator(num_inputs=(1, 4), num_vertices=(4, 12))
    envs = VertexEliminationVectorEnv(4, generator=gen)
    envs.reset(seed=3)
    finished = 0
    for _ in range(60):
        graphs = list(envs.graphs)
        _, rewards, terminated, _, info = envs.step(envs.action_space.sample())
        for i in np.nonzero(terminated)[0]:
            order = [int(k) for k in info["order"][i] if k > 0]
            assert info["cost"][i] == graph.cost(graphs[i], order)
            finished += 1
    assert finished > 4
    assert len(envs.render()) == 4
