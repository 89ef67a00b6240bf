"""The result every search returns, and small shared helpers (time limits, progress callbacks)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from alphagrad.errors import AlphagradError

__all__ = ["Deadline", "Progress", "SearchError", "SearchResult", "run_within"]

#: ``progress(best_cost, fraction_of_budget_used)``, called by long searches when they improve
#: or at least every few seconds. Must be cheap; printing happens in the CLI.
Progress = Callable[[int, float], None]


class SearchError(AlphagradError):
    """A search was asked for something it cannot do (unknown method, bad hyper-parameter)."""


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The outcome of one search.

    Attributes:
      order: the best elimination order found (vertex numbers, every intermediate once).
      cost: its multiplications under the graph's cost model (equals ``graph.cost(g, order)``).
      method: the search that found it ("heuristics", "sa", "beam", "exact", "alphazero", ...).
      optimal: the search proved that no order is cheaper.
      lower_bound: a proven lower bound on the optimal cost (0 when nothing was proved).
      evaluations: complete orders (or search states, for "exact") evaluated.
      seconds: wall time spent.
      info: method-specific details (e.g. the winning heuristic chain, orders per second).
    """

    order: tuple[int, ...]
    cost: int
    method: str
    optimal: bool = False
    lower_bound: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Deadline:
    """Wall-clock budget: ``Deadline(seconds)``; ``left()``, ``expired()``, ``fraction()``."""

    def __init__(self, seconds: float | None):
        self.start = time.perf_counter()
        self.seconds = float("inf") if seconds is None else max(0.0, float(seconds))

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.elapsed() >= self.seconds

    def fraction(self) -> float:
        return 1.0 if self.seconds == 0 else min(1.0, self.elapsed() / self.seconds)


def run_within(deadline: Deadline, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """Calls ``fn(*args)`` in a thread and waits at most until the deadline.

    For the first call of a jitted function, whose compilation may not fit a short budget: a
    search then returns what it has instead of overrunning its time limit (the abandoned call
    finishes in the background and its result is dropped).

    Returns:
      (finished, result); result is None when the call did not finish in time.

    Raises:
      whatever ``fn`` raised, when it finished.
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = err

    # Not a daemon: an abandoned compilation must finish before the interpreter exits (XLA aborts
    # the process when it is torn down under a running compilation).
    thread = threading.Thread(target=work, daemon=False)
    thread.start()
    thread.join(timeout=max(0.0, deadline.left()))
    if thread.is_alive():
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box["value"]
