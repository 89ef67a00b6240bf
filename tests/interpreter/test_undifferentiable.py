"""Primitives JAX itself cannot differentiate are refused with an UnsupportedPrimitiveError naming
them (not a raw NotImplementedError or ValueError from deep inside); JVP rules that refuse tangents
for constant operands still give the Jacobian; mixed-precision blocks keep every digit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.errors import UnsupportedPrimitiveError

X = np.array([0.3, -1.2, 0.7, 2.0])


@pytest.mark.parametrize("name,f", [
    ("nextafter", lambda x: jnp.nextafter(x, 2.0) + x),
    ("scatter-mul", lambda x: x.at[np.array([0, 2, 2, 1])].mul(x)),
    ("pure_callback", lambda x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x) * x),
])
def test_undifferentiable_primitive_is_refused_by_name(name, f):
    with pytest.raises(UnsupportedPrimitiveError, match=name):
        interpreter.jacobian(f, "reverse")(jnp.asarray(X, jnp.float32))


def test_a_fused_vertex_is_refused_by_the_primitive_inside_it():
    # sqrtm's complex Schur decomposition is fused into one vertex (a span of complex arithmetic).
    def f(a):
        return jnp.real(jax.scipy.linalg.sqrtm(a)).sum()

    with pytest.raises(UnsupportedPrimitiveError, match=r"primitive 'schur' \(inside '"):
        interpreter.jacobian(f, "reverse")(jnp.eye(3, dtype=jnp.float32) * 2 + 0.1)


def test_a_fused_vertex_whose_failure_names_no_primitive_lists_what_it_calls():
    # JAX's refusal of eig's eigenvector derivatives names no primitive: the fused call's are listed.
    f = lambda a: jnp.linalg.eig(a)[1].real.sum(0)
    with pytest.raises(UnsupportedPrimitiveError, match=r"'closed_call' \(a call of eig, real\)"):
        interpreter.jacobian(f, "reverse")(jnp.array([[2.0, 0.3], [0.1, 1.0]], jnp.float32))


def test_rules_without_tangents_for_constant_operands():
    # polygamma's order and betainc's a, b have no JVP: JAX refuses even a zero tangent for them.
    from jax.scipy import special

    def f(x):
        return special.polygamma(1, jnp.exp(x)) + special.betainc(2.0, 3.0, jax.nn.sigmoid(x))

    x = jnp.asarray(X, jnp.float32)
    np.testing.assert_allclose(interpreter.jacobian(f, "forward")(x), jax.jacfwd(f)(x), rtol=1e-5, atol=1e-6)


def test_float32_parameters_of_a_float64_model_give_float64_blocks():
    with jax.enable_x64(True):
        w = jnp.asarray([0.3, 0.7, 1.1], jnp.float32)
        x = jnp.asarray([0.5, 1.3, 2.2], jnp.float64)

        def f(w, x):
            return jnp.sin(w * x) * x

        ours = interpreter.jacobian(f, "reverse", argnums=(0, 1))(w, x)
        expected = jax.jacfwd(f, argnums=(0, 1))(w, x)
        for a, b in zip(ours, expected):
            assert a.dtype == b.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-12)
