"""The `alphagrad` command line."""

from __future__ import annotations

import json
import subprocess
import sys

from alphagrad import cli


def test_tasks_table_lists_reference_graphs_with_published_counts(capsys):
    assert cli.main(["tasks", "--only-ref"]) == 0
    out = capsys.readouterr().out
    assert "ref:RoeFlux_1d" in out and "620" in out and "364" in out and "320" in out
    assert "ref:Encoder" in out and "135010" in out


def test_baselines_writes_three_order_files(tmp_path, capsys):
    assert cli.main(["baselines", "ref:PropaneCombustion", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "151" in out and "90" in out and "111" in out
    for name, cost in (("forward", 151), ("reverse", 90), ("markowitz", 111)):
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["multiplications"] == cost and data["method"] == name


def test_baselines_of_a_module_function(capsys):
    assert cli.main(["baselines", "jax.numpy:sin", "--args", "f32[3]"]) == 0
    assert "forward" in capsys.readouterr().out


def test_unknown_task_is_a_clean_error(capsys):
    assert cli.main(["baselines", "NoSuchTask"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'NoSuchTask'" in err and "RoeFlux_1d" in err


def test_unknown_reference_graph(capsys):
    assert cli.main(["baselines", "ref:nope"]) == 2
    assert "no reference graph 'nope'" in capsys.readouterr().err


def test_eval_checks_a_function_order_with_the_interpreter(tmp_path, capsys):
    assert cli.main(["baselines", "jax.numpy:sin", "--args", "f32[3]", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "reverse.json"), "--args", "f32[3]"]) == 0
    out = capsys.readouterr().out
    assert "interpreter.jacobian == jax.jacfwd" in out and "yes" in out and "cost model alphagrad-2024" in out


def test_eval_of_a_corpus_order_differentiates_only_its_argnums(tmp_path, capsys):
    """corpus:window takes an integer offset: eval must not differentiate it (jacfwd would refuse)."""
    assert cli.main(["baselines", "corpus:window", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "markowitz.json")]) == 0
    out = capsys.readouterr().out
    assert "interpreter.jacobian == jax.jacfwd" in out and "yes" in out


def test_eval_of_a_reference_order_and_of_a_wrong_count(tmp_path, capsys):
    assert cli.main(["baselines", "ref:PropaneCombustion", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "reverse.json")]) == 0
    assert "a reference graph has no JAX function" in capsys.readouterr().out
    path = tmp_path / "reverse.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "multiplications": data["multiplications"] + 1}))
    assert cli.main(["eval", str(path)]) == 1
    assert "file says 91" in capsys.readouterr().out
    path.write_text(json.dumps({**data, "order": data["order"][1:]}))
    assert cli.main(["eval", str(path)]) == 2
    assert "error:" in capsys.readouterr().err


def test_eval_of_an_order_for_another_graph_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["baselines", "ref:PropaneCombustion", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "reverse.json"), "--task", "ref:HumanHeartDipole"]) == 2
    assert "made for another graph" in capsys.readouterr().err


def test_python_m_alphagrad_cli_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "alphagrad.cli", "--help"], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0 and "baselines" in result.stdout
