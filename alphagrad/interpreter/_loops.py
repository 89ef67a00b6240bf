"""The partials of a `scan` kept as a loop: local Jacobians by elimination, chained across iterations.

A scan too long to unroll (`graph._loops`) is one dense vertex per floating-point output. Its
partials w.r.t. its differentiated operands are accumulated as the graph's `LoopPlan` says: each
iteration computes the body's local Jacobian blocks by cross-country elimination in the plan's body
order (the interpreter's own `jacobian`), stacked by the compiled `lax.scan` of the iterations, and
the chain multiplies them as the plan's levels bracket it (`chain_jacobian`,
`graph._loops.chain_plan`): per level, runs of b steps (iterations, or super-steps of the level below,
a vmap over the runs), each forward over its first s steps (a tangent state d c_k / d sources in a
`lax.scan`), reverse over the rest (an adjoint state d outputs / d c_k in a `lax.scan`, last to
first), the two meeting in one product at the carry between them; all forward and all reverse are
one level with s = L and s = 0. Every
multiplication is counted (`MultiplicationCounter.loops`) and checked against the plan
(`graph._loops.partial_muls` is their total). A plan in mode "whole" (the chain would not pay) has
its partials computed as every dense partial is, by JAX's differentiation of the whole loop, on a
body whose small sums are written out as adds (`fused_body`), outside the count.

Layout of the loop's Jacobian J: rows are the floating-point carries (n entries) then, per
iteration, the floating-point stacked outputs (q entries); columns are the differentiated carries,
the differentiated constants (p entries) then, per iteration, the differentiated per-step inputs
(m entries).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad.errors import AlphagradError
from alphagrad.interpreter._structured import MultiplicationCounter, Partial, contract

__all__ = ["loop_partials", "chain_jacobian"]


def _sizes(avals, indices, drop_leading=False) -> list[int]:
    return [math.prod(avals[i].shape[1:] if drop_leading else avals[i].shape) for i in indices]


def _offsets(sizes: list[int]) -> list[int]:
    return [int(x) for x in np.cumsum([0, *sizes])[:-1]]


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b for the chain's small blocks, by `_structured.contract` (written out as fused sums where
    small: under vmap a dot_general of tiny matrices is a batched matmul that XLA:CPU runs slowly)."""
    if 0 in a.shape or 0 in b.shape:
        return jnp.zeros((a.shape[0], b.shape[1]), jnp.result_type(a, b))
    return contract("ij", a, "jk", b, "ik")


def _matrix(blocks, rows: list[int], cols: list[int], dtype) -> jax.Array:
    """The [sum(rows), sum(cols)] matrix of the Jacobian blocks ``blocks[i][j]`` (any shapes)."""
    if not rows or not cols or sum(rows) == 0 or sum(cols) == 0:
        return jnp.zeros((sum(rows), sum(cols)), dtype)
    return jnp.concatenate([
        jnp.concatenate([jnp.asarray(blocks[i][j], dtype).reshape(r, c) for j, c in enumerate(cols)], axis=1)
        for i, r in enumerate(rows)
    ], axis=0)


#: A ``reduce_sum`` in a kept loop's body over at most this many entries is written out as adds of
#: slices: under JAX's differentiation of the loop its tangent (a [batch, columns, entries] array
#: reduced along its last, short axis) is a reduction kernel that XLA:CPU runs slowly, the adds
#: fuse elementwise (rk_two_carries' ``jnp.sum(q * p)`` over 3 entries: jax.jacfwd 42 ms at
#: batch 32,768, 9 ms without that output).
SUM_WRITTEN_OUT = 8


def _written_out_sum(x, axes) -> jax.Array:
    for axis in sorted(axes, reverse=True):
        parts = [jax.lax.index_in_dim(x, k, axis, keepdims=False) for k in range(x.shape[axis])]
        x = functools.reduce(jnp.add, parts)
    return x


