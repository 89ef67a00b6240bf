"""The labelled-axes algebra of structured partials (`graph._structure`), against dense arithmetic.

A partial of any ranks is densified from its value array and ties; the structured product (one
einsum of the two value arrays) must equal the dense contraction over v's axes, count one
multiplication per point of the joint index space, and a sum must fit the structure `axis_sum`
gives. The 2-D codes are the rank (2, 2) case: `product_plan` and `sum_code` are checked against
the same dense arithmetic in tests/interpreter/test_structured.py and their tables against the
shipped exact.json there.
"""

from __future__ import annotations

import itertools
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphagrad.graph import CODES, cost_model
from alphagrad.graph._cost import LabelledCostModel, extended_cost_model
from alphagrad.graph._structure import (
    FIRST_EXTENDED_CODE,
    STRUCTURED_CODES,
    AxisTies,
    axis_product,
    axis_sum,
    axis_ties,
    axis_ties_of,
    code_of_axis_ties,
    extended_tables,
    product_plan,
)


def value_shape(ties: AxisTies, out_shape, in_shape) -> tuple[int, ...]:
    if not ties.has_values:
        return ()
    return tuple((out_shape if side == "out" else in_shape)[k] for side, k in ties.value_axes)


def densify(ties: AxisTies, values: np.ndarray, out_shape, in_shape) -> np.ndarray:
    """J[v axes..., p axes...] from a value array: a delta for each tie, the values elsewhere."""
    letters = iter(string.ascii_letters)
    out_l = [next(letters) for _ in out_shape]
    in_l = [next(letters) for _ in in_shape]
    operands, subscripts = [], []
    if ties.has_values:
        operands.append(values)
        subscripts.append("".join(out_l[k] if side == "out" else in_l[k] for side, k in ties.value_axes))
    for o, i, _ in ties.ties:
        operands.append(np.eye(out_shape[o]))
        subscripts.append(out_l[o] + in_l[i])
    if not operands:  # a value-less partial of rank 0: the scalar 1
        return np.ones(())
    return np.einsum(",".join(subscripts) + "->" + "".join(out_l + in_l), *operands, optimize=False)


def extract(ties: AxisTies, dense: np.ndarray, out_shape, in_shape) -> np.ndarray:
    """The value array of `dense` read along `ties` (index 0 along a Kronecker tie)."""
    shape = value_shape(ties, out_shape, in_shape)
    values = np.zeros(shape)
    tie_of_in = {i: o for o, i, _ in ties.ties}
    for idx in np.ndindex(*shape):
        at = dict(zip(ties.value_axes, idx))
        out_index = [at.get(("out", k), 0) for k in range(len(out_shape))]
        in_index = [out_index[tie_of_in[k]] if k in tie_of_in else at[("in", k)] for k in range(len(in_shape))]
        values[idx] = dense[tuple(out_index + in_index)]
    return values


@st.composite
def ties_between(draw, out_rank: int, in_rank: int) -> AxisTies:
    """Random ties between axes of the two ranks; sometimes a value-less relabelling."""
    if out_rank == in_rank and draw(st.integers(0, 5)) == 0:
        perm = draw(st.permutations(range(in_rank)))
        return axis_ties(out_rank, in_rank, [(o, perm[o], "K") for o in range(out_rank)], False)
    count = draw(st.integers(0, min(out_rank, in_rank)))
    outs = draw(st.permutations(range(out_rank)))[:count]
    ins = draw(st.permutations(range(in_rank)))[:count]
    kinds = draw(st.lists(st.sampled_from("DK"), min_size=count, max_size=count))
    return axis_ties(out_rank, in_rank, list(zip(outs, ins, kinds)), True)


@st.composite
def chained_partials(draw):
    """(in: p->v, out: v->c) with shapes whose tied axes agree, and their value arrays."""
    rc, rv, rp = (draw(st.integers(0, 3)) for _ in range(3))
    t_in, t_out = draw(ties_between(rv, rp)), draw(ties_between(rc, rv))
    v_shape = [draw(st.integers(1, 3)) for _ in range(rv)]
    c_shape = [draw(st.integers(1, 3)) for _ in range(rc)]
    p_shape = [draw(st.integers(1, 3)) for _ in range(rp)]
    for o, i, _ in t_out.ties:
        c_shape[o] = v_shape[i]
    for o, i, _ in t_in.ties:
        p_shape[i] = v_shape[o]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    in_values = rng.normal(size=value_shape(t_in, v_shape, p_shape))
    out_values = rng.normal(size=value_shape(t_out, c_shape, v_shape))
    return t_in, t_out, tuple(c_shape), tuple(v_shape), tuple(p_shape), in_values, out_values


