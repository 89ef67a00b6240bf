"""The command line checks at the boundary (issue 14 items 7, 11, 12): a bad ``--out``, a bad number
or a module in the current directory gives one ``error:`` line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import sys

import pytest

from alphagrad import cli, orders, tasks

TASK = "ref:PropaneCombustion"  # a reference graph: nothing to trace, the verbs run at once


def _error(capsys) -> str:
    """The stderr of the last command, on one line."""
    return " ".join(capsys.readouterr().err.split())


# ---- item 7: --out that cannot be written ------------------------------------------------------


def test_baselines_out_under_a_file_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["baselines", TASK, "--out", str(tmp_path / "file" / "sub")]) == 2
    err = _error(capsys)
    assert "error: argument --out" in err and "cannot create" in err
    assert f"{tmp_path / 'file'} is a file, not a directory" in err
    assert (tmp_path / "file").read_text() == "x"


def test_baselines_out_at_an_existing_file_is_a_clean_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["baselines", TASK, "--out", str(tmp_path / "file")]) == 2
    err = _error(capsys)
    assert "argument --out" in err and f"{tmp_path / 'file'} is an existing file, not a directory" in err
    assert (tmp_path / "file").read_text() == "x"


def test_search_out_into_an_uncreatable_path_fails_before_the_search(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(tasks, "resolve", lambda *a, **k: pytest.fail("the search ran"))
    out = tmp_path / "file" / "deeper" / "order.json"
    assert cli.main(["search", TASK, "--method", "heuristics", "--out", str(out)]) == 2
    err = _error(capsys)
    assert "argument --out" in err and f"cannot create {out}" in err and "is a file, not a directory" in err


@pytest.mark.parametrize("verb", ["search", "solve", "bench"])
def test_file_out_at_a_directory_is_a_clean_error(verb, tmp_path, capsys):
    extra = ["--model", str(tmp_path)] if verb == "solve" else []
    assert cli.main([verb, TASK, *extra, "--out", str(tmp_path)]) == 2
    assert f"argument --out: {tmp_path} is a directory" in _error(capsys)


def test_a_write_refused_after_the_check_names_the_path(tmp_path, capsys, monkeypatch):
    # The check at parse time passes; the system refuses the write itself (full disk, permissions
    # changed meanwhile): the OSError becomes an error line naming the file, no traceback.
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(orders, "save", refuse)
    assert cli.main(["baselines", TASK, "--out", str(tmp_path / "bl")]) == 2
    err = _error(capsys)
    assert f"error: cannot write {tmp_path / 'bl' / 'forward.json'} (--out): Permission denied" in err


def test_an_os_error_no_verb_named_is_still_an_error_line(capsys, monkeypatch):
    # The last resort at main's boundary (e.g. a file written deep inside a verb): the system's
    # reason and the file, exit status 2.
    def refuse(*args, **kwargs):
        raise IsADirectoryError(21, "Is a directory", "/somewhere/order.json")

    monkeypatch.setattr(tasks, "resolve", refuse)
    assert cli.main(["baselines", TASK]) == 2
    assert _error(capsys) == "error: Is a directory: /somewhere/order.json"


# ---- item 11: numbers out of range --------------------------------------------------------------


@pytest.mark.parametrize("minutes", ["-1", "0", "nan", "inf", "-inf", "soon"])
def test_search_minutes_must_be_finite_and_positive(minutes, capsys):
    assert cli.main(["search", TASK, f"--minutes={minutes}"]) == 2  # "=": argparse reads "-inf" as a flag
    err = _error(capsys)
    assert "argument --minutes: must be a finite number > 0" in err and repr(minutes) in err


@pytest.mark.parametrize(
    ("argv", "flag", "allowed"),
    [
        (["train", TASK, "--minutes", "0"], "--minutes", "a finite number > 0"),
        (["train", TASK, "--minutes", "nan"], "--minutes", "a finite number > 0"),
        (["train", TASK, "--iterations", "0"], "--iterations", "an integer >= 1"),
        (["train", TASK, "--iterations", "-3"], "--iterations", "an integer >= 1"),
        (["train", TASK, "--seed", "-1"], "--seed", "an integer >= 0"),
        (["search", TASK, "--seed", "-1"], "--seed", "an integer >= 0"),
        (["bench", TASK, "--seconds", "0"], "--seconds", "a finite number > 0"),
        (["bench", TASK, "--seconds", "inf"], "--seconds", "a finite number > 0"),
        (["solve", TASK, "--model", "m", "--simulations", "0"], "--simulations", "an integer >= 1"),
        (["solve", TASK, "--model", "m", "--games", "0"], "--games", "an integer >= 1"),
    ],
)
def test_numeric_flags_are_range_checked_before_any_work(argv, flag, allowed, capsys):
    assert cli.main(argv) == 2
    assert f"argument {flag}: must be {allowed}" in _error(capsys)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("learning_rate=0", "config learning_rate must be a finite number > 0, got 0.0"),
        ("learning_rate=nan", "config learning_rate must be a finite number > 0, got nan"),
        ("weight_decay=-1e-4", "config weight_decay must be a finite number >= 0, got -0.0001"),
        ("max_grad_norm=inf", "config max_grad_norm must be a finite number > 0, got inf"),
        ("minutes=-2", "config minutes must be a finite number > 0, got -2.0"),
    ],
)
def test_train_set_values_are_range_checked(setting, message, tmp_path, capsys):
    assert cli.main(["train", TASK, "--out", str(tmp_path / "run"), "--set", setting]) == 2
    assert f"error: {message}" in _error(capsys)
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


# ---- item 12: module:function from the current directory ----------------------------------------


@pytest.fixture
def module_in_cwd(tmp_path, monkeypatch, request):
    """A module written to tmp_path, the current directory, which is not on sys.path; sys.path and
    sys.modules are restored afterwards."""
    name = f"mymod_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("import jax.numpy as jnp\n\ndef f(x):\n    return jnp.sin(x) * x\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield name
    sys.modules.pop(name, None)


def test_baselines_of_a_module_in_the_current_directory(module_in_cwd, tmp_path, capsys):
    assert cli.main(["baselines", f"{module_in_cwd}:f", "--args", "f32[3]", "--out", str(tmp_path / "bl")]) == 0
    assert "forward" in capsys.readouterr().out
    data = json.loads((tmp_path / "bl" / "reverse.json").read_text())
    assert data["task"] == f"{module_in_cwd}:f"


def test_a_missing_module_says_where_it_was_looked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert cli.main(["baselines", "no_such_module_here:f", "--args", "f32[3]"]) == 2
    err = _error(capsys)
    assert "no module 'no_such_module_here'" in err and f"the current directory ({tmp_path})" in err
    assert "PYTHONPATH" in err
