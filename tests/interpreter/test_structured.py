"""The structure algebra against dense arithmetic, for every pair of structure codes."""

from __future__ import annotations

import json

import importlib.resources
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter
from alphagrad.graph import cost_model
from alphagrad.graph._structure import STRUCTURED_CODES, VALUELESS, exact_tables, structure_of
from alphagrad.graph import INDEX_MAP
from alphagrad.interpreter._structured import (
    IndexMap, MultiplicationCounter, Partial, Placed, Term, add, broadcast_partial, densify, multiply,
)
from tests.interpreter.test_index_maps import index_map_adding_into

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


def test_conversions_that_drop_ties_read_the_value_array_and_equal_the_dense_tensor():
    # A code whose ties are some of the partial's (D from K counts) is read off the value array
    # (`_relaxed`: broadcast, a delta mask per dropped tie); the others go through the dense tensor.
    from alphagrad.interpreter import _structured

    rng = np.random.default_rng(7)
    tied = [c for c in STRUCTURED_CODES if c not in (1, 11)]
    relaxations = 0
    for source in tied:
        for target in tied:
            if source == target:
                continue
            ties = [(a - 1, b - 1) for a, b, _ in structure_of(source).ties + structure_of(target).ties]
            c1, c2, p1, p2, _, _ = consistent_sizes(rng, ties)
            partial = random_partial(rng, source, (c1, c2), (p1, p2))
            kinds = {(a, b): kind for a, b, kind in structure_of(source).ties}
            keeps = target not in VALUELESS and all(kinds.get((a, b)) in (("K",) if kind == "K" else ("D", "K"))
                                                    for a, b, kind in structure_of(target).ties)
            relaxed = _structured._relaxed(partial, target, jnp.float64)
            assert (relaxed is not None) == keeps, (source, target)
            if relaxed is not None:
                relaxations += 1
                assert relaxed.code == target
                np.testing.assert_array_equal(densify(relaxed, jnp.float64), densify(partial, jnp.float64))
                expected = _structured.extract(densify(partial, jnp.float64), target)
                np.testing.assert_array_equal(relaxed.value, expected)
    assert relaxations > 40


def test_shipped_exact_tables_match_the_algebra():
    text = importlib.resources.files("alphagrad.graph").joinpath("data", "exact.json").read_text()
    shipped = json.loads(text)
    shipped.pop("_doc")
    assert shipped == json.loads(json.dumps(exact_tables()))


# ---- dense partials kept as weighted index maps (`Placed`) ----

PAIRED = (9,)


def scatter_add_map(in_shape, out_shape, targets):
    """Entry k of a p-shaped array added into entry targets[k] of a v-shaped one (repeats add)."""
    return Partial(INDEX_MAP, out_shape, in_shape, index_map_adding_into(in_shape, out_shape, targets))


def dense(partial):
    (a, b), (m, n) = partial.out_shape, partial.in_shape
    return densify(partial, jnp.float64).reshape(a * b, m * n)


def product(out, inp, checks, expect_placed=True):
    """out @ inp by `multiply`; appends (its dense value, the dense product) to `checks`."""
    counter = MultiplicationCounter()
    code = 1 if INDEX_MAP in (out.code, inp.code) else MODEL.product_code(inp.code, out.code)
    result = multiply(out, inp, code, counter, jnp.float64)
    checks.append((dense(result), dense(out) @ dense(inp)))
    assert isinstance(result.value, Placed) == expect_placed
    if INDEX_MAP not in (out.code, inp.code):
        assert counter.total == MODEL.pair_cost(inp.code, out.code, out.out_shape, out.in_shape, inp.in_shape)
    return result


