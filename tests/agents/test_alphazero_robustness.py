"""Issue 14 for `alphagrad train`: Ctrl-C stops a run cleanly (item 13).

The tests send real SIGINTs to `alphagrad train` subprocesses in their own process group. The
in-process checks of the same issue (items 3 and 9) live in test_alphazero.py, whose worker has
the tiny configuration's iteration compiled already.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from alphagrad import orders
from tests.agents.test_alphazero import TASK, TINY_SET

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
needs_sigint = pytest.mark.skipif(not hasattr(os, "killpg"), reason="no SIGINT to a process group on this platform")


# ---- item 13: Ctrl-C ----------------------------------------------------------------------------


def _start_training(out, log, compilation_cache: bool = True):
    """`alphagrad train` (tiny config, far more iterations than the test waits for) in a process
    group of its own, its output in the files `log` names; without `compilation_cache` it
    compiles its iteration itself (tests/conftest.py shares one cache with the subprocesses)."""
    command = [sys.executable, "-m", "alphagrad.cli", "train", f"ref:{TASK}", "--iterations", "10000", "--out",
               str(out), "--set", *TINY_SET]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not compilation_cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
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
    process = _start_training(out, log, compilation_cache=False)  # so that it does compile
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
