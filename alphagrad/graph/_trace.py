"""`trace`: turn a JAX function into an elimination `Graph`.

The function's jaxpr is walked once. Calls of nested jaxprs (``jit``/``pjit``, ``remat``,
``closed_call``) are inlined, and so are small ``scan``s (``lax.scan``, ``fori_loop`` with static
bounds) unrolled as a Python loop would be (module `_loops`), so that every remaining equation
becomes exactly one vertex, numbered 1, 2, ... in equation order (the AlphaGrad paper's numbering).
An equation with several outputs (a loop with several carries, ``lu``, a sort of several operands)
becomes one vertex per output that can carry a derivative (a floating-point output), numbered in
the order of (equation, output); its other outputs are values without vertices.

Every primitive is accepted: those in `SUPPORTED_PRIMITIVES` (the structural primitives) get edges
with structure codes from their rules; any other primitive (control flow, sorts, cumulative ops,
gathers and scatters, linear algebra, primitives JAX adds later) gets dense edges (code 1), whose
partials the interpreter computes by JAX's own differentiation of the equation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr, DebugInfo, DropVar, Jaxpr, JaxprEqn, Literal, jaxpr_as_fun

from alphagrad.errors import TraceError, UnsupportedPrimitiveError
from alphagrad.graph import _dims, _loops, _rules, _structure
from alphagrad.graph._graph import Edge, Graph, Vertex

__all__ = [
    "trace", "jacobian_graph", "INTERPRETER_COST_MODEL", "SUPPORTED_PRIMITIVES", "Operand", "ValueRef", "Equation",
    "Program", "PythonLeaves", "python_leaves", "bind_python_leaves",
]

# Call-like primitives whose body is inlined, and the parameter that holds the body. Functions with
# custom derivatives (custom_jvp_call, custom_vjp_call) are not inlined: their derivative is the
# rule they define (relu'(0) = 0, where the body max(x, 0) would give 1/2), so each is one vertex.
_INLINED = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "remat": "jaxpr",
    "remat2": "jaxpr",
    "checkpoint": "jaxpr",
}
#: The structural primitives: those with an edge rule, and the calls that are inlined. Every other
#: primitive is accepted too, with dense edges (docs/cost-model.md); the name is kept from when
#: the others were refused.
SUPPORTED_PRIMITIVES = frozenset(_rules.RULED_PRIMITIVES | set(_INLINED))



def structural_primitives_markdown() -> str:
    """The table of structural primitives in docs/cost-model.md, generated from the rules.

    ``python -c "from alphagrad.graph._trace import structural_primitives_markdown as m; print(m())"``
    prints it; a test keeps the docs equal to it.
    """
    groups = [
        ("elementwise unary", _rules.UNARY,
         "diagonal (6; 1 on a scalar); `neg` is −1 × the identity (10) in the exact model"),
        ("elementwise binary", _rules.BINARY,
         "diagonal, a constant multiple of the identity, the identity (`add`), or a broadcast (docs above)"),
        ("zero derivative", _rules.ZERO_DERIVATIVE, "no edges (the vertex stays, isolated)"),
        ("data movement", _rules.STRUCTURAL,
         "identity (−6), transposed identity (−7), copy (−1) or an index map (11): free"),
        ("selection and scattering", _rules.LINEARISED_INDEX_MAPS,
         "index map (11): the equation's linearisation, which selects, moves or adds entries: free"),
        ("reductions", _rules.REDUCTIONS,
         "index map 11 (`reduce_sum`, exact model), Kronecker/diagonal ties otherwise"),
        ("contraction", _rules.CONTRACTIONS,
         "Kronecker ties on free dimensions, diagonal ties on batch dimensions; a convolution is tied "
         "along its batch axis in its input (a depthwise one also along its features) and between the "
         "output's and the kernel's output features in its kernel (exact model, rank >= 3)"),
        ("scaling scatters", _rules.SCALING_SCATTERS,
         "diagonal (6; 1 on a scalar) in the operand (entry k times the updates scattered onto k), "
         "dense in the updates"),
        ("custom derivatives", _rules.CUSTOM_DERIVATIVES,
         "one vertex whose partials follow the function's own JVP rule: diagonal (6) where the function "
         "is pointwise, dense otherwise; `custom_vjp_call` is dense, its partials by its VJP rule. A rule "
         "not linear in its tangent (or cotangent) is refused: no Jacobian represents it (a JVP rule is "
         "checked while tracing by the operations its tangents pass: a clip, `abs`, a comparison or a "
         "product of two tangents is nonlinear; loops, conditionals and unknown primitives are trusted)"),
        ("calls (inlined)", set(_INLINED), "no vertex: their bodies' equations are numbered in place"),
    ]
    rows = ["| group | primitives | edges |", "|---|---|---|"]
    for title, names, edges in groups:
        rows.append(f"| {title} | {', '.join(f'`{n}`' for n in sorted(names))} | {edges} |")
    return "\n".join(rows) + "\n"


# Structure code of the edge from an output vertex that is reused later to its output copy: the
# reference's choice in its model (docs/cost-model.md), a plain copy in the exact one.
REUSED_OUTPUT_CODE = {"alphagrad-2024": 8, "exact": -1}
# Structure code of the edge to an output that is an input or repeats another output: a plain copy.
COPY_CODE = -1


class Operand(NamedTuple):
    """An equation operand: a node (input or vertex) or a constant.

    Attributes:
      node: node id (inputs 1..num_inputs, vertex k -> num_inputs + k), or None for a constant.
      value: the constant (a literal or a captured array) when ``node`` is None.
    """

    node: int | None
    value: Any = None


class LeafRef(NamedTuple):
    """A reference to a flattened argument that is not differentiated (see `trace`'s argnums)."""

    index: int


class ValueRef(NamedTuple):
    """A value an equation computes that is no vertex: an output of a multi-output equation that
    carries no derivative (integer pivots, permutations, indices) or that nothing reads.

    Attributes:
      equation: the equation's index in `Program.equations`.
      output: which of its outputs.
    """

    equation: int
    output: int


class Equation(NamedTuple):
    """One equation's computation, for the interpreter (evaluated once, whatever its outputs).

    Attributes:
      vertex: number of its (first) vertex; 0 if none of its outputs is a vertex.
      primitive: the JAX primitive, or None for an appended output copy.
      params: the primitive's parameters.
      operands: the inputs, in the primitive's operand order.
      aval: the (first) output's abstract value (shape and dtype, original rank).
      outputs: per output of the primitive, where its value goes: ``Operand(node)`` for a vertex,
        ``Operand(None, ValueRef(...))`` for a value without a vertex.
      avals: per output, its abstract value.
      loop: for a `scan` kept as a loop, how its partials are accumulated (`_loops.LoopPlan`).
    """

    vertex: int
    primitive: Any
    params: dict
    operands: tuple[Operand, ...]
    aval: Any
    outputs: tuple[Operand, ...] = ()
    avals: tuple[Any, ...] = ()
    loop: Any = None


class Program(NamedTuple):
    """What the interpreter needs besides the graph.

    Attributes:
      equations: one per equation, in order (its vertices' numbers increase with it), then the
        appended output copies.
      leaf_avals: abstract values of all flattened arguments.
      input_leaves: [num_inputs] the flattened-argument index of each graph input.
      in_tree, out_tree: pytree structures of the arguments (a tuple) and of the result.
      outputs: per flattened output, the node that holds it or a constant.
      bound: the leaves of the arguments (indices into ``jax.tree.leaves(args)``) that `trace`
        bound as Python values (`python_leaves`): their values are part of the program, and
        `leaf_avals`, `input_leaves` and `in_tree` describe the arguments without them
        (`bind_python_leaves`'s ``args``). Empty when every leaf was traced.
    """

    equations: tuple[Equation, ...]
    leaf_avals: tuple[Any, ...]
    input_leaves: tuple[int, ...]
    in_tree: Any
    out_tree: Any
    outputs: tuple[Operand, ...]
    bound: tuple[int, ...] = ()


def _is_differentiable(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.floating)


def _is_complex(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.complexfloating)


#: What to do about a complex value, in every message that refuses one.
_COMPLEX_ADVICE = (
    "alphagrad differentiates real floating-point computations only (its partials and products are "
    "real; complex derivatives follow conventions its cost model does not count). Pass real and "
    "imaginary parts as separate real arrays and compute with them (the Jacobian with respect to "
    "them is real, not in jax.jacrev's complex convention), or use jax.jacrev"
)


_JAX_DIR = os.path.dirname(jax.__file__)
_OWN_DIRS = (os.path.dirname(os.path.abspath(__file__)),)


def _source_of(eqn) -> str:
    """'file:line (function)' of the innermost user frame that emitted `eqn`."""
    traceback = getattr(getattr(eqn, "source_info", None), "traceback", None)
    frames = getattr(traceback, "frames", None) or []
    for frame in frames:
        path = frame.file_name
        if path.startswith(_JAX_DIR) or "jaxlib" in path or path.startswith(_OWN_DIRS) or path.startswith("<frozen"):
            continue
        return f"{os.path.relpath(path) if not path.startswith('<') else path}:{frame.line_num} ({frame.function_name})"
    return ""


class _HighRankError(UnsupportedPrimitiveError):
    """An array of 3 or more dimensions under the AlphaGrad 2024 model (the default model then
    switches to the exact one)."""


def _too_many_dimensions(shape, number: int, where: str, name: str) -> UnsupportedPrimitiveError:
    return _HighRankError(
        f"an array of shape {tuple(shape)} ({len(shape)} dimensions) in equation {number} (primitive "
        f"'{name}'{', from ' + where if where else ''}): arrays may have at most 2 dimensions (the structure "
        "codes of the AlphaGrad 2024 cost model are 2-D). Trace with cost_model=\"exact\" (the interpreter's "
        "model, which flattens such arrays), or reshape to at most 2 dimensions around this computation."
    )


def _rule_closes_over_trace(eqn: JaxprEqn) -> bool:
    """Whether the JVP rule of a `custom_jvp_call` equation reads a tracer of the trace that made it.

    ``custom_jvp(f, nondiff_argnums=...)`` binds its rule with those arguments as Python values; a
    traced array there (``expn(n, x)`` with n an argument) stays a tracer of that trace inside the
    rule, which then raises UnexpectedTracerError wherever the equation is differentiated again.
    Checked abstractly on the equation alone: the stale tracer becomes a constant of a new trace of
    its JVP (only rules with constant operands, where such arrays end up, are checked)."""
    invars = [v for v in eqn.invars if not isinstance(v, Literal)]
    names = DebugInfo("alphagrad custom_jvp check", None, tuple(f"in{k}" for k in range(len(invars))),
                      tuple(f"out{k}" for k in range(len(eqn.outvars))))
    fun = jaxpr_as_fun(ClosedJaxpr(Jaxpr([], invars, list(eqn.outvars), [eqn], eqn.effects, names), []))
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in invars]
    floats = [i for i, v in enumerate(invars) if _is_differentiable(v.aval)]

    def jvp(*args):
        def of_floats(*xs):
            full = list(args)
            for i, x in zip(floats, xs):
                full[i] = x
            return fun(*full)
        xs = [args[i] for i in floats]
        return jax.jvp(of_floats, xs, xs)

    try:
        consts = jax.make_jaxpr(jvp)(*avals).consts
    except jax.errors.UnexpectedTracerError:
        return True
    except Exception:  # noqa: BLE001 - anything else is the interpreter's to report, as before
        return False
    # The dead trace's tracer is captured as a constant of the new trace.
    return any(isinstance(c, jax.core.Tracer) for c in consts)