def test_weighted_maps_compose_lazily_and_equal_dense_arithmetic(monkeypatch):
    # The maps here are traced (known only at run time, as jnp arrays under jit): their split terms
    # are kept as terms (RUN_TIME_SPLIT_MAX=None) so that the split's arithmetic is checked; by
    # default such a product is materialised, then moved (tests/interpreter/test_shared_reads.py).
    from alphagrad.interpreter import _structured

    monkeypatch.setattr(_structured, "RUN_TIME_SPLIT_MAX", None)
    rng = np.random.default_rng(300)
    # a transpose with a weight per row (code 9): the identity case is the same without transposes
    paired = [random_partial(rng, code, (3, 3), (3, 3)) for code in PAIRED]
    full = Partial(1, (3, 3), (3, 3), jnp.asarray(rng.normal(size=(3, 3, 3, 3))))

    def run(values):
        checks = []
        gather = scatter_add_map((3, 3), (2, 3), jnp.array([0, 1, 1, 2, 5, 3, 3, 4, 0]))  # 9 -> 6, repeats
        spread = scatter_add_map((2, 3), (3, 3), jnp.array([8, 0, 0, 4, 2, 7]))
        for partial, value in zip(paired, values):
            partial = partial._replace(value=value)
            by_columns = product(gather, partial, checks)  # map @ weights per column
            by_rows = product(partial, spread, checks)  # weights per row @ map
            product(spread, by_columns, checks)  # the map composes with the pattern
            product(by_rows, gather, checks)
            product(gather, by_rows, checks)  # weights along the entries the map moves: split per entry
            product(by_columns, spread, checks)
            product(partial, by_rows, checks)  # a permutation moves the rows' weights too
            weighted = product(partial, product(spread, by_columns, checks), checks)  # weights times a term
            weighted = product(weighted, partial, checks)
            plain = product(spread, gather, checks)  # maps composed: one term without weights
            total = add(weighted, plain, 1, jnp.float64)
            assert isinstance(total.value, Placed)
            checks.append((dense(total), dense(weighted) + dense(plain)))
            product(full, total, checks, False)  # a product with numbers materialises it
            checks.append((dense(add(total, full, 1, jnp.float64)), dense(total) + dense(full)))
        return checks

    for got, expected in jax.jit(run)([p.value for p in paired]):  # one compilation, not op by op
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_a_placed_partial_times_a_dense_row_through_one_entry_stays_placed(monkeypatch):
    from alphagrad.interpreter import _structured

    monkeypatch.setattr(_structured, "RUN_TIME_SPLIT_MAX", None)  # (as above: the split of a traced map)
    # v has one entry: a `Placed` (v->c) times a dense row (p->v), and a dense column times a `Placed`
    # (p->v), are outer products; each term's weight takes the dense side's numbers (reverse mode
    # through a division by a constant into a stencil's maps, as burgers_upwind's).
    rng = np.random.default_rng(301)
    paired = random_partial(rng, 9, (3, 3), (3, 3))
    row = Partial(1, (1, 1), (2, 3), jnp.asarray(rng.normal(size=(1, 1, 2, 3))))
    column = Partial(1, (2, 2), (1, 1), jnp.asarray(rng.normal(size=(2, 2, 1, 1))))

    def run(weights):
        checks = []
        into_one = scatter_add_map((3, 3), (1, 1), jnp.zeros(9, jnp.int32))  # every entry into one
        out_of_one = scatter_add_map((1, 1), (3, 3), jnp.array([4]))
        gathered = product(into_one, paired._replace(value=weights), checks)  # weights per column: [1, 1, 3, 3]
        spread = product(paired._replace(value=weights), out_of_one, checks)  # weights per row: [3, 3, 1, 1]
        product(spread, row, checks)  # Placed (v->c) @ dense row: [3, 3, 2, 3]
        product(column, gathered, checks)  # dense column @ Placed (p->v): [2, 2, 3, 3]
        product(product(spread, row, checks), scatter_add_map((2, 2), (2, 3), jnp.array([5, 0, 0, 1])), checks)
        return checks

    for got, expected in jax.jit(run)(paired.value):
        np.testing.assert_allclose(got, expected, atol=1e-12)


