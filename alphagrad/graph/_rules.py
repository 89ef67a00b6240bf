"""Structure codes of the partial Jacobians of each primitive.

For an edge p->v the Jacobian indices are (1, 2) = v's two dimensions and (3, 4) = p's, after
normalising both to 2-D (scalar -> (1, 1), vector (n,) -> (n, 1)). A "diagonal" pairing ties two
indices and carries values; a "Kronecker" pairing ties them with a constant. The code of every
combination is listed in REFERENCE.md section 1.3; docs/cost-model.md lists where our rules
deliberately differ from the reference graph builder.

Primitives in `RULED_PRIMITIVES` have structural rules. Every other primitive is accepted too: its
partials are dense (`DENSE`, code 1: every output entry may depend on every operand entry), which
is what the interpreter computes for it by JAX's own differentiation of the equation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from jax.extend.core import Var

from alphagrad.graph._structure import INDEX_MAP, AxisTies, axis_ties

__all__ = [
    "UNARY",
    "BINARY",
    "ZERO_DERIVATIVE",
    "STRUCTURAL",
    "RULED_PRIMITIVES",
    "LINEARISED_INDEX_MAPS",
    "CUSTOM_DERIVATIVES",
    "SCALING_SCATTERS",
    "PER_OPERAND",
    "DENSE",
    "normalise",
    "has_high_rank",
    "edge_codes",
    "labelled_structure",
]

Shape = tuple[int, ...]

UNARY = frozenset(
    "neg abs exp exp2 log log1p expm1 sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh "
    "integer_pow sqrt rsqrt cbrt logistic erf erfc erf_inv square lgamma digamma".split()
)
# Binary elementwise primitives; for LINEAR_IN[name] operand positions the partial is a constant
# multiple of the identity when the other operand is a scalar (x + s, s * x, x / s).
BINARY = frozenset("add sub mul div pow atan2 max min add_any rem nextafter select_n".split())
LINEAR_IN = {"add": (0, 1), "add_any": (0, 1), "sub": (0, 1), "mul": (0, 1), "div": (0,)}
# Primitives whose outputs carry no derivative: they become vertices without in-edges.
ZERO_DERIVATIVE = frozenset(
    "eq ne lt le gt ge and or not xor sign floor ceil round is_finite stop_gradient iota "
    "argmax argmin".split()
)
# Primitives that only move, copy or reinterpret values.
STRUCTURAL = frozenset(
    "reshape slice dynamic_slice dynamic_update_slice concatenate stack squeeze broadcast_in_dim "
    "transpose convert_element_type copy copy_p device_put reduce_precision rev pad tile".split()
)
REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min".split())
# Primitives of several operands and as many outputs, output k computed from operand k alone
# (``jax.device_put((a, b))`` inside a function): no edge between different positions.
PER_OPERAND = frozenset({"device_put"})
# Primitives with a structural rule; every other primitive gets dense edges.
# Primitives whose derivative only selects, moves or adds tangent entries, though which entries may
# depend on the values (sort, max pooling, clamp) or on integer operands (gather, scatter): their
# partials are index maps (code 11), applied as the equation's own linearisation, and multiply nothing.
LINEARISED_INDEX_MAPS = frozenset(
    "gather scatter scatter-add cumsum cummax cummin sort top_k split reduce_window_sum "
    "reduce_window_max reduce_window_min clamp".split()
)
# Primitives a pointwise function with a custom JVP rule may be built from (see `_is_pointwise`).
_POINTWISE_BODY = UNARY | BINARY | ZERO_DERIVATIVE | frozenset(
    "convert_element_type copy copy_p custom_jvp_call pjit jit closed_call clamp broadcast_in_dim".split()
)
_BODY_PARAMS = ("jaxpr", "call_jaxpr")


def _is_pointwise(jaxpr, shape: Shape) -> bool:
    """Whether `jaxpr` computes elementwise: only elementwise primitives (and calls of such), every
    value of shape `shape` or a scalar (so output entry k depends only on operand entries k).
    Values computed from constants alone may have any shape (a rule batched by jax.vmap builds its
    zero tangent as a broadcast of a smaller constant)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    varying = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if not any(isinstance(v, Var) and v in varying for v in eqn.invars):
            continue  # constants only: no entry of an operand reaches it
        varying.update(eqn.outvars)
        if eqn.primitive.name not in _POINTWISE_BODY:
            return False
        avals = [a.aval for a in list(eqn.invars) + list(eqn.outvars)]
        if any(tuple(getattr(a, "shape", ())) not in ((), tuple(shape)) for a in avals):
            return False
        bodies = [eqn.params[k] for k in _BODY_PARAMS if k in eqn.params]
        if any(not _is_pointwise(body, shape) for body in bodies):
            return False
    return True