def _fuse_complex_spans(jaxpr: Jaxpr) -> list[tuple[JaxprEqn, bool]]:
    """The equations of `jaxpr`, each span that computes with complex values fused into one call.

    The graph's partials are real, but a real function may pass through complex values inside (an
    FFT and back, a complex eigen-decomposition whose real part is used). Each such span, from an
    equation touching a complex value to the last use of the complex values it makes, becomes one
    `closed_call` equation from the real values it reads to the real values read after it: a
    vertex whose real partials JAX computes (the dense fallback). A span whose complex values are
    outputs of `jaxpr` is left as it is (the caller refuses complex outputs with a clear message).

    Returns:
      (equation, fused) pairs in order; fused equations are not inlined.
    """
    eqns = list(jaxpr.eqns)

    def complex_atoms(atoms):
        return [a for a in atoms if not isinstance(a, Literal) and _is_complex(a.aval)]

    if not any(complex_atoms(e.invars) or complex_atoms(e.outvars) for e in eqns):
        return [(e, False) for e in eqns]
    last_use: dict[Any, int] = {}
    for i, e in enumerate(eqns):
        for a in e.invars:
            if not isinstance(a, Literal):
                last_use[a] = i
    for a in jaxpr.outvars:
        if not isinstance(a, Literal):
            last_use[a] = len(eqns)
    result: list[tuple[JaxprEqn, bool]] = []
    i = 0
    while i < len(eqns):
        if not (complex_atoms(eqns[i].invars) or complex_atoms(eqns[i].outvars)):
            result.append((eqns[i], False))
            i += 1
            continue
        end, j = i, i
        while j <= end and end < len(eqns):
            for v in complex_atoms(eqns[j].outvars):
                end = max(end, last_use.get(v, j))
            j += 1
        span = eqns[i : end + 1]
        if end >= len(eqns):  # a complex output: nothing to fuse
            result.extend((e, False) for e in eqns[i:])
            break
        fused = _loops.span_call(span, lambda v: last_use.get(v, -1) > end, "alphagrad complex span")
        if fused is not None:
            result.append((fused, True))
        i = end + 1
    return result


