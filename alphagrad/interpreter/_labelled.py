"""Partials between arrays of rank 3 or more, by labelled axes: evaluation, products and sums.

A graph with such arrays describes their partials by `AxisTies` between the structural dims of
the two arrays (`graph._dims`; codes 12 on, `Graph.structures`). Their values are `Labelled`: the
structure, both ends' structural dims and the value array laid out as ``ties.value_axes`` says.
A product is one einsum with the letters `graph._structure.axis_product` gives, which performs
exactly the multiplications the graph's `LabelledCostModel` counts; a product with a dense partial
(code 1, whose far end need not be split) treats that end as one flat axis. A sum lays both terms
out as the coarser structure they share (`relayout`: broadcasting and one select, no full tensor);
a product with an index map (code 11) takes an elementwise labelled partial as its 2-D code (kept
lazy by `_structured`), any other one as a dense array (they multiply nothing).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.graph import (
    FIRST_EXTENDED_CODE,
    VALUELESS,
    AxisTies,
    axis_product,
    axis_ties,
    axis_ties_of,
    code_of_axis_ties,
)

__all__ = ["Labelled", "labelled_partial", "labelled_product", "densify_labelled", "relayout", "is_labelled",
           "as_index_map", "elementwise_code", "is_elementwise"]

DENSE = 1


class Labelled(NamedTuple):
    """The value of a partial d(v)/d(p) with a labelled structure.

    Attributes:
      ties: its `AxisTies` (ranks = the numbers of structural axes of v and p).
      out_dims, in_dims: the structural dims of v and p.
      values: the value array, ``[dims of ties.value_axes]``; None for a relabelling (no values).
    """

    ties: AxisTies
    out_dims: tuple[int, ...]
    in_dims: tuple[int, ...]
    values: Any


def is_labelled(value: Any) -> bool:
    return isinstance(value, Labelled)


def _value_shape(ties: AxisTies, out_dims, in_dims) -> tuple[int, ...]:
    return tuple((out_dims if side == "out" else in_dims)[k] for side, k in ties.value_axes)


def labelled_partial(of_operand: Callable, x: jax.Array, ties: AxisTies, out_dims: Sequence[int],
                     in_dims: Sequence[int], dtype) -> Labelled:
    """The partial of ``of_operand`` at x (an operand of `in_dims` entries) in the layout of `ties`.

    Seeds the operand with ones along its tied axes (a tie picks one entry of each) and a one-hot
    per entry of its untied axes, one JVP per seed (vmapped); reads the responses at index 0 along
    Kronecker-tied output axes (constant there).
    """
    out_dims, in_dims = tuple(out_dims), tuple(in_dims)
    if not ties.has_values:
        return Labelled(ties, out_dims, in_dims, None)
    tied_in = {i for _, i, _ in ties.ties}
    free_in = [k for k in range(len(in_dims)) if k not in tied_in]
    num_seeds = math.prod(in_dims[k] for k in free_in)
    shape = np.shape(x)

    def tangent_map(seed):
        _, out = jax.jvp(of_operand, (x,), (seed.reshape(shape).astype(jnp.result_type(x)),))
        return out.reshape(out_dims)

    if num_seeds == 1:
        responses = tangent_map(jnp.ones(in_dims, dtype))[None]
    else:
        onehots = np.eye(num_seeds, dtype=np.dtype(dtype)).reshape(num_seeds, *(in_dims[k] for k in free_in))
        expand = [in_dims[k] if k in free_in else 1 for k in range(len(in_dims))]
        seeds = jnp.broadcast_to(jnp.asarray(onehots).reshape(num_seeds, *expand), (num_seeds, *in_dims))
        responses = jax.vmap(tangent_map)(seeds)
    responses = responses.reshape(*(in_dims[k] for k in free_in), *out_dims)
    # Axes: the free operand axes, then the output's; constant (index 0) along Kronecker ties.
    constant_out = [o for o, _, kind in ties.ties if kind == "K"]
    index = tuple([slice(None)] * len(free_in) + [0 if k in constant_out else slice(None) for k in range(len(out_dims))])
    reduced = responses[index] if constant_out else responses
    if 0 in reduced.shape[len(free_in):] or 0 in responses.shape:
        reduced = jnp.zeros(reduced.shape, reduced.dtype)
    kept_out = [k for k in range(len(out_dims)) if k not in constant_out]
    order = [("in", k) for k in free_in] + [("out", k) for k in kept_out]
    permutation = [order.index(axis) for axis in ties.value_axes]
    values = reduced if permutation == sorted(permutation) else jnp.transpose(reduced, permutation)
    return Labelled(ties, out_dims, in_dims, values.astype(dtype))


def _spread(value: Labelled, target: AxisTies, dtype) -> jax.Array:
    """The value array of `value` laid out as `target`, a coarser structure (each of its ties is a
    tie of ``value.ties``, a Kronecker one only where that one is), by broadcasting and one select:
    a tie `target` drops becomes a masked diagonal, a constant (Kronecker) axis it keeps gets its
    entries. No multiplication: an einsum with identity matrices would multiply every entry of the
    result (XLA does not fold them), and through the full tensor a relayout cost its size.
    """
    ties, out_dims, in_dims = value.ties, value.out_dims, value.in_dims
    target_axes = target.value_axes
    shape = [(out_dims if side == "out" else in_dims)[k] for side, k in target_axes]
    if value.values is None:
        full = jnp.ones((), dtype)
        placed = [1] * len(shape)
    else:
        values = jnp.asarray(value.values, dtype)
        # Every value axis of `value` is one of target's (an out axis is Kronecker-tied in target
        # only where it is in `value`; an untied in axis stays untied).
        at = [target_axes.index(axis) for axis in ties.value_axes]
        if at != sorted(at):
            values = jnp.transpose(values, np.argsort(at))
        placed = [1] * len(shape)
        for axis, size in zip(at, np.shape(value.values)):
            placed[axis] = size
        full = values.reshape(placed)
    full = jnp.broadcast_to(full, shape)
    kept = set(target.ties)
    mask = None
    for o, i, kind in ties.ties:
        if (o, i, kind) in kept or (o, i, "D") in kept:
            continue
        # A tie the target drops: v's axis o and p's axis i are both among target's value axes.
        a, b = target_axes.index(("out", o)), target_axes.index(("in", i))
        if shape[a] == 1 and shape[b] == 1:
            continue
        mask_shape = [1] * len(shape)
        mask_shape[a], mask_shape[b] = shape[a], shape[b]
        eye = np.eye(shape[a], shape[b], dtype=bool).reshape(mask_shape)
        mask = eye if mask is None else mask & eye
    if mask is not None:
        full = jnp.where(mask, full, jnp.zeros((), dtype))
    return full


def _coarser(ties: AxisTies, target: AxisTies) -> bool:
    """Whether each tie of `target` is one of `ties` (a Kronecker one only where that one is)."""
    mine = set(ties.ties)
    return all((o, i, kind) in mine or (kind == "D" and (o, i, "K") in mine) for o, i, kind in target.ties)


def densify_labelled(value: Labelled, dtype) -> jax.Array:
    """The full tensor ``[out dims..., in dims...]`` (selection and broadcasting only)."""
    ties = value.ties
    return _spread(value, axis_ties(ties.out_rank, ties.in_rank, (), True), dtype)


def relayout(value: Labelled, ties: AxisTies, dtype) -> Labelled:
    """The same partial laid out as `ties`, a coarser structure (free: selection only)."""
    if value.ties == ties:
        return value
    if not _coarser(value.ties, ties):
        raise AssertionError(f"relayout of {value.ties} as {ties}, which is not coarser")
    return Labelled(ties, value.out_dims, value.in_dims, _spread(value, ties, dtype))


class _Operand(NamedTuple):
    ties: AxisTies
    out_dims: tuple[int, ...]
    in_dims: tuple[int, ...]
    values: Any  # None: a relabelling


def _operand(partial, v_dims: tuple[int, ...], side: str, dtype, dense_of: Callable) -> _Operand:
    """A partial (`Labelled`, a 2-D code, or dense) as a labelled operand; `side` "out" for
    v->c, "in" for p->v. A dense partial's far end is one flat axis (it is untied)."""
    value = partial.value
    if isinstance(value, Labelled):
        return _Operand(value.ties, value.out_dims, value.in_dims, value.values)
    if partial.code == DENSE:
        dense = dense_of(partial)
        if side == "out":
            far = math.prod(partial.out_shape)
            return _Operand(axis_ties(1, len(v_dims), (), True), (far,), v_dims, dense.reshape(far, *v_dims))
        far = math.prod(partial.in_shape)
        return _Operand(axis_ties(len(v_dims), 1, (), True), v_dims, (far,), dense.reshape(*v_dims, far))
    ties = axis_ties_of(partial.code)
    values = None if partial.code in VALUELESS else jnp.asarray(value, dtype)
    return _Operand(ties, tuple(partial.out_shape), tuple(partial.in_shape), values)