def broadcast_pattern(out_shape, in_shape, operand_shape, result_shape):
    """The 0/1 [v1, v2, p1, p2] matrix of an operand broadcast along size-1 axes."""
    source = np.broadcast_to(np.arange(np.prod(operand_shape)).reshape(operand_shape), result_shape).reshape(-1)
    pattern = np.zeros((len(source), int(np.prod(in_shape))))
    pattern[np.arange(len(source)), source] = 1
    return pattern.reshape(*out_shape, *in_shape)


def test_a_broadcast_operand_partial_is_its_pattern_times_the_local_derivative():
    rng = np.random.default_rng(303)
    a, b = rng.normal(size=(4, 1, 3)), rng.normal(size=(1, 4, 3))
    local = -np.ones((4, 4, 3))  # d(a - b)/db at every output entry
    partial = broadcast_partial((4, 12), (1, 12), b.shape, (4, 4, 3), lambda: jnp.asarray(local), jnp.float64)
    assert isinstance(partial.value, Placed)
    expected = jax.jacfwd(lambda y: a - y)(b).reshape(48, 12)
    np.testing.assert_array_equal(dense(partial), expected)
    assert broadcast_partial((4, 12), (4, 12), (4, 4, 3), (4, 4, 3), lambda: local, jnp.float64) is None  # no broadcast
    assert broadcast_partial((4, 12), (1, 1), (1, 1, 1), (4, 4, 3), lambda: local, jnp.float64) is None  # a scalar