def _jvp_rule_is_pointwise(params, num_operands: int, shape: Shape) -> bool:
    """Whether the custom JVP rule of a `custom_jvp_call` computes elementwise (`_is_pointwise`).

    The partials are the rule's, not the primal's: a pointwise primal whose rule mixes entries
    (``jnp.sin(x)`` with a tangent ``cos(x) * t + t[::-1]``) has a dense Jacobian. A rule that
    cannot be traced here counts as not pointwise (dense partials are exact for any rule)."""
    rule = _jvp_rule(params, num_operands)
    return rule is not None and _is_pointwise(rule, shape)


def _jvp_rule(params, num_operands: int):
    """The jaxpr of a `custom_jvp_call`'s JVP rule (primals, then every tangent, in; primal outputs,
    then tangent outputs, out), or None where it cannot be traced here."""
    fun = params.get("jvp_jaxpr_fun")
    if fun is None:
        return None
    try:
        return fun.call_wrapped(*([False] * num_operands))[0]
    except Exception:  # noqa: BLE001 - JAX's internals: dense partials are exact for any rule
        return None


#: Primitives linear in every operand the tangents reach (sums, data movement, reductions by sums).
_LINEAR_IN_ALL = frozenset(
    "add add_any sub neg convert_element_type reshape broadcast_in_dim transpose squeeze expand_dims slice pad "
    "concatenate rev tile reduce_sum cumsum copy copy_p real imag conj complex reduce_precision fft device_put "
    "reduce_window_sum sharding_constraint optimization_barrier".split()
)
#: Primitives linear in the operands at these positions, provided no other operand carries a tangent.
_LINEAR_AT = {
    "mul": (0, 1), "dot_general": (0, 1), "conv_general_dilated": (0, 1),  # one tangent factor at most
    "div": (0,), "triangular_solve": (1,), "dynamic_slice": (0,), "dynamic_update_slice": (0, 1),
    "gather": (0,), "scatter-add": (0, 2), "scatter": (0, 2), "select_and_scatter_add": (0,),
}
#: ... and those linear only while a single one of those operands carries a tangent (a product of two).
_ONE_FACTOR = frozenset({"mul", "dot_general", "conv_general_dilated"})
#: Primitives that are not linear in any operand (elementwise functions, comparisons, orderings):
#: a JVP rule applying one to a tangent is not linear in it. Primitives in neither set (loops,
#: conditionals, primitives JAX adds later) are trusted: only a rule known to be nonlinear is refused.
_NONLINEAR = (UNARY | ZERO_DERIVATIVE | frozenset(
    "pow atan2 max min rem nextafter clamp reduce_max reduce_min reduce_prod reduce_and reduce_or sort top_k "
    "cummax cummin cumprod cumlogsumexp reduce_window_max reduce_window_min".split()
)) - frozenset({"neg", "stop_gradient", "iota"})
_CALL_BODIES = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr", "core_call": "call_jaxpr",
                "remat": "jaxpr", "remat2": "jaxpr", "checkpoint": "jaxpr", "custom_jvp_call": "call_jaxpr"}


