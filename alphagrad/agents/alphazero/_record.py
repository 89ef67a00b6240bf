"""What a run has done and found: its best orders, demonstrations and metrics history.

This is the host-side state of the training loop that is not arrays; a checkpoint stores it as
JSON beside the train state, so that a resumed run continues it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["BestOrder", "RunRecord"]


@dataclasses.dataclass(frozen=True)
class BestOrder:
    """The cheapest order a game of the agent played for one task (never a demonstration).

    Attributes:
      order: vertex numbers.
      cost: its multiplications (``graph.cost``).
      source: the kind of game that played it: "search", "greedy" or "sampled" ("" when
        unknown, e.g. an order file without ``found_by``).
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