def labelled_product(out, inp, counter, dtype, planned: int, dense_of: Callable):
    """out(v->c) @ in(p->v) where one of them is labelled (neither an index map).

    Args:
      out, inp: `_structured.Partial`s.
      counter: the `MultiplicationCounter`; one multiplication per point of the joint index space.
      planned: the product's code in the elimination engine's plan: the name of a labelled result
        (`graph._structure.LabelledAlgebra` names them; the interpreter checks the structure).
      dense_of: Partial -> its dense [v1, v2, p1, p2] array (for code 1 operands).

    Returns:
      (code, value): `Labelled`, a 2-D code's value array, or a dense [c1, c2, p1, p2] array.
    """
    v_dims = inp.value.out_dims if isinstance(inp.value, Labelled) else out.value.in_dims
    a = _operand(out, v_dims, "out", dtype, dense_of)
    b = _operand(inp, v_dims, "in", dtype, dense_of)
    plan = axis_product(b.ties, a.ties)
    c_dims, p_dims = a.out_dims, b.in_dims
    sizes = {}
    for letters, operand, dims in ((plan.out_letters, a, (a.out_dims, a.in_dims)),
                                   (plan.in_letters, b, (b.out_dims, b.in_dims))):
        ties = operand.ties
        for letter, (side, k) in zip(letters, ties.value_axes):
            sizes[letter] = (dims[0] if side == "out" else dims[1])[k]
    if a.values is None and b.values is None:
        values = None
    elif a.values is None or b.values is None:
        # A relabelling times values: the values moved to the result's axes (a transpose, or a
        # diagonal where the relabelling ties two of their axes); no multiplication.
        letters, values = (plan.in_letters, b.values) if a.values is None else (plan.out_letters, a.values)
        values = jnp.einsum(f"{letters}->{plan.result_letters}", values)
    else:
        counter.add(1 if plan.unit else math.prod(sizes[c] for c in set(plan.out_letters) | set(plan.in_letters)))
        from alphagrad.interpreter._structured import contract  # here: _structured imports this module

        values = contract(plan.out_letters, jnp.asarray(a.values, dtype), plan.in_letters,
                          jnp.asarray(b.values, dtype), plan.result_letters, result_order=True)
    result = plan.result
    if result.has_values and not result.ties:
        code = DENSE
    elif (result.out_rank, result.in_rank) == (2, 2):
        code = code_of_axis_ties(result)
    else:
        code = planned
    if code == DENSE:  # no ties: the full tensor, laid out [c..., p...] = [c1, c2, p1, p2] flat
        c_shape, p_shape = out.out_shape, inp.in_shape
        return code, jnp.asarray(values, dtype).reshape(*c_shape, *p_shape)
    if code < FIRST_EXTENDED_CODE:  # ranks (2, 2): the 2-D code's layout is the same value array
        return code, values
    return code, Labelled(result, c_dims, p_dims, values)