def _nonlinear_use(jaxpr, carries: Sequence[bool]) -> tuple[list[bool], list[bool], str | None]:
    """Which outputs of `jaxpr` a tangent reaches, given which inputs carry one (`carries`), and which
    of them a nonlinear operation on a tangent reaches ("tainted"), with that operation's name.

    Returns (carries of the outputs, tainted outputs, the first nonlinear primitive met or None)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    carrying = {v for v, c in zip(jaxpr.invars, carries) if c}
    tainted: set = set()
    culprit = None

    def has(var, among) -> bool:
        return isinstance(var, Var) and var in among

    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        reached = [k for k, v in enumerate(eqn.invars) if has(v, carrying)]
        if not reached:
            continue
        body = eqn.params.get(_CALL_BODIES.get(name, ""), None)
        if body is not None and len(getattr(getattr(body, "jaxpr", body), "invars", ())) == len(eqn.invars):
            inner_carries, inner_tainted, inner_culprit = _nonlinear_use(body, [has(v, carrying) for v in eqn.invars])
            for v, c, t in zip(eqn.outvars, inner_carries, inner_tainted):
                if c:
                    carrying.add(v)
                if t or (c and any(has(u, tainted) for u in eqn.invars)):
                    tainted.add(v)
            culprit = culprit or inner_culprit
            continue
        carrying.update(eqn.outvars)
        nonlinear = name in _NONLINEAR
        if name == "select_n":
            nonlinear = 0 in reached  # the predicate depends on a tangent
        elif name in _LINEAR_AT:
            nonlinear = (any(k not in _LINEAR_AT[name] for k in reached)
                         or (name in _ONE_FACTOR and len(reached) > 1))
        if nonlinear:
            culprit = culprit or name
        if nonlinear or any(has(v, tainted) for v in eqn.invars):
            tainted.update(eqn.outvars)
    outs = jaxpr.outvars
    return [has(v, carrying) for v in outs], [has(v, tainted) for v in outs], culprit


def jvp_rule_nonlinearity(params, num_operands: int) -> str | None:
    """The name of a primitive through which the custom JVP rule of a `custom_jvp_call` applies a
    nonlinear function to a tangent (a clipped or normalised tangent), or None where every tangent
    output is linear in the tangents as far as the rule's operations tell (unknown primitives,
    loops and conditionals are trusted) or the rule cannot be traced here.

    Such a rule is no derivative: jax.jacfwd's columns then depend on the seeds' scale, jax.jacrev
    cannot transpose it, and a product of its partials reproduces neither."""
    rule = _jvp_rule(params, num_operands)
    if rule is None or len(getattr(rule, "jaxpr", rule).invars) != 2 * num_operands:
        return None
    _, tainted, culprit = _nonlinear_use(rule, [False] * num_operands + [True] * num_operands)
    half = len(tainted) // 2
    return culprit if any(tainted[half:]) else None


def _custom_jvp_codes(in_shapes, out_shape: Shape, params, live) -> dict[int, int]:
    """A function with a custom JVP rule: diagonal in each operand of its output's shape when both
    its primal and its rule are pointwise (relu, logaddexp, xlogy), dense otherwise; its partials
    come from its rule."""
    pointwise = (_is_pointwise(params["call_jaxpr"], out_shape)
                 and _jvp_rule_is_pointwise(params, len(in_shapes), out_shape))
    out = normalise(out_shape)
    codes = {}
    for i in live:
        same = tuple(in_shapes[i]) == tuple(out_shape)
        codes[i] = (1 if out == (1, 1) else 6) if pointwise and same else DENSE
    return codes


# Convolutions are rank >= 3: they have a rule under the exact model only (the 2024 model refuses them).
CONTRACTIONS = frozenset({"dot_general", "conv_general_dilated"})
CUSTOM_DERIVATIVES = frozenset({"custom_jvp_call"})
# Scatters that scale entries of their operand (``x.at[i].mul(u)``): output entry k is operand entry k
# times the updates scattered onto k (or 1), so d(out)/d(operand) is a diagonal; d(out)/d(updates) is
# dense (each update reaches the entries its index names, weighted by the operand there).
SCALING_SCATTERS = frozenset({"scatter-mul"})
RULED_PRIMITIVES = (
    UNARY | BINARY | ZERO_DERIVATIVE | STRUCTURAL | REDUCTIONS | CONTRACTIONS | LINEARISED_INDEX_MAPS
    | CUSTOM_DERIVATIVES | SCALING_SCATTERS
)
#: The code of a partial without known structure (the dense fallback): a full [v1, v2, p1, p2] array.
DENSE = 1

# (tied index pairs) -> code; each tie is (v index, p index, kind) with kind "D" (values) or "K".
_TIE_CODES: dict[frozenset, int] = {
    frozenset(): 1,
    frozenset({(1, 3, "D")}): 2,
    frozenset({(2, 4, "D")}): 3,
    frozenset({(1, 4, "D")}): 4,
    frozenset({(2, 3, "D")}): 5,
    frozenset({(1, 3, "D"), (2, 4, "D")}): 6,
    frozenset({(1, 4, "D"), (2, 3, "D")}): 7,
    frozenset({(1, 3, "K"), (2, 4, "D")}): 8,
    frozenset({(1, 4, "K"), (2, 3, "D")}): 9,
    frozenset({(1, 3, "K"), (2, 4, "K")}): 10,
    frozenset({(1, 3, "K")}): -2,
    frozenset({(2, 4, "K")}): -3,
    frozenset({(1, 4, "K")}): -4,
    frozenset({(2, 3, "K")}): -5,
    frozenset({(1, 3, "D"), (2, 4, "K")}): -8,
    frozenset({(1, 4, "D"), (2, 3, "K")}): -9,
    frozenset({(1, 4, "K"), (2, 3, "K")}): -10,
}


def normalise(shape: Shape) -> tuple[int, int]:
    """The paper's 2-D normalisation: () -> (1, 1), (n,) -> (n, 1), (n, m) unchanged.

    An array of 3 or more dimensions keeps its leading axis and flattens the others in row-major
    order, (d1, d2, ..., dk) -> (d1, d2 * ... * dk): elementwise partials stay diagonal, data
    movement stays an index map, and a tie between leading axes (the batch axis of a batched
    contraction or convolution, a reduction that keeps the leading axis) is still a tie; whatever
    else ties axes of such arrays is dense over the flattened trailing entries (`has_high_rank`).
    Only the exact model accepts such shapes.
    """
    if len(shape) == 0:
        return (1, 1)
    if len(shape) == 1:
        return (int(shape[0]), 1)
    if len(shape) == 2:
        return (int(shape[0]), int(shape[1]))
    return (int(shape[0]), math.prod(int(n) for n in shape[1:]))


def has_high_rank(*shapes: Shape) -> bool:
    """Whether any of `shapes` has 3 or more dimensions (and is flattened by `normalise`)."""
    return any(len(s) > 2 for s in shapes)


def _code_from_ties(ties: set[tuple[int, int, str]]) -> int:
    # Ties between original dimensions, turned into 2-D index positions: v dims -> 1, 2; p dims -> 3, 4.
    return _TIE_CODES[frozenset(ties)]


def _dot_general_codes(lhs: Shape, rhs: Shape, params: dict[str, Any]) -> tuple[int, int]:
    """Codes of d(out)/d(lhs) and d(out)/d(rhs) from which output and operand dimensions coincide."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    lhs_free = [d for d in range(len(lhs)) if d not in lc and d not in lb]
    rhs_free = [d for d in range(len(rhs)) if d not in rc and d not in rb]
    # Output dimensions: batch, lhs free, rhs free.
    out_of_lhs = {d: i for i, d in enumerate(lb)}
    out_of_rhs = {d: i for i, d in enumerate(rb)}
    for j, d in enumerate(lhs_free):
        out_of_lhs[d] = len(lb) + j
    for j, d in enumerate(rhs_free):
        out_of_rhs[d] = len(lb) + len(lhs_free) + j
    lhs_ties = {(out_of_lhs[d] + 1, d + 3, "D" if d in lb else "K") for d in out_of_lhs}
    rhs_ties = {(out_of_rhs[d] + 1, d + 3, "D" if d in rb else "K") for d in out_of_rhs}
    return _code_from_ties(lhs_ties), _code_from_ties(rhs_ties)


