"""Exact Jacobians by cross-country vertex elimination, jit-compiled.

    >>> from alphagrad import interpreter
    >>> J = interpreter.jacobian(f, "markowitz")(x)      # like jax.jacrev(f)(x)
    >>> D = interpreter.jacobian(f, "reverse", output="dense")(x)  # [output entries, input entries]
    >>> J = interpreter.unravel_jacobian(D, f, x)         # the same pytree, split outside jit
"""

from alphagrad.interpreter._jacobian import OUTPUTS, count_muls, graph_of, jacobian, unravel_jacobian

__all__ = ["jacobian", "unravel_jacobian", "count_muls", "graph_of", "OUTPUTS"]
