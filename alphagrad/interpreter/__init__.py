"""Exact Jacobians by cross-country vertex elimination, jit-compiled.

    >>> from alphagrad import interpreter
    >>> J = interpreter.jacobian(f, "markowitz")(x)      # like jax.jacrev(f)(x)
"""

from alphagrad.interpreter._jacobian import count_muls, graph_of, jacobian

__all__ = ["jacobian", "count_muls", "graph_of"]