def _reduction_code(operand: Shape, axes: Sequence[int], kind: str) -> int:
    kept = [d for d in range(len(operand)) if d not in axes]
    # Kept dimensions tie to the output's; a sum ties them with ones, max/min with a 0/1 selector.
    return _code_from_ties({(i + 1, d + 3, kind) for i, d in enumerate(kept)})


def _binary_code(name: str, position: int, out: tuple[int, int], x: tuple[int, int],
                 others: Sequence[tuple[int, int]]) -> int:
    """Code of one operand of an elementwise binary op (the reference rule, with its scalar bug fixed)."""
    if x == (1, 1):
        return 1
    other_scalar = any(o == (1, 1) for o in others)
    constant = other_scalar and position in LINEAR_IN.get(name, ())
    if x[1] == 1:  # column vector
        if out[1] == 1:
            return -2 if constant else 2
        return 2
    if x[0] == 1:  # row vector
        if out[0] == 1:
            return -3 if constant else 3
        return 3
    other = others[0] if others else x
    if other == (1, 1):
        return 10 if constant else 6
    if other[1] == 1:
        return -8
    if other[0] == 1:
        return 8
    return 6


def _relabel_code(norm_in: tuple[int, int], norm_out: tuple[int, int]) -> int:
    """Code of a pure data movement: identity, 2-D transpose, or a general index map (11)."""
    if norm_in == norm_out:
        return -6
    if norm_in == norm_out[::-1] and 1 in norm_in:
        return -7  # (n, 1) <-> (1, n): the same values, transposed
    return 11


