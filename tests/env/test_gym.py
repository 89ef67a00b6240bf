"""The gymnasium environments: API checks, costs, illegal actions, the vector environment."""

from __future__ import annotations

import warnings

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from alphagrad import env, graph, orders
from alphagrad.env import IllegalActionError, VertexEliminationEnv, VertexEliminationVectorEnv, _gym
from alphagrad.errors import AlphagradError
from tests.conftest import scalar_graph
from tests.env.conftest import REF_INPUTS, REF_VERTICES, jit_step


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


#: The vector env's backends, every vector test runs on both.
BACKENDS = ["python", "jax"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_make_vec_autoresets_and_scores(reference_graphs, backend):
    g = reference_graphs["Perceptron"]
    envs = gymnasium.make_vec(env.ENV_ID, num_envs=3, task="ref:Perceptron", backend=backend)
    assert isinstance(envs.unwrapped, VertexEliminationVectorEnv) and envs.unwrapped.backend == backend
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


@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_env_illegal_action_names_the_sub_env(backend):
    envs = VertexEliminationVectorEnv(2, "ref:Perceptron", backend=backend)
    envs.reset(seed=0)
    with pytest.raises(IllegalActionError, match=r"sub-environment 1: action 38 is vertex 39.*output"):
        envs.step(np.array([0, 38]))
    with pytest.raises(IllegalActionError, match=r"sub-environment 0: action 99 is out of range"):
        envs.step(np.array([99, 0]))
    envs.step(np.array([0, 0]))
    with pytest.raises(IllegalActionError, match=r"sub-environment 0: .*vertex 1\b.*already eliminated"):
        envs.step(np.array([0, 1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_env_graph_without_intermediates(backend):
    trivial = scalar_graph(1, 1, [(1, 2)], outputs=[1], name="trivial")
    envs = VertexEliminationVectorEnv(2, trivial, max_vertices=3, max_inputs=1, backend=backend)
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


# -- the gymnasium envs (Python engine) equal the jitted core ---------------------------------
#
# The envs step with `graph.Eliminator` and update their observation in place; the reference is
# the jitted core (`env.step`, `env.observe`) played with the same actions. Every observation key
# (value, dtype, shape), reward, termination, info, the `state` property and the error for each
# kind of illegal action must agree, over random legal orders on reference graphs
# (alphagrad-2024), random generated graphs and a traced function under both cost models.

#: The state size of the random graphs (one compilation of the core per cost model).
RANDOM_V, RANDOM_I = 40, 8

jit_observe = jax.jit(env.observe)


def assert_observation(obs, state, space):
    """`obs` is the core's observation of `state`, key by key, in the dtypes and shapes of `space`."""
    core = jax.device_get(jit_observe(state))
    assert set(obs) == set(space.spaces) == set(core)
    for key, value in obs.items():
        assert isinstance(value, np.ndarray) and value.flags.writeable, key
        assert value.dtype == space[key].dtype and value.shape == space[key].shape, key
        np.testing.assert_array_equal(value, core[key], err_msg=key)
    assert obs in space


def illegal_actions(g, state, V):
    """One action of each illegal kind the state has: (action, what the message must name)."""
    host = jax.device_get(state)
    eliminated = [int(k) - 1 for k in host.order[: int(host.step_count)]]
    cases = [(V, "out of range"), (-1, "out of range")]
    if eliminated:
        cases.append((eliminated[0], "already eliminated at step 1"))
    cases.append((g.outputs[0] - 1, "an output vertex"))
    if g.num_vertices < V:
        cases.append((g.num_vertices, "a padding slot"))
    return cases


def play_against_core(e, g, seed, *, check_illegal_at=(0, 1)):
    """Plays a random legal order of `g` in the single env `e` and in the jitted core, comparing
    everything after every step; tries every illegal kind at the steps in `check_illegal_at`."""
    V, I = e.max_vertices, e.max_inputs
    rng = np.random.default_rng(seed)
    obs, info = e.reset(options={"graph": g})
    state = env.init_state(g, max_vertices=V, max_inputs=I)
    assert_observation(obs, state, e.observation_space)
    assert info == {"cost": 0, "step_cost": 0, "order": []}
    terminated, t = bool(env.is_terminal(state)), 0
    while not terminated:
        if t in check_illegal_at:
            for action, named in illegal_actions(g, state, V):
                with pytest.raises(IllegalActionError, match=named):
                    e.step(action)
                if 0 <= action < V:  # the core's illegal action: a no-op flagged `illegal`
                    same, reward, _ = jit_step(state, action)
                    assert bool(same.illegal) and float(reward) == 0.0
                    np.testing.assert_array_equal(same.codes, state.codes)
        action = int(rng.choice(np.flatnonzero(obs["action_mask"])))
        obs, reward, terminated, truncated, info = e.step(action)
        new, core_reward, core_terminated = jit_step(state, action)
        step_cost = int(new.cost) - int(state.cost)
        state, t = new, t + 1
        assert_observation(obs, state, e.observation_space)
        assert reward == -step_cost * e.reward_scale and float(core_reward) == -step_cost
        assert terminated == bool(core_terminated) and truncated is False
        assert info == {"cost": int(state.cost), "step_cost": step_cost, "order": env.order_of(state)}
        for field in ("codes", "eliminable", "order", "step_count", "cost", "illegal"):
            np.testing.assert_array_equal(getattr(e.state, field), getattr(state, field), err_msg=field)
    with pytest.raises(IllegalActionError, match="episode is over"):
        e.step(0)
    assert info["cost"] == graph.cost(g, info["order"])


def test_single_env_equals_the_core_on_reference_graphs(reference_graphs):
    e = VertexEliminationEnv("ref:Perceptron", max_vertices=REF_VERTICES, max_inputs=REF_INPUTS, reward_scale=0.5)
    for seed, name in enumerate(["Perceptron", "RoeFlux_1d", "RobotArm_6DOF", "Encoder", "PropaneCombustion"]):
        play_against_core(e, reference_graphs[name], seed)


@pytest.mark.parametrize("model", graph.cost_models())
def test_single_env_equals_the_core_on_random_graphs(model):
    gen = env.RandomGraphGenerator(num_inputs=(1, RANDOM_I), num_vertices=(3, RANDOM_V), cost_model=model)
    e = VertexEliminationEnv(generator=gen, max_vertices=RANDOM_V, max_inputs=RANDOM_I)
    graphs = [gen(seed) for seed in range(8)] + [graph.trace(small_function, *SMALL_ARGS, cost_model=model)]
    assert {g.cost_model for g in graphs} == {model}
    for seed, g in enumerate(graphs):
        play_against_core(e, g, seed, check_illegal_at=(0, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_vector_env_equals_single_envs(backend):
    """Sub-env i of the vector env (generator draws, NEXT_STEP autoreset) plays exactly like a
    single env of the same graph, on both backends: observations, rewards, terminations, info
    and errors."""
    gen = env.RandomGraphGenerator(num_inputs=(1, 4), num_vertices=(2, 12), cost_model="exact")
    B = 3
    envs = VertexEliminationVectorEnv(B, generator=gen, reward_scale=0.25, backend=backend)
    assert envs.backend == backend
    singles = [VertexEliminationEnv(generator=gen, reward_scale=0.25) for _ in range(B)]
    space = envs.observation_space

    def restart(i):
        return singles[i].reset(options={"graph": envs.graphs[i]})[0]

    obs, info = envs.reset(seed=5)
    firsts = [restart(i) for i in range(B)]
    pending = np.zeros(B, dtype=bool)
    rng = np.random.default_rng(0)
    for t in range(50):
        for key in obs:
            assert obs[key].dtype == space[key].dtype and obs[key].shape == space[key].shape
            np.testing.assert_array_equal(obs[key], np.stack([f[key] for f in firsts]), err_msg=key)
        assert obs in space
        actions = envs.action_space.sample()
        live = [i for i in range(B) if not pending[i] and obs["action_mask"][i].any()]
        if t % 3 == 0 and live:  # an illegal action of one sub-env: the same error as the single env
            i = live[t % len(live)]
            bad = np.array(actions)
            bad[i] = int(rng.choice(np.flatnonzero(obs["action_mask"][i] == 0)))  # an output at least
            with pytest.raises(IllegalActionError) as single_err:
                singles[i].step(int(bad[i]))
            with pytest.raises(IllegalActionError) as vector_err:
                envs.step(bad)
            assert str(vector_err.value) == f"sub-environment {i}: {single_err.value}"
        graphs = list(envs.graphs)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        assert not truncated.any()
        for i in range(B):
            if pending[i]:  # autoreset: a new graph, reward 0, not terminated
                firsts[i] = restart(i)
                assert rewards[i] == 0 and not terminated[i] and info["cost"][i] == 0
                continue
            assert graphs[i] is envs.graphs[i]
            if not singles[i]._legal_mask().any():  # no intermediates: the absorbing no-op
                assert terminated[i] and rewards[i] == 0
                continue
            first, reward, done, _, single_info = singles[i].step(int(actions[i]))
            firsts[i] = first
            assert (rewards[i], terminated[i]) == (reward, done)
            assert (info["cost"][i], info["step_cost"][i]) == (single_info["cost"], single_info["step_cost"])
            assert [int(k) for k in info["order"][i] if k > 0] == single_info["order"]
        pending = terminated.copy()


# -- the vector env's two backends are one game ------------------------------------------------


def assert_same(a, b, what):
    """Equal values of the same types, dtypes and shapes, recursively through dicts and tuples."""
    assert type(a) is type(b), what
    if isinstance(a, dict):
        assert list(a) == list(b), what
        for key in a:
            assert_same(a[key], b[key], f"{what}[{key!r}]")
    elif isinstance(a, tuple):
        assert len(a) == len(b), what
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{what}[{k}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        assert a == b, what


def test_backends_agree_step_by_step():
    """The "python" and "jax" backends, fed the same random action sequences, return the same
    observations (every key, dtype, shape), rewards, terminations, truncations and info (int64
    cost and step_cost) at every step, draw the same generator graphs at every autoreset, raise
    the same errors before any sub-env moves, sample the same legal actions and render the same
    text. The generator's one-vertex graphs have no intermediate vertex (terminated at once)."""
    gen = env.RandomGraphGenerator(num_inputs=(1, 4), num_vertices=(1, 10))
    B = 5
    py, jx = (VertexEliminationVectorEnv(B, generator=gen, reward_scale=0.5, backend=b) for b in BACKENDS)
    assert (py.backend, jx.backend) == ("python", "jax")
    for e in (py, jx):
        e.action_space.seed(3)
    assert_same(py.reset(seed=11), jx.reset(seed=11), "reset")
    rng = np.random.default_rng(0)
    restarts = no_intermediates = 0
    for t in range(80):
        actions = py.action_space.sample()
        np.testing.assert_array_equal(jx.action_space.sample(), actions)
        if t % 4 == 1:  # bad actions: the same error from both backends, and nothing moves
            cases = [actions[:-1], actions + 0.5]
            mask = py._legal_mask()
            live = [i for i in range(B) if not py._pending[i] and mask[i].any()]
            if live:  # (a sub-env pending autoreset or without intermediates ignores its action)
                i = live[t % len(live)]
                for a in (-1, py.max_vertices, int(rng.choice(np.flatnonzero(~mask[i])))):
                    bad = np.array(actions)
                    bad[i] = a
                    cases.append(bad)
            for bad in cases:
                errors = []
                for e in (py, jx):
                    with pytest.raises(IllegalActionError) as err:
                        e.step(bad)
                    errors.append(str(err.value))
                assert errors[0] == errors[1]
        before = [g.fingerprint for g in py.graphs]
        out = py.step(actions)
        assert_same(out, jx.step(actions), f"step {t}")
        assert [g.fingerprint for g in py.graphs] == [g.fingerprint for g in jx.graphs]
        restarts += sum(a != b for a, b in zip(before, (g.fingerprint for g in py.graphs)))
        no_intermediates += sum(g.num_intermediates == 0 for g in py.graphs)
        assert out[4]["cost"].dtype == out[4]["step_cost"].dtype == np.int64
        if t % 10 == 0:
            assert py.render() == jx.render()
    assert restarts > B and no_intermediates > 0


def test_backend_argument():
    tiny = scalar_graph(1, 2, [(1, 2), (2, 3)], outputs=[2], name="tiny")
    with pytest.raises(AlphagradError, match=r"backend must be one of 'auto', 'python', 'jax', got 'numpy'"):
        VertexEliminationVectorEnv(2, tiny, backend="numpy")
    threshold = _gym.AUTO_JAX_MIN_ENVS
    assert VertexEliminationVectorEnv(threshold - 1, tiny).backend == "python"
    assert VertexEliminationVectorEnv(threshold, tiny).backend == "jax"
    assert VertexEliminationVectorEnv(threshold, tiny, backend="python").backend == "python"
    assert VertexEliminationVectorEnv(1, tiny, backend="jax").backend == "jax"
    # A batch of the jitted core holds one cost model: a generator of several is Python's.
    exact = graph.trace(small_function, *SMALL_ARGS, cost_model="exact")
    mixed = env.ChoiceGenerator([graph.trace(small_function, *SMALL_ARGS), exact])
    assert VertexEliminationVectorEnv(threshold, generator=mixed).backend == "python"
    with pytest.raises(AlphagradError, match=r"one cost model per batch.*'alphagrad-2024', 'exact'.*backend='python'"):
        VertexEliminationVectorEnv(2, generator=mixed, backend="jax")

    class Switching(env.GraphGenerator):
        """Draws the first graph `first` times, then the second (not a ChoiceGenerator: the env
        cannot know in advance)."""

        max_vertices, max_inputs = mixed.max_vertices, mixed.max_inputs

        def __init__(self, first):
            self.first = first

        def __call__(self, seed):
            self.first -= 1
            return mixed.graphs[self.first < 0]

    with pytest.raises(AlphagradError, match=r"one cost model per batch.*use backend='python'"):
        VertexEliminationVectorEnv(2, generator=Switching(1), backend="jax").reset(seed=0)
    envs = VertexEliminationVectorEnv(2, generator=Switching(2), backend="jax")
    envs.reset(seed=0)
    with pytest.raises(AlphagradError, match=r"drew graph .* scored with 'exact'; use backend='python'"):
        for _ in range(mixed.graphs[0].num_intermediates + 1):  # the first autoreset draws an exact graph
            envs.step(envs.action_space.sample())
    with pytest.raises(AlphagradError, match=r"call reset\(\) before step\(\)"):
        envs.step(envs.action_space.sample())