def _is_concrete(op: Operand) -> bool:
    """Whether the operand is a constant known at trace time (not a node, an argument that is not
    differentiated, a value computed at run time, or a value of an outer trace)."""
    return op.node is None and not isinstance(op.value, (LeafRef, ValueRef, jax.core.Tracer))


class _Builder:
    def __init__(self, num_inputs: int, active: set[int]):
        self.num_inputs = num_inputs
        self.vertices: list[Vertex] = []
        self.equations: list[Equation] = []
        self.edges: dict[tuple[int, int], Edge] = {}
        self.uses: set[int] = set()  # nodes read by some equation
        # Nodes with a path of edges from a differentiable input: their derivatives are nonzero
        # in general, so no equation may carry them into a complex value (which has no edges).
        self.active = active
        # Depth of unrolled scans being walked (their integer arithmetic on constants is folded).
        self.unrolling = 0

    def add_edge(self, src: int, dst: int, code: int, out_shape, in_shape, model) -> None:
        key = (src, dst)
        if key in self.edges:
            # The same variable feeding two operands: the partials add up. Two index maps of one
            # equation (``jnp.concatenate([s, s])``, ``jnp.tile``, ``jnp.roll`` by a traced shift)
            # are its map with the variable in both places, an index map: the interpreter computes
            # each edge's partial with the tangent in all its positions. A dense sum would multiply
            # the zeros of the copies not taken by the infinite partials of a square root at 0.
            old = self.edges[key].code
            code = _structure.INDEX_MAP if old == code == _structure.INDEX_MAP else model.sum_code(old, code)
        self.edges[key] = Edge(src, dst, code, out_shape, in_shape)

    def walk(self, jaxpr: Jaxpr, consts: list[Any], args: list[Operand], model, caller: str = "",
             final: Sequence[bool] | None = None) -> list[Operand]:
        """Adds the equations of `jaxpr` (inlining calls); `caller` is the source of the call site;
        `final`, per output of `jaxpr`, whether it is one of f's outputs that nothing else reads (None
        where that is not known: a kept loop is then never fused with its tail, `_loops.narrow_tail_span`)."""
        env: dict[Any, Operand] = {}
        for var, value in zip(jaxpr.constvars, consts):
            env[var] = Operand(None, value)
        for var, arg in zip(jaxpr.invars, args):
            env[var] = arg

        def read(atom) -> Operand:
            if isinstance(atom, Literal):
                return Operand(None, atom.val)
            return env[atom]

        read_vars: set = set()

        def read_later() -> set:
            """The variables of `jaxpr` that an equation or its result reads (in SSA form, an
            equation's output is read, if at all, after it)."""
            if not read_vars:
                read_vars.update(a for e in jaxpr.eqns for a in e.invars if not isinstance(a, Literal))
                read_vars.update(a for a in jaxpr.outvars if not isinstance(a, Literal))
            return read_vars

        pending = list(_fuse_complex_spans(_loops.fuse_large_spans(jaxpr, _INLINED)))
        returned: dict[Any, bool] = {}  # an output of `jaxpr` -> whether it is f's own (`final`)
        for var, flag in zip(jaxpr.outvars, final or ()):
            if not isinstance(var, Literal):
                returned[var] = returned.get(var, True) and flag
        read_inside = {a for e, _ in pending for a in e.invars if not isinstance(a, Literal)}

        @functools.cache
        def least_exit() -> int | None:
            """The fewest float entries of a value `jaxpr` returns (`_loops.tail_may_be_narrow`)."""
            return min((n for n in (_loops.float_entries([v]) for v in returned) if n > 0), default=None)

        def differentiated(var) -> bool:
            # A value the walk has not reached yet (computed after the loop by an equation that
            # does not read it) is taken as differentiated.
            return var not in env or self.dense_source(env[var], var)

        at = 0
        while at < len(pending):
            eqn, fused = pending[at]
            at += 1
            name = "complex_span" if fused else "large_span" if _loops.is_large_span(eqn) else eqn.primitive.name
            fused = fused or name == "large_span"
            operands = [read(a) for a in eqn.invars]
            # Equations inside library calls (jnp.cumsum is a jit) point at the user's call site.
            source = _source_of(eqn) or caller
            if name in _INLINED and not fused:
                body = eqn.params[_INLINED[name]]
                inner = (None if final is None
                         else [returned.get(v) is True and v not in read_inside for v in eqn.outvars])
                if isinstance(body, ClosedJaxpr):
                    outs = self.walk(body.jaxpr, list(body.consts), operands, model, source, inner)
                else:
                    outs = self.walk(body, [], operands, model, source, inner)
                for var, out in zip(eqn.outvars, outs):
                    env[var] = out
                continue
            loop_body = None  # a scan kept as a loop: its body's analysis, for its plan
            if name == "scan" and not fused:
                # Unrolled where that costs no more than the loop kept whole (`_loops.unrolls`),
                # decided from the edges the kept loop would have: its differentiated operands.
                inputs = [op.node if self.dense_source(op, atom) else None for op, atom in zip(operands, eqn.invars)]
                constants = [op.value if _is_concrete(op) else None for op in operands]
                live = [not isinstance(v, DropVar) and v in read_later() for v in eqn.outvars]
                unroll, loop_body = _loops.unrolls(eqn, _INLINED, inputs, constants, live)
                if unroll:
                    for var, out in zip(eqn.outvars, self.unroll_scan(eqn, operands, model, source)):
                        env[var] = out
                    continue
            if (final is not None and (name in ("scan", "while") and not fused or name == "large_span")
                    and _loops.tail_may_be_narrow(eqn, least_exit(), differentiated)):
                # A kept loop (or a large span: a CNN's convolutions and dense layer, whose output
                # is the loss's input) whose values reach only a narrow part of f's outputs: one span
                # with the equations that read them, its partial by VJP rows of those outputs.
                tail = _loops.narrow_tail_span([e for e, _ in pending], at - 1, returned.get, differentiated)
                if tail is not None:
                    call, members = tail
                    replaced = set(members)
                    rest = [p for i, p in enumerate(pending) if i >= at - 1 and i not in replaced]
                    pending[at - 1:] = [*rest, (call, False)]
                    at -= 1
                    continue
            folded = self.fold(eqn, operands) if self.unrolling else None
            if folded is not None:
                for var, value in zip(eqn.outvars, folded):
                    env[var] = Operand(None, value)
                continue
            index = len(self.equations)
            number = index + 1  # the equation's number in messages
            if (name == "custom_jvp_call" and eqn.params.get("num_consts", 0)
                    and any(op.node in self.active for op in operands) and _rule_closes_over_trace(eqn)):
                raise TraceError(
                    f"equation {number} (a function with a custom JVP rule{', from ' + source if source else ''}) "
                    "has a JVP rule that closes over a traced array: an array passed in the function's "
                    "nondiff_argnums (jax.scipy.special.expn's n, jnp.linalg.pinv's rtol) that is an argument "
                    "of the differentiated function or computed from one. JAX cannot differentiate that rule "
                    "outside the trace that made it (jax.jvp of the function's jaxpr fails the same way), so "
                    "neither can alphagrad. Make that array a constant: close over a concrete value (a Python "
                    "number or a NumPy/JAX array that is neither an argument nor traced by an enclosing "
                    "jax.jit), or use jax.jacfwd."
                )
            if name == "custom_jvp_call" and any(op.node in self.active for op in operands):
                culprit = _rules.jvp_rule_nonlinearity(eqn.params, len(eqn.invars))
                if culprit is not None:
                    info = getattr(getattr(eqn.params.get("call_jaxpr"), "jaxpr", None), "debug_info", None)
                    function = getattr(info, "func_src_info", None) or "a custom_jvp function"
                    raise UnsupportedPrimitiveError(
                        f"equation {number} (the custom JVP rule of {function}"
                        f"{', from ' + source if source else ''}) is not linear in its tangent: it applies "
                        f"'{culprit}' to a tangent (it clips, normalises or branches on it). Such a rule is no "
                        "derivative: jax.jacfwd's columns then depend on the scale of each seed and jax.jacrev "
                        "cannot transpose it, so no Jacobian represents it. Make the rule linear in the tangent "
                        "(apply the clip or normalisation to the primal only), or use jax.jacfwd if its seed-"
                        "dependent columns are what you want."
                    )
            out_avals = [v.aval for v in eqn.outvars]
            for aval in [a.aval for a in eqn.invars] + out_avals:
                if len(getattr(aval, "shape", ())) > 2 and model.name != "exact":
                    raise _too_many_dimensions(aval.shape, number, source, name)
            if any(_is_complex(a) for a in out_avals) and any(op.node in self.active for op in operands):
                dtype = next(a.dtype for a in out_avals if _is_complex(a))
                raise TraceError(
                    f"equation {number} (primitive '{name}'{', from ' + source if source else ''}) makes a "
                    f"{dtype} value from one that depends on a differentiated input, and that value reaches "
                    f"the function's outputs (complex values used only inside, with real outputs, are "
                    f"differentiated): its Jacobian would be complex. {_COMPLEX_ADVICE}."
                )
            # An operand no input reaches gets no edge (its partial never reaches the Jacobian,
            # and JAX may not differentiate it at all: jnp.quantile's clamp in a computed bound).
            differentiable = [self.dense_source(op, a) for op, a in zip(operands, eqn.invars)]
            in_shapes = [tuple(a.aval.shape) for a in eqn.invars]
            single = len(eqn.outvars) == 1
            outputs: list[Operand] = []
            for k, (var, out_aval) in enumerate(zip(eqn.outvars, out_avals)):
                # A single output is always a vertex (the paper's numbering); of several, those that
                # can carry a derivative and are read.
                if not single and (isinstance(var, DropVar) or not _is_differentiable(out_aval)):
                    outputs.append(Operand(None, ValueRef(index, k)))
                    continue
                vertex = len(self.vertices) + 1
                node = self.num_inputs + vertex
                codes = {}
                if _is_differentiable(out_aval):
                    codes = _rules.edge_codes(
                        name, in_shapes, tuple(out_aval.shape), eqn.params, differentiable, model=model.name,
                        output=k,
                    )
                out_shape = _rules.normalise(out_aval.shape)
                for i, code in codes.items():
                    src = operands[i].node
                    self.add_edge(src, node, code, out_shape, _rules.normalise(in_shapes[i]), model)
                    if src in self.active:
                        self.active.add(node)
                self.vertices.append(Vertex(vertex, name if single else f"{name}[{k}]", out_shape, source))
                outputs.append(Operand(node))
            for op in operands:
                if op.node is not None:
                    self.uses.add(op.node)
            first = next((op.node - self.num_inputs for op in outputs if op.node is not None), 0)
            loop = _loops.loop_plan(eqn, differentiable, loop_body) if name == "scan" and not fused else None
            self.equations.append(Equation(
                first, eqn.primitive, dict(eqn.params), tuple(operands), out_avals[0] if out_avals else None,
                tuple(outputs), tuple(out_avals), loop,
            ))
            for var, out in zip(eqn.outvars, outputs):
                env[var] = out
        return [read(a) for a in jaxpr.outvars]

    def dense_source(self, op: Operand, atom) -> bool:
        """Whether an equation's operand gets an edge: a differentiable node that an input
        reaches (a partial from a value no input reaches, behind stop_gradient or made from
        constants, never reaches the Jacobian: no edge, rather than products of zeros)."""
        return op.node is not None and _is_differentiable(atom.aval) and op.node in self.active

    def unroll_scan(self, eqn: JaxprEqn, operands: list[Operand], model, source: str) -> list[Operand]:
        """Adds the equations of a `scan` unrolled (`_loops`): per iteration the slices ``xs[k]`` and
        the body, then one ``stack`` per stacked output; returns the final carries and the stacks."""
        params = eqn.params
        body: ClosedJaxpr = params["jaxpr"]
        num_consts, num_carry, length = params["num_consts"], params["num_carry"], params["length"]
        consts = operands[:num_consts]
        carry = operands[num_consts : num_consts + num_carry]
        xs = list(zip(operands[num_consts + num_carry :], eqn.invars[num_consts + num_carry :]))
        y_avals = [v.aval for v in eqn.outvars[num_carry:]]
        ys: list[list[Operand]] = [[Operand(None)] * length for _ in y_avals]
        self.unrolling += 1
        for k in reversed(range(length)) if params["reverse"] else range(length):
            x_k = []
            for x, atom in xs:
                if _is_concrete(x):
                    x_k.append(Operand(None, np.asarray(x.value)[k]))
                else:
                    jaxpr = _loops.index_jaxpr(tuple(atom.aval.shape), atom.aval.dtype, k)
                    x_k.extend(self.walk(jaxpr.jaxpr, list(jaxpr.consts), [x], model, source))
            outs = self.walk(body.jaxpr, list(body.consts), consts + carry + x_k, model, source)
            carry = outs[:num_carry]
            for parts, y in zip(ys, outs[num_carry:]):
                parts[k] = y
        self.unrolling -= 1
        stacked = []
        for parts, aval in zip(ys, y_avals):
            if all(_is_concrete(y) for y in parts):
                stacked.append(Operand(None, np.stack([np.asarray(y.value) for y in parts])))
                continue
            jaxpr = _loops.stack_jaxpr(tuple(aval.shape[1:]), aval.dtype, length)
            stacked.extend(self.walk(jaxpr.jaxpr, list(jaxpr.consts), parts, model, source))
        return carry + stacked

    def fold(self, eqn: JaxprEqn, operands: list[Operand]) -> list[Any] | None:
        """The integer or boolean outputs of `eqn` computed now, when all its operands are constants
        (inside an unrolled loop: its counter, index arithmetic); None otherwise."""
        if not eqn.outvars or not all(_is_concrete(op) for op in operands):
            return None
        if not all(jnp.issubdtype(v.aval.dtype, jnp.integer) or jnp.issubdtype(v.aval.dtype, jnp.bool_)
                   for v in eqn.outvars):
            return None
        return _loops.evaluate(eqn, [op.value for op in operands])

    def add_copy(self, source: int, code: int, shape, aval) -> int:
        number = len(self.vertices) + 1
        node = self.num_inputs + number
        self.vertices.append(Vertex(number, "copy", shape, ""))
        self.equations.append(Equation(number, None, {}, (Operand(source),), aval, (Operand(node),), (aval,)))
        if aval is None or _is_differentiable(aval):
            self.edges[(source, node)] = Edge(source, node, code, shape, shape)
        return number