def is_elementwise(value: Labelled) -> bool:
    """Whether a labelled partial ties each axis of v to the same axis of p (`elementwise_code`)."""
    ties = value.ties
    return (value.out_dims == value.in_dims and len(ties.ties) == len(value.out_dims)
            and all(o == i for o, i, _ in ties.ties))


def elementwise_code(value: Labelled, dtype) -> tuple[int, Any] | None:
    """A labelled partial that ties each axis of v to the same axis of p (an elementwise partial: a
    scalar, or a weight per entry, times the identity) as the 2-D code of the same partial between
    the normalised (v1, v2) and (p1, p2) = (v1, v2): (code, value), the value laid out as the code
    says (code 6: v's entries, to be reshaped to [v1, v2]); None for any other. The 2-D products with index maps keep such a partial lazy
    (`_structured.Placed`: the map's pattern times the weights) where the labelled one would be
    materialised whole ([v, v] entries) first."""
    ties = value.ties
    if not is_elementwise(value):
        return None
    if not ties.has_values:
        return -6, None  # the identity
    if all(kind == "K" for _, _, kind in ties.ties):
        return 10, jnp.asarray(value.values, dtype).reshape(())  # a scalar times the identity
    diagonal = axis_ties(ties.out_rank, ties.in_rank, [(k, k, "D") for k in range(ties.out_rank)], True)
    # Code 6 (diagonal on both normalised axes): the values [v1, v2], v's entries in row-major
    # order (structural dims split v's axes row-major), as the caller reshapes them.
    return 6, _spread(value, diagonal, dtype)


def as_index_map(value: Labelled, out_shape, in_shape):
    """A relabelling (no values) as the linear map it is: [p1, p2] -> [v1, v2] and back."""
    from alphagrad.interpreter._structured import IndexMap

    ties, out_dims, in_dims = value.ties, value.out_dims, value.in_dims
    letters = string.ascii_letters
    in_l = letters[: len(in_dims)]
    out_l = "".join(in_l[i] for _, i, _ in sorted(ties.ties))
    return IndexMap(
        lambda t: jnp.einsum(f"{in_l}->{out_l}", t.reshape(in_dims)).reshape(out_shape),
        lambda t: jnp.einsum(f"{out_l}->{in_l}", t.reshape(out_dims)).reshape(in_shape),
    )