def test_a_map_moves_weights_it_meets_by_reindexing_them_where_each_entry_comes_from_one():
    # x[:, None, :] with a weight per pair entry (4 x 4 x 3 = 48 > PLACED_SPLIT_MAX), summed over
    # the last axis: every result entry comes from one weighted entry, so the product stays one
    # term whose weight is the old one reshaped (lennard_jones); a map that adds several weighted
    # entries into one result entry, or reads the weight in another order, is materialised.
    rng = np.random.default_rng(302)
    pattern = broadcast_pattern((4, 12), (4, 3), (4, 1, 3), (4, 4, 3))
    weights = jnp.asarray(rng.normal(size=(4, 12, 1, 1)))

    def run(weights):
        checks = []
        term = Partial(1, (4, 12), (4, 3), Placed((Term(pattern, weights),)))
        summed = scatter_add_map((4, 12), (4, 4), np.arange(48) // 3)  # sum over the last axis
        moved = product(summed, term, checks)
        assert len(moved.value.terms) == 1 and np.shape(moved.value.terms[0].weight) == (4, 4, 1, 3)
        over_pairs = scatter_add_map((4, 12), (4, 3), (np.arange(48) // 12) * 3 + np.arange(48) % 3)
        product(over_pairs, term, checks, False)  # four weighted entries into each result entry
        over_first = scatter_add_map((4, 12), (4, 3), np.arange(48) % 12)  # sum over the first axis
        product(over_first, term, checks, False)  # the weight read in another order: materialised
        return checks

    for got, expected in jax.jit(run)(weights):
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_a_weighted_map_drops_an_infinite_weight_it_does_not_read():
    # diag(w) with a NaN at entry 1, then maps that never read entry 1: exact zeros, no NaN
    pick = Partial(INDEX_MAP, (2, 1), (3, 1), IndexMap(
        lambda t: t.reshape(3)[jnp.array([0, 2])].reshape(2, 1),
        lambda ct: jnp.zeros(3, ct.dtype).at[jnp.array([0, 2])].add(ct.reshape(2)).reshape(3, 1)))
    twice = scatter_add_map((2, 1), (2, 1), jnp.array([1, 1]))

    def run(w):
        weights = Partial(6, (3, 1), (3, 1), w)
        picked = multiply(pick, weights, 1, MultiplicationCounter(), jnp.float64)
        return dense(multiply(twice, picked, 1, MultiplicationCounter(), jnp.float64))

    np.testing.assert_array_equal(jax.jit(run)(jnp.array([[2.0], [np.nan], [3.0]])), [[0, 0, 0], [2, 0, 3]])


def test_index_maps_densify_by_columns_or_by_rows_whichever_side_is_smaller():
    # A selection of 2 of 5 entries (rows: 2 one-hot seeds) and its adjoint scatter (columns).
    picked = jnp.array([4, 1])
    select = IndexMap(lambda t: t.reshape(5)[picked].reshape(2, 1),
                      lambda ct: jnp.zeros(5, ct.dtype).at[picked].add(ct.reshape(2)).reshape(5, 1))
    expected = np.zeros((2, 1, 5, 1))
    expected[0, 0, 4, 0] = expected[1, 0, 1, 0] = 1.0
    np.testing.assert_array_equal(densify(Partial(INDEX_MAP, (2, 1), (5, 1), select), jnp.float64), expected)
    scatter = IndexMap(select.transpose, select.apply)
    np.testing.assert_array_equal(densify(Partial(INDEX_MAP, (5, 1), (2, 1), scatter), jnp.float64),
                                  expected.transpose(2, 3, 0, 1))


def test_products_kept_at_large_batch_are_the_same_numbers(monkeypatch):
    # A product of more than one entry per example, under a vmap of at least
    # KEEP_PRODUCTS_MIN_BATCH examples, is divided by a 1 computed at run time (its own kernel):
    # bit for bit the product, NaN, infinities and signed zeros included; at small batch untouched.
    from alphagrad.interpreter import _structured

    x = jnp.array([1.5, -0.0, np.inf, -np.inf, np.nan, 3e-39, -2.0], jnp.float32)
    kept = jax.jit(lambda y: (_structured._kept(y), _structured._kept(y.astype(jnp.float16))))(x)
    for got, want in zip(kept, (x, x.astype(jnp.float16))):
        assert np.array_equal(np.asarray(got).view(np.uint8), np.asarray(want).view(np.uint8))

    monkeypatch.setattr(_structured, "KEEP_PRODUCTS_MIN_BATCH", 4)
    seen = []

    def product(w, v):
        out = Partial(1, (2, 1), (2, 1), w)
        inp = Partial(1, (2, 1), (3, 1), v)
        result = multiply(out, inp, 1, MultiplicationCounter(), jnp.float32)
        seen.append(_structured._vmapped_examples(result.value))
        return densify(result, jnp.float32)

    rng = np.random.default_rng(7)
    for batch in (2, 4):
        w = jnp.asarray(rng.normal(size=(batch, 2, 1, 2, 1)), jnp.float32)
        v = jnp.asarray(rng.normal(size=(batch, 2, 1, 3, 1)), jnp.float32)
        lowered = jax.jit(jax.vmap(product)).lower(w, v)
        assert ("div" in lowered.as_text()) == (batch == 4)  # the kept product's division
    np.testing.assert_allclose(lowered.compile()(w, v), np.einsum("bijkl,bklmn->bijmn", w, v), rtol=1e-5, atol=1e-6)
    assert seen == [2, 4]


def test_columns_placed_into_wider_blocks_at_large_batch_are_gathered_or_concatenated_exactly(monkeypatch):
    # A dense column (at least KEEP_PLACED_MIN_ENTRIES entries) placed by an index map into at least
    # KEEP_PLACED_WIDER times its entries, under a vmap of at least KEEP_PRODUCTS_MIN_BATCH examples,
    # is read through a gather at run-time indices (its own kernel): bit for bit the column; narrower
    # placements, shorter columns and small batches untouched.
    from alphagrad.interpreter import _structured

    monkeypatch.setattr(_structured, "KEEP_PRODUCTS_MIN_BATCH", 4)
    x = jnp.array([[1.5, -0.0, np.inf, -np.inf, np.nan, 3e-39]] * 4, jnp.float32)  # [4, 6]
    wide = jax.vmap(lambda v: _structured._gathered(v, 12))
    assert "gather" in jax.jit(wide).lower(x).as_text()
    assert np.array_equal(np.asarray(jax.jit(wide)(x)).view(np.uint8), np.asarray(x).view(np.uint8))
    for narrower in (lambda v: _structured._gathered(v, 11), lambda v: _structured._gathered(v[:3], 12)):
        assert "gather" not in jax.jit(jax.vmap(narrower)).lower(x).as_text()
    assert "gather" not in jax.jit(wide).lower(x[:2]).as_text()  # below KEEP_PRODUCTS_MIN_BATCH

    def f(x):  # osborne1's shape: columns of exponentials placed into an [11, 5] block
        t = jnp.arange(11.0) / 10
        return x[0] + x[1] * jnp.exp(-t * x[3]) + x[2] * jnp.exp(-t * x[4])

    # Each column reaches its parameter x[k] through one entry: it stays a lazy term, and the block
    # is its columns concatenated (no pad per column, no gather).
    xs = np.random.default_rng(3).uniform(0.5, 1.5, (4, 5)).astype(np.float32)
    lowered = jax.jit(jax.vmap(interpreter.jacobian(f, "reverse"))).lower(xs)
    assert "concatenate" in lowered.as_text() and " pad" not in lowered.as_text()
    t = np.arange(11.0)[None] / 10
    e3, e4 = np.exp(-t * xs[:, 3:4]), np.exp(-t * xs[:, 4:5])
    expected = np.stack([np.ones_like(e3), e3, e4, -t * xs[:, 1:2] * e3, -t * xs[:, 2:3] * e4], axis=-1)
    np.testing.assert_allclose(lowered.compile()(xs), expected, rtol=1e-5)


def test_a_map_moves_split_terms_in_one_application():
    # A scatter-add onto receivers passed as an argument (its matrix known only at run time) after
    # weights per entry: the split terms' patterns are moved by one vmapped application of the map
    # (one scatter, not one per term), with jax.jacfwd's numbers.
    def f(nodes, weights, senders, receivers):
        messages = nodes[senders] * weights[:, None]
        return jnp.tanh(nodes + jax.ops.segment_sum(messages, receivers, num_segments=nodes.shape[0]))

    nodes, weights = jnp.array([[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]]), jnp.array([0.7, -0.8, 0.9])
    senders, receivers = jnp.array([0, 2, 1]), jnp.array([1, 1, 0])
    lowered = jax.jit(interpreter.jacobian(f, "reverse", argnums=(0, 1))).lower(nodes, weights, senders, receivers)
    assert lowered.as_text().count("stablehlo.scatter") <= 6  # 16 one term at a time
    expected = jax.jit(jax.jacfwd(f, argnums=(0, 1)))(nodes, weights, senders, receivers)  # (eager: 1.5 s)
    for a, b in zip(lowered.compile()(nodes, weights, senders, receivers), expected):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_large_contractions_are_unrolled_only_under_a_large_vmap(monkeypatch):
    # A matrix product of 8 summed entries over a joint space of 6,144 points: a dot_general at small
    # batch (above UNROLL_JOINT_SMALL_BATCH), a sum of broadcast products under a vmap of at least
    # KEEP_PRODUCTS_MIN_BATCH examples; the same numbers either way.
    from alphagrad.interpreter import _structured

    monkeypatch.setattr(_structured, "KEEP_PRODUCTS_MIN_BATCH", 4)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 8, 8)).astype(np.float32), rng.normal(size=(4, 8, 96)).astype(np.float32)
    product = jax.vmap(lambda x, y: _structured.contract("ij", x, "jk", y, "ik"))
    for batch, dot in ((2, True), (4, False)):
        lowered = jax.jit(product).lower(a[:batch], b[:batch])
        assert ("dot_general" in lowered.as_text()) == dot
        np.testing.assert_allclose(lowered.compile()(a[:batch], b[:batch]), a[:batch] @ b[:batch], rtol=1e-5, atol=1e-5)


def test_known_patterns_are_selected_onto_their_supports_with_the_same_numbers():
    # Patterns known while tracing (NumPy) are written term by term on their supports; the same
    # numbers as the where-sum over every entry (jnp patterns), NaN and infinities only where a
    # pattern puts them, patterns other than 1 multiplied, overlapping supports added.
    from alphagrad.interpreter import _structured
    from alphagrad.interpreter._structured import Term

    shape = (3, 1, 4, 1)
    rows = np.zeros(shape)
    rows[0, 0, 1, 0] = rows[2, 0, 3, 0] = 1.0  # two entries, weights per row
    twice = np.zeros(shape)
    twice[2, 0, 3, 0] = twice[1, 0, 0, 0] = 2.0  # overlaps `rows` at (2, 3)
    ones = np.zeros(shape)
    ones[0, 0, 0, 0] = 1.0  # no weight: the pattern itself
    far = np.zeros(shape)
    far[1, 0, 2, 0] = 1.0  # disjoint from the others, a scalar weight

    def run(w_rows, w_twice, w_far):
        weights = (w_rows.reshape(3, 1, 1, 1), w_twice.reshape(1, 1, 4, 1), None, w_far.reshape(1, 1, 1, 1))
        known = Placed(tuple(Term(p, w) for p, w in zip((rows, twice, ones, far), weights)))
        traced = Placed(tuple(Term(jnp.asarray(p), w) for p, w in zip((rows, twice, ones, far), weights)))
        assert _structured._materialise_known(traced, shape, jnp.float64) is None
        return _structured._materialise(known, shape, jnp.float64), _structured._materialise(traced, shape, jnp.float64)

    w_rows = jnp.array([np.inf, np.nan, -1.5])  # the NaN's row is read by no pattern
    w_twice = jnp.array([0.25, np.nan, 3.0, -2.0])  # nor is the NaN's column
    got, reference = jax.jit(run)(w_rows, w_twice, jnp.array(7.0))
    np.testing.assert_array_equal(got, reference)
    expected = np.zeros(shape)
    expected[0, 0, 1, 0], expected[2, 0, 3, 0] = np.inf, -1.5 + 2 * -2.0
    expected[1, 0, 0, 0], expected[0, 0, 0, 0], expected[1, 0, 2, 0] = 2 * 0.25, 1.0, 7.0
    np.testing.assert_array_equal(got, expected)


def test_known_patterns_in_separate_slabs_are_built_slab_by_slab_with_the_same_numbers():
    # Supports in separate rows (a jnp.stack's) are concatenated slab by slab, each slab from its own
    # terms, weights per row or per column sliced to it; an empty pattern is dropped; the numbers
    # are those of the where-sum over every entry, NaN and infinities only where a pattern reads them.
    from alphagrad.interpreter import _structured
    from alphagrad.interpreter._structured import Term

    shape = (6, 1, 5, 1)
    patterns = []
    for row in range(4):  # one diagonal-like term per row, per-column weights
        p = np.zeros(shape)
        p[row, 0, row, 0] = p[row, 0, (row + 2) % 5, 0] = 1.0
        patterns.append(p)
    across = np.zeros(shape)
    across[4, 0, 1, 0], across[5, 0, 3, 0] = 3.0, 1.0  # spans rows 4-5, a pattern other than 1
    patterns += [across, np.zeros(shape)]  # the last one reads nothing

    def run(columns, rows):
        weights = [columns.reshape(1, 1, 5, 1)] * 4 + [rows.reshape(6, 1, 1, 1), rows.reshape(6, 1, 1, 1)]
        known = Placed(tuple(Term(p, w) for p, w in zip(patterns, weights)))
        traced = Placed(tuple(Term(jnp.asarray(p), w) for p, w in zip(patterns, weights)))
        return _structured._materialise(known, shape, jnp.float64), _structured._materialise(traced, shape, jnp.float64)

    columns = jnp.array([1.5, -2.0, np.inf, 4.0, 0.5])
    rows = jnp.array([np.nan, np.nan, np.nan, np.nan, -1.0, 2.0])  # NaN rows are read by no term
    assert "concatenate" in str(jax.make_jaxpr(run)(columns, rows))
    got, reference = jax.jit(run)(columns, rows)
    np.testing.assert_array_equal(got, reference)
    assert np.isinf(got[2, 0, 2, 0]) and np.isinf(got[0, 0, 2, 0]) and not np.isnan(got).any()
    assert got[4, 0, 1, 0] == -3.0 and got[5, 0, 3, 0] == 2.0

    # Slabs that save too few selects (rows 0-4 with three terms, row 5 with one: 80 of 120) stay
    # one chain: no concatenation.
    crowded = [np.zeros(shape) for _ in range(3)]
    for k, p in enumerate(crowded):
        p[0, 0, k, 0] = p[4, 0, 4 - k, 0] = 1.0
    solo = np.zeros(shape)
    solo[5, 0, 0, 0] = 1.0
    placed = Placed(tuple(Term(p, columns.reshape(1, 1, 5, 1)) for p in crowded + [solo]))
    assert "concatenate" not in str(jax.make_jaxpr(lambda: _structured._materialise(placed, shape, jnp.float64))())


def test_indices_built_inside_f_give_index_maps_known_while_tracing(monkeypatch):
    # x.at[jnp.array(...)]: the index arrays are equations of f on constants, evaluated while tracing
    # (`_jacobian._bind_constant`), so the scatters' matrices are known then and the Jacobian's
    # `Placed` sum is written on its supports; jax.jacfwd's numbers.
    from alphagrad.interpreter import _structured

    known = []
    original = _structured._materialise_known
    monkeypatch.setattr(_structured, "_materialise_known", lambda *a: known.append(original(*a)) or known[-1])

    def f(x):
        return x.at[jnp.array([0, -2])].set(x[1:3] ** 2)  # a negative index: index arithmetic in f

    x = np.array([0.3, -1.2, 0.7, 2.0])
    got = jax.jit(interpreter.jacobian(f, "reverse"))(jnp.asarray(x))
    assert known and all(k is not None for k in known)
    expected = np.diag([0.0, 1.0, 0.0, 1.0])
    expected[0, 1], expected[2, 2] = 2 * x[1], 2 * x[2]  # x1**2, x2**2
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_float_constants_built_inside_f_are_traced_not_evaluated_op_by_op(monkeypatch):
    # Evaluated while tracing, each float operation on constants was compiled apart by JAX (about
    # 11 ms each: jax.image.resize's interpolation weights, 183 equations); traced, XLA folds them.
    # Integer index arithmetic is still evaluated (the test above).
    import contextlib

    from alphagrad.interpreter import _jacobian

    evaluated = []

    @contextlib.contextmanager
    def recording():
        evaluated.append(1)
        yield

    monkeypatch.setattr(_jacobian.jax, "ensure_compile_time_eval", recording)

    def f(x):
        weights = jnp.cos(jnp.linspace(0.0, 1.0, 4)) * 2.0 + jnp.exp(-jnp.arange(4.0))  # float constants
        return jnp.sin(x) * weights

    x = np.array([0.3, -1.2, 0.7, 2.0])
    got = jax.jit(interpreter.jacobian(f, "reverse"))(jnp.asarray(x))
    assert not evaluated
    np.testing.assert_allclose(got, jax.jacfwd(f)(jnp.asarray(x)), rtol=1e-12)


def test_products_through_a_vertex_with_no_entries_are_zero():
    # A map moving a term whose weight varies along a vertex with no entries (lax.associative_scan's
    # empty halves, an empty slice summed) gives a `Placed` sum of no terms: zero, not a crash.
    empty = Partial(1, (1, 1), (2, 1), Placed(()))
    np.testing.assert_array_equal(densify(empty, jnp.float64), np.zeros((1, 1, 2, 1)))
    total = add(empty, Partial(1, (1, 1), (2, 1), jnp.ones((1, 1, 2, 1))), 1, jnp.float64)
    np.testing.assert_array_equal(densify(total, jnp.float64), np.ones((1, 1, 2, 1)))


def test_patterns_moved_while_tracing_equal_jax_and_stay_traced_on_run_time_indices():
    # `_at_trace_time` evaluates data movement in NumPy (pads with interior and negative padding,
    # selects, cumulative sums, splits, nested jits), the rest compiled once; a computation that reads
    # a traced value (indices passed to f) stays traced.
    from alphagrad.interpreter import _structured

    x = np.arange(24.0).reshape(2, 3, 4)
    moves = [
        lambda: jax.lax.pad(jnp.asarray(x), -1.0, [(1, -1, 1), (0, 2, 0), (-1, 1, 2)]),
        lambda: jax.lax.select_n(jnp.asarray(x) > 5, jnp.asarray(x), -jnp.asarray(x)),
        lambda: jax.lax.cumsum(jnp.asarray(x), axis=1, reverse=True),
        lambda: jnp.split(jnp.asarray(x), [1, 3], axis=2)[1],
        lambda: jax.jit(lambda y: jnp.transpose(y, (2, 0, 1)).reshape(4, 6)[None] + 1)(jnp.asarray(x)),
        lambda: jnp.asarray(x)[:, jnp.array([2, 0, 2])],  # a gather: compiled, not NumPy
    ]
    expected = jax.jit(lambda: [move() for move in moves])()  # one compilation
    for move, want in zip(moves, expected):
        got = _structured._at_trace_time(move, x.size)
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)

    def traced(i):
        return _structured._at_trace_time(lambda: jnp.asarray(x)[:, i], x.size)

    assert isinstance(jax.make_jaxpr(traced)(jnp.array([2, 0])).jaxpr.outvars[0], jax.extend.core.Var)