def _exact_codes(name, norm, out, params, live, in_shapes) -> dict[int, int] | None:
    """Rules of the exact model where they differ from the reference's; None = same rule."""
    scalar_out = out == (1, 1)
    if name == "neg":
        return {i: 10 for i in live}
    if name in ("add", "add_any", "sub", "mul", "div") or name in BINARY:
        codes = {}
        for i in live:
            if name == "select_n" and i == 0:
                continue
            others = [norm[j] for j in range(len(norm)) if j != i and not (name == "select_n" and j == 0)]
            if norm[i] != out:  # an operand broadcast against the output
                codes[i] = (11 if name in ("add", "add_any") or (name == "sub" and i == 0)
                            else 1 if name == "sub" else _broadcast_operand_code(norm[i], out))
            elif name in ("add", "add_any") or (name == "sub" and i == 0):
                codes[i] = -6  # the identity
            elif name == "sub":
                codes[i] = 10  # minus the identity
            elif name in ("mul",) or (name == "div" and i == 0):
                codes[i] = 10 if any(o == (1, 1) for o in others) and not scalar_out else (1 if scalar_out else 6)
            else:
                codes[i] = 1 if scalar_out else 6
        return codes
    if name == "reduce_sum":
        return {i: 11 for i in live}  # a sum adds only
    if name in ("broadcast_in_dim", "squeeze", "reshape"):
        code = _relabel_code(norm[0], out) if _keeps_row_major_order(name, params) else INDEX_MAP
        return {i: code for i in live if i == 0}
    return None


def _broadcast_operand_code(norm_in: tuple[int, int], out: tuple[int, int]) -> int:
    """Code of d(out)/d(operand) for an elementwise binary op whose operand is broadcast along size-1
    axes: one entry per output row (normalised (m, 1) against (m, n): code 2, rows tied with values)
    or per output column ((1, n) against (m, n): code 3), dense (1) otherwise (a scalar: one column;
    a broadcast that the normalisation flattens with other axes, (b, 1, d) against (b, s, d)). A
    binary operand has the output's rank and each axis 1 or the output's, so a normalised (m, 1) is
    (m, 1, ..., 1) and a normalised (1, n) is (1, *the output's other axes*).

    Dense partials of such broadcasts held structural zeros: a product with an infinite partial, the
    square root of a zero norm in ``x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)``,
    turned them into NaN in the Jacobian of the other rows, where jax.jacfwd has 0. The subtrahend of
    a ``sub`` keeps its dense partial: it is -1 times the broadcast's 0/1 pattern, kept lazy by the
    interpreter (`_structured.broadcast_partial`, zero off the pattern whatever it meets); tied, the
    pair differences ``x[:, None] - x[None, :]`` of lennard_jones ran 3x slower in forward order."""
    if norm_in == (1, 1):
        return DENSE
    if norm_in == (out[0], 1):
        return 2
    if norm_in == (1, out[1]):
        return 3
    return DENSE


def _keeps_row_major_order(name: str, params: dict[str, Any]) -> bool:
    """Whether a reshape or broadcast keeps its operand's entries in row-major order. Not so for a
    reshape with ``dimensions`` (it transposes first: ``jnp.reshape(x, s, order="F")`` makes one) or a
    broadcast whose ``broadcast_dimensions`` are out of order (a transpose): with the same normalised
    shapes, such an equation is no identity but an index map."""
    if name == "reshape":
        dims = params.get("dimensions")
        return dims is None or tuple(dims) == tuple(range(len(dims)))
    if name == "broadcast_in_dim":  # generated graphs (env) give no dimensions: in order
        dims = tuple(params.get("broadcast_dimensions", ()))
        return dims == tuple(sorted(dims))
    return True


def _leading_tie(kind: str | None) -> int:
    """Code of a partial whose only structure is a tie between the leading axes (position 1 of
    the output, 3 of the operand): 2 with values along it ("D"), -2 constant along it ("K"),
    dense (1) without a tie (None)."""
    return {None: DENSE, "D": 2, "K": -2}[kind]


def _dot_general_leading_ties(lhs: Shape, rhs: Shape, out: Shape, params) -> tuple[str | None, str | None]:
    """Whether the output's leading axis is the leading axis of lhs / rhs, and how.

    The output's axes are batch, lhs free, rhs free. A shared batch axis carries values (the other
    operand's entries along it, "D"); a free axis of one operand is a Kronecker tie ("K": the
    partial is the other operand, the same for every index along it).
    """
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    if not out or not lhs or not rhs:
        return None, None
    if lb:
        return ("D" if lb[0] == 0 else None), ("D" if rb[0] == 0 else None)
    lhs_free = [d for d in range(len(lhs)) if d not in lc]
    if lhs_free:
        return ("K" if lhs_free[0] == 0 else None), None
    rhs_free = [d for d in range(len(rhs)) if d not in rc]
    return None, ("K" if rhs_free and rhs_free[0] == 0 else None)