class _CouldNotTrace(TraceError):
    """JAX's tracing of the function failed (`trace` may retry with Python numbers bound)."""


def _is_number(leaf) -> bool:
    """A Python or NumPy scalar (not an array, not a tracer)."""
    return isinstance(leaf, (bool, int, float, complex, np.generic))


def _is_traceable(leaf) -> bool:
    return _is_number(leaf) or (hasattr(leaf, "shape") and hasattr(leaf, "dtype"))


def _outside_argnums(args: tuple, argnums) -> list[tuple[int, Any]]:
    """(index in ``jax.tree.leaves(args)``, leaf) for the leaves of the arguments outside `argnums`
    (none when `argnums` is None, all arguments, or invalid, which `trace` then names)."""
    if argnums is None:
        return []
    selected = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not all(isinstance(k, int) and -len(args) <= k < len(args) for k in selected):
        return []
    selected = {k % len(args) for k in selected}
    found, start = [], 0
    for position, arg in enumerate(args):
        leaves = jax.tree.leaves(arg)
        if position not in selected:
            found.extend(enumerate(leaves, start=start))
        start += len(leaves)
    return found


def python_leaves(args: tuple, argnums, numbers: bool = False) -> tuple[int, ...]:
    """The leaves of arguments outside `argnums` that may stay Python values, as ``jax.jacrev``
    passes them (it traces none of them).

    Args:
      args: the positional arguments (pytrees).
      argnums: the differentiated positions (int or tuple; None: all).
      numbers: also Python and NumPy scalars (an int step count, a float); without, only leaves
        JAX cannot trace at all (strings, callables, enums, other objects) and Python and NumPy
        bools: a flag has two values, and f may test it as a Python object (``flag is True``,
        ``isinstance(flag, bool)``), which a traced flag fails silently.

    Returns:
      Their indices in ``jax.tree.leaves(args)``, increasing.
    """
    return tuple(i for i, leaf in _outside_argnums(args, argnums)
                 if not _is_traceable(leaf) or isinstance(leaf, (bool, np.bool_)) or (numbers and _is_number(leaf)))


