"""`AlphaZeroConfig` checks every field's type and range on construction, `replace`, ``--set`` and
TOML files (issue 14 item 11): a `ConfigError` names the key, the bad value and the allowed values."""

from __future__ import annotations

import math

import pytest

from alphagrad.agents.alphazero import AlphaZeroConfig, ConfigError

NAN, INF = math.nan, math.inf

#: (key, a value out of range, the allowed values as the message says them), for every numeric key.
BAD = [
    ("embed_dim", 0, "an integer >= 1"),
    ("edge_dim", -1, "an integer >= 1"),
    ("num_layers", 0, "an integer >= 1"),
    ("num_heads", 0, "an integer >= 1"),
    ("num_simulations", 0, "an integer >= 1"),
    ("max_num_considered_actions", 0, "an integer >= 1"),
    ("gumbel_scale", -0.5, "a finite number >= 0"),
    ("gumbel_scale", NAN, "a finite number >= 0"),
    ("value_scale", 0.0, "a finite number > 0"),
    ("maxvisit_init", INF, "a finite number >= 0"),
    ("num_games", 0, "an integer >= 1"),
    ("replay_size", 0, "an integer >= 1"),
    ("batch_size", 0, "an integer >= 1"),
    ("updates_per_iteration", -1, "an integer >= 0"),
    ("min_replay", -1, "an integer >= 0"),
    ("learning_rate", 0.0, "a finite number > 0"),
    ("learning_rate", -1e-3, "a finite number > 0"),
    ("learning_rate", NAN, "a finite number > 0"),
    ("learning_rate", INF, "a finite number > 0"),
    ("warmup_iterations", -1, "an integer >= 0"),
    ("schedule_iterations", 0, "an integer >= 1"),
    ("end_lr_factor", 1.5, "a finite number in [0, 1]"),
    ("weight_decay", -1e-4, "a finite number >= 0"),
    ("weight_decay", NAN, "a finite number >= 0"),
    ("weight_decay", INF, "a finite number >= 0"),
    ("max_grad_norm", 0.0, "a finite number > 0"),
    ("max_grad_norm", NAN, "a finite number > 0"),
    ("max_grad_norm", INF, "a finite number > 0"),
    ("value_weight", -1.0, "a finite number >= 0"),
    ("demo_seconds", NAN, "a finite number >= 0"),
    ("demo_fraction", 1.1, "a finite number in [0, 1]"),
    ("demo_max_ratio", 0.5, "a finite number >= 1"),
    ("demo_max_ratio", NAN, "a finite number >= 1"),
    ("demo_smoothing", -0.1, "a finite number in [0, 1]"),
    ("demo_pretrain_steps", -1, "an integer >= 0"),
    ("num_policy_games", -1, "an integer >= 0"),
    ("policy_temperature", 0.0, "a finite number > 0"),
    ("policy_temperature", NAN, "a finite number > 0"),
    ("iterations", -1, "an integer >= 0"),
    ("minutes", 0.0, "a finite number > 0"),
    ("minutes", -1.0, "a finite number > 0"),
    ("minutes", NAN, "a finite number > 0"),
    ("minutes", INF, "a finite number > 0"),
    ("seed", -1, "an integer in [0, 4294967295]"),
    ("seed", 2**40, "an integer in [0, 4294967295]"),
    ("checkpoint_every", 0, "an integer >= 1"),
    ("max_vertices", 0, "an integer >= 1"),
    ("max_inputs", 0, "an integer >= 1"),
    ("xla_opt_level", 4, "an integer in [0, 3]"),
]


@pytest.mark.parametrize(("key", "value", "allowed"), BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_every_numeric_key_is_range_checked(key, value, allowed):
    message = f"config {key} must be {allowed}, got {value!r}"
    with pytest.raises(ConfigError) as on_init:
        AlphaZeroConfig(**{key: value})
    with pytest.raises(ConfigError) as on_replace:
        AlphaZeroConfig().replace(**{key: value})
    for info in (on_init, on_replace):
        # The value is shown as stored: an int given for a float field is a float by then.
        shown = float(value) if isinstance(value, int) and "integer" not in allowed else value
        assert str(info.value) == message.replace(repr(value), repr(shown))


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "0", "-1e-3"])
def test_set_and_toml_values_are_range_checked(raw, tmp_path):
    with pytest.raises(ConfigError, match=r"config learning_rate must be a finite number > 0, got"):
        AlphaZeroConfig().with_overrides([f"learning_rate={raw}"])
    path = tmp_path / "az.toml"
    path.write_text(f"[alphazero]\nmax_grad_norm = {raw}\n")
    with pytest.raises(ConfigError, match=r"config max_grad_norm must be a finite number > 0, got"):
        AlphaZeroConfig.from_toml(str(path))


def test_the_boundaries_themselves_are_allowed():
    config = AlphaZeroConfig(weight_decay=0, gumbel_scale=0.0, end_lr_factor=1, demo_fraction=0.0, demo_smoothing=1.0,
                             demo_max_ratio=1, min_replay=0, seed=2**32 - 1, xla_opt_level=0, iterations=0,
                             minutes=1e-3)  # fmt: skip
    assert config.weight_decay == 0.0 and isinstance(config.weight_decay, float) and config.minutes == 1e-3


def test_constructor_checks_types_like_replace():
    with pytest.raises(ConfigError, match="config learning_rate must be float, got '1e-3'"):
        AlphaZeroConfig(learning_rate="1e-3")
    with pytest.raises(ConfigError, match="config num_games must be int, got True"):
        AlphaZeroConfig(num_games=True)
    assert AlphaZeroConfig(learning_rate=1).learning_rate == 1.0


def test_min_replay_above_replay_size_is_refused():
    with pytest.raises(ConfigError, match=r"config min_replay \(2000\) must be <= replay_size \(1000\)"):
        AlphaZeroConfig(replay_size=1000, min_replay=2000)