def _convolution_leading_ties(params) -> tuple[str | None, str | None]:
    """A convolution treats every example of the batch alike: d(out)/d(lhs) is tied along the batch
    axis with a constant (the kernel) when batch is the leading axis of both lhs and the output and
    batch groups do not mix examples; d(out)/d(kernel) has no such tie (dense)."""
    lhs_spec, _, out_spec = params["dimension_numbers"]
    batched = lhs_spec[0] == 0 and out_spec[0] == 0 and params.get("batch_group_count", 1) == 1
    return ("K" if batched else None), None


def _convolution_kernel_tie(params) -> str:
    """The kind of the tie of d(out)/d(kernel) between the output's feature axis and the kernel's
    output-feature axis: output feature o reads only kernel slice o, so the partial is zero off
    their diagonal. Without feature groups its values (the input's patches, [batch, spatial...,
    window..., in features]) are the same for every o ("K"); with groups each o reads its group's
    input features ("D": values per o)."""
    return "K" if params.get("feature_group_count", 1) == 1 else "D"


def depthwise(params, lhs_shape, out_shape) -> bool:
    """Whether a convolution is depthwise with one output feature per input feature (feature groups
    as many as the input's features, and as many output features): output feature c reads input
    feature c alone, a "D" tie between the two feature axes of d(out)/d(lhs) (values: the kernel's
    taps for c)."""
    lhs_spec, _, out_spec = params["dimension_numbers"]
    groups = params.get("feature_group_count", 1)
    return groups > 1 and lhs_shape[lhs_spec[1]] == groups == out_shape[out_spec[1]]


def _high_rank_codes(name, norm, out, params, live, in_shapes, out_shape) -> dict[int, int]:
    """Exact-model codes for an equation touching an array of 3 or more dimensions.

    Such arrays keep their leading axis and flatten the rest (see `normalise`): elementwise rules
    and identities carry over unchanged (both sides flatten alike), every data movement is an index
    map, a tie between leading axes stays a tie (`_leading_tie`), and every other partial is dense.
    """
    if name == "dot_general":
        ties = _dot_general_leading_ties(in_shapes[0], in_shapes[1], out_shape, params)
        return {i: _leading_tie(ties[i]) for i in live}
    if name == "conv_general_dilated":
        ties = _convolution_leading_ties(params)
        return {i: _leading_tie(ties[i]) for i in live}
    if name in ("reduce_max", "reduce_min"):
        keeps_leading = out_shape and in_shapes[0] and 0 not in params["axes"]
        return {i: _leading_tie("D" if keeps_leading else None) for i in live}
    if name == "transpose":
        identity = tuple(params["permutation"]) == tuple(range(len(in_shapes[0])))
        return {i: (-6 if identity else INDEX_MAP) for i in live}
    if name in UNARY or name in BINARY or name in ("reduce_sum", "broadcast_in_dim", "squeeze", "reshape"):
        exact = _exact_codes(name, norm, out, params, live, in_shapes)
        if exact is not None:
            return exact
        return {i: (1 if out == (1, 1) else 6) for i in live}  # a unary elementwise map: diagonal
    if name in ("convert_element_type", "copy", "copy_p", "device_put", "reduce_precision"):
        return {i: -1 for i in live}
    if name in ("slice", "concatenate", "stack", "rev", "pad", "tile"):
        return {i: INDEX_MAP for i in live}
    if name in ("dynamic_slice", "dynamic_update_slice"):
        data = (0,) if name == "dynamic_slice" else (0, 1)
        return {i: INDEX_MAP for i in live if i in data}
    return {i: DENSE for i in live}