class PythonLeaves(NamedTuple):
    """`f` with some leaves of its arguments bound as Python values (`bind_python_leaves`).

    Attributes:
      fn: f of the other leaves: ``fn(*args)`` calls ``f`` with the bound values in place.
      args: the arguments with the bound leaves replaced by None (an empty pytree), so that
        ``jax.tree.leaves(args)`` are the others; the positions of the arguments are unchanged.
      leaves: the bound leaves' indices in ``jax.tree.leaves`` of the original arguments.
      key: a hashable identity of the bound values and of the arguments' structure, or None where
        a value cannot be hashed (then nothing made with them may be reused).
    """

    fn: Callable
    args: tuple
    leaves: tuple[int, ...]
    key: Any


def bind_python_leaves(f: Callable, args: tuple, leaves: Sequence[int]) -> PythonLeaves:
    """Binds the leaves `leaves` (indices into ``jax.tree.leaves(args)``) of f's positional
    arguments as Python values; see `PythonLeaves`."""
    flat, treedef = jax.tree.flatten(args)
    chosen = tuple(sorted(set(leaves)))
    values = {i: flat[i] for i in chosen}
    reduced = treedef.unflatten([None if i in values else leaf for i, leaf in enumerate(flat)])

    def bound(*dynamic):
        rest = iter(jax.tree.leaves(dynamic))
        return f(*treedef.unflatten([values[i] if i in values else next(rest) for i in range(len(flat))]))

    functools.update_wrapper(bound, f)
    # The type too: 1, 1.0 and True are equal and hash alike, but make different programs.
    key = (treedef, tuple((i, type(v), v) for i, v in values.items()))
    try:
        hash(key)
    except TypeError:
        key = None
    return PythonLeaves(bound, tuple(reduced), chosen, key)


