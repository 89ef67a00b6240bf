"""Structural dims (`graph._dims`): the axis splits a program's uses agree on."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from alphagrad.graph._dims import split_of, structural_dims_of_jaxpr


def _refines(dims, shape) -> bool:
    """Whether `dims` split each axis of `shape` into a run of consecutive factors."""
    k = 0
    for n in shape:
        product = 1
        while True:  # at least one factor per axis (a size-1 axis keeps its 1)
            if k >= len(dims):
                return False
            product *= dims[k]
            k += 1
            if product >= n:
                break
        if product != n:
            return False
    return k == len(dims)


def test_split_of_lists_the_factors_outermost_first():
    assert split_of(12, {4}) == (3, 4)
    assert split_of(24, {4, 12}) == (2, 3, 4)
    assert split_of(7, set()) == (7,)


def test_attention_heads_split_the_projection_and_its_weight():
    def attention(x, w):
        q = (x @ w).reshape(2, 5, 3, 4)  # (b, t, h * d) -> heads
        s = jnp.einsum("bthd,bshd->bhts", q, q)
        return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s), q).reshape(2, 5, 12).sum()

    closed = jax.make_jaxpr(attention)(jnp.ones((2, 5, 12)), jnp.ones((12, 12)))
    dims = structural_dims_of_jaxpr(closed)
    x, w = closed.jaxpr.invars
    assert dims[x] == (2, 5, 12)  # its last axis is contracted, never split
    assert dims[w] == (12, 3, 4)  # its free axis becomes the heads
    first = closed.jaxpr.eqns[0].outvars[0]  # x @ w, (2, 5, 12), reshaped into heads next
    assert dims[first] == (2, 5, 3, 4)
    merged = closed.jaxpr.eqns[-2].outvars[0]  # the heads merged back: (2, 5, 12)
    assert dims[merged] == (2, 5, 3, 4)


def test_vectors_are_never_split():
    closed = jax.make_jaxpr(lambda x: jnp.sin(x.reshape(3, 4)).sum())(jnp.ones(12))
    dims = structural_dims_of_jaxpr(closed)
    assert dims[closed.jaxpr.invars[0]] == (12,) and dims[closed.jaxpr.eqns[0].outvars[0]] == (3, 4)


def test_conflicting_splits_keep_the_first_and_stay_row_major():
    def two_views(x):
        return x.reshape(2, 3, 4).sum(0).sum() + x.reshape(2, 2, 6).sum(0).sum()

    closed = jax.make_jaxpr(two_views)(jnp.ones((2, 12)))
    dims = structural_dims_of_jaxpr(closed)
    assert dims[closed.jaxpr.invars[0]] == (2, 3, 4)
    for var, d in dims.items():
        assert _refines(d, var.aval.shape), (var, d)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from([(2, 3, 4), (6, 4), (2, 12), (4, 6), (3, 8), (2, 2, 6)]), min_size=1, max_size=4),
       st.booleans())
def test_every_split_refines_its_array_and_met_reshapes_are_identities(shapes, elementwise):
    def program(x):
        y = x
        for shape in shapes:
            y = y.reshape(shape)
            if elementwise:
                y = jnp.sin(y)
        return y.sum()

    closed = jax.make_jaxpr(program)(jnp.ones((2, 12)))
    dims = structural_dims_of_jaxpr(closed)
    for var, d in dims.items():
        assert math.prod(d) == math.prod(var.aval.shape) and _refines(d, var.aval.shape), (var, d)
    # Where the cuts of all the shapes nest (one row-major split has them all), every reshape is met:
    # both sides get the same structural dims, so the reshape is an identity between them.
    cuts = sorted({int(np.prod(s[k:])) for s in [(2, 12), *shapes] for k in range(1, len(s))})
    if all(later % earlier == 0 for earlier, later in zip(cuts, cuts[1:])):
        for eqn in closed.jaxpr.eqns:
            if eqn.primitive.name == "reshape":
                assert dims[eqn.invars[0]] == dims[eqn.outvars[0]], eqn