@settings(max_examples=150, deadline=None)
@given(chained_partials())
def test_products_of_any_ranks_equal_dense_contractions(case):
    t_in, t_out, c_shape, v_shape, p_shape, in_values, out_values = case
    plan = axis_product(t_in, t_out)
    dense = np.tensordot(
        densify(t_out, out_values, c_shape, v_shape), densify(t_in, in_values, v_shape, p_shape), axes=len(v_shape)
    ).reshape((*c_shape, *p_shape))
    # The structured product: one einsum over the value arrays (a value-less factor is a relabelling).
    spec = f"{plan.out_letters},{plan.in_letters}->{plan.result_letters}"
    values = np.einsum(spec, out_values if t_out.has_values else np.ones(()),
                       in_values if t_in.has_values else np.ones(()))
    np.testing.assert_allclose(densify(plan.result, values, c_shape, p_shape), dense, atol=1e-12)
    # One multiplication per point of the joint index space of the two value arrays.
    sizes = {"c": c_shape, "v": v_shape, "p": p_shape}
    letters = dict(zip(plan.out_letters, value_shape(t_out, c_shape, v_shape)))
    letters.update(zip(plan.in_letters, value_shape(t_in, v_shape, p_shape)))
    both = t_in.has_values and t_out.has_values
    expected = 1 if plan.unit else int(np.prod(list(letters.values()))) if both else 0
    counted = int(np.prod([sizes["cvp"[g]][k] for g, k in plan.factors])) if plan.factors else int(plan.unit)
    assert counted == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3), st.integers(0, 3), st.data())
def test_a_sum_fits_the_structure_both_share(out_rank, in_rank, data):
    old, new = data.draw(ties_between(out_rank, in_rank)), data.draw(ties_between(out_rank, in_rank))
    out_shape = [data.draw(st.integers(1, 3)) for _ in range(out_rank)]
    in_shape = [data.draw(st.integers(1, 3)) for _ in range(in_rank)]
    changed = True
    while changed:  # ties of the two structures may chain sizes across several axes
        changed = False
        for o, i, _ in (*old.ties, *new.ties):
            if out_shape[o] != in_shape[i]:
                in_shape[i] = out_shape[o] = max(out_shape[o], in_shape[i])
                changed = True
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    total = sum(densify(t, rng.normal(size=value_shape(t, out_shape, in_shape)), out_shape, in_shape) for t in (old, new))
    result = axis_sum(old, new)
    rebuilt = densify(result, extract(result, total, out_shape, in_shape), out_shape, in_shape)
    np.testing.assert_allclose(rebuilt, total, atol=1e-12)


def test_the_2d_codes_are_the_rank_2_case():
    for code in STRUCTURED_CODES:
        if code != -1:  # the copy shares the identity's ties: code_of names it -6
            assert code_of_axis_ties(axis_ties_of(code)) == code
    for i, o in itertools.product(STRUCTURED_CODES, repeat=2):
        general = axis_product(axis_ties_of(i), axis_ties_of(o))
        plan = product_plan(i, o)
        assert (plan.out_letters, plan.in_letters, plan.result_letters) == (
            general.out_letters, general.in_letters, general.result_letters)


def test_a_batched_matmul_is_diagonal_along_its_batch_axis_and_kronecker_along_its_free_axis():
    # out[b, i, j] = sum_k a[b, i, k] w[b, k, j]; the partial d out / d a ties b (values) and i (a delta).
    d_out_d_a = axis_ties(3, 3, [(0, 0, "D"), (1, 1, "K")])
    tanh = axis_ties(3, 3, [(0, 0, "D"), (1, 1, "D"), (2, 2, "D")])  # elementwise: every axis diagonal
    plan = axis_product(d_out_d_a, tanh)
    assert plan.result == axis_ties(3, 3, [(0, 0, "D"), (1, 1, "D")])
    assert plan.factors == ((0, 0), (0, 1), (0, 2), (2, 2))  # b, i, j and k: b·i·j·k multiplications


@pytest.mark.parametrize(
    ("out_rank", "in_rank", "ties", "has_values"),
    [(2, 2, [(0, 0, "D"), (1, 0, "D")], True), (2, 1, [(0, 1, "K")], True), (2, 2, [(0, 0, "K")], False),
     (1, 1, [(0, 0, "X")], True)],
)
def test_malformed_ties_are_refused(out_rank, in_rank, ties, has_values):
    with pytest.raises(ValueError):
        axis_ties(out_rank, in_rank, ties, has_values)


