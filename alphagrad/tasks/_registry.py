"""The task registry: a name maps to a factory that builds a `Task`."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from alphagrad.errors import AlphagradError

__all__ = ["Task", "register", "get", "names"]


class Task(NamedTuple):
    """A benchmark function and the example inputs it is traced with.

    Attributes:
      fn: a JAX-traceable function; ``fn(*args)`` returns a pytree of arrays.
      args: example positional arguments (pytrees of arrays or Python scalars).
      name: the registry name.
      description: one line saying what the function computes.
      argnums: the positional arguments that are differentiated (int or tuple, as
        ``jax.jacrev`` takes them); None: every argument (all registered tasks).
      reference_jacobian: the JAX transform that gives the reference Jacobian, ``"jacrev"``,
        or ``"jacfwd"`` where reverse mode cannot differentiate ``fn`` (a while loop whose trip
        count is known only at run time; see `corpus`).
    """

    fn: Callable[..., Any]
    args: tuple
    name: str = ""
    description: str = ""
    argnums: int | tuple[int, ...] | None = None
    reference_jacobian: str = "jacrev"


_REGISTRY: dict[str, Callable[[], Task]] = {}


def register(name: str, factory: Callable[[], Task]) -> None:
    """Registers `factory` (called lazily, with no arguments) under `name`."""
    if name in _REGISTRY:
        raise AlphagradError(f"task {name!r} is already registered")
    _REGISTRY[name] = factory


def names() -> list[str]:
    """Returns the registered task names, closed-form tasks first, in registration order."""
    return list(_REGISTRY)


def get(name: str) -> Task:
    """Returns the task registered under `name`.

    Raises:
      AlphagradError: no such task; the message lists the known names.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise AlphagradError(
            f"unknown task {name!r}; known tasks: {', '.join(names())}"
        ) from None
    return factory()
