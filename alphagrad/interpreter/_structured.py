"""Structured partial Jacobians as JAX values, and their exact products.

Every edge value is a `Partial`: its structure code, its normalised 2-D shapes, and either a
compact value array laid out as `structure_of(code).value_axes` says, nothing (an identity), or an
`IndexMap` (code 11, a linear map that only moves and adds data). Products follow the
`product_plan` of the structure algebra, so the multiplications they perform are exactly those the
`exact` cost model counts; `MultiplicationCounter` records them from the operands' actual shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.graph import INDEX_MAP, VALUELESS, product_plan, structure_of

__all__ = [
    "IndexMap", "Partial", "MultiplicationCounter", "multiply", "add", "densify", "convert", "extract", "read_constant",
    "contract",
]

Shape2D = tuple[int, int]


class IndexMap(NamedTuple):
    """A linear map from p-shaped to v-shaped arrays (normalised 2-D shapes) that moves data only.

    Attributes:
      apply: [p1, p2] -> [v1, v2], linear.
      transpose: [v1, v2] -> [p1, p2], its adjoint.
    """

    apply: Callable[[jax.Array], jax.Array]
    transpose: Callable[[jax.Array], jax.Array]


class Partial(NamedTuple):
    """A structured partial d(v)/d(p).

    Attributes:
      code: structure code.
      out_shape: v's normalised shape (v1, v2).
      in_shape: p's normalised shape (p1, p2).
      value: the value array (layout given by the code), None for an identity, or an IndexMap.
    """

    code: int
    out_shape: Shape2D
    in_shape: Shape2D
    value: Any


class MultiplicationCounter:
    """Counts the scalar multiplications the products perform (from their operands' shapes).

    Attributes:
      total: those of the elimination's products (``graph.cost``).
      loops: those of the partials of loops kept as loops (``graph._loops.partial_muls``).
    """

    def __init__(self):
        self.total = 0
        self.loops = 0

    def add(self, count: int) -> None:
        self.total += int(count)


def _sizes(shape_c: Shape2D, shape_v: Shape2D, shape_p: Shape2D) -> dict[str, int]:
    return {"a": shape_c[0], "b": shape_c[1], "x": shape_v[0], "y": shape_v[1], "m": shape_p[0], "n": shape_p[1]}


def _position_sizes(out_shape: Shape2D, in_shape: Shape2D) -> dict[int, int]:
    return {1: out_shape[0], 2: out_shape[1], 3: in_shape[0], 4: in_shape[1]}


def _identity_map(code: int, out_shape: Shape2D, in_shape: Shape2D) -> IndexMap:
    if code == -7:
        return IndexMap(lambda t: t.T.reshape(out_shape), lambda t: t.T.reshape(in_shape))
    return IndexMap(lambda t: t.reshape(out_shape), lambda t: t.reshape(in_shape))


def densify(partial: Partial, dtype) -> jax.Array:
    """The full [v1, v2, p1, p2] tensor, built by selection and broadcasting (no multiplications)."""
    (o1, o2), (p1, p2) = partial.out_shape, partial.in_shape
    if partial.code == INDEX_MAP:
        basis = jnp.eye(p1 * p2, dtype=dtype).reshape(p1 * p2, p1, p2)
        columns = jax.vmap(partial.value.apply)(basis)  # [p1*p2, o1, o2]
        return jnp.moveaxis(columns.reshape(p1, p2, o1, o2), (0, 1), (2, 3))
    structure = structure_of(partial.code)
    sizes = _position_sizes(partial.out_shape, partial.in_shape)
    if partial.value is None:
        values = jnp.ones((), dtype)
    else:
        values = jnp.asarray(partial.value, dtype)
    # Put the value axes at their positions, size-1 elsewhere, then broadcast and mask the ties.
    shape = [1, 1, 1, 1]
    for axis, pos in enumerate(structure.value_axes):
        shape[pos - 1] = values.shape[axis]
    full = values.reshape(shape)
    if tuple(shape) != (o1, o2, p1, p2):
        full = jnp.broadcast_to(full, (o1, o2, p1, p2))
    for a, b, _ in structure.ties:
        if sizes[a] == 1 and sizes[b] == 1:
            continue  # a 1x1 diagonal masks nothing
        eye = jnp.eye(sizes[a], sizes[b], dtype=bool)
        mask_shape = [1, 1, 1, 1]
        mask_shape[a - 1], mask_shape[b - 1] = sizes[a], sizes[b]
        full = jnp.where(eye.reshape(mask_shape), full, jnp.zeros((), dtype))
    return full


def read_constant(x: jax.Array, axes) -> jax.Array:
    """`x` read at index 0 along `axes`, along which it is constant (the sides of Kronecker ties).

    An empty one of these axes leaves no entry to read, but then the partial's tensor has that
    zero-size axis and no entries at all: its constant is taken as zero, which keeps every product
    through it exact (the sum over an empty axis is zero; a product with an empty axis is empty).
    """
    axes = sorted(set(axes))
    if not axes:
        return x
    kept = [n for i, n in enumerate(x.shape) if i not in axes]
    if any(x.shape[i] == 0 for i in axes):
        return jnp.zeros(kept, x.dtype)
    return x[tuple(0 if i in axes else slice(None) for i in range(x.ndim))]


def extract(dense: jax.Array, code: int) -> Any:
    """The value array of `code` read off a dense [v1, v2, p1, p2] tensor that has its structure."""
    if code in VALUELESS:
        return None
    structure = structure_of(code)
    letters = ["i", "j", "k", "l"]
    for a, b, _ in structure.ties:
        letters[b - 1] = letters[a - 1]
    # A Kronecker tie is a constant times a delta: read it at index 0 of both its positions.
    constant = {pos for a, b, kind in structure.ties if kind == "K" for pos in (a, b)}
    x = read_constant(dense, [pos - 1 for pos in constant])
    kept_letters = [letters[pos - 1] for pos in (1, 2, 3, 4) if pos not in constant]
    out = "".join(letters[pos - 1] for pos in structure.value_axes)
    return jnp.einsum(f"{''.join(kept_letters)}->{out}", x)


def convert(partial: Partial, code: int, dtype) -> Partial:
    """The same partial laid out as a less structured `code` (free: selection only)."""
    if partial.code == code:
        return partial
    dense = densify(partial, dtype)
    if code == 1:
        return Partial(1, partial.out_shape, partial.in_shape, dense)
    return Partial(code, partial.out_shape, partial.in_shape, extract(dense, code))


def add(old: Partial, new: Partial, code: int, dtype) -> Partial:
    """old + new, laid out as `code` (the cost model's sum code). Additions are free."""
    a, b = convert(old, code, dtype), convert(new, code, dtype)
    if code in VALUELESS:
        raise AssertionError("a sum always carries values")
    return Partial(code, old.out_shape, old.in_shape, a.value + b.value)


def _compose(first: IndexMap, second: IndexMap) -> IndexMap:
    """second after first."""
    return IndexMap(lambda t: second.apply(first.apply(t)), lambda t: first.transpose(second.transpose(t)))


def _paired(code: int) -> dict[int, int] | None:
    """For a code whose ties pair every v entry with one p entry (a permutation, here an identity or
    a transpose, times a weight per entry): v position -> its tied p position; else None."""
    if code == INDEX_MAP or code == 0:
        return None
    partner = {a: b for a, b, _ in structure_of(code).ties}
    return partner if set(partner) == {1, 2} else None


def _permutation_code(code: int) -> int:
    """The value-less code of the permutation a `_paired` code weights: identity or transpose."""
    return -6 if _paired(code)[1] == 3 else -7


def _weights(partial: Partial, side: str, dtype) -> jax.Array:
    """The weights of a `_paired` partial as an array broadcastable to its v shape (`side` "out") or
    its p shape ("in"): value axes sit at their tied positions, Kronecker ties are size 1."""
    partner = _paired(partial.code)
    axes = structure_of(partial.code).value_axes  # v positions (1, 2): every p position is tied
    values = jnp.asarray(partial.value, dtype)
    at = [pos - 1 if side == "out" else partner[pos] - 3 for pos in axes]
    shape = [1, 1]
    for axis, target in enumerate(at):
        shape[target] = values.shape[axis]
    if at != sorted(at):
        values = jnp.transpose(values, np.argsort(at))
    return values.reshape(shape)


def _place(pattern: jax.Array, weights: jax.Array) -> jax.Array:
    """pattern * weights where the pattern (a map's matrix: small non-negative integers, mostly
    ones, by which a float multiplies exactly) is nonzero, exactly zero elsewhere (an infinite or
    NaN weight stays only where the map puts it, as when the map moves it)."""
    return jnp.where(pattern == 0, jnp.zeros((), pattern.dtype), pattern * weights)


def _apply_on_v(out_map: IndexMap, dense_in: jax.Array) -> jax.Array:
    """(map v->c) @ dense [v1, v2, p1, p2] -> [c1, c2, p1, p2]."""
    v1, v2, p1, p2 = dense_in.shape
    columns = jnp.moveaxis(dense_in, (2, 3), (0, 1)).reshape(p1 * p2, v1, v2)
    mapped = jax.vmap(out_map.apply)(columns)  # [p1*p2, c1, c2]
    c1, c2 = mapped.shape[1:]
    return jnp.moveaxis(mapped.reshape(p1, p2, c1, c2), (0, 1), (2, 3))


def _apply_on_p(dense_out: jax.Array, in_map: IndexMap) -> jax.Array:
    """dense [c1, c2, v1, v2] @ (map p->v) -> [c1, c2, p1, p2]."""
    c1, c2, v1, v2 = dense_out.shape
    rows = dense_out.reshape(c1 * c2, v1, v2)
    pulled = jax.vmap(in_map.transpose)(rows)  # [c1*c2, p1, p2]
    return pulled.reshape(c1, c2, *pulled.shape[1:])


#: Matrix products (each operand has a kept index of its own) whose summed indices have at most
#: UNROLL_CONTRACTION joint entries and whose joint index space has at most UNROLL_JOINT points are
#: written as a sum of broadcast products (one per summed entry), which XLA fuses into one
#: elementwise loop. Under vmap a dot_general of such small matrices becomes a batched matmul, which
#: XLA:CPU runs 3-75x slower at batch 32,768 ([27,3]x[3,3]: 17 ms against 0.8 ms; [4,4]x[4,4]: 25
#: against 0.33 ms; [16,16]x[16,16]: 49 against 16 ms; 2 CPU cores). Larger ones keep dot_general
#: (one BLAS call beats an elementwise loop there), and so do matrix-vector and dot products: alone
#: they are only up to 2x slower as a dot_general, and a dot_general's operands are computed once,
#: where a fused sum lets XLA recompute an expensive operand in every consumer (RoeFlux_3d's
#: [3]-vector dot products unrolled: 1.3x slower at batch 32,768). Same multiplications; the
#: additions run in another order. Capped at 9 summed entries (3x3 matrices contracted over both
#: indices, as eigh's and cholesky's rules do): at 64 the Encoder task's test (jacfwd and five
#: orders in one jit) compiled 2.5x slower than before the rewrite (36 against 14 s), at 16 38 s,
#: at 9 24 s.
UNROLL_CONTRACTION = 9
UNROLL_JOINT = 2**14


def _unrolled_contract(letters_a: str, a: jax.Array, letters_b: str, b: jax.Array, result: str,
                       size: dict[str, int], summed: list[str]) -> jax.Array:
    """`_contract` as sum over the summed indices' entries k of a[..k..] * b[..k..]."""
    kept = [c for c in dict.fromkeys(letters_a + letters_b) if c in result and size[c] != 1]
    order = summed + kept  # summed indices first, then the kept ones in a fixed order
    count = math.prod(size[c] for c in summed)

    def arrange(x, letters):
        """x with the axes of `order` ([summed entries, *kept], size 1 where x lacks a kept one)."""
        x = x.reshape([n for c, n in zip(letters, x.shape) if size[c] != 1])
        mine = "".join(c for c in letters if size[c] != 1)
        x = x.reshape([size[c] for c in mine])
        ordered = [c for c in order if c in mine]
        if list(mine) != ordered:
            x = jnp.transpose(x, [mine.index(c) for c in ordered])
        x = x.reshape([size[c] if c in mine else 1 for c in order])
        x = jnp.broadcast_to(x, [size[c] for c in summed] + list(x.shape[len(summed):]))
        return x.reshape(count, *x.shape[len(summed):])

    if count == 0:  # an empty sum
        return jnp.zeros([size[c] for c in result], jnp.result_type(a, b))
    xa, xb = arrange(a, letters_a), arrange(b, letters_b)
    total = xa[0] * xb[0]
    for k in range(1, count):
        total = total + xa[k] * xb[k]
    total = jnp.broadcast_to(total, [size[c] for c in kept])
    target = [c for c in result if size[c] != 1]
    if kept != target:
        total = jnp.transpose(total, [kept.index(c) for c in target])
    return total.reshape([size[c] for c in result])


def contract(letters_a: str, a: jax.Array, letters_b: str, b: jax.Array, result: str) -> jax.Array:
    """einsum(a, b) as one broadcast multiply over the joint index space, then a sum.

    Exactly one multiplication per point of the joint index space, which is what the cost model
    counts. For the small factors of elimination graphs (and under vmap, with a leading batch
    axis) XLA fuses this into elementwise loops, where a batched dot_general of tiny matrices is
    slow. Size-1 indices are dropped first so that scalar graphs become plain multiplies.
    """
    size = {c: n for letters, x in ((letters_a, a), (letters_b, b)) for c, n in zip(letters, x.shape)}
    live = "".join(c for c in dict.fromkeys(letters_a + letters_b) if size[c] != 1)

    def spread(x, letters):
        x = x.reshape([n for c, n in zip(letters, x.shape) if size[c] != 1])
        mine = "".join(c for c in letters if size[c] != 1)
        ordered = "".join(c for c in live if c in mine)
        if mine != ordered:
            x = jnp.transpose(x, [mine.index(c) for c in ordered])
        return x.reshape([size[c] if c in mine else 1 for c in live])

    summed_letters = [c for c in live if c not in result]
    own_a = [c for c in live if c in result and c in letters_a and c not in letters_b]
    own_b = [c for c in live if c in result and c in letters_b and c not in letters_a]
    if (summed_letters and own_a and own_b and math.prod(size[c] for c in summed_letters) <= UNROLL_CONTRACTION
            and math.prod(size[c] for c in live) <= UNROLL_JOINT):
        return _unrolled_contract(letters_a, a, letters_b, b, result, size, summed_letters)
    if summed_letters:
        # A real contraction: one dot_general performs the same multiplications with far less
        # memory traffic than materialising the joint index space.
        mine_a = "".join(c for c in letters_a if size[c] != 1)
        mine_b = "".join(c for c in letters_b if size[c] != 1)
        target = "".join(c for c in result if size[c] != 1)
        reduced = jnp.einsum(
            f"{mine_a},{mine_b}->{target}",
            a.reshape([size[c] for c in mine_a]),
            b.reshape([size[c] for c in mine_b]),
        )
        return reduced.reshape([size[c] for c in result])
    product = spread(a, letters_a) * spread(b, letters_b)
    summed = tuple(i for i, c in enumerate(live) if c not in result)
    reduced = product.sum(axis=summed) if summed else product
    kept = "".join(c for c in live if c in result)
    target = "".join(c for c in result if size[c] != 1)
    if kept != target:
        reduced = jnp.transpose(reduced, [kept.index(c) for c in target])
    return reduced.reshape([size[c] for c in result])


def multiply(out: Partial, inp: Partial, code: int, counter: MultiplicationCounter, dtype) -> Partial:
    """The product out(v->c) @ in(p->v), laid out as `code` (the cost model's product code)."""
    c_shape, v_shape, p_shape = out.out_shape, out.in_shape, inp.in_shape
    moves_only = {INDEX_MAP} | VALUELESS
    if out.code == INDEX_MAP or inp.code == INDEX_MAP:
        if out.code in moves_only and inp.code in moves_only:
            first = inp.value if inp.code == INDEX_MAP else _identity_map(inp.code, v_shape, p_shape)
            second = out.value if out.code == INDEX_MAP else _identity_map(out.code, c_shape, v_shape)
            return convert(Partial(INDEX_MAP, c_shape, p_shape, _compose(first, second)), code, dtype)
        if out.code == INDEX_MAP and _paired(inp.code) is not None:
            # in = (permutation p->v) * weights per p entry: move the permutation's ones through the
            # map (values independent of the data wherever the map's indices are, e.g. one pattern
            # for a whole vmapped batch), then place the weights on the entries it reached.
            permutation = _identity_map(_permutation_code(inp.code), v_shape, p_shape)
            pattern = densify(Partial(INDEX_MAP, c_shape, p_shape, _compose(permutation, out.value)), dtype)
            dense = _place(pattern, _weights(inp, "in", dtype)[None, None])
        elif out.code == INDEX_MAP:
            dense = _apply_on_v(out.value, densify(inp, dtype))
        elif _paired(out.code) is not None:
            permutation = _identity_map(_permutation_code(out.code), c_shape, v_shape)
            pattern = densify(Partial(INDEX_MAP, c_shape, p_shape, _compose(inp.value, permutation)), dtype)
            dense = _place(pattern, _weights(out, "out", dtype)[:, :, None, None])
        else:
            dense = _apply_on_p(densify(out, dtype), inp.value)
        return convert(Partial(1, c_shape, p_shape, dense), code, dtype)

    plan = product_plan(inp.code, out.code)
    if out.value is None and inp.value is None:
        value = None
    elif out.value is None or inp.value is None:
        letters, value = (plan.in_letters, inp.value) if out.value is None else (plan.out_letters, out.value)
        value = jnp.einsum(f"{letters}->{plan.result_letters}", value)
    else:
        sizes = _sizes(c_shape, v_shape, p_shape)
        counter.add(math.prod(sizes[c] for c in set(plan.out_letters) | set(plan.in_letters)))
        value = contract(plan.out_letters, out.value, plan.in_letters, inp.value, plan.result_letters)
    return convert(Partial(plan.result_code, c_shape, p_shape, value), code, dtype)
