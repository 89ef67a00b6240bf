"""The AlphaZero agent: network, value transform, replay buffer, training runs, resume, CLI.

One tiny configuration is shared by every training run here, so the iteration is compiled once
(`build_iteration` caches it); the sharding check runs in a subprocess with two forced CPU
devices (tests/agents/test_alphazero_sharding.py).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alphagrad import env, graph, orders
from alphagrad.agents import alphazero
from alphagrad.agents.alphazero._core import Tasks, edge_lists, loss_fn
from alphagrad.agents.alphazero._demos import fallback_order
from alphagrad.agents.alphazero._network import edge_capacity
from alphagrad.agents.alphazero._record import BestOrder
from alphagrad.agents.alphazero._replay import Transitions, replay_add, replay_init, replay_sample
from alphagrad.agents.alphazero._rundir import RunDirectory
from alphagrad.agents.alphazero._search import make_network
from alphagrad.agents.alphazero._tasks import make_tasks
from alphagrad.errors import AlphagradError, OrderFileError

TASK = "PropaneCombustion"
#: An order of PropaneCombustion that costs 88 (a plain search's), cheaper than reverse mode's 90.
SEARCHED = [50, 48, 47, 42, 39, 34, 33, 28, 27, 20, 15, 14, 11, 5, 1, 61, 60, 59, 58, 57, 56, 55, 54, 53, 51, 49,
            45, 44, 43, 40, 38, 36, 35, 32, 30, 29, 26, 24, 23, 21, 18, 17, 16, 12, 10, 9, 8, 7, 6, 3, 2]  # fmt: skip

#: Small enough for 2 CPU cores; shared by every run so that one compilation serves them all.
TINY = alphazero.AlphaZeroConfig(
    embed_dim=16,
    edge_dim=8,
    num_layers=1,
    num_heads=2,
    num_simulations=4,
    max_num_considered_actions=4,
    num_games=4,
    replay_size=1024,
    batch_size=16,
    updates_per_iteration=2,
    min_replay=16,
    warmup_iterations=1,
    schedule_iterations=10,
    iterations=3,
    checkpoint_every=2,
    seed=3,
    demo_seconds=0.0,  # classic orders only: deterministic (a search demonstration is time-limited)
    demo_pretrain_steps=4,
    num_policy_games=4,
    # XLA's backend at level 1, not 0: the first run compiles about a quarter longer (40 s against
    # 32 s), but an iteration then runs in 0.5 s, not 8 s, and this module's runs add up to about
    # 16 iterations (level 0 skips LLVM's passes: the search's loops ran unoptimised).
    xla_opt_level=1,
)
#: jit for the small functions of these tests: compiling dominates, so skip XLA's optimisations.
fast_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

TINY_SET = [f"{k}={v}" for k, v in TINY.to_dict().items() if k not in ("iterations", "minutes", "seed") and v is not None]


@pytest.fixture(scope="module")
def propane(reference_graphs) -> graph.Graph:
    return reference_graphs[TASK]


@pytest.fixture(scope="module")
def first_run(propane, tmp_path_factory):
    """A 3-iteration run with files (checkpoints at iterations 2 and 3)."""
    out = tmp_path_factory.mktemp("run")
    return alphazero.train({TASK: propane}, TINY, out_dir=out), out


# ---- value transform --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlog", "identity"])
def test_value_transform_round_trips(kind):
    x = jnp.asarray([-1e4, -300.0, -2.5, -1.0, -1e-3, 0.0, 1e-3, 0.7, 1.0, 42.0, 1e4], jnp.float32)
    back = alphazero.inverse_value_transform(alphazero.value_transform(x, kind), kind)
    np.testing.assert_allclose(back, x, rtol=2e-6, atol=1e-7)
    y = jnp.linspace(-8.0, 8.0, 33)
    np.testing.assert_allclose(alphazero.value_transform(alphazero.inverse_value_transform(y, kind), kind), y, rtol=2e-6, atol=2e-6)


def test_symlog_inverse_is_not_the_papers_wrong_one():
    # The reference decoded symlog with sign(y) exp(|y| - 1); the right inverse of -1 is -1.
    assert float(alphazero.inverse_value_transform(alphazero.value_transform(jnp.float32(-1.0), "symlog"), "symlog")) == pytest.approx(-1.0)


# ---- network ----------------------------------------------------------------------------------


def _permute(state: env.State, perm: np.ndarray) -> env.State:
    """Renumbers the vertex slots: new slot i holds old slot perm[i]."""
    V = state.num_vertex_slots
    rows = np.concatenate([perm, np.arange(V, state.codes.shape[0])])
    return dataclasses.replace(
        state,
        codes=state.codes[rows][:, perm],
        src_shape=state.src_shape[rows],
        dst_shape=state.dst_shape[perm],
        eliminable=state.eliminable[perm],
        is_output=state.is_output[perm],
        vertex_mask=state.vertex_mask[perm],
    )


@fast_jit
def _trajectory(state: env.State, actions: jax.Array) -> env.State:
    """The states before each of `actions` (int32[T]), stacked: `State` [T]."""
    return jax.lax.scan(lambda s, a: (env.step(s, a)[0], s), state, actions)[1]


def test_network_is_permutation_equivariant_and_size_independent(propane):
    net = make_network(TINY)
    apply = fast_jit(net.apply)
    steps = _trajectory(env.init_state(propane), jnp.asarray([10, 20, 0, 0, 0, 0, 0, 0], jnp.int32))
    state = jax.tree.map(lambda x: x[2], steps)  # two vertices eliminated, so masks matter
    params = fast_jit(net.init)(jax.random.PRNGKey(0), state, jnp.float32(0.0))
    logits, value = apply(params, state, jnp.log(90.0))

    perm = np.random.default_rng(0).permutation(state.num_vertex_slots)
    p_logits, p_value = apply(params, _permute(state, perm), jnp.log(90.0))
    np.testing.assert_allclose(p_logits, logits[perm], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p_value, value, rtol=1e-4, atol=1e-4)

    padded = env.init_state(propane, max_vertices=propane.num_vertices + 9, max_inputs=propane.num_inputs + 3)
    padded = dataclasses.replace(
        padded,
        codes=padded.codes.at[: propane.num_vertices, : propane.num_vertices].set(state.codes[: propane.num_vertices])
        .at[padded.num_vertex_slots : padded.num_vertex_slots + propane.num_inputs, : propane.num_vertices]
        .set(state.codes[propane.num_vertices :]),
        eliminable=padded.eliminable.at[: propane.num_vertices].set(state.eliminable),
    )
    q_logits, q_value = apply(params, padded, jnp.log(90.0))
    np.testing.assert_allclose(q_logits[: propane.num_vertices], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(q_value, value, rtol=1e-4, atol=1e-4)


def test_network_overfits_a_fixed_batch(propane):
    """Targets that depend on the structure only (vertices with the same surroundings are
    interchangeable to an equivariant network): a softmax of minus the Markowitz degree over the
    legal vertices, and a value per state."""
    config = dataclasses.replace(TINY, embed_dim=32, edge_dim=16, num_heads=4, num_layers=2)
    net = make_network(config)
    tasks, _ = make_tasks([propane])
    rng = np.random.default_rng(0)
    actions = jnp.asarray([a - 1 for a in rng.permutation(propane.intermediates)[:8]], jnp.int32)
    stacked = _trajectory(env.init_state(propane), actions)  # 8 states along one random game
    codes = np.asarray(stacked.codes) != 0
    V = propane.num_vertices
    degree = codes.sum(1)[:, :V] * codes[:, :V, :].sum(2)  # in-degree * out-degree, [8, V]
    legal = np.asarray(stacked.eliminable)
    logits = np.where(legal, -0.5 * degree, -np.inf)
    policy = np.exp(logits - logits.max(1, keepdims=True))
    policy /= policy.sum(1, keepdims=True)
    edges, edge_codes = edge_lists(stacked, edge_capacity(*stacked.codes.shape[1:], config.edges_per_node))
    batch = Transitions(
        edges=edges,
        edge_codes=edge_codes,
        eliminable=stacked.eliminable,
        task=jnp.zeros(8, jnp.int32),
        policy=jnp.asarray(policy, jnp.float32),
        value=jnp.asarray(-rng.uniform(0.1, 1.5, 8), jnp.float32),
    )
    params = fast_jit(net.init)(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[0], stacked), jnp.float32(0.0))
    optimizer = optax.adam(5e-3)

    @fast_jit
    def fit(params, batch, tasks):  # the batch an argument: as a constant, XLA spent seconds folding it
        loss = lambda p: loss_fn(p, net, batch, tasks, value_kind="symlog", value_weight=1.0)[0]  # noqa: E731

        def one(carry, _):
            params, opt_state = carry
            grads = jax.grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), None

        # 50 steps: the loss falls about 60-fold (100 steps: 90-fold); a tenth is asked.
        (fitted, _), _ = jax.lax.scan(one, (params, optimizer.init(params)), None, length=50)
        return loss(params), loss(fitted)  # the first loss too: eager, the network runs op by op

    first, last = fit(params, batch, tasks)
    assert float(last) < float(first) / 10


# ---- replay buffer ----------------------------------------------------------------------------


def _items(values) -> Transitions:
    n = len(values)
    return Transitions(
        edges=jnp.zeros((n, 3), jnp.int32),
        edge_codes=jnp.zeros((n, 3), jnp.int8),
        eliminable=jnp.ones((n, 2), bool),
        task=jnp.zeros(n, jnp.int32),
        policy=jnp.full((n, 2), 0.5),
        value=jnp.asarray(values, jnp.float32),
    )


def test_replay_buffer_packs_valid_items_and_keeps_the_most_recent():
    buffer = replay_init(8, 3, 2)
    buffer = replay_add(buffer, _items([1, 2, 3, 4, 5]), jnp.asarray([True, False, True, True, False]))
    assert int(buffer.size) == 3 and int(buffer.position) == 3
    np.testing.assert_array_equal(buffer.data.value[:3], [1, 3, 4])
    buffer = replay_add(buffer, _items(list(range(10, 20))), jnp.ones(10, bool))
    assert int(buffer.size) == 8 and int(buffer.added) == 13
    assert sorted(np.asarray(buffer.data.value).tolist()) == list(range(12, 20))  # the last 8 of 13
    sample = replay_sample(buffer, jax.random.PRNGKey(0), 64)
    assert set(np.asarray(sample.value).tolist()) <= set(range(12, 20))


# ---- configuration ----------------------------------------------------------------------------


def test_config_overrides_and_toml(tmp_path):
    config = alphazero.AlphaZeroConfig().with_overrides(["num_simulations=32", "learning_rate=1e-3", "minutes=none"])
    assert config.num_simulations == 32 and config.minutes is None
    path = tmp_path / "az.toml"
    path.write_text('[alphazero]\nnum_games = 16\nvalue_transform = "identity"\nweight_decay = 0\n')
    loaded = alphazero.AlphaZeroConfig.from_toml(str(path))
    assert loaded.num_games == 16 and loaded.value_transform == "identity" and loaded.weight_decay == 0.0
    with pytest.raises(alphazero.ConfigError, match="unknown config key 'num_sims'"):
        config.with_overrides(["num_sims=3"])
    with pytest.raises(alphazero.ConfigError, match="num_games must be int"):
        config.replace(num_games="many")


# ---- training runs ----------------------------------------------------------------------------


def test_end_to_end_run_writes_a_valid_order_file(first_run, propane):
    result, out = first_run
    assert result.iterations == 3 and len(result.history) == 3
    record = orders.load(out / "best_order.json", graph=propane)
    assert record.multiplications == graph.cost(propane, list(record.order)) == result.best_cost
    assert list(record.order) == result.best_order and record.method == "alphazero"
    assert record.baselines == {"forward": 151, "reverse": 90, "markowitz": 111}
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    assert int(rows[-1][f"best:{TASK}"]) == result.best_cost
    assert (out / "training_curve.png").stat().st_size > 1000
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "3"]
    assert any(row["loss"] > 0 for row in result.history)  # gradient steps were taken


def test_same_seed_gives_the_same_run(first_run, propane):
    result, _ = first_run
    again = alphazero.train({TASK: propane}, TINY)
    assert again.best_order == result.best_order and again.best_cost == result.best_cost
    assert [r["loss"] for r in again.history] == [r["loss"] for r in result.history]
    assert [r[f"mean:{TASK}"] for r in again.history] == [r[f"mean:{TASK}"] for r in result.history]


def test_resume_after_a_killed_run_keeps_the_best_order(propane, tmp_path):
    class Killed(Exception):
        pass

    def kill_at_3(row):
        if row["iteration"] == 3:  # after iteration 3's order file and metrics, before its checkpoint
            raise Killed

    with pytest.raises(Killed):
        alphazero.train({TASK: propane}, TINY, out_dir=tmp_path, callback=kill_at_3)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    # Pretend the killed iteration had found reverse mode's 90, better than this tiny agent finds.
    orders.save(tmp_path / "best_order.json", orders.reverse(propane), graph=propane, method="alphazero", task=TASK)

    resumed = alphazero.train({TASK: propane}, dataclasses.replace(TINY, iterations=4), out_dir=tmp_path, resume=True)
    assert resumed.iterations == 4
    assert [r["iteration"] for r in resumed.history] == [1, 2, 3, 4]
    assert resumed.best_cost == 90
    assert orders.load(tmp_path / "best_order.json", graph=propane).multiplications == 90
    with open(tmp_path / "metrics.csv") as fh:
        assert [int(r["iteration"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]

    with pytest.raises(alphazero.ConfigError, match="num_simulations"):
        alphazero.train({TASK: propane}, dataclasses.replace(TINY, num_simulations=8), out_dir=tmp_path, resume=True)


def test_solve_orders_an_unseen_graph(first_run, reference_graphs):
    result, out = first_run
    heart = reference_graphs["HumanHeartDipole"]
    solved = alphazero.solve(heart, out, num_games=2, num_simulations=2)
    assert solved.cost == graph.cost(heart, solved.order) == min(solved.costs)
    assert sorted(solved.order) == heart.intermediates


def test_cli_train_resume_and_eval(first_run, tmp_path, capsys):
    from alphagrad import cli

    out = tmp_path / "cli"
    args = ["train", f"ref:{TASK}", "--iterations", "1", "--seed", "3", "--out", str(out), "--set", *TINY_SET]
    assert cli.main(args) == 0
    assert cli.main(args[:3] + ["2"] + args[4:] + ["--resume"]) == 0
    with open(out / "metrics.csv") as fh:
        assert [int(r["iteration"]) for r in csv.DictReader(fh)] == [1, 2]
    capsys.readouterr()
    assert cli.main(["eval", str(out / "best_order.json")]) == 0
    text = capsys.readouterr().out
    assert str(json.loads((out / "best_order.json").read_text())["multiplications"]) in text

    # An order for a JAX-function task is also checked with the interpreter.
    assert cli.main(["baselines", TASK, "--out", str(tmp_path / "bl")]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "bl" / "markowitz.json")]) == 0
    assert "jax.jacfwd" in capsys.readouterr().out


# ---- demonstrations and policy games ----------------------------------------------------------


def test_demo_episodes_replay_the_demonstrated_actions(propane):
    """Each demonstrated move is one example whose policy target is one-hot on the demo's action
    and whose value is the true normalised return-to-go of the rest of the order."""
    from alphagrad.agents.alphazero._core import demo_episodes

    tasks, (base,) = make_tasks([propane])
    order = orders.markowitz(propane)
    actions = jnp.asarray([[v - 1 for v in order]], jnp.int32)
    final, items, valid = fast_jit(demo_episodes, static_argnums=3)(tasks, jnp.zeros(1, jnp.int32), actions, 0.0)
    assert int(final.cost[0]) == graph.cost(propane, order) == base["markowitz"]
    assert bool(valid.all()) and valid.shape == (len(order),)
    np.testing.assert_array_equal(np.asarray(items.policy).argmax(-1), np.asarray(order) - 1)
    np.testing.assert_array_equal(np.asarray(items.policy).max(-1), 1.0)
    scale = float(tasks.scale[0])
    _, rewards, _ = fast_jit(env.rollout)(env.init_state(propane), actions[0])
    expected = np.cumsum(np.asarray(rewards)[::-1])[::-1] / scale  # -(cost of the moves from t on)
    assert expected[0] == pytest.approx(-base["markowitz"] / scale)
    np.testing.assert_allclose(items.value, expected, rtol=1e-5)
    assert bool(np.asarray(items.eliminable)[np.arange(len(order)), np.asarray(order) - 1].all())


def test_demonstrations_fill_their_buffer_and_training_batches(propane, monkeypatch):
    """Every demonstrated move lands in the demo buffer, and minibatches draw their first
    demo_fraction slots from it (all slots while the replay buffer is below min_replay). PropaneCombustion
    and the tiny configuration: the iteration compiled for the end-to-end run serves this one too."""
    import alphagrad.agents.alphazero._train as train_mod
    from alphagrad.agents.alphazero import _demos
    from alphagrad.agents.alphazero._core import sample_batch

    g = propane
    seen = {}

    def fill(buffer, tasks, demos, smoothing, level=None):
        filled = _demos.fill_demos(buffer, tasks, demos, smoothing, level)
        seen.setdefault("demos", jax.device_get(filled))  # a host copy: the run donates its state
        seen["last"] = list(demos)
        return filled

    monkeypatch.setattr(train_mod, "fill_demos", fill)
    result = alphazero.train({"P": g}, dataclasses.replace(TINY, iterations=2))
    demos = seen["demos"]
    shown = result.demonstrations["P"]
    # reverse (90); Markowitz (111) and forward (151) cost more than demo_max_ratio (1.2) times it
    assert [d["source"] for d in shown] == ["reverse"]
    assert int(demos.size) == sum(len(d["order"]) for d in shown)
    assert result.demo_costs["P"] == min(d["cost"] for d in shown) == graph.cost(g, "reverse") == 90
    assert result.best_sources["P"] in ("search", "greedy", "sampled")
    assert result.best_cost == graph.cost(g, result.best_order)
    assert [r["demo:P"] for r in result.history] == [90, 90]
    # Self-imitation: the agent's own best order joins the demonstrations (and is not one).
    agent = [d for d in seen["last"] if d.source == "agent"]
    assert [list(d.order) for d in agent] == [result.best_order] and agent[0].cost == result.best_cost

    sample = fast_jit(sample_batch, static_argnums=(3, 4, 5))
    demo_values = set(np.asarray(demos.data.value[: int(demos.size)]).round(5).tolist())
    empty = replay_init(64, demos.data.edges.shape[1], demos.data.eliminable.shape[1])
    batch = sample(empty, demos, jax.random.PRNGKey(0), 8, 2, 1)
    assert set(np.asarray(batch.value).round(5).tolist()) <= demo_values
    full = replay_add(empty, _items_like(demos, 64, -7.0), jnp.ones(64, bool))
    values = np.asarray(sample(full, demos, jax.random.PRNGKey(1), 8, 2, 1).value)
    assert set(values[:2].round(5).tolist()) <= demo_values and (values[2:] == -7.0).all()


def _items_like(buffer, n: int, value: float) -> Transitions:
    E, V = buffer.data.edges.shape[1], buffer.data.eliminable.shape[1]
    return Transitions(
        edges=jnp.zeros((n, E), jnp.int32),
        edge_codes=jnp.zeros((n, E), jnp.int8),
        eliminable=jnp.ones((n, V), bool),
        task=jnp.zeros(n, jnp.int32),
        policy=jnp.full((n, V), 1.0 / V),
        value=jnp.full((n,), value, jnp.float32),
    )


def test_best_order_never_comes_from_a_demonstration(propane, tmp_path, monkeypatch):
    """A demonstration recorded with an impossible cost (1) is reported as the best
    demonstration, but the run's best order and order file hold a game's real order."""
    import alphagrad.agents.alphazero._train as train_mod
    from alphagrad.agents.alphazero import _demos

    rev = tuple(orders.reverse(propane))
    monkeypatch.setattr(train_mod, "demo_orders", lambda graphs, cfg: [_demos.Demonstration(0, "test", rev, 1)])
    real = lambda buffer, tasks, demos, s, level=None: _demos.fill_demos(  # noqa: E731
        buffer, tasks, [dataclasses.replace(d, cost=90) if d.source == "test" else d for d in demos], s, level
    )
    monkeypatch.setattr(train_mod, "fill_demos", real)
    result = alphazero.train({TASK: propane}, dataclasses.replace(TINY, iterations=1), out_dir=tmp_path)
    assert result.demo_costs[TASK] == 1
    assert result.best_cost >= 88 and result.best_cost == graph.cost(propane, result.best_order)
    record = orders.load(tmp_path / "best_order.json", graph=propane)
    assert record.multiplications == result.best_cost and record.extra["found_by"] == result.best_sources[TASK]
    assert json.loads((tmp_path / "demonstrations.json").read_text())[TASK][0]["cost"] == 1


def test_pretraining_runs_in_chunks_and_stops_at_its_share_of_the_time(propane, monkeypatch):
    """demo_pretrain_steps run as equal chunks (8 steps at chunk size <= 5: two calls of 4, not 5
    and 3); a time-limited run stops after the chunk that uses up its share of the budget. Chunks of
    4 steps are the tiny configuration's own pre-training program (4 steps in one chunk), compiled
    for the end-to-end run: only the chunking is new here."""
    import alphagrad.agents.alphazero._train as train_mod
    from alphagrad.agents.alphazero._core import build_pretrain

    calls = []

    def counting(config, mesh, num_tasks, length, steps=None):
        fn = build_pretrain(config, mesh, num_tasks, length, steps=steps)

        def run(ts, tasks, progress):
            calls.append(steps)
            return fn(ts, tasks, progress)

        return run

    monkeypatch.setattr(train_mod, "build_pretrain", counting)
    monkeypatch.setattr(train_mod, "PRETRAIN_CHUNK", 5)
    assert TINY.demo_pretrain_steps == 4  # what the end-to-end run compiled
    eight = dataclasses.replace(TINY, demo_pretrain_steps=8)
    alphazero.train({TASK: propane}, dataclasses.replace(eight, iterations=1))
    assert calls == [4, 4]
    calls.clear()
    alphazero.train({TASK: propane}, dataclasses.replace(eight, iterations=None, minutes=1e-6))
    assert calls == [4]


def test_greedy_policy_game_follows_the_argmax_of_the_prior(propane):
    """The greedy game plays the argmax of the masked prior at every move (checked against a
    step-by-step replay), and sampled games play legal complete orders."""
    from alphagrad.agents.alphazero._core import play_policy
    from alphagrad.agents.alphazero._search import evaluate

    net = make_network(TINY)
    tasks, _ = make_tasks([propane])
    params = fast_jit(net.init)(jax.random.PRNGKey(5), jax.tree.map(lambda x: x[0], tasks.initial), jnp.float32(0.0))
    play = fast_jit(
        functools.partial(play_policy, net, temperature=1.0, transform="symlog", length=propane.num_intermediates)
    )
    final = play(params, tasks, jnp.zeros(3, jnp.int32), jnp.asarray([True, False, False]), jax.random.PRNGKey(0))
    for b in range(3):
        order = [int(v) for v in final.order[b][: propane.num_intermediates]]
        assert sorted(order) == propane.intermediates
        assert int(final.cost[b]) == graph.cost(propane, order)
    greedy = [int(v) for v in final.order[0][: propane.num_intermediates]]

    ev = fast_jit(lambda p, s, sc: evaluate(net, p, s, sc, "symlog")[0])
    state = jax.tree.map(lambda x: x[:1], tasks.initial)
    step = fast_jit(jax.vmap(env.step))
    for v in greedy:
        logits = ev(params, state, tasks.scale[:1])
        assert int(jnp.argmax(logits[0])) == v - 1
        state = step(state, jnp.asarray([v - 1], jnp.int32))[0]


def test_learning_rate_warms_up_and_decays_with_progress():
    from alphagrad.agents.alphazero._core import learning_rate

    config = alphazero.AlphaZeroConfig(learning_rate=1e-3, warmup_iterations=2, updates_per_iteration=5,
                                       end_lr_factor=0.1, iterations=None, minutes=10.0)  # fmt: skip
    assert float(learning_rate(config, 0, 0.0)) == pytest.approx(1e-4)
    assert float(learning_rate(config, 9, 0.0)) == pytest.approx(1e-3)
    assert float(learning_rate(config, 100, 0.5)) == pytest.approx(0.55e-3)
    assert float(learning_rate(config, 100, 1.0)) == pytest.approx(1e-4)
    # A time-limited run decays by the clock; an iteration-limited one by its iterations.
    assert config.progress(3, 300.0) == pytest.approx(0.5)
    assert alphazero.AlphaZeroConfig(iterations=40).progress(10, 1e6) == pytest.approx(0.25)


# ---- issue 14, items 3 and 9: a time-limited run always ends with an order file; a resumed run
# re-scores its files up front (in this module so that they reuse its compilations) ---------------

def test_fallback_order_is_the_cheapest_demonstration_or_classic_order_labelled(propane):
    assert fallback_order(propane, []) == BestOrder(tuple(orders.reverse(propane)), 90, "classic: reverse")
    # A demonstration's recorded cost is not trusted: it is re-scored (a tie goes to the classic order).
    lying = {"source": "search:best", "cost": 1, "order": orders.forward(propane)}
    assert fallback_order(propane, [lying]).source == "classic: reverse"
    assert graph.cost(propane, SEARCHED) == 88
    searched = fallback_order(propane, [{"source": "reverse", "cost": 90, "order": orders.reverse(propane)},
                                        {"source": "search:best", "cost": 88, "order": SEARCHED}])  # fmt: skip
    assert (list(searched.order), searched.cost, searched.source) == (SEARCHED, 88, "demonstration: search:best")


def test_budget_used_up_before_the_first_iteration_ends_with_a_labelled_fallback(propane, tmp_path):
    """A budget that the demonstrations and pre-training use up: no iteration, but an order file
    (reverse mode, labelled "classic: reverse"), a checkpoint of the pre-trained network, and a
    result that says so. Resumed, the first game of the agent replaces the fallback."""
    config = dataclasses.replace(TINY, iterations=None, minutes=1e-6)
    result = alphazero.train({TASK: propane}, config, out_dir=tmp_path)
    assert result.iterations == 0 and result.best_cost is None and result.best_order == []
    path = str(tmp_path / "best_order.json")
    assert result.order_files == {TASK: path}
    assert result.fallbacks == {TASK: {"order": orders.reverse(propane), "cost": 90, "found_by": "classic: reverse"}}
    written = orders.load(path, graph=propane)
    assert written.multiplications == graph.cost(propane, list(written.order)) == 90
    assert written.extra["found_by"] == "classic: reverse" and written.method == "alphazero"
    assert os.listdir(tmp_path / "checkpoints") == ["0"]

    resumed = alphazero.train({TASK: propane}, dataclasses.replace(TINY, iterations=1), out_dir=tmp_path, resume=True)
    assert resumed.iterations == 1 and resumed.fallbacks == {}
    assert resumed.best_sources[TASK] in ("search", "greedy", "sampled")  # the fallback is not the agent's
    written = orders.load(path, graph=propane)
    assert written.extra["found_by"] == resumed.best_sources[TASK]
    assert written.multiplications == resumed.best_cost == graph.cost(propane, resumed.best_order)


def test_readme_command_with_a_short_budget_ends_with_an_order_file(tmp_path, capsys):
    """`alphagrad train ref:PropaneCombustion --minutes M --out DIR` (README), with a budget short
    enough that either no iteration or a few run: exit 0, an order file, a table naming it and
    saying who found the order."""
    from alphagrad import cli

    out = tmp_path / "propane"
    assert cli.main(["train", f"ref:{TASK}", "--minutes", "0.02", "--out", str(out), "--set", *TINY_SET]) == 0
    text = capsys.readouterr().out
    written = orders.load(out / "best_order.json")
    found_by = written.extra["found_by"]
    assert found_by in ("search", "greedy", "sampled", "classic: reverse"), found_by
    assert str(out / "best_order.json") in text and "AlphaZero after" in text
    if found_by == "classic: reverse":
        assert "no game finished; file: classic: reverse" in text and "ran out before the first iteration" in text


def test_table_never_names_a_missing_file(propane, tmp_path, capsys):
    """Without a run directory's order file the table's file column says "–"."""
    import alphagrad.cli._train as cli_train

    result = alphazero.train({TASK: propane}, dataclasses.replace(TINY, iterations=None, minutes=1e-6))
    assert result.order_files == {} and result.fallbacks[TASK]["found_by"] == "classic: reverse"
    cli_train.Console(width=200).print(cli_train._result_table(result, str(tmp_path)))
    row = next(line for line in capsys.readouterr().out.splitlines() if TASK in line and "–" in line)
    assert "best_order.json" not in row and "classic: reverse" in row


# ---- item 9: resume re-scores the order files up front ------------------------------------------


def _run_directory(propane, tmp_path):
    """A run directory as a stopped run leaves it (config.json, run.json), without any training."""
    baselines = [{name: graph.cost(propane, name) for name in graph.CLASSIC_ORDERS}]
    RunDirectory.open(tmp_path, TINY, [propane], [TASK], baselines, resume=False)


def test_resume_refuses_an_order_file_whose_multiplications_lie_before_any_work(propane, tmp_path, monkeypatch):
    import alphagrad.agents.alphazero._train as train_mod

    _run_directory(propane, tmp_path)
    path = tmp_path / "best_order.json"
    orders.save(path, orders.reverse(propane), graph=propane, method="alphazero", task=TASK, found_by="search")
    path.write_text(path.read_text().replace('"multiplications": 90', '"multiplications": 1'))

    def too_late(*args, **kwargs):
        raise AssertionError("the order file must be checked before the train state is built")

    monkeypatch.setattr(train_mod, "init_train_state", too_late)
    tick = time.monotonic()
    with pytest.raises(OrderFileError) as err:
        alphazero.train({TASK: propane}, TINY, out_dir=tmp_path, resume=True)
    assert time.monotonic() - tick < 10
    message = str(err.value)
    assert str(path) in message and "inconsistent" in message and "records 1 multiplications" in message
    assert "costs 90" in message and "delete the file" in message

    # A file for another graph, or with an invalid order, also stops the resume at once, naming it.
    orders.save(path, orders.reverse(propane), graph=propane, method="alphazero", task=TASK)
    data = json.loads(path.read_text())
    data["order"] = data["order"][1:]
    path.write_text(json.dumps(data))
    with pytest.raises(OrderFileError, match=f"cannot resume the run in .* from {path}"):
        alphazero.train({TASK: propane}, TINY, out_dir=tmp_path, resume=True)


def test_resume_refuses_a_checkpoint_whose_costs_lie(propane, tmp_path):
    """A checkpoint's record (best orders, demonstrations) is re-scored when it is restored: a
    damaged one names the checkpoint to delete instead of failing inside the first iteration."""
    alphazero.train({TASK: propane}, dataclasses.replace(TINY, iterations=None, minutes=1e-6), out_dir=tmp_path)
    meta = tmp_path / "checkpoints" / "0" / "meta" / "metadata"
    record = json.loads(meta.read_text())
    record["demonstrations"][TASK][0]["cost"] = 1
    meta.write_text(json.dumps(record))
    with pytest.raises(AlphagradError, match="checkpoint of iteration 0 .* records 1 multiplications, graph.cost gives 90"):
        alphazero.train({TASK: propane}, dataclasses.replace(TINY, iterations=1), out_dir=tmp_path, resume=True)