def _small_sum(eqn) -> bool:
    return (eqn.primitive.name == "reduce_sum"
            and math.prod(eqn.invars[0].aval.shape[a] for a in eqn.params["axes"]) <= SUM_WRITTEN_OUT)


def _bodies(eqn) -> list:
    """The jaxprs `_eval_fused` enters: a scan's body, a call's."""
    name, body = eqn.primitive.name, eqn.params.get("jaxpr")
    return [body.jaxpr] if name in ("scan", "pjit", "closed_call") and hasattr(body, "jaxpr") else []


def _has_small_sums(jaxpr) -> bool:
    return any(_small_sum(eqn) or any(_has_small_sums(b) for b in _bodies(eqn)) for eqn in jaxpr.eqns)


def _eval_fused(jaxpr, consts, args) -> list[Any]:
    """jax.core.eval_jaxpr, with small sums written out (`SUM_WRITTEN_OUT`) and the bodies of inner
    loops and calls evaluated so too. Products keep their ``dot_general`` (written out as fused sums
    by `_structured.contract`, lstm_sequence's [2, 2] x [2, 12] products made its whole-loop
    partials 2x slower at batch 256)."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jax.extend.core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        values, name = [read(v) for v in eqn.invars], eqn.primitive.name
        if _small_sum(eqn):
            outs = [_written_out_sum(values[0], eqn.params["axes"])]
        elif name == "scan":
            outs = eqn.primitive.bind(*values, **{**eqn.params, "jaxpr": fused_body(eqn.params["jaxpr"])})
        elif _bodies(eqn):
            outs = _eval_fused(eqn.params["jaxpr"].jaxpr, eqn.params["jaxpr"].consts, values)
        else:
            result = eqn.primitive.bind(*values, **eqn.primitive.get_bind_params(eqn.params))
            outs = list(result) if eqn.primitive.multiple_results else [result]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def fused_body(body):
    """The scan body (a ClosedJaxpr) evaluated by `_eval_fused`: the same function, the same numbers
    up to the order of additions; `body` itself where it has no small sum (the same program)."""
    if not _has_small_sums(body.jaxpr):
        return body
    specs = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in body.jaxpr.invars]
    return jax.make_jaxpr(lambda *args: _eval_fused(body.jaxpr, body.consts, args))(*specs)


def _whole_loop_partials(eqn, values: list[Any], reached: dict[int, list]) -> dict[tuple[int, int], Partial]:
    """The dense partials of a scan kept whole (plan mode "whole"): JAX's differentiation of the loop
    (the interpreter's dense fallback: JVP columns or VJP rows), its body `fused_body`."""
    from alphagrad.interpreter._jacobian import _dense_partials

    fused = eqn._replace(params={**eqn.params, "jaxpr": fused_body(eqn.params["jaxpr"])}, loop=None)
    sources = {src: ([i for i, op in enumerate(eqn.operands) if op.node == src], pairs[0][1].in_shape)
               for src, pairs in reached.items()}
    out_shapes = {k: e.out_shape for pairs in reached.values() for k, e in pairs}
    outputs = sorted(out_shapes)
    _, partials = _dense_partials(fused, values, sources, outputs, [out_shapes[k] for k in outputs])
    return {(e.src, e.dst): partials[src][outputs.index(k)] for src, pairs in reached.items() for k, e in pairs}


def _counted_mm(tally: dict[str, int], where: str):
    """`_mm` that adds the multiplications of each product (its shapes', known while tracing) to
    ``tally[where]``: the products of one traced step of a scan, or of the meeting product (the caller
    sets it to 0 first, so that a second trace of the same step counts it once)."""

    def mm(a, b):
        tally[where] = tally.get(where, 0) + a.shape[0] * a.shape[1] * b.shape[1]
        return _mm(a, b)

    return mm


def _forward_step(T, k, blocks, dims: tuple[int, int, int], tally: dict[str, int]):
    """One step of a forward chain: the tangent state T [n, c + p + N·m] (d carry / d(carry columns,
    constants, inputs)) through step `k`'s blocks ``(A, E, B, GA, GE, GB)``; returns (T', the step's
    outputs' rows [q, c + p + N·m]). ``tally["forward"]``: its multiplications (set, not added: a scan
    may trace its step twice). dims: (c, p, m)."""
    c, p, m = dims
    a, e, bk, ga, ge, gb = blocks
    tally["forward"], mm = 0, _counted_mm(tally, "forward")
    y = mm(ga, T).at[:, c : c + p].add(ge)
    y = jax.lax.dynamic_update_slice(y, gb, (0, c + p + k * m))
    T = mm(a, T).at[:, c : c + p].add(e)
    return jax.lax.dynamic_update_slice(T, bk, (0, c + p + k * m)), y


def _fused_forward(iteration, carry0, xs, length: int, reverse: bool, columns, dims: tuple[int, int, int, int],
                   dtype) -> tuple[jax.Array, int]:
    """The chain all forward (levels ((L, L),)) in the same compiled scan as the iterations, no block
    stored: the state is the tangent d c_k / d sources, [n, c + p + L·m] (a 10,000-step integrator's
    final state needs no 10,000 stacked blocks). (J, multiplications) as `chain_jacobian` gives them.

    Args:
      iteration: ``(carry, x) -> (carry', (A, E, B, GA, GE, GB))``: one iteration and its blocks.
      carry0, xs, length, reverse: the scan's initial carries, per-step inputs, iterations, direction.
      columns: the differentiated carry entries (indices into the n); dims: (n, q, p, m).
    """
    n, q, p, m = dims
    c, tally = len(columns), {}
    width = c + p + length * m
    T = jnp.zeros((n, width), dtype).at[columns, np.arange(c)].set(1)

    def step(state, step_input):
        carry, T = state
        k, x = step_input  # k: the stacked position, whose input columns the step fills
        carry, blocks = iteration(carry, x)
        T, y = _forward_step(T, k, blocks, (c, p, m), tally)
        return (carry, T), y

    (_, T), Y = jax.lax.scan(step, (carry0, T), (jnp.arange(length), xs), length=length, reverse=reverse)
    return jnp.concatenate([T, Y.reshape(length * q, width)], axis=0), length * tally["forward"]


def _split_chain(blocks, split: int, columns, dims: tuple[int, int, int, int], dtype,
                 tally: dict[str, int]) -> jax.Array:
    """The Jacobian of a run of b steps (iterations or super-steps) in run order, from their stacked
    local blocks ``(A, E, B, GA, GE, GB)`` (leading axis b; blocks w.r.t. the carry, the constants and
    the step's inputs, of the carry's rows and the step's outputs' rows): forward over the first
    `split` steps, reverse over the rest, the two meeting at the carry between them
    (`graph._loops.split_muls`).

    Args:
      columns: the carry entries (indices into the n) that are sources: the carry's columns of the result.
      dims: (n, q, p, m), the entries per step of carry, outputs, constants and inputs.
      tally: receives the multiplications of one forward step ("forward"), one reverse step
        ("reverse") and the meeting ("meet"), from the shapes multiplied (`_counted_mm`).

    Returns:
      [n + b·q, c + p + b·m]: rows the final carry then per step its outputs; columns the carry's
      `columns`, the constants, then per step its inputs.
    """
    n, q, p, m = dims
    A, E, B, GA, GE, GB = blocks
    b, c = A.shape[0], len(columns)
    r = b - split
    width = c + p + split * m
    if split:  # the tangent state d c_k / d(carry columns, constants, inputs of steps < split)
        T = jnp.zeros((n, width), dtype).at[columns, np.arange(c)].set(1)

        def forward(T, step):
            return _forward_step(T, step[0], step[1:], (c, p, m), tally)

        T, Y = jax.lax.scan(forward, T, (jnp.arange(split), *(x[:split] for x in blocks)))
        Y = Y.reshape(split * q, width)
        if not r:
            return jnp.concatenate([T, Y], axis=0)
    rows = n + r * q  # the adjoint state d(final carry, outputs of steps >= split) / d c_k

    def backward(W, step):
        j, a, e, bk, ga, ge, gb = step
        row, mm = n + j * q, _counted_mm(tally, "reverse")
        tally["reverse"] = 0
        dx = jax.lax.dynamic_update_slice(mm(W, bk), gb, (row, 0))
        de = jax.lax.dynamic_update_slice(mm(W, e), ge, (row, 0))
        return jax.lax.dynamic_update_slice(mm(W, a), ga, (row, 0)), (dx, de)

    W = jnp.zeros((rows, n), dtype).at[:n].set(jnp.eye(n, dtype=dtype))
    W, (DX, DE) = jax.lax.scan(backward, W, (jnp.arange(r), *(x[split:] for x in blocks)), reverse=True)
    # the columns of the steps before the split: through the carry c_split where they ran forward
    tally["meet"] = 0
    if split:
        X = _counted_mm(tally, "meet")(W, T)
    else:
        X = jnp.concatenate([W[:, columns], jnp.zeros((rows, p), dtype)], axis=1)
    upper = jnp.concatenate([X.at[:, c : c + p].add(DE.sum(0)), jnp.moveaxis(DX, 0, 1).reshape(rows, r * m)], axis=1)
    if not split:
        return upper
    lower = jnp.concatenate([Y, jnp.zeros((split * q, r * m), dtype)], axis=1)
    return jnp.concatenate([upper[:n], lower, upper[n:]], axis=0)


def chain_jacobian(blocks, levels, columns, reverse: bool = False) -> tuple[jax.Array, int]:
    """The Jacobian of a loop from its iterations' stacked local blocks, by the chain product
    bracketed by `levels` (`graph._loops.chain_plan`), and the multiplications it performed.

    Args:
      blocks: ``(A, E, B, GA, GE, GB)``, leading axis the L iterations as the scan stacks them:
        [L, n, n], [L, n, p], [L, n, m] (the next carry w.r.t. carry, constants, the step's inputs)
        and [L, q, n], [L, q, p], [L, q, m] (the step's outputs w.r.t. the same).
      levels: per level, innermost first, (b, s): runs of b super-steps of the level below, forward
        over the first s and reverse over the rest (`_split_chain`); the b's multiply to L.
      columns: the carry entries (indices into the n) that are differentiated.
      reverse: whether the scan runs from the last iteration to the first (``reverse=True``).

    Returns:
      (J, multiplications): J [n + L·q, c + p + L·m] in the layout of the module docstring.
    """
    A = blocks[0]
    length, n, p, q, m = A.shape[0], A.shape[1], blocks[1].shape[2], blocks[3].shape[1], blocks[2].shape[2]
    dtype = jnp.result_type(*blocks)
    # Iteration k of a reverse scan runs at position length-1-k, but its blocks are stacked at k, as
    # its outputs are: the chain runs through the carries in run order, so the blocks are put in run
    # order and the Jacobian's per-step rows and columns back in stacked order at the end.
    if reverse:
        blocks = tuple(jnp.flip(b, 0) for b in blocks)
    J, counted, size = None, 0, 1  # size: iterations per super-step of the level below
    for level, (b, split) in enumerate(levels):
        top = level == len(levels) - 1
        carry = columns if top else np.arange(n)
        runs = length // (size * b)
        tally: dict[str, int] = {}
        chain = functools.partial(_split_chain, split=split, columns=carry, dims=(n, size * q, p, size * m),
                                  dtype=dtype, tally=tally)
        if runs == 1:  # the top level: one run, no vmap (a size-1 axis on every product ran 1.5x slower)
            J = chain(blocks)[None]
        else:
            J = jax.vmap(chain)(tuple(x.reshape(runs, b, *x.shape[1:]) for x in blocks))
        # traced once: per forward step, per reverse step, the meeting; times the steps and the runs
        counted += runs * (split * tally.get("forward", 0) + (b - split) * tally.get("reverse", 0)
                           + tally.get("meet", 0))
        size *= b
        if not top:  # the runs' Jacobians are the blocks of the super-steps of the next level
            blocks = (J[:, :n, :n], J[:, :n, n : n + p], J[:, :n, n + p :],
                      J[:, n:, :n], J[:, n:, n : n + p], J[:, n:, n + p :])
    J = J[0]
    if reverse:  # the per-step rows and columns back in stacked order
        head, width = len(columns) + p, len(columns) + p + length * m
        J = jnp.concatenate([J[:n], jnp.flip(J[n:].reshape(length, q, width), 0).reshape(length * q, width)])
        J = jnp.concatenate([J[:, :head], jnp.flip(J[:, head:].reshape(n + length * q, length, m), 1)
                             .reshape(n + length * q, length * m)], axis=1)
    return J, counted


def loop_partials(eqn, values: list[Any], reached: dict[int, list], counter: MultiplicationCounter,
                  jacobian, count_muls) -> dict[tuple[int, int], Partial]:
    """The dense partials of the scan equation `eqn` (with a `LoopPlan`) at operand `values`.

    Args:
      eqn: the program's equation (``eqn.loop`` is its plan).
      values: its operand values.
      reached: per source node, the (output index, edge) pairs of its edges into the outputs.
      counter: its ``loops`` receives the multiplications (the body's eliminations and the chain's).
      jacobian, count_muls: the interpreter's functions, for the body's local Jacobians.

    Returns:
      ``{(src, dst): Partial}`` for every edge in `reached`, dense (code 1).
    """
    plan = eqn.loop
    if plan.mode == "whole":
        return _whole_loop_partials(eqn, values, reached) if reached else {}
    params = eqn.params
    num_consts, num_carry, length = params["num_consts"], params["num_carry"], params["length"]
    in_avals = plan.operands
    const_avals, carry_avals = in_avals[:num_consts], in_avals[num_consts : num_consts + num_carry]
    x_avals = in_avals[num_consts + num_carry :]
    y_avals = eqn.avals[num_carry:]
    # Operands as the equation typed them (a literal loop counter is a Python int here).
    consts, carry0, xs = ([jnp.asarray(v, a.dtype) for v, a in zip(values[lo:hi], in_avals[lo:hi])]
                          for lo, hi in ((0, num_consts), (num_consts, num_consts + num_carry),
                                         (num_consts + num_carry, len(values))))
    dtype = jnp.result_type(*(carry_avals[i].dtype for i in plan.float_carries),
                            *(y_avals[j].dtype for j in plan.float_ys))

    n_sizes = _sizes(carry_avals, plan.float_carries)
    q_sizes = _sizes(y_avals, plan.float_ys, True)
    k_sizes = _sizes(carry_avals, plan.carry_sources)
    p_sizes = _sizes(const_avals, plan.const_sources)
    m_sizes = _sizes(x_avals, plan.x_sources, True)
    n, q, nk, p, m = (sum(s) for s in (n_sizes, q_sizes, k_sizes, p_sizes, m_sizes))

    local = jacobian(plan.body, list(plan.body_order), argnums=(0, 1, 2))
    slice_specs = [jax.ShapeDtypeStruct(a.shape[1:], a.dtype) for a in x_avals]
    body_specs = (tuple(carry_avals[i] for i in plan.float_carries), tuple(const_avals[i] for i in plan.const_sources),
                  tuple(slice_specs[i] for i in plan.x_sources), (const_avals, carry_avals, slice_specs))
    body_muls = count_muls(plan.body, list(plan.body_order), *body_specs, argnums=(0, 1, 2))

    def iteration(carry, x):
        """One iteration: the next carries and the local blocks A, E, B (carry rows), GA, GE, GB (output rows)."""
        rest = (consts, list(carry), list(x))
        diff = (tuple(carry[i] for i in plan.float_carries), tuple(consts[i] for i in plan.const_sources),
                tuple(x[i] for i in plan.x_sources))
        blocks_c, blocks_y = local(*diff, rest)
        outs = jax.core.eval_jaxpr(params["jaxpr"].jaxpr, params["jaxpr"].consts, *consts, *carry, *x)
        blocks = tuple(
            _matrix([b[arg] for b in part], rows, cols, dtype)
            for part, rows in ((blocks_c, n_sizes), (blocks_y, q_sizes))
            for arg, cols in ((0, n_sizes), (1, p_sizes), (2, m_sizes))
        )
        return [jnp.asarray(o, a.dtype) for o, a in zip(outs[:num_carry], carry_avals)], blocks

    carry_offsets = _offsets(n_sizes)
    carry_columns = np.concatenate([np.arange(carry_offsets[plan.float_carries.index(i)],
                                              carry_offsets[plan.float_carries.index(i)] + size)
                                    for i, size in zip(plan.carry_sources, k_sizes)] or [np.zeros(0, int)])
    if plan.levels == ((length, length),):  # all forward: with the iterations, no block stored
        J, counted = _fused_forward(iteration, carry0, xs, length, params["reverse"], carry_columns, (n, q, p, m),
                                    dtype)
    else:  # the blocks of every iteration first (a reverse part needs them last to first), then the chain
        _, blocks = jax.lax.scan(iteration, carry0, xs, length=length, reverse=params["reverse"])
        J, counted = chain_jacobian(blocks, plan.levels, carry_columns, params["reverse"])
    if counted != plan.chain_muls or body_muls != plan.body_muls:
        raise AlphagradError(
            f"internal error: a loop's partials performed {body_muls} multiplications per local Jacobian and "
            f"{counted} in the chain where the graph planned {plan.body_muls} and {plan.chain_muls}; please report this"
        )
    # Loops kept inside the body checked their own products inside `local`.
    counter.loops += length * (body_muls + plan.inner_muls) + counted

    def rows_of(output: int) -> jax.Array:
        if output < num_carry:
            i = plan.float_carries.index(output)
            return J[carry_offsets[i] : carry_offsets[i] + n_sizes[i]]
        j = plan.float_ys.index(output - num_carry)
        off = _offsets(q_sizes)[j]
        per_step = J[n:].reshape(length, q, J.shape[1])[:, off : off + q_sizes[j]]
        return per_step.reshape(length * q_sizes[j], J.shape[1])

    def columns_of(rows: jax.Array, position: int) -> jax.Array:
        if position < num_consts:
            j = plan.const_sources.index(position)
            off = nk + _offsets(p_sizes)[j]
            return rows[:, off : off + p_sizes[j]]
        if position < num_consts + num_carry:
            j = plan.carry_sources.index(position - num_consts)
            off = _offsets(k_sizes)[j]
            return rows[:, off : off + k_sizes[j]]
        j = plan.x_sources.index(position - num_consts - num_carry)
        off = _offsets(m_sizes)[j]
        per_step = rows[:, nk + p :].reshape(rows.shape[0], length, m)[:, :, off : off + m_sizes[j]]
        return per_step.reshape(rows.shape[0], length * m_sizes[j])

    partials = {}
    for src, pairs in reached.items():
        positions = [i for i, op in enumerate(eqn.operands) if op.node == src]
        for output, e in pairs:
            rows = rows_of(output)
            dense = sum(columns_of(rows, position) for position in positions)
            partials[(e.src, e.dst)] = Partial(1, e.out_shape, e.in_shape, dense.reshape(*e.out_shape, *e.in_shape))
    return partials