def _static_hint(args: tuple, argnums) -> str:
    """Advice for a trace that failed while integer or boolean arguments outside `argnums` are
    traced values (under ``jax.jit``): f may loop on them, as jax.jacrev's trace would fail too."""
    traced = [leaf for _, leaf in _outside_argnums(args, argnums)
              if not _is_number(leaf) and _is_traceable(leaf) and np.shape(leaf) == ()
              and (jnp.issubdtype(leaf.dtype, jnp.integer) or jnp.issubdtype(leaf.dtype, jnp.bool_))]
    if not traced:
        return ""
    return (". An integer or boolean argument outside argnums is a traced value here (under jax.jit); if f "
            "loops on it or makes a shape of it, mark it static (jax.jit(..., static_argnums=...)), as "
            "jax.jit(jax.jacrev(f)) needs too")


def _differentiated_leaves(example_args: tuple, argnums) -> list[int]:
    if argnums is None:
        return list(range(len(jax.tree.leaves(example_args))))
    selected = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    offsets, start = [], 0
    for arg in example_args:
        count = len(jax.tree.leaves(arg))
        offsets.append(range(start, start + count))
        start += count
    leaves: list[int] = []
    for k in selected:
        if not isinstance(k, int) or not -len(example_args) <= k < len(example_args):
            raise TraceError(f"argnums entry {k!r} does not name one of the {len(example_args)} arguments")
        leaves.extend(offsets[k])
    if len(set(leaves)) != len(leaves):
        raise TraceError(f"argnums {argnums!r} names an argument twice")
    return leaves


def _describe_leaf(path) -> str:
    """'argument 1' or "argument 1, leaf ['w']" for a path into the positional arguments."""
    where = f"argument {path[0].idx}"
    rest = jax.tree_util.keystr(tuple(path[1:]))
    return f"{where}, leaf {rest}," if rest else where


def trace(
    f: Callable[..., Any],
    *example_args: Any,
    argnums: int | tuple[int, ...] | None = None,
    cost_model: str | None = None,
    name: str | None = None,
) -> Graph:
    """Traces `f` at `example_args` into an elimination graph.

    Args:
      f: a JAX-traceable function of pytrees of arrays or Python scalars, returning a pytree.
      *example_args: example arguments; only their shapes and dtypes matter.
      argnums: the positional arguments to differentiate (int or tuple); None means all. The
        leaves of the other arguments are constants: no input, no edges.
      cost_model: the cost model the graph is scored with: "alphagrad-2024" (the AlphaGrad
        paper's) or "exact" (the one the interpreter performs). None (the default): the AlphaGrad
        model where every array has at most 2 dimensions (its codes are 2-D), else the exact one.
      name: label for messages (default: f's ``__name__``).

    Returns:
      A `Graph` with one input per differentiated argument leaf (Python scalars included), one
      vertex per equation of the inlined jaxpr (per floating-point output of an equation with
      several outputs), and one output per result leaf. Shapes are normalised to 2-D (an array of
      3 or more dimensions, accepted by the exact model only, is a flattened column). A primitive
      without a structural rule (not in `SUPPORTED_PRIMITIVES`) gets dense edges (code 1).

    Raises:
      UnsupportedPrimitiveError: under an explicit "alphagrad-2024" model, an array of 3 or more
        dimensions; the message names the shape, the primitive, the equation number and the
        user's source line.
      TraceError: `f` could not be traced by JAX, `argnums` is invalid, a differentiated
        argument is complex, or an equation makes a complex value from one that depends on a
        differentiated input (its derivative would be lost: the graph has real partials only).

    Leaves of the arguments outside `argnums` that JAX cannot trace (a mode string, a callable)
    and bool flags are bound as Python values, as ``jax.jacrev`` passes them; so are Python and
    NumPy numbers there (a step count) where tracing them fails (`f` loops on them or makes shapes
    of them): traced, they keep one graph for every value (and the graph ``jax.jit`` traces). The
    graph's ``program.bound`` names the bound leaves (`python_leaves`).
    """
    label = name if name is not None else getattr(f, "__name__", type(f).__name__)
    untraceable = python_leaves(example_args, argnums, numbers=False)
    try:
        return _trace_bound(f, example_args, untraceable, argnums, cost_model, label)
    except _CouldNotTrace as err:
        numbers = python_leaves(example_args, argnums, numbers=True)
        if numbers == untraceable:
            raise TraceError(str(err)) from err.__cause__
        # As jax.jacrev passes them: f may loop on a number or make a shape of it.
        try:
            return _trace_bound(f, example_args, numbers, argnums, cost_model, label)
        except _CouldNotTrace as again:
            raise TraceError(str(again)) from again.__cause__


