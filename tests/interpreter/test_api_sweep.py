"""Regressions found by sweeping JAX's public API through `interpreter.jacobian` (helper sweep15,
/work/notes/s15/api_sweep.py): each case is exact in every order, or refused with a clear message,
and the interpreter's multiplications are the graph's cost."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.special as sp
import numpy as np
import pytest

from alphagrad import graph, interpreter
from alphagrad.errors import TraceError


def test_a_custom_jvp_rule_closing_over_a_traced_argument_is_refused_clearly():
    # expn's n is a nondiff_argnums array: its JVP rule keeps the trace's tracer of n, which
    # JAX cannot differentiate outside that trace (it raised UnexpectedTracerError).
    with jax.enable_x64(True):
        n, x = jnp.array([1.5, 2.0, 2.7]), jnp.array([1.3, 1.9, 2.2])

        def f(n, x):
            return sp.expn(n, x) * x

        for argnums in ((0, 1), 1):
            with pytest.raises(TraceError, match="closes over a traced array"):
                interpreter.jacobian(f, "reverse", argnums=argnums)(n, x)

        # With n a constant the rule closes over no tracer: traced as before.
        assert interpreter.graph_of(lambda x: f(n, x), x).intermediates


def test_custom_jvp_rules_without_traced_closures_are_not_refused():
    # relu and softmax with a traced mask: custom JVP rules closing over no tracer.
    with jax.enable_x64(True):
        x = jnp.array([[0.3, -0.7, 0.2, 0.9], [0.1, 0.5, -0.8, 0.4]])

        def f(x):
            return jax.nn.relu(x) * jax.nn.softmax(x, where=x > -0.5)

        g = interpreter.graph_of(f, x)
        assert "custom_jvp_call" in [v.primitive for v in g.vertices]


def test_a_convolution_without_spatial_axes_is_dense():
    # jax.scipy.signal.convolve of 0-d arrays is a conv_general_dilated on [1, 1] arrays (rank 2):
    # it had no rule under either model (KeyError).
    with jax.enable_x64(True):
        a, b = jnp.float64(0.7), jnp.float64(-0.4)

        def f(a, b):
            return jnp.sin(jax.scipy.signal.convolve(a * a, b))

        expected = jax.jacfwd(f, argnums=(0, 1))(a, b)
        g = interpreter.graph_of(f, a, b, argnums=(0, 1))
        assert "conv_general_dilated" in [v.primitive for v in g.vertices]
        for order in ("forward", "reverse"):
            actual = interpreter.jacobian(f, order, argnums=(0, 1))(a, b)
            for x, y in zip(actual, expected):
                np.testing.assert_allclose(x, y, rtol=1e-12)
            assert interpreter.count_muls(f, order, a, b, argnums=(0, 1)) == graph.cost(g, order)
        assert graph.trace(f, a, b, argnums=(0, 1), cost_model="alphagrad-2024").edges
