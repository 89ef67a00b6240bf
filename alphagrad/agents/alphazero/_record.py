"""What a run has done and found: its best orders, demonstrations and metrics history.

This is the host-side state of the training loop that is not arrays; a checkpoint stores it as
JSON beside the train state, so that a resumed run continues it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from alphagrad.graph import CLASSIC_ORDERS

__all__ = ["BestOrder", "RunRecord", "fallback_label", "is_fallback"]

#: How an order file's ``found_by`` starts when it holds a fallback, not an order of the agent.
_FALLBACK_PREFIXES = ("classic: ", "demonstration: ")


def fallback_label(source: str) -> str:
    """The ``found_by`` of a fallback order whose demonstration source is `source`: "classic:
    reverse" for a classic order, "demonstration: search:best" for any other demonstration."""
    return f"classic: {source}" if source in CLASSIC_ORDERS else f"demonstration: {source}"


def is_fallback(found_by: str) -> bool:
    """Whether an order file's ``found_by`` labels a fallback (see `fallback_label`)."""
    return found_by.startswith(_FALLBACK_PREFIXES)


@dataclasses.dataclass(frozen=True)
class BestOrder:
    """An order of one task and who found it.

    ``RunRecord.best`` holds only orders a game of the agent played. A fallback (the order file
    of a task no game of the agent has finished yet) is a `BestOrder` too, labelled by
    `fallback_label`.

    Attributes:
      order: vertex numbers.
      cost: its multiplications (``graph.cost``).
      source: the kind of game that played it: "search", "greedy" or "sampled" ("" when
        unknown, e.g. an order file without ``found_by``), or a fallback's label.
    """

    order: tuple[int, ...]
    cost: int
    source: str


@dataclasses.dataclass
class RunRecord:
    """The JSON-able state of a run, over all its sessions (a resumed run continues it).

    Attributes:
      iteration: iterations done.
      elapsed_s: seconds trained, as of the last checkpoint.
      games: games played.
      best: task name -> its `BestOrder` (tasks no game has finished yet are absent).
      demonstrations: task name -> ``{"source", "cost", "order"}`` of each demonstration.
      history: the metrics rows, one per iteration.
    """

    iteration: int = 0
    elapsed_s: float = 0.0
    games: int = 0
    best: dict[str, BestOrder] = dataclasses.field(default_factory=dict)
    demonstrations: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def improves(self, name: str, cost: int) -> bool:
        """Whether an order of task `name` costing `cost` would be its new best."""
        return name not in self.best or cost < self.best[name].cost

    def best_costs(self) -> dict[str, int]:
        """Task name -> the cost of its best order."""
        return {name: best.cost for name, best in self.best.items()}

    def demo_costs(self) -> dict[str, int]:
        """Task name -> the cost of its best demonstration (tasks without one are absent)."""
        return {name: min(d["cost"] for d in demos) for name, demos in self.demonstrations.items() if demos}

    def to_json(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "elapsed_s": self.elapsed_s,
            "games": self.games,
            "best": {
                name: {"cost": best.cost, "order": list(best.order), "source": best.source}
                for name, best in self.best.items()
            },
            "demonstrations": self.demonstrations,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """The inverse of `to_json` (absent entries take their defaults)."""
        return cls(
            iteration=int(data.get("iteration", 0)),
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            games=int(data.get("games", 0)),
            best={
                name: BestOrder(tuple(int(v) for v in rec["order"]), int(rec["cost"]), str(rec.get("source", "")))
                for name, rec in data.get("best", {}).items()
            },
            demonstrations={name: list(demos) for name, demos in data.get("demonstrations", {}).items()},
            history=list(data.get("history", [])),
        )
