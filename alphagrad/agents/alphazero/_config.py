"""The typed configuration of the AlphaZero agent, with overrides from TOML files and ``key=value``."""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from alphagrad.errors import AlphagradError

__all__ = ["AlphaZeroConfig", "ConfigError"]


class ConfigError(AlphagradError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlphaZeroConfig:
    """Hyper-parameters of an AlphaZero run. The defaults suit a 2-core laptop (a few seconds per
    iteration on a 100-vertex graph, 16 simulations per move); raise ``num_games``, ``num_simulations`` and the network
    size on an accelerator. Construction and `replace` check every field's type and range (a
    `ConfigError` names the key, the value and the allowed values).

    Network (`PolicyValueNet`):
      embed_dim: width D of the vertex tokens.
      edge_dim: width of the per-edge messages aggregated into each token.
      num_layers: masked transformer layers.
      num_heads: attention heads (``embed_dim`` must be divisible by it).
      edges_per_node: edge slots per node of the network's input and of every stored
        transition: a state of N nodes and V vertex slots is read as a list of
        ``min(N * V, edges_per_node * N)`` edges (all possible edges of a small state; past that,
        edges beyond the slots are dropped from the network's view, never from the game). It
        sets memory, not the parameters: a transition takes about 5 bytes per slot.

    Search (`mctx.gumbel_muzero_policy`, the env core as a perfect model):
      num_simulations: simulations per move.
      max_num_considered_actions: actions sampled at the root (Gumbel top-k).
      gumbel_scale: scale of the root Gumbel noise in self-play (0 = deterministic search).
      value_scale, maxvisit_init: parameters of `mctx.qtransform_completed_by_mix_value`.
      value_transform: "symlog" (sign(x) log(1 + |x|)) or "identity"; the value head predicts
        the transformed normalised return, the search sees its exact inverse.

    Self-play and training:
      num_games: games played per iteration (one batch, sharded over the devices; a multiple of
        the device count). Game b of iteration i plays task ``(b + i * num_games) % num_tasks``.
      replay_size: transitions the circular replay buffer keeps (about ``replay_size /
        (num_games * moves)`` recent iterations).
      batch_size: transitions per gradient step.
      updates_per_iteration: gradient steps per iteration.
      min_replay: no gradient step until the buffer holds this many transitions.
      learning_rate: peak learning rate; linear warm-up over ``warmup_iterations`` iterations,
        then cosine decay to ``learning_rate * end_lr_factor`` over the run's progress: the
        fraction of ``schedule_iterations`` done when it is set, else the larger of the fractions
        of ``iterations`` and of ``minutes`` used (so a time-limited run decays by the clock).
      weight_decay: decoupled weight decay (AdamW) on the weight matrices (not biases, norms).
      max_grad_norm: gradient clipping by global norm (before Adam).
      value_weight: weight of the value loss beside the policy cross-entropy.

    Demonstrations (expert-iteration warm start; `alphagrad.agents.alphazero._demos`):
      demo_seconds: seconds of plain search (``demo_method``) per task before training, whose
        order joins the forward, reverse and Markowitz orders as demonstrations (0 = classic
        orders only). The time counts against ``minutes``; with a time limit the searches
        together take at most a quarter of it.
      demo_method: the `alphagrad.agents.search` method producing that order ("best", "sa", ...).
      demo_fraction: fraction of every training minibatch drawn from the demonstrations (0 =
        no demonstrations at all: none are computed).
      demo_max_ratio: demonstrations costing more than this times the task's best demonstration
        are dropped (imitating forward mode on a graph where reverse mode is twice as cheap
        only teaches bad moves).
      demo_smoothing: policy target of a demonstrated move: (1 - s) one-hot on the demo's action
        plus s spread uniformly over the legal actions.
      demo_pretrain_steps: gradient steps on demonstrations alone before the first self-play
        game (so the first games already follow them). Run in equal chunks of at most 100
        (rounded up to whole chunks); with ``minutes`` set, pre-training stops after the chunk
        that brings the run past 40% of its budget.
      imitate_best: also imitate the agent's own best order of each task (self-imitation):
        whenever a game of the agent finds a cheaper order, it replaces the previous one in the
        demonstration buffer, so the policy follows the best known order and search and sampled
        games explore around it. Not counted as a demonstration.
      The demonstrations train the network only; the best order of a run comes from the games
      the agent plays itself. The best demonstration's cost is reported beside it.

    Policy games (no search, one network call per move):
      num_policy_games: games per iteration played by the raw network policy (a multiple of
        the device count; 0 = none). The first game of each task is greedy (argmax of the
        prior over the legal actions), the others sample from softmax(logits / temperature).
        Their orders compete for the best order; they add nothing to the replay buffer.
      policy_temperature: the sampling temperature of those games.

    Run control:
      iterations: stop after this many iterations in all (a resumed run continues the count);
        None = no limit (then ``minutes`` must be set).
      minutes: stop after this many minutes of this invocation (None = no limit).
      seed: the PRNG seed; the same seed and config give the same run.
      checkpoint_every: iterations between checkpoints (the last iteration always checkpoints).
      max_vertices, max_inputs: pad every graph to this size (None: the largest task's).
      xla_opt_level: XLA's backend optimisation level for the compiled iteration and search
        (None: XLA's default, the fastest code; 0 compiles about 4x faster and runs about 3x
        slower on CPU: for tests and smoke runs).
    """

    # network
    embed_dim: int = 32
    edge_dim: int = 16
    num_layers: int = 2
    num_heads: int = 4
    edges_per_node: int = 16
    # search
    num_simulations: int = 16
    max_num_considered_actions: int = 8
    gumbel_scale: float = 1.0
    value_scale: float = 0.1
    maxvisit_init: float = 50.0
    value_transform: str = "symlog"
    # self-play and training
    num_games: int = 8
    replay_size: int = 16384
    batch_size: int = 128
    updates_per_iteration: int = 4
    min_replay: int = 256
    learning_rate: float = 1e-3
    warmup_iterations: int = 10
    schedule_iterations: int | None = None
    end_lr_factor: float = 0.1
    weight_decay: float = 1e-4
    max_grad_norm: float = 1.0
    value_weight: float = 1.0
    # demonstrations
    demo_seconds: float = 10.0
    demo_method: str = "best"
    demo_fraction: float = 0.5
    demo_max_ratio: float = 1.2
    demo_smoothing: float = 0.0
    demo_pretrain_steps: int = 1000
    imitate_best: bool = True
    # policy games
    num_policy_games: int = 16
    policy_temperature: float = 1.0
    # run control
    iterations: int | None = 100
    minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 10
    max_vertices: int | None = None
    max_inputs: int | None = None
    xla_opt_level: int | None = None

    def __post_init__(self):
        # Types first (a constructor call is not checked by Python), so that the ranges compare numbers.
        hints = _field_types()
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, _coerce(field.name, getattr(self, field.name), hints[field.name]))
        for name, allowed in _RANGES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                kind = "an integer" if isinstance(value, int) else "a finite number"
                raise ConfigError(f"config {name} must be {kind} {allowed}, got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"config embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.value_transform not in ("symlog", "identity"):
            raise ConfigError(f"config value_transform must be 'symlog' or 'identity', got {self.value_transform!r}")
        if self.iterations is None and self.minutes is None:
            raise ConfigError("set iterations or minutes (or both); otherwise the run never stops")
        if self.min_replay > self.replay_size:
            raise ConfigError(
                f"config min_replay ({self.min_replay}) must be <= replay_size ({self.replay_size}): "
                "the buffer never holds more, so no self-play transition would ever be trained on"
            )

    # -- derived ------------------------------------------------------------------------------
    @property
    def use_demos(self) -> bool:
        """Demonstrations are computed and trained on."""
        return self.demo_fraction > 0.0

    def progress(self, iteration: int, elapsed_s: float) -> float:
        """The fraction of the run done after `iteration` iterations and `elapsed_s` seconds of
        this invocation (in [0, 1]); the learning rate's cosine decay follows it."""
        if self.schedule_iterations is not None:
            return min(1.0, iteration / max(1, self.schedule_iterations))
        fractions = []
        if self.iterations is not None:
            fractions.append(iteration / max(1, self.iterations))
        if self.minutes is not None:
            fractions.append(elapsed_s / max(1e-9, 60.0 * self.minutes))
        return min(1.0, max(fractions))

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlphaZeroConfig:
        """A config from a mapping; unknown keys are an error, values are checked against the field types."""
        return cls().replace(**data)

    @classmethod
    def from_toml(cls, path: str) -> AlphaZeroConfig:
        """A config from a TOML file of ``key = value`` lines (optionally under an ``[alphazero]`` table)."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"cannot read config file {path}: {err}") from None
        data = data.get("alphazero", data)
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> AlphaZeroConfig:
        """A copy with `changes` applied (type- and range-checked like the constructor; ints are
        accepted for float fields)."""
        fields = _field_types()
        for key in changes:
            if key not in fields:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
        return dataclasses.replace(self, **changes)  # __post_init__ checks the types and ranges

    def with_overrides(self, assignments: Iterable[str]) -> AlphaZeroConfig:
        """Applies ``key=value`` strings (values parsed as TOML literals: ``16``, ``1e-3``, ``"symlog"``;
        a bare word is a string, ``none`` is None)."""
        changes = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ConfigError(f"cannot read override {item!r}: write key=value, e.g. num_simulations=32")
            changes[key.strip()] = _parse_value(raw.strip())
        return self.replace(**changes)


@dataclasses.dataclass(frozen=True)
class _Range:
    """The allowed values of a numeric field: finite, at least `low` (more than it when
    `low_open`) and at most `high`."""

    low: float
    high: float = math.inf
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return math.isfinite(value) and above and value <= self.high

    def __str__(self) -> str:
        if self.high < math.inf:
            return f"in [{_number(self.low)}, {_number(self.high)}]"
        return f"{'>' if self.low_open else '>='} {_number(self.low)}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


_POSITIVE = _Range(0.0, low_open=True)
_NONNEGATIVE = _Range(0.0)
_COUNT = _Range(1)
_FRACTION = _Range(0.0, 1.0)

#: The range of every numeric field (checked when set; None stays allowed where the type has it).
_RANGES: dict[str, _Range] = {
    # network
    "embed_dim": _COUNT, "edge_dim": _COUNT, "num_layers": _COUNT, "num_heads": _COUNT, "edges_per_node": _COUNT,
    # search
    "num_simulations": _COUNT, "max_num_considered_actions": _COUNT, "gumbel_scale": _NONNEGATIVE,
    "value_scale": _POSITIVE, "maxvisit_init": _NONNEGATIVE,
    # self-play and training
    "num_games": _COUNT, "replay_size": _COUNT, "batch_size": _COUNT, "updates_per_iteration": _NONNEGATIVE,
    "min_replay": _NONNEGATIVE, "learning_rate": _POSITIVE, "warmup_iterations": _NONNEGATIVE,
    "schedule_iterations": _COUNT, "end_lr_factor": _FRACTION, "weight_decay": _NONNEGATIVE,
    "max_grad_norm": _POSITIVE, "value_weight": _NONNEGATIVE,
    # demonstrations
    "demo_seconds": _NONNEGATIVE, "demo_fraction": _FRACTION, "demo_max_ratio": _Range(1.0),
    "demo_smoothing": _FRACTION, "demo_pretrain_steps": _NONNEGATIVE,
    # policy games
    "num_policy_games": _NONNEGATIVE, "policy_temperature": _POSITIVE,
    # run control: a seed above 32 bits would be truncated by jax.random.PRNGKey (two seeds, one run);
    # XLA's backend optimisation levels are 0 to 3
    "iterations": _NONNEGATIVE, "minutes": _POSITIVE, "seed": _Range(0, 2**32 - 1), "checkpoint_every": _COUNT,
    "max_vertices": _COUNT, "max_inputs": _COUNT, "xla_opt_level": _Range(0, 3),
}  # fmt: skip


@functools.cache
def _field_types() -> dict[str, Any]:
    """The type of every config field, by name (evaluated once: the annotations are strings)."""
    return typing.get_type_hints(AlphaZeroConfig)


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    if raw.lower() in ("true", "false"):  # Python's spelling as well as TOML's
        return raw.lower() == "true"
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Checks `value` against the field type `hint` (int, float, str, bool or ``X | None``)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"config {key} cannot be None")
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(getattr(k, "__name__", str(k)) for k in options)
    raise ConfigError(f"config {key} must be {names}, got {value!r}")
