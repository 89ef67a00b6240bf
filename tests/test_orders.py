"""Classic orders and the order file."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import files, graph, orders
from alphagrad.errors import GraphMismatchError, OrderError, OrderFileError

SCALAR_REFERENCES = ["RoeFlux_1d", "RobotArm_6DOF", "HumanHeartDipole", "PropaneCombustion", "BlackScholes_Jacobian", "g"]


def test_forward_and_reverse(diamond):
    assert orders.forward(diamond) == [1, 2, 3]
    assert orders.reverse(diamond) == [3, 2, 1]


@pytest.mark.parametrize("name", SCALAR_REFERENCES)
def test_markowitz_reproduces_the_reference_order_on_scalar_graphs(name, reference_graphs, reference_info):
    g = reference_graphs[name]
    assert orders.markowitz(g) == list(reference_info[name].minimal_markowitz_order)
    assert orders.markowitz(g, degree="components") == list(reference_info[name].minimal_markowitz_order)


def mass_action_kinetics(steps: int, species: int = 12, reactions: int = 18, seed: int = 0):
    """Explicit Euler steps of random mass-action kinetics, the state read entry by entry and
    restacked every step: many eliminations that multiply nothing (sums, index maps)."""
    rng = np.random.default_rng(seed)
    scheme = [(rng.choice(species, size=rng.integers(1, 3), replace=False),
               rng.choice(species, size=rng.integers(1, 3), replace=False)) for _ in range(reactions)]

    def f(y):
        for _ in range(steps):
            c = [y[i] for i in range(species)]
            d = [0.0] * species
            for reactants, products in scheme:
                rate = 0.5
                for i in reactants:
                    rate = rate * c[i]
                for i in reactants:
                    d[i] = d[i] - rate
                for i in products:
                    d[i] = d[i] + rate
            y = jnp.stack([c[i] + 0.01 * d[i] for i in range(species)])
        return y

    return f


def test_markowitz_takes_free_eliminations_by_fewest_products():
    """Free eliminations taken in vertex order filled this integrator in: Markowitz's cost grew
    quadratically with the steps (59,500 at 8 steps, 209,444 at 16; reverse mode 7,632 and
    15,408); fewest products first keeps it linear."""
    costs = {}
    for steps in (8, 16):
        g = graph.jacobian_graph(mass_action_kinetics(steps), jnp.ones(12))
        costs[steps] = graph.cost(g, orders.markowitz(g))
        assert costs[steps] <= 6 * graph.cost(g, "reverse")
    assert costs[16] <= 2.2 * costs[8]


@pytest.mark.parametrize("name", graph.reference_names())
def test_markowitz_orders_are_valid(name, reference_graphs):
    g = reference_graphs[name]
    for degree in ("cost", "components"):
        order = orders.markowitz(g, degree=degree)
        assert sorted(order) == g.intermediates


def test_markowitz_rejects_unknown_degree(diamond):
    with pytest.raises(ValueError, match="degree must be"):
        orders.markowitz(diamond, degree="edges")


def test_save_and_load_round_trip(tmp_path, reference_graphs):
    g = reference_graphs["PropaneCombustion"]
    order = orders.markowitz(g)
    path = tmp_path / "sub" / "best.json"
    written = orders.save(path, order, graph=g, method="markowitz", task="ref:PropaneCombustion", seed=3)
    data = json.loads(path.read_text())
    assert data["format"] == "alphagrad-order/1"
    assert data["multiplications"] == graph.cost(g, order) == 111
    assert data["baselines"] == {"forward": 151, "reverse": 90, "markowitz": 111}
    assert data["graph"]["fingerprint"] == g.fingerprint
    assert data["graph"]["num_intermediates"] == 51
    assert data["cost_model"] == "alphagrad-2024" and data["seed"] == 3
    loaded = orders.load(path, graph=g)
    assert loaded == written
    assert graph.cost(g, loaded) == 111  # an OrderFile is accepted wherever an order is
    assert os.listdir(path.parent) == ["best.json"]  # no temporary files left behind


def test_order_for_another_graph_is_refused(tmp_path, reference_graphs):
    g, other = reference_graphs["PropaneCombustion"], reference_graphs["HumanHeartDipole"]
    path = tmp_path / "o.json"
    orders.save(path, orders.forward(g), graph=g)
    with pytest.raises(GraphMismatchError, match=r"11 inputs, 51 intermediates, 11 outputs.*8 inputs, 78 intermediates, 8 outputs"):
        orders.load(path, graph=other)
    record = orders.load(path)
    with pytest.raises(GraphMismatchError):
        graph.cost(other, record)


def test_save_refuses_an_invalid_order(tmp_path, diamond):
    with pytest.raises(OrderError, match="appears twice"):
        orders.save(tmp_path / "o.json", [1, 1, 2], graph=diamond)
    assert not (tmp_path / "o.json").exists()


def test_failed_write_keeps_the_previous_file(tmp_path, diamond, monkeypatch):
    path = tmp_path / "o.json"
    orders.save(path, [1, 2, 3], graph=diamond)
    before = path.read_text()

    def broken_replace(*args, **kwargs):
        raise RuntimeError("disk full")

    # The temporary file is complete when the rename fails: the last moment a write can fail.
    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(RuntimeError, match="disk full"):
        orders.save(path, [3, 2, 1], graph=diamond)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["o.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "cannot read order file"),
        ('{"order": [1]}', "not an alphagrad order file"),
        ('{"format": "alphagrad-order/1", "order": [1]}', "lacks the field"),
        ('{"format": "alphagrad-order/1", "order": ["a"], "multiplications": 1, "graph": {"fingerprint": "x"}}',
         "must be a list of vertex numbers"),
    ],
)
def test_malformed_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(OrderFileError, match=message):
        orders.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(OrderFileError, match="cannot read order file"):
        orders.load(tmp_path / "nope.json")


def test_traced_graph_order_file(tmp_path):
    def f(x, y):
        return jnp.sin(x * y) + y

    g = graph.trace(f, 1.0, 2.0)
    orders.save(tmp_path / "o.json", "reverse" and orders.reverse(g), graph=g)
    assert orders.load(tmp_path / "o.json", graph=graph.trace(f, 3.0, 4.0)).order == (2, 1)


# ---- issue 14, item 6: a malformed field is an OrderFileError naming the file and the field --------------

_GOOD = {"format": "alphagrad-order/1", "order": [1, 2, 3], "multiplications": 4, "cost_model": "alphagrad-2024",
         "graph": {"fingerprint": "sha256:x", "num_inputs": 2, "num_intermediates": 3, "num_outputs": 2},
         "baselines": {"forward": 4, "reverse": 5, "markowitz": 4}}


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("multiplications", "abc", r'"multiplications" must be a non-negative integer, got "abc"'),
        ("multiplications", None, r'"multiplications" must be a non-negative integer, got null'),
        ("multiplications", float("nan"), r'"multiplications" must be a non-negative integer, got NaN'),
        ("multiplications", float("inf"), r'"multiplications" must be a non-negative integer, got Infinity'),
        ("multiplications", -3, r'"multiplications" must be a non-negative integer, got -3'),
        ("multiplications", True, r'"multiplications" must be a non-negative integer, got true'),
        ("baselines", [1, 2], r'"baselines" must be an object .* got \[1, 2\]'),
        ("baselines", {"forward": "x"}, r'"baselines.forward" must be a non-negative integer, got "x"'),
        ("graph", {"fingerprint": 12345}, r'"graph.fingerprint" must be a string, got 12345'),
        ("graph", {"fingerprint": "sha256:x", "num_inputs": 1.5}, r'"graph.num_inputs" must be a non-negative'),
        ("graph", [1], r"has no graph fingerprint"),
        ("cost_model", 7, r'"cost_model" must be a string, got 7'),
        ("task", {"a": 1}, r'"task" must be a string'),
    ],
)
def test_malformed_fields_name_the_file_and_the_field(tmp_path, field, value, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(_GOOD, **{field: value})))  # NaN and Infinity as Python's json writes them
    with pytest.raises(OrderFileError, match=message) as info:
        orders.load(path)
    assert str(path) in str(info.value)


def test_deeply_nested_and_unparsable_files_are_order_file_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"format": "alphagrad-order/1", "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(OrderFileError, match="nested too deeply") as info:
        orders.load(deep)
    assert str(deep) in str(info.value)
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(_GOOD).replace('"multiplications": 4', '"multiplications": ' + "9" * 5000))
    with pytest.raises(OrderFileError, match="cannot read order file"):
        orders.load(huge)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(OrderFileError, match="cannot read order file"):
        orders.load(binary)


def test_eval_command_reports_a_malformed_file(tmp_path, capsys):
    from alphagrad import cli

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(_GOOD, multiplications=float("nan"))))
    assert cli.main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert "multiplications" in err and "bad.json" in err and "Traceback" not in err


# ---- issue 14, item 10: order files get the mode of any other file (0o666 minus the umask) ---------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_order_files_follow_the_umask(tmp_path, diamond, umask):
    old = os.umask(umask)
    try:
        orders.save(tmp_path / "o.json", [1, 2, 3], graph=diamond)
    finally:
        os.umask(old)
    assert (tmp_path / "o.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_baselines_are_the_classic_costs_remembered_per_graph(monkeypatch):
    g = graph.load_reference()["PropaneCombustion"]
    expected = {name: graph.cost(g, name) for name in ("forward", "reverse", "markowitz")}
    assert orders.baselines(g) == expected
    scored = []
    monkeypatch.setattr(orders, "cost", lambda graph_, order: scored.append(order) or 0)
    assert orders.baselines(g) == expected and not scored  # remembered
    assert orders.record(graph.forward(g), graph=g).baselines == expected
