"""Labelled partials (interpreter._labelled): their dense forms, relayouts and 2-D forms, against a
tensor built entry by entry from the definition of `graph.AxisTies`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad.graph import INDEX_MAP, axis_sum, axis_ties
from alphagrad.interpreter._labelled import Labelled, densify_labelled, elementwise_code, relayout
from alphagrad.interpreter._structured import (
    IndexMap, MultiplicationCounter, Partial, Placed, contract, densify, multiply,
)


def _reference(ties, out_dims, in_dims, values) -> np.ndarray:
    """J[out..., in...] entry by entry: zero off a tie's diagonal, else the value at the entry's
    value-axis indices (one where the partial has no values)."""
    full = np.zeros(out_dims + in_dims)
    for index in itertools.product(*(range(n) for n in out_dims + in_dims)):
        out, inp = index[: len(out_dims)], index[len(out_dims):]
        if any(out[o] != inp[i] for o, i, _ in ties.ties):
            continue
        at = tuple(out[k] if side == "out" else inp[k] for side, k in ties.value_axes)
        full[index] = 1.0 if values is None else values[at]
    return full


def _labelled(ties, out_dims, in_dims, seed=0) -> Labelled:
    if not ties.has_values:
        return Labelled(ties, out_dims, in_dims, None)
    shape = tuple(out_dims[k] if side == "out" else in_dims[k] for side, k in ties.value_axes)
    return Labelled(ties, out_dims, in_dims, np.random.default_rng(seed).normal(size=shape))


CASES = [
    # (out dims, in dims, ties, has values)
    ((2, 3, 4), (2, 3, 4), [(0, 0, "D"), (1, 1, "D"), (2, 2, "D")], True),
    ((2, 3, 4), (2, 3, 4), [(0, 0, "K"), (1, 1, "K"), (2, 2, "K")], True),
    ((2, 3, 4), (2, 3, 4), [(0, 0, "K"), (1, 1, "D"), (2, 2, "K")], True),
    ((2, 3, 4), (4, 3), [(2, 0, "K")], True),
    ((2, 3, 4), (3, 2, 5), [(0, 1, "D"), (1, 0, "K")], True),
    ((2, 3, 4), (4, 2, 3), [(0, 1, "K"), (1, 2, "K"), (2, 0, "K")], False),
    ((2, 1, 3), (3, 1), [(2, 0, "D")], True),
]


def test_densify_is_the_definition():
    values = [_labelled(axis_ties(len(o), len(i), t, v), o, i) for o, i, t, v in CASES]

    @jax.jit  # one compilation for all the cases (eagerly, each operation compiles apart)
    def dense(arrays):
        return [densify_labelled(v._replace(values=a), jnp.float32) for v, a in zip(values, arrays)]

    for value, full in zip(values, dense([v.values for v in values])):
        expected = _reference(value.ties, value.out_dims, value.in_dims, value.values)
        np.testing.assert_array_equal(np.asarray(full), expected.astype(np.float32))


@pytest.mark.parametrize("out_dims, in_dims, ties, has_values", [CASES[2], CASES[4], CASES[5]])
def test_relayout_to_coarser_structures_keeps_the_partial(out_dims, in_dims, ties, has_values):
    """Each tie dropped in turn, and every tie kept as a diagonal: what a sum with another partial
    (`graph.axis_sum`) asks for."""
    source = axis_ties(len(out_dims), len(in_dims), ties, has_values)
    value = _labelled(source, out_dims, in_dims)
    expected = _reference(source, out_dims, in_dims, value.values)
    targets = [axis_ties(len(out_dims), len(in_dims), target, True)
               for target in [ties[:k] + ties[k + 1:] for k in range(len(ties))] + [[(o, i, "D") for o, i, _ in ties]]]

    @jax.jit  # one compilation for all the targets (eagerly, each operation compiles apart)
    def moved_and_dense(values):
        moved = [relayout(value._replace(values=values), target, jnp.float32) for target in targets]
        return [m.values for m in moved], [densify_labelled(m, jnp.float32) for m in moved]

    moved_values, dense = moved_and_dense(value.values)
    for target, values, full in zip(targets, moved_values, dense):
        assert np.shape(values) == tuple((out_dims if side == "out" else in_dims)[k] for side, k in target.value_axes)
        np.testing.assert_array_equal(np.asarray(full), expected.astype(np.float32))


def test_relayout_to_the_structure_of_a_sum():
    dims = (2, 3, 4)
    a = _labelled(axis_ties(3, 3, [(0, 0, "K"), (1, 1, "K"), (2, 2, "K")]), dims, dims, seed=1)
    b = _labelled(axis_ties(3, 3, [(0, 0, "D"), (1, 1, "K")]), dims, dims, seed=2)
    ties = axis_sum(a.ties, b.ties)

    @jax.jit
    def dense_sum(x, y):
        total = relayout(a._replace(values=x), ties, jnp.float32).values + relayout(b._replace(values=y), ties,
                                                                                     jnp.float32).values
        return densify_labelled(Labelled(ties, dims, dims, total), jnp.float32)

    expected = _reference(a.ties, dims, dims, a.values) + _reference(b.ties, dims, dims, b.values)
    np.testing.assert_allclose(np.asarray(dense_sum(a.values, b.values)), expected, rtol=1e-6)


def test_relayout_refuses_a_finer_structure():
    dims = (2, 3, 4)
    value = _labelled(axis_ties(3, 3, [(0, 0, "D")]), dims, dims)
    with pytest.raises(AssertionError):
        relayout(value, axis_ties(3, 3, [(0, 0, "K")]), jnp.float32)


def test_elementwise_code_is_the_same_partial():
    values = [_labelled(axis_ties(len(o), len(i), t, v), o, i) for o, i, t, v in CASES]
    elementwise = [o == i and len(t) == len(o) and all(a == b for a, b, _ in t) for o, i, t, _ in CASES]
    assert [elementwise_code(v, jnp.float32) is not None for v in values] == elementwise
    chosen = [v for v, e in zip(values, elementwise) if e]

    def shape(value):
        return value.out_dims[0], int(np.prod(value.out_dims[1:]))

    @jax.jit
    def dense(arrays):
        partials = []
        for value, array in zip(chosen, arrays):
            code, two_d = elementwise_code(value._replace(values=array), jnp.float32)
            two_d = jnp.reshape(two_d, shape(value)) if code == 6 else two_d
            partials.append(densify(Partial(code, shape(value), shape(value), two_d), jnp.float32))
        return partials

    for value, full in zip(chosen, dense([v.values for v in chosen])):
        expected = _reference(value.ties, value.out_dims, value.in_dims, value.values)
        np.testing.assert_array_equal(np.asarray(full), expected.reshape(*shape(value), *shape(value)).astype(np.float32))


def test_an_elementwise_partial_times_an_index_map_stays_lazy():
    """gelu(x @ w + bias) on a (2, 3, 4) array: d(gelu)/d(pre-activation), labelled and elementwise,
    times the bias's broadcast (an index map) is kept as the map's pattern times the weights
    (`Placed`, as for the 2-D codes), not materialised as a [24, 24] matrix first; it multiplies
    nothing."""
    dims = (2, 3, 4)
    weights = np.random.default_rng(3).normal(size=dims).astype(np.float32)
    gelu = Partial(12, (2, 12), (2, 12),
                   Labelled(axis_ties(3, 3, [(0, 0, "D"), (1, 1, "D"), (2, 2, "D")]), dims, dims, weights))
    broadcast = Partial(INDEX_MAP, (2, 12), (1, 4), IndexMap(
        lambda t: jnp.broadcast_to(t.reshape(4), dims).reshape(2, 12),
        lambda c: c.reshape(dims).sum((0, 1)).reshape(1, 4)))
    counter = MultiplicationCounter()
    product = multiply(gelu, broadcast, 1, counter, jnp.float32)
    assert isinstance(product.value, Placed) and counter.total == 0
    expected = np.zeros((*dims, 4), np.float32)
    for index in np.ndindex(*dims):
        expected[(*index, index[2])] = weights[index]
    np.testing.assert_array_equal(np.asarray(densify(product, jnp.float32)), expected.reshape(2, 12, 1, 4))


def test_a_labelled_product_is_laid_out_in_the_result_order():
    """bilinear_resize's last product, abcdo x bn -> abcdno: the joint space is built in the result's
    order, so the broadcast product itself is never transposed (at batch 32,768 that transpose cost
    more than the product); the numbers are einsum's."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 4, 5, 3, 3)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    for result_order in (False, True):
        def product(x, y, result_order=result_order):
            return contract("abcdo", x, "bn", y, "abcdno", result_order=result_order)

        np.testing.assert_allclose(np.asarray(product(a, b)), np.einsum("abcdo,bn->abcdno", a, b), rtol=1e-6)
        jaxpr = jax.make_jaxpr(product)(a, b).jaxpr
        whole = [e for e in jaxpr.eqns
                 if e.primitive.name == "transpose" and np.prod(e.outvars[0].aval.shape) == a.size * 3]
        assert bool(whole) == (not result_order)
