"""Which partials the straight-line path computes once, and run-time maps after split terms
(helper reads23).

* `_structured._by_dot`: a product that `contract` computes as a dot_general is known before it is
  performed (XLA:CPU fuses no producer into a dot: its factors are computed once, its result is a
  kernel's output).
* `_structured.SharedReads`: a partial read by several products of a step is computed once only
  where that saves SHARED_SAVED_MIN operations per call, counting what one fused evaluation of it
  computes since the last kernel output (a dot's, a kept partial's); Perceptron's reverse sweep
  (rows of a layer norm behind matrix products) keeps none, van_leer_advection's keeps its deep ones.
* `_structured.RUN_TIME_SPLIT_MAX`: a map known only at run time meeting the entries along which
  a term's weight varies materialises the product and moves it once, not one pattern per entry.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphagrad import interpreter, tasks
from alphagrad.interpreter import _structured as S
from alphagrad.interpreter._structured import Partial


def dense(shape_c, shape_v, rng, finite=True):
    return Partial(1, shape_c, shape_v, jnp.asarray(rng.normal(size=(*shape_c, *shape_v))), finite=finite)


@pytest.mark.parametrize("summed, dot", [((1, 16), True), ((1, 4), False)])
def test_a_dot_product_is_known_before_it_is_performed(summed, dot):
    # out [3 x 16] @ in [16 x 40]: 16 summed entries, a dot_general; [3 x 4] @ [4 x 40] (joint 480
    # points, at most UNROLL_JOINT_SMALL_BATCH): an unrolled sum, fusible. A factor that may be
    # infinite is guarded (its finite part) before the dot: that guard reads it, not the dot.
    rng = np.random.default_rng(0)
    out, inp = dense((1, 3), summed, rng), dense(summed, (1, 40), rng)
    assert S._by_dot(out, inp) == (dot, dot, dot)
    assert S._by_dot(out, inp._replace(finite=False)) == (dot, dot, False)
    counter = S.MultiplicationCounter()
    text = jax.jit(lambda a, b: S.multiply(out._replace(value=a), inp._replace(value=b), 1, counter, jnp.float32).value
                   ).lower(out.value, inp.value).as_text()
    assert ("dot_general" in text) == dot


def kept_partials(name: str, order: str, monkeypatch) -> list[tuple]:
    """(entries, reads) of each partial `shared` computes once in jit(vmap(jacobian)) at batch 256."""
    kept, original = [], S.shared

    def recording(partial, reads):
        result = original(partial, reads)
        if result is not partial:
            kept.append((int(np.prod(np.shape(partial.value))), reads))
        return result

    monkeypatch.setattr(S, "shared", recording)
    task = tasks.get(name) if name in tasks.names() else tasks.corpus()[name]
    args = [jnp.broadcast_to(jnp.asarray(a, jnp.float32), (256, *np.shape(a))) for a in task.args]
    argnums = task.argnums if task.argnums is not None else tuple(range(len(args)))
    jax.make_jaxpr(jax.vmap(interpreter.jacobian(task.fn, order, argnums=argnums)))(*args)
    return kept


def test_rows_behind_matrix_products_are_not_kept(monkeypatch):
    # Perceptron in reverse order: its [1, 8] rows are read twice, behind dot_generals and a few
    # fused operations; f885f62's rule kept three (0.84 of jax.jacrev with them, 0.94 without).
    assert kept_partials("Perceptron", "reverse", monkeypatch) == []


def test_deep_stencil_partials_are_still_kept(monkeypatch):
    # van_leer_advection's reverse sweep: partials hundreds of fused operations deep per entry
    # (75 ms, 1.7 ms with them kept, at batch 256).
    kept = kept_partials("van_leer_advection", "reverse", monkeypatch)
    assert len(kept) >= 4 and all(entries == 144 for entries, _ in kept)


def message_passing(nodes, weights, senders, receivers):
    messages = nodes[senders] * weights[:, None]
    return jnp.tanh(nodes + jax.ops.segment_sum(messages, receivers, num_segments=nodes.shape[0]))


def scattered_entries(lowered) -> int:
    """Entries written by the program's scatters (their result shapes)."""
    shapes = re.findall(r"= \w+\[([\d,]*)\]\S* scatter\(", lowered.as_text("hlo"))
    return sum(int(np.prod([int(n) for n in shape.split(",") if n])) for shape in shapes)


def test_a_run_time_map_after_split_weights_moves_the_product_once(monkeypatch):
    # A scatter-add onto receivers passed as an argument after a weight per edge: split, each of 15
    # parts a [4, 3, 4, 3] pattern scattered per example; materialised, one [5, 3, 4, 3] product
    # scattered. The same numbers as jax.jacfwd either way.
    rng = np.random.default_rng(1)
    nodes, weights = rng.normal(size=(8, 4, 3)).astype(np.float32), rng.normal(size=(8, 5)).astype(np.float32)
    senders = np.tile(np.array([0, 1, 2, 3, 1], np.int32), (8, 1))
    receivers = np.tile(np.array([1, 2, 3, 0, 0], np.int32), (8, 1))
    args = (nodes, weights, senders, receivers)
    fn = jax.jit(jax.vmap(interpreter.jacobian(message_passing, "reverse", argnums=(0, 1))))
    monkeypatch.setattr(S, "RUN_TIME_SPLIT_MAX", None)
    split = scattered_entries(fn.lower(*args))
    monkeypatch.setattr(S, "RUN_TIME_SPLIT_MAX", 2)
    fn = jax.jit(jax.vmap(interpreter.jacobian(message_passing, "reverse", argnums=(0, 1))))
    lowered = fn.lower(*args)
    assert scattered_entries(lowered) * 4 < split, (scattered_entries(lowered), split)
    expected = jax.vmap(jax.jacfwd(message_passing, argnums=(0, 1)))(*args)
    for got, want in zip(jax.tree.leaves(lowered.compile()(*args)), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
