"""Exception hierarchy: every error alphagrad raises on bad input derives from `AlphagradError`."""

from __future__ import annotations

__all__ = [
    "AlphagradError",
    "TraceError",
    "UnsupportedPrimitiveError",
    "OrderError",
    "OrderFileError",
    "GraphMismatchError",
    "AuxOutputError",
]


class AlphagradError(Exception):
    """Base class of all errors that alphagrad raises on bad input."""


class TraceError(AlphagradError):
    """A function could not be turned into an elimination graph."""


class UnsupportedPrimitiveError(TraceError):
    """An equation the graph builder cannot represent: today, arrays of 3 or more dimensions (every
    primitive on arrays of rank <= 2 is accepted, with dense partials where it has no structural rule)."""


class OrderError(AlphagradError, ValueError):
    """An elimination order is not a permutation of the graph's intermediate vertices."""


class OrderFileError(AlphagradError):
    """An order file is malformed or cannot be read."""


class GraphMismatchError(OrderFileError):
    """An order file was made for a different graph than the one it is applied to."""


class AuxOutputError(AlphagradError, TypeError):
    """A function differentiated with ``has_aux=True`` did not return a pair ``(output, aux)``
    (a TypeError too, as in ``jax.jacrev``)."""