def _trace_bound(f, example_args: tuple, leaves: tuple[int, ...], argnums, cost_model, label: str) -> Graph:
    """`_trace` of f with `leaves` bound as Python values (`bind_python_leaves`)."""
    if not leaves:
        return _trace(f, *example_args, argnums=argnums, cost_model=cost_model, name=label)
    bound = bind_python_leaves(f, example_args, leaves)
    graph = _trace(bound.fn, *bound.args, argnums=argnums, cost_model=cost_model, name=label)
    return dataclasses.replace(graph, program=graph.program._replace(bound=leaves))


def _trace(
    f: Callable[..., Any],
    *example_args: Any,
    argnums: int | tuple[int, ...] | None = None,
    cost_model: str | None = None,
    name: str | None = None,
) -> Graph:
    """`trace` of arguments whose leaves are all traced."""
    from alphagrad.graph._cost import cost_model as load_model

    if cost_model is None:
        try:
            return _trace(f, *example_args, argnums=argnums, cost_model="alphagrad-2024", name=name)
        except _HighRankError:
            return _trace(f, *example_args, argnums=argnums, cost_model="exact", name=name)
    model = load_model(cost_model)
    label = name if name is not None else getattr(f, "__name__", type(f).__name__)
    try:
        closed, out_shapes = jax.make_jaxpr(f, return_shape=True)(*example_args)
    except Exception as err:  # JAX reports tracing errors with many exception types
        raise _CouldNotTrace(f"JAX could not trace {label!r} at the example arguments: {err}"
                             f"{_static_hint(example_args, argnums)}") from err
    _, in_tree = jax.tree.flatten(example_args)
    _, out_tree = jax.tree.flatten(out_shapes)
    closed = _loops.fold_step_sums(closed)
    jaxpr = closed.jaxpr
    leaf_avals = tuple(v.aval for v in jaxpr.invars)
    input_leaves = _differentiated_leaves(example_args, argnums)
    leaf_paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(example_args)[0]]
    for i in input_leaves:
        if len(leaf_avals[i].shape) > 2 and model.name != "exact":
            raise _HighRankError(
                f"input {i} of {label!r} has shape {tuple(leaf_avals[i].shape)}: arrays may have at most 2 "
                f"dimensions under the {model.name} cost model; trace with cost_model=\"exact\" (the "
                "interpreter's model, which flattens such arrays)"
            )
        if _is_complex(leaf_avals[i]):
            raise TraceError(
                f"{_describe_leaf(leaf_paths[i])} of {label!r} is differentiated and has dtype "
                f"{leaf_avals[i].dtype}. {_COMPLEX_ADVICE}."
            )
    active = {node for node, leaf in enumerate(input_leaves, start=1) if _is_differentiable(leaf_avals[leaf])}
    builder = _Builder(num_inputs=len(input_leaves), active=active)
    leaf_operands = [Operand(None, LeafRef(i)) for i in range(len(leaf_avals))]
    for node, leaf in enumerate(input_leaves, start=1):
        leaf_operands[leaf] = Operand(node)
    outs = builder.walk(jaxpr, list(closed.consts), leaf_operands, model, final=[True] * len(jaxpr.outvars))

    outputs: list[int] = []
    output_operands: list[Operand] = []
    claimed: set[int] = set()
    # A vertex that is several outputs is an intermediate with one copy per output: were it an
    # output itself, the edge to its second copy would start at a vertex never eliminated, and that
    # copy's Jacobian would stay zero.
    counts: dict[int, int] = {}
    for operand in outs:
        if operand.node is not None:
            counts[operand.node] = counts.get(operand.node, 0) + 1
    for operand, atom in zip(outs, jaxpr.outvars):
        if operand.node is None:
            output_operands.append(operand)  # a constant output: its Jacobian is zero
            continue
        node = operand.node
        aval = atom.aval
        shape = _rules.normalise(aval.shape)
        is_vertex = node > builder.num_inputs
        if is_vertex and node not in builder.uses and counts[node] == 1:
            vertex = node - builder.num_inputs
        elif is_vertex and node not in claimed:
            vertex = builder.add_copy(node, REUSED_OUTPUT_CODE[model.name], shape, aval)
        else:
            vertex = builder.add_copy(node, COPY_CODE, shape, aval)
        claimed.add(node)
        outputs.append(vertex)
        output_operands.append(Operand(builder.num_inputs + vertex))

    program = Program(
        tuple(builder.equations), leaf_avals, tuple(input_leaves), in_tree, out_tree, tuple(output_operands)
    )
    edges, structures, dims = tuple(builder.edges.values()), (), ()
    if model.name == "exact" and len(builder.equations) <= LABELLED_MAX_EQUATIONS:
        edges, structures, dims = _labelled(program, edges)
    return Graph(
        num_inputs=len(input_leaves),
        input_shapes=tuple(_rules.normalise(leaf_avals[i].shape) for i in input_leaves),
        vertices=tuple(builder.vertices),
        edges=edges,
        outputs=tuple(outputs),
        cost_model=model.name,
        name=label,
        program=program,
        structures=structures,
        dims=dims,
    )


#: Programs of at most this many equations describe the partials between arrays of rank 3 or
#: more by labelled structures (`_labelled`); larger ones keep the 2-D codes of the normalised
#: shapes, which the interpreter's compact tape (from 200 equations on) executes.
LABELLED_MAX_EQUATIONS = 199