def test_numpy_rules_of_trace_time_patterns_match_jax():
    """The NumPy forms that move index-map patterns while tracing compute what the primitives do,
    parameters included (a reshape in column-major order, a broadcast with its axes out of order,
    negative and interior padding, a reversed cumsum)."""
    from alphagrad.interpreter._structured import _NUMPY_RULES

    x = np.arange(24.0).reshape(2, 3, 4)
    cases = [
        ("reshape", jax.lax.reshape(x, (4, 6), (2, 0, 1)), (x,), dict(new_sizes=(4, 6), dimensions=(2, 0, 1))),
        ("broadcast_in_dim", jax.lax.broadcast_in_dim(x[0], (4, 5, 3), (2, 0)), (x[0],),
         dict(shape=(4, 5, 3), broadcast_dimensions=(2, 0))),
        ("transpose", jnp.transpose(x, (1, 2, 0)), (x,), dict(permutation=(1, 2, 0))),
        ("pad", jax.lax.pad(x, 0.0, ((1, -1, 1), (0, 2, 0), (-2, 1, 2))), (x, np.float64(0.0)),
         dict(padding_config=((1, -1, 1), (0, 2, 0), (-2, 1, 2)))),
        ("cumsum", jax.lax.cumsum(x, 1, reverse=True), (x,), dict(axis=1, reverse=True)),
    ]
    for name, expected, operands, params in cases:
        np.testing.assert_array_equal(_NUMPY_RULES[name](*operands, **params), np.asarray(expected), err_msg=name)
