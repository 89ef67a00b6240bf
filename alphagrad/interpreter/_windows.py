"""The partial of a max or min `reduce_window` (max/min pooling) as a selection by window offset.

JAX's derivative of `reduce_window_max` picks, in each window, the tangent of the entry its
reduction keeps (`select_and_gather_add`: a variadic reduce-window of (value, tangent) pairs), and
its transpose scatters a cotangent back there (`select_and_scatter_add`, which XLA:CPU expands into
an arg-max reduce-window with one iota per axis and a scatter of [entries, rank] indices). Applied
to the columns of a product under vmap, these cost far more than their size: cnn_pool's 2 x 2
max-pool of a [2, 5, 5, 2] map at batch 256 built its [64, 100] matrix per example by a scatter of
a million index rows (six [256, 64, 2, 5, 5, 2] iotas, 130 ms of a 400 ms call; jax.jacrev 33 ms).

Here the kept entry of every window is found once, by JAX's own rule applied to one tangent that
holds each entry's flat position (plus one): the tangent it picks is the position of the entry it
keeps, ties, NaN and padding decided exactly as jax.jacfwd decides them (0: the initial value was
kept, whose tangent is 0). The map is then one gather at those positions (per example under vmap,
fused into the loop that reads it); its transpose, for each offset k of the window, takes the
cotangent of the window that reads an entry at k where that window chose it (gathers at constant
indices and selects, no scatter); and the map's support (where its matrix is 1) is one comparison
of the positions with an iota, not the matrix built through the transpose. Nothing is multiplied
(an index map, as before). cnn_pool at batch 256 (float32): "auto" 365 -> 53 ms against jax.jacrev's
36 ms in one process, reverse order 310 -> 12.5 ms (two runs).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.interpreter._structured import IndexMap

__all__ = ["window_choice_map", "WindowChoiceMap", "WINDOW_CHOICE_MAX_OFFSETS"]


class WindowChoiceMap(IndexMap):
    """An `IndexMap` whose matrix's support (bool [v1, v2, p1, p2]: where a window chose an entry)
    is known without building the matrix: ``support()``, and the support of rows times the map,
    ``pull_support(rows)`` (bool [r, v1 * v2] -> [r, p1 * p2]), set on the instance."""


#: Windows of at most this many offsets are taken by selection (the transpose reads one gather per
#: offset); larger ones keep JAX's linearisation and its transpose.
WINDOW_CHOICE_MAX_OFFSETS = 64


def _reads(shape, window, strides, padding, dilation):
    """The output shape, and per window offset (row-major) the flat operand position each output
    entry reads there (-1 in the padding): int32 [offsets, output entries], a constant."""
    positions = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    positions = np.pad(positions, [(max(lo, 0), max(hi, 0)) for lo, hi in padding], constant_values=-1)
    positions = positions[tuple(slice(max(-lo, 0), positions.shape[a] - max(-hi, 0))  # negative padding crops
                                for a, (lo, hi) in enumerate(padding))]
    out_shape = tuple(max(0, (n - (w - 1) * d - 1) // s + 1) if n >= (w - 1) * d + 1 else 0
                      for n, w, s, d in zip(positions.shape, window, strides, dilation))
    reads = []
    for offset in itertools.product(*(range(w) for w in window)):
        index = tuple(slice(o * d, o * d + (m - 1) * s + 1, s) if m else slice(0, 0)
                      for o, d, m, s in zip(offset, dilation, out_shape, strides))
        reads.append(positions[index].reshape(-1))
    return out_shape, np.stack(reads).astype(np.int32)


def window_choice_map(eqn, x, linear, out_shape, in_shape) -> IndexMap | None:
    """The partial of a `reduce_window_max`/`reduce_window_min` equation at operand x as an
    `IndexMap` by window offset (module docstring); None where it does not apply (base dilation,
    a window of more than `WINDOW_CHOICE_MAX_OFFSETS` offsets, a floating-point type that cannot
    hold every position exactly). `linear` is JAX's linearisation of the equation at x (the
    tangent map), from which the choice is read."""
    params = eqn.params
    shape = tuple(np.shape(x))
    window = tuple(params["window_dimensions"])
    if (any(d != 1 for d in params["base_dilation"]) or math.prod(window) > WINDOW_CHOICE_MAX_OFFSETS
            or not jnp.issubdtype(x.dtype, jnp.floating)):
        return None
    size = math.prod(shape)
    if size + 1 >= 2 ** (jnp.finfo(x.dtype).nmant + 1):
        return None
    result_shape, reads = _reads(shape, window, tuple(params["window_strides"]), tuple(params["padding"]),
                                 tuple(params["window_dilation"]))
    count = math.prod(result_shape)
    # The position (plus one) of the entry each window keeps, as JAX's rule picks its tangent (0:
    # the initial value, never an entry).
    positions = jnp.arange(1, size + 1, dtype=x.dtype).reshape(shape)
    chosen = jnp.asarray(linear(positions)).astype(np.int32).reshape(count)
    # Operand side: the output entry that reads entry i at offset k (none: index 0, masked), and
    # whether it chose i; [offsets, size]. No two windows read one entry at the same offset.
    readers = np.zeros((len(reads), size), np.int32)
    reading = np.zeros((len(reads), size), bool)
    for k, read in enumerate(reads):
        inside = read >= 0
        readers[k, read[inside]] = np.arange(count, dtype=np.int32)[inside]
        reading[k, read[inside]] = True
    # Computed once and kept (bool [offsets, size] per example): fused into each reader, XLA
    # recomputed its gather of `chosen` per entry of every transposed row and of the products'
    # supports (cnn_pool "auto" at batch 256: 45 -> 38 ms, reverse 6.3 -> 5.2 ms, one process).
    given = jax.lax.optimization_barrier((chosen[readers] == np.arange(1, size + 1, dtype=np.int32)[None, :])
                                         & reading)
    zero = jnp.zeros((), x.dtype)
    kept = chosen > 0
    index = jnp.maximum(chosen - 1, 0)

    def apply(t):
        # One gather per output entry: the entry its window kept (0 where it kept the initial value).
        return jnp.where(kept, t.reshape(size).astype(x.dtype)[index], zero).reshape(out_shape)

    def transpose(ct):
        # A sum of disjoint selections: each operand entry gets the cotangent of every window that
        # chose it, at most one per offset (no scatter: serial on XLA:CPU).
        ct = ct.reshape(count).astype(x.dtype)
        given_back = sum(jnp.where(given[k], ct[readers[k]], zero) for k in range(len(reads)))
        return jnp.asarray(given_back, x.dtype).reshape(in_shape)

    def pull_support(rows):
        # bool [r, count] -> [r, size]: the entries some chosen window of a held row reads (the
        # support of rows @ this map, by the transpose's selections instead of a matmul of 0/1s).
        rows = jnp.reshape(rows, (-1, count))
        return functools.reduce(jnp.logical_or, [rows[:, readers[k]] & given[k] for k in range(len(reads))])

    choice = WindowChoiceMap(apply, transpose)
    # The map's matrix holds 1 where a window chose an entry: its support without the matrix.
    choice.support = lambda: (chosen[:, None] == np.arange(1, size + 1, dtype=np.int32)[None, :]).reshape(
        *out_shape, *in_shape)
    choice.pull_support = pull_support
    return choice
