"""Issue 14 for `alphagrad train`: a time-limited run always ends with an order file (item 3), a
resumed run re-scores its files up front (item 9), and Ctrl-C stops a run cleanly (item 13).

The in-process runs share the tiny configuration (and so the compilations) of test_alphazero.py;
the Ctrl-C tests send real SIGINTs to `alphagrad train` subprocesses in their own process group.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alphagrad import graph, orders
from alphagrad.agents import alphazero
from alphagrad.agents.alphazero._demos import fallback_order
from alphagrad.agents.alphazero._record import BestOrder
from alphagrad.agents.alphazero._rundir import RunDirectory
from alphagrad.errors import AlphagradError, OrderFileError
from tests.agents.test_alphazero import TASK, TINY, TINY_SET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: An order of PropaneCombustion that costs 88 (a plain search's), cheaper than reverse mode's 90.
SEARCHED = [50, 48, 47, 42, 39, 34, 33, 28, 27, 20, 15, 14, 11, 5, 1, 61, 60, 59, 58, 57, 56, 55, 54, 53, 51, 49,
            45, 44, 43, 40, 38, 36, 35, 32, 30, 29, 26, 24, 23, 21, 18, 17, 16, 12, 10, 9, 8, 7, 6, 3, 2]  # fmt: skip
needs_sigint = pytest.mark.skipif(not hasattr(os, "killpg"), reason="no SIGINT to a process group on this platform")


@pytest.fixture(scope="module")
def propane(reference_graphs) -> graph.Graph:
    return reference_graphs[TASK]


# ---- item 3: a run always ends with an order file ----------------------------------------------


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


# ---- item 13: Ctrl-C ----------------------------------------------------------------------------


def _start_training(out, log):
    """`alphagrad train` (tiny config, far more iterations than the test waits for) in a process
    group of its own, its output in the files `log` names."""
    command = [sys.executable, "-m", "alphagrad.cli", "train", f"ref:{TASK}", "--iterations", "10000", "--out",
               str(out), "--set", *TINY_SET]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    stdout, stderr = open(log + ".out", "w"), open(log + ".err", "w")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr, start_new_session=True)


def _wait_for(condition, process, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"training exited early with status {process.returncode}"
        assert time.monotonic() < deadline, "training made no progress in time"
        time.sleep(0.2)


def _metrics_rows(out) -> int:
    path = out / "metrics.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


@needs_sigint
def test_ctrl_c_stops_training_after_the_iteration_with_checkpoint_order_file_and_table(tmp_path):
    out, log = tmp_path / "run", str(tmp_path / "log")
    process = _start_training(out, log)
    try:
        _wait_for(lambda: _metrics_rows(out) >= 1, process, 600)
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text, errors = open(log + ".out").read(), open(log + ".err").read()
    assert status == 130, (status, text, errors)
    assert "Ctrl-C: stopping after the current iteration" in text and "stopped by Ctrl-C after iteration" in text
    assert "AlphaZero after" in text and str(out / "best_order.json") in text
    done = _metrics_rows(out)
    assert 1 <= done < 10000
    assert str(done) in os.listdir(out / "checkpoints")  # the last iteration is checkpointed
    written = orders.load(out / "best_order.json")
    assert written.extra["found_by"] in ("search", "greedy", "sampled")
    assert "Traceback" not in errors


@needs_sigint
def test_second_ctrl_c_quits_at_once_even_inside_xla(tmp_path):
    """Two Ctrl-Cs while the run compiles (inside XLA, where Python runs no signal handler): the
    process quits with status 130 at once, not after the compilation."""
    out, log = tmp_path / "run", str(tmp_path / "log")
    process = _start_training(out, log)
    try:
        _wait_for(lambda: (out / "run.json").exists(), process, 300)  # inside train: the handler is in place
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.2)
        tick = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        status = process.wait(timeout=60)
        quit_s = time.monotonic() - tick
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert status == 130
    assert "second Ctrl-C: quitting at once" in open(log + ".err").read()
    assert quit_s < 5, quit_s