def _operand_shape(op: Operand, node_shape: dict[int, tuple], leaf_avals) -> tuple:
    if op.node is not None:
        return node_shape[op.node]
    if isinstance(op.value, LeafRef):
        return tuple(leaf_avals[op.value.index].shape)
    if isinstance(op.value, ValueRef):
        return None
    return tuple(np.shape(op.value))


def _labelled(program: Program, edges: tuple[Edge, ...]):
    """The edges of a program with arrays of rank 3 or more, re-described between structural dims.

    Every array is split into its structural axes (`graph._dims`); an edge touching an array of 3
    or more of them gets the structure `_rules.labelled_structure` gives, named by a code from 12
    on (`Graph.structures`) unless it is dense (1) or an index map (11). Edges between 2-D arrays
    keep their codes.

    Returns:
      (edges, structures, dims): unchanged edges and two empty tuples when no array has 3 or more
      structural axes.
    """
    node_shape: dict[int, tuple] = {}
    for node, leaf in enumerate(program.input_leaves, start=1):
        node_shape[node] = tuple(program.leaf_avals[leaf].shape)
    value_shape: dict[Any, tuple] = {}
    for eqn in program.equations:
        for out, aval in zip(eqn.outputs, eqn.avals):
            shape = tuple(getattr(aval, "shape", ()))
            if out.node is not None:
                node_shape[out.node] = shape
            else:
                value_shape[out.value] = shape
    if not any(len(shape) > 2 for shape in node_shape.values()):
        return edges, (), ()

    def operand_key_shape(op: Operand):
        if isinstance(op.value, ValueRef):
            return None, value_shape.get(op.value, ())
        return op.node, _operand_shape(op, node_shape, program.leaf_avals)

    views = [_dims.EquationView(
        eqn.primitive.name if eqn.primitive is not None else "copy", eqn.params,
        tuple(operand_key_shape(op) for op in eqn.operands),
        tuple((out.node, tuple(getattr(aval, "shape", ()))) for out, aval in zip(eqn.outputs, eqn.avals)),
    ) for eqn in program.equations]
    views.append(_dims.EquationView("", {}, tuple((node, node_shape[node]) for node in range(1, len(
        program.input_leaves) + 1)), ()))
    split = _dims.structural_dims(views)
    num_nodes = max(node_shape)

    def dims_of(node: int) -> tuple[int, ...]:
        dims = split.get(node, node_shape[node])
        return dims if len(dims) >= 2 else _rules.normalise(dims if dims else ())

    all_dims = tuple(dims_of(node) for node in range(1, num_nodes + 1))
    if max(len(d) for d in all_dims) <= 2:
        return edges, (), ()
    producer: dict[int, tuple[Equation, int]] = {}
    for eqn in program.equations:
        for k, out in enumerate(eqn.outputs):
            if out.node is not None:
                producer[out.node] = (eqn, k)
    structures: dict[Any, int] = {}
    relabelled = []
    for e in edges:
        src_dims, dst_dims = all_dims[e.src - 1], all_dims[e.dst - 1]
        if e.code == 0 or (len(src_dims) <= 2 and len(dst_dims) <= 2):
            relabelled.append(e)
            continue
        eqn, k = producer[e.dst]
        in_shapes = [operand_key_shape(op)[1] for op in eqn.operands]
        positions = [i for i, op in enumerate(eqn.operands) if op.node == e.src]
        name = eqn.primitive.name if eqn.primitive is not None else "copy"
        if eqn.primitive is None:
            codes = {0: e.code}
        else:
            codes = _rules.edge_codes(name, in_shapes, node_shape[e.dst], eqn.params,
                                      [op.node == e.src for op in eqn.operands], model="exact", output=k)
        parts = [_rules.labelled_structure(name, eqn.params, in_shapes, node_shape[e.dst], src_dims, dst_dims,
                                           i, codes[i]) for i in positions if i in codes]
        structure = parts[0] if parts else e.code
        for part in parts[1:]:  # the same array in several operands: the partials add up
            both = isinstance(structure, _structure.AxisTies) and isinstance(part, _structure.AxisTies)
            structure = _structure.axis_sum(structure, part) if both else _rules.DENSE
        if isinstance(structure, _structure.AxisTies) and structure.has_values and not structure.ties:
            structure = _rules.DENSE
        if isinstance(structure, _structure.AxisTies):
            code = structures.setdefault(structure, _structure.FIRST_EXTENDED_CODE + len(structures))
        else:
            code = structure
        relabelled.append(e._replace(code=code))
    if not structures:
        return tuple(relabelled), (), ()
    return tuple(relabelled), tuple(structures), all_dims


#: The cost model of the graphs the interpreter executes: the one whose products it performs.
INTERPRETER_COST_MODEL = "exact"


def _abstract(args: tuple) -> tuple:
    """Shape/dtype stand-ins for the arguments, so tracing never touches (possibly traced) values."""

    def spec(x):
        if _is_number(x) or not _is_traceable(x):
            # Python scalars keep their weak type; numbers outside argnums may be bound by `trace`,
            # and strings or callables are.
            return x
        # A weakly typed value (a Python float passed through jax.jit) keeps its weak type too: the
        # jaxpr, and so the graph an order was made for, is then the one the Python scalar gives.
        weak = bool(getattr(jax.typeof(x), "weak_type", False)) if isinstance(x, jax.Array) else False
        return jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x), weak_type=weak)

    return jax.tree.map(spec, args)


def jacobian_graph(
    f: Callable[..., Any], *args: Any, argnums: int | Sequence[int] = 0, cost_model: str = INTERPRETER_COST_MODEL
) -> Graph:
    """The elimination graph that ``interpreter.jacobian(f, order, argnums)`` executes at these arguments.

    It is `trace` at shape/dtype stand-ins of `args` (which may be tracers, e.g. under ``jax.jit``)
    under the exact cost model (`INTERPRETER_COST_MODEL`), so orders searched on it apply to the
    interpreter directly. Another `cost_model` gives the same vertices scored by that model (to
    check an order file made under it).
    """
    if isinstance(argnums, list):
        argnums = tuple(argnums)
    return trace(f, *_abstract(args), argnums=argnums, cost_model=cost_model, name=getattr(f, "__name__", None))