# ---- the tables of graphs with rank >= 3 arrays (extended codes) -----------------------------


def test_extended_tables_without_structures_are_the_exact_model():
    model = cost_model("exact")
    tables = extended_tables((), 2)
    assert (tables.mask == model.mask).all() and (tables.mul == model.mul).all() and (tables.add == model.add).all()
    assert tables.unit_pairs == model.unit_pairs and tables.structures == ()
    wider = extended_cost_model((), 3)  # the same codes counted over 3 axes per node, padded with ones
    rng = np.random.default_rng(0)
    for _ in range(300):
        i, o = (int(x) for x in rng.choice(CODES, 2))
        c, v, p = ((int(a), int(b)) for a, b in rng.integers(1, 5, (3, 2)))
        assert wider.pair_cost(i, o, c, v, p) == model.pair_cost(i, o, c, v, p), (i, o)


def _name(ties: AxisTies, model) -> int:
    """The code a model gives a structure (as `extended_tables` names results)."""
    if ties.has_values and not ties.ties:
        return 1
    if (ties.out_rank, ties.in_rank) == (2, 2):
        return code_of_axis_ties(ties)
    return FIRST_EXTENDED_CODE + model.structures.index(ties)


def _ties_at(code: int, model, out_rank: int, in_rank: int) -> AxisTies:
    if code == 1:
        return axis_ties(out_rank, in_rank, (), True)
    if code >= FIRST_EXTENDED_CODE:
        return model.structures[code - FIRST_EXTENDED_CODE]
    return axis_ties_of(code)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_extended_tables_count_every_product_as_the_algebra_at_the_actual_ranks(data):
    """Codes 1 (dense) stand for every rank: the table's count and product code, computed once
    per code pair, must equal `axis_product` at the ranks and sizes of the actual nodes."""
    given = tuple(dict.fromkeys(
        data.draw(ties_between(data.draw(st.integers(2, 3)), data.draw(st.integers(2, 3)))) for _ in range(2)))
    given = tuple(t for t in given if (t.out_rank, t.in_rank) != (2, 2) and t.ties)
    model = LabelledCostModel(given, 3)  # a fresh one: its codes grow as products name structures
    codes = [c for c in CODES if c not in (0, 11)] + [FIRST_EXTENDED_CODE + k for k in range(len(model.structures))]
    ranks = {c: ((model.structures[c - 12].out_rank, model.structures[c - 12].in_rank) if c >= 12 else
                 None if c == 1 else (2, 2)) for c in codes}
    for _ in range(25):
        i, o = data.draw(st.sampled_from(codes)), data.draw(st.sampled_from(codes))
        v_rank = ranks[i][0] if ranks[i] else ranks[o][1] if ranks[o] else data.draw(st.integers(2, 3))
        if ranks[i] and ranks[o] and ranks[i][0] != ranks[o][1]:
            continue
        p_rank = ranks[i][1] if ranks[i] else data.draw(st.integers(2, 3))
        c_rank = ranks[o][0] if ranks[o] else data.draw(st.integers(2, 3))
        t_in, t_out = _ties_at(i, model, v_rank, p_rank), _ties_at(o, model, c_rank, v_rank)
        dims = {g: [data.draw(st.integers(1, 4)) for _ in range(r)] for g, r in zip("cvp", (c_rank, v_rank, p_rank))}
        for _ in range(3):  # tied axes have equal sizes
            for o_, i_, _ in t_out.ties:
                dims["c"][o_] = dims["v"][i_]
            for o_, i_, _ in t_in.ties:
                dims["p"][i_] = dims["v"][o_]
        plan = axis_product(t_in, t_out)
        expected = 1 if plan.unit else int(np.prod([dims["cvp"[g]][k] for g, k in plan.factors])) if plan.factors else 0
        assert model.pair_cost(i, o, dims["c"], dims["v"], dims["p"]) == expected, (i, o)
        assert model.product_code(i, o) == _name(plan.result, model), (i, o)
        if ranks[i] is not None and ranks[i] == ranks[o]:  # two partials of one edge: their sum
            summed = axis_sum(_ties_at(i, model, *ranks[i]), _ties_at(o, model, *ranks[o]))
            assert model.sum_code(i, o) == _name(summed, model), (i, o)
