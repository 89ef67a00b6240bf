"""The typed configuration of the AlphaZero agent, with overrides from TOML files and ``key=value``."""

from __future__ import annotations

import dataclasses
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
    size on an accelerator.

    Network (`PolicyValueNet`):
      embed_dim: width D of the vertex tokens.
      edge_dim: width of the per-edge messages aggregated into each token.
      num_layers: masked transformer layers.
      num_heads: attention heads (``embed_dim`` must be divisible by it).

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
        then cosine decay to ``learning_rate * end_lr_factor`` at ``schedule_iterations``
        (None: ``iterations``, or 1000 when only a time limit is given).
      weight_decay: decoupled weight decay (AdamW) on the weight matrices (not biases, norms).
      max_grad_norm: gradient clipping by global norm (before Adam).
      value_weight: weight of the value loss beside the policy cross-entropy.

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
    # run control
    iterations: int | None = 100
    minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 10
    max_vertices: int | None = None
    max_inputs: int | None = None
    xla_opt_level: int | None = None

    def __post_init__(self):
        positive = [
            "embed_dim", "edge_dim", "num_layers", "num_heads", "num_simulations", "max_num_considered_actions",
            "num_games", "replay_size", "batch_size", "checkpoint_every",
        ]  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"config {name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"config embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.value_transform not in ("symlog", "identity"):
            raise ConfigError(f"config value_transform must be 'symlog' or 'identity', got {self.value_transform!r}")
        if self.iterations is None and self.minutes is None:
            raise ConfigError("set iterations or minutes (or both); otherwise the run never stops")
        if self.iterations is not None and self.iterations < 0:
            raise ConfigError(f"config iterations must be >= 0, got {self.iterations}")
        for name in ("updates_per_iteration", "min_replay", "warmup_iterations", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config {name} must be >= 0, got {getattr(self, name)}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def schedule_length(self) -> int:
        """Iterations over which the learning rate decays."""
        if self.schedule_iterations is not None:
            return max(1, self.schedule_iterations)
        return max(1, self.iterations) if self.iterations is not None else 1000

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
        """A copy with `changes` applied (type-checked; ints are accepted for float fields)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        hints = typing.get_type_hints(type(self))
        clean = {}
        for key, value in changes.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
            clean[key] = _coerce(key, value, hints[key])
        return dataclasses.replace(self, **clean)

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


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
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
