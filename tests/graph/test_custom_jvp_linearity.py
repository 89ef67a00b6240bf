"""`_rules.jvp_rule_nonlinearity`: a custom JVP rule that applies a nonlinear operation to a tangent
is refused at the boundary (`graph.trace`); rules linear in the tangent, whatever they compute on
the primal values, and JAX's own custom_jvp functions are not."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from alphagrad import graph
from alphagrad.errors import UnsupportedPrimitiveError
from alphagrad.graph import _rules


def _with_rule(tangent_out):
    """sin(x) whose custom JVP rule returns ``tangent_out(x, t)``."""
    @jax.custom_jvp
    def f(x):
        return jnp.sin(x)

    @f.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        return jnp.sin(x), tangent_out(x, t)

    return f


NONLINEAR = {
    "abs": (lambda x, t: jnp.cos(x) * jnp.abs(t), "abs"),
    "square": (lambda x, t: t * t, "mul"),
    "normalised": (lambda x, t: t / jnp.linalg.norm(t), "mul"),  # the norm's t * t comes first
    "branch_on_tangent": (lambda x, t: jnp.where(t > 0, t, 0.5 * t), "gt"),
    "clip_inside_a_jit": (lambda x, t: jax.jit(lambda u: jnp.clip(u, -1.0, 1.0))(t), "max"),
    "tangent_indexes": (lambda x, t: t[jnp.argmax(t)] * jnp.ones_like(t), "argmax"),
    "exp": (lambda x, t: jnp.exp(t) - 1.0, "exp"),
}
LINEAR = {
    "scaled": lambda x, t: jnp.cos(x) * t,
    "primal_branch": lambda x, t: jnp.where(jnp.abs(x) > 0.5, jnp.clip(jnp.cos(x), -0.9, 0.9) * t, t),
    "moves_and_sums": lambda x, t: jnp.cumsum(t[::-1])[::-1] + jnp.sum(t) * jnp.tanh(x),
    "matrix_product": lambda x, t: jnp.outer(x, x) @ t / (1.0 + jnp.dot(x, x)),
    "divided_by_primal": lambda x, t: t / (2.0 + jnp.cos(x)),
    "loop": lambda x, t: jax.lax.fori_loop(0, 3, lambda i, u: 0.5 * u + t, t),
}
X = jnp.array([0.3, -0.7, 1.2])


def _rule_params(f):
    eqn = next(e for e in jax.make_jaxpr(f)(X).eqns if e.primitive.name == "custom_jvp_call")
    return eqn.params, len(eqn.invars)


@pytest.mark.parametrize("name", sorted(NONLINEAR))
def test_a_rule_nonlinear_in_its_tangent_is_named_and_refused(name):
    tangent_out, culprit = NONLINEAR[name]
    f = _with_rule(tangent_out)
    assert _rules.jvp_rule_nonlinearity(*_rule_params(f)) == culprit
    with pytest.raises(UnsupportedPrimitiveError, match=f"not linear in its tangent: it applies '{culprit}'"):
        graph.trace(lambda x: f(x) * 2.0, X)


@pytest.mark.parametrize("name", sorted(LINEAR))
def test_a_rule_linear_in_its_tangent_is_followed(name):
    f = _with_rule(LINEAR[name])
    assert _rules.jvp_rule_nonlinearity(*_rule_params(f)) is None
    graph.trace(lambda x: f(x) * 2.0, X)


LIBRARY = {
    "relu": jax.nn.relu, "xlogy": lambda v: jax.scipy.special.xlogy(v, v + 1.0), "sinc": jnp.sinc,
    "logaddexp": lambda v: jnp.logaddexp(v, 2 * v), "pinv": lambda v: jnp.linalg.pinv(jnp.outer(v, v) + jnp.eye(3)),
}


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_jax_library_rules_are_linear(name):
    closed = jax.make_jaxpr(LIBRARY[name])(X)
    rules = []

    def collect(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "custom_jvp_call":
                rules.append(eqn)
            for sub in eqn.params.values():
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    collect(inner)

    collect(closed.jaxpr)
    assert rules, name
    assert all(_rules.jvp_rule_nonlinearity(e.params, len(e.invars)) is None for e in rules)
