"""A case of helper corpus18's held-out rehearsal (session 18), fixed: typed PRNG keys get float0 blocks.

A typed PRNG key (``jax.random.key``, dtype ``key<fry>``) among the leaves of a differentiated
argument (a state dict holding the weights and the key, as training code keeps it) made
``interpreter._jacobian._block_dtype`` fail with a bare ``TypeError: Cannot determine dtype of key<fry>``.
jax.jacfwd and jax.jacrev refuse it too, so this counts against no Jacobian; but alphagrad's
refusals should be an `alphagrad.errors` exception that names the leaf, or the key's block should
be float0 as for integer leaves (a raw ``jax.random.PRNGKey``, a uint32 array, already gets float0).
Fixed the second way (`_jacobian._block_dtype`: float0, the dtype of a key's tangent). Repro and
diagnosis: /work/notes/corpus18_report.md.
"""

import jax
import jax.numpy as jnp
import pytest

from alphagrad import interpreter
from alphagrad.errors import AlphagradError


def _noisy_layer(state, x):
    noise = jax.random.normal(state["key"], (x.shape[0], 2))
    return jnp.tanh(x @ state["w"]) + 0.1 * noise


def test_a_typed_key_in_a_differentiated_argument_is_refused_clearly_or_gets_a_float0_block():
    state = {"key": jax.random.key(1), "w": jnp.ones((3, 2))}
    x = jnp.ones((4, 3))
    try:
        jac = interpreter.jacobian(_noisy_layer, "reverse")(state, x)
    except AlphagradError as error:
        assert "key" in str(error)
        return
    assert jac["key"].dtype == jax.dtypes.float0
    assert jnp.allclose(jac["w"], jax.jacfwd(lambda w: _noisy_layer({**state, "w": w}, x))(state["w"]))


def test_a_raw_uint32_key_in_a_differentiated_argument_gets_a_float0_block():
    # The control: the legacy key (a uint32 array) is an integer leaf, with a float0 block.
    state = {"key": jax.random.PRNGKey(1), "w": jnp.ones((3, 2))}
    x = jnp.ones((4, 3))
    jac = interpreter.jacobian(_noisy_layer, "reverse")(state, x)
    assert jac["key"].dtype == jax.dtypes.float0
    assert jnp.allclose(jac["w"], jax.jacfwd(lambda w: _noisy_layer({**state, "w": w}, x))(state["w"]))