def edge_codes(
    name: str,
    in_shapes: Sequence[Shape],
    out_shape: Shape,
    params: dict[str, Any],
    differentiable: Sequence[bool],
    *,
    model: str = "alphagrad-2024",
    output: int = 0,
) -> dict[int, int]:
    """Structure codes of the edges of one equation (into one of its outputs).

    Args:
      name: primitive name; one outside RULED_PRIMITIVES gets a dense edge (`DENSE`) from every
        differentiable operand.
      in_shapes: original (not normalised) shapes of the operands.
      out_shape: original shape of the output.
      params: the equation's parameters.
      differentiable: per operand, whether it is a variable of a floating dtype (edges come only
        from these).
      model: "alphagrad-2024" reproduces the reference graph builder (with the fixes listed in
        docs/cost-model.md); "exact" gives every edge the code that describes its partial exactly,
        as the interpreter evaluates it (identities for add/sub, index maps for sums and broadcasts).
      output: which output of the equation the edges go into (`PER_OPERAND` primitives: output k
        copies operand k only).

    Returns:
      operand index -> code, for the operands that get an edge.
    """
    out = normalise(out_shape)
    norm = [normalise(s) for s in in_shapes]
    live = [i for i, d in enumerate(differentiable) if d]
    if name in PER_OPERAND:
        live = [i for i in live if i == output]
    if name in ZERO_DERIVATIVE:
        return {}
    if name not in RULED_PRIMITIVES:
        return {i: DENSE for i in live}
    if name in LINEARISED_INDEX_MAPS:
        return {i: INDEX_MAP for i in live}
    if name in CUSTOM_DERIVATIVES:
        return _custom_jvp_codes(in_shapes, out_shape, params, live)
    if name in SCALING_SCATTERS:
        # The diagonal is the elementwise code of the output's shape (both sides normalise alike).
        return {i: ((1 if out == (1, 1) else 6) if i == 0 else DENSE) for i in live}
    if model == "exact" and has_high_rank(out_shape, *in_shapes):
        return _high_rank_codes(name, norm, out, params, live, in_shapes, out_shape)
    if model == "exact":
        exact = _exact_codes(name, norm, out, params, live, in_shapes)
        if exact is not None:
            return exact
    if name in UNARY:
        return {i: (1 if out == (1, 1) else 6) for i in live}
    if name in BINARY:
        cases = list(range(1, len(in_shapes))) if name == "select_n" else list(range(len(in_shapes)))
        return {
            i: _binary_code(name, i, out, norm[i], [norm[j] for j in cases if j != i])
            for i in live
            if i in cases
        }
    if name == "dot_general":
        codes = _dot_general_codes(in_shapes[0], in_shapes[1], params)
        return {i: codes[i] for i in live}
    if name == "reduce_sum":
        return {i: _reduction_code(in_shapes[0], params["axes"], "K") for i in live}
    if name in ("reduce_max", "reduce_min"):
        return {i: _reduction_code(in_shapes[0], params["axes"], "D") for i in live}
    if name in ("broadcast_in_dim", "squeeze"):
        return {i: (-6 if norm[0] == out else -7) for i in live if i == 0}
    if name == "transpose":
        permutation = tuple(params["permutation"])
        return {i: (-7 if permutation == (1, 0) else -6) for i in live}
    if name in ("convert_element_type", "copy", "copy_p", "device_put", "reduce_precision"):
        return {i: -1 for i in live}
    if name in ("reshape", "slice", "concatenate", "stack", "rev", "pad", "tile"):
        return {i: 11 for i in live}
    if name in ("dynamic_slice", "dynamic_update_slice"):
        data = (0,) if name == "dynamic_slice" else (0, 1)
        return {i: 11 for i in live if i in data}
    if name == "conv_general_dilated":
        # No spatial axis (jnp.convolve or jax.scipy.signal.convolve of 0-d arrays): a product of
        # [batch, feature] matrices, dense as any unruled primitive's partials.
        return {i: DENSE for i in live}
    raise KeyError(name)


# ---- Labelled structures: partials touching an array of rank 3 or more ----------------------


def _runs(shape: Shape, dims: Sequence[int]) -> list[range]:
    """The structural axes of each axis of `shape` (its dims split each axis into a run of
    consecutive ones, row-major; `graph._dims`). A vector (n,) and a scalar are the 2-D (n, 1) and
    (1, 1): their axis 0 is structural axis 0."""
    runs, k = [], 0
    for n in shape:
        start, product = k, 1
        while True:
            product *= dims[k]
            k += 1
            if product >= n:
                break
        runs.append(range(start, k))
    return runs


def _tied(out_runs, in_runs, out_dims, in_dims, pairs, kind: str) -> list[tuple[int, int, str]]:
    """Ties between the structural axes of tied array axes (o, i): pairwise where both are split
    alike (an unmet split leaves the pair untied: dense along it, exact)."""
    ties = []
    for o, i in pairs:
        ro, ri = out_runs[o], in_runs[i]
        if [out_dims[a] for a in ro] == [in_dims[b] for b in ri]:
            ties += [(a, b, kind) for a, b in zip(ro, ri)]
    return ties


