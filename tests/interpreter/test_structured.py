"""The structure algebra against dense arithmetic, for every pair of structure codes."""

from __future__ import annotations

import json

import importlib.resources
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad.graph import cost_model
from alphagrad.graph._structure import STRUCTURED_CODES, VALUELESS, exact_tables, structure_of
from alphagrad.interpreter._structured import MultiplicationCounter, Partial, add, densify, multiply

MODEL = cost_model("exact")
OUT_FACTOR = {1: 0, 2: 1, 3: 2, 4: 3}  # out edge v->c positions -> (c1, c2, v1, v2, p1, p2)
IN_FACTOR = {1: 2, 2: 3, 3: 4, 4: 5}  # in edge p->v


def consistent_sizes(rng, tie_lists):
    """Random sizes for the six factors such that every tied pair has equal sizes."""
    parent = list(range(6))

    def find(u):
        while parent[u] != u:
            u = parent[u]
        return u

    for a, b in tie_lists:
        parent[find(a)] = find(b)
    by_class = {}
    return [by_class.setdefault(find(f), int(rng.integers(2, 4))) for f in range(6)]


def random_partial(rng, code, out_shape, in_shape):
    if code in VALUELESS:
        return Partial(code, out_shape, in_shape, None)
    sizes = {1: out_shape[0], 2: out_shape[1], 3: in_shape[0], 4: in_shape[1]}
    shape = [sizes[p] for p in structure_of(code).value_axes]
    return Partial(code, out_shape, in_shape, jnp.asarray(rng.normal(size=shape)))


@pytest.fixture(autouse=True, scope="module")
def float64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("in_code", STRUCTURED_CODES)
def test_products_and_sums_equal_dense_arithmetic(in_code):
    rng = np.random.default_rng(in_code + 100)
    for out_code in STRUCTURED_CODES:
        ties = [(OUT_FACTOR[a], OUT_FACTOR[b]) for a, b, _ in structure_of(out_code).ties]
        ties += [(IN_FACTOR[a], IN_FACTOR[b]) for a, b, _ in structure_of(in_code).ties]
        c1, c2, v1, v2, p1, p2 = consistent_sizes(rng, ties)
        out = random_partial(rng, out_code, (c1, c2), (v1, v2))
        inp = random_partial(rng, in_code, (v1, v2), (p1, p2))
        expected = jnp.einsum("abxy,xymn->abmn", densify(out, jnp.float64), densify(inp, jnp.float64))
        counter = MultiplicationCounter()
        product = multiply(out, inp, MODEL.product_code(in_code, out_code), counter, jnp.float64)
        np.testing.assert_allclose(densify(product, jnp.float64), expected, atol=1e-12)
        sizes = ((c1, c2), (v1, v2), (p1, p2))
        assert counter.total == MODEL.pair_cost(in_code, out_code, *sizes), (in_code, out_code)
        # adding any partial of the product's shapes
        other_code = STRUCTURED_CODES[int(rng.integers(len(STRUCTURED_CODES)))]
        other_ties = [(a - 1, b - 1) for a, b, _ in structure_of(other_code).ties]
        if all((c1, c2, p1, p2)[a] == (c1, c2, p1, p2)[b] for a, b in other_ties):
            other = random_partial(rng, other_code, (c1, c2), (p1, p2))
            total = add(other, product, MODEL.sum_code(other_code, product.code), jnp.float64)
            np.testing.assert_allclose(
                densify(total, jnp.float64), densify(other, jnp.float64) + expected, atol=1e-12
            )


def test_shipped_exact_tables_match_the_algebra():
    text = importlib.resources.files("alphagrad.graph").joinpath("data", "exact.json").read_text()
    shipped = json.loads(text)
    shipped.pop("_doc")
    assert shipped == json.loads(json.dumps(exact_tables()))