def labelled_structure(name: str, params: dict[str, Any], in_shapes: Sequence[Shape], out_shape: Shape,
                       in_dims: Sequence[int], out_dims: Sequence[int], position: int, code: int) -> AxisTies | int:
    """The structure of d(out)/d(operand `position`) between the structural dims of the two arrays.

    For an edge touching an array of rank 3 or more. `code` is the edge's 2-D code (`edge_codes`
    on the normalised shapes), whose meaning carries over where both sides are split alike: a
    diagonal (6) ties every axis with values, a constant multiple of the identity (10) and an
    identity (-6, -1) with Kronecker ties. Contractions tie their batch axes with values and the
    operand's free axes by Kronecker deltas, convolutions their batch axis, max/min reductions the
    kept axes; transposes are relabellings. Everything else keeps its 2-D code where that is dense
    (1) or an index map (11), which mean the same at every rank, and is dense otherwise.

    Returns:
      An `AxisTies` of ranks (len(out_dims), len(in_dims)), or the code 1 or 11.
    """
    in_shape = tuple(in_shapes[position])
    out_runs, in_runs = _runs(out_shape, out_dims), _runs(in_shape, in_dims)
    rank_o, rank_i = len(out_dims), len(in_dims)
    same = tuple(out_dims) == tuple(in_dims) and in_shape == tuple(out_shape)
    every = [(k, k) for k in range(len(out_shape))]
    if name == "transpose":
        pairs = [(k, d) for k, d in enumerate(params["permutation"])]
        ties = _tied(out_runs, in_runs, out_dims, in_dims, pairs, "K")
        if len(ties) == rank_o == rank_i:
            return axis_ties(rank_o, rank_i, ties, False)
        return INDEX_MAP
    if name in ("reshape", "squeeze", "expand_dims", "broadcast_in_dim") and _keeps_row_major_order(name, params):
        if tuple(out_dims) == tuple(in_dims):  # split alike: the same entries in the same order
            return axis_ties(rank_o, rank_i, [(k, k, "K") for k in range(rank_o)], False)
        return INDEX_MAP
    if name == "dot_general":
        (lc, rc), (lb, rb) = params["dimension_numbers"]
        contract, batch = (lc, lb) if position == 0 else (rc, rb)
        free = [d for d in range(len(in_shape)) if d not in contract and d not in batch]
        offset = len(lb) + (0 if position == 0 else len([d for d in range(len(in_shapes[0]))
                                                         if d not in lc and d not in lb]))
        ties = _tied(out_runs, in_runs, out_dims, in_dims, list(enumerate(batch)), "D")
        ties += _tied(out_runs, in_runs, out_dims, in_dims, [(offset + j, d) for j, d in enumerate(free)], "K")
        return axis_ties(rank_o, rank_i, ties, True) if ties else DENSE
    if name == "conv_general_dilated":
        lhs_spec, rhs_spec, out_spec = params["dimension_numbers"]
        if params.get("batch_group_count", 1) != 1:
            return DENSE
        if position == 0:
            ties = _tied(out_runs, in_runs, out_dims, in_dims, [(out_spec[0], lhs_spec[0])], "K")
            if depthwise(params, in_shape, out_shape):  # output feature c reads input feature c only
                ties += _tied(out_runs, in_runs, out_dims, in_dims, [(out_spec[1], lhs_spec[1])], "D")
        elif out_shape[out_spec[1]] == 1:  # one output feature (jnp.convolve): nothing to tie
            return DENSE
        else:
            ties = _tied(out_runs, in_runs, out_dims, in_dims, [(out_spec[1], rhs_spec[0])],
                         _convolution_kernel_tie(params))
        return axis_ties(rank_o, rank_i, ties, True) if ties else DENSE
    if name in ("reduce_max", "reduce_min"):
        kept = [d for d in range(len(in_shape)) if d not in params["axes"]]
        ties = _tied(out_runs, in_runs, out_dims, in_dims, list(enumerate(kept)), "D")
        return axis_ties(rank_o, rank_i, ties, True) if ties else DENSE
    if name in BINARY and name != "sub" and not same and code != INDEX_MAP and len(in_shape) == len(out_shape):
        # An operand broadcast along size-1 axes: its other axes tie to the output's, with values
        # (`_broadcast_operand_code`; a dense partial's structural zeros met infinite partials).
        pairs = [(k, k) for k in range(len(out_shape)) if in_shape[k] == out_shape[k]]
        ties = _tied(out_runs, in_runs, out_dims, in_dims, pairs, "D")
        return axis_ties(rank_o, rank_i, ties, True) if ties else DENSE
    kinds = {6: ("D", True), 10: ("K", True), -6: ("K", False), -1: ("K", False)}
    if same and code in kinds:
        kind, has_values = kinds[code]
        ties = _tied(out_runs, in_runs, out_dims, in_dims, every, kind)
        if len(ties) == rank_o:
            return axis_ties(rank_o, rank_i, ties, has_values)
    return code if code in (DENSE, INDEX_MAP) else DENSE
